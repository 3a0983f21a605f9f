"""Several predictions side by side (issue 3): 30-day purchase churn and 7-day session churn in one run.

Through the real command line (subprocesses), a real store (SQLite and PostgreSQL), the real Braze emulator and
the real model registry: both attribute sets stored and synced, one registry entry and gate decision per
prediction, the scored population, attribute-name collisions, and ``--as-of`` reproducibility.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from churnsync.config import AttributeRule, Settings, load_settings, settings_from_mapping
from churnsync.errors import ConfigError
from churnsync.events.generator import GenerateResult, generate_sample
from churnsync.models.registry import ModelRegistry
from churnsync.pipeline import published_rules
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread

KEY = "multi-prediction-key-0123456789"
TODAY = datetime.now(UTC).date()
DAYS = 200
CUSTOMERS = 700
AS_OF = TODAY - timedelta(days=15)
SESSION = ["churn_probability_session_7d", "churn_risk_session_7d", "expected_purchases_7d_session_7d",
           "p_alive_session_7d", "churn_driver_session_7d", "segment_session_7d"]  # fmt: skip
PURCHASE = ["churn_probability", "churn_risk", "expected_purchases_30d", "p_alive", "churn_driver", "segment"]

PREDICTIONS = """
[predictions.purchase_30d]       # publishes the plain names
horizon_days = 30
qualifying_events = ["purchase"]
attribute_suffix = ""

[predictions.session_7d]         # publishes churn_probability_session_7d, ...
horizon_days = 7
qualifying_events = ["session"]
active_within_days = 30          # only customers with any event in the last 30 days are scored
risk_cut_points = [0.4, 0.8]
"""


def churnsync(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "CHURNSYNC_")) and k != "NO_COLOR"}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "churnsync", *args], capture_output=True, text=True, env=clean, timeout=600
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    return generate_sample(
        tmp_path_factory.mktemp("multi"), customers=CUSTOMERS, days=DAYS, seed=21, start=TODAY - timedelta(days=DAYS)
    )


@pytest.fixture
def emulator(sample: GenerateResult) -> Iterator[RunningEmulator]:
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = frozenset(row["customer_id"] for row in csv.DictReader(f))
    with serve_in_thread(EmulatorConfig(api_key=KEY, known_external_ids=ids)) as running:
        yield running


def write_config(
    folder: Path, events: str | list[str], *, store: str, endpoint: str = "", extra: str = "", model: str = ""
) -> Path:
    paths = json.dumps([events] if isinstance(events, str) else events)
    destination = f'[destinations.braze]\nendpoint = "{endpoint}"\n' if endpoint else ""
    path = folder / "churnsync.toml"
    path.write_text(
        f"""
[data]
paths = {paths}
rejects_path = "rejects.csv"

[store]
url = "{store}"

