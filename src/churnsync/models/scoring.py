"""Per-customer churn scores from a fitted model: the attributes churnsync publishes, as an Arrow table.

``churn_probability`` is P(no qualifying event in the next N days), never P(alive) (which is 1 for every
one-time buyer under BG/NBD). ``churn_risk`` tiers follow Braze's categories: ``low`` below the first cut
point, ``medium`` from the first up to (not including) the second, ``high`` from the second.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from churnsync.config import DEFAULT_PREDICTION, PredictionSettings, SegmentRule
from churnsync.errors import DataError, ModelError, NotFittedError
from churnsync.features.rfm import RFMFrame, build_rfm
from churnsync.models.bgnbd import BetaGeoModel

if TYPE_CHECKING:
    from churnsync.config import Settings
    from churnsync.models.churn import ChurnModel

__all__ = [
    "FIT_TIME_UNIT_DAYS",
    "Prediction",
    "add_segments",
    "assign_segments",
    "churn_model_for",
    "expected_purchases_column",
    "fit_and_score",
    "model_version",
    "population_mask",
    "predict_attributes",
    "score_customers",
    "train_churn_model",
]

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


def _risk_tiers(churn: np.ndarray, risk_cut_points: tuple[float, float]) -> pa.Array:
    low, high = risk_cut_points
    tier = np.searchsorted(np.array([low, high], dtype=np.float64), churn, side="right")
    return pa.DictionaryArray.from_arrays(pa.array(tier, type=pa.int8()), pa.array(RISK_TIERS)).cast(pa.string())


def assign_segments(
    churn: np.ndarray, value: np.ndarray, tenure_days: np.ndarray, rules: Sequence[SegmentRule]
) -> np.ndarray:
    """The predictive segment of every customer: the first rule whose every bound holds, else ``other``.

    ``value`` is turned into its quantile in the scored population (ties share their mean rank), so rules
    read "top half by value" whatever the currency.
    """
    n = churn.shape[0]
    out = np.full(n, "other", dtype=object)
    if n == 0:
        return out
    order = np.argsort(value, kind="mergesort")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    sorted_v = value[order]
    # ties: the mean rank of the group, so equal values share a quantile
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    group_mean = first + (counts - 1) / 2.0
    ranks[order] = np.repeat(group_mean, counts)
    quantile = ranks / max(n - 1, 1)
    free = np.ones(n, dtype=bool)
    for rule in rules:
        hit = free.copy()
        if rule.min_churn is not None:
            hit &= churn >= rule.min_churn
        if rule.max_churn is not None:
            hit &= churn < rule.max_churn
        if rule.min_value_quantile is not None:
            hit &= quantile >= rule.min_value_quantile
        if rule.max_value_quantile is not None:
            hit &= quantile < rule.max_value_quantile
        if rule.max_tenure_days is not None:
            hit &= tenure_days <= rule.max_tenure_days
        out[hit] = rule.name
        free &= ~hit
    return out


@dataclass
class Prediction:
    """The attributes of one scoring run and what produced them."""

    table: pa.Table
    model_version: str
    model_params: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


def _value_table(con: duckdb.DuckDBPyConnection, rfm: RFMFrame, cut: datetime, settings: Settings) -> pa.Table | None:
    """Part A's CLV and next purchase date, or None when the value models cannot be fitted on these data."""
    from churnsync.models.value import fit_value_models, value_attributes

    try:
        model, spend = fit_value_models(rfm)
        return value_attributes(
            rfm,
            model,
            spend,
            clv_horizon_days=settings.prediction.clv_horizon_days,
            annual_discount_rate=settings.prediction.annual_discount_rate,
            time_unit_days=rfm.time_unit_days,
            cut=cut,
        )
    except ModelError:
        return None


def new_churn_model(settings: Settings, qualifying_events: Sequence[str]) -> ChurnModel:
    """An unfitted :class:`ChurnModel` with the horizon of ``[prediction]`` and the knobs of ``[model]``."""
    from churnsync.models.churn import ChurnModel

    ms = settings.model
    return ChurnModel(
        horizon_days=settings.prediction.horizon_days,
        qualifying_events=qualifying_events,
        label_days=ms.label_days,
        training_cuts=ms.training_cuts,
        cut_spacing_days=ms.cut_spacing_days,
        max_training_rows=ms.max_training_rows,
        n_estimators=ms.n_estimators,
        num_threads=ms.num_threads,
        exact_drivers=ms.exact_drivers,
    )


