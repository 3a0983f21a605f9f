"""Crashes: ``churnsync sync`` killed with SIGKILL at twelve points, each followed by a rerun.

The points: during selection (``CHURNSYNC_TEST_CRASH_AT=select:N``), with a batch journaled but not sent
(``intended:N``), between Braze's acknowledgement and the commit (``ack:N``), after a random number of
acknowledged batches and at a random time (both SIGKILL from outside). Before each cycle every customer changes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def row(reliability: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return reliability.crashes(tmp_path_factory.mktemp("crashes"))


def test_at_least_ten_kills_at_every_kind_of_point(row: Any, reliability: ModuleType) -> None:
    cycles = row.details["cycles"]
    killed = [c for c in cycles if c["killed"]]
    assert len(killed) >= 10, [(c["kind"], c["at"], c["child_stderr"]) for c in cycles if not c["killed"]]
    assert {c["kind"] for c in killed} >= {"select", "intended", "ack", "acks"}
    # Hook points are exact: each of them killed its process.
    assert all(c["killed"] for c in cycles if c["kind"] != "time")


def test_after_each_rerun_braze_equals_the_store(row: Any) -> None:
    for cycle in row.details["cycles"]:
        assert cycle["rerun_exit"] == 0, cycle["rerun_stderr"]
        assert cycle["lost"] == 0 and cycle["pending"] == 0, cycle
        assert cycle["delivered"] == row.details["customers"]
        assert cycle["acknowledged_equals_braze"], cycle
    assert row.lost == 0 and row.delivered == row.customers == row.details["customers"] * len(row.details["cycles"])


def test_duplicates_per_crash_never_exceed_the_batches_in_flight(row: Any) -> None:
    limit = row.details["concurrency"] * row.details["batch_size"]
    for cycle in row.details["cycles"]:
        assert cycle["batches_in_flight"] <= row.details["concurrency"], cycle
        assert 0 <= cycle["duplicated"] <= cycle["objects_in_flight"] <= limit, cycle
        # The rerun reports what was in doubt: exactly the requests that were in flight at the kill.
        assert cycle["report"]["requests_in_doubt"] == cycle["batches_in_flight"]
        assert cycle["duplicated"] <= cycle["report"]["possible_duplicates"]
    # Kills between Braze's acknowledgement and the commit do cause duplicates, and they are counted.
    assert any(c["duplicated"] > 0 for c in row.details["cycles"] if c["kind"] == "ack")


def test_run_history_shows_each_interrupted_run_as_failed(row: Any) -> None:
    for cycle in row.details["cycles"]:
        if not (cycle["killed"] and cycle["killed_run"] is not None):
            continue
        if cycle["kind"] == "time" and cycle["killed_run_status"] == "succeeded":
            # Killed after the run was finished and recorded (while the process printed and exited): a true success,
            # with nothing left in flight and nothing for the rerun to recover.
            assert cycle["batches_in_flight"] == 0 and cycle["report"]["interrupted_runs"] == 0, cycle
            continue
        assert cycle["killed_run_status"] == "failed", cycle
        assert cycle["killed_run_error"].startswith("interrupted"), cycle
        assert cycle["report"]["interrupted_runs"] == 1
    # Selection, hooks and acks-based kills all happen after the sync run was recorded.
    assert all(c["killed_run"] is not None for c in row.details["cycles"] if c["kind"] != "time")
