"""The dashboard over a store filled by a real pipeline run (the demo + a sync Braze refuses), over real HTTP."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from churnsync.cli import app as cli
from churnsync.config import BrazeDestination, Settings, load_settings
from churnsync.demo import KEY_ENV, run_demo
from churnsync.errors import ConfigError, StoreError
from churnsync.models.churn import ChurnModel
from churnsync.models.registry import ModelRegistry
from churnsync.models.report import render_html
from churnsync.pipeline import evaluate_model, predict_and_store, sync_destination
from churnsync.store import ledger
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, serve_in_thread
from churnsync.sync.runner import write_dry_run
from churnsync.web import create_app
from churnsync.web.auth import TOKEN_ENV, allowed_hosts, is_loopback, required_token
from churnsync.web.queries import Filter, braze_filters, open_read_only, payload_preview, read_only_url
from churnsync.web.server import serve_in_thread as serve_dashboard

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
SECRET_KEY = "braze-secret-key-must-never-show-0123456789"
TOKEN = "dashboard-token-0123456789abcdef"
PAGES = ["/", "/model", "/predictions", "/customer", "/syncs", "/segments"]


@dataclass(frozen=True)
class Filled:
    """A store filled by real runs, the settings that wrote it, and `churnsync evaluate`'s report folder."""

    settings: Settings
    url: str
    report_dir: Path


def fill_store(folder: Path, *, customers: int = 600) -> Filled:
    """The demo's two runs and syncs, a sync to a second workspace that refuses every object, and the backtest."""
    demo = run_demo(folder, customers=customers, days=200, now=NOW)
    settings = load_settings(demo.config_path)
    # A workspace that refuses every object (per-object errors). A name Braze refuses (a "$" prefix, say) no longer
    # reaches Braze at all: the sync stops before sending (issue 9).
    with serve_in_thread(EmulatorConfig(api_key=SECRET_KEY, faults={"object": 1.0})) as emulator:
        strict = BrazeDestination(endpoint=emulator.url)
        settings = settings.model_copy(update={"destinations": {**settings.destinations, "braze_strict": strict}})
        with AttributeStore.open(demo.store_url) as store:
            sync_destination(settings, store, "braze_strict", prediction_run_id=2, api_key=SECRET_KEY)
            # Two dry runs of what Braze refused: one file kept (previewed), one deleted since.
            write_dry_run(store, "braze_strict", strict, folder / "gone.ndjson", now=NOW)
            (folder / "gone.ndjson").unlink()
            write_dry_run(store, "braze_strict", strict, folder / "dry-run.ndjson", now=NOW)
    report = evaluate_model(settings, now=NOW)
    report_dir = folder / "report"
    report_dir.mkdir()
    (report_dir / "report.json").write_text(json.dumps(report), encoding="utf-8")
    (report_dir / "report.html").write_text(render_html(report), encoding="utf-8")
    return Filled(settings, demo.store_url, report_dir)


def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    """One filled store per test session, shared by the web test modules (filling it trains a model)."""
    folder = tmp_path_factory.getbasetemp() / "web-shared-store"
    done = folder / "filled"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        filled = fill_store(folder)
        saved = {"settings": filled.settings.model_dump(mode="json"), "url": filled.url}
        done.write_text(json.dumps(saved), encoding="utf-8")
        return filled
    saved = json.loads(done.read_text(encoding="utf-8"))
    return Filled(Settings.model_validate(saved["settings"]), str(saved["url"]), folder / "report")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def dashboard(filled: Filled) -> Iterator[str]:
    app = create_app(filled.url, settings=filled.settings, report_dir=filled.report_dir)
    with serve_dashboard(app) as running:
        yield running.url


def store_count(url: str, predicate: Any) -> int:
    with AttributeStore(url) as store:
        return sum(1 for values in store.current_values().values() if predicate(values))


