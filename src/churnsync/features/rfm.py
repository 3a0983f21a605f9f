"""Recency–frequency–monetary (RFM) summaries at a cut date, computed by DuckDB in one SQL query.

Conventions (those of Fader, Hardie & Lee 2005 and of ``lifetimes``' ``summary_data_from_transaction_data``):

- Time is discretised to UTC calendar days and every qualifying event on the same day is merged into one
  purchase day. Day index = ``floor(epoch(occurred_at) / 86400)``.
- Only events strictly before ``cut`` count. The last observed day is the day of the last instant before
  ``cut``: the day before ``cut`` when ``cut`` is a midnight, else the day of ``cut`` itself.
- ``frequency`` (x) = purchase days − 1 (repeat purchase days); ``recency`` (t_x) = last − first purchase day;
  ``T`` = last observed day − first purchase day; both divided by ``time_unit_days``. So ``recency <= T``,
  with equality for a customer who bought on the last observed day.
- ``monetary_value`` = mean over repeat purchase days of the day's summed ``value`` (days whose events all
  lack a value are left out of the mean); 0 when there is no repeat day with a value.

Day differences use epoch arithmetic rather than ``date_diff`` so that the query transpiles to Spark SQL
with the same meaning (``date_diff``'s Spark counterpart counts boundaries differently).

Example::

    >>> import duckdb
    >>> from datetime import datetime
    >>> con = duckdb.connect()
    >>> _ = con.execute("CREATE TABLE events (customer_id VARCHAR, occurred_at TIMESTAMP, "
    ...                 "event_type VARCHAR, value DOUBLE)")
    >>> _ = con.execute("INSERT INTO events VALUES ('a', '2024-01-01 10:00', 'purchase', 10), "
    ...                 "('a', '2024-01-08 09:00', 'purchase', 30)")
    >>> rfm = build_rfm(con, datetime(2024, 1, 15), ["purchase"])
    >>> int(rfm.frequency[0]), float(rfm.recency[0]), float(rfm.T[0]), float(rfm.monetary_value[0])
    (1, 7.0, 13.0, 30.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np

from churnsync.errors import DataError

__all__ = ["RFMFrame", "build_rfm", "rfm_query"]

_SECONDS_PER_DAY = 86400

# One pass over the events: first merge events into (customer, day) rows, then aggregate per customer.
# {types} is a list of "?" placeholders only; every value is bound as a parameter.
_RFM_SQL = """
WITH qualifying AS (
    SELECT
        customer_id,
        CAST(floor(epoch(occurred_at) / 86400) AS BIGINT) AS day,
        occurred_at,
        value
    FROM events
    WHERE occurred_at < ? AND event_type IN ({types}) AND customer_id IS NOT NULL
),
days AS (
    SELECT customer_id, day, min(occurred_at) AS first_at, max(occurred_at) AS last_at, sum(value) AS day_value
    FROM qualifying
    GROUP BY customer_id, day
),
customers AS (
    SELECT
        customer_id,
        count(*) - 1 AS frequency,
        min(day) AS first_day,
        max(day) AS last_day,
        min(first_at) AS first_at,
        max(last_at) AS last_at,
        coalesce(sum(day_value), 0.0) AS value_sum,
        count(day_value) AS value_days,
        -- arg_min skips NULL arguments, so a first day without a value is carried as NaN
        arg_min(coalesce(day_value, CAST('NaN' AS DOUBLE)), day) AS first_day_value
    FROM days
    GROUP BY customer_id
)
SELECT
    customer_id,
    CAST(frequency AS BIGINT) AS frequency,
    CAST(last_day - first_day AS DOUBLE) / ? AS recency,
    CAST(? - first_day AS DOUBLE) / ? AS T,
    CASE
        WHEN isnan(first_day_value) AND value_days > 0 THEN value_sum / value_days
        WHEN NOT isnan(first_day_value) AND value_days > 1 THEN (value_sum - first_day_value) / (value_days - 1)
        ELSE 0.0
    END AS monetary_value,
    first_at,
    last_at