def train_churn_model(
    con: duckdb.DuckDBPyConnection,
    cut: datetime,
    settings: Settings,
    *,
    now: datetime | None = None,
    prediction: str = DEFAULT_PREDICTION,
) -> tuple[str, bool, str]:
    """Train a churn model at ``cut`` for ``settings.prediction`` (named ``prediction`` in the registry), save it,
    and promote it when the quality gate allows (compared with that prediction's model in service).

    Returns (version, published, reason).
    """
    from churnsync.models.registry import ModelRegistry, gate

    ms = settings.model
    model = new_churn_model(settings, settings.prediction.qualifying_events).fit(con, cut, fit_time=now)
    registry = ModelRegistry(ms.registry_path)
    current = registry.in_service(prediction)
    served = registry.load(current).validation if current else None
    validation = model.validation_
    decision = gate(
        validation[model.champion_],
        served,
        min_auc=ms.gate_min_auc,
        min_lift_quality=ms.gate_min_lift_quality,
        max_auc_drop=ms.gate_max_auc_drop,
    )
    state = model.state_ or {}
    version = registry.save(
        model.to_dict(),
        {
            "kind": "churn",
            "prediction_name": prediction,
            "prediction": {
                "horizon_days": model.horizon_days,
                "qualifying_events": model.qualifying_events,
                "label_days": model.label_days,
            },
            "features": state.get("feature_names", []),
            "training_window": {"cuts": state.get("training_cuts", []), "scoring_cut": state.get("scoring_cut")},
            "training_rows": state.get("training_rows"),
            "champion": model.champion_,
            "champion_reason": model.reason_,
            "metrics": validation,
            "feature_importance": model.feature_importance_,
            "validation_curves": model.validation_curves_,
            "gate": {"published": decision.publish, "reason": decision.reason, "previous": current},
        },
        now=now,
    )
    if decision.publish:
        registry.promote(version, now=now)
    return version, decision.publish, decision.reason


def _service_model(settings: Settings, prediction: str = DEFAULT_PREDICTION) -> tuple[str, ChurnModel] | None:
    from churnsync.models.churn import ChurnModel
    from churnsync.models.registry import ModelRegistry

    registry = ModelRegistry(settings.model.registry_path)
    version = registry.in_service(prediction)
    if version is None:
        return None
    record = registry.load(version)
    model = ChurnModel.from_dict(record.artifact)
    wanted = (settings.prediction.horizon_days, sorted({q.lower() for q in settings.prediction.qualifying_events}))
    if (model.horizon_days, model.qualifying_events) != wanted:
        which = "" if prediction == DEFAULT_PREDICTION else f" of prediction '{prediction}'"
        option = "" if prediction == DEFAULT_PREDICTION else f" --prediction {prediction}"
        raise ModelError(
            f"model {version} in service{which} predicts {model.horizon_days}-day churn of "
            f"{', '.join(model.qualifying_events)} but the configuration asks for "
            f"{wanted[0]}-day churn of {', '.join(wanted[1])}",
            remedy=f"Train a model for the new definition with `churnsync train{option}`",
        )
    return version, model


def population_mask(
    con: duckdb.DuckDBPyConnection, cut: datetime, customer_id: pa.Array | pa.ChunkedArray, settings: PredictionSettings
) -> np.ndarray | None:
    """Which of ``customer_id`` are in the scored population at ``cut``: an event (of ``active_events``, any type
    when empty) in the ``active_within_days`` days before ``cut``. None when the prediction scores everyone."""
    import pyarrow.compute as pc

    if settings.active_within_days is None:
        return None
    end = cut.astimezone(UTC).replace(tzinfo=None) if cut.tzinfo else cut
    start = end - timedelta(days=settings.active_within_days)
    query = "SELECT DISTINCT customer_id FROM events WHERE occurred_at >= ? AND occurred_at < ?"
    params: list[Any] = [start, end]
    types = sorted({t.strip().lower() for t in settings.active_events})
    if types:
        query += f" AND event_type IN ({', '.join('?' for _ in types)})"
        params += types
    active = con.sql(query, params=params).to_arrow_table().column("customer_id")
    mask = pc.is_in(customer_id, value_set=active.combine_chunks().cast(pa.string()))
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _keep_population(table: pa.Table, mask: np.ndarray) -> pa.Table:
    """``table`` with every attribute of the customers outside the population set to null (their values clear)."""
    import pyarrow.compute as pc

    keep = pa.array(mask, type=pa.bool_())
    for i, name in enumerate(table.column_names):
        if name == "customer_id":
            continue
        column = table.column(i)
        table = table.set_column(i, name, pc.if_else(keep, column, pa.scalar(None, column.type)))
    return table


def add_segments(
    table: pa.Table,
    churn_now: npt.NDArray[np.float64],
    value_score: npt.NDArray[np.float64],
    tenure: npt.NDArray[np.float64],
    mask: npt.NDArray[np.bool_] | None,
    settings: Settings,
    details: dict[str, Any],
) -> pa.Table:
    """``table`` with its ``segment`` column; with a scored population (``mask``), value quantiles rank that
    population only, customers outside it get nulls, and ``details["population"]`` says who was scored.
    Both engines finish their predictions here."""
    if mask is None:
        segments = assign_segments(churn_now, value_score, tenure, settings.model.segments)
    else:
        segments = np.full(table.num_rows, "other", dtype=object)
        segments[mask] = assign_segments(churn_now[mask], value_score[mask], tenure[mask], settings.model.segments)
    table = table.append_column("segment", pa.array(segments.astype(str), type=pa.string()))
    if mask is not None:
        prediction = settings.prediction
        table = _keep_population(table, mask)
        details["population"] = {
            "active_within_days": prediction.active_within_days,
            "active_events": sorted({t.strip().lower() for t in prediction.active_events}),
            "customers_in_population": int(mask.sum()),
            "customers_outside": int((~mask).sum()),
        }
    return table


