"""Behavioural features at a cut date for the machine-learned churn model, computed by DuckDB in SQL.

Per customer with at least one qualifying event strictly before ``cut`` (the same population as
:func:`churnsync.features.rfm.build_rfm`), from events strictly before ``cut`` only:

- recency: ``days_since_last_{q}`` (qualifying) and ``days_since_last_event`` (any type), in days;
- frequency: ``{q}_days`` (distinct days with a qualifying event), and ``{q}_days_{w}d`` for every window w;
- counts per event type in the windows: ``{type}_events_{w}d`` (``[cut - w days, cut)``); per type, its lifetime
  daily rate ``{type}_events_per_day`` (events / days since the customer's first event, at least 1) and, for the
  types that do not qualify, the days since its last event ``days_since_last_{type}`` (NaN if it never occurred);
- trends: ``{q}_trend_{a}_{b}d`` = daily rate over the last ``a`` days minus the daily rate over the
  ``b - a`` days before them (positive = speeding up), for consecutive windows;
- inter-event times between qualifying days: ``{q}_gap_mean_days``, ``{q}_gap_std_days``,
  ``{q}_gap_max_days`` and ``overdue_ratio`` = days since the last qualifying event / mean gap
  (NaN with fewer than two qualifying days: LightGBM treats NaN as missing);
- tenure: ``tenure_days`` (since the first event of any type) and ``{q}_tenure_days``;
- spend: ``spend_total``, ``spend_mean``, ``spend_max``, ``spend_{w}d`` for the largest window.

``{q}`` is the qualifying event type when there is one (``days_since_last_purchase``), else ``qualifying``.
Names use only ``[a-z0-9_]``; values are bound as parameters, never pasted into SQL. Day differences use
epoch arithmetic (no ``date_diff``) so that the query transpiles to Spark SQL with the same meaning.

Example::

    >>> import duckdb
    >>> from datetime import datetime
    >>> con = duckdb.connect()
    >>> _ = con.execute("CREATE TABLE events (customer_id VARCHAR, occurred_at TIMESTAMP, "
    ...                 "event_type VARCHAR, value DOUBLE)")
    >>> _ = con.execute("INSERT INTO events VALUES ('a', '2024-01-01 10:00', 'purchase', 10), "
    ...                 "('a', '2024-01-08 10:00', 'purchase', 30), ('a', '2024-01-20', 'purchase', 5)")
    >>> f = build_window_features(con, datetime(2024, 1, 15), ["purchase"], event_types=["purchase"])
    >>> f.column("days_since_last_purchase")[0], f.column("purchase_days")[0], f.column("spend_total")[0]
    (np.float64(6.583333333333333), np.float64(2.0), np.float64(40.0))
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np

from churnsync.errors import DataError

__all__ = [
    "DEFAULT_WINDOWS",
    "FeatureFrame",
    "build_window_features",
    "discover_event_types",
    "feature_label",
    "window_features_query",
]

DEFAULT_WINDOWS: tuple[int, ...] = (7, 30, 90, 180)
_NAME = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class FeatureFrame:
    """Per-customer features at a cut: ``customer_id`` (object array, sorted) and a float64 matrix ``values``
    whose columns are ``names``."""

    customer_id: np.ndarray
    names: tuple[str, ...]
    values: np.ndarray
    cut: datetime

    def __len__(self) -> int:
        return int(self.customer_id.shape[0])

    def column(self, name: str) -> np.ndarray:
        """One feature as a float64 vector."""
        try:
            return np.asarray(self.values[:, self.names.index(name)])
        except ValueError:
            raise DataError(
                f"features: no column {name!r} (have: {', '.join(self.names)})",
                remedy="Build the features with the event types and windows the model was trained with",
            ) from None


def feature_label(name: str) -> str:
    """``name`` as a feature-name fragment: lower case, only ``[a-z0-9_]``."""
    label = _NAME.sub("_", str(name).lower()).strip("_")
    return label or "event"


def _naive_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _epoch(moment: datetime) -> float:
    return (_naive_utc(moment) - datetime(1970, 1, 1)).total_seconds()


def discover_event_types(con: duckdb.DuckDBPyConnection, cut: datetime, *, limit: int = 8) -> list[str]:
    """The ``limit`` most frequent event types before ``cut`` (the per-type count features), sorted by name."""
    rows = con.execute(
        "SELECT lower(event_type) AS t, count(*) AS n FROM events WHERE occurred_at < ? AND event_type IS NOT NULL "
        "GROUP BY 1 ORDER BY n DESC, t LIMIT ?",
        [_naive_utc(cut), int(limit)],
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _as_double(select_item: str) -> str:
    """``expr AS name`` → ``CAST(expr AS DOUBLE) AS name``: counts come back as HUGEINT, slow to convert."""
    if " AS " in select_item:
        expr, name = select_item.rsplit(" AS ", 1)
    else:
        expr, name = select_item, select_item.rsplit(".", 1)[-1]
    return f"CAST({expr} AS DOUBLE) AS {name}"


def _sql(
    q: str, event_types: Sequence[str], windows: Sequence[int], n_qual: int, qualifying: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """The query text (placeholders only) and the output feature names, in order."""
    names: list[str] = []
    type_cols: list[str] = []
    for t in event_types:
        for w in windows:
            type_cols.append(f"count_if(event_type = ? AND age_s < {w} * 86400.0) AS {feature_label(t)}_events_{w}d")
            names.append(f"{feature_label(t)}_events_{w}d")
        # Lifetime rate and (for the other types) recency per type: activity other than the qualifying events
        # can reveal a lapse, e.g. sessions that stop while email opens go on.
        type_cols.append(
            f"count_if(event_type = ?) / greatest(max(age_s) / 86400.0, 1.0) AS {feature_label(t)}_events_per_day"
        )
        names.append(f"{feature_label(t)}_events_per_day")
        if t not in qualifying:
            type_cols.append(
                f"coalesce(min(CASE WHEN event_type = ? THEN age_s END) / 86400.0, CAST('NaN' AS DOUBLE)) "
                f"AS days_since_last_{feature_label(t)}"
            )
            names.append(f"days_since_last_{feature_label(t)}")
    window_cols = [f"count_if(age_s < {w} * 86400.0) AS {q}_days_{w}d" for w in windows]
    longest = max(windows)
    out = [
        f"q.days_since_last AS days_since_last_{q}",
        "a.days_since_last_event AS days_since_last_event",
        f"q.n_days AS {q}_days",
        *[f"q.{q}_days_{w}d AS {q}_days_{w}d" for w in windows],
        *[f"a.{c}" for c in names],
    ]
    feat = [f"days_since_last_{q}", "days_since_last_event", f"{q}_days", *[f"{q}_days_{w}d" for w in windows], *names]
    for a, b in itertools.pairwise(windows):
        out.append(f"q.{q}_days_{a}d / {a}.0 - (q.{q}_days_{b}d - q.{q}_days_{a}d) / {b - a}.0 AS {q}_trend_{a}_{b}d")
        feat.append(f"{q}_trend_{a}_{b}d")
    out += [
        f"CASE WHEN q.n_days > 1 THEN q.span_days / (q.n_days - 1) ELSE CAST('NaN' AS DOUBLE) END AS {q}_gap_mean_days",
        f"coalesce(q.gap_std, CAST('NaN' AS DOUBLE)) AS {q}_gap_std_days",
        f"coalesce(q.gap_max, CAST('NaN' AS DOUBLE)) AS {q}_gap_max_days",
        "CASE WHEN q.n_days > 1 AND q.span_days > 0 THEN q.days_since_last * (q.n_days - 1) / q.span_days "
        "ELSE CAST('NaN' AS DOUBLE) END AS overdue_ratio",
        "a.tenure_days AS tenure_days",
        f"q.tenure_days AS {q}_tenure_days",
        "q.spend_total AS spend_total",
        "CASE WHEN q.value_days > 0 THEN q.spend_total / q.value_days ELSE 0.0 END AS spend_mean",
        "coalesce(q.spend_max, 0.0) AS spend_max",
        f"q.spend_recent AS spend_{longest}d",
    ]
    feat += [
        f"{q}_gap_mean_days",
        f"{q}_gap_std_days",
        f"{q}_gap_max_days",
        "overdue_ratio",
        "tenure_days",
        f"{q}_tenure_days",
        "spend_total",
        "spend_mean",
        "spend_max",
        f"spend_{longest}d",
    ]
    qual_in = ", ".join("?" for _ in range(n_qual))
    sql = f"""
