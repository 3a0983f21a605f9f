"""Read behaviour files (CSV or Parquet, globs allowed) into the canonical DuckDB table ``events``.

Everything happens inside DuckDB, set-based; no event row ever passes through Python.

How a load works:

1. The globs in ``data.paths`` are expanded (sorted, duplicates removed). A glob matching nothing is an error.
2. Each file is checked for the mapped columns, then appended to a temporary staging table in one
   ``INSERT … SELECT`` that parses, normalises and validates every row. CSV files are read with
   ``all_varchar=true`` so a bad value never aborts the read: it becomes a reject instead.
3. Rejected rows go to ``data.rejects_path``; the run fails when they exceed ``data.max_reject_share``.
4. The valid rows at or before ``as_of`` become the table ``events``, exact duplicates kept once.

Every row read ends in exactly one bucket::

    rows_read == rows_rejected + rows_after_as_of + duplicates + rows_loaded

Source line numbers: the staging table is filled with DuckDB's insertion order preserved, so a row's position in
it is its position in the file. For CSV the line is that position + 1 (the header is line 1); this is the physical
line unless a quoted field spans several lines or the file has blank lines before the row. For Parquet it is
the 1-based row number.
"""

from __future__ import annotations

import contextlib
import glob
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb

from churnsync.config import DataSettings
from churnsync.errors import DataError, MissingColumnError, TooManyRejectsError

__all__ = ["EVENTS_TABLE", "REJECT_REASONS", "LoadResult", "load_events"]

#: The canonical table ``load_events`` creates (replacing any table of that name).
EVENTS_TABLE = "events"

#: Why a row can be rejected, in the order the checks apply (a row gets the first reason that fits).
REJECT_REASONS = (
    "empty_customer_id",
    "bad_customer_id",
    "bad_timestamp",
    "future_timestamp",
    "empty_event_type",
    "bad_value",
    "negative_value",
)

#: Braze's limit on an external_id, and the store's key length.
MAX_CUSTOMER_ID_LENGTH = 255
_STAGE = "_churnsync_events_stage"
_FILES = "_churnsync_events_files"
_Format = Literal["csv", "parquet"]
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_REJECTS_HEADER = "source_file,source_line,reason,customer_id,occurred_at,event_type,value"
# A malformed row cannot be quarantined like a bad value: the file's structure itself is in doubt.
_REMEDY = {
    "csv": "Check that every row has as many fields as the header and that data.csv_delimiter matches the file",
    "parquet": "Check that the file is complete and really Parquet, or set data.format",
}


@dataclass(frozen=True)
class LoadResult:
    """What one load did. Every row read is counted in exactly one of the four buckets below.

    ``rows_read == rows_rejected + rows_after_as_of + duplicates + rows_loaded``
    """

    files: list[str]
    """Files actually read: the globs expanded, sorted, each once."""
    rows_read: int
    """Data rows in all files (CSV headers not counted)."""
    rows_loaded: int
    """Rows in the table ``events``: valid, at or before ``as_of``, exact duplicates counted once."""
    rows_rejected: int
    """Rows that failed validation (written to ``rejects_path``)."""
    rows_after_as_of: int
    """Valid rows left out because they are after ``as_of`` (not rejects)."""
    rejects_path: Path | None
    """The rejects file, or ``None`` when nothing was rejected (then no file is written, and one left by an
    earlier load is removed)."""
    reject_reasons: dict[str, int]
    """Rejected rows per reason (only reasons that occurred)."""
    duplicates: int = 0
    """Valid rows at or before ``as_of`` dropped because an identical event (customer, time, type, value) was kept."""