def churn_model_for(
    con: duckdb.DuckDBPyConnection,
    cut: datetime,
    settings: Settings,
    *,
    now: datetime | None,
    retrain: bool,
    prediction_name: str,
    messages: list[str],
) -> tuple[str, ChurnModel] | None:
    """The learned churn model (version, model) that scores ``prediction_name``: the one in service, or one trained on
    ``con``'s events first (always with ``retrain``) and gated; ``None`` when BG/NBD must score churn. What happened
    is appended to ``messages``. Both engines call this (Spark with its driver-side training sample)."""
    if settings.model.kind != "ml":
        return None
    service = None if retrain else _service_model(settings, prediction_name)
    if service is not None:
        return service
    try:
        version, published, reason = train_churn_model(con, cut, settings, now=now, prediction=prediction_name)
    except DataError as exc:
        service = _service_model(settings, prediction_name) if retrain else None
        keeps = f"model {service[0]} keeps scoring" if service else "BG/NBD scores churn"
        messages.append(f"no new churn model: {exc.message}; {keeps}")
        return service
    service = _service_model(settings, prediction_name)
    if published:
        messages.append(f"trained and published model {version}: {reason}")
    else:
        keeps = f"model {service[0]} keeps scoring" if service else "BG/NBD scores churn"
        messages.append(f"trained model {version} was not published: {reason}; {keeps}")
    return service


def predict_attributes(
    con: duckdb.DuckDBPyConnection,
    cut: datetime,
    settings: Settings,
    *,
    now: datetime | None = None,
    retrain: bool = False,
    prediction_name: str = DEFAULT_PREDICTION,
) -> Prediction:
    """Score every customer at ``cut``: churn from the model in service (trained and gated first when the
    registry has none), BTYD expected purchases and P(alive), CLV and next purchase date, driver and segment.

    With ``model.kind = "bgnbd"`` (or when no learned model may serve) BG/NBD alone gives the churn score.
    ``retrain`` trains a new model first even when one is in service (the quality gate decides which scores).
    ``prediction_name`` keys the model in the registry. With ``prediction.active_within_days`` set, customers
    outside the scored population keep their row with every attribute null (segments rank the population only).
    """

    prediction = settings.prediction
    messages: list[str] = []
    details: dict[str, Any] = {}
    service = churn_model_for(
        con, cut, settings, now=now, retrain=retrain, prediction_name=prediction_name, messages=messages
    )
    if service is None:
        table, model, rfm = fit_and_score(con, cut, prediction)
        version = model_version(model, prediction)
        tenure = rfm.T * rfm.time_unit_days
        details["model"] = model.to_dict()
        driver = None
    else:
        version, churn_model = service
        scores = churn_model.predict(con, cut)
        frame = scores.frame
        rfm, model = frame.rfm, frame.btyd
        table = score_customers(
            rfm,
            model,
            horizon_days=prediction.horizon_days,
            risk_cut_points=prediction.risk_cut_points,
            time_unit_days=FIT_TIME_UNIT_DAYS,
        )
        churn = scores.churn_probability
        table = table.set_column(1, "churn_probability", pa.array(churn, type=pa.float64()))
        table = table.set_column(2, "churn_risk", _risk_tiers(churn, prediction.risk_cut_points))
        tenure = frame.X[:, frame.names.index(f"{churn_model.qualifying_label}_tenure_days")]
        driver = scores.churn_driver
        details["model"] = {"churn": version, "champion": churn_model.champion_, "btyd": model.to_dict()}
        details["champion_reason"] = churn_model.reason_
    value = _value_table(con, rfm, cut, settings)
    if value is not None:
        for name in value.column_names[1:]:
            # next_purchase_date moves with every run for every customer who did not buy (the median wait
            # grows with age), so publishing it re-sends everyone: opt-in.
            if name != "next_purchase_date" or settings.model.publish_next_purchase_date:
                table = table.append_column(name, value.column(name))
        value_score = np.asarray(value.column(1).to_numpy(zero_copy_only=False), dtype=np.float64)
    else:
        value_score = np.asarray(table.column(3).to_numpy(zero_copy_only=False), dtype=np.float64)
        messages.append("no CLV: the spend model cannot be fitted on these data (segments use expected purchases)")
    if driver is not None:
        table = table.append_column("churn_driver", pa.array(driver.astype(str), type=pa.string()))
    churn_now = np.asarray(table.column("churn_probability").to_numpy(zero_copy_only=False), dtype=np.float64)
    tenure = np.asarray(tenure, dtype=np.float64)
    mask = population_mask(con, cut, table.column("customer_id"), prediction)
    table = add_segments(table, churn_now, value_score, tenure, mask, settings, details)
    params = model.params_
    details["messages"] = messages
    details["scored_at"] = (now or datetime.now(UTC)).isoformat()
    return Prediction(
        table=table,
        model_version=version,
        model_params={"r": params.r, "alpha": params.alpha, "a": params.a, "b": params.b},
        details=details,
        messages=messages,
    )
