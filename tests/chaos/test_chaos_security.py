"""Security: the key stays secret, TLS is always verified, plain http only where allowed, the dashboard needs its
token beyond localhost, hostile text round-trips through bound parameters, and values obey Braze's rules before
they leave."""

from __future__ import annotations

import base64
import http.server
import os
import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import markupsafe
import pyarrow as pa
import pytest
import sqlalchemy as sa

from churnsync.config import AttributeSettings, BrazeDestination, load_settings, settings_from_mapping
from churnsync.errors import ConfigError
from churnsync.events.generator import generate_sample
from churnsync.pipeline import sync_destination
from churnsync.records import Change
from churnsync.store import ledger
from churnsync.store.store import AttributeStore
from churnsync.sync.audit import audit_destination
from churnsync.sync.braze import push_changes, track_url
from churnsync.sync.emulator import EmulatorConfig, serve_in_thread
from churnsync.sync.runner import write_dry_run
from churnsync.web import create_app
from churnsync.web.auth import TOKEN_ENV
from churnsync.web.server import serve_in_thread as serve_dashboard

SECRET = "csk-7Hq2-SECRET-b7e1c2d94f0a6e35"
TOKEN = "dashboard-token-9f8e7d6c5b4a3921"
PAGES = ["/", "/model", "/predictions", "/syncs", "/segments", "/segments.csv", "/login"]


# -- the key is nowhere ----------------------------------------------------------------------------------------


def leaks(data: bytes) -> bool:
    """The key in any form a careless log might write: plain, in a Basic/Bearer header, or base64-encoded."""
    needles = [SECRET.encode(), base64.b64encode(SECRET.encode()), base64.b64encode(f":{SECRET}".encode())]
    return any(needle in data for needle in needles)


