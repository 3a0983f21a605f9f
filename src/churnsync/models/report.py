"""The quality report of ``churnsync evaluate``: a backtest at ``scoring cut − horizon`` as JSON, and a
self-contained HTML page with plots (plotly, with plotly.js embedded inline: it opens without a network).

The backtest trains the churn model with events before the evaluation cut ``E = S − N`` only (its own label
windows end on or before ``E``), scores at ``E`` and compares with what happened in ``[E, S)``. Beside the
champion it always reports the baselines: the recency heuristic (days since the last qualifying event),
BG/NBD P(no purchase in N days), and the logistic regression on log-RFM, plus the other candidates and
the validation figures the model in service was published with.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from churnsync.errors import DataError
from churnsync.models.evaluation import (
    calibration_curve,
    churn_metrics,
    gains_by_decile,
    normalized_gini,
)

if TYPE_CHECKING:
    from churnsync.config import Settings

__all__ = ["evaluate_backtest", "render_html"]


def _clean(value: Any) -> Any:
    """``value`` with NaN/inf replaced by None, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _count_window(
    con: duckdb.DuckDBPyConnection, ids: np.ndarray, start: datetime, end: datetime, quals: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per customer of ``ids``: qualifying purchase days and summed value in ``[start, end)``."""
    table = con.sql(
        "SELECT customer_id, count(DISTINCT CAST(floor(epoch(occurred_at) / 86400) AS BIGINT)) AS days, "
        "coalesce(sum(value), 0.0) AS spend FROM events WHERE occurred_at >= ? AND occurred_at < ? "
        f"AND lower(event_type) IN ({', '.join('?' for _ in quals)}) GROUP BY customer_id",
        params=[start, end, *quals],
    ).to_arrow_table()
    got = np.asarray(table.column("customer_id").to_numpy(zero_copy_only=False), dtype=object)
    order = np.argsort(got)
    got = got[order]
    days = np.asarray(table.column("days").to_numpy(), dtype=np.float64)[order]
    spend = np.asarray(table.column("spend").to_numpy(), dtype=np.float64)[order]
    pos = np.clip(np.searchsorted(got, ids), 0, max(got.size - 1, 0))
    hit = (got.size > 0) & (got[pos] == ids) if got.size else np.zeros(ids.size, dtype=bool)
    return np.where(hit, days[pos] if got.size else 0.0, 0.0), np.where(hit, spend[pos] if got.size else 0.0, 0.0)


def evaluate_backtest(
    con: duckdb.DuckDBPyConnection,
    scoring_cut: datetime,
    settings: Settings,
    *,
    now: datetime | None = None,
    prediction: str = "default",
) -> dict[str, Any]:
    """Train at ``scoring_cut − horizon`` on earlier events, score, and measure against the window up to
    ``scoring_cut``; returns the report as a JSON-ready dict. ``prediction`` names the prediction whose model
    in service the report compares with (``settings.prediction`` is its definition)."""
    from churnsync.models.churn import label_churn
    from churnsync.models.registry import ModelRegistry
    from churnsync.models.scoring import new_churn_model
    from churnsync.models.value import fit_value_models, value_attributes

    ms = settings.model
    horizon = settings.prediction.horizon_days
    quals = sorted({q.lower() for q in settings.prediction.qualifying_events})
    cut = scoring_cut.astimezone(UTC).replace(tzinfo=None) if scoring_cut.tzinfo else scoring_cut
    eval_cut = cut - timedelta(days=horizon)
    model = new_churn_model(settings, quals).fit(con, eval_cut, fit_time=now)
    scores = model.predict(con, eval_cut, all_candidates=True)
    frame = scores.frame
    y = label_churn(con, frame.customer_id, eval_cut, horizon, quals, scoring_cut=cut)
    rfm, btyd = frame.rfm, frame.btyd
    t = horizon / rfm.time_unit_days
    q = model.qualifying_label
    scored: dict[str, np.ndarray] = {
        f"champion ({model.champion_})": scores.churn_probability,
        **{f"candidate {k}": v for k, v in scores.candidates.items() if k != model.champion_},
        "baseline recency": frame.X[:, frame.names.index(f"days_since_last_{q}")],
        "baseline BG/NBD P0": btyd.prob_no_purchase(t, rfm.frequency, rfm.recency, rfm.T),
    }
    if "logistic" in scores.candidates:
        scored["baseline logistic log-RFM"] = scores.candidates["logistic"]
    churn: dict[str, Any] = {}
    for name, s in scored.items():
        probability = name != "baseline recency"
        metrics = churn_metrics(y, s) if probability else churn_metrics(y, s / max(float(s.max()), 1.0))
        if not probability:  # days are a ranking, not a probability: calibration measures do not apply
            for key in ("brier", "log_loss", "ece", "mean_predicted"):
                metrics[key] = float("nan")
        churn[name] = {
            "metrics": metrics,
            "calibration": calibration_curve(y, s) if probability else None,
            "gains": gains_by_decile(y, s),
        }
    # Counts: BG/NBD expected purchase days against the actual ones.
    actual, spend = _count_window(con, frame.customer_id, eval_cut, cut, quals)
    expected = btyd.expected_purchases(t, rfm.frequency, rfm.recency, rfm.T)
    x = np.minimum(rfm.frequency, 7)
    conditional = [
        {
            "frequency": f"{k}+" if k == 7 else str(k),
            "customers": int(np.sum(x == k)),
            "actual": float(actual[x == k].mean()) if np.any(x == k) else None,
            "expected": float(expected[x == k].mean()) if np.any(x == k) else None,
        }
        for k in range(8)
    ]
    counts = {
        "actual_total": float(actual.sum()),
        "expected_total": float(expected.sum()),
        "total_error": float(expected.sum() / actual.sum() - 1.0) if actual.sum() else None,
        "mae": float(np.mean(np.abs(expected - actual))),
        "rmse": float(np.sqrt(np.mean((expected - actual) ** 2))),
        "conditional_expectation": conditional,
    }
    value: dict[str, Any] | None = None
    try:
        base, spend_model = fit_value_models(rfm)
        clv_days = settings.prediction.clv_horizon_days
        table = value_attributes(
            rfm,
            base,
            spend_model,
            clv_horizon_days=horizon,
            annual_discount_rate=0.0,
            time_unit_days=rfm.time_unit_days,
            cut=eval_cut,
        )
        clv = np.asarray(table.column(1).to_numpy(), dtype=np.float64)
        value = {
            "window_days": horizon,
            "note": f"value over the {horizon}-day backtest window (clv_{clv_days}d uses the same models)",
            "normalized_gini": normalized_gini(spend, clv),
            "actual_total": float(spend.sum()),
            "forecast_total": float(clv.sum()),
            "total_error": float(clv.sum() / spend.sum() - 1.0) if spend.sum() else None,
        }
    except (DataError, Exception) as exc:  # the spend model needs repeat buyers with values
        value = {"error": str(exc)}
    registry = ModelRegistry(ms.registry_path)
    service = registry.in_service(prediction)
    previous = None
    if service is not None:
        record = registry.load(service)
        previous = {"version": service, "champion": record.meta.get("champion"), "validation": record.validation}
    report = {
        "generated_at": (now or datetime.now(UTC)).isoformat(),
        "prediction": prediction,
        "definition": {"horizon_days": horizon, "qualifying_events": quals},
        "evaluation_cut": eval_cut.isoformat(),
        "outcome_window_end": cut.isoformat(),
        "customers": len(y),
        "churn_rate": float(y.mean()),
        "champion": model.champion_,
        "champion_reason": model.reason_,
        "validation": model.validation_,
        "churn": churn,
        "counts": counts,
        "value": value,
        "model_in_service": previous,
    }
    cleaned: dict[str, Any] = _clean(report)
    return cleaned


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1%}" if pct else f"{value:.4f}"
    return html.escape(str(value))


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page; plotly.js is embedded inline (no CDN), so it renders offline."""
    import plotly.graph_objects as go

    churn = report["churn"]
    figures: list[Any] = []
    cal = go.Figure()
    cal.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot"}))
    gains = go.Figure()
    gains.add_trace(go.Scatter(x=list(range(11)), y=[i / 10 for i in range(11)], name="random", line={"dash": "dot"}))
    lift = go.Figure()
    for name, entry in churn.items():
        if entry["calibration"]:
            c = entry["calibration"]
            cal.add_trace(go.Scatter(x=c["predicted"], y=c["observed"], mode="lines+markers", name=name))
        g = entry["gains"]
        gains.add_trace(go.Scatter(x=list(range(11)), y=[0.0, *g["gains"]], mode="lines+markers", name=name))
        lift.add_trace(go.Bar(x=[f"D{i + 1}" for i in range(len(g["lift"]))], y=g["lift"], name=name))
    cal.update_layout(title="Calibration: observed churn rate by predicted probability", xaxis_title="predicted",
                      yaxis_title="observed")  # fmt: skip
    gains.update_layout(title="Gains: share of churners reached by the top deciles", xaxis_title="deciles targeted",
                        yaxis_title="share of churners")  # fmt: skip
    lift.update_layout(title="Lift by decile (rate / overall rate)", barmode="group")
    ce = report["counts"]["conditional_expectation"]
    cond = go.Figure()
    cond.add_trace(go.Bar(x=[r["frequency"] for r in ce], y=[r["actual"] for r in ce], name="actual"))
    cond.add_trace(go.Bar(x=[r["frequency"] for r in ce], y=[r["expected"] for r in ce], name="BG/NBD expected"))
    cond.update_layout(title="Purchases in the window by past repeat purchases (x)", barmode="group")
    figures = [cal, gains, lift, cond]
    plots = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%", default_height="420px")
        for i, fig in enumerate(figures)
    ]
    keys = [("auc", False), ("pr_auc", False), ("lift_quality", True), ("brier", False), ("log_loss", False),
            ("ece", False), ("mean_predicted", False)]  # fmt: skip
    head = "".join(f"<th>{k}</th>" for k, _ in keys)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{_fmt(entry['metrics'].get(k), pct)}</td>" for k, pct in keys)
        + "</tr>"
        for name, entry in churn.items()
    )
    previous = report.get("model_in_service")
    if previous:
        v = previous["validation"] or {}
        rows += (
            f"<tr><td>model in service {html.escape(previous['version'])} (its validation)</td>"
            + "".join(f"<td>{_fmt(v.get(k), pct)}</td>" for k, pct in keys)
            + "</tr>"
        )
    counts = report["counts"]
    definition = report["definition"]
    value = report.get("value") or {}
    if "normalized_gini" in value:
        value_text = (
            f"CLV forecast over the {value['window_days']}-day window: normalized Gini "
            f"{_fmt(value['normalized_gini'])}, total {value['forecast_total']:,.0f} forecast vs "
            f"{value['actual_total']:,.0f} actual (error {_fmt(value['total_error'], True)})"
        )
    else:
        value_text = html.escape(str(value.get("error", "not available")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>churnsync quality report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>churnsync quality report</h1>
<p>{report["definition"]["horizon_days"]}-day churn of {html.escape(", ".join(definition["qualifying_events"]))};
backtest: trained on events before {html.escape(report["evaluation_cut"])}, measured on
[{html.escape(report["evaluation_cut"])}, {html.escape(report["outcome_window_end"])});
{report["customers"]:,} customers, churn rate {report["churn_rate"]:.1%}.</p>
<p><b>Champion:</b> {html.escape(report["champion_reason"])}</p>
<h2>Churn</h2><table><tr><th>model</th>{head}</tr>{rows}</table>
<p>Lift quality: average lift over random across every audience size, 0 % random, 100 % perfect.</p>
<h2>Counts (BG/NBD)</h2><p>total {counts["expected_total"]:.1f} forecast vs {counts["actual_total"]:.0f} actual
(error {_fmt(counts["total_error"], True)}), MAE {counts["mae"]:.3f}, RMSE {counts["rmse"]:.3f}</p>
<h2>Value</h2><p>{value_text}</p>
{"".join(plots)}
</body></html>
"""