def load_events(
    con: duckdb.DuckDBPyConnection,
    data: DataSettings,
    *,
    now: datetime,
    as_of: datetime | None = None,
) -> LoadResult:
    """Read, validate and normalise ``data.paths`` into the table ``events`` of ``con``.

    The table is ``events(customer_id VARCHAR, occurred_at TIMESTAMP, event_type VARCHAR, value DOUBLE)`` with
    ``occurred_at`` in naive UTC: offsets are converted, timestamps without a zone are taken as UTC and plain dates
    mean midnight UTC. ``customer_id`` is trimmed; ``event_type`` trimmed and lower-cased.

    A row is rejected, with the first reason that applies, when: the customer id is empty (``empty_customer_id``);
    it is longer than 255 characters or holds a NUL byte (``bad_customer_id``: no Braze external_id or store
    key can hold it);
    the timestamp is missing or unparsable (``bad_timestamp``); it is after ``now`` (``future_timestamp``); the event
    type is empty (``empty_event_type``); the value is present but not a finite number (``bad_value``); the value
    is negative (``negative_value``). A missing value is allowed (NULL).

    Rows after ``as_of`` are valid but left out of the table (``rows_after_as_of``); the future check uses ``now``.
    Naive ``now``/``as_of`` are taken as UTC.

    Raises
    ------
    DataError
        A glob matches no file, a file's format is unknown, or a file cannot be read.
    MissingColumnError
        A mapped column is absent from a file.
    TooManyRejectsError
        Rejected rows exceed ``data.max_reject_share`` of the rows read; the rejects file is written first and the
        table ``events`` is left as it was.

    Example
    -------
    >>> con = duckdb.connect()
    >>> result = load_events(con, settings.data, now=datetime.now(UTC))  # doctest: +SKIP
    >>> con.sql("SELECT count(*) FROM events").fetchone()  # doctest: +SKIP
    """
    files = _expand(data.paths)
    rejects_path = Path(data.rejects_path)
    if rejects_path.resolve() in {Path(f).resolve() for f in files}:
        raise DataError(
            f"data.rejects_path {rejects_path} is also one of the input files",
            remedy="Point data.rejects_path outside the data globs",
        )
    now_utc = _naive_utc(now)
    as_of_utc = _naive_utc(as_of) if as_of is not None else None

    settings = _pin_settings(con)
    try:
        _create_stage(con)
        for index, path in enumerate(files):
            _stage_file(con, data, index, path, _format_of(path, data.format), now_utc)
        return _finish(con, data, files, rejects_path, as_of_utc)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_STAGE}")
        con.execute(f"DROP TABLE IF EXISTS {_FILES}")
        _restore_settings(con, settings)


def _expand(patterns: list[str]) -> list[str]:
    """Every file the globs match, sorted, each once; a glob matching nothing is an error."""
    found: set[str] = set()
    for pattern in patterns:
        matches = [m for m in glob.glob(pattern, recursive=True) if Path(m).is_file()]
        if not matches:
            raise DataError(
                f"no file matches data.paths entry '{pattern}'",
                remedy="Check data.paths in churnsync.toml (relative paths start at the config file's folder)",
            )
        found.update(matches)
    return sorted(found)


def _format_of(path: str, configured: str) -> _Format:
    if configured == "csv":
        return "csv"
    if configured == "parquet":
        return "parquet"
    name = path.lower()
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(
        f"{path}: cannot tell the format from the file name",
        remedy="Name files .csv, .csv.gz, .tsv, .parquet or .pq, or set data.format to csv or parquet",
    )


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def _lit(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A quoted SQL identifier: the mapped column name taken exactly as written."""
    return '"' + name.replace('"', '""') + '"'


def _ts_lit(moment: datetime) -> str:
    return f"TIMESTAMP '{moment.isoformat(sep=' ')}'"


def _pin_settings(con: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    """Set what correctness depends on, returning the previous values.

    ``TimeZone = UTC`` makes zone-less timestamps UTC; ``preserve_insertion_order`` keeps the staging table in file
    order, which is what gives every row its line number.
    """
    row = con.execute(
        "SELECT current_setting('TimeZone'), current_setting('preserve_insertion_order')::VARCHAR"
    ).fetchone()
    assert row is not None
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = true")
    return str(row[0]), str(row[1])


def _restore_settings(con: duckdb.DuckDBPyConnection, previous: tuple[str, str]) -> None:
    time_zone, preserve = previous
    con.execute(f"SET TimeZone = {_lit(time_zone)}")
    con.execute(f"SET preserve_insertion_order = {'true' if preserve.lower() == 'true' else 'false'}")


def _create_stage(con: duckdb.DuckDBPyConnection) -> None:
    # Raw text is kept only for rejected rows: the rejects file needs it, and NULLs cost next to nothing.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {_STAGE} (
            file_index INTEGER, customer_id VARCHAR, occurred_at TIMESTAMP, event_type VARCHAR, value DOUBLE,
            reason VARCHAR, raw_customer_id VARCHAR, raw_occurred_at VARCHAR, raw_event_type VARCHAR,
            raw_value VARCHAR
        )
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {_FILES} (
            file_index INTEGER, path VARCHAR, first_row BIGINT, rows BIGINT, line_offset INTEGER
        )
        """
    )


def _short(exc: Exception) -> str:
    """DuckDB's reason on one line: its statement and detail lines, without hints, context or the row's data."""
    kept: list[str] = []
    for line in (raw.strip() for raw in str(exc).splitlines()):
        if line.startswith(("Possible fixes", "The search space", "LINE ", "file =", "*")):
            break
        if line and not line.startswith("Original Line"):
            kept.append(line.rstrip("."))
    text = "; ".join(kept) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _source_sql(path: str, fmt: _Format, data: DataSettings) -> str:
    if fmt == "parquet":
        return f"read_parquet({_lit(path)})"
    name = path.lower()
    delimiter = "\t" if name.endswith((".tsv", ".tsv.gz")) else data.csv_delimiter
    # The dialect is fixed rather than sniffed: the header must be line 1 (the sniffer may otherwise skip rows
    # it finds odd, which would shift every line number), quotes are RFC 4180 and no line is a comment.
    return (
        f"read_csv({_lit(path)}, all_varchar = true, header = true, skip = 0, delim = {_lit(delimiter)}, "
        "quote = '\"', escape = '\"', comment = '')"
    )


