"""Property-based fuzzing of event files: a bad row is quarantined, a bad file is one clear line, good rows load.

Rows: the malformed kinds of bench/reliability.py (wrong types, NUL bytes, huge fields, bad times, future times,
negative values), arbitrary text fields (quoted, so the file's structure holds), duplicate events, mixed time zones.
Files: empty, without a header, a missing column, a duplicate column name, invalid UTF-8, UTF-16, extra fields,
unterminated quotes, lines over DuckDB's limit. Hypothesis runs derandomized with a bounded number of examples (CI
is deterministic).
"""

from __future__ import annotations

import csv
import io
import random
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench_modules import load_bench
from churnsync.config import DataSettings
from churnsync.errors import ChurnsyncError
from churnsync.events.reader import load_events

reliability = load_bench("reliability")
NOW = datetime(2026, 6, 30, tzinfo=UTC)
FUZZ = settings(
    max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

ZONES = ["Z", "+00:00", "+05:30", "-08:00", "", " UTC"]
good_row = st.tuples(
    st.integers(0, 10_000),
    st.dates(min_value=datetime(2020, 1, 1).date(), max_value=datetime(2026, 6, 29).date()),
    st.integers(0, 23),
    st.sampled_from(ZONES),
    st.sampled_from(["purchase", "session", " Purchase ", "email_open", "app_open"]),
    st.one_of(st.just(""), st.integers(0, 10_000).map(str), st.floats(0, 1e6, allow_nan=False).map(repr)),
)
# Arbitrary text in every field (no surrogates: they cannot be written as UTF-8 at all).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
wild_row = st.tuples(text, text, text, text)


def render(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return out.getvalue()


@st.composite
def event_files(draw: st.DrawFn) -> tuple[bytes, set[str], int, str | None]:
    """(file bytes, good customer ids, malformed rows, file fault or None)."""
    goods = draw(st.lists(good_row, min_size=1, max_size=25))
    good_lines, good_ids = [], set()
    for n, (i, day, hour, zone, kind, value) in enumerate(goods):
        cid = f"g{i:05d}_{n}"
        good_ids.add(cid)
        stamp = day.isoformat() if hour == 0 and not zone else f"{day.isoformat()}T{hour:02d}:15:00{zone}"
        good_lines.append([cid, stamp, kind, value])
    bad = [
        reliability.BAD_ROWS[kind](random.Random(seed)).split(",", 3)
        for kind, seed in draw(st.lists(st.tuples(st.sampled_from(sorted(reliability.BAD_ROWS)), st.integers(0, 99))))
    ]
    wild = [list(row) for row in draw(st.lists(wild_row, max_size=5))]
    lines = good_lines + bad + wild + good_lines[: draw(st.integers(0, 3))]  # duplicate events
    lines = draw(st.permutations(lines))
    header = draw(st.sampled_from(["plain", "crlf", "bom", "extra column", "duplicate column", "reordered"]))
    columns = ["customer_id", "occurred_at", "event_type", "value"]
    if header == "extra column":
        columns.append("note")
        lines = [[*row, "x"] for row in lines]
    elif header == "duplicate column":  # a second column named customer_id: the first one is the mapped one
        columns.append("customer_id")
        lines = [[*row, "ignored"] for row in lines]
    elif header == "reordered":
        columns = ["value", "event_type", "occurred_at", "customer_id"]
        lines = [list(reversed(row)) for row in lines]
    body = render([columns, *lines])
    if header == "crlf":
        body = body.replace("\n", "\r\n")
    data = ("\ufeff" if header == "bom" else "").encode() + body.encode()
    fault = draw(st.none() | st.sampled_from(sorted(reliability.BAD_FILES)))
    if fault is not None:
        data = reliability.BAD_FILES[fault](random.Random(0), data)
    return data, good_ids, len(bad), fault


def load(path: Path, rejects: Path) -> tuple[object, set[str]]:
    con = duckdb.connect()
    try:
        result = load_events(
            con, DataSettings(paths=[str(path)], rejects_path=str(rejects), max_reject_share=1.0), now=NOW
        )
        loaded = {str(r[0]) for r in con.execute("SELECT DISTINCT customer_id FROM events").fetchall()}
        return result, loaded
    finally:
        con.close()


@FUZZ
@given(event_files())
def test_bad_rows_are_quarantined_bad_files_are_one_line_and_good_rows_load(
    case: tuple[bytes, set[str], int, str | None],
) -> None:
    data, good_ids, bad_rows, fault = case
    with tempfile.TemporaryDirectory() as tmp:
        path, rejects = Path(tmp) / "events.csv", Path(tmp) / "rejects.csv"
        path.write_bytes(data)
        if fault is not None:
            with pytest.raises(ChurnsyncError) as caught:
                load(path, rejects)
            message = str(caught.value)
            assert len(message.splitlines()) == 1 and str(path) in message, message
            return
        result, loaded = load(path, rejects)
        assert good_ids <= loaded, sorted(good_ids - loaded)[:3]
        assert result.rows_rejected >= bad_rows  # type: ignore[attr-defined]
        assert result.rows_read == (  # type: ignore[attr-defined]
            result.rows_rejected + result.rows_after_as_of + result.duplicates + result.rows_loaded  # type: ignore[attr-defined]
        )
        if result.rows_rejected:  # type: ignore[attr-defined]
            with rejects.open(encoding="utf-8", newline="") as f:
                assert sum(1 for _ in csv.DictReader(f)) == result.rows_rejected  # type: ignore[attr-defined]
        # Nothing a store or Braze cannot hold gets through: no NUL, no customer id over 255 characters.
        assert all("\x00" not in c and len(c) <= 255 for c in loaded)


@pytest.mark.parametrize("fault", sorted(reliability.BAD_FILES))
def test_a_bad_file_through_the_command_line_is_one_line_without_traceback(fault: str, tmp_path: Path) -> None:
    good = reliability.HEADER + "\nc1,2026-01-01T00:00:00Z,purchase,1\n"
    events = tmp_path / "events.csv"
    events.write_bytes(reliability.BAD_FILES[fault](random.Random(0), good.encode()))
    config = tmp_path / "churnsync.toml"
    config.write_text(
        f'[data]\npaths = ["{events}"]\n[model]\nkind = "bgnbd"\n[store]\nurl = "sqlite:///{tmp_path / "s.db"}"\n',
        encoding="utf-8",
    )
    code, out, err = reliability.cli("run", "--no-sync", "--config", str(config))
    line = reliability.one_line_error(code, out, err)
    assert str(events) in line and code == 1


def test_the_benchmark_finds_no_lost_good_row_and_no_unclear_refusal(tmp_path: Path) -> None:
    row = reliability.bad_input(tmp_path, files=25)
    assert row.details["problems"] == []
    assert row.lost == 0 and row.delivered == row.customers > 0
    assert row.faults["bad rows"] > 0 and row.faults["bad files"] > 0
