"""End to end through the real command line, against the real emulator on a free port and a real store.

Each command runs as a subprocess (``python -m churnsync``), exactly as a user runs it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from churnsync.config import load_settings
from churnsync.demo import run_demo
from churnsync.events.generator import GenerateResult, generate_sample
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread

KEY = "e2e-secret-key-1234567890"
TODAY = datetime.now(UTC).date()


def churnsync(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "CHURNSYNC_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "churnsync", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert result.returncode == code, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    days = 240
    return generate_sample(
        tmp_path_factory.mktemp("sample"), customers=1500, days=days, seed=11, start=TODAY - timedelta(days=days)
    )


@pytest.fixture
def emulator(sample: GenerateResult) -> Iterator[RunningEmulator]:
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = frozenset(row["customer_id"] for row in csv.DictReader(f))
    with serve_in_thread(EmulatorConfig(api_key=KEY, known_external_ids=ids)) as running:
        yield running


def write_config(folder: Path, sample: GenerateResult, endpoint: str, *, events: str | None = None) -> Path:
    path = folder / "churnsync.toml"
    path.write_text(
        f"""
[data]
paths = ["{events or sample.events_path}"]
rejects_path = "rejects.csv"

[store]
url = "sqlite:///store.db"

[destinations.braze]
endpoint = "{endpoint}"
""",
        encoding="utf-8",
    )
    return path


def profiles_equal_acknowledged(emulator: RunningEmulator, config: Path) -> int:
    """The number of customers whose emulator profile differs from the store's acknowledged state."""
    store = AttributeStore.open(load_settings(config).store.resolved_url())
    try:
        acknowledged = store.acknowledged_state("braze")
    finally:
        store.close()
    profiles = emulator.state.profiles()
    assert acknowledged, "nothing was acknowledged"

    def clean(values: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in values.items() if v is not None}

    return sum(
        1
        for cid in set(profiles) | set(acknowledged)
        if clean(profiles.get(cid, {})) != clean(acknowledged.get(cid, {}))
    )


def test_run_twice_sends_only_changes_and_emulator_equals_store(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator
) -> None:
    config = write_config(tmp_path, sample, emulator.url)
    env = {"BRAZE_API_KEY": KEY}
    first_day: date = TODAY - timedelta(days=8)
    first = churnsync("run", "--config", str(config), "--as-of", first_day.isoformat(), env=env)
    assert first.returncode == 0, first.stderr
    assert "succeeded" in first.stdout
    assert profiles_equal_acknowledged(emulator, config) == 0
    sent_first = emulator.state.stats()["objects"]["received"]
    assert sent_first > 1000

    second = churnsync("run", "--config", str(config), env=env)  # as of today: one more week of data
    assert second.returncode == 0, second.stderr
    sent_second = emulator.state.stats()["objects"]["received"] - sent_first
    assert 0 < sent_second < sent_first
    assert profiles_equal_acknowledged(emulator, config) == 0

    # Same data, same day: nothing changed, so nothing is sent or billed again.
    points_before = emulator.state.stats()["data_points"]
    third = churnsync("run", "--config", str(config), env=env)
    assert third.returncode == 0, third.stderr
    assert emulator.state.stats()["data_points"] == points_before

    runs = churnsync("runs", "--config", str(config), "--json")
    assert runs.returncode == 0, runs.stderr
    assert runs.stdout.count('"succeeded"') >= 6
    someone = next(iter(emulator.state.profiles()))
    history = churnsync("history", someone, "--config", str(config))
    assert history.returncode == 0, history.stderr
    assert "churn_probability" in history.stdout and "braze" in history.stdout


def test_wrong_key_stops_with_one_line_and_records_nothing(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator
) -> None:
    config = write_config(tmp_path, sample, emulator.url)
    result = churnsync("run", "--config", str(config), env={"BRAZE_API_KEY": "not-the-key"})
    line = assert_one_line_error(result, 2, "401", "BRAZE_API_KEY")
    assert "not-the-key" not in line
    store = AttributeStore.open(load_settings(config).store.resolved_url())
    try:
        assert store.acknowledged_state("braze") == {}
        assert store.sync_runs()[0]["status"] == "failed"
    finally:
        store.close()
    assert emulator.state.profiles() == {cid: {} for cid in emulator.state.profiles()}


