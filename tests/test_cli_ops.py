"""The operations commands as users run them: subprocesses, a real store, the real emulator, real signals."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from churnsync.config import load_settings
from churnsync.events.generator import GenerateResult, generate_sample
from churnsync.schedule import ScheduleState
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread

KEY = "cli-ops-braze-key-0123456789abcdef"
CUSTOMERS = 500
TODAY = datetime.now(UTC).date()
HEAVY = ("duckdb", "numpy", "pyarrow", "sqlalchemy", "httpx", "prometheus_client", "lightgbm", "sklearn", "scipy",
         "pandas", "alembic", "uvicorn", "starlette", "plotly", "cronsim")  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "CHURNSYNC_")) and k != "NO_COLOR"}
    env.update(extra)
    return env


def churnsync(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "churnsync", *args],
        capture_output=True,
        text=True,
        env=clean_env(**env),
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    days = 200
    return generate_sample(
        tmp_path_factory.mktemp("cli-ops"), customers=CUSTOMERS, days=days, seed=9, start=TODAY - timedelta(days=days)
    )


def start_emulator(sample: GenerateResult, latency: float = 0.0) -> RunningEmulator:
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = frozenset(row["customer_id"] for row in csv.DictReader(f))
    return serve_in_thread(EmulatorConfig(api_key=KEY, known_external_ids=ids, latency_seconds=latency))


@pytest.fixture
def emulator(sample: GenerateResult) -> Iterator[RunningEmulator]:
    with start_emulator(sample) as running:
        yield running


def write_config(folder: Path, sample: GenerateResult, endpoint: str, extra: str = "") -> Path:
    path = folder / "churnsync.toml"
    path.write_text(
        f"""
[data]
paths = ["{sample.events_path}"]
rejects_path = "rejects.csv"

[store]
url = "sqlite:///store.db"

[model]
kind = "bgnbd"  # these tests are about operating a run, not about the learned model's fit

[destinations.braze]
endpoint = "{endpoint}"

