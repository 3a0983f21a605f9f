"""load_events: CSV and Parquet through DuckDB, validation, rejects with source lines, thresholds, as_of."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnsync.config import ColumnMapping, DataSettings
from churnsync.errors import DataError, MissingColumnError, TooManyRejectsError
from churnsync.events import EVENTS_TABLE, REJECT_REASONS, LoadResult, load_events

HEADER = "customer_id,occurred_at,event_type,value\n"


@pytest.fixture
def con() -> Any:
    connection = duckdb.connect()
    yield connection
    connection.close()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def settings(tmp_path: Path, *paths: str, **kwargs: Any) -> DataSettings:
    globs = [str(tmp_path / p) for p in paths]
    return DataSettings(paths=globs, rejects_path=str(tmp_path / "out" / "rejects.csv"), **kwargs)


def rows(con: Any) -> list[tuple[Any, ...]]:
    return con.execute(f"SELECT * FROM {EVENTS_TABLE} ORDER BY customer_id, occurred_at, event_type").fetchall()


def rejects(result: LoadResult) -> list[dict[str, str]]:
    assert result.rejects_path is not None
    with result.rejects_path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def buckets_add_up(result: LoadResult) -> bool:
    parts = result.rows_rejected + result.rows_after_as_of + result.duplicates + result.rows_loaded
    return parts == result.rows_read


def test_csv_loads_the_canonical_table_normalised(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(
        tmp_path / "data" / "events.csv",
        HEADER
        + "  c1 ,2025-03-01T10:00:00Z, Purchase ,12.5\n"
        + "c1,2025-03-02 11:30:00,session,\n"
        + "c2,2025-03-03,EMAIL_OPEN,\n"
        + "c2,2025-03-04T10:00:00.250Z,purchase, 7 \n",
    )
    result = load_events(con, settings(tmp_path, "data/*.csv"), now=fixed_now)

    schema = con.execute(f"DESCRIBE {EVENTS_TABLE}").fetchall()
    assert [(c[0], c[1]) for c in schema] == [
        ("customer_id", "VARCHAR"),
        ("occurred_at", "TIMESTAMP"),
        ("event_type", "VARCHAR"),
        ("value", "DOUBLE"),
    ]
    assert rows(con) == [
        ("c1", datetime(2025, 3, 1, 10, 0), "purchase", 12.5),
        ("c1", datetime(2025, 3, 2, 11, 30), "session", None),
        ("c2", datetime(2025, 3, 3, 0, 0), "email_open", None),
        ("c2", datetime(2025, 3, 4, 10, 0, 0, 250_000), "purchase", 7.0),
    ]
    assert result.files == [str(tmp_path / "data" / "events.csv")]
    assert (result.rows_read, result.rows_loaded, result.rows_rejected) == (4, 4, 0)
    assert result.rejects_path is None and result.reject_reasons == {}
    assert not (tmp_path / "out" / "rejects.csv").exists()


def test_timezone_offsets_are_converted_to_utc(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(
        tmp_path / "tz.csv",
        HEADER
        + "a,2025-03-01T10:00:00+02:00,session,\n"
        + "b,2025-03-01T22:30:00-05:00,session,\n"
        + "c,2025-03-01 10:00:00+0530,session,\n"
        + "d,2025-03-01T10:00:00Z,session,\n"
        + "e,2025-03-01T10:00:00,session,\n",
    )
    load_events(con, settings(tmp_path, "tz.csv"), now=fixed_now)
    got = {r[0]: r[1] for r in rows(con)}
    assert got == {
        "a": datetime(2025, 3, 1, 8, 0),
        "b": datetime(2025, 3, 2, 3, 30),
        "c": datetime(2025, 3, 1, 4, 30),
        "d": datetime(2025, 3, 1, 10, 0),
        "e": datetime(2025, 3, 1, 10, 0),
    }


def test_connection_time_zone_does_not_change_results_and_is_restored(
    tmp_path: Path, con: Any, fixed_now: datetime
) -> None:
    con.execute("SET TimeZone = 'America/New_York'")
    write(tmp_path / "e.csv", HEADER + "a,2025-03-01 10:00:00,session,\nb,2025-03-01,session,\n")
    load_events(con, settings(tmp_path, "e.csv"), now=fixed_now)
    assert [r[1] for r in rows(con)] == [datetime(2025, 3, 1, 10, 0), datetime(2025, 3, 1, 0, 0)]
    assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "America/New_York"


def test_parquet_with_typed_columns(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    table = pa.table(
        {
            "customer_id": [" p1", "p2", "p3"],
            "occurred_at": pa.array(
                [datetime(2025, 5, 1, 12, tzinfo=UTC), datetime(2025, 5, 2, tzinfo=UTC), None],
                pa.timestamp("us", tz="UTC"),
            ),
            "event_type": ["purchase", "Session", "purchase"],
            "value": pa.array([9.99, None, 3.0]),
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    result = load_events(con, settings(tmp_path, "*.parquet", max_reject_share=0.5), now=fixed_now)
    assert rows(con) == [
        ("p1", datetime(2025, 5, 1, 12, 0), "purchase", 9.99),
        ("p2", datetime(2025, 5, 2, 0, 0), "session", None),
    ]
    # Parquet rows are numbered from 1.
    assert [(r["source_line"], r["reason"], r["customer_id"]) for r in rejects(result)] == [
        ("3", "bad_timestamp", "p3")
    ]


def test_parquet_with_text_and_naive_columns(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    pq.write_table(
        pa.table(
            {
                "customer_id": pa.array([101, 102], pa.int64()),
                "occurred_at": ["2025-05-01T12:00:00+02:00", "2025-05-02"],
                "event_type": ["purchase", "purchase"],
                "value": pa.array([5, 6], pa.int32()),
            }
        ),
        tmp_path / "a.pq",
    )
    pq.write_table(
        pa.table(
            {
                "customer_id": ["103"],
                "occurred_at": pa.array([datetime(2025, 5, 3, 8)], pa.timestamp("ms")),
                "event_type": ["purchase"],
                "value": [1.5],
            }
        ),
        tmp_path / "b.pq",
    )
    load_events(con, settings(tmp_path, "*.pq"), now=fixed_now)
    assert rows(con) == [
        ("101", datetime(2025, 5, 1, 10, 0), "purchase", 5.0),
        ("102", datetime(2025, 5, 2, 0, 0), "purchase", 6.0),
        ("103", datetime(2025, 5, 3, 8, 0), "purchase", 1.5),
    ]


def test_several_globs_and_formats(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "csv" / "2025-02.csv", HEADER + "b,2025-02-01,session,\n")
    write(tmp_path / "csv" / "2025-01.csv", HEADER + "a,2025-01-01,session,\na,2025-01-02,session,\n")
    write(tmp_path / "csv" / "notes.txt", "not data")
    write(tmp_path / "tsv" / "x.tsv", "customer_id\toccurred_at\tevent_type\tvalue\nt\t2025-01-05\tpurchase\t4\n")
    (tmp_path / "pq").mkdir()
    pq.write_table(
        pa.table({"customer_id": ["q"], "occurred_at": ["2025-03-01"], "event_type": ["session"], "value": [None]}),
        tmp_path / "pq" / "x.parquet",
    )
    data = settings(tmp_path, "csv/*.csv", "tsv/*.tsv", "pq/*.parquet", "csv/2025-01.csv")
    result = load_events(con, data, now=fixed_now)
    assert result.files == sorted(
        str(tmp_path / p) for p in ("csv/2025-01.csv", "csv/2025-02.csv", "tsv/x.tsv", "pq/x.parquet")
    )
    assert (result.rows_read, result.rows_loaded) == (5, 5)
    assert sorted({r[0] for r in rows(con)}) == ["a", "b", "q", "t"]


def test_column_mapping_and_no_value_column(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "m.csv", "user;when;what;amount;extra\nu1;2025-01-01;Buy;3,5;x\n")
    mapping = ColumnMapping(customer_id="user", occurred_at="when", event_type="what", value=None)
    load_events(con, settings(tmp_path, "m.csv", columns=mapping, csv_delimiter=";"), now=fixed_now)
    assert rows(con) == [("u1", datetime(2025, 1, 1), "buy", None)]

    mapping = ColumnMapping(customer_id="user", occurred_at="when", event_type="what", value="amount")
    write(tmp_path / "n.csv", "user,when,what,amount\nu2,2025-01-01,buy,3.5\n")
    load_events(con, settings(tmp_path, "n.csv", columns=mapping), now=fixed_now)
    assert rows(con) == [("u2", datetime(2025, 1, 1), "buy", 3.5)]


def test_every_reason_is_written_with_its_source_line(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    future = (fixed_now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        "good1,2025-01-01,purchase,1",  # line 2
        " ,2025-01-01,purchase,1",  # 3: empty_customer_id
        "x,yesterday,purchase,1",  # 4: bad_timestamp
        "x,,purchase,1",  # 5: bad_timestamp (missing)
        f"x,{future},purchase,1",  # 6: future_timestamp
        "x,2025-01-01,  ,1",  # 7: empty_event_type
        "x,2025-01-01,purchase,abc",  # 8: bad_value
        "x,2025-01-01,purchase,NaN",  # 9: bad_value
        "x,2025-01-01,purchase,inf",  # 10: bad_value
        "x,2025-01-01,purchase,-2.5",  # 11: negative_value
        '"good2","2025-01-02","session",""',  # 12
        ",,,",  # 13: empty_customer_id (the first reason that applies)
        "z" * 256 + ",2025-01-01,purchase,1",  # 14: bad_customer_id (longer than Braze's 255)
    ]
    write(tmp_path / "bad.csv", HEADER + "\n".join(lines) + "\n")
    write(tmp_path / "also.csv", HEADER + "y,2025-01-01,purchase,1\ny,2025-13-01,purchase,1\n")
    result = load_events(con, settings(tmp_path, "*.csv", max_reject_share=1.0), now=fixed_now)

    got = [(Path(r["source_file"]).name, int(r["source_line"]), r["reason"]) for r in rejects(result)]
    assert got == [
        ("also.csv", 3, "bad_timestamp"),
        ("bad.csv", 3, "empty_customer_id"),
        ("bad.csv", 4, "bad_timestamp"),
        ("bad.csv", 5, "bad_timestamp"),
        ("bad.csv", 6, "future_timestamp"),
        ("bad.csv", 7, "empty_event_type"),
        ("bad.csv", 8, "bad_value"),
        ("bad.csv", 9, "bad_value"),
        ("bad.csv", 10, "bad_value"),
        ("bad.csv", 11, "negative_value"),
        ("bad.csv", 13, "empty_customer_id"),
        ("bad.csv", 14, "bad_customer_id"),
    ]
    by_line = {int(r["source_line"]): r for r in rejects(result) if r["source_file"].endswith("bad.csv")}
    assert by_line[8]["value"] == "abc"
    assert by_line[4]["occurred_at"] == "yesterday"
    assert by_line[6]["occurred_at"] == future
    assert list(by_line[8]) == [
        "source_file",
        "source_line",
        "reason",
        "customer_id",
        "occurred_at",
        "event_type",
        "value",
    ]
    assert set(result.reject_reasons) == set(REJECT_REASONS)
    assert result.reject_reasons["bad_timestamp"] == 3
    assert result.reject_reasons["bad_value"] == 3
    assert (result.rows_read, result.rows_rejected, result.rows_loaded) == (15, 12, 3)
    assert sorted(r[0] for r in rows(con)) == ["good1", "good2", "y"]


def test_source_lines_stay_exact_in_large_files(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    """Files big enough to be read by several threads in several chunks keep their line numbers."""
    con.execute("SET threads = 4")
    bad_every = 9_973
    for name, n in (("big1.csv", 300_000), ("big2.csv", 120_000)):
        # customer_id holds the line number itself; every bad_every-th row has a broken timestamp.
        con.execute(
            f"""
            COPY (
                SELECT (i + 2)::VARCHAR AS customer_id,
                       CASE WHEN i % {bad_every} = 5 THEN 'broken' ELSE '2025-01-01T00:00:00Z' END AS occurred_at,
                       'session' AS event_type, NULL AS value
                FROM range({n}) t(i)
            ) TO '{tmp_path / name}' (HEADER)
            """
        )
    pq.write_table(
        pa.table(
            {
                "customer_id": [str(i + 1) for i in range(50_000)],
                "occurred_at": ["nope" if i % bad_every == 5 else "2025-01-01" for i in range(50_000)],
                "event_type": ["session"] * 50_000,
                "value": pa.nulls(50_000, pa.float64()),
            }
        ),
        tmp_path / "big3.parquet",
        row_group_size=4_096,
    )
    result = load_events(con, settings(tmp_path, "big*", max_reject_share=0.01), now=fixed_now)
    got = rejects(result)
    expected = sum(len(range(5, n, bad_every)) for n in (300_000, 120_000, 50_000))
    assert result.rows_rejected == len(got) == expected
    assert all(int(r["source_line"]) == int(r["customer_id"]) for r in got)
    assert {Path(r["source_file"]).name for r in got} == {"big1.csv", "big2.csv", "big3.parquet"}


def test_rejects_under_the_threshold_load_and_are_counted(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    good = "".join(f"c{i},2025-01-01,session,\n" for i in range(99))
    write(tmp_path / "e.csv", HEADER + good + "c,2025-01-01,purchase,-1\n")
    result = load_events(con, settings(tmp_path, "e.csv", max_reject_share=0.01), now=fixed_now)
    assert (result.rows_read, result.rows_rejected, result.rows_loaded) == (100, 1, 99)
    assert result.reject_reasons == {"negative_value": 1}
    assert result.rejects_path == tmp_path / "out" / "rejects.csv"
    assert [r["source_line"] for r in rejects(result)] == ["101"]


def test_rejects_over_the_threshold_raise_after_writing_the_file(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    source = write(tmp_path / "e.csv", HEADER + "a,2025-01-01,session,\n" * 97 + ",2025-01-01,session,\n" * 3)
    before = source.read_bytes()
    con.execute(f"CREATE TABLE {EVENTS_TABLE} AS SELECT 'previous' AS marker")
    with pytest.raises(TooManyRejectsError) as info:
        load_events(con, settings(tmp_path, "e.csv", max_reject_share=0.02), now=fixed_now)
    message = str(info.value)
    assert "3 of 100" in message and "rejects.csv" in message and "\n" not in message
    assert info.value.rejected == 3
    lines = (tmp_path / "out" / "rejects.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[1].split(",")[1:3] == ["99", "empty_customer_id"]
    # The source is untouched and the previous table still stands.
    assert source.read_bytes() == before
    assert con.execute(f"SELECT * FROM {EVENTS_TABLE}").fetchall() == [("previous",)]
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_churnsync%'").fetchone() == (0,)


def test_zero_share_rejects_any_bad_row(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "e.csv", HEADER + "a,2025-01-01,session,\n" * 1000 + "a,bad,session,\n")
    with pytest.raises(TooManyRejectsError):
        load_events(con, settings(tmp_path, "e.csv", max_reject_share=0.0), now=fixed_now)


def test_missing_column_names_column_and_file(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "a.csv", HEADER + "a,2025-01-01,session,\n")
    write(tmp_path / "b.csv", "customer_id,timestamp,event_type,value\nb,2025-01-01,session,\n")
    with pytest.raises(MissingColumnError) as info:
        load_events(con, settings(tmp_path, "*.csv"), now=fixed_now)
    assert info.value.column == "occurred_at"
    assert info.value.source == str(tmp_path / "b.csv")
    assert "timestamp" in str(info.value) and "\n" not in str(info.value)


def test_missing_mapped_value_column(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "a.csv", "customer_id,occurred_at,event_type\na,2025-01-01,session\n")
    with pytest.raises(MissingColumnError, match="'value'"):
        load_events(con, settings(tmp_path, "a.csv"), now=fixed_now)


def test_no_matching_file_names_the_glob(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    with pytest.raises(DataError, match=r"no file matches .*nothing/\*\.csv"):
        load_events(con, settings(tmp_path, "nothing/*.csv"), now=fixed_now)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("short.csv", HEADER + "a,2025-01-01,session,\nb,2025-01-01,session\n"),
        ("wide.csv", HEADER + "a,2025-01-01,session,,1,2\n"),
        ("broken.parquet", "PAR1 this is not parquet"),
        ("empty.csv", ""),
    ],
)
def test_malformed_file_names_the_file_in_one_line(
    tmp_path: Path, con: Any, fixed_now: datetime, name: str, content: str
) -> None:
    write(tmp_path / name, content)
    with pytest.raises(DataError) as info:
        load_events(con, settings(tmp_path, name), now=fixed_now)
    assert str(tmp_path / name) in str(info.value)
    assert "\n" not in str(info.value)
    assert "Possible fixes" not in str(info.value)


def test_bad_row_deep_in_a_large_file_is_reported_with_its_line(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    path = tmp_path / "long.csv"
    path.write_text(HEADER + "a,2025-01-01,session,\n" * 60_000 + "b,2025-01-01,session\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"long\.csv.*Line: 60002"):
        load_events(con, settings(tmp_path, "long.csv"), now=fixed_now)


def test_unknown_extension_asks_for_a_format(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "e.txt", HEADER + "a,2025-01-01,session,\n")
    with pytest.raises(DataError, match=r"data\.format"):
        load_events(con, settings(tmp_path, "e.txt"), now=fixed_now)
    result = load_events(con, settings(tmp_path, "e.txt", format="csv"), now=fixed_now)
    assert result.rows_loaded == 1


def test_rejects_file_may_not_overwrite_an_input(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "e.csv", HEADER + "a,2025-01-01,session,\n")
    data = DataSettings(paths=[str(tmp_path / "*.csv")], rejects_path=str(tmp_path / "e.csv"))
    with pytest.raises(DataError, match="rejects_path"):
        load_events(con, data, now=fixed_now)


def test_as_of_excludes_later_rows_without_rejecting_them(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(
        tmp_path / "e.csv",
        HEADER
        + "a,2025-01-01T00:00:00Z,purchase,1\n"
        + "a,2025-01-31T23:59:59Z,purchase,1\n"
        + "a,2025-02-01T00:00:00Z,purchase,1\n"
        + "b,2025-06-01,session,\n"
        + "c,2099-01-01,session,\n",
    )
    as_of = datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC)
    result = load_events(con, settings(tmp_path, "e.csv", max_reject_share=0.5), now=fixed_now, as_of=as_of)
    assert [r[1] for r in rows(con)] == [datetime(2025, 1, 1), datetime(2025, 1, 31, 23, 59, 59)]
    assert result.rows_after_as_of == 2
    # The future is judged against `now`, not `as_of`.
    assert result.reject_reasons == {"future_timestamp": 1}
    assert result.rows_loaded == 2 and buckets_add_up(result)


def test_now_is_the_limit_for_the_future(tmp_path: Path, con: Any) -> None:
    write(tmp_path / "e.csv", HEADER + "a,2025-01-01T12:00:00Z,session,\nb,2025-01-01T12:00:01Z,session,\n")
    now = datetime(2025, 1, 1, 13, 0, tzinfo=UTC) - timedelta(hours=1)  # exactly 12:00:00 UTC
    result = load_events(con, settings(tmp_path, "e.csv", max_reject_share=0.5), now=now)
    assert result.rows_loaded == 1 and result.reject_reasons == {"future_timestamp": 1}


def test_exact_duplicates_are_kept_once(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(
        tmp_path / "a.csv",
        HEADER
        + "a,2025-01-01T10:00:00Z,purchase,5\n"
        + "a,2025-01-01T10:00:00Z,purchase,5\n"  # duplicate
        + " a ,2025-01-01T11:00:00+01:00,PURCHASE,5.0\n"  # the same event once normalised
        + "a,2025-01-01T10:00:00Z,purchase,6\n"  # other value: not a duplicate
        + "a,2025-01-01T10:00:00Z,session,\n",
    )
    write(tmp_path / "b.csv", HEADER + "a,2025-01-01T10:00:00Z,session,\n")  # duplicate across files
    result = load_events(con, settings(tmp_path, "*.csv"), now=fixed_now)
    assert result.duplicates == 3
    assert result.rows_rejected == 0
    assert (result.rows_read, result.rows_loaded) == (6, 3)
    assert buckets_add_up(result)


def test_a_clean_load_removes_its_stale_rejects_file_only(tmp_path: Path, con: Any, fixed_now: datetime) -> None:
    write(tmp_path / "e.csv", HEADER + "a,2025-01-01,session,\n" + "a,never,session,\n")
    first = load_events(con, settings(tmp_path, "e.csv", max_reject_share=0.5), now=fixed_now)
    assert first.rejects_path is not None and first.rejects_path.exists()
    write(tmp_path / "e.csv", HEADER + "a,2025-01-01,session,\n")
    second = load_events(con, settings(tmp_path, "e.csv"), now=fixed_now)
    assert second.rejects_path is None and not first.rejects_path.exists()
    # A file that is not a rejects file is never removed.
    foreign = write(tmp_path / "out" / "rejects.csv", "my,own,notes\n")
    load_events(con, settings(tmp_path, "e.csv"), now=fixed_now)
    assert foreign.read_text() == "my,own,notes\n"
