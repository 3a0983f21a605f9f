"""Crash safety: a sync killed with SIGKILL mid-flight or between Braze's answer and its commit resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from churnsync.config import AttributeSettings
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread
from churnsync.sync.runner import CRASH_AFTER_ACK_ENV

CUSTOMERS = 400
BATCH = 10
CONCURRENCY = 4


def seed_store(url: str, n: int = CUSTOMERS, *, shift: float = 0.0) -> None:
    """One prediction run with ``n`` customers and two attributes each."""
    with AttributeStore.open(url) as store:
        run = store.start_prediction_run(
            as_of=datetime(2026, 6, 30, tzinfo=UTC),
            horizon_days=30,
            model_version="test",
            details={},
        )
        ids = [f"c{i:05d}" for i in range(n)]
        table = pa.table(
            {
                "customer_id": ids,
                "churn_probability": [round((i % 97) / 100 + shift, 2) for i in range(n)],
                "churn_risk": [("low", "medium", "high")[i % 3] for i in range(n)],
            }
        )
        store.write_predictions(run, table, AttributeSettings(rules={}))
        store.finish_prediction_run(run, status="succeeded", summary={})


def write_config(path: Path, store_url: str, endpoint: str, **extra: object) -> Path:
    lines = [
        "[store]",
        f'url = "{store_url}"',
        "[destinations.braze]",
        f'endpoint = "{endpoint}"',
        'api_key_env = "TEST_BRAZE_KEY"',
        f"batch_size = {BATCH}",
        f"concurrency = {CONCURRENCY}",
        "max_attempts = 3",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sync_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "churnsync", "sync", "--config", str(config), "--json"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TEST_BRAZE_KEY": "emulator-key", "CHURNSYNC_STORE_URL": "", **extra}


@pytest.fixture
def slow_emulator() -> Iterator[RunningEmulator]:
    ids = frozenset(f"c{i:05d}" for i in range(CUSTOMERS))
    with serve_in_thread(EmulatorConfig(latency_seconds=0.03, known_external_ids=ids)) as emulator:
        yield emulator


def journal_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT status, count(*) FROM sync_journal GROUP BY status"))
            return {str(status): int(n) for status, n in rows}
    finally:
        engine.dispose()


def check_resumed(url: str, emulator: RunningEmulator, report: dict[str, object]) -> None:
    """Braze holds exactly the acknowledged state; duplicates are bounded by what was in flight and reported."""
    with AttributeStore.open(url) as store:
        acknowledged = store.acknowledged_state("braze")
        assert next(store.select_changes("braze"), []) == []
    profiles = emulator.state.profiles()
    assert profiles == acknowledged
    assert len(acknowledged) == CUSTOMERS
    received = emulator.state.stats()["objects"]["received"]
    duplicates = received - CUSTOMERS
    possible = int(str(report["possible_duplicates"]))
    assert 0 <= duplicates <= possible <= CONCURRENCY * BATCH
    journal = journal_counts(url)
    assert journal.get("intended", 0) == 0


def test_kill_during_a_batch_resends_only_unacknowledged(tmp_path: Path, slow_emulator: RunningEmulator) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    seed_store(url)
    config = write_config(tmp_path / "churnsync.toml", url, slow_emulator.url)
    process = subprocess.Popen(sync_command(config), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    try:
        # Wait until some batches are acknowledged and more are in flight, then kill without warning.
        while journal_counts_safe(url).get("acknowledged", 0) < 8:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert process.returncode == -signal.SIGKILL
    before = journal_counts(url)
    assert before.get("intended", 0) >= 1  # requests were in flight at the kill
    done = subprocess.run(sync_command(config), env=env(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["interrupted_runs"] == 1
    assert report["requests_in_doubt"] == before["intended"]
    check_resumed(url, slow_emulator, report)


def test_kill_between_acknowledgement_and_commit(tmp_path: Path, slow_emulator: RunningEmulator) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    seed_store(url)
    config = write_config(tmp_path / "churnsync.toml", url, slow_emulator.url)
    crashed = subprocess.run(
        sync_command(config), env=env(**{CRASH_AFTER_ACK_ENV: "5"}), capture_output=True, timeout=60, check=False
    )
    assert crashed.returncode == -signal.SIGKILL
    with AttributeStore.open(url) as store:
        # Batch 5 reached Braze, but its acknowledgement never committed: its customers are still selected.
        pending = {c.customer_id for chunk in store.select_changes("braze") for c in chunk}
    profiles = slow_emulator.state.profiles()
    assert any(profiles[c] for c in pending), "batch 5 was applied by Braze but is not acknowledged"
    done = subprocess.run(sync_command(config), env=env(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["possible_duplicates"] >= BATCH  # at least batch 5 was sent twice, and that is reported
    check_resumed(url, slow_emulator, report)


def journal_counts_safe(url: str) -> dict[str, int]:
    """Journal counts while another process writes (the table may not exist yet)."""
    try:
        return journal_counts(url)
    except sa.exc.OperationalError:
        return {}
