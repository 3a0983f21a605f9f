"""The learned churn model: the no-leakage rule, champion choice, calibration, drivers, segments, persistence."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest

from churnsync.config import ModelSettings
from churnsync.errors import DataError, ModelError, NotFittedError
from churnsync.events.generator import generate_sample
from churnsync.models.churn import CANDIDATES, SIMPLICITY, ChurnModel, _fit_platt, _sigmoid, label_churn
from churnsync.models.scoring import assign_segments

START = date(2025, 1, 1)
DAYS = 240
CUT = datetime(2025, 1, 1) + timedelta(days=DAYS)


def load(folder: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TABLE events AS SELECT CAST(customer_id AS VARCHAR) AS customer_id, "
        f"CAST(occurred_at AS TIMESTAMP) AS occurred_at, event_type, value FROM '{folder}/events.parquet'"
    )
    return con


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("churn")
    generate_sample(folder, customers=1500, days=DAYS, seed=5, start=START, fmt="parquet")
    return folder


@pytest.fixture
def con(sample_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = load(sample_dir)
    yield c
    c.close()


def small_model(**kw: object) -> ChurnModel:
    args: dict[str, object] = {"horizon_days": 30, "qualifying_events": ["purchase"], "n_estimators": 30}
    args.update(kw)
    return ChurnModel(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fitted(sample_dir: Path) -> ChurnModel:
    c = load(sample_dir)
    try:
        return small_model().fit(c, CUT)
    finally:
        c.close()


def test_a_label_window_that_crosses_the_scoring_cut_is_an_error(con: duckdb.DuckDBPyConnection) -> None:
    ids = np.array(["c_0000001"], dtype=object)
    with pytest.raises(ModelError, match="crosses the scoring cut"):
        label_churn(con, ids, CUT - timedelta(days=29), 30, ["purchase"], scoring_cut=CUT)


def test_labels_mark_customers_without_a_qualifying_event_in_the_window(con: duckdb.DuckDBPyConnection) -> None:
    cut = CUT - timedelta(days=30)
    from churnsync.features.windows import build_window_features

    ids = build_window_features(con, cut, ["purchase"], event_types=[]).customer_id
    y = label_churn(con, ids, cut, 30, ["purchase"], scoring_cut=CUT)
    buyers = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND occurred_at >= ? "
            "AND occurred_at < ?",
            [cut, CUT],
        ).fetchall()
    }
    assert y.tolist() == [0.0 if i in buyers else 1.0 for i in ids]


def test_training_never_reads_events_on_or_after_the_scoring_cut(sample_dir: Path, fitted: ChurnModel) -> None:
    # Same data truncated at an earlier "scoring cut": a fit there must equal a fit on the full data at that cut.
    early = CUT - timedelta(days=20)
    full = load(sample_dir)
    cut_only = load(sample_dir)
    cut_only.execute("DELETE FROM events WHERE occurred_at >= ?", [early])
    try:
        a = small_model().fit(full, early)
        b = small_model().fit(cut_only, early)
    finally:
        full.close()
        cut_only.close()
    assert a.validation_ == b.validation_
    assert a.champion_ == b.champion_


def test_champion_reason_calibration_and_drivers(con: duckdb.DuckDBPyConnection, fitted: ChurnModel) -> None:
    assert fitted.champion_ in CANDIDATES
    assert fitted.champion_ in fitted.reason_ and "validation log-loss" in fitted.reason_
    assert set(fitted.validation_) == set(CANDIDATES)
    # One-standard-error rule: the champion is the simplest candidate within one standard error of the best.
    selection = (fitted.state_ or {})["selection"]
    tied = [n for n in SIMPLICITY if selection[n]["gap"] <= selection[n]["se"]]
    assert fitted.champion_ == tied[0]
    assert min(m["log_loss"] for m in fitted.validation_.values()) == pytest.approx(
        min(v["log_loss"] for v in selection.values())
    )
    # Calibrated on the newest window: on that same window the mean prediction equals the churn rate.
    cut0 = CUT - timedelta(days=30)
    scores = fitted.predict(con, cut0, all_candidates=True)
    y = label_churn(con, scores.customer_id, cut0, 30, ["purchase"], scoring_cut=CUT)
    for p in scores.candidates.values():
        assert float(p.mean()) == pytest.approx(float(y.mean()), abs=1e-6)
    now = fitted.predict(con, CUT)
    assert np.all((now.churn_probability >= 0) & (now.churn_probability <= 1))
    assert set(now.churn_driver) <= {*now.frame.names, "predicted_inactivity", "likely_lapsed",
                                      "low_expected_purchases", "overdue_for_next_purchase", "none"}  # fmt: skip
    assert "days_since_last_event" in set(now.churn_driver) or "days_since_last_purchase" in set(now.churn_driver)


def test_path_contributions_add_up_to_the_raw_score(con: duckdb.DuckDBPyConnection, fitted: ChurnModel) -> None:
    frame = fitted.predict(con, CUT).frame
    contrib = fitted.contributions(frame.X)
    raw = fitted._booster.predict(frame.X, raw_score=True)
    # Path attribution: the raw score = a constant (the roots' values) + the row's contributions.
    assert float(np.ptp(raw - contrib.sum(axis=1))) < 1e-6
    fitted.exact_drivers = True
    try:
        exact = fitted.contributions(frame.X[:50])
        assert exact.shape == (50, len(frame.names))
        assert float(np.ptp(raw[:50] - exact.sum(axis=1))) < 1e-6
    finally:
        fitted.exact_drivers = False


def test_scoring_reads_the_gbm_score_from_the_driver_pass(con: duckdb.DuckDBPyConnection, fitted: ChurnModel) -> None:
    # predict() takes the GBM's raw score from the path-attribution pass (roots + contributions), not from a second
    # pass over the trees: the probabilities must be those of LightGBM's own raw score.
    scores = fitted.predict(con, CUT, all_candidates=True)
    state = fitted.state_ or {}
    a, b = state["platt"]["gbm"]
    assert state["level_anchor"] == "calibration_window"
    expected = _sigmoid(a * fitted._booster.predict(scores.frame.X, raw_score=True) + b)
    np.testing.assert_allclose(scores.candidates["gbm"], expected, rtol=0, atol=1e-9)
    assert list(fitted.drivers(scores.frame)) == list(scores.churn_driver)


def test_round_trip_through_json(con: duckdb.DuckDBPyConnection, fitted: ChurnModel) -> None:
    import json

    again = ChurnModel.from_dict(json.loads(json.dumps(fitted.to_dict())))
    a, b = fitted.predict(con, CUT), again.predict(con, CUT)
    assert np.array_equal(a.churn_probability, b.churn_probability)
    assert np.array_equal(a.churn_driver, b.churn_driver)
    with pytest.raises(ModelError, match="unsupported artifact"):
        ChurnModel.from_dict({"model": "churn", "format": 99})
    with pytest.raises(NotFittedError):
        small_model().predict(con, CUT)


def test_too_little_history_is_a_clear_error(con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(DataError, match="not enough history"):
        small_model(horizon_days=90, training_cuts=4).fit(con, CUT)
    with pytest.raises(ModelError, match="at least 3"):
        small_model(training_cuts=2)


def test_short_label_window_anchors_the_level_to_bgnbd(con: duckdb.DuckDBPyConnection) -> None:
    model = small_model(horizon_days=90, label_days=30, candidates=["logistic", "bgnbd"]).fit(con, CUT)
    scores = model.predict(con, CUT)
    r, b = scores.frame.rfm, scores.frame.btyd
    target = b.prob_no_purchase(90 / 7, r.frequency, r.recency, r.T).mean()
    assert float(scores.churn_probability.mean()) == pytest.approx(float(target), abs=1e-6)
    assert set(scores.churn_driver) == {"none"}  # no GBM: no driver


def test_platt_scaling_reproduces_the_observed_rate() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=5000)
    y = (rng.uniform(size=z.size) < _sigmoid(2.0 * z - 1.0)).astype(float)
    a, b = _fit_platt(z, y)
    assert a == pytest.approx(2.0, abs=0.2) and b == pytest.approx(-1.0, abs=0.15)
    assert float(_sigmoid(a * z + b).mean()) == pytest.approx(float(y.mean()), abs=1e-9)


def test_segments_follow_the_rules_in_order() -> None:
    rules = ModelSettings().segments
    churn = np.array([0.1, 0.9, 0.6, 0.2, 0.8, 0.6, 0.1])
    value = np.array([100.0, 90.0, 1.0, 2.0, 3.0, 80.0, 50.0])
    tenure = np.array([400.0, 400, 400, 400, 400, 400, 10])
    got = assign_segments(churn, value, tenure, rules).tolist()
    assert got == ["champion", "at_risk_high_value", "at_risk", "promising", "hibernating", "at_risk_high_value", "new"]


def test_large_bases_train_on_a_customer_sample_and_score_everyone(con: duckdb.DuckDBPyConnection) -> None:
    events = con.execute("SELECT count(*) FROM events").fetchall()
    model = small_model(max_training_rows=1200).fit(con, CUT)
    assert model.state_ is not None and model.state_["customer_sample_share"] < 0.9
    assert model.state_["training_rows"] < 1500 * 3
    assert con.execute("SELECT count(*) FROM events").fetchall() == events  # the full table is back
    assert con.execute("SELECT current_setting('search_path')").fetchall() == [("",)]
    assert len(model.predict(con, CUT).customer_id) == len(label_churn_population(con))


def label_churn_population(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT DISTINCT customer_id FROM events WHERE event_type = 'purchase' AND occurred_at < ?", [CUT]
    ).fetchall()
    return [r[0] for r in rows]