def _columns_of(con: duckdb.DuckDBPyConnection, path: str, source: str, fmt: _Format) -> dict[str, str]:
    """The file's columns and their DuckDB types; an unreadable file is a :class:`DataError`."""
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    except duckdb.Error as exc:
        raise DataError(f"{path}: cannot be read as {fmt.upper()} ({_short(exc)})", remedy=_REMEDY[fmt]) from None
    return {str(row[0]): str(row[1]) for row in rows}


def _as_text(column: str, duck_type: str) -> str:
    """The source value as text, for parsing and for the rejects file."""
    col = _ident(column)
    if duck_type == "VARCHAR":
        return col
    if duck_type.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"strftime(timezone('UTC', {col}), {_lit(_TS_FORMAT)})"
    if duck_type.startswith("TIMESTAMP"):
        return f"strftime({col}::TIMESTAMP, {_lit(_TS_FORMAT)})"
    return f"{col}::VARCHAR"


def _timestamp_sql(column: str, duck_type: str) -> str:
    """The source value as a naive UTC TIMESTAMP, NULL when it cannot be parsed."""
    col = _ident(column)
    if duck_type.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone('UTC', {col})"
    if duck_type.startswith("TIMESTAMP") or duck_type == "DATE":
        return f"{col}::TIMESTAMP"
    # Text: the TIMESTAMPTZ cast honours a Z, an offset or a zone name; without one the session zone (UTC,
    # pinned above) applies. Plain dates become midnight.
    text = _as_text(column, duck_type)
    # The trimmed retry runs only for the rows the plain cast missed (a plain date with blanks around it).
    return f"timezone('UTC', coalesce(TRY_CAST({text} AS TIMESTAMPTZ), TRY_CAST(trim({text}) AS TIMESTAMPTZ)))"


def _value_sql(column: str, duck_type: str) -> str:
    col = _ident(column)
    if duck_type in {"DOUBLE", "FLOAT", "DECIMAL"} or duck_type.startswith("DECIMAL") or "INT" in duck_type:
        return f"{col}::DOUBLE"
    # DuckDB's cast already ignores blanks around a number.
    return f"TRY_CAST({_as_text(column, duck_type)} AS DOUBLE)"


