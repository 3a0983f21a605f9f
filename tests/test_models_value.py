"""Value attributes: CLV against the published CDNOW spend forecast and a direct sum, next purchase dates."""

from __future__ import annotations

import importlib.util
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from churnsync.config import PredictionSettings
from churnsync.errors import ModelError
from churnsync.features import build_rfm
from churnsync.features.rfm import RFMFrame
from churnsync.models import BetaGeoModel, GammaGammaModel, ParetoNBDModel
from churnsync.models.value import clv_column, estimate_level_factor, fit_value_models, value_attributes

CUT = datetime(1997, 10, 1)


@pytest.fixture(scope="module")
def cdnow() -> duckdb.DuckDBPyConnection:
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.origin is not None
    raw = np.loadtxt(Path(spec.origin).parent / "datasets" / "CDNOW_sample.txt", dtype=str)
    con = duckdb.connect()
    days = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 2]], dtype="datetime64[us]")
    table = pa.table(
        {
            "customer_id": raw[:, 1],
            "occurred_at": pa.array(days),
            "event_type": ["purchase"] * raw.shape[0],
            "value": raw[:, 4].astype(np.float64),
        }
    )
    con.register("cdnow", table)
    con.execute("CREATE TABLE events AS SELECT * FROM cdnow")
    return con


@pytest.fixture(scope="module")
def rfm(cdnow: duckdb.DuckDBPyConnection) -> RFMFrame:
    return build_rfm(cdnow, CUT, ["purchase"], time_unit_days=7.0)


def test_undiscounted_clv_reproduces_the_published_bgnbd_gamma_gamma_spend_forecast(rfm: RFMFrame) -> None:
    model, spend = fit_value_models(rfm)
    assert isinstance(model, BetaGeoModel) and spend.n_customers_ == 946
    table = value_attributes(
        rfm, model, spend, clv_horizon_days=273, annual_discount_rate=0.0, time_unit_days=7.0, cut=CUT
    )
    assert table.column_names == ["customer_id", "clv_273d", "next_purchase_date"]
    # models.md: BG/NBD × Gamma-Gamma forecasts $59,932 for holdout weeks 40–78.
    assert float(np.sum(table["clv_273d"].to_numpy())) == pytest.approx(59_932, abs=5)


@pytest.mark.parametrize("kind", ["bgnbd", "paretonbd"])
def test_discounted_clv_is_the_documented_sum(rfm: RFMFrame, kind: str) -> None:
    model, spend = fit_value_models(rfm, customer_model=kind)  # type: ignore[arg-type]
    table = value_attributes(
        rfm, model, spend, clv_horizon_days=365, annual_discount_rate=0.10, time_unit_days=7.0, cut=CUT, level=1.1
    )
    rows = [0, 1, 5, 100]
    x, t_x, T = rfm.frequency[rows], rfm.recency[rows], rfm.T[rows]
    ends = 365.0 * np.arange(1, 14) / 13
    cumulative = np.stack([model.expected_purchases(e / 7.0, x, t_x, T) for e in ends])
    events = np.diff(cumulative, axis=0, prepend=0.0).T @ (1.10 ** (-ends / 365.0))
    expected = 1.1 * events * spend.expected_spend(rfm.frequency[rows], rfm.monetary_value[rows])
    np.testing.assert_allclose(table[clv_column(365)].to_numpy()[rows], expected, rtol=1e-10)
    undiscounted = value_attributes(
        rfm, model, spend, clv_horizon_days=365, annual_discount_rate=0.0, time_unit_days=7.0, cut=CUT
    )
    assert np.all(table["clv_365d"].to_numpy() < 1.1 * undiscounted["clv_365d"].to_numpy())