def test_the_key_never_appears_in_logs_errors_files_reports_the_dashboard_or_the_store(
    reliability: ModuleType, tmp_path: Path
) -> None:
    today = datetime.now(UTC).date()
    sample = generate_sample(tmp_path / "data", customers=300, days=150, seed=4, start=today - timedelta(days=150))
    ids = frozenset(line.split(",", 1)[0] for line in sample.truth_path.read_text(encoding="utf-8").splitlines()[1:])
    faults = {"5xx": 0.2, "429": 0.05, "drop": 0.05, "object": 0.02, "html": 0.05}
    config = EmulatorConfig(
        api_key=SECRET, faults=faults, fault_seed=2, rate_limit_window_seconds=1.0, known_external_ids=ids
    )
    outputs: list[str] = []
    with serve_in_thread(config) as emulator, serve_in_thread(EmulatorConfig(api_key="another-key")) as other:
        braze = reliability.destination(emulator.url, max_attempts=8, rate_limit_window_seconds=1.0)
        extra = (
            f'[data]\npaths = ["{sample.events_path}"]\nrejects_path = "rejects.csv"\n'
            f'[model]\nkind = "bgnbd"\nregistry_path = "models"\n[observability]\nmetrics_textfile = "metrics.prom"\n'
        )
        path = reliability.write_config(tmp_path / "churnsync.toml", f"sqlite:///{tmp_path / 'store.db'}", braze, extra)
        env = reliability.child_env(**{reliability.KEY_ENV: SECRET})
        ran = reliability.churnsync("--log-json", "run", "--config", str(path), env=env)
        assert ran.returncode in (0, 3), ran.stderr  # 3: partial (the emulator's per-object errors)
        with reliability.environment(**{reliability.KEY_ENV: SECRET}):  # before the sync: the refused are pending
            dry = ["sync", "--dry-run", "--out", str(tmp_path / "dry.ndjson"), "--config", str(path)]
            code, out, err = reliability.cli(*dry)
        assert code == 0 and "Traceback" not in out + err, err
        outputs += [out, err]
        synced = reliability.churnsync("--log-json", "sync", "--config", str(path), "--json", env=env)
        assert synced.returncode in (0, 1) and '"status"' in synced.stdout, synced.stderr  # 1: not all succeeded
        outputs += [ran.stdout, ran.stderr, synced.stdout, synced.stderr]
        assert '"level": "info"' in ran.stderr + synced.stderr, ran.stderr + synced.stderr  # retries were logged
        customer = sorted(ids)[0]
        with reliability.environment(**{reliability.KEY_ENV: SECRET}):
            for args in (
                ["sync", "--dry-run", "--out", str(tmp_path / "dry-after.ndjson"), "--config", str(path)],
                ["runs", "--json", "--config", str(path)],
                ["status", "--json", "--config", str(path)],
                ["history", customer, "--json", "--config", str(path)],
                ["sync", "failures", "--json", "--config", str(path)],
                ["sync", "audit", "--sample", "20", "--config", str(path)],
                ["export", "--out", str(tmp_path / "export.csv"), "--config", str(path)],
            ):
                code, out, err = reliability.cli(*args)
                assert code in (0, 3) and "Traceback" not in out + err, (args, err)  # 3: status says "partial"
                outputs += [out, err]
        # The wrong workspace: Braze answers 401, and the message names the variable, never its value.
        wrong = tmp_path / "wrong.toml"  # a second destination on the same store: everything is still to send
        wrong.write_text(
            f'[store]\nurl = "sqlite:///{tmp_path / "store.db"}"\n[destinations.other]\nendpoint = "{other.url}"\n'
            f'api_key_env = "{reliability.KEY_ENV}"\n',
            encoding="utf-8",
        )
        refused = reliability.churnsync("sync", "--config", str(wrong), env=env)
        line = reliability.one_line_error(refused.returncode, refused.stdout, refused.stderr)
        assert "401" in line and reliability.KEY_ENV in line
        outputs += [refused.stdout, refused.stderr]
    assert (tmp_path / "dry.ndjson").stat().st_size > 0 and (tmp_path / "metrics.prom").exists()

    settings = load_settings(path)
    with reliability.environment(**{reliability.KEY_ENV: SECRET, TOKEN_ENV: TOKEN}):
        app = create_app(settings.store.resolved_url(), settings=settings, token=TOKEN)
        with serve_dashboard(app, host="0.0.0.0") as running:
            url = f"http://127.0.0.1:{running.port}"
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                for page in [*PAGES, f"/customer?id={customer}", "/segments?a=churn_risk&o=%3D&v=high"]:
                    response = client.get(page)
                    assert response.status_code == 200, page
                    outputs.append(response.text)
            with httpx.Client(base_url=url) as anonymous:  # beyond localhost: nothing without the token
                assert all(anonymous.get(page).status_code == 401 for page in PAGES if page != "/login")

    for text in outputs:
        assert not leaks(text.encode()), text[:300]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 8
    for file in written:
        assert not leaks(file.read_bytes()), file
    engine = sa.create_engine(settings.store.resolved_url())
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            assert {"sync_runs", "sync_journal", "destination_state", "prediction_runs"} <= set(tables)
            for table in tables:
                rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).fetchall()
                assert not leaks(repr(rows).encode()), table
    finally:
        engine.dispose()


