"""Forward-looking value attributes: discounted CLV over a horizon and the next purchase date.

``clv_{H}d`` is the expected value of a customer's qualifying events over the next H days, discounted:

    CLV = level · E[Z | x, m] · Σ_k ΔE_k · (1 + d)^−(e_k / 365)

where the horizon is cut into n = ceil(H / 30) equal periods ending at e_1 < … < e_n = H days,
ΔE_k = E[X(T, T+e_k)] − E[X(T, T+e_{k−1})] is the customer-base model's expected number of events in period k,
discounted at the period's end with the annual rate d; E[Z | x, m] is the Gamma-Gamma expected spend per event
(the population mean for customers without a repeat purchase); ``level`` is an optional multiplicative level
correction of the event forecast (1 = none; see :func:`estimate_level_factor`).

``next_purchase_date`` is the median time of the next qualifying event *given the customer is alive*, added to
the last observed day and written as an ISO date (``YYYY-MM-DD``). Under BG/NBD a living customer buys again
for sure, and the median has a closed form, (α+T)(2^(1/(r+x)) − 1); under Pareto/NBD it is solved numerically and
is infinite when the customer is more likely to drop out before buying again. It is null when the customer more
likely never returns: P(alive) < 0.5, or the median lies beyond max(H, 365) days.

Work is done once per distinct (x, t_x, T) row, so a million customers cost what their distinct histories cost.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from churnsync.errors import DataError, ModelError
from churnsync.features.rfm import RFMFrame, _last_observed_day, _naive_utc, build_rfm
from churnsync.models.bgnbd import BetaGeoModel
from churnsync.models.gamma_gamma import GammaGammaModel
from churnsync.models.paretonbd import ParetoNBDModel

__all__ = [
    "CustomerBaseModel",
    "clv_column",
    "estimate_level_factor",
    "fit_value_models",
    "value_attributes",
]

CustomerBaseModel = BetaGeoModel | ParetoNBDModel
_PERIOD_DAYS = 30.0
_NEXT_PURCHASE_MIN_CAP_DAYS = 365.0


def clv_column(horizon_days: int) -> str:
    """The name of the CLV attribute for a horizon, e.g. ``clv_365d``."""
    return f"clv_{horizon_days}d"


def _new_model(kind: str, time_unit_days: float) -> CustomerBaseModel:
    if kind == "bgnbd":
        return BetaGeoModel(time_unit_days=time_unit_days)
    if kind == "paretonbd":
        return ParetoNBDModel(time_unit_days=time_unit_days)
    raise ModelError(f"value models: unknown customer-base model {kind!r}", remedy="Use 'bgnbd' or 'paretonbd'")


def fit_value_models(
    rfm: RFMFrame, *, customer_model: Literal["bgnbd", "paretonbd"] = "bgnbd"
) -> tuple[CustomerBaseModel, GammaGammaModel]:
    """Fit the customer-base model (BG/NBD or Pareto/NBD) and the Gamma-Gamma spend model on ``rfm``.

    Both are fitted in ``rfm``'s time unit. Gamma-Gamma uses the repeat buyers with a positive mean spend;
    it raises :class:`~churnsync.errors.ConvergenceError` when fewer than two customers qualify.
    """
    if len(rfm) == 0:
        raise DataError("value models: the RFM frame has no customers", remedy="Check the cut date and events")
    model = _new_model(customer_model, rfm.time_unit_days).fit(rfm.frequency, rfm.recency, rfm.T)
    spend = GammaGammaModel().fit(rfm.frequency, rfm.monetary_value)
    return model, spend


def _distinct_rows(*columns: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The distinct rows of aligned columns and, per original row, the index of its distinct row."""
    codes = []
    uniques = []
    for column in columns:
        values, code = np.unique(column, return_inverse=True)
        uniques.append(values)
        codes.append(code.reshape(-1).astype(np.int64))
    key = codes[0]
    for values, code in zip(uniques[1:], codes[1:], strict=True):
        key = key * values.size + code
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return [column[first] for column in columns], inverse.reshape(-1)


