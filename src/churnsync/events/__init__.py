"""Behaviour data: reading and validating files into the canonical ``events`` table, and sample data."""

from churnsync.events.generator import GenerateResult, generate_sample
from churnsync.events.reader import EVENTS_TABLE, REJECT_REASONS, LoadResult, load_events

__all__ = ["EVENTS_TABLE", "REJECT_REASONS", "GenerateResult", "LoadResult", "generate_sample", "load_events"]