# -- TLS -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[bytes]]]:
    """An HTTPS server with a self-signed certificate that would accept every batch; records what it received."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    received: list[bytes] = []

    class Accept(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("content-length", 0))))
            body = b'{"message":"success"}'
            self.send_response(201)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Accept)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_tls_certificates_are_always_verified(tls_server: tuple[str, list[bytes]]) -> None:
    endpoint, received = tls_server
    outcomes = []
    destination = BrazeDestination(endpoint=endpoint, max_attempts=2, max_retry_seconds=5)
    counts = push_changes(
        [[Change("c1", {"churn_risk": "high"})]],
        name="braze",
        destination=destination,
        api_key=SECRET,
        on_batch=outcomes.append,
    )
    # The self-signed certificate is refused: nothing was delivered, not one request body reached the server.
    assert counts.accepted == 0 and counts.failed == 1
    assert outcomes[0].failed[0].reason.startswith("connection_error")
    assert received == []
    # No setting turns verification off.
    for key in ("verify", "verify_tls", "tls_verify", "insecure", "ssl_verify"):
        with pytest.raises(ConfigError, match="unknown key"):
            settings_from_mapping({"destinations": {"braze": {key: False}}})
    src = Path(__file__).resolve().parents[2] / "src" / "churnsync"
    for module in src.rglob("*.py"):
        text = module.read_text(encoding="utf-8")
        assert "verify=False" not in text and "CERT_NONE" not in text, module


# -- plain http ------------------------------------------------------------------------------------------------


def test_plain_http_is_refused_beyond_localhost_unless_explicitly_allowed(tmp_path: Path) -> None:
    assert track_url("http://127.0.0.1:9", "b").startswith("http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="plain http"):
        track_url("http://127.0.0.2:9", "b")
    assert track_url("http://127.0.0.2:9", "b", allow_http=True) == "http://127.0.0.2:9/users/track"

    url = f"sqlite:///{tmp_path / 's.db'}"
    with (
        AttributeStore.open(url) as store,
        serve_in_thread(
            EmulatorConfig(api_key=SECRET, known_external_ids=frozenset({"c1"})), host="127.0.0.2"
        ) as emulator,
    ):
        publish_one(store, "c1", "high")
        assert emulator.url.startswith("http://127.0.0.2:")

        def settings(**extra: Any) -> Any:
            return settings_from_mapping(
                {"store": {"url": url}, "destinations": {"braze": {"endpoint": emulator.url, **extra}}}
            )

        for attempt in (
            lambda: sync_destination(settings(), store, "braze", prediction_run_id=None, api_key=SECRET),
            lambda: write_dry_run(store, "braze", settings().destinations["braze"], tmp_path / "dry.ndjson"),
            lambda: audit_destination(store, "braze", settings().destinations["braze"], api_key=SECRET, sample=1),
        ):
            with pytest.raises(ConfigError, match="plain http"):
                attempt()
        assert emulator.state.stats()["requests_total"] == 0
        assert store.sync_runs()[0]["status"] == "failed"
        allowed = sync_destination(
            settings(allow_insecure_http=True), store, "braze", prediction_run_id=None, api_key=SECRET
        )
        assert allowed.status == "succeeded" and emulator.state.get_profile("c1") == {"churn_risk": "high"}


def publish_one(store: AttributeStore, customer_id: str, risk: str) -> None:
    run = store.start_prediction_run(
        as_of=datetime(2026, 6, 30, tzinfo=UTC), horizon_days=30, model_version="t", details={}
    )
    store.write_predictions(
        run, pa.table({"customer_id": [customer_id], "churn_risk": [risk]}), AttributeSettings(rules={})
    )
    store.finish_prediction_run(run, status="succeeded", summary={})


def test_the_dashboard_refuses_to_listen_beyond_localhost_without_a_token(reliability: ModuleType) -> None:
    saved = os.environ.pop(TOKEN_ENV, None)
    try:
        code, out, err = reliability.cli("serve", "--host", "0.0.0.0", "--port", "0")
    finally:
        if saved is not None:
            os.environ[TOKEN_ENV] = saved
    line = reliability.one_line_error(code, out, err)
    assert TOKEN_ENV in line and code == 2


# -- SQL only with bound parameters -----------------------------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE sync_runs; --",
    "Robert'); DROP TABLE customers;--",
    '" OR 1=1 --',
    "%s%s%(x)s",
    "?",
    "$1",
    "\\x00\\",
    "ü-ß-名前-🙂",
    "a,b\nc",
    "x" * 255,
    "<script>alert(1)</script>",
]


def test_hostile_ids_and_values_round_trip_intact(store_url: str, tmp_path: Path) -> None:
    ids = [f"id{i}:{text}"[:255] for i, text in enumerate(HOSTILE)]
    values = [text for text in HOSTILE]
    with (
        AttributeStore.open(store_url) as store,
        serve_in_thread(EmulatorConfig(api_key=SECRET, known_external_ids=frozenset(ids))) as emulator,
    ):
        run = store.start_prediction_run(
            as_of=datetime(2026, 6, 30, tzinfo=UTC), horizon_days=30, model_version="t", details={}
        )
        table = pa.table({"customer_id": ids, "segment": values, "churn_probability": [0.5] * len(ids)})
        store.write_predictions(run, table, AttributeSettings(rules={}))
        store.finish_prediction_run(run, status="succeeded", summary={})
        settings = settings_from_mapping(
            {"store": {"url": store_url}, "destinations": {"braze": {"endpoint": emulator.url}}}
        )
        report = sync_destination(settings, store, "braze", prediction_run_id=None, api_key=SECRET)
        assert report.status == "succeeded", report.counts.failures
        wanted = {c: {"segment": v, "churn_probability": 0.5} for c, v in zip(ids, values, strict=True)}
        assert store.current_values() == wanted
        assert store.acknowledged_state("braze") == wanted == emulator.state.profiles()
        for customer_id, value in zip(ids, values, strict=True):
            history = [e for e in store.history(customer_id) if e.attribute == "segment"]
            assert [e.new_value for e in history] == [value] and "braze" in history[0].acknowledged
        assert len(store.sync_runs()) == 1 and len(store.prediction_runs()) == 1  # every table is still there
        app = create_app(store_url, settings=settings)
        with serve_dashboard(app) as running, httpx.Client(base_url=running.url) as client:
            for customer_id in ids:
                page = client.get("/customer", params={"id": customer_id})
                assert page.status_code == 200 and str(markupsafe.escape(customer_id)) in page.text
            assert "<script>alert(1)</script>" not in client.get("/customer", params={"id": ids[-1]}).text
        assert ledger.failures(store) == []


# -- Braze's rules, checked before anything leaves ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({"attribute_rename": {"churn_risk": "email"}}, "standard Braze profile field"),
        ({"attribute_rename": {"churn_risk": "external_id"}}, "standard Braze profile field or identifier"),
        ({"attribute_prefix": "$"}, "starts with '$'"),
        ({"attribute_rename": {"churn_risk": "r" * 256}}, "longer than 255 characters"),
    ],
)
def test_a_name_braze_refuses_stops_the_run_before_anything_is_sent(
    mapping: dict[str, Any], problem: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with (
        AttributeStore.open(url) as store,
        serve_in_thread(EmulatorConfig(api_key=SECRET, known_external_ids=frozenset({"c1"}))) as emulator,
    ):
        publish_one(store, "c1", "high")
        settings = settings_from_mapping(
            {"store": {"url": url}, "destinations": {"braze": {"endpoint": emulator.url, **mapping}}}
        )
        with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
            sync_destination(settings, store, "braze", prediction_run_id=None, api_key=SECRET)
        assert "churn_risk" in str(caught.value) and len(str(caught.value).splitlines()) == 1
        assert emulator.state.stats()["requests_total"] == 0
        assert store.sync_runs()[0]["status"] == "failed"


def test_a_value_braze_refuses_is_quarantined_and_never_sent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with (
        AttributeStore.open(url) as store,
        serve_in_thread(EmulatorConfig(api_key=SECRET, known_external_ids=frozenset({"ok", "long"}))) as emulator,
    ):
        run = store.start_prediction_run(
            as_of=datetime(2026, 6, 30, tzinfo=UTC), horizon_days=30, model_version="t", details={}
        )
        table = pa.table({"customer_id": ["ok", "long"], "churn_risk": ["high", "h" * 256]})
        store.write_predictions(run, table, AttributeSettings(rules={}))
        store.finish_prediction_run(run, status="succeeded", summary={})
        settings = settings_from_mapping(
            {"store": {"url": url}, "destinations": {"braze": {"endpoint": emulator.url, "quarantine_after_runs": 2}}}
        )
        dry = write_dry_run(store, "braze", settings.destinations["braze"], tmp_path / "dry.ndjson")
        assert dry.customers == 1 and len(dry.selection.refused) == 1
        assert b'"long"' not in (tmp_path / "dry.ndjson").read_bytes()
        reports = [sync_destination(settings, store, "braze", prediction_run_id=None, api_key=SECRET) for _ in range(3)]
        assert [r.status for r in reports] == ["partial", "failed", "succeeded"]
        assert reports[0].counts.accepted == 1 and reports[0].counts.failed == 1
        assert reports[1].details["newly_quarantined"] == 1 and reports[2].details["skipped_quarantined"] == 1
        (row,) = ledger.failures(store, "braze")
        assert row["customer_id"] == "long" and "longer than 255 characters" in row["reason"] and row["quarantined_at"]
        assert emulator.state.profiles() == {"ok": {"churn_risk": "high"}, "long": {}}
        assert emulator.state.stats()["objects"]["received"] == 1  # the refused value never left
