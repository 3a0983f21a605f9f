"""Per-customer churn scores from a fitted model: the attributes churnsync publishes, as an Arrow table.

``churn_probability`` is P(no qualifying event in the next N days), never P(alive) (which is 1 for every
one-time buyer under BG/NBD). ``churn_risk`` tiers follow Braze's categories: ``low`` below the first cut
point, ``medium`` from the first up to (not including) the second, ``high`` from the second.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from churnsync.config import PredictionSettings
from churnsync.errors import DataError, ModelError, NotFittedError
from churnsync.features.rfm import RFMFrame, build_rfm
from churnsync.models.bgnbd import BetaGeoModel

__all__ = ["FIT_TIME_UNIT_DAYS", "expected_purchases_column", "fit_and_score", "model_version", "score_customers"]

# BTYD models are fitted in weeks, as in the literature: parameters are then comparable with published ones
# and the optimiser works on numbers of order one.
FIT_TIME_UNIT_DAYS = 7.0
RISK_TIERS = ("low", "medium", "high")


def expected_purchases_column(horizon_days: int) -> str:
    """The name of the expected-purchases attribute for a horizon, e.g. ``expected_purchases_30d``."""
    return f"expected_purchases_{horizon_days}d"


def _check_scoring_args(
    rfm: RFMFrame, model: BetaGeoModel, horizon_days: int, risk_cut_points: tuple[float, float], unit: float
) -> None:
    if isinstance(horizon_days, bool) or not isinstance(horizon_days, int) or horizon_days < 1:
        raise ModelError(
            f"scoring: horizon_days must be a whole number of days >= 1 (got {horizon_days!r})",
            remedy="Set prediction.horizon_days, e.g. 30",
        )
    low, high = (float(v) for v in risk_cut_points)
    if not 0.0 < low < high < 1.0:
        raise ModelError(
            f"scoring: risk_cut_points must satisfy 0 < low < high < 1 (got {risk_cut_points!r})",
            remedy="Use e.g. (0.50, 0.75)",
        )
    for what, verb, value in (
        ("the RFM features", "use", rfm.time_unit_days),
        ("the model", "uses", model.time_unit_days),
    ):
        if not math.isclose(value, unit, rel_tol=1e-12):
            raise ModelError(
                f"scoring: time unit mismatch: {what} {verb} {value:g}-day units but time_unit_days is {unit:g}",
                remedy="Build the RFM features and fit the model with the same time_unit_days used for scoring",
            )


def score_customers(
    rfm: RFMFrame,
    model: BetaGeoModel,
    *,
    horizon_days: int,
    risk_cut_points: tuple[float, float],
    time_unit_days: float,
) -> pa.Table:
    """Score every customer of ``rfm`` with ``model`` over the next ``horizon_days`` days.

    Columns: ``customer_id`` (string), ``churn_probability`` (float64 in [0, 1]), ``churn_risk``
    (``low``/``medium``/``high``), ``expected_purchases_{N}d`` (float64), ``p_alive`` (float64).
    ``time_unit_days`` must be the unit ``rfm`` was built with and ``model`` was fitted in.
    """
    _check_scoring_args(rfm, model, horizon_days, risk_cut_points, float(time_unit_days))
    horizon = horizon_days / float(time_unit_days)
    churn = model.prob_no_purchase(horizon, rfm.frequency, rfm.recency, rfm.T).astype(np.float64)
    expected = model.expected_purchases(horizon, rfm.frequency, rfm.recency, rfm.T).astype(np.float64)
    alive = model.p_alive(rfm.frequency, rfm.recency, rfm.T).astype(np.float64)
    if not (np.all(np.isfinite(churn)) and np.all(np.isfinite(expected)) and np.all(np.isfinite(alive))):
        raise ModelError(
            "scoring: the model produced non-finite scores",
            remedy="Refit the model; report the data if it persists",
        )
    low, high = risk_cut_points
    tier = np.searchsorted(np.array([low, high], dtype=np.float64), churn, side="right")
    risk = pa.DictionaryArray.from_arrays(pa.array(tier, type=pa.int8()), pa.array(RISK_TIERS)).cast(pa.string())
    return pa.table(
        {
            "customer_id": pa.array(rfm.customer_id, type=pa.string()),
            "churn_probability": pa.array(churn, type=pa.float64()),
            "churn_risk": risk,
            expected_purchases_column(horizon_days): pa.array(np.maximum(expected, 0.0), type=pa.float64()),
            "p_alive": pa.array(alive, type=pa.float64()),
        }
    )


def fit_and_score(
    con: duckdb.DuckDBPyConnection, cut: datetime, settings: PredictionSettings
) -> tuple[pa.Table, BetaGeoModel, RFMFrame]:
    """Build RFM features at ``cut`` (in weeks), fit BG/NBD on them and score every customer.

    Raises :class:`DataError` when no customer has a qualifying event before ``cut``.
    """
    rfm = build_rfm(con, cut, settings.qualifying_events, time_unit_days=FIT_TIME_UNIT_DAYS)
    if len(rfm) == 0:
        raise DataError(
            f"no customer has a qualifying event ({', '.join(settings.qualifying_events)}) before {cut:%Y-%m-%d %H:%M}",
            remedy="Check prediction.qualifying_events against the event types in the data, and the cut date",
        )
    model = BetaGeoModel(time_unit_days=FIT_TIME_UNIT_DAYS).fit(rfm.frequency, rfm.recency, rfm.T)
    table = score_customers(
        rfm,
        model,
        horizon_days=settings.horizon_days,
        risk_cut_points=settings.risk_cut_points,
        time_unit_days=FIT_TIME_UNIT_DAYS,
    )
    return table, model, rfm


def model_version(model: BetaGeoModel, settings: PredictionSettings | None = None) -> str:
    """A short stable id of a fitted model: a hash of its parameters, hyper-parameters (time unit included)
    and, when given, the qualifying event types that defined its purchases.

    Parameters are rounded to 10 significant digits so the id does not change with the last bits of a fit.
    """
    if not model.is_fitted:
        raise NotFittedError("model_version: the model is not fitted yet", remedy="Fit it or load a fitted one")
    state = model.to_dict()
    canonical: dict[str, Any] = {
        "model": state["model"],
        "format": state["format"],
        "params": {k: f"{float(v):.10g}" for k, v in sorted(state["params"].items())},
        "hyperparameters": {k: f"{v:.10g}" if isinstance(v, float) else v for k, v in state["hyperparameters"].items()},
    }
    if settings is not None:
        canonical["qualifying_events"] = sorted({e.lower() for e in settings.qualifying_events})
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:12]
    return f"{state['model']}-{digest}"
