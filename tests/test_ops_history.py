"""Run history combined per run, and the health `churnsync status` reports, on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from churnsync.config import ScheduleSettings
from churnsync.ops.history import HEALTH_EXIT, combined_runs, run_health
from churnsync.records import SyncCounts
from churnsync.schedule import cadence_from_settings
from churnsync.store.store import AttributeStore
from clocks import Clock

DAILY_6 = cadence_from_settings(ScheduleSettings(cadence="daily", at="06:00", timezone="UTC"))


@pytest.fixture
def clock() -> Clock:
    """At 06:00, the daily cadence's time (the shared store fixture reads it)."""
    return Clock(datetime(2026, 6, 30, 6, 0, tzinfo=UTC))


def one_run(store: AttributeStore, clock: Clock, *, failed: int = 0, sync_status: str = "succeeded") -> int:
    run = store.start_prediction_run(as_of=clock.now, horizon_days=30, model_version="m-1", details={})
    clock.now += timedelta(seconds=20)
    store.finish_prediction_run(run, status="succeeded", summary={})
    for destination in ("eu", "us"):
        sync = store.start_sync_run(destination, prediction_run_id=run)
        clock.now += timedelta(seconds=5)
        counts = SyncCounts(selected=100, sent=100, accepted=100 - failed, failed=failed, data_points=300)
        store.finish_sync_run(sync, status=sync_status if destination == "us" else "succeeded", counts=counts)
    return run


def test_runs_combine_each_prediction_run_with_its_syncs(store: AttributeStore, clock: Clock) -> None:
    first = one_run(store, clock)
    clock.now += timedelta(days=1)
    second = one_run(store, clock, failed=7, sync_status="partial")
    clock.now += timedelta(hours=1)
    sync_only = store.start_sync_run("eu", prediction_run_id=None)
    store.finish_sync_run(sync_only, status="succeeded", counts=SyncCounts(sent=3, accepted=3, data_points=9))
    rows = combined_runs(store, limit=10)
    assert [r["id"] for r in rows] == [None, second, first]
    newest, middle, oldest = rows
    assert newest["sync_run_ids"] == [sync_only] and newest["sent"] == 3 and newest["customers_scored"] is None
    assert oldest["sent"] == 200 and oldest["accepted"] == 200 and oldest["data_points"] == 600
    assert oldest["seconds"] == 30.0 and oldest["status"] == "succeeded" and oldest["model_version"] == "m-1"
    assert middle["failed"] == 14 and middle["status"] == "partial" and middle["destinations"] == ["eu", "us"]
    assert combined_runs(store, limit=1) == [newest]


def test_health_never_ok_partial_failed_late_and_running(store: AttributeStore, clock: Clock) -> None:
    assert run_health(store, DAILY_6, clock.now)["health"] == "never"
    one_run(store, clock)
    health = run_health(store, DAILY_6, clock.now)
    assert health["health"] == "ok" and health["next_run"] == datetime(2026, 7, 1, 6, 0, tzinfo=UTC)
    assert health["lock"] is None
    # The next day's 06:00 run has not started by 06:30: not yet late; by 07:01 it is.
    assert run_health(store, DAILY_6, datetime(2026, 7, 1, 6, 30, tzinfo=UTC))["health"] == "ok"
    assert run_health(store, DAILY_6, datetime(2026, 7, 1, 7, 1, tzinfo=UTC))["health"] == "late"
    with store.run_lock("nightly"):
        running = run_health(store, DAILY_6, datetime(2026, 7, 1, 7, 1, tzinfo=UTC))
        assert running["health"] == "running" and running["lock"]["owner"] == "nightly"
    clock.now = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)
    one_run(store, clock, failed=2, sync_status="partial")
    assert run_health(store, DAILY_6, clock.now)["health"] == "partial"
    clock.now = datetime(2026, 7, 2, 6, 0, tzinfo=UTC)
    one_run(store, clock, failed=100, sync_status="failed")
    assert run_health(store, DAILY_6, clock.now)["health"] == "failed"
    assert {HEALTH_EXIT[h] for h in ("ok", "running")} == {0} and HEALTH_EXIT["partial"] == 3
    assert {HEALTH_EXIT[h] for h in ("failed", "late", "never")} == {1}