def test_every_page_answers_and_shows_the_runs(dashboard: str, filled: Filled) -> None:
    with httpx.Client(base_url=dashboard) as client:
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-security-policy"].startswith("default-src 'self'")
        overview = client.get("/").text
        assert "Customers by risk tier" in overview and "braze_emulator" in overview
        assert "600 customers have predictions" in overview
        syncs = client.get("/syncs").text
        assert "simulated: Braze could not process this object" in syncs  # Braze's reason for the refused customers
        model = client.get("/model").text
        assert "BG/NBD parameters per run" in model and "alpha" in model
        assert "Comparison with the baselines" in model and "(champion)" in model  # from the model registry
        assert "baseline BG/NBD P0" in model and 'href="/model/report.html"' in model  # the backtest report
        assert 'id="importance"' in model and "Feature importance (share of total" in model
        assert 'id="importance-missing"' not in model
        report = client.get("/model/report.html")
        assert report.status_code == 200 and report.text.lstrip().lower().startswith("<!doctype html>")
        predictions = client.get("/predictions").text
        assert "Distribution of churn_probability" in predictions and "Customers per churn_risk" in predictions
        assert "compared with run 1" in predictions


def test_training_records_feature_importance_shown_on_the_model_page(dashboard: str, filled: Filled) -> None:
    registry = ModelRegistry(filled.settings.model.registry_path)
    version = registry.in_service() or registry.versions()[0]["version"]
    record = registry.load(version)
    importance = record.meta["feature_importance"]
    assert {"gbm", "logistic"} <= set(importance)
    for shares in importance.values():
        assert sum(shares.values()) == pytest.approx(1.0) and min(shares.values()) >= 0.0
    # In marketer words, as churn_driver: the BTYD features are renamed.
    assert "predicted_inactivity" in importance["gbm"] and "btyd_p_no_purchase" not in importance["gbm"]
    assert ChurnModel.from_dict(record.artifact).feature_importance_ == importance
    champion = record.meta["champion"]
    top = max((importance.get(champion) or importance["gbm"]).items(), key=lambda kv: kv[1])[0]
    with httpx.Client(base_url=dashboard) as client:
        page = client.get("/model").text
    figure = json.loads(page.split('<script type="application/json" id="importance-data">', 1)[1].split("</script>")[0])
    bars = figure["data"][0]
    assert bars["orientation"] == "h" and bars["y"][-1] == top  # largest share on top
    assert sum(bars["x"]) == pytest.approx(1.0, abs=1e-6) or len(bars["x"]) == 20


def test_a_model_saved_without_importance_still_loads_and_says_so(filled: Filled, tmp_path: Path) -> None:
    source = ModelRegistry(filled.settings.model.registry_path)
    version = source.in_service() or source.versions()[0]["version"]
    shutil.copytree(source.path / version, tmp_path / "models" / version)
    file = tmp_path / "models" / version / "model.json"
    saved = json.loads(file.read_text(encoding="utf-8"))
    saved.pop("feature_importance")
    saved["artifact"]["state"].pop("feature_importance")
    file.write_text(json.dumps(saved), encoding="utf-8")
    old = ModelRegistry(tmp_path / "models").load(version)
    assert ChurnModel.from_dict(old.artifact).feature_importance_ == {}
    model_settings = filled.settings.model.model_copy(update={"registry_path": tmp_path / "models"})
    settings = filled.settings.model_copy(update={"model": model_settings})
    with serve_dashboard(create_app(filled.url, settings=settings)) as running, httpx.Client(base_url=running.url) as c:
        page = c.get("/model").text
    assert 'id="importance"' not in page and "Feature importance: not recorded for this model" in page


def figure_of(page: str, chart_id: str) -> dict[str, Any]:
    """The plotly figure a page embeds for chart ``chart_id``."""
    marker = f'<script type="application/json" id="{chart_id}-data">'
    assert marker in page, chart_id
    figure: dict[str, Any] = json.loads(page.split(marker, 1)[1].split("</script>")[0])
    return figure