def _stage_file(
    con: duckdb.DuckDBPyConnection, data: DataSettings, index: int, path: str, fmt: _Format, now: datetime
) -> None:
    """Append one file to the staging table, parsed and validated, in file order."""
    if Path(path).stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (not even a header)", remedy="Remove it or write its header")
    source = _source_sql(path, fmt, data)
    available = _columns_of(con, path, source, fmt)
    mapping = data.columns
    wanted = [mapping.customer_id, mapping.occurred_at, mapping.event_type]
    if mapping.value is not None:
        wanted.append(mapping.value)
    for column in wanted:
        if column not in available:
            raise MissingColumnError(column, path, available=list(available))

    cid_text = _as_text(mapping.customer_id, available[mapping.customer_id])
    ts_text = _as_text(mapping.occurred_at, available[mapping.occurred_at])
    type_text = _as_text(mapping.event_type, available[mapping.event_type])
    if mapping.value is not None:
        value_text = _as_text(mapping.value, available[mapping.value])
        value_sql = _value_sql(mapping.value, available[mapping.value])
    else:
        value_text, value_sql = "NULL::VARCHAR", "NULL::DOUBLE"

    parsed = f"""
        SELECT
            NULLIF(trim({cid_text}), '') AS customer_id,
            {_timestamp_sql(mapping.occurred_at, available[mapping.occurred_at])} AS occurred_at,
            NULLIF(lower(trim({type_text})), '') AS event_type,
            {value_sql} AS value,
            {cid_text} AS raw_customer_id, {ts_text} AS raw_occurred_at,
            {type_text} AS raw_event_type, {value_text} AS raw_value
        FROM {source}
    """
    # CASE tests each condition only on the rows no earlier branch took, so the costly ones run rarely.
    # A value is bad when something other than blanks was written but it is not a finite number.
    reason = f"""
        CASE
            WHEN customer_id IS NULL THEN 'empty_customer_id'
            WHEN length(customer_id) > {MAX_CUSTOMER_ID_LENGTH} OR contains(customer_id, chr(0))
                THEN 'bad_customer_id'
            WHEN occurred_at IS NULL THEN 'bad_timestamp'
            WHEN occurred_at > {_ts_lit(now)} THEN 'future_timestamp'
            WHEN event_type IS NULL THEN 'empty_event_type'
            WHEN value IS NULL AND trim(raw_value) <> '' THEN 'bad_value'
            WHEN isnan(value) OR isinf(value) THEN 'bad_value'
            WHEN value < 0 THEN 'negative_value'
        END
    """
    first_row = _count(con, _STAGE)
    try:
        con.execute(
            f"""
            INSERT INTO {_STAGE}
            SELECT {index}, customer_id, occurred_at, event_type, value, reason,
                   CASE WHEN reason IS NOT NULL THEN raw_customer_id END,
                   CASE WHEN reason IS NOT NULL THEN raw_occurred_at END,
                   CASE WHEN reason IS NOT NULL THEN raw_event_type END,
                   CASE WHEN reason IS NOT NULL THEN raw_value END
            FROM (SELECT *, {reason} AS reason FROM ({parsed}))
            """
        )
    except duckdb.Error as exc:
        raise DataError(f"{path}: cannot be read as {fmt.upper()} ({_short(exc)})", remedy=_REMEDY[fmt]) from None
    rows = _count(con, _STAGE) - first_row
    # CSV: the header is line 1, so the first data row is line 2. Parquet: rows count from 1.
    line_offset = 2 if fmt == "csv" else 1
    con.execute(f"INSERT INTO {_FILES} VALUES (?, ?, ?, ?, ?)", [index, path, first_row, rows, line_offset])


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _finish(
    con: duckdb.DuckDBPyConnection,
    data: DataSettings,
    files: list[str],
    rejects_path: Path,
    as_of: datetime | None,
) -> LoadResult:
    after = f"occurred_at > {_ts_lit(as_of)}" if as_of is not None else "false"
    counts = con.execute(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE reason IS NULL AND {after})
        FROM {_STAGE}
        """
    ).fetchone()
    assert counts is not None
    rows_read, rows_after = int(counts[0]), int(counts[1])
    reasons = {
        str(reason): int(n)
        for reason, n in con.execute(
            f"SELECT reason, count(*) FROM {_STAGE} WHERE reason IS NOT NULL GROUP BY reason"
        ).fetchall()
    }
    reject_reasons = {r: reasons[r] for r in REJECT_REASONS if r in reasons}
    rejected = sum(reject_reasons.values())

    written: Path | None = None
    if not rejected:
        _remove_stale_rejects(rejects_path)
    else:
        written = _write_rejects(con, rejects_path)
        # A tiny tolerance so that e.g. 29 of 100 rows is within a limit of 0.29 despite float rounding.
        if rejected / rows_read > data.max_reject_share + 1e-12:
            raise TooManyRejectsError(rejected, rows_read, data.max_reject_share, str(written))

    con.execute(
        f"""
        CREATE OR REPLACE TABLE {EVENTS_TABLE} AS
        SELECT DISTINCT customer_id, occurred_at, event_type, value
        FROM {_STAGE}
        WHERE reason IS NULL AND NOT ({after})
        """
    )
    loaded = _count(con, EVENTS_TABLE)
    return LoadResult(
        files=files,
        rows_read=rows_read,
        rows_loaded=loaded,
        rows_rejected=rejected,
        rows_after_as_of=rows_after,
        rejects_path=written,
        reject_reasons=reject_reasons,
        duplicates=rows_read - rejected - rows_after - loaded,
    )


def _remove_stale_rejects(path: Path) -> None:
    """Delete a rejects file left by an earlier load, so the file on disk always describes the latest one.

    Only a file that starts with our own header is removed: a mistyped rejects_path never costs a user's file.
    """
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with path.open(encoding="utf-8") as fh:
            header = fh.readline().strip()
        if header == _REJECTS_HEADER:
            path.unlink()


def _write_rejects(con: duckdb.DuckDBPyConnection, path: Path) -> Path:
    """Write the rejected rows (source file, line, reason, raw fields) as CSV, in file and line order."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con.execute(
            f"""
            COPY (
                SELECT f.path AS source_file,
                       s.rowid - f.first_row + f.line_offset AS source_line,
                       s.reason,
                       s.raw_customer_id AS customer_id,
                       s.raw_occurred_at AS occurred_at,
                       s.raw_event_type AS event_type,
                       s.raw_value AS value
                FROM {_STAGE} AS s JOIN {_FILES} AS f USING (file_index)
                WHERE s.reason IS NOT NULL
                ORDER BY s.file_index, source_line
            ) TO {_lit(str(path))} (FORMAT csv, HEADER true)
            """
        )
    except (OSError, duckdb.Error) as exc:
        raise DataError(
            f"{path}: cannot write the rejects file ({_short(exc)})",
            remedy="Check data.rejects_path and that its folder is writable",
        ) from None
    return path
