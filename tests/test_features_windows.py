"""Window features in SQL: hand-computed values and the no-leakage rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import duckdb
import numpy as np
import pytest

from churnsync.errors import DataError
from churnsync.features.windows import build_window_features, discover_event_types, feature_label

CUT = datetime(2024, 4, 1)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute("CREATE TABLE events (customer_id VARCHAR, occurred_at TIMESTAMP, event_type VARCHAR, value DOUBLE)")
    c.execute(
        """INSERT INTO events VALUES
        ('a', '2024-01-01 12:00', 'purchase', 10), ('a', '2024-03-02 12:00', 'purchase', 20),
        ('a', '2024-03-02 13:00', 'purchase', 5), ('a', '2024-03-22 12:00', 'purchase', NULL),
        ('a', '2024-03-30 08:00', 'session', NULL), ('a', '2023-12-01 00:00', 'O''Reilly open', NULL),
        ('b', '2024-03-31 12:00', 'purchase', 7), ('c', '2024-03-31 12:00', 'session', NULL)"""
    )
    yield c
    c.close()


def features(con: duckdb.DuckDBPyConnection, cut: datetime = CUT) -> dict[str, dict[str, float]]:
    f = build_window_features(con, cut, ["purchase"], event_types=["purchase", "session", "O'Reilly open"])
    rows = zip(f.customer_id, f.values, strict=True)
    return {str(cid): dict(zip(f.names, map(float, row), strict=True)) for cid, row in rows}


def test_hand_computed_features(con: duckdb.DuckDBPyConnection) -> None:
    got = features(con)
    assert set(got) == {"a", "b"}  # c never purchased: not in the population
    a = got["a"]
    assert a["days_since_last_purchase"] == pytest.approx(9.5)  # 2024-03-22 12:00 → 04-01 00:00
    assert a["days_since_last_event"] == pytest.approx(2 - 8 / 24)
    assert a["purchase_days"] == 3  # two purchases on 03-02 merge into one day
    assert a["purchase_days_30d"] == 2 and a["purchase_days_7d"] == 0 and a["purchase_days_90d"] == 2
    assert a["purchase_days_180d"] == 3  # 2024-01-01 12:00 is 90.5 days before the cut
    assert a["session_events_7d"] == 1 and a["purchase_events_30d"] == 3
    assert a["o_reilly_open_events_180d"] == 1 and a["o_reilly_open_events_90d"] == 0
    assert a["purchase_trend_30_90d"] == pytest.approx(2 / 30 - 0 / 60)
    assert a["purchase_trend_90_180d"] == pytest.approx(2 / 90 - 1 / 90)
    gaps = np.array([61.0, 20.0])  # day gaps between distinct purchase days
    assert a["purchase_gap_mean_days"] == pytest.approx(gaps.mean())
    assert a["purchase_gap_std_days"] == pytest.approx(gaps.std())
    assert a["purchase_gap_max_days"] == 61
    assert a["overdue_ratio"] == pytest.approx(9.5 / gaps.mean())
    assert a["tenure_days"] == pytest.approx(122)  # first event of any type: 2023-12-01
    assert a["purchase_tenure_days"] == pytest.approx(90.5)
    assert a["spend_total"] == 35 and a["spend_mean"] == pytest.approx(35 / 2) and a["spend_max"] == 25
    b = got["b"]
    assert b["purchase_days"] == 1 and np.isnan(b["purchase_gap_mean_days"]) and np.isnan(b["overdue_ratio"])


def test_only_events_strictly_before_the_cut_count(con: duckdb.DuckDBPyConnection) -> None:
    before = features(con)
    # Events exactly at the cut and after it must change nothing.
    con.execute(
        """INSERT INTO events VALUES ('a', '2024-04-01 00:00', 'purchase', 999), ('a', '2024-05-01', 'session', NULL),
        ('b', '2024-04-01 00:00:00.000001', 'purchase', 1), ('d', '2024-04-01 00:00', 'purchase', 3)"""
    )
    assert _same(features(con), before)
    assert "d" not in features(con)


def _same(x: dict[str, dict[str, float]], y: dict[str, dict[str, float]]) -> bool:
    return x.keys() == y.keys() and all(
        np.allclose(list(x[k].values()), list(y[k].values()), equal_nan=True) for k in x
    )


def test_event_types_discovery_and_names(con: duckdb.DuckDBPyConnection) -> None:
    assert discover_event_types(con, CUT, limit=2) == ["purchase", "session"]
    assert feature_label("O'Reilly open") == "o_reilly_open"
    with pytest.raises(DataError, match="collide"):
        build_window_features(con, CUT, ["purchase"], event_types=["a-b", "a_b"])
    with pytest.raises(DataError, match="windows"):
        build_window_features(con, CUT, ["purchase"], event_types=[], windows=[0])
    empty = build_window_features(con, datetime(2020, 1, 1), ["purchase"], event_types=["purchase"])
    assert len(empty) == 0 and empty.values.shape[1] == len(empty.names)