def test_model_page_draws_the_registry_curves_without_a_report(dashboard: str, filled: Filled) -> None:
    registry = ModelRegistry(filled.settings.model.registry_path)
    record = registry.load(registry.in_service() or registry.versions()[0]["version"])
    curves = record.curves()
    assert curves is not None
    with serve_dashboard(create_app(filled.url, settings=filled.settings)) as running:
        page = httpx.get(running.url + "/model").text
    assert "start `churnsync serve` with --report DIR" in page  # no backtest report given
    calibration = figure_of(page, "calibration")
    line = calibration["data"][1]
    assert line["x"] == curves["calibration"]["predicted"] and line["y"] == curves["calibration"]["observed"]
    assert len(line["text"]) == len(curves["calibration"]["count"]) and line["text"][0].endswith(" customers")
    gains = figure_of(page, "gains")["data"][1]
    assert gains["y"] == [0, *curves["gains"]["gains"]] and gains["x"][-1] == 100
    assert 'id="calibration-missing"' not in page and 'id="gains-missing"' not in page
    # With the backtest report, its curves take priority: the registry's are not drawn a second time.
    with httpx.Client(base_url=dashboard) as client:
        served = client.get("/model").text
    assert 'id="report-calibration"' in served and 'id="report-gains"' in served
    assert 'id="calibration"' not in served and 'id="gains"' not in served
    assert "Calibration plot (validation window): drawn above, from the backtest report" in served


def test_a_model_saved_without_curves_still_loads_and_says_so(filled: Filled, tmp_path: Path) -> None:
    source = ModelRegistry(filled.settings.model.registry_path)
    version = source.in_service() or source.versions()[0]["version"]
    shutil.copytree(source.path / version, tmp_path / "models" / version)
    file = tmp_path / "models" / version / "model.json"
    saved = json.loads(file.read_text(encoding="utf-8"))
    saved.pop("validation_curves")
    saved["artifact"]["state"].pop("validation_curves")
    file.write_text(json.dumps(saved), encoding="utf-8")
    old = ModelRegistry(tmp_path / "models").load(version)
    assert old.curves() is None and ChurnModel.from_dict(old.artifact).validation_curves_ == {}
    model_settings = filled.settings.model.model_copy(update={"registry_path": tmp_path / "models"})
    settings = filled.settings.model_copy(update={"model": model_settings})
    with serve_dashboard(create_app(filled.url, settings=settings)) as running, httpx.Client(base_url=running.url) as c:
        page = c.get("/model").text
    assert 'id="calibration"' not in page and 'id="gains"' not in page
    assert "Calibration plot (validation window): not recorded for this model" in page
    assert "Gains chart (validation window): not recorded for this model" in page
    assert 'id="importance"' in page  # the rest of the saved model still shows


def test_syncs_page_lists_dry_runs_with_points_and_a_preview(dashboard: str, filled: Filled) -> None:
    with AttributeStore(filled.url) as store:
        runs = ledger.dry_runs(store)
    assert len(runs) == 2 and all(r["destination"] == "braze_strict" for r in runs)
    kept, _gone = runs
    assert kept["customers"] > 0 and kept["data_points"] == sum(kept["data_points_by_attribute"].values())
    with httpx.Client(base_url=dashboard) as client:
        page = client.get("/syncs").text
    section = page.split("<h2>Dry runs</h2>", 1)[1]
    assert 'id="dry-runs"' in section and "Not available yet" not in section
    assert kept["path"] in section and f'id="dry-run-{kept["id"]}"' in section
    for attribute, n in kept["data_points_by_attribute"].items():
        assert f'<td>{attribute}</td><td class="num">{n:,}</td>' in section
    first = json.loads(Path(kept["path"]).read_text(encoding="utf-8").splitlines()[0])["attributes"][0]
    assert f"&#34;external_id&#34;: &#34;{first['external_id']}&#34;" in section  # the preview of the first object
    assert "No payload preview: the file no longer exists." in section  # the deleted one
    assert SECRET_KEY not in page


