"""Per-customer scoring: columns, tiers at their boundaries, ranges, the end-to-end helper, model versions."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from churnsync.config import PredictionSettings
from churnsync.errors import DataError, ModelError, NotFittedError
from churnsync.features import RFMFrame, build_rfm
from churnsync.models import BetaGeoModel, fit_and_score, model_version, score_customers

GOLDEN = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
CUT = datetime(2025, 7, 1)


def weekly_model(params: dict[str, float] | None = None) -> BetaGeoModel:
    """A fitted model without the fit (CDNOW's published parameters, in weeks)."""
    return BetaGeoModel.from_dict(
        {
            "model": "bgnbd",
            "format": 1,
            "params": params or GOLDEN,
            "hyperparameters": {"time_unit_days": 7.0},
        }
    )


def rfm_frame(frequency: list[int], recency: list[float], T: list[float], unit: float = 7.0) -> RFMFrame:
    n = len(frequency)
    now = np.datetime64("2025-07-01T00:00:00", "us")
    return RFMFrame(
        customer_id=np.array([f"c{i}" for i in range(n)], dtype=object),
        frequency=np.array(frequency, dtype=np.int64),
        recency=np.array(recency, dtype=np.float64),
        T=np.array(T, dtype=np.float64),
        monetary_value=np.zeros(n),
        first_at=np.full(n, now),
        last_at=np.full(n, now),
        cut=CUT,
        time_unit_days=unit,
    )


RFM = rfm_frame([0, 1, 3, 10, 25, 2], [0.0, 2.0, 20.0, 38.0, 38.8, 5.0], [38.9, 38.9, 30.0, 38.9, 38.9, 38.0])


def test_columns_types_and_ranges() -> None:
    table = score_customers(RFM, weekly_model(), horizon_days=30, risk_cut_points=(0.5, 0.75), time_unit_days=7.0)
    assert table.column_names == [
        "customer_id",
        "churn_probability",
        "churn_risk",
        "expected_purchases_30d",
        "p_alive",
    ]
    assert table.schema.field("customer_id").type == pa.string()
    assert table.schema.field("churn_risk").type == pa.string()
    for name in ("churn_probability", "expected_purchases_30d", "p_alive"):
        assert table.schema.field(name).type == pa.float64()
    churn = table.column("churn_probability").to_numpy()
    alive = table.column("p_alive").to_numpy()
    assert np.all((churn >= 0) & (churn <= 1)) and np.all((alive >= 0) & (alive <= 1))
    assert np.all(table.column("expected_purchases_30d").to_numpy() >= 0)
    assert set(table.column("churn_risk").to_pylist()) <= {"low", "medium", "high"}
    assert table.column("customer_id").to_pylist() == list(RFM.customer_id)
    # The horizon is converted from days to the model's weeks.
    model = weekly_model()
    np.testing.assert_allclose(churn, model.prob_no_purchase(30 / 7, RFM.frequency, RFM.recency, RFM.T))


@pytest.mark.parametrize("horizon", [1, 7, 90, 365])
def test_column_name_follows_the_horizon(horizon: int) -> None:
    table = score_customers(RFM, weekly_model(), horizon_days=horizon, risk_cut_points=(0.5, 0.75), time_unit_days=7.0)
    assert f"expected_purchases_{horizon}d" in table.column_names
    assert sum(name.startswith("expected_purchases_") for name in table.column_names) == 1


def test_longer_horizons_raise_churn_and_expected_purchases() -> None:
    short = score_customers(RFM, weekly_model(), horizon_days=7, risk_cut_points=(0.5, 0.75), time_unit_days=7.0)
    long = score_customers(RFM, weekly_model(), horizon_days=90, risk_cut_points=(0.5, 0.75), time_unit_days=7.0)
    assert np.all(long.column("churn_probability").to_numpy() < short.column("churn_probability").to_numpy())
    assert np.all(long.column("expected_purchases_90d").to_numpy() > short.column("expected_purchases_7d").to_numpy())
    np.testing.assert_array_equal(long.column("p_alive").to_numpy(), short.column("p_alive").to_numpy())


def test_risk_tiers_at_their_boundaries() -> None:
    model = weekly_model()
    churn = model.prob_no_purchase(30 / 7, RFM.frequency, RFM.recency, RFM.T)
    ordered = np.sort(churn)
    low_cut, high_cut = float(ordered[2]), float(ordered[4])  # two customers sit exactly on the cut points
    table = score_customers(RFM, model, horizon_days=30, risk_cut_points=(low_cut, high_cut), time_unit_days=7.0)
    risk = np.array(table.column("churn_risk").to_pylist())
    expected = np.where(churn >= high_cut, "high", np.where(churn >= low_cut, "medium", "low"))
    np.testing.assert_array_equal(risk, expected)
    assert risk[churn == low_cut][0] == "medium" and risk[churn == high_cut][0] == "high"
    assert sorted(risk.tolist()) == ["high", "high", "low", "low", "medium", "medium"]
    # Just above a cut point moves that customer down a tier.
    nudged = score_customers(
        RFM,
        model,
        horizon_days=30,
        risk_cut_points=(float(np.nextafter(low_cut, 1.0)), float(np.nextafter(high_cut, 1.0))),
        time_unit_days=7.0,
    )
    nudged_risk = np.array(nudged.column("churn_risk").to_pylist())
    assert nudged_risk[churn == low_cut][0] == "low" and nudged_risk[churn == high_cut][0] == "medium"


def test_bad_arguments_are_model_errors() -> None:
    model = weekly_model()
    with pytest.raises(ModelError, match="time unit mismatch: the RFM features use 1-day"):
        score_customers(
            rfm_frame([1], [1.0], [2.0], unit=1.0),
            model,
            horizon_days=30,
            risk_cut_points=(0.5, 0.75),
            time_unit_days=7.0,
        )
    with pytest.raises(ModelError, match="time unit mismatch: the model uses 7-day"):
        score_customers(
            rfm_frame([1], [1.0], [2.0], unit=1.0),
            model,
            horizon_days=30,
            risk_cut_points=(0.5, 0.75),
            time_unit_days=1.0,
        )
    with pytest.raises(ModelError, match="risk_cut_points"):
        score_customers(RFM, model, horizon_days=30, risk_cut_points=(0.8, 0.5), time_unit_days=7.0)
    with pytest.raises(ModelError, match="horizon_days"):
        score_customers(RFM, model, horizon_days=0, risk_cut_points=(0.5, 0.75), time_unit_days=7.0)
    with pytest.raises(NotFittedError):
        score_customers(
            RFM, BetaGeoModel(time_unit_days=7.0), horizon_days=30, risk_cut_points=(0.5, 0.75), time_unit_days=7.0
        )


def test_empty_frame_scores_to_an_empty_table() -> None:
    table = score_customers(
        rfm_frame([], [], []), weekly_model(), horizon_days=30, risk_cut_points=(0.5, 0.75), time_unit_days=7.0
    )
    assert table.num_rows == 0 and table.column_names[3] == "expected_purchases_30d"


def purchase_history_connection() -> duckdb.DuckDBPyConnection:
    """400 customers with BG/NBD-like histories over 18 months, plus a loyal and a lapsed customer."""
    rng = np.random.default_rng(5)
    ids: list[str] = []
    times: list[np.datetime64] = []
    start = np.datetime64("2024-01-01T00:00:00", "us")
    span_us = int((np.datetime64(CUT, "us") - start) / np.timedelta64(1, "us"))
    for i in range(400):
        first = rng.uniform(0, 0.8) * span_us
        rate_per_us = rng.gamma(0.6, 1 / 20) / 86_400e6  # purchases per microsecond
        life_us = rng.exponential(200 * 86_400e6)
        n = 1 + rng.poisson(rate_per_us * min(life_us, span_us - first))
        offsets = first + np.sort(rng.uniform(0, min(life_us, span_us - first), size=n - 1))
        for offset in [first, *offsets]:
            ids.append(f"cust{i:04d}")
            times.append(start + np.timedelta64(int(offset), "us"))
    # loyal: 40 purchases, the last one yesterday; lapsed: 40 purchases, the last one a year and a half ago.
    for k in range(40):
        ids.append("loyal")
        times.append(np.datetime64(CUT - timedelta(days=1 + 12 * k), "us"))
        ids.append("lapsed")
        times.append(np.datetime64(datetime(2024, 1, 2) + timedelta(days=3 * k), "us"))
    table = pa.table(
        {
            "customer_id": pa.array(ids, type=pa.string()),
            "occurred_at": pa.array(np.array(times, dtype="datetime64[us]")),
            "event_type": pa.array(["purchase"] * len(ids)),
            "value": pa.array(np.full(len(ids), 10.0)),
        }
    )
    con = duckdb.connect()
    con.register("history", table)
    con.execute("CREATE TABLE events AS SELECT * FROM history")
    con.execute("INSERT INTO events VALUES ('loyal', ?, 'purchase', 10.0)", [CUT + timedelta(days=3)])  # after cut
    return con


def test_fit_and_score_ranks_a_recent_loyal_buyer_below_a_lapsed_one() -> None:
    settings = PredictionSettings(horizon_days=30, qualifying_events=["purchase"], risk_cut_points=(0.5, 0.75))
    table, model, rfm = fit_and_score(purchase_history_connection(), CUT, settings)
    assert model.time_unit_days == 7.0 and rfm.time_unit_days == 7.0 and model.n_customers_ == 402
    assert table.num_rows == len(rfm) == 402
    rows = {row["customer_id"]: row for row in table.to_pylist()}
    loyal, lapsed = rows["loyal"], rows["lapsed"]
    assert loyal["churn_probability"] < 0.5 < lapsed["churn_probability"]
    assert loyal["churn_risk"] == "low" and lapsed["churn_risk"] == "high"
    assert loyal["expected_purchases_30d"] > lapsed["expected_purchases_30d"]
    assert loyal["p_alive"] > 0.9 > 0.1 > lapsed["p_alive"]
    # The same as scoring by hand with the weekly unit.
    again = score_customers(rfm, model, horizon_days=30, risk_cut_points=(0.5, 0.75), time_unit_days=7.0)
    assert again.equals(table)


def test_fit_and_score_without_qualifying_events_is_a_data_error() -> None:
    settings = PredictionSettings(qualifying_events=["subscription"])
    with pytest.raises(DataError, match=r"no customer has a qualifying event \(subscription\) before 2025-07-01"):
        fit_and_score(purchase_history_connection(), CUT, settings)


def test_model_version_is_short_stable_and_sensitive() -> None:
    model = weekly_model()
    version = model_version(model)
    assert re.fullmatch(r"bgnbd-[0-9a-f]{12}", version)
    assert model_version(BetaGeoModel.from_dict(model.to_dict())) == version
    assert model_version(weekly_model({**GOLDEN, "r": 0.2430000000001})) == version  # below the rounding
    assert model_version(weekly_model({**GOLDEN, "r": 0.244})) != version
    daily = BetaGeoModel.from_dict({**model.to_dict(), "hyperparameters": {"time_unit_days": 1.0}})
    assert model_version(daily) != version
    purchases = model_version(model, PredictionSettings(qualifying_events=["purchase"]))
    assert purchases != version
    assert model_version(model, PredictionSettings(qualifying_events=["purchase"], horizon_days=7)) == purchases
    assert model_version(model, PredictionSettings(qualifying_events=["purchase", "session"])) != purchases
    with pytest.raises(NotFittedError):
        model_version(BetaGeoModel())


def test_scores_from_the_features_module_end_to_end() -> None:
    con = purchase_history_connection()
    rfm = build_rfm(con, CUT, ["purchase"], time_unit_days=1.0)
    model = BetaGeoModel(time_unit_days=1.0).fit(rfm.frequency, rfm.recency, rfm.T)
    daily = score_customers(rfm, model, horizon_days=30, risk_cut_points=(0.5, 0.75), time_unit_days=1.0)
    weekly, _, _ = fit_and_score(con, CUT, PredictionSettings(horizon_days=30))
    # Day and week units give the same model up to the rescaling of alpha: the scores agree.
    np.testing.assert_allclose(
        daily.column("churn_probability").to_numpy(), weekly.column("churn_probability").to_numpy(), atol=1e-4
    )
