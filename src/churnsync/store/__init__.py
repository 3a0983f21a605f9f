"""The attribute store: current predictions with history, per-destination acknowledged state, runs and sync journal."""

from churnsync.store.store import AttributeStore, HistoryEntry, WriteSummary

__all__ = ["AttributeStore", "HistoryEntry", "WriteSummary"]
