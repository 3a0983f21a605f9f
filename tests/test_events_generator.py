"""generate_sample: determinism, schema, a plausible BG/NBD world, truth consistent with the events, readability."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from churnsync.config import DataSettings
from churnsync.errors import ConfigError
from churnsync.events import EVENTS_TABLE, GenerateResult, LoadResult, generate_sample, load_events
from churnsync.events.generator import WEEKDAY_WEIGHTS

CUSTOMERS = 4_000
START = date(2025, 1, 1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    out = tmp_path_factory.mktemp("sample")
    return generate_sample(out, customers=CUSTOMERS, days=365, seed=11, horizons=(30, 60))


@pytest.fixture(scope="module")
def loaded(sample: GenerateResult) -> Any:
    """Events and truth as DuckDB tables (events through the real reader), with the reader's result."""
    connection = duckdb.connect()
    data = DataSettings(paths=[str(sample.events_path)], rejects_path=str(sample.events_path.parent / "rej.csv"))
    result = load_events(connection, data, now=datetime.combine(sample.cut, datetime.min.time(), tzinfo=UTC))
    connection.execute(f"CREATE TABLE truth AS SELECT * FROM read_csv('{sample.truth_path}')")
    connection.execute(
        """
        CREATE TABLE per_customer AS
        SELECT t.*,
               coalesce(e.sessions, 0) AS sessions, coalesce(e.opens, 0) AS opens,
               coalesce(e.purchases, 0) AS purchases, e.last_purchase
        FROM truth t LEFT JOIN (
            SELECT customer_id,
                   count(*) FILTER (WHERE event_type = 'session') AS sessions,
                   count(*) FILTER (WHERE event_type = 'email_open') AS opens,
                   count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                   max(occurred_at) FILTER (WHERE event_type = 'purchase') AS last_purchase
            FROM events GROUP BY customer_id
        ) e USING (customer_id)
        """
    )
    yield connection, result
    connection.close()


@pytest.fixture(scope="module")
def con(loaded: tuple[Any, LoadResult]) -> Any:
    return loaded[0]


