"""One guarded run against a real store and the real emulator: metrics scraped, webhook received, stop, lock."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churnsync.config import Settings, settings_from_mapping
from churnsync.errors import StoreLockedError
from churnsync.events.generator import GenerateResult, generate_sample
from churnsync.ops.alerts import alert_text
from churnsync.ops.job import run_job
from churnsync.ops.logs import configure_logging
from churnsync.ops.metrics import RunMetrics
from churnsync.pipeline import RunReport
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread

KEY = "ops-test-braze-key-0123456789abcdef"
CUSTOMERS = 600
TODAY = datetime.now(UTC).date()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    days = 200
    return generate_sample(
        tmp_path_factory.mktemp("ops"), customers=CUSTOMERS, days=days, seed=5, start=TODAY - timedelta(days=days)
    )


@pytest.fixture
def emulator(sample: GenerateResult) -> Iterator[RunningEmulator]:
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = frozenset(row["customer_id"] for row in csv.DictReader(f))
    with serve_in_thread(EmulatorConfig(api_key=KEY, known_external_ids=ids)) as running:
        yield running


def make_settings(tmp: Path, sample: GenerateResult, endpoint: str, **braze: Any) -> Settings:
    return settings_from_mapping(
        {
            "data": {"paths": [str(sample.events_path)], "rejects_path": str(tmp / "rejects.csv")},
            "store": {"url": f"sqlite:///{tmp / 'store.db'}"},
            "model": {"kind": "bgnbd", "registry_path": str(tmp / "models")},  # not a test of the learned model
            "destinations": {"braze": {"endpoint": endpoint, **braze}},
            "observability": {"metrics_textfile": str(tmp / "churnsync.prom"), "alert_failed_share": 0.05},
        }
    )


@dataclasses.dataclass
class Hook:
    url: str
    bodies: list[bytes]


@pytest.fixture
def webhook() -> Iterator[Hook]:
    """A real local HTTP server that records what is POSTed to it."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Hook(f"http://127.0.0.1:{server.server_port}/hook", bodies)
    finally:
        server.shutdown()
        server.server_close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_endpoint_is_scraped_and_the_textfile_written(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator
) -> None:
    settings = make_settings(tmp_path, sample, emulator.url)
    metrics = RunMetrics()
    port = metrics.serve(0)
    try:
        outcome = run_job(settings, retrain=True, metrics=metrics, api_keys={"braze": KEY})
        assert outcome.status == "succeeded" and outcome.exit_code == 0 and outcome.alert is None
        metrics.next_run_at(datetime(2030, 1, 1, tzinfo=UTC))
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        metrics.shutdown()
    assert scraped.status_code == 200
    got = samples(scraped.text)
    assert got[("churnsync_runs_total", (("status", "succeeded"),))] == 1
    assert got[("churnsync_last_run_success", ())] == 1
    assert got[("churnsync_customers_scored", ())] == CUSTOMERS
    assert got[("churnsync_sync_customers", (("destination", "braze"), ("outcome", "accepted")))] == CUSTOMERS
    assert got[("churnsync_sync_customers", (("destination", "braze"), ("outcome", "failed")))] == 0
    assert got[("churnsync_sync_data_points", (("destination", "braze"),))] > 0
    assert got[("churnsync_last_retrain_timestamp_seconds", ())] > 0
    assert got[("churnsync_run_in_progress", ())] == 0
    assert got[("churnsync_next_run_timestamp_seconds", ())] == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert got[("churnsync_last_run_duration_seconds", ())] > 0
    # The one-off run's textfile holds the same figures (node_exporter's textfile collector reads it).
    textfile = samples((tmp_path / "churnsync.prom").read_text(encoding="utf-8"))
    assert textfile[("churnsync_customers_scored", ())] == CUSTOMERS


