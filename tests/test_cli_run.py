"""The one-off `churnsync run` as users run it (subprocesses): metrics textfile, alert webhook, exit codes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from churnsync.events.generator import GenerateResult, generate_sample
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread

KEY = "cli-run-braze-key-0123456789abcdef"
CUSTOMERS = 400
TODAY = datetime.now(UTC).date()


def churnsync(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "CHURNSYNC_")) and k != "NO_COLOR"}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "churnsync", *args], capture_output=True, text=True, env=clean, timeout=120
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    days = 200
    return generate_sample(
        tmp_path_factory.mktemp("cli-run"), customers=CUSTOMERS, days=days, seed=4, start=TODAY - timedelta(days=days)
    )


def start_emulator(sample: GenerateResult, **faults: float) -> RunningEmulator:
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = frozenset(row["customer_id"] for row in csv.DictReader(f))
    return serve_in_thread(EmulatorConfig(api_key=KEY, known_external_ids=ids, faults=faults, fault_seed=3))


@pytest.fixture
def hook() -> Iterator[tuple[str, list[bytes]]]:
    """A real local HTTP server recording what is POSTed to it: (url, bodies)."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook/secret-part", bodies
    finally:
        server.shutdown()
        server.server_close()


def write_config(folder: Path, events: str, endpoint: str) -> Path:
    path = folder / "churnsync.toml"
    path.write_text(
        f"""
[data]
paths = ["{events}"]
rejects_path = "rejects.csv"

[store]
url = "sqlite:///store.db"

[model]
kind = "bgnbd"

[destinations.braze]
endpoint = "{endpoint}"

[observability]
metrics_textfile = "churnsync.prom"
alert_failed_share = 0.05
""",
        encoding="utf-8",
    )
    return path


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text(encoding="utf-8"))
        for s in family.samples
    }


def test_run_writes_the_metrics_textfile_and_keeps_its_summary(tmp_path: Path, sample: GenerateResult) -> None:
    with start_emulator(sample) as emulator:
        config = write_config(tmp_path, str(sample.events_path), emulator.url)
        result = churnsync("run", "--retrain", "--config", str(config), BRAZE_API_KEY=KEY)
    assert result.returncode == 0, result.stderr
    # Not a terminal: no progress bars, no log lines; the summary tables on stdout as before.
    assert result.stderr == ""
    assert "Prediction run 1 as of" in result.stdout and "Sync 1 → braze: succeeded" in result.stdout
    got = samples(tmp_path / "churnsync.prom")
    assert got[("churnsync_runs_total", (("status", "succeeded"),))] == 1
    assert got[("churnsync_customers_scored", ())] == CUSTOMERS
    assert got[("churnsync_sync_customers", (("destination", "braze"), ("outcome", "accepted")))] == CUSTOMERS
    assert got[("churnsync_last_retrain_timestamp_seconds", ())] > 0

    # --no-sync and --as-of still work; the textfile follows the latest run.
    as_of = (TODAY - timedelta(days=7)).isoformat()
    again = churnsync("--quiet", "run", "--no-sync", "--as-of", as_of, "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout == again.stderr == ""
    assert samples(tmp_path / "churnsync.prom")[("churnsync_customers_scored", ())] <= CUSTOMERS


def test_a_failed_run_posts_the_webhook_without_the_key_and_says_one_line(
    tmp_path: Path, hook: tuple[str, list[bytes]]
) -> None:
    url, bodies = hook
    config = write_config(tmp_path, "nothing/*.csv", "http://127.0.0.1:9")
    result = churnsync("run", "--config", str(config), BRAZE_API_KEY=KEY, CHURNSYNC_WEBHOOK_URL=url)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing/*.csv" in lines[0]
    assert len(bodies) == 1
    body = json.loads(bodies[0])
    assert "run failed" in body["text"] and "nothing/*.csv" in body["text"]
    assert KEY.encode() not in bodies[0] and b"secret-part" not in bodies[0]
    assert KEY not in result.stdout + result.stderr
    assert samples(tmp_path / "churnsync.prom")[("churnsync_runs_total", (("status", "failed"),))] == 1

    # Without a webhook: the same single line, no "no webhook" warning under it.
    quiet = churnsync("run", "--config", str(config), BRAZE_API_KEY=KEY)
    assert quiet.returncode == 1 and len(quiet.stderr.strip().splitlines()) == 1


def test_failed_share_over_the_threshold_alerts_and_exits_partial(
    tmp_path: Path, sample: GenerateResult, hook: tuple[str, list[bytes]]
) -> None:
    url, bodies = hook
    with start_emulator(sample, object=0.2) as emulator:
        config = write_config(tmp_path, str(sample.events_path), emulator.url)
        result = churnsync("run", "--config", str(config), BRAZE_API_KEY=KEY, CHURNSYNC_WEBHOOK_URL=url)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Sync 1 → braze: partial" in result.stdout
    assert len(bodies) == 1
    text = json.loads(bodies[0])["text"]
    assert "failed to sync to braze" in text and "alert threshold 5.0%" in text
    assert KEY.encode() not in bodies[0]
    assert "alert sent:" in result.stderr