def test_payload_preview_masks_secret_looking_keys_and_refuses_other_files(tmp_path: Path) -> None:
    edited = tmp_path / "edited.ndjson"
    body = {"api_key": SECRET_KEY, "attributes": [{"external_id": "a", "auth_token": SECRET_KEY, "x": 1}]}
    edited.write_text(json.dumps(body) + "\n", encoding="utf-8")
    objects, problem = payload_preview(str(edited))
    assert problem is None and objects == [{"external_id": "a", "auth_token": "***", "x": 1}]
    other = tmp_path / "other.txt"
    other.write_text("root:x:0:0\n", encoding="utf-8")
    assert payload_preview(str(other)) == ([], "the file is not a churnsync dry run (not NDJSON)")
    assert payload_preview(str(tmp_path / "none"))[1] == "the file no longer exists"


def test_charts_are_binned_not_raw_points(dashboard: str) -> None:
    page = httpx.get(f"{dashboard}/predictions").text
    figures = re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.S)
    assert len(figures) >= 4
    assert len(page) < 60_000  # 40 bins per chart whatever the number of customers


def test_plotly_is_served_by_the_app(dashboard: str) -> None:
    response = httpx.get(f"{dashboard}/plotly.min.js")
    assert response.status_code == 200
    assert response.text.lstrip().startswith("/**") and "plotly.js" in response.text[:200]
    page = httpx.get(f"{dashboard}/").text
    assert "cdn" not in page.lower() and 'src="/plotly.min.js"' in page


def test_customer_page_shows_history_and_what_each_destination_got(dashboard: str, filled: Filled) -> None:
    url = filled.url
    with AttributeStore(url) as store:
        customer_id = next(iter(store.current_values()))
        state = store.acknowledged_state("braze_emulator")[customer_id]
    page = httpx.get(f"{dashboard}/customer", params={"id": customer_id}).text
    assert "Current attributes" in page and "Probabilities: history of" in page
    assert "braze_emulator" in page and "braze_strict" in page  # acknowledged by one, refused by the other
    assert f"{state['churn_probability']:,.4g}" in page
    # Scored by both of the demo's runs: the last is the latest write's run (stored as 0 since revision 0009).
    assert "First scored by run 1, last by run 2." in page
    missing = httpx.get(f"{dashboard}/customer", params={"id": customer_id[:-1]}).text
    assert "No customer" in missing and customer_id in missing  # suggests ids with that prefix


@pytest.mark.parametrize(
    ("query", "predicate"),
    [
        ([("a", "churn_probability"), ("o", ">="), ("v", "0.7")], lambda v: v["churn_probability"] >= 0.7),
        (
            [("a", "churn_probability"), ("o", ">="), ("v", "0.5"), ("a", "p_alive"), ("o", "<"), ("v", "0.6")],
            lambda v: v["churn_probability"] >= 0.5 and v["p_alive"] < 0.6,
        ),
        ([("a", "churn_risk"), ("o", "="), ("v", "medium")], lambda v: v["churn_risk"] == "medium"),
        ([("a", "churn_risk"), ("o", "!="), ("v", "high")], lambda v: v["churn_risk"] != "high"),
        ([], lambda v: True),
    ],
)
def test_segment_count_and_export_match_the_store(dashboard: str, filled: Filled, query: Any, predicate: Any) -> None:
    expected = store_count(filled.url, predicate)
    page = httpx.get(f"{dashboard}/segments", params=query).text
    shown = re.search(r'<span id="segment-count">(\d+)</span>', page)
    assert shown is not None and int(shown.group(1)) == expected
    exported = httpx.get(f"{dashboard}/segments.csv", params=query)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0][0] == "customer_id" and "churn_probability" in rows[0]
    assert len(rows) - 1 == expected


def test_segment_builder_reports_bad_filters(dashboard: str) -> None:
    page = httpx.get(f"{dashboard}/segments", params=[("a", "churn_probability"), ("o", ">="), ("v", "lots")]).text
    assert "is not a number" in page and "segment-count" not in page
    assert httpx.get(f"{dashboard}/segments.csv", params=[("a", "nope"), ("o", "="), ("v", "1")]).status_code == 400