WITH ev AS (
    SELECT customer_id, lower(event_type) AS event_type, value,
           ? - epoch(occurred_at) AS age_s,
           CAST(floor(epoch(occurred_at) / 86400) AS BIGINT) AS day,
           lower(event_type) IN ({qual_in}) AS qualifying
    FROM events
    WHERE occurred_at < ? AND customer_id IS NOT NULL
),
days AS (
    SELECT customer_id, day, min(age_s) AS age_s, sum(value) AS day_value
    FROM ev WHERE qualifying GROUP BY customer_id, day
),
gaps AS (
    SELECT customer_id, day, age_s, day_value,
           day - lag(day) OVER (PARTITION BY customer_id ORDER BY day) AS gap
    FROM days
),
q AS (
    SELECT customer_id,
           min(age_s) / 86400.0 AS days_since_last,
           max(age_s) / 86400.0 AS tenure_days,
           CAST(count(*) AS DOUBLE) AS n_days,
           CAST(max(day) - min(day) AS DOUBLE) AS span_days,
           stddev_pop(gap) AS gap_std,
           CAST(max(gap) AS DOUBLE) AS gap_max,
           coalesce(sum(day_value), 0.0) AS spend_total,
           count(day_value) AS value_days,
           max(day_value) AS spend_max,
           coalesce(sum(day_value) FILTER (WHERE age_s < {longest} * 86400.0), 0.0) AS spend_recent,
           {", ".join(window_cols)}
    FROM gaps GROUP BY customer_id
),
a AS (
    SELECT customer_id,
           min(age_s) / 86400.0 AS days_since_last_event,
           max(age_s) / 86400.0 AS tenure_days{"," if type_cols else ""}
           {", ".join(type_cols)}
    FROM ev GROUP BY customer_id
)
SELECT q.customer_id, {", ".join(_as_double(o) for o in out)}
FROM q JOIN a USING (customer_id)
ORDER BY q.customer_id
"""
    return sql, feat


def window_features_query(
    cut: datetime,
    qualifying_events: Sequence[str],
    *,
    event_types: Sequence[str],
    windows: Sequence[int] = DEFAULT_WINDOWS,
) -> tuple[str, list[Any], list[str]]:
    """The features query over a table ``events`` in DuckDB's dialect (``?`` placeholders), its parameters and
    the output feature names in order.

    The one definition of these features: :func:`build_window_features` runs it on DuckDB, and the Spark engine
    (:mod:`churnsync.engines.spark`) transpiles the same text to Spark SQL.
    """
    quals = sorted(
        {str(t).lower() for t in ([qualifying_events] if isinstance(qualifying_events, str) else qualifying_events)}
    )
    if not quals:
        raise DataError("features: no qualifying event types were given", remedy='Set e.g. ["purchase"]')
    wins = sorted({int(w) for w in windows})
    if not wins or wins[0] < 1:
        raise DataError(
            f"features: windows must be whole days >= 1 (got {list(windows)!r})", remedy="Use e.g. 7, 30, 90"
        )
    types = sorted({str(t).lower() for t in event_types})
    labels = [feature_label(t) for t in types]
    if len(set(labels)) != len(labels):
        raise DataError(
            f"features: event types {types!r} collide once reduced to [a-z0-9_] names",
            remedy="Rename the event types so that they differ in letters or digits",
        )
    q = feature_label(quals[0]) if len(quals) == 1 else "qualifying"
    sql, names = _sql(q, types, wins, len(quals), quals)
    params: list[Any] = [_epoch(cut), *quals, _naive_utc(cut)]
    for t in types:
        params.extend([t] * (len(wins) + (1 if t in quals else 2)))
    return sql, params, names


def build_window_features(
    con: duckdb.DuckDBPyConnection,
    cut: datetime,
    qualifying_events: Sequence[str],
    *,
    event_types: Sequence[str],
    windows: Sequence[int] = DEFAULT_WINDOWS,
) -> FeatureFrame:
    """Compute the features of the module docstring from the ``events`` table of ``con`` at ``cut``.

    ``event_types`` are the types given per-type window counts (e.g. from :func:`discover_event_types` at
    training time, then stored with the model so scoring builds the same columns).
    """
    sql, params, names = window_features_query(cut, qualifying_events, event_types=event_types, windows=windows)
    try:
        table = con.sql(sql, params=params).to_arrow_table()
    except (duckdb.CatalogException, duckdb.BinderException) as exc:
        raise DataError(
            f"features: the DuckDB connection has no usable canonical 'events' table ({exc})",
            remedy="Load behaviour data (customer_id, occurred_at, event_type, value) before building features",
        ) from None
    ids = np.asarray(table.column("customer_id").to_numpy(zero_copy_only=False), dtype=object)
    values = np.empty((table.num_rows, len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        col = table.column(name)
        values[:, j] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64) if table.num_rows else []
    if not math.isfinite(float(np.nansum(values))) and table.num_rows:
        raise DataError("features: non-finite feature values", remedy="Check event values for infinities")
    return FeatureFrame(customer_id=ids, names=tuple(names), values=values, cut=_naive_utc(cut))
