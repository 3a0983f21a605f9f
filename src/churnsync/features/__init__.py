"""Per-customer features at a cut date, computed in SQL from the canonical events table."""

from churnsync.features.rfm import RFMFrame, build_rfm

__all__ = ["RFMFrame", "build_rfm"]
