"""Plotly figures as plain dicts (data + layout), drawn in the browser by the plotly.js the app serves itself.

Building the JSON directly keeps the server free of plotly's Python graph objects; the figures are small
(binned in SQL), so a page stays a few kilobytes whatever the number of customers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from churnsync.web.queries import Histogram

Figure = dict[str, Any]

#: Risk tiers in reading order, with colours that say what they mean.
TIER_COLOURS = {"low": "#2e7d32", "medium": "#f9a825", "high": "#c62828"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 15}, "x": 0.01, "xanchor": "left"},
        "xaxis": {"title": {"text": x}, "automargin": True},
        "yaxis": {"title": {"text": y}, "automargin": True, "rangemode": "tozero"},
        "margin": {"l": 60, "r": 20, "t": 45, "b": 50},
        "height": 340,
        "plot_bgcolor": "#ffffff",
        "paper_bgcolor": "#ffffff",
        "legend": {"orientation": "v", "x": 1.02, "y": 1, "xanchor": "left"},
    }
    layout.update(extra)
    return layout


def _iso(value: datetime) -> str:
    return value.isoformat()


def tiers_over_time(points: list[tuple[datetime, int, dict[str, int]]]) -> Figure:
    """Stacked bars: customers per risk tier at each run's as-of date."""
    order = list(TIER_COLOURS)
    tiers = sorted(
        {t for _, _, counts in points for t in counts}, key=lambda t: (order.index(t) if t in order else 9, t)
    )
    labels = [f"{as_of:%Y-%m-%d} (run {run})" for as_of, run, _ in points]
    data = [
        {
            "type": "bar",
            "name": tier,
            "x": labels,
            "y": [counts.get(tier, 0) for _, _, counts in points],
            "marker": {"color": TIER_COLOURS.get(tier, PALETTE[i % len(PALETTE)])},
        }
        for i, tier in enumerate(tiers)
    ]
    return {"data": data, "layout": _layout("Customers by risk tier", "Run (as of)", "Customers", barmode="stack")}


def histogram(hist: Histogram, title: str, x: str) -> Figure:
    data = [
        {
            "type": "bar",
            "x": hist.centers,
            "y": hist.counts,
            "width": [hist.width * 0.95] * len(hist.counts),
            "marker": {"color": PALETTE[0]},
            "hovertemplate": "%{x:.3g}: %{y} customers<extra></extra>",
        }
    ]
    return {"data": data, "layout": _layout(title, x, "Customers", bargap=0.02)}


def bars(labels: list[str], values: list[int], title: str, x: str, y: str = "Customers") -> Figure:
    colours = [TIER_COLOURS.get(label, PALETTE[i % len(PALETTE)]) for i, label in enumerate(labels)]
    data = [{"type": "bar", "x": labels, "y": values, "marker": {"color": colours}}]
    return {"data": data, "layout": _layout(title, x, y)}


def lines(
    series: dict[str, tuple[list[Any], list[float | None]]], title: str, x: str, y: str, *, steps: bool = False
) -> Figure:
    """One line per series name: (x values, y values); ``steps`` for a stored value, held until it changes."""
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "line": {"shape": "hv" if steps else "linear", "color": PALETTE[i % len(PALETTE)]},
            "name": name,
            "x": [_iso(v) if isinstance(v, datetime) else v for v in xs],
            "y": ys,
        }
        for i, (name, (xs, ys)) in enumerate(series.items())
    ]
    layout = _layout(title, x, y)
    layout["yaxis"]["rangemode"] = "normal"
    return {"data": data, "layout": layout}


def run_bars(runs: list[dict[str, Any]], field: str, title: str) -> Figure:
    """One bar per sync run (oldest left), coloured by destination."""
    destinations = sorted({r["destination"] for r in runs})
    ordered = list(reversed(runs))
    data = [
        {
            "type": "bar",
            "name": dest,
            "x": [f"run {r['id']}" for r in ordered if r["destination"] == dest],
            "y": [r[field] for r in ordered if r["destination"] == dest],
            "marker": {"color": PALETTE[i % len(PALETTE)]},
        }
        for i, dest in enumerate(destinations)
    ]
    return {"data": data, "layout": _layout(title, "Sync run", field.replace("_", " "))}


def grouped_bars(labels: list[str], series: dict[str, list[Any]], title: str, x: str) -> Figure:
    data = [
        {"type": "bar", "name": name, "x": labels, "y": values, "marker": {"color": PALETTE[i % len(PALETTE)]}}
        for i, (name, values) in enumerate(series.items())
    ]
    layout = _layout(title, x, "Value", barmode="group")
    layout["yaxis"]["range"] = [0, 1]
    return {"data": data, "layout": layout}


def calibration(
    curves: dict[str, tuple[list[float], list[float]]],
    *,
    counts: dict[str, list[float]] | None = None,
    title: str = "Calibration",
) -> Figure:
    """Observed churn rate against mean predicted probability per bin, one line per model; the diagonal is perfect.
    ``counts`` (customers per bin, per model) shows on hover."""
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "perfect",
            "x": [0, 1],
            "y": [0, 1],
            "line": {"dash": "dot", "color": "#999"},
        }
    ]
    for i, (name, (predicted, observed)) in enumerate(curves.items()):
        colour = PALETTE[i % len(PALETTE)]
        trace: dict[str, Any] = {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": predicted,
            "y": observed,
            "line": {"color": colour},
        }
        if counts and name in counts:
            trace["text"] = [f"{int(c):,} customers" for c in counts[name]]
        data.append(trace)
    layout = _layout(title, "Mean predicted probability", "Observed churn rate")
    layout["xaxis"]["range"] = [0, 1]
    layout["yaxis"]["range"] = [0, 1]
    return {"data": data, "layout": layout}


def gains(curves: dict[str, list[float]], *, title: str = "Gains") -> Figure:
    """Cumulative share of churners captured by the top deciles, one line per model; the diagonal is random order."""
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "random",
            "x": [0, 100],
            "y": [0, 1],
            "line": {"dash": "dot", "color": "#999"},
        }
    ]
    for i, (name, cumulative) in enumerate(curves.items()):
        deciles = [0, *(10 * (k + 1) for k in range(len(cumulative)))]
        colour = PALETTE[i % len(PALETTE)]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": name,
                "x": deciles,
                "y": [0, *cumulative],
                "line": {"color": colour},
            }
        )
    return {
        "data": data,
        "layout": _layout(title, "Customers contacted (top %, by score)", "Share of churners captured"),
    }


def hbars(labels: list[str], values: list[float], title: str) -> Figure:
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "y": list(reversed(labels)),
            "x": list(reversed(values)),
            "marker": {"color": PALETTE[0]},
        }
    ]
    layout = _layout(title, "Importance", "")
    layout["height"] = max(340, 22 * len(labels) + 80)
    return {"data": data, "layout": layout}