def test_missing_key_is_a_config_error_before_any_work(tmp_path: Path, sample: GenerateResult) -> None:
    config = write_config(tmp_path, sample, "https://rest.iad-01.braze.com")
    result = churnsync("run", "--config", str(config))
    assert_one_line_error(result, 2, "BRAZE_API_KEY is not set")
    assert not (tmp_path / "store.db").exists()


def test_broken_config_names_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "churnsync.toml"
    config.write_text("[prediction]\nhorizon = 30\n", encoding="utf-8")
    result = churnsync("run", "--config", str(config))
    assert_one_line_error(result, 2, "unknown key 'prediction.horizon'", str(config))
    config.write_text("[prediction\n", encoding="utf-8")
    assert_one_line_error(churnsync("run", "--config", str(config)), 2, "not valid TOML")


def test_bad_rows_are_quarantined_and_counted(tmp_path: Path, sample: GenerateResult) -> None:
    events = tmp_path / "events.csv"
    good = sample.events_path.read_text(encoding="utf-8").splitlines()
    bad_rows = [
        ",2026-01-01T00:00:00Z,purchase,10",  # empty customer id
        "c_x,not-a-time,purchase,10",
        "c_y,2026-01-02T00:00:00Z,purchase,-5",
        "c_z,2999-01-01T00:00:00Z,session,",
    ]
    events.write_text("\n".join([*good, *bad_rows]) + "\n", encoding="utf-8")
    config = write_config(tmp_path, sample, "http://127.0.0.1:9", events=str(events))
    result = churnsync("run", "--config", str(config), "--no-sync")
    assert result.returncode == 0, result.stderr
    assert "events rejected  │ 4 " in result.stdout or "4 → " in result.stdout
    with (tmp_path / "rejects.csv").open(encoding="utf-8") as f:
        rejects = list(csv.DictReader(f))
    assert sorted(r["reason"] for r in rejects) == sorted(
        ["empty_customer_id", "bad_timestamp", "negative_value", "future_timestamp"]
    )
    assert {int(r["source_line"]) for r in rejects} == set(range(len(good) + 1, len(good) + 5))

    # Over the threshold: the run fails with one line, after writing the rejects file.
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("\n".join([good[0], *good[1:20], *bad_rows]) + "\n", encoding="utf-8")
    config = write_config(tmp_path, sample, "http://127.0.0.1:9", events=str(tiny))
    result = churnsync("run", "--config", str(config), "--no-sync")
    assert_one_line_error(result, 1, "4 of 23 event rows rejected", "rejects.csv")


def test_init_and_generate(tmp_path: Path) -> None:
    assert churnsync("init", cwd=tmp_path).returncode == 0
    assert load_settings(tmp_path / "churnsync.toml").destinations["braze"].batch_size == 75
    assert_one_line_error(churnsync("init", cwd=tmp_path), 2, "already exists")
    result = churnsync("generate", "--out", "d", "--customers", "200", "--days", "60", "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "events.csv").exists() and (tmp_path / "d" / "truth.csv").exists()
    assert churnsync("--help").returncode == 0
    usage = churnsync("run", "--as-of", "yesterday")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_demo_verifies_emulator_against_store(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", customers=1500, days=200, seed=5)
    assert result.profile_mismatches == 0
    assert result.profiles_checked == 1500
    first, second = result.first.syncs[0].counts, result.second.syncs[0].counts
    assert first.sent == first.selected == 1500 and first.failed == 0
    assert 0 < second.sent < first.sent
    assert second.sent == result.changed_before_second_sync
    assert result.second_sync_only_changed
    assert result.verified
    assert result.emulator_stats["data_points"] == first.data_points + second.data_points
