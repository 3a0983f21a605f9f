"""The Spark engine against the DuckDB engine on the same data: features, loads and scores must agree, and
``churnsync run`` with ``engine = "spark"`` works end to end on SQLite and PostgreSQL and syncs to the emulator.

One local Spark session (``local[2]``) serves the whole module: starting one costs 15-30 s.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from churnsync.config import Settings, SparkSettings, settings_from_mapping
from churnsync.engines.spark import predict_on_spark, read_events, spark_features, spark_session
from churnsync.events.generator import GenerateResult, generate_sample
from churnsync.events.reader import load_events
from churnsync.features.rfm import build_rfm
from churnsync.features.windows import DEFAULT_WINDOWS, build_window_features, discover_event_types
from churnsync.models.registry import ModelRegistry
from churnsync.models.scoring import predict_attributes, train_churn_model
from churnsync.pipeline import cut_for
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, serve_in_thread

# PySpark warns that it does not fully support pandas 3 (it converts through Arrow here, not pandas).
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

NOW = datetime(2026, 1, 1, tzinfo=UTC)
AS_OF = date(2025, 10, 20)
CUT = cut_for(AS_OF)
KEY = "spark-e2e-key-1234567890"
RTOL = ATOL = 1e-9
SPARK_CONF = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "1g",
}

# Rows the generator never writes: fractions of seconds, offsets, NULL values, the cut's edges, and every reject.
EXTRA_ROWS = [
    ("x_frac", "2025-06-01T10:00:00.250Z", "purchase", "10"),
    ("x_frac", "2025-06-01T23:30:00.999999+02:00", "purchase", "5.5"),
    ("x_frac", "2025-09-30T00:00:00.000001Z", "purchase", ""),
    ("x_frac", "2025-10-20T23:59:59.999999Z", "session", ""),
    ("x_frac", "2025-10-21T00:00:00Z", "purchase", "99"),  # at the cut: after as_of
    ("x_null", "2025-03-03", "purchase", ""),
    ("x_null", "2025-05-05 12:00:00", "purchase", ""),
    ("x_null", "2025-05-05 12:00:00", "purchase", ""),  # exact duplicate
    ("x_null", "2025-10-01T08:00:00Z", " Email_Open ", ""),
    ("", "2025-05-05", "purchase", "1"),  # empty_customer_id
    ("x" * 256, "2025-05-05", "purchase", "1"),  # bad_customer_id: longer than Braze's 255 characters
    ("x_bad", "not-a-date", "purchase", "1"),  # bad_timestamp
    ("x_bad", "2027-01-01", "purchase", "1"),  # future_timestamp
    ("x_bad", "2025-05-05", " ", "1"),  # empty_event_type
    ("x_bad", "2025-05-05", "purchase", "abc"),  # bad_value
    ("x_bad", "2025-05-05", "purchase", "-5"),  # negative_value
]


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    with spark_session(SparkSettings(master="local[2]", app_name="churnsync-tests", conf=SPARK_CONF)) as session:
        yield session


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> GenerateResult:
    folder = tmp_path_factory.mktemp("spark-sample")
    result = generate_sample(folder, customers=500, days=300, seed=8)
    with (folder / "events_extra.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "occurred_at", "event_type", "value"])
        writer.writerows(EXTRA_ROWS)
    return result


@pytest.fixture(scope="module")
def spark_events(spark: Any, sample: GenerateResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The sample read once by the Spark engine: (settings, events DataFrame, LoadResult)."""
    settings = settings_for(sample, tmp_path_factory.mktemp("spark-read"))
    events, load = read_events(spark, settings.data, now=NOW, cut=CUT)
    yield settings, events, load
    events.unpersist()


def settings_for(sample: GenerateResult, tmp_path: Path, **extra: Any) -> Settings:
    raw: dict[str, Any] = {
        "engine": "spark",
        "data": {"paths": [str(sample.events_path.parent / "events*.csv")], "rejects_path": str(tmp_path / "rej.csv")},
        "model": {"registry_path": str(tmp_path / "models"), "training_cuts": 4},
        "spark": {"master": "local[2]", "conf": SPARK_CONF},
    }
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return settings_from_mapping(raw)