def test_next_purchase_date_is_the_median_given_alive_or_null() -> None:
    model = BetaGeoModel.from_dict(
        {"model": "bgnbd", "format": 1, "params": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}}
    )
    model.time_unit_days = 7.0
    spend = GammaGammaModel.from_dict(
        {"model": "gamma_gamma", "format": 1, "params": {"p": 6.25, "q": 3.74, "v": 15.44}}
    )
    rfm = RFMFrame(
        customer_id=np.array(["loyal", "lapsed", "one-timer"], dtype=object),
        frequency=np.array([20, 20, 0]),
        recency=np.array([38.0, 5.0, 0.0]),
        T=np.array([38.86, 38.86, 38.86]),
        monetary_value=np.array([30.0, 30.0, 0.0]),
        first_at=np.zeros(3, dtype="datetime64[us]"),
        last_at=np.zeros(3, dtype="datetime64[us]"),
        cut=CUT,
        time_unit_days=7.0,
    )
    table = value_attributes(
        rfm, model, spend, clv_horizon_days=365, annual_discount_rate=0.1, time_unit_days=7.0, cut=CUT
    )
    dates = table["next_purchase_date"].to_pylist()
    median_weeks = (4.414 + 38.86) * (2 ** (1 / (0.243 + 20)) - 1)
    # The last observed day is 1997-09-30; the median lands on the day it falls in.
    assert dates[0] == (datetime(1997, 9, 30) + timedelta(days=int(np.ceil(median_weeks * 7)))).date().isoformat()
    assert dates[1] is None  # P(alive) < 0.5
    assert dates[2] is None  # alive under BG/NBD, but the median is years away
    clv = table["clv_365d"].to_numpy()
    assert clv[0] > clv[2] > clv[1] > 0.0


def test_pareto_next_purchase_dates_are_iso_or_null(rfm: RFMFrame) -> None:
    model, spend = fit_value_models(rfm, customer_model="paretonbd")
    assert isinstance(model, ParetoNBDModel)
    table = value_attributes(
        rfm, model, spend, clv_horizon_days=90, annual_discount_rate=0.1, time_unit_days=7.0, cut=CUT
    )
    known = [d for d in table["next_purchase_date"].to_pylist() if d is not None]
    assert 0 < len(known) < len(rfm)
    assert all("1997-10-01" <= d <= "1998-10-01" for d in known)


def test_bad_arguments_and_config_defaults(rfm: RFMFrame) -> None:
    model, spend = fit_value_models(rfm)
    kwargs = {"annual_discount_rate": 0.1, "time_unit_days": 7.0, "cut": CUT}
    with pytest.raises(ModelError, match="clv_horizon_days"):
        value_attributes(rfm, model, spend, clv_horizon_days=0, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="time unit mismatch"):
        value_attributes(rfm, model, spend, clv_horizon_days=30, annual_discount_rate=0.1, time_unit_days=1.0, cut=CUT)
    with pytest.raises(ModelError, match="unknown customer-base model"):
        fit_value_models(rfm, customer_model="nope")  # type: ignore[arg-type]
    settings = PredictionSettings()
    assert settings.clv_horizon_days == 365 and settings.annual_discount_rate == pytest.approx(0.10)


def test_level_factor_uses_only_data_before_the_cut(cdnow: duckdb.DuckDBPyConnection) -> None:
    result = estimate_level_factor(cdnow, CUT, ["purchase"], validation_days=91)
    assert result["sub_cut"] == CUT - timedelta(days=91) and result["customers"] == 2357
    # Repeat purchase days of weeks 27–39 in the calibration period (not the holdout).
    assert result["actual"] == 711.0
    assert result["factor"] == pytest.approx(result["actual"] / result["forecast"])
    # Events after the cut do not change it.
    cdnow.execute("CREATE TEMP TABLE saved AS SELECT * FROM events WHERE occurred_at >= ?", [CUT])
    cdnow.execute("DELETE FROM events WHERE occurred_at >= ?", [CUT])
    try:
        assert estimate_level_factor(cdnow, CUT, ["purchase"], validation_days=91) == result
    finally:
        cdnow.execute("INSERT INTO events SELECT * FROM saved")
        cdnow.execute("DROP TABLE saved")


def test_empty_frame_and_time_zone_aware_cut(rfm: RFMFrame) -> None:
    from datetime import UTC

    model, spend = fit_value_models(rfm)
    empty = RFMFrame(
        customer_id=np.array([], dtype=object),
        frequency=np.array([], dtype=np.int64),
        recency=np.array([]),
        T=np.array([]),
        monetary_value=np.array([]),
        first_at=np.array([], dtype="datetime64[us]"),
        last_at=np.array([], dtype="datetime64[us]"),
        cut=CUT,
        time_unit_days=7.0,
    )
    kwargs = {"clv_horizon_days": 30, "annual_discount_rate": 0.1, "time_unit_days": 7.0}
    table = value_attributes(empty, model, spend, cut=CUT, **kwargs)  # type: ignore[arg-type]
    assert table.num_rows == 0 and table.column_names == ["customer_id", "clv_30d", "next_purchase_date"]
    naive = value_attributes(rfm, model, spend, cut=CUT, **kwargs)  # type: ignore[arg-type]
    aware = value_attributes(rfm, model, spend, cut=CUT.replace(tzinfo=UTC), **kwargs)  # type: ignore[arg-type]
    assert naive.equals(aware)
