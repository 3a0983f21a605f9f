"""Faults from Braze: the issue's mix of 5xx, 429, dropped connections, timeouts, per-object errors and HTML pages.

Every valid change ends up in the emulator exactly as the store says, the acknowledged state equals the emulator's
profiles, objects Braze's rules refuse are quarantined with their reason, and retries stay within their bounds.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture(scope="module")
def row(reliability: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return reliability.braze_faults(tmp_path_factory.mktemp("faults"))


def test_every_fault_kind_was_injected(row: Any, reliability: ModuleType) -> None:
    assert set(row.faults) == set(reliability.BRAZE_FAULTS)
    requests = row.details["emulator"]["requests_total"]
    # The drawn shares are near the configured ones (2 % of a few hundred requests is a handful).
    assert row.faults["5xx"] >= 0.1 * requests and row.faults["429"] >= 0.04 * requests
    assert min(row.faults.values()) >= 1


def test_every_valid_change_is_in_braze_exactly_as_the_store_says(row: Any) -> None:
    assert row.lost == 0, row.details["lost_ids"]
    assert row.delivered == row.customers == 3000 - len(row.details["refused"])
    assert row.details["acknowledged_equals_braze"]


def test_invalid_objects_are_quarantined_with_their_reason_and_never_sent(row: Any) -> None:
    quarantined = row.details["quarantined"]
    assert set(quarantined) == set(row.details["refused"])
    assert all("longer than 255 characters" in reason for reason in quarantined.values())
    runs = row.details["runs"]
    assert runs[-1]["selected"] == 0 and runs[-1]["skipped_quarantined"] == len(row.details["refused"])


def test_runs_with_refusals_are_reported_partial_and_the_last_one_succeeds(row: Any) -> None:
    runs = row.details["runs"]
    assert runs[0]["status"] == "partial" and runs[0]["failed"] >= len(row.details["refused"])
    assert "simulated: Braze could not process this object" in runs[0]["reasons"]
    assert runs[-1]["status"] == "succeeded"


def test_retries_stay_within_their_bounds(row: Any) -> None:
    details = row.details
    for run in details["runs"]:
        assert run["seconds"] <= details["max_retry_seconds"] + 30
        # Every request is a batch's first try or one of its retries (full batches of 50: no 400 split them).
        assert run["requests"] - run["retries"] == math.ceil(run["sent"] / 50), run
    # A batch is tried at most max_attempts times for transient failures; 429s repeat it without an attempt.
    rate_limited = max(r["rate_limited"] for r in details["runs"])
    assert details["max_attempts_per_batch"] <= details["max_attempts"] + rate_limited
    assert row.retries > 0
    # Every request the emulator saw was counted by the client (none hidden, none invented).
    client_requests = sum(r["requests"] for r in details["runs"])
    answered = sum(details["emulator"]["requests"].values())
    # (A dropped answer is never counted by the emulator; a slow one is counted after the client gave up.)
    assert answered <= client_requests <= answered + row.faults["drop"] + row.faults["slow"]


def test_duplicates_come_only_from_answers_lost_after_braze_applied(row: Any) -> None:
    # A dropped connection or a timeout after Braze applied a batch is the only way to apply it twice.
    batch = 50
    assert 0 <= row.duplicated <= (row.faults["drop"] + row.faults["slow"]) * batch


def test_figures_are_printed_by_the_benchmark_script(reliability: ModuleType, row: Any, tmp_path: Path) -> None:
    assert reliability.COMMAND.endswith("bench/reliability.py")
    assert row.scenario in reliability.SCENARIOS
