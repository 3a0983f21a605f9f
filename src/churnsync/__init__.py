"""churnsync: churn and value predictions for Braze, kept with history and synced as deltas.

The public API is what ``__all__`` lists (locked by tests/test_public_api.py). Heavy parts load on first use, so
``import churnsync`` and ``churnsync --help`` stay instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from churnsync.config import Settings, load_settings
from churnsync.errors import (
    BadResponseError,
    ChurnsyncError,
    ConfigError,
    ConvergenceError,
    DataError,
    DestinationAuthError,
    MissingColumnError,
    ModelError,
    NotFittedError,
    RateLimitedError,
    StoreError,
    SyncError,
    TerminalSyncError,
    TooManyRejectsError,
    TransientSyncError,
)
from churnsync.records import BatchOutcome, Change, ObjectFailure, SyncCounts

if TYPE_CHECKING:
    from churnsync.events.generator import generate_sample
    from churnsync.events.reader import load_events
    from churnsync.features.rfm import build_rfm
    from churnsync.models.bgnbd import BetaGeoModel
    from churnsync.models.scoring import score_customers
    from churnsync.pipeline import RunReport, run_pipeline
    from churnsync.store.store import AttributeStore
    from churnsync.sync.braze import push_changes
    from churnsync.sync.emulator import EmulatorConfig, serve_in_thread

__version__ = "0.1.0"

_LAZY = {
    "AttributeStore": "churnsync.store.store",
    "BetaGeoModel": "churnsync.models.bgnbd",
    "EmulatorConfig": "churnsync.sync.emulator",
    "RunReport": "churnsync.pipeline",
    "build_rfm": "churnsync.features.rfm",
    "generate_sample": "churnsync.events.generator",
    "load_events": "churnsync.events.reader",
    "push_changes": "churnsync.sync.braze",
    "run_pipeline": "churnsync.pipeline",
    "score_customers": "churnsync.models.scoring",
    "serve_in_thread": "churnsync.sync.emulator",
}

__all__ = [
    "AttributeStore",
    "BadResponseError",
    "BatchOutcome",
    "BetaGeoModel",
    "Change",
    "ChurnsyncError",
    "ConfigError",
    "ConvergenceError",
    "DataError",
    "DestinationAuthError",
    "EmulatorConfig",
    "MissingColumnError",
    "ModelError",
    "NotFittedError",
    "ObjectFailure",
    "RateLimitedError",
    "RunReport",
    "Settings",
    "StoreError",
    "SyncCounts",
    "SyncError",
    "TerminalSyncError",
    "TooManyRejectsError",
    "TransientSyncError",
    "__version__",
    "build_rfm",
    "generate_sample",
    "load_events",
    "load_settings",
    "push_changes",
    "run_pipeline",
    "score_customers",
    "serve_in_thread",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'churnsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