def _median_days_if_alive(model: CustomerBaseModel, x: np.ndarray, t_x: np.ndarray, age: np.ndarray) -> np.ndarray:
    """Median time, in the model's time units, to the next event given alive at T (inf if it may never come)."""
    if isinstance(model, BetaGeoModel):
        p = model.params_
        return np.asarray((p.alpha + age) * np.expm1(math.log(2.0) / (p.r + x)))
    # Given alive, the Pareto/NBD waiting time depends on (x, T) only: solve once per distinct pair.
    (px, page), inverse = _distinct_rows(x, age)
    return np.asarray(model.time_to_next_purchase_if_alive(0.5, px, np.zeros_like(px), page)[inverse])


def value_attributes(
    rfm: RFMFrame,
    model: CustomerBaseModel,
    spend_model: GammaGammaModel,
    *,
    clv_horizon_days: int,
    annual_discount_rate: float,
    time_unit_days: float,
    cut: datetime,
    level: float = 1.0,
) -> pa.Table:
    """Per-customer ``customer_id``, ``clv_{H}d`` (float64) and ``next_purchase_date`` (ISO date string or null).

    ``model`` (BG/NBD or Pareto/NBD) and ``rfm`` must use ``time_unit_days``; ``cut`` is the scoring cut
    ``rfm`` was built at. See the module docstring for the formulas.
    """
    if isinstance(clv_horizon_days, bool) or not isinstance(clv_horizon_days, int) or clv_horizon_days < 1:
        raise ModelError(
            f"value attributes: clv_horizon_days must be a whole number of days >= 1 (got {clv_horizon_days!r})",
            remedy="Set prediction.clv_horizon_days, e.g. 365",
        )
    if not (math.isfinite(annual_discount_rate) and 0.0 <= annual_discount_rate < 10.0):
        raise ModelError(
            f"value attributes: annual_discount_rate must be in [0, 10) (got {annual_discount_rate!r})",
            remedy="Set prediction.annual_discount_rate, e.g. 0.10",
        )
    if not (math.isfinite(level) and level > 0.0):
        raise ModelError(f"value attributes: level must be a positive number (got {level!r})", remedy="Use 1.0")
    unit = float(time_unit_days)
    for what, value in (("the RFM features", rfm.time_unit_days), ("the model", model.time_unit_days)):
        if not math.isclose(value, unit, rel_tol=1e-12):
            raise ModelError(
                f"value attributes: time unit mismatch: {what} use(s) {value:g}-day units, time_unit_days is {unit:g}",
                remedy="Build the RFM features and fit the model with the same time_unit_days",
            )
    n = len(rfm)
    if n == 0:
        return pa.table(
            {
                "customer_id": pa.array([], type=pa.string()),
                clv_column(clv_horizon_days): pa.array([], type=pa.float64()),
                "next_purchase_date": pa.array([], type=pa.string()),
            }
        )
    x = np.asarray(rfm.frequency, dtype=np.float64)
    t_x = np.where(x > 0, np.asarray(rfm.recency, dtype=np.float64), 0.0)
    (ux, utx, uT), inverse = _distinct_rows(x, t_x, np.asarray(rfm.T, dtype=np.float64))

    periods = max(1, math.ceil(clv_horizon_days / _PERIOD_DAYS))
    ends = clv_horizon_days * np.arange(1, periods + 1) / periods
    discount = (1.0 + annual_discount_rate) ** (-ends / 365.0)
    cumulative = model.expected_purchases((ends / unit)[:, None], ux[None, :], utx[None, :], uT[None, :])
    increments = np.diff(cumulative, axis=0, prepend=0.0)
    discounted_events = level * np.maximum(increments, 0.0).T @ discount
    spend = spend_model.expected_spend(np.asarray(rfm.frequency), np.asarray(rfm.monetary_value))
    clv = discounted_events[inverse] * spend
    if not np.all(np.isfinite(clv)):
        raise ModelError("value attributes: the models produced non-finite CLV", remedy="Refit the models")

    with np.errstate(all="ignore"):
        median_days = _median_days_if_alive(model, ux, utx, uT) * unit
    alive = model.p_alive(ux, utx, uT)
    cap = max(float(clv_horizon_days), _NEXT_PURCHASE_MIN_CAP_DAYS)
    known = (alive >= 0.5) & np.isfinite(median_days) & (median_days <= cap)
    offset = np.where(known, np.maximum(1.0, np.ceil(np.where(known, median_days, 1.0))), 0.0)
    last_day = _last_observed_day(_naive_utc(cut))
    # ISO strings once per distinct row, then spread to customers.
    distinct_dates = pa.array((last_day + offset).astype(np.int32), type=pa.int32(), mask=~known)
    next_date = pc.take(distinct_dates.cast(pa.date32()).cast(pa.string()), pa.array(inverse))
    return pa.table(
        {
            "customer_id": pa.array(rfm.customer_id, type=pa.string()),
            clv_column(clv_horizon_days): pa.array(clv, type=pa.float64()),
            "next_purchase_date": next_date,
        }
    )