def duckdb_events(settings: Settings) -> tuple[duckdb.DuckDBPyConnection, Any]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    load = load_events(con, settings.data, now=NOW, as_of=CUT - timedelta(microseconds=1))
    return con, load


def assert_columns_close(name: str, got: np.ndarray, want: np.ndarray) -> None:
    close = np.isclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True)
    assert close.all(), f"{name}: {int((~close).sum())} differ, e.g. spark {got[~close][:3]} duckdb {want[~close][:3]}"


def test_spark_load_buckets_equal_the_duckdb_reader(spark_events: Any) -> None:
    settings, events, got = spark_events
    con, want = duckdb_events(settings)
    try:
        for field in ("rows_read", "rows_loaded", "rows_rejected", "rows_after_as_of", "duplicates", "reject_reasons"):
            assert getattr(got, field) == getattr(want, field), field
        reasons = ["empty_customer_id", "bad_customer_id", "bad_timestamp", "future_timestamp", "empty_event_type"]
        reasons.append("bad_value")
        assert got.reject_reasons == dict.fromkeys([*reasons, "negative_value"], 1)
        with Path(settings.data.rejects_path).open(encoding="utf-8") as f:
            rejects = list(csv.DictReader(f))
        assert sorted(r["reason"] for r in rejects) == sorted(want.reject_reasons)
        assert {r["value"] for r in rejects if r["reason"] == "bad_value"} == {"abc"}
        # The very same events, with their times to the microsecond.
        mine = events.toArrow().sort_by([("customer_id", "ascending"), ("occurred_at", "ascending")])
        theirs = con.sql("SELECT * FROM events ORDER BY customer_id, occurred_at, event_type, value").to_arrow_table()
        assert mine.column("customer_id").to_pylist() == theirs.column("customer_id").to_pylist()
        stamps = mine.column("occurred_at").cast(pa.timestamp("us")).to_pylist()
        assert stamps == theirs.column("occurred_at").to_pylist()
    finally:
        con.close()


def test_features_are_equal_on_both_engines(spark: Any, spark_events: Any) -> None:
    settings, events, _ = spark_events
    con, _ = duckdb_events(settings)
    cut = CUT.replace(tzinfo=None)
    try:
        types = discover_event_types(con, cut)
        assert "email_open" in types and len(types) >= 3
        events.createOrReplaceTempView("events")
        for qualifying in (["purchase"], ["purchase", "session"]):
            want = build_window_features(con, cut, qualifying, event_types=types)
            rfm = build_rfm(con, cut, qualifying, time_unit_days=7.0)
            frame, names = spark_features(spark, cut, qualifying, event_types=types, windows=DEFAULT_WINDOWS)
            got = frame.toArrow().sort_by("customer_id")
            assert names == list(want.names)
            assert got.column("customer_id").to_pylist() == list(want.customer_id)
            assert {"x_frac", "x_null"} <= set(want.customer_id)
            for j, name in enumerate(names):
                column = got.column(name).to_numpy(zero_copy_only=False).astype(float)
                assert_columns_close(name, column, want.values[:, j])
            for name in ("frequency", "recency", "T", "monetary_value"):
                column = got.column(f"rfm_{name}").to_numpy(zero_copy_only=False).astype(float)
                assert_columns_close(name, column, getattr(rfm, name).astype(float))
            first = got.column("rfm_first_at").cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)
            assert np.array_equal(first.astype("datetime64[us]"), rfm.first_at)
            # Off by a day (date_diff) or by a fraction of a second (UNIX_TIMESTAMP) would fail above.
            frac = list(want.customer_id).index("x_frac")
            assert want.column("days_since_last_event")[frac] == pytest.approx(1e-6 / 86400, abs=1e-12)
    finally:
        con.close()


def assert_predictions_equal(got: pa.Table, want: pa.Table) -> None:
    assert got.column_names == want.column_names
    assert got.column("customer_id").to_pylist() == want.column("customer_id").to_pylist()
    for name in want.column_names[1:]:
        if pa.types.is_floating(want.schema.field(name).type):
            assert_columns_close(
                name,
                got.column(name).to_numpy(zero_copy_only=False).astype(float),
                want.column(name).to_numpy(zero_copy_only=False).astype(float),
            )
        else:
            mine, theirs = got.column(name).to_pylist(), want.column(name).to_pylist()
            differ = sum(a != b for a, b in zip(mine, theirs, strict=True))
            assert differ == 0, f"{name}: {differ} customers differ"