def test_braze_filters_are_written_out_with_the_destination_prefix() -> None:
    lines = braze_filters([Filter("churn_probability", ">=", 0.7), Filter("churn_risk", "=", "high")], "cs_")
    assert lines == [
        "Custom Attribute 'cs_churn_probability' (number) more than 0.7 OR "
        "Custom Attribute 'cs_churn_probability' (number) exactly 0.7",
        "Custom Attribute 'cs_churn_risk' (string) equals high",
    ]


def test_no_secret_appears_on_any_page(filled: Filled, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, url = filled.settings, filled.url
    monkeypatch.setenv(KEY_ENV, SECRET_KEY)
    monkeypatch.setenv("BRAZE_API_KEY", SECRET_KEY)
    with serve_dashboard(create_app(url, settings=settings, token=TOKEN)) as running:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=running.url, headers=headers) as client:
            customer = next(iter(AttributeStore(url).current_values()))
            for path in [*PAGES, f"/customer?id={customer}", "/segments?a=churn_risk&o=%3D&v=high", "/login"]:
                body = client.get(path).text
                assert SECRET_KEY not in body and TOKEN not in body, path


def test_a_password_in_the_store_url_is_hidden() -> None:
    url = "postgresql+psycopg://churn:s3cret-pw@db.example:5432/churn"
    assert sa.make_url(read_only_url(url)).query["options"] == "-c default_transaction_read_only=on"
    store = open_read_only(url)
    try:
        assert "s3cret-pw" not in store.url
    finally:
        store.close()


def test_the_token_is_enforced_on_every_request(filled: Filled) -> None:
    settings, url = filled.settings, filled.url
    app = create_app(url, settings=settings, token=TOKEN)
    with serve_dashboard(app) as running, httpx.Client(base_url=running.url) as client:
        for path in [*PAGES, "/segments.csv", "/plotly.min.js", "/static/app.js"]:
            assert client.get(path).status_code == 401, path
        assert client.get("/", headers={"X-Churnsync-Token": "wrong" + TOKEN}).status_code == 401
        assert client.get("/", headers={"X-Churnsync-Token": TOKEN}).status_code == 200
        assert client.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        html = client.get("/syncs", headers={"Accept": "text/html"})
        assert html.status_code == 303 and html.headers["location"] == "/login?next=%2Fsyncs"
        refused = client.post("/login", data={"token": "nope", "next": "/syncs"})
        assert refused.status_code == 303 and "failed=1" in refused.headers["location"]
        assert client.get("/syncs").status_code == 401
        signed_in = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
        assert "httponly" in signed_in.headers["set-cookie"].lower()
        assert client.get("/syncs").status_code == 200  # the cookie carries the token from now on


def test_on_loopback_other_host_names_are_refused(filled: Filled) -> None:
    app = create_app(filled.url, allowed_hosts=allowed_hosts("127.0.0.1"))
    with serve_dashboard(app) as running, httpx.Client(base_url=running.url) as client:
        assert client.get("/").status_code == 200
        assert client.get("/", headers={"Host": "localhost"}).status_code == 200
        assert client.get("/", headers={"Host": "rebound.example"}).status_code == 400
    assert allowed_hosts("0.0.0.0") is None


def test_binding_beyond_loopback_requires_a_long_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert required_token("127.0.0.1", None) is None
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        required_token("0.0.0.0", None)
    with pytest.raises(ConfigError, match="fewer than 16"):
        required_token("0.0.0.0", "short")
    assert required_token("0.0.0.0", TOKEN) == TOKEN
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)


def test_the_dashboard_never_writes(filled: Filled) -> None:
    url = filled.url
    path = Path(sa.make_url(url).database or "")
    before = path.stat().st_mtime_ns, path.read_bytes()
    with serve_dashboard(create_app(url)) as running, httpx.Client(base_url=running.url) as client:
        for page in PAGES:
            assert client.get(page).status_code == 200
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    store = open_read_only(url)
    try:
        with pytest.raises(StoreError):
            store.start_prediction_run(as_of=NOW, horizon_days=30, model_version="x", details={})
    finally:
        store.close()