def scalar(con: Any, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


def test_result_describes_what_was_written(sample: GenerateResult) -> None:
    assert sample.events_path.name == "events.csv" and sample.truth_path.name == "truth.csv"
    assert (sample.start, sample.cut, sample.end) == (START, date(2026, 1, 1), date(2026, 4, 1))
    assert sample.customers == CUSTOMERS
    with sample.events_path.open() as fh:
        assert sum(1 for _ in fh) == sample.events + 1
    # Realistic volume: a handful to a few dozen events per customer.
    assert 8 < sample.events / CUSTOMERS < 50


def test_events_schema_and_format(sample: GenerateResult) -> None:
    lines = sample.events_path.read_text().splitlines()
    assert lines[0] == "customer_id,occurred_at,event_type,value"
    customer, occurred, kind, value = lines[1].split(",")
    assert customer == "c_0000001"
    assert datetime.strptime(occurred, "%Y-%m-%dT%H:%M:%SZ")
    assert kind == "purchase" and float(value) > 0  # every customer starts with a purchase
    table = pa_csv.read_csv(sample.events_path)
    assert set(table.column("event_type").unique().to_pylist()) == {"purchase", "session", "email_open"}


def test_truth_schema(sample: GenerateResult) -> None:
    truth = pa_csv.read_csv(sample.truth_path)
    assert truth.column_names == [
        "customer_id",
        "lambda",
        "p",
        "mean_spend",
        "first_purchase_at",
        "purchases_before_cut",
        "alive_at_cut",
        "dropout_at",
        "purchases_in_holdout",
        "purchases_next_30d",
        "true_churn_probability_30d",
        "purchases_next_60d",
        "true_churn_probability_60d",
    ]
    assert truth.num_rows == CUSTOMERS
    assert truth.column("customer_id")[-1].as_py() == f"c_{CUSTOMERS:07d}"


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    a = generate_sample(tmp_path / "a", customers=300, days=120, seed=5)
    b = generate_sample(tmp_path / "b", customers=300, days=120, seed=5)
    c = generate_sample(tmp_path / "c", customers=300, days=120, seed=6)
    assert a.events_path.read_bytes() == b.events_path.read_bytes()
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    assert a.events_path.read_bytes() != c.events_path.read_bytes()


def test_parquet_holds_the_same_world_as_csv(tmp_path: Path) -> None:
    as_csv = generate_sample(tmp_path / "c", customers=500, days=200, seed=3, fmt="csv")
    as_pq = generate_sample(tmp_path / "p", customers=500, days=200, seed=3, fmt="parquet")
    assert as_pq.events_path.name == "events.parquet" and as_pq.truth_path.name == "truth.parquet"
    assert as_pq.events == as_csv.events
    now = datetime(2030, 1, 1, tzinfo=UTC)
    tables = []
    for result in (as_csv, as_pq):
        con = duckdb.connect()
        data = DataSettings(paths=[str(result.events_path)], rejects_path=str(tmp_path / "rej.csv"))
        loaded = load_events(con, data, now=now)
        assert loaded.rows_rejected == 0 and loaded.rows_loaded == result.events
        tables.append(con.execute(f"SELECT * FROM {EVENTS_TABLE} ORDER BY ALL").fetchall())
        con.close()
    assert tables[0] == tables[1]
    truth_pq = pq.read_table(as_pq.truth_path)
    truth_csv = pa_csv.read_csv(as_csv.truth_path)
    assert truth_pq.column("purchases_in_holdout").equals(truth_csv.column("purchases_in_holdout"))
    assert np.allclose(truth_pq.column("lambda").to_numpy(), truth_csv.column("lambda").to_numpy())


def test_the_reader_loads_the_sample_without_rejects(sample: GenerateResult, loaded: tuple[Any, LoadResult]) -> None:
    con, result = loaded
    assert result.rows_read == sample.events
    assert result.rows_rejected == 0 and result.duplicates == 0
    assert result.rows_loaded == sample.events
    first, last = con.execute("SELECT min(occurred_at), max(occurred_at) FROM events").fetchone()
    assert first >= datetime(2025, 1, 1) and last < datetime(2026, 1, 1)


def test_heterogeneous_world(con: Any) -> None:
    one_time = scalar(con, "SELECT avg(CASE WHEN purchases = 1 THEN 1.0 ELSE 0 END) FROM per_customer")
    assert 0.30 <= one_time <= 0.70
    alive = scalar(con, "SELECT avg(CASE WHEN alive_at_cut THEN 1.0 ELSE 0 END) FROM truth")
    assert 0.15 <= alive <= 0.85
    # Rates spread over orders of magnitude, mean inter-purchase time of weeks to months.
    lo, mean, hi = con.execute(
        'SELECT quantile_cont("lambda", 0.1), avg("lambda"), quantile_cont("lambda", 0.9) FROM truth'
    ).fetchone()
    assert 7 <= 1 / mean <= 120 and hi / lo > 10
    # Acquisition spread over the first two thirds of the period.
    first, last = con.execute("SELECT min(first_purchase_at), max(first_purchase_at) FROM truth").fetchone()
    assert first < date(2025, 1, 15) and date(2025, 8, 1) < last <= date(2025, 9, 1)
    assert scalar(con, "SELECT min(purchases) FROM per_customer") >= 1


def test_sessions_follow_purchases_and_fade_after_dropout(con: Any) -> None:
    assert scalar(con, "SELECT corr(sessions, purchases) FROM per_customer") > 0.4
    assert (
        scalar(con, "SELECT corr(sessions / (date '2026-01-01' - first_purchase_at), \"lambda\") FROM per_customer")
        > 0.3
    )
    # Sessions long after dropout are rare: fading with a time constant of weeks.
    late, total = con.execute(
        """
        SELECT count(*) FILTER (WHERE e.occurred_at > t.dropout_at + INTERVAL 120 DAY), count(*)
        FROM events e JOIN truth t USING (customer_id)
        WHERE e.event_type = 'session' AND t.dropout_at IS NOT NULL AND t.dropout_at < DATE '2025-06-01'
          AND e.occurred_at > t.dropout_at
        """
    ).fetchone()
    assert total > 0 and late / total < 0.01
    # Email opens go on after dropout, at a lower rate than before.
    before, after = con.execute(
        """
        SELECT sum(opens_before) / sum(days_before), sum(opens_after) / sum(days_after)
        FROM (
            SELECT t.customer_id,
                   count(e.occurred_at) FILTER (WHERE e.occurred_at < t.dropout_at) AS opens_before,
                   count(e.occurred_at) FILTER (WHERE e.occurred_at >= t.dropout_at + INTERVAL 1 DAY) AS opens_after,
                   any_value(t.dropout_at - t.first_purchase_at) AS days_before,
                   any_value(DATE '2026-01-01' - t.dropout_at - 1) AS days_after
            FROM truth t LEFT JOIN events e ON e.customer_id = t.customer_id AND e.event_type = 'email_open'
            WHERE t.dropout_at IS NOT NULL AND t.dropout_at < DATE '2025-10-01'
              AND t.dropout_at > t.first_purchase_at + 30
            GROUP BY t.customer_id
        )
        """
    ).fetchone()
    assert 0 < after < before * 0.6


def test_weekends_are_busier(con: Any) -> None:
    per_day = dict(con.execute("SELECT isodow(occurred_at), count(*) FROM events GROUP BY ALL").fetchall())
    weekday = sum(per_day[d] for d in range(1, 6)) / 5
    weekend = (per_day[6] + per_day[7]) / 2
    expected = (sum(WEEKDAY_WEIGHTS[5:]) / 2) / (sum(WEEKDAY_WEIGHTS[:5]) / 5)
    assert weekend / weekday == pytest.approx(expected, rel=0.05)


def test_truth_matches_the_events(con: Any) -> None:
    mismatched = scalar(con, "SELECT count(*) FROM per_customer WHERE purchases <> purchases_before_cut")
    assert mismatched == 0
    # No purchase after dropout: a dropped customer's last purchase is on the dropout date.
    after_dropout = scalar(
        con,
        """
        SELECT count(*) FROM per_customer
        WHERE dropout_at < DATE '2026-01-01' AND last_purchase::DATE <> dropout_at
        """,
    )
    assert after_dropout == 0
    assert (
        scalar(
            con,
            "SELECT count(*) FROM truth WHERE alive_at_cut <> (dropout_at IS NULL OR dropout_at >= DATE '2026-01-01')",
        )
        == 0
    )
    dead = con.execute(
        """
        SELECT count(*), max(purchases_in_holdout), min(true_churn_probability_30d)
        FROM truth WHERE NOT alive_at_cut
        """
    ).fetchone()
    assert dead[0] > 0 and dead[1] == 0 and dead[2] == 1.0
    assert scalar(con, "SELECT count(*) FROM truth WHERE purchases_next_30d > purchases_next_60d") == 0
    assert scalar(con, "SELECT count(*) FROM truth WHERE purchases_next_60d > purchases_in_holdout") == 0
    # Alive customers: exp(-lambda * weekday-weighted exposure); 30 days after a Thursday cut.
    weights = np.asarray(WEEKDAY_WEIGHTS) / np.mean(WEEKDAY_WEIGHTS)
    exposure = sum(weights[(date(2026, 1, 1).weekday() + d) % 7] for d in range(30))
    lam, prob = con.execute(
        'SELECT "lambda", true_churn_probability_30d FROM truth WHERE alive_at_cut LIMIT 1'
    ).fetchone()
    assert prob == pytest.approx(math.exp(-lam * exposure))
    assert exposure != pytest.approx(30.0) and 28 < exposure < 32
    # 60 days over ~8.6 weeks: exposure close to the plain length.
    lam60, prob60 = con.execute(
        'SELECT "lambda", true_churn_probability_60d FROM truth WHERE alive_at_cut LIMIT 1'
    ).fetchone()
    assert -math.log(prob60) / lam60 == pytest.approx(60, rel=0.02)


def test_true_churn_probability_is_calibrated(con: Any) -> None:
    """The truth is the truth: the predicted share without a purchase matches the simulated holdout."""
    for h in (30, 60):
        predicted, observed = con.execute(
            f"""
            SELECT avg(true_churn_probability_{h}d), avg(CASE WHEN purchases_next_{h}d = 0 THEN 1.0 ELSE 0 END)
            FROM truth WHERE alive_at_cut
            """
        ).fetchone()
        assert predicted == pytest.approx(observed, abs=0.03)


def test_cut_and_holdout_follow_the_arguments(tmp_path: Path) -> None:
    result = generate_sample(tmp_path, customers=200, days=60, seed=2, start=date(2024, 2, 28), holdout_days=30)
    assert (result.cut, result.end) == (date(2024, 4, 28), date(2024, 5, 28))
    con = duckdb.connect()
    first, last = con.execute(
        "SELECT min(occurred_at::TIMESTAMPTZ), max(occurred_at::TIMESTAMPTZ) FROM read_csv(?, all_varchar=true)",
        [str(result.events_path)],
    ).fetchone()
    assert first >= datetime(2024, 2, 28, tzinfo=UTC) and last < datetime(2024, 4, 28, tzinfo=UTC)
    con.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"customers": 0}, "customers"),
        ({"days": 0}, "days"),
        ({"horizons": (120,)}, "horizon 120"),
        ({"horizons": ()}, "horizons"),
        ({"fmt": "json"}, "format"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"customers": 10, "days": 30, "seed": 1} | kwargs
    with pytest.raises(ConfigError, match=message):
        generate_sample(tmp_path, **arguments)


def test_start_weekday_shifts_the_weekly_pattern(tmp_path: Path) -> None:
    """Weekday weights follow the calendar, not the offset from the start."""
    result = generate_sample(tmp_path, customers=1_500, days=140, seed=4, start=date(2025, 1, 4))  # a Saturday
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    per_day = dict(
        con.execute(
            f"SELECT isodow(occurred_at::TIMESTAMP), count(*) FROM read_csv('{result.events_path}') GROUP BY ALL"
        ).fetchall()
    )
    con.close()
    assert per_day[6] > per_day[2] * 1.15
