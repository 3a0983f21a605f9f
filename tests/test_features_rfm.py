"""RFM features in DuckDB: hand-computed literal cases and the Fader–Hardie–Lee CDNOW calibration summary."""

from __future__ import annotations

import csv
import importlib.util
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import churnsync.features.rfm as rfm_module
from churnsync.errors import DataError
from churnsync.features import RFMFrame, build_rfm

CUT = datetime(2024, 1, 15)


def _datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.origin is not None, "lifetimes (a dev dependency) ships the CDNOW data"
    return Path(spec.origin).parent / "datasets"


def events_connection(rows: list[tuple[str | None, str, str, float | None]]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the canonical events table holding ``rows``."""
    con = duckdb.connect()
    con.execute("CREATE TABLE events (customer_id VARCHAR, occurred_at TIMESTAMP, event_type VARCHAR, value DOUBLE)")
    if rows:
        con.executemany("INSERT INTO events VALUES (?, CAST(? AS TIMESTAMP), ?, ?)", rows)
    return con


def cdnow_connection() -> duckdb.DuckDBPyConnection:
    """CDNOW_sample.txt (customer id, sample id, YYYYMMDD, quantity, amount) as purchase events."""
    raw = np.loadtxt(_datasets() / "CDNOW_sample.txt", dtype=str)
    dates = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 2]], dtype="datetime64[us]")
    table = pa.table(
        {
            # The sample's own id (second column) is the ID of cdnow_customers_summary.csv.
            "customer_id": pa.array([str(int(v)) for v in raw[:, 1]], type=pa.string()),
            "occurred_at": pa.array(dates, type=pa.timestamp("us")),
            "event_type": pa.array(["purchase"] * raw.shape[0]),
            "value": pa.array(raw[:, 4].astype(np.float64)),
        }
    )
    con = duckdb.connect()
    con.register("cdnow_arrow", table)
    con.execute("CREATE TABLE events AS SELECT * FROM cdnow_arrow")
    con.unregister("cdnow_arrow")
    return con


LITERAL_ROWS: list[tuple[str | None, str, str, float | None]] = [
    # a: purchase days Jan 1 (two events merged: 10 + 5), Jan 8 (30), Jan 10 (no value)
    ("a", "2024-01-01 10:00:00", "purchase", 10.0),
    ("a", "2024-01-01 18:30:00", "purchase", 5.0),
    ("a", "2024-01-08 09:00:00", "purchase", 30.0),
    ("a", "2024-01-10 23:59:59", "purchase", None),
    ("a", "2024-01-12 08:00:00", "session", None),  # not qualifying
    ("a", "2024-01-15 00:00:00", "purchase", 99.0),  # at the cut: excluded
    ("a", "2024-02-01 00:00:00", "purchase", 99.0),  # after the cut: excluded
    # b: one purchase on the last observed day
    ("b", "2024-01-14 23:59:59.999", "purchase", 7.0),
    # c: sessions only; d: purchases only after the cut
    ("c", "2024-01-03 12:00:00", "session", None),
    ("d", "2024-01-20 12:00:00", "purchase", 1.0),
    # e: first day without value, then 20 and 40 on two more days (one of them via an 'order' event)
    ("e", "2024-01-02 00:00:00", "purchase", None),
    ("e", "2024-01-05 13:00:00", "purchase", 20.0),
    ("e", "2024-01-05 14:00:00", "session", 1000.0),  # not qualifying: its value does not count
    ("e", "2024-01-09 06:00:00", "order", 40.0),
    (None, "2024-01-03 12:00:00", "purchase", 1.0),  # no customer: ignored
]


def as_dict(frame: RFMFrame) -> dict[str, tuple[int, float, float, float]]:
    return {
        str(c): (int(x), float(r), float(t), float(m))
        for c, x, r, t, m in zip(
            frame.customer_id, frame.frequency, frame.recency, frame.T, frame.monetary_value, strict=True
        )
    }


def test_literal_events_give_hand_computed_rfm() -> None:
    frame = build_rfm(events_connection(LITERAL_ROWS), CUT, ["purchase"])
    # Cut at midnight Jan 15: the last observed day is Jan 14.
    assert as_dict(frame) == {
        "a": (2, 9.0, 13.0, 30.0),  # days Jan 1, 8, 10; repeat days' values: 30 and (none)
        "b": (0, 0.0, 0.0, 0.0),
        "e": (1, 3.0, 12.0, 20.0),  # days Jan 2, 5 ('order' is not qualifying here)
    }
    assert frame.customer_id.dtype == object
    assert frame.frequency.dtype == np.int64 and frame.recency.dtype == np.float64
    assert frame.first_at.dtype == np.dtype("datetime64[us]")
    assert frame.first_at[0] == np.datetime64("2024-01-01T10:00:00")
    assert frame.last_at[0] == np.datetime64("2024-01-10T23:59:59")
    assert frame.last_at[1] == np.datetime64("2024-01-14T23:59:59.999")
    assert frame.cut == CUT and frame.time_unit_days == 1.0 and len(frame) == 3


def test_several_qualifying_types_and_weeks() -> None:
    frame = build_rfm(events_connection(LITERAL_ROWS), CUT, ["purchase", "ORDER"], time_unit_days=7.0)
    got = as_dict(frame)
    assert list(got) == ["a", "b", "e"]
    x, recency, age, monetary = got["e"]
    assert (x, monetary) == (2, 30.0)  # days Jan 2 (no value), 5 (20), 9 (40): mean of 20 and 40
    assert recency == pytest.approx(7 / 7) and age == pytest.approx(12 / 7)
    assert got["a"][1:3] == pytest.approx((9 / 7, 13 / 7))


def test_cut_inside_a_day_observes_that_day_and_aware_cuts_are_utc() -> None:
    con = events_connection(LITERAL_ROWS)
    noon = build_rfm(con, datetime(2024, 1, 15, 12, 0), ["purchase"])
    assert as_dict(noon)["a"] == (3, 14.0, 14.0, (30.0 + 99.0) / 2)  # Jan 15 00:00 now counts
    aware = build_rfm(con, datetime(2024, 1, 15, 13, 0, tzinfo=timezone(timedelta(hours=1))), ["purchase"])
    assert as_dict(aware) == as_dict(noon) and aware.cut == datetime(2024, 1, 15, 12, 0)
    utc = build_rfm(con, CUT.replace(tzinfo=UTC), ["purchase"])
    assert as_dict(utc) == as_dict(build_rfm(con, CUT, ["purchase"]))


def test_no_leakage_events_at_or_after_the_cut_change_nothing() -> None:
    before = build_rfm(events_connection(LITERAL_ROWS), CUT, ["purchase"])
    later: list[tuple[str | None, str, str, float | None]] = [
        (c, f"2024-01-{d:02d} 00:00:00", "purchase", 500.0) for c in ("a", "b", "e", "z") for d in (15, 16)
    ]
    after = build_rfm(events_connection(LITERAL_ROWS + later), CUT, ["purchase"])
    assert as_dict(after) == as_dict(before)


def test_empty_and_odd_inputs() -> None:
    empty = build_rfm(events_connection([]), CUT, ["purchase"])
    assert len(empty) == 0 and empty.frequency.dtype == np.int64
    # Event types are bound parameters: a quote in one is data, not SQL.
    assert len(build_rfm(events_connection(LITERAL_ROWS), CUT, ["purchase' OR '1'='1"])) == 0
    assert len(build_rfm(events_connection(LITERAL_ROWS), CUT, "purchase")) == 3


def test_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match="no qualifying event types"):
        build_rfm(events_connection([]), CUT, [])
    with pytest.raises(DataError, match="time_unit_days"):
        build_rfm(events_connection([]), CUT, ["purchase"], time_unit_days=0)
    with pytest.raises(DataError, match="no usable 'events' table"):
        build_rfm(duckdb.connect(), CUT, ["purchase"])
    con = duckdb.connect()
    con.execute("CREATE TABLE events (customer VARCHAR, occurred_at TIMESTAMP)")
    with pytest.raises(DataError, match="canonical columns"):
        build_rfm(con, CUT, ["purchase"])


def test_sql_uses_epoch_arithmetic_not_date_diff() -> None:
    # date_diff transpiles to Spark's DATEDIFF with other semantics (stack notes): keep it out.
    sql = rfm_module._RFM_SQL.lower()
    assert "date_diff" not in sql and "datediff" not in sql and "epoch(" in sql


def test_cdnow_calibration_matches_the_published_summary() -> None:
    """FHL split: cut 1997-10-01 (weeks 1–39 observed), weeks, same-day purchases merged.

    cdnow_customers_summary.csv measures T to 1997-09-30, the last observed day (38.86 weeks for a
    1 January buyer), and rounds recency and T to 2 decimals; its companion file's zbar is the mean
    amount per repeat purchase day in the calibration period.
    """
    frame = build_rfm(cdnow_connection(), datetime(1997, 10, 1), ["purchase"], time_unit_days=7.0)
    assert len(frame) == 2357
    ids = frame.customer_id.astype(np.int64)
    order = np.argsort(ids)
    with (_datasets() / "cdnow_customers_summary.csv").open() as f:
        summary = np.array([[float(v) for v in row] for row in list(csv.reader(f))[1:]])
    with (_datasets() / "cdnow_customers_summary_with_transactions.csv").open() as f:
        zbar = np.array([[float(v) for v in row] for row in list(csv.reader(f))[1:]])
    assert np.array_equal(ids[order], summary[:, 0].astype(np.int64))
    assert np.array_equal(frame.frequency[order], summary[:, 1].astype(np.int64))
    # Rounded to 2 decimals as the file is, recency and T are identical for all 2,357 customers.
    assert np.array_equal(np.round(frame.recency[order], 2), summary[:, 2])
    assert np.array_equal(np.round(frame.T[order], 2), summary[:, 3])
    assert np.array_equal(zbar[:, 1:4], summary[:, 1:4])
    # zbar is rounded half-up from decimal amounts; binary floats land on either side of .xx5
    assert np.max(np.abs(frame.monetary_value[order] - zbar[:, 4])) <= 0.005 + 1e-9
    assert int(frame.frequency.sum()) == 2457  # repeat purchase days in weeks 1-39