def _count_purchase_days(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, qualifying_events: list[str]
) -> dict[str, int]:
    types = sorted({t.lower() for t in qualifying_events})
    sql = (
        "SELECT customer_id, count(DISTINCT CAST(floor(epoch(occurred_at) / 86400) AS BIGINT)) "
        f"FROM events WHERE occurred_at >= ? AND occurred_at < ? AND event_type IN ({', '.join('?' for _ in types)}) "
        "AND customer_id IS NOT NULL GROUP BY customer_id"
    )
    return {str(k): int(v) for k, v in con.execute(sql, [start, end, *types]).fetchall()}


def estimate_level_factor(
    con: duckdb.DuckDBPyConnection,
    cut: datetime,
    qualifying_events: list[str],
    *,
    validation_days: int,
    time_unit_days: float = 7.0,
    customer_model: Literal["bgnbd", "paretonbd"] = "bgnbd",
) -> dict[str, Any]:
    """A level correction for the event forecast, estimated from data before ``cut`` only (no leakage).

    The model is refitted at the earlier cut ``cut − validation_days``; it forecasts the purchase days of the
    customers known then over ``[cut − validation_days, cut)``; ``factor`` = actual / forecast in that window.
    A forecast that undershot the recent past is scaled up by the same proportion (a persistent level shift).
    Returns ``factor``, its ``std_error``, ``actual``, ``forecast``, ``sub_cut`` and ``customers``.

    On CDNOW (bench/cdnow.py) the factor is 0.987 for BG/NBD: inside the calibration period the model does not
    under-forecast, so this correction cannot recover the 12 % holdout shortfall, which the calibration data do
    not show.
    """
    if validation_days < 1:
        raise ModelError(f"level factor: validation_days must be >= 1 (got {validation_days})", remedy="Use e.g. 91")
    sub_cut = cut - timedelta(days=validation_days)
    rfm = build_rfm(con, sub_cut, qualifying_events, time_unit_days=time_unit_days)
    if len(rfm) == 0:
        raise DataError(
            f"level factor: no customer has a qualifying event before {sub_cut:%Y-%m-%d}",
            remedy="Use a shorter validation window or a later cut",
        )
    model = _new_model(customer_model, time_unit_days).fit(rfm.frequency, rfm.recency, rfm.T)
    forecast = float(
        model.expected_purchases(validation_days / time_unit_days, rfm.frequency, rfm.recency, rfm.T).sum()
    )
    counts = _count_purchase_days(con, sub_cut, cut, list(qualifying_events))
    known = set(rfm.customer_id.tolist())
    actual = float(sum(v for k, v in counts.items() if k in known))
    if forecast <= 0.0:
        raise ModelError("level factor: the model forecasts no purchases in the validation window")
    return {
        "factor": actual / forecast,
        # Poisson counting noise of the actual count alone: a factor within ~2 standard errors of 1 is no evidence
        # of a level shift.
        "std_error": math.sqrt(max(actual, 1.0)) / forecast,
        "actual": actual,
        "forecast": forecast,
        "sub_cut": sub_cut,
        "customers": len(rfm),
    }