@pytest.mark.parametrize("kind", ["ml", "bgnbd"])
def test_scores_are_equal_on_both_engines(spark: Any, sample: GenerateResult, tmp_path: Path, kind: str) -> None:
    settings = settings_for(sample, tmp_path, model={"kind": kind, "publish_next_purchase_date": True})
    con, _ = duckdb_events(settings)
    try:
        if kind == "ml":  # one model in service, so both engines score with the same one
            version, _, _ = train_churn_model(con, CUT.replace(tzinfo=None), settings, now=NOW)
            ModelRegistry(settings.model.registry_path).promote(version, now=NOW)
        want = predict_attributes(con, CUT, settings, now=NOW)
        a_day_later = predict_attributes(con, CUT + timedelta(days=1), settings, now=NOW)
    finally:
        con.close()
    load, [got] = predict_on_spark(settings, [(settings, "default")], CUT, now=NOW)
    assert load.rows_loaded > 5000
    assert got.model_version == want.model_version
    assert got.model_params == pytest.approx(want.model_params, rel=1e-9)
    assert got.messages == want.messages == []
    assert "next_purchase_date" in want.table.column_names
    assert ("churn_driver" in want.table.column_names) == (kind == "ml")
    assert_predictions_equal(got.table, want.table)
    assert got.details["engine"] == "spark"
    # The comparison can fail: the scores of a day later differ beyond the tolerance.
    with pytest.raises(AssertionError, match="differ"):
        assert_predictions_equal(got.table, a_day_later.table)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_churnsync_run_on_spark_end_to_end(
    spark: Any,
    sample: GenerateResult,
    tmp_path: Path,
    store: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from churnsync.cli import main

    url = str(request.getfixturevalue(f"{store}_url"))
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = frozenset(row["customer_id"] for row in csv.DictReader(f)) | {"x_frac", "x_null"}
    with serve_in_thread(EmulatorConfig(api_key=KEY, known_external_ids=ids)) as emulator:
        config = tmp_path / "churnsync.toml"
        config.write_text(
            f"""engine = "spark"
[data]
paths = ["{sample.events_path.parent / "events*.csv"}"]
rejects_path = "rejects.csv"
[store]
url = "{url}"
[model]
registry_path = "models"
[spark]
master = "local[2]"
training_sample_customers = 1000
[destinations.braze]
endpoint = "{emulator.url}"
""",
            encoding="utf-8",
        )
        monkeypatch.setenv("BRAZE_API_KEY", KEY)
        monkeypatch.setattr(sys, "argv", ["churnsync", "run", "--config", str(config), "--as-of", AS_OF.isoformat()])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out = capsys.readouterr()
        assert exit_info.value.code in (0, None), out.err + out.out
        profiles = emulator.state.profiles()
    opened = AttributeStore.open(url)
    try:
        acknowledged = opened.acknowledged_state("braze")
    finally:
        opened.close()
    assert "trained and published model" in out.out + out.err, out.out + out.err
    assert len(acknowledged) > 400 and {"x_frac", "x_null"} <= set(acknowledged)

    def clean(values: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in values.items() if v is not None}

    differ = [
        cid for cid in set(profiles) | set(acknowledged) if clean(profiles.get(cid, {})) != clean(acknowledged[cid])
    ]
    assert differ == [], differ[:3]
    assert (tmp_path / "rejects.csv").exists()


def test_training_sample_is_bounded(spark_events: Any) -> None:
    from churnsync.engines.spark import training_connection

    _, events, load = spark_events
    con, share = training_connection(events, CUT, 1000)
    try:
        assert share == 1.0
        assert con.sql("SELECT count(*) FROM events").fetchall()[0][0] == load.rows_loaded
    finally:
        con.close()
    con, share = training_connection(events, CUT, 250)
    try:
        customers = con.sql("SELECT count(DISTINCT customer_id) FROM events").fetchall()[0][0]
    finally:
        con.close()
    assert 0.4 < share < 0.6
    assert 150 < customers < 350  # a hash sample: about share × 502 customers
