"""The public surface is deliberate: this list changes only with a CHANGELOG line."""

from __future__ import annotations

import subprocess
import sys

import churnsync

EXPECTED = {
    "AttributeStore", "BadResponseError", "BatchOutcome", "BetaGeoModel", "Change", "ChurnsyncError", "ConfigError",
    "ConvergenceError", "DataError", "DestinationAuthError", "EmulatorConfig", "MissingColumnError", "ModelError",
    "NotFittedError", "ObjectFailure", "RateLimitedError", "RunReport", "Settings", "StoreError", "SyncCounts",
    "SyncError", "TerminalSyncError", "TooManyRejectsError", "TransientSyncError", "__version__", "build_rfm",
    "generate_sample", "load_events", "load_settings", "push_changes", "run_pipeline", "score_customers",
    "serve_in_thread",
}  # fmt: skip


def test_public_api_is_locked() -> None:
    assert set(churnsync.__all__) == EXPECTED
    for name in churnsync.__all__:
        assert getattr(churnsync, name) is not None, name


def test_import_and_help_stay_light() -> None:
    code = (
        "import sys, churnsync, churnsync.cli; "
        "heavy = [m for m in ('duckdb', 'numpy', 'scipy', 'sqlalchemy', 'httpx', 'pyarrow') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the CLI pulled in heavy modules: {out}"