FROM customers
ORDER BY customer_id
"""


@dataclass(frozen=True)
class RFMFrame:
    """Per-customer RFM summary at a cut date, as aligned numpy arrays sorted by ``customer_id``.

    ``time_unit_days`` is the length of one time unit of ``recency`` and ``T`` (7.0 for weeks).
    """

    customer_id: np.ndarray
    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    monetary_value: np.ndarray
    first_at: np.ndarray
    last_at: np.ndarray
    cut: datetime
    time_unit_days: float = 1.0

    def __len__(self) -> int:
        return int(self.customer_id.shape[0])


def _naive_utc(moment: datetime) -> datetime:
    """``moment`` as a naive UTC datetime (the events table stores naive UTC)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _last_observed_day(cut: datetime) -> int:
    """Day index of the last instant strictly before ``cut``."""
    seconds = (cut - datetime(1970, 1, 1)).total_seconds()
    return math.ceil(seconds / _SECONDS_PER_DAY) - 1


def rfm_query(cut: datetime, qualifying_events: Sequence[str], *, time_unit_days: float = 1.0) -> tuple[str, list[Any]]:
    """The RFM query over a table ``events`` in DuckDB's dialect (``?`` placeholders) and its parameters.

    The one definition of these features: :func:`build_rfm` runs it on DuckDB, and the Spark engine
    (:mod:`churnsync.engines.spark`) transpiles the same text to Spark SQL.
    """
    if isinstance(qualifying_events, str):
        qualifying_events = [qualifying_events]
    types = sorted({str(t).lower() for t in qualifying_events})
    if not types:
        raise DataError(
            "RFM features: no qualifying event types were given",
            remedy='Set prediction.qualifying_events, e.g. ["purchase"]',
        )
    if not (math.isfinite(time_unit_days) and time_unit_days > 0):
        raise DataError(
            f"RFM features: time_unit_days must be a positive number (got {time_unit_days!r})",
            remedy="Use 1.0 for days or 7.0 for weeks",
        )
    naive_cut = _naive_utc(cut)
    last_day = _last_observed_day(naive_cut)
    sql = _RFM_SQL.format(types=", ".join("?" for _ in types))
    params: list[Any] = [naive_cut, *types, time_unit_days, last_day, time_unit_days]
    return sql, params


def build_rfm(
    con: duckdb.DuckDBPyConnection,
    cut: datetime,
    qualifying_events: Sequence[str],
    *,
    time_unit_days: float = 1.0,
) -> RFMFrame:
    """Summarise the ``events`` table of ``con`` into RFM features from events strictly before ``cut``.

    Only customers with at least one event whose ``event_type`` is in ``qualifying_events`` before ``cut``
    appear. A time-zone-aware ``cut`` is converted to UTC. See the module docstring for the definitions.
    """
    sql, params = rfm_query(cut, qualifying_events, time_unit_days=time_unit_days)
    naive_cut = _naive_utc(cut)
    try:
        table = con.sql(sql, params=params).to_arrow_table()
    except duckdb.CatalogException as exc:
        raise DataError(
            f"RFM features: the DuckDB connection has no usable 'events' table ({exc})",
            remedy="Load behaviour data into the canonical events table before building features",
        ) from None
    except duckdb.BinderException as exc:
        raise DataError(
            f"RFM features: the 'events' table does not have the canonical columns ({exc})",
            remedy="The table needs customer_id, occurred_at (TIMESTAMP), event_type and value",
        ) from None

    def column(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy())

    customer_id = np.asarray(table.column("customer_id").to_numpy(zero_copy_only=False), dtype=object)
    return RFMFrame(
        customer_id=customer_id,
        frequency=column("frequency").astype(np.int64, copy=False),
        recency=column("recency").astype(np.float64, copy=False),
        T=column("T").astype(np.float64, copy=False),
        monetary_value=column("monetary_value").astype(np.float64, copy=False),
        first_at=column("first_at").astype("datetime64[us]", copy=False),
        last_at=column("last_at").astype("datetime64[us]", copy=False),
        cut=naive_cut,
        time_unit_days=float(time_unit_days),
    )