[schedule]
cadence = "weekly"
day = "tuesday"
at = "07:15"
timezone = "Europe/Paris"
{extra}
""",
        encoding="utf-8",
    )
    return path


def test_help_is_instant_and_imports_nothing_heavy() -> None:
    probe = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "sys.argv = ['churnsync', '--help']\n"
        "from churnsync.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(repr((code, heavy, time.perf_counter() - t)), file=sys.stderr)\n"
    )
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=clean_env(), timeout=60)
    wall = time.perf_counter() - started
    code, heavy, in_process = eval(result.stderr.strip().splitlines()[-1])
    assert code == 0 and "schedule" in result.stdout and "status" in result.stdout
    assert heavy == [], f"--help imported {heavy}: import them inside the commands"
    print(f"churnsync --help: {in_process:.2f} s in process, {wall:.2f} s with interpreter start")
    assert wall < 5  # measured ~0.5 s; generous for a loaded CI machine


def test_exit_codes_for_usage_config_and_failed_runs(tmp_path: Path, sample: GenerateResult) -> None:
    assert churnsync("no-such-command").returncode == 2
    assert churnsync("runs", "--limit", "0").returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[schedule]\ntimezone = "Nowhere/Else"\n', encoding="utf-8")
    result = churnsync("status", "--config", str(bad))
    assert result.returncode == 2 and "unknown time zone 'Nowhere/Else'" in result.stderr
    assert "Traceback" not in result.stderr
    # A run that fails (no events at the path): 1, one line, and the state remembers the attempt.
    config = write_config(tmp_path, sample, "http://127.0.0.1:9")
    config.write_text(config.read_text(encoding="utf-8").replace(str(sample.events_path), "nothing/*.csv"))
    failed = churnsync("--quiet", "schedule", "--once", "--config", str(config), BRAZE_API_KEY=KEY)
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout == ""
    assert [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert ScheduleState.load(tmp_path / "churnsync-schedule.json").last_run is not None


def test_once_then_runs_and_status_via_config_flag_and_environment(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator
) -> None:
    config = write_config(tmp_path, sample, emulator.url, extra='\n[observability]\nmetrics_textfile = "m.prom"\n')
    first = churnsync("schedule", "--once", "--config", str(config), BRAZE_API_KEY=KEY)
    assert first.returncode == 0, first.stderr
    assert "Run succeeded" in first.stdout and KEY not in first.stdout + first.stderr
    assert "churnsync_customers_scored 500.0" in (tmp_path / "m.prom").read_text(encoding="utf-8")
    state = ScheduleState.load(tmp_path / "churnsync-schedule.json")
    assert state.last_run is not None and state.last_retrain == state.last_run

    by_flag = churnsync("runs", "--json", "--config", str(config))
    by_env = churnsync("runs", "--json", CHURNSYNC_CONFIG=str(config), cwd=tmp_path.parent)
    assert by_flag.returncode == by_env.returncode == 0
    assert json.loads(by_flag.stdout) == json.loads(by_env.stdout)
    (run,) = json.loads(by_flag.stdout)["runs"]
    assert run["customers_scored"] == run["customers_changed"] == run["sent"] == run["accepted"] == CUSTOMERS
    assert run["status"] == "succeeded" and run["failed"] == 0 and run["sync_run_ids"] == [1]
    assert run["data_points"] > 0 and run["model_version"] and run["seconds"] > 0

    table = churnsync("runs", "--config", str(config))
    assert table.returncode == 0 and "succeeded" in table.stdout
    assert "\x1b[" not in table.stdout + table.stderr  # no colour codes when not a terminal

    status = churnsync("status", "--config", str(config))
    assert status.returncode == 0, status.stdout + status.stderr
    assert "health: ok" in status.stdout and "(weekly on Tuesday at 07:15 Europe/Paris)" in status.stdout
    assert "\x1b[" not in status.stdout


def test_print_cron(tmp_path: Path, sample: GenerateResult) -> None:
    config = write_config(tmp_path, sample, "http://127.0.0.1:9")
    result = churnsync("schedule", "--print-cron", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "# churnsync: weekly on Tuesday at 07:15 Europe/Paris",
        "CRON_TZ=Europe/Paris",
        f"15 7 * * 2 {sys.executable} -m churnsync --quiet schedule --once --config {config.resolve()}",
    ]


def test_sigterm_finishes_the_batch_in_flight_records_the_run_and_exits(tmp_path: Path, sample: GenerateResult) -> None:
    """A real `churnsync schedule` process catches up a missed run, gets SIGTERM mid-sync, and stops cleanly."""
    with start_emulator(sample, latency=0.05) as emulator:
        config = write_config(tmp_path, sample, emulator.url)
        config.write_text(
            config.read_text(encoding="utf-8").replace(
                f'endpoint = "{emulator.url}"', f'endpoint = "{emulator.url}"\nbatch_size = 5\nconcurrency = 1'
            ),
            encoding="utf-8",
        )
        # The scheduler last ran weeks ago: the run missed meanwhile starts at once.
        ScheduleState(last_run=datetime.now(UTC) - timedelta(days=30)).save(tmp_path / "churnsync-schedule.json")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "churnsync", "schedule", "--config", str(config), "--metrics-port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(BRAZE_API_KEY=KEY),
        )
        try:
            url = load_settings(config).store.resolved_url()
            deadline = time.monotonic() + 60
            while emulator.state.stats()["objects"]["applied"] < 10:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the catch-up run did not start syncing"
                time.sleep(0.05)
            # The scheduler's Prometheus endpoint, scraped while the run is in progress.
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        applied = emulator.state.stats()["objects"]["applied"]
    assert process.returncode == 0, stderr
    assert "churnsync_run_in_progress 1.0" in scraped and "churnsync_last_run_start_timestamp_seconds" in scraped
    assert "SIGTERM: finishing the batch in flight" in stderr
    assert "Scheduler stopped after 1 run(s)" in stdout
    store = AttributeStore.open(url)
    try:
        (sync,) = store.sync_runs()
        holder = store.lock_holder()
        acknowledged = len(store.acknowledged_state("braze"))
    finally:
        store.close()
    assert sync["status"] == "partial" and "stopped by a signal" in sync["error"]
    assert 10 <= sync["accepted"] == applied == acknowledged < CUSTOMERS  # every batch Braze took is recorded
    assert holder is None
    state = ScheduleState.load(tmp_path / "churnsync-schedule.json")
    assert state.last_run is not None and datetime.now(UTC) - state.last_run < timedelta(days=8)
    due = state.last_run.astimezone(ZoneInfo("Europe/Paris"))  # the missed Tuesday run is the one recorded
    assert (due.strftime("%A"), due.hour, due.minute) == ("Tuesday", 7, 15)


def test_progress_bars_with_eta_on_a_terminal_and_none_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from churnsync.cli import ops as cli_ops
    from churnsync.cli._app import options

    screen = io.StringIO()
    monkeypatch.setattr(cli_ops, "err", Console(file=screen, force_terminal=True, width=120))
    with cli_ops.progress_display() as (on_stage, on_progress):
        on_stage("predict")
        on_stage("sync braze")
        for done in range(0, 600, 75):
            on_progress("sync braze", done, 600)
    drawn = screen.getvalue()
    assert "sync braze" in drawn and "600/600" not in drawn and "525/600" in drawn and "ETA" in drawn

    quiet = io.StringIO()
    monkeypatch.setattr(cli_ops, "err", Console(file=quiet, force_terminal=True, width=120))
    monkeypatch.setattr(options, "quiet", True)
    with cli_ops.progress_display() as (on_stage, on_progress):
        on_stage("predict")
        on_progress("sync braze", 75, 600)
    assert quiet.getvalue() == ""