def test_a_failed_run_posts_to_the_webhook_without_the_key(
    tmp_path: Path,
    sample: GenerateResult,
    emulator: RunningEmulator,
    webhook: Hook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = "wrong-braze-key-but-still-secret-42"
    monkeypatch.setenv("BRAZE_API_KEY", wrong)
    monkeypatch.setenv("CHURNSYNC_WEBHOOK_URL", webhook.url)
    settings = make_settings(tmp_path, sample, emulator.url)
    logs = io.StringIO()
    configure_logging(json_lines=True, stream=logs, secrets=[wrong, webhook.url])
    outcome = run_job(settings)  # the key comes from the environment, as in production
    assert outcome.status == "failed"
    assert outcome.exit_code == 2  # Braze refused the credentials: a configuration problem
    assert outcome.alerted
    assert len(webhook.bodies) == 1
    body = json.loads(webhook.bodies[0])
    assert set(body) == {"text", "username"}  # Slack-compatible incoming-webhook JSON
    assert "run failed" in body["text"] and "braze" in body["text"]
    assert wrong.encode() not in webhook.bodies[0]
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    failed = [line for line in lines if line["message"].startswith("run failed")]
    assert failed and failed[0]["level"] == "error" and failed[0]["status"] == "failed"
    assert wrong not in logs.getvalue() and webhook.url not in logs.getvalue()


def test_failed_share_over_the_threshold_alerts(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator, webhook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path, sample, emulator.url)
    outcome = run_job(settings, api_keys={"braze": KEY})
    report = outcome.report
    assert report is not None and outcome.alert is None
    sync = report.syncs[0]

    def with_failed(failed: int) -> RunReport:
        counts = dataclasses.replace(sync.counts, accepted=sync.counts.sent - failed, failed=failed)
        return dataclasses.replace(report, syncs=[dataclasses.replace(sync, status="partial", counts=counts)])

    assert alert_text(with_failed(30), None, threshold=0.05) is None  # 5.0 %: not above 5 %
    text = alert_text(with_failed(31), None, threshold=0.05)
    assert text is not None and f"31 of {CUSTOMERS} customers (5.2%) failed to sync to braze" in text

    # The same text reaches the webhook through the configured variable.
    from churnsync.ops.alerts import send_alert

    monkeypatch.setenv("CHURNSYNC_WEBHOOK_URL", webhook.url)
    assert send_alert(settings, text, secrets=[KEY])
    assert json.loads(webhook.bodies[0])["text"] == text


def test_stop_finishes_the_batches_in_flight_records_the_run_and_the_next_run_sends_the_rest(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator
) -> None:
    settings = make_settings(tmp_path, sample, emulator.url, batch_size=10, concurrency=2)
    stop = threading.Event()
    progress: list[tuple[str, int, int | None]] = []

    def on_progress(step: str, done: int, total: int | None) -> None:
        progress.append((step, done, total))
        stop.set()  # SIGTERM arrives after the first batch

    first = run_job(settings, stop=stop, on_progress=on_progress, api_keys={"braze": KEY})
    assert first.status == "partial" and first.exit_code == 3
    assert first.report is not None
    sync = first.report.syncs[0]
    assert sync.status == "partial" and sync.error is not None and "stopped by a signal" in sync.error
    # The first batch plus those already taken: one per worker, the queue (one per worker), the producer's.
    assert 10 <= sync.counts.accepted <= 10 * (2 * 2 + 1) < CUSTOMERS
    assert sync.counts.accepted == emulator.state.stats()["objects"]["applied"]
    assert progress[0] == ("sync braze", 10, CUSTOMERS)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        (row,) = store.sync_runs()
        assert row["status"] == "partial" and row["accepted"] == sync.counts.accepted
        assert len(store.acknowledged_state("braze")) == sync.counts.accepted
        assert store.lock_holder() is None  # the lock is released
    finally:
        store.close()

    second = run_job(settings, api_keys={"braze": KEY})
    assert second.status == "succeeded" and second.report is not None
    assert second.report.syncs[0].counts.sent == CUSTOMERS - sync.counts.accepted


def test_a_second_run_is_refused_while_one_holds_the_lock(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator
) -> None:
    settings = make_settings(tmp_path, sample, emulator.url)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        with store.run_lock("nightly churnsync schedule"):
            outcome = run_job(settings, api_keys={"braze": KEY})
    finally:
        store.close()
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert isinstance(outcome.error, StoreLockedError)
    assert "nightly churnsync schedule" in str(outcome.error)
    assert emulator.state.stats()["objects"]["received"] == 0


def test_a_stop_during_prediction_stores_the_predictions_and_skips_the_sync(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator
) -> None:
    settings = make_settings(tmp_path, sample, emulator.url)
    stop = threading.Event()
    stop.set()  # SIGTERM arrived while the model was fitting
    outcome = run_job(settings, stop=stop, api_keys={"braze": KEY})
    assert outcome.status == "partial" and outcome.exit_code == 3
    assert outcome.report is not None and outcome.report.write.customers_scored == CUSTOMERS
    assert outcome.report.syncs == [] and emulator.state.stats()["objects"]["received"] == 0
