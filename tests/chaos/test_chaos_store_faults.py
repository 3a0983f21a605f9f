"""Store faults: SQLite locked past its busy timeout, PostgreSQL connections dropped mid-run, a full disk under the
rejects file. Each gives a clear one-line error, no run is recorded as successful that was not, and the next run
completes with Braze equal to the store."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest


def assert_one_line(reliability: ModuleType, result: tuple[int, str, str], *needles: str) -> str:
    line: str = reliability.one_line_error(*result)
    for needle in needles:
        assert needle in line, line
    return line


def test_sqlite_locked_mid_run(reliability: ModuleType, tmp_path: Path) -> None:
    row = reliability.sqlite_locked(tmp_path)
    details = row.details
    assert row.faults["write lock held past the busy timeout"] == 1
    assert_one_line(reliability, details["first"], "database is locked", "Another process is writing to the store")
    assert "succeeded" not in details["statuses_after_first"]
    code, _, stderr = details["second"]
    assert code == 0, stderr
    assert details["report"]["interrupted_runs"] == 1
    assert [status for _, status, _ in details["history"]] == ["succeeded", "failed"]
    assert row.lost == 0 and row.delivered == row.customers
    assert details["acknowledged_equals_braze"]
    assert 0 <= row.duplicated <= details["report"]["possible_duplicates"]


@pytest.mark.postgres
def test_postgres_connection_dropped_mid_run(reliability: ModuleType, tmp_path: Path, postgres_url: str) -> None:
    row = reliability.postgres_dropped(tmp_path, postgres_url)
    details = row.details
    assert row.faults["connections terminated"] >= 1
    code, stdout, stderr = details["first"]
    assert "Traceback" not in stdout + stderr
    if code != 0:
        # The run lost its connection inside a transaction: one line, and the run is not recorded as succeeded.
        assert_one_line(reliability, details["first"], "store")
        assert "succeeded" not in details["statuses_after_first"]
    second_code, _, second_stderr = details["second"]
    assert second_code == 0, second_stderr
    assert details["history"][0][1] == "succeeded"
    assert all(status != "running" for _, status, _ in details["history"])
    assert row.lost == 0 and row.delivered == row.customers
    assert details["acknowledged_equals_braze"]


def test_full_disk_under_the_rejects_file(reliability: ModuleType, tmp_path: Path) -> None:
    row = reliability.rejects_full(tmp_path)
    details = row.details
    assert_one_line(reliability, details["first"], "/dev/full", "cannot write the rejects file", "No space left")
    assert "succeeded" not in details["prediction_runs_after_first"]
    assert details["sync_runs_after_first"] == []
    code, _, stderr = details["second"]
    assert code == 0, stderr
    assert details["prediction_runs_after_second"][0] == "succeeded"
    assert "not-a-time" in details["rejects"] and "bad_timestamp" in details["rejects"]
    assert row.lost == 0 and row.delivered == row.customers > 0