[model]
registry_path = "models"
n_estimators = 30
{model}
{PREDICTIONS}
{extra}
{destination}
""",
        encoding="utf-8",
    )
    return path


def active_customers(events: Path, as_of: date, days: int) -> set[str]:
    """Who had any event in the ``days`` days up to the end of ``as_of`` (computed here, independently)."""
    end = datetime.combine(as_of + timedelta(days=1), datetime.min.time())
    rows = duckdb.sql(
        f"SELECT DISTINCT customer_id FROM read_csv_auto('{events}') "
        f"WHERE CAST(occurred_at AS TIMESTAMP) >= TIMESTAMP '{end - timedelta(days=days)}' "
        f"AND CAST(occurred_at AS TIMESTAMP) < TIMESTAMP '{end}'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def session_customers(events: Path, as_of: date) -> set[str]:
    end = datetime.combine(as_of + timedelta(days=1), datetime.min.time())
    rows = duckdb.sql(
        f"SELECT DISTINCT customer_id FROM read_csv_auto('{events}') WHERE event_type = 'session' "
        f"AND CAST(occurred_at AS TIMESTAMP) < TIMESTAMP '{end}'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def test_two_predictions_trained_scored_stored_and_synced_in_one_run(
    tmp_path: Path, sample: GenerateResult, emulator: RunningEmulator, store_url: str
) -> None:
    config = write_config(tmp_path, str(sample.events_path), store=store_url, endpoint=emulator.url)
    result = churnsync("run", "--config", str(config), "--as-of", AS_OF.isoformat(), BRAZE_API_KEY=KEY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "prediction purchase_30d" in result.stdout and "prediction session_7d" in result.stdout
    assert "Sync 1 → braze: succeeded" in result.stdout

    # Separate registry entries, one in service per prediction, each with its own gate decision.
    registry = ModelRegistry(tmp_path / "models")
    by_name = {v["prediction_name"]: v for v in registry.versions()}
    assert set(by_name) == {"purchase_30d", "session_7d"}
    purchase, session = by_name["purchase_30d"], by_name["session_7d"]
    assert registry.in_service("purchase_30d") == purchase["version"] and purchase["in_service"]
    assert registry.in_service("session_7d") == session["version"] and session["in_service"]
    assert session["version"].startswith("churn-session_7d-") and registry.in_service() is None
    assert purchase["prediction"]["horizon_days"] == 30 and purchase["prediction"]["qualifying_events"] == ["purchase"]
    assert session["prediction"]["horizon_days"] == 7 and session["prediction"]["qualifying_events"] == ["session"]
    assert purchase["gate"]["published"] and session["gate"]["published"]

    store = AttributeStore.open(store_url)
    try:
        current = store.current_values()
        run = store.prediction_runs(limit=1)[0]
        acknowledged = store.acknowledged_state("braze")
    finally:
        store.close()
    assert run["model_version"] == f"purchase_30d={purchase['version']}; session_7d={session['version']}"
    assert run["details"]["predictions"]["session_7d"]["population"]["active_within_days"] == 30

    # Population: session_7d scores exactly the customers with a session before the cut and any event in the
    # last 30 days; purchase_30d (no population filter) every customer with a purchase.
    active = active_customers(sample.events_path, AS_OF, 30)
    has_session = session_customers(sample.events_path, AS_OF)
    scored_session = {c for c, attrs in current.items() if "churn_probability_session_7d" in attrs}
    assert scored_session == has_session & active
    assert 0 < len(scored_session) < len(has_session)  # the filter really left customers out
    outside = has_session - active
    assert outside and not any("churn_risk_session_7d" in current.get(c, {}) for c in outside)
    assert run["details"]["predictions"]["session_7d"]["customers_scored"] == len(scored_session)
    both = [c for c in scored_session if "churn_probability" in current[c]]
    assert both
    for customer in both[:50]:
        attrs = current[customer]
        assert set(PURCHASE + SESSION) <= set(attrs)
        tier = attrs["churn_risk_session_7d"]
        p = float(attrs["churn_probability_session_7d"])  # type: ignore[arg-type]
        # This prediction's risk_cut_points = [0.4, 0.8] (the stored probability is rounded to 2 decimals).
        expected = {"low"} if p < 0.395 else {"high"} if p > 0.805 else {"medium"}
        if abs(p - 0.4) < 0.006 or abs(p - 0.8) < 0.006:
            expected = {"low", "medium"} if p < 0.6 else {"medium", "high"}
        assert tier in expected, (customer, p, tier)

    # Both attribute sets reached Braze, exactly as the store recorded them acknowledged.
    profiles = emulator.state.profiles()
    assert set(profiles) >= set(current)
    for customer in both[:50]:
        profile = profiles[customer]
        for name in PURCHASE + SESSION:
            assert profile[name] == acknowledged[customer][name] == current[customer][name], (customer, name)

    # The dashboard reads a store and a registry holding two predictions, and names them where it lists models.
    import httpx

    from churnsync.web import create_app
    from churnsync.web.server import serve_in_thread as serve_dashboard

    app = create_app(store_url, settings=load_settings(config))
    with serve_dashboard(app) as running, httpx.Client(base_url=running.url) as client:
        pages = {path: client.get(path) for path in ("/", "/model", "/predictions", f"/customer?id={both[0]}")}
    assert {path: r.status_code for path, r in pages.items()} == dict.fromkeys(pages, 200)
    versions_table = pages["/model"].text.split('id="versions"', 1)[1]
    assert "<td>purchase_30d</td>" in versions_table and "<td>session_7d</td>" in versions_table
    assert "churn_probability_session_7d" in pages[f"/customer?id={both[0]}"].text

    listed = churnsync("models", "list", "--config", str(config), "--prediction", "session_7d", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["version"] for r in json.loads(listed.stdout)] == [session["version"]]
    shown = churnsync("models", "show", "--config", str(config), "--prediction", "purchase_30d")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == purchase["version"]


def test_gate_decides_per_prediction_and_run_scores_only_the_named_prediction(
    tmp_path: Path, sample: GenerateResult
) -> None:
    store = f"sqlite:///{tmp_path / 'store.db'}"
    config = write_config(tmp_path, str(sample.events_path), store=store)
    trained = churnsync("train", "--config", str(config), "--as-of", AS_OF.isoformat(), "--json")
    assert trained.returncode == 0, trained.stderr
    first = {r["prediction"]: r for r in json.loads(trained.stdout)}
    assert set(first) == {"purchase_30d", "session_7d"} and all(r["published"] for r in first.values())

    # A floor no model reaches, retraining session_7d only: refused; purchase_30d is not touched.
    strict = write_config(tmp_path, str(sample.events_path), store=store, model="gate_min_auc = 0.999")
    refused = churnsync(
        "train", "--config", str(strict), "--as-of", AS_OF.isoformat(), "--prediction", "session_7d", "--json"
    )
    assert refused.returncode == 0, refused.stderr
    second = json.loads(refused.stdout)
    assert second["prediction"] == "session_7d" and not second["published"] and "gate_min_auc" in second["reason"]
    registry = ModelRegistry(tmp_path / "models")
    assert registry.in_service("session_7d") == first["session_7d"]["version"]
    assert registry.in_service("purchase_30d") == first["purchase_30d"]["version"]
    meta = registry.load(second["version"]).meta
    # Its gate compared it with its own prediction's model in service, not with the purchase model.
    assert meta["prediction_name"] == "session_7d" and meta["gate"]["previous"] == first["session_7d"]["version"]
    assert len(registry.versions("session_7d")) == 2 and len(registry.versions("purchase_30d")) == 1

    # The backtest report of one prediction, beside that prediction's model in service.
    out = tmp_path / "report"
    evaluated = churnsync("evaluate", "--config", str(strict), "--as-of", AS_OF.isoformat(),
                          "--prediction", "session_7d", "--out", str(out))  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    report = json.loads((out / "session_7d" / "report.json").read_text(encoding="utf-8"))
    assert report["prediction"] == "session_7d" and report["definition"]["horizon_days"] == 7
    assert report["model_in_service"]["version"] == first["session_7d"]["version"]
    assert (out / "session_7d" / "report.html").stat().st_size > 0 and not (out / "purchase_30d").exists()

    # `run --prediction session_7d` scores only that prediction, with the model in service.
    ran = churnsync("run", "--config", str(strict), "--as-of", AS_OF.isoformat(), "--no-sync",
                    "--prediction", "session_7d")  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    opened = AttributeStore.open(store)
    try:
        current = opened.current_values()
        run = opened.prediction_runs(limit=1)[0]
    finally:
        opened.close()
    assert run["model_version"] == f"session_7d={first['session_7d']['version']}"
    names = set().union(*(set(a) for a in current.values()))
    assert "churn_probability_session_7d" in names and "churn_probability" not in names

    # `schedule --once` predicts too, so it takes --as-of (and refuses it without --once). Ten days later, customers
    # who left session_7d's population (no event in the last 30 days) have their session values cleared.
    later = AS_OF + timedelta(days=10)
    scheduled = churnsync("schedule", "--once", "--config", str(strict), "--as-of", later.isoformat())
    assert scheduled.returncode == 0, scheduled.stdout + scheduled.stderr
    assert f"as of {later.isoformat()}" in scheduled.stdout
    one_line_error(churnsync("schedule", "--config", str(strict), "--as-of", later.isoformat()), "--once")
    opened = AttributeStore.open(store)
    try:
        after = opened.current_values()
    finally:
        opened.close()
    scored_after = {c for c, a in after.items() if a.get("churn_probability_session_7d") is not None}
    population = session_customers(sample.events_path, later) & active_customers(sample.events_path, later, 30)
    assert scored_after == population
    left = {c for c, a in current.items() if "churn_probability_session_7d" in a} - population
    assert left and all(after[c].get("churn_risk_session_7d") is None for c in left)

    unknown = churnsync("run", "--config", str(strict), "--no-sync", "--prediction", "nope")
    one_line_error(unknown, "--prediction", "'nope'", "purchase_30d, session_7d")


def test_same_as_of_gives_the_same_predictions_and_later_events_are_ignored(
    tmp_path: Path, sample: GenerateResult
) -> None:
    # Events after the as-of date: every customer buys and visits on a later day, which would change every score.
    later = tmp_path / "later.csv"
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = [row["customer_id"] for row in csv.DictReader(f)]
    when = datetime.combine(AS_OF + timedelta(days=5), datetime.min.time()).strftime("%Y-%m-%dT%H:%M:%SZ")
    with later.open("w", encoding="utf-8") as f:
        f.write("customer_id,occurred_at,event_type,value\n")
        for customer in ids:
            f.write(f"{customer},{when},purchase,25.0\n{customer},{when},session,\n")

    values = []
    for name, events in (("a", [str(sample.events_path)]), ("b", [str(sample.events_path)]),
                         ("c", [str(sample.events_path), str(later)])):  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        config = write_config(folder, events, store="sqlite:///store.db")
        result = churnsync("run", "--config", str(config), "--as-of", AS_OF.isoformat(), "--no-sync")
        assert result.returncode == 0, result.stdout + result.stderr
        store = AttributeStore.open(f"sqlite:///{folder / 'store.db'}")
        try:
            values.append(store.current_values())
        finally:
            store.close()
    assert values[0] == values[1]  # same data, same as-of, fresh registry: the same predictions
    assert values[2] == values[0]  # events after the as-of date change nothing
    # ...while scoring after them does see them (the check above is not vacuous).
    folder = tmp_path / "d"
    folder.mkdir()
    config = write_config(folder, [str(sample.events_path), str(later)], store="sqlite:///store.db")
    after = (AS_OF + timedelta(days=5)).isoformat()
    result = churnsync("run", "--config", str(config), "--as-of", after, "--no-sync", "--prediction", "purchase_30d")
    assert result.returncode == 0, result.stdout + result.stderr
    store = AttributeStore.open(f"sqlite:///{folder / 'store.db'}")
    try:
        moved = store.current_values()
    finally:
        store.close()
    assert sum(moved[c]["churn_probability"] != values[0][c]["churn_probability"] for c in values[0]) > len(ids) // 2


def test_attribute_collisions_are_configuration_errors_naming_both_predictions(tmp_path: Path) -> None:
    path = tmp_path / "churnsync.toml"
    path.write_text(
        '[predictions.purchase_30d]\nattribute_suffix = ""\n'
        '[predictions.purchase_again]\nhorizon_days = 60\nattribute_suffix = ""\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert "predictions.purchase_30d and predictions.purchase_again" in message and "'churn_probability'" in message
    assert str(path) in message and "\n" not in message
    # Through the CLI: one line, exit 2.
    one_line_error(churnsync("run", "--config", str(path), "--no-sync"), "predictions.purchase_30d", str(path))

    # The same suffix twice collides too.
    with pytest.raises(ConfigError, match=r"predictions\.a and predictions\.b .*'churn_probability_x'"):
        settings_from_mapping({"predictions": {"a": {"attribute_suffix": "_x"}, "b": {"attribute_suffix": "_x"}}})
    with pytest.raises(ConfigError, match=r"key 'predictions\.a\.horizon_days'"):
        settings_from_mapping({"predictions": {"a": {"horizon_days": 0}}})
    with pytest.raises(ConfigError, match=r"key 'predictions\.a\.risk_cut_points': must be two numbers"):
        settings_from_mapping({"predictions": {"a": {"risk_cut_points": [0.8, 0.2]}}})
    with pytest.raises(ConfigError, match=r"predictions\.Bad: a prediction name"):
        settings_from_mapping({"predictions": {"Bad": {}}})
    with pytest.raises(ConfigError, match=r"predictions\.a\.attribute_suffix"):
        settings_from_mapping({"predictions": {"a": {"attribute_suffix": "-x"}}})
    with pytest.raises(ConfigError, match=r"unknown key 'predictions\.a\.as_of'"):
        settings_from_mapping({"predictions": {"a": {"as_of": "2026-01-01"}}})


def test_named_predictions_inherit_prediction_and_the_single_prediction_is_unchanged() -> None:
    single = Settings()
    (spec,) = single.prediction_specs()
    assert spec.name == "default" and spec.attribute_suffix == "" and spec.settings == single.prediction
    settings = settings_from_mapping(
        {
            "prediction": {"clv_horizon_days": 180, "as_of": "2026-03-01", "active_within_days": 90},
            "predictions": {"purchase_30d": {}, "session_7d": {"horizon_days": 7, "qualifying_events": ["session"]}},
        }
    )
    purchase, session = settings.prediction_specs()
    assert purchase.attribute_suffix == "_purchase_30d" and session.attribute_suffix == "_session_7d"
    assert purchase.settings.clv_horizon_days == session.settings.clv_horizon_days == 180
    assert purchase.settings.active_within_days == 90 and session.settings.horizon_days == 7
    assert session.settings.as_of == date(2026, 3, 1) and purchase.settings.horizon_days == 30
    assert "clv_180d_session_7d" in session.published()
    scoped = settings.for_prediction(session)
    assert scoped.prediction.qualifying_events == ["session"] and scoped.model == settings.model


def test_change_rules_follow_each_published_name(store_url: str, fixed_now: datetime) -> None:
    import pyarrow as pa

    settings = settings_from_mapping(
        {
            "predictions": {"purchase_30d": {"attribute_suffix": ""}, "session_7d": {"horizon_days": 7}},
            "attributes": {
                "rules": {
                    "churn_probability": {"round": 2, "abs_tolerance": 0.05, "unless_changed": ["churn_risk"]},
                    "p_alive_session_7d": {"round": 3},
                }
            },
        }
    )
    rules = published_rules(settings.attributes, settings.prediction_specs())
    assert rules.rule_for("churn_probability_session_7d") == AttributeRule(
        round=2, abs_tolerance=0.05, unless_changed=["churn_risk_session_7d"]
    )
    assert rules.rule_for("churn_probability").unless_changed == ["churn_risk"]
    assert rules.rule_for("p_alive_session_7d") == AttributeRule(round=3)  # its own rule wins
    default_rules = published_rules(Settings().attributes, settings.prediction_specs())
    assert default_rules.rule_for("expected_purchases_7d_session_7d").abs_tolerance == 0.05
    assert default_rules.rule_for("clv_365d_session_7d").rel_tolerance == 0.05

    def table(p: list[float], tier: list[str], p7: list[float], tier7: list[str]) -> pa.Table:
        return pa.table({"customer_id": ["a", "b"], "churn_probability": p, "churn_risk": tier,
                         "churn_probability_session_7d": p7, "churn_risk_session_7d": tier7})  # fmt: skip

    store = AttributeStore.open(store_url, clock=lambda: fixed_now)
    try:
        for step, t in enumerate(
            [
                table([0.30, 0.30], ["low", "low"], [0.30, 0.30], ["low", "low"]),
                # b's session tier moved: b's session probability is re-sent although it moved less than 0.05;
                # a's purchase tier moved: only a's purchase probability is coupled, not its session one.
                table([0.52, 0.33], ["medium", "low"], [0.33, 0.33], ["low", "medium"]),
            ]
        ):
            run = store.start_prediction_run(as_of=fixed_now, horizon_days=30, model_version=f"m{step}", details={})
            store.write_predictions(run, t, rules)
            store.finish_prediction_run(run, status="succeeded", summary={})
        current = store.current_values()
    finally:
        store.close()
    assert current["a"]["churn_probability"] == 0.52 and current["a"]["churn_probability_session_7d"] == 0.30
    assert current["b"]["churn_probability"] == 0.30 and current["b"]["churn_probability_session_7d"] == 0.33


def test_registry_keys_by_prediction_and_reads_a_registry_from_before(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    registry = ModelRegistry(folder)
    old = registry.save({"model": "churn", "state": {}}, {"champion": "bgnbd"})
    # A registry written before several predictions: no prediction name, a one-model service pointer.
    record = json.loads((folder / old / "model.json").read_text())
    record.pop("prediction_name")
    (folder / old / "model.json").write_text(json.dumps(record))
    (folder / "service.json").write_text(json.dumps({"version": old, "since": "2026-01-01T00:00:00+00:00"}))
    assert registry.in_service() == old and registry.load(old).meta["prediction_name"] == "default"
    named = registry.save({"model": "churn", "state": {"x": 1}}, {"champion": "gbm", "prediction_name": "session_7d"})
    assert named.startswith("churn-session_7d-") and registry.in_service("session_7d") is None
    registry.promote(named)
    assert registry.in_service("session_7d") == named and registry.in_service() == old  # the old pointer stays
    assert {v["version"]: v["prediction_name"] for v in registry.versions()} == {old: "default", named: "session_7d"}
    assert [v["version"] for v in registry.versions("session_7d")] == [named]
    assert all(v["in_service"] for v in registry.versions())


def test_population_window_and_event_types() -> None:
    from churnsync.config import PredictionSettings
    from churnsync.models.scoring import population_mask

    con = duckdb.connect()
    con.execute("CREATE TABLE events (customer_id VARCHAR, occurred_at TIMESTAMP, event_type VARCHAR, value DOUBLE)")
    cut = datetime(2026, 3, 1, tzinfo=UTC)
    con.execute(
        "INSERT INTO events VALUES "
        "('edge_in', '2026-02-19 00:00:00', 'purchase', 1),"  # exactly 10 days before the cut: inside
        "('edge_out', '2026-02-18 23:59:59', 'session', NULL),"  # just before the window
        "('at_cut', '2026-03-01 00:00:00', 'session', NULL),"  # at the cut: not before it, not counted
        "('session_only', '2026-02-25 12:00:00', 'session', NULL)"
    )
    ids = ["edge_in", "edge_out", "at_cut", "session_only", "never"]
    import pyarrow as pa

    column = pa.array(ids)
    assert population_mask(con, cut, column, PredictionSettings()) is None  # no filter: everyone is scored
    any_type = population_mask(con, cut, column, PredictionSettings(active_within_days=10))
    assert any_type is not None and dict(zip(ids, any_type.tolist(), strict=True)) == {
        "edge_in": True, "edge_out": False, "at_cut": False, "session_only": True, "never": False,
    }  # fmt: skip
    purchases = population_mask(
        con, cut, column, PredictionSettings(active_within_days=10, active_events=[" Purchase"])
    )
    assert purchases is not None and [i for i, m in zip(ids, purchases.tolist(), strict=True) if m] == ["edge_in"]


def test_models_show_picks_the_prediction_in_service_and_refuses_a_mismatch(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from churnsync.cli import app

    registry = ModelRegistry(tmp_path / "models")
    session = registry.save({"model": "churn", "state": {}}, {"champion": "gbm", "prediction_name": "session_7d"})
    registry.promote(session)
    config = tmp_path / "churnsync.toml"
    config.write_text(f'[model]\nregistry_path = "models"\n{PREDICTIONS}', encoding="utf-8")
    runner = CliRunner()
    shown = runner.invoke(app, ["models", "show", "--config", str(config), "--prediction", "session_7d"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["version"] == session
    which = runner.invoke(app, ["models", "show", "--config", str(config)])
    assert isinstance(which.exception, ConfigError) and "purchase_30d, session_7d" in str(which.exception)
    none = runner.invoke(app, ["models", "show", "--config", str(config), "--prediction", "purchase_30d"])
    assert "no model in service for prediction 'purchase_30d'" in str(none.exception)
    other = runner.invoke(app, ["models", "show", session, "--config", str(config), "--prediction", "purchase_30d"])
    assert isinstance(other.exception, ConfigError) and "belongs to prediction 'session_7d'" in str(other.exception)
    listed = runner.invoke(app, ["models", "list", "--config", str(config)])
    assert listed.exit_code == 0 and "session_7d" in listed.output