def test_a_missing_store_is_a_page_with_a_remedy(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    with serve_dashboard(create_app(f"sqlite:///{missing}")) as running:
        response = httpx.get(running.url + "/")
    assert response.status_code == 503 and "cannot be read" in response.text
    assert not missing.exists()  # read-only: the dashboard does not create a store


@pytest.mark.postgres
def test_pages_and_segment_counts_on_postgresql(filled: Filled, postgres_url: str) -> None:
    settings = filled.settings
    settings = settings.model_copy(update={"store": settings.store.model_copy(update={"url": postgres_url})})
    with AttributeStore.open(postgres_url) as store:
        predict_and_store(settings, store, now=NOW)
    expected = store_count(postgres_url, lambda v: v["churn_probability"] >= 0.7)
    app = create_app(postgres_url, settings=settings)
    with serve_dashboard(app) as running, httpx.Client(base_url=running.url) as client:
        for path in PAGES:
            assert client.get(path).status_code == 200, path
        page = client.get("/segments", params=[("a", "churn_probability"), ("o", ">="), ("v", "0.7")]).text
    shown = re.search(r'<span id="segment-count">(\d+)</span>', page)
    assert shown is not None and int(shown.group(1)) == expected
    store = open_read_only(postgres_url)
    try:
        with pytest.raises(StoreError, match="read-only"):
            store.start_prediction_run(as_of=NOW, horizon_days=30, model_version="x", details={})
    finally:
        store.close()


def test_pages_follow_a_new_prediction_run(tmp_path: Path) -> None:
    import pyarrow as pa

    from churnsync.config import AttributeSettings

    url = f"sqlite:///{tmp_path / 'store.db'}"

    def run(probabilities: list[float]) -> None:
        ids = [f"c{i}" for i in range(len(probabilities))]
        table = pa.table({"customer_id": ids, "churn_probability": probabilities})
        with AttributeStore.open(url) as store:
            run_id = store.start_prediction_run(as_of=NOW, horizon_days=30, model_version="m", details={})
            store.write_predictions(run_id, table, AttributeSettings())
            store.finish_prediction_run(run_id, status="succeeded", summary={})

    run([0.1, 0.5, 0.9])
    with serve_dashboard(create_app(url)) as running, httpx.Client(base_url=running.url) as client:
        first = client.get("/predictions").text
        assert "Run 1 (the first run" in first and "3 customers" in first
        run([0.1, 0.8, 0.9, 0.95])
        second = client.get("/predictions").text
        assert "Run 2 compared with run 1" in second and "4 customers" in second
        page = client.get("/segments", params=[("a", "churn_probability"), ("o", ">"), ("v", "0.85")]).text
        assert '<span id="segment-count">2</span>' in page


#: A store at revision 0009 (before attribute codes): names in the rows. Customer a moved in run 2; b and c did not.
ROWS_0009 = [
    "INSERT INTO prediction_runs (id, started_at, finished_at, status, as_of, horizon_days, model_version, "
    "customers_scored, details, summary) VALUES (1, :t0, :t0, 'succeeded', :t0, 30, 'm', 3, '{}', '{}'), "
    "(2, :t1, :t1, 'succeeded', :t1, 30, 'm', 3, '{}', '{}')",
    "INSERT INTO attribute_values (customer_id, attribute, num_value, text_value, prediction_run_id, updated_at) "
    "VALUES ('a', 'churn_probability', 0.9, NULL, 2, :t1), ('a', 'churn_risk', NULL, 'high', 2, :t1), "
    "('b', 'churn_probability', 0.1, NULL, 1, :t0), ('b', 'churn_risk', NULL, 'low', 1, :t0), "
    "('c', 'churn_probability', 0.5, NULL, 1, :t0), ('c', 'churn_risk', NULL, 'low', 1, :t0)",
    "INSERT INTO attribute_history (customer_id, attribute, num_value, text_value, prediction_run_id, "
    "replaced_by_run_id, valid_from, valid_to) VALUES ('a', 'churn_probability', 0.3, NULL, 1, 2, :t0, :t1), "
    "('a', 'churn_risk', NULL, 'low', 1, 2, :t0, :t1)",
    "INSERT INTO sync_runs (id, destination, prediction_run_id, started_at, finished_at, status) "
    "VALUES (1, 'braze', 1, :t0, :t0, 'succeeded'), (2, 'braze', 2, :t1, :t1, 'succeeded')",
    "INSERT INTO destination_state (destination, customer_id, attribute, num_value, text_value, sync_run_id, "
    "acknowledged_at) VALUES ('braze', 'a', 'churn_risk', NULL, 'high', 2, :t1)",
    "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute, num_value, text_value, "
    "acknowledged_at) VALUES (1, 'braze', 'a', 'churn_risk', NULL, 'low', :t0)",
]


@pytest.mark.postgres
def test_the_dashboard_reads_a_store_not_yet_at_revision_0010(store_url: str) -> None:
    """A store at 0009 names the attribute in every row (0010 keeps a code): the dashboard, which never migrates it,
    lists the attributes, bins them, counts segments and shows the latest run's movement from the names."""
    from alembic import command

    from churnsync.store.schema import UtcDateTime
    from churnsync.store.store import alembic_config
    from churnsync.web import queries as q

    t0, t1 = datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 2, tzinfo=UTC)
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0009")
            for sql in ROWS_0009:
                times = (sa.bindparam("t0", t0, type_=UtcDateTime), sa.bindparam("t1", t1, type_=UtcDateTime))
                conn.execute(sa.text(sql).bindparams(*(t for t in times if f":{t.key}" in sql)))
        if engine.dialect.name == "sqlite":  # as churnsync leaves its stores: a read-only reader cannot switch to WAL
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()

    store = open_read_only(store_url)
    try:
        infos = q.attributes(store)
        assert [(i.name, i.numeric, i.customers, i.minimum, i.maximum) for i in infos] == [
            ("churn_probability", True, 3, 0.1, 0.9),
            ("churn_risk", False, 3, None, None),
        ]
        bins = q.histograms(store, infos)
        assert list(bins) == ["churn_probability"]
        counts = bins["churn_probability"].counts
        assert sum(counts) == 3 and counts[0] == 1 and counts[-1] == 1
        assert q.value_counts(store, ["churn_risk"]) == {"churn_risk": [("low", 2), ("high", 1)]}
        likely = q.Filter("churn_probability", ">=", 0.5)
        assert q.segment_count(store, [likely]) == 2
        assert q.segment_preview(store, [likely, q.Filter("churn_risk", "=", "low")], infos) == [
            {"customer_id": "c", "churn_probability": 0.5, "churn_risk": "low"}
        ]
        moved = q.movement(store, 2, 1, ["churn_probability"])
        assert moved.changed_per_attribute == [("churn_probability", 1), ("churn_risk", 1)]
        assert moved.transitions == {"churn_risk": [("low", "high", 1)]}
        assert sum(moved.deltas["churn_probability"].counts) == 1
        view = q.destination_view(store, "a", q.available_tables(store))
        assert [(r["attribute"], r["value"]) for r in view["state"]] == [("churn_risk", "high")]
        assert [(r["attribute"], r["value"], r["latest"]) for r in view["acks"]] == [
            ("churn_risk", "high", True),
            ("churn_risk", "low", False),
        ]
    finally:
        store.close()

    with serve_dashboard(create_app(store_url)) as running, httpx.Client(base_url=running.url) as client:
        predictions = client.get("/predictions")
        segment = client.get("/segments", params=[("a", "churn_probability"), ("o", ">="), ("v", "0.5")])
        customer = client.get("/customer", params={"id": "a"})
    assert predictions.status_code == 200 and "Distribution of churn_probability" in predictions.text
    # The customer page (the store's own reads) says what to do instead of failing on the missing codes.
    assert customer.status_code == 503 and "churnsync runs" in customer.text
    assert "no such table" not in customer.text and "does not exist" not in customer.text
    assert "Run 2 compared with run 1" in predictions.text
    assert segment.status_code == 200 and '<span id="segment-count">2</span>' in segment.text
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:  # read, never migrated
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == "0009"
            assert not sa.inspect(conn).has_table("attributes")
    finally:
        engine.dispose()
