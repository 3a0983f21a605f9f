"""The attribute store: current predictions, their history, what each destination acknowledged, and runs.

One class, :class:`AttributeStore`, over SQLAlchemy Core on SQLite (the default, in WAL mode) or PostgreSQL
(psycopg 3). Tables are described in :mod:`churnsync.store.schema`; Alembic migrations in ``migrations/``
create them and are applied by :meth:`AttributeStore.open`.

Bulk work is set-based: a run's predictions (one table, or an iterable of chunks) are staged into a temporary
table, one row per customer (executemany on SQLite, COPY on PostgreSQL), then a few statements find the changed
values (per-attribute rules: absolute and relative tolerance, rounding, day granularity, ``unless_changed``
coupling), move the values they replace to the history (which holds past values only), upsert them into the current
values, record which run last scored each customer, and mark the customers whose wanted state may have moved with
the write's number from the change counter. The next
sync's changes are computed once per selection in SQL (with the destination's policy for customers no longer scored
and for predictions older than a TTL), from the customers marked since that destination's last selection, those it
left pending and those its policy drops since (every customer the first time), then streamed. Nothing loops per
customer in SQL round trips.

Two runs cannot interleave: :meth:`AttributeStore.run_lock` (an advisory lock on PostgreSQL, a lock row on
SQLite). History older than a retention is compacted by :meth:`AttributeStore.compact_history`, and
:meth:`AttributeStore.export` writes every customer's attributes, current or as of a date.

Example::

    store = AttributeStore.open("sqlite:///churnsync.db")
    with store.run_lock("churnsync run"):  # StoreLockedError names the holder if another run has it
        run = store.start_prediction_run(as_of=cut, horizon_days=30, model_version="bgnbd-1", details={})
        summary = store.write_predictions(run, table, settings.attributes)
        store.finish_prediction_run(run, status="succeeded", summary={"values_changed": summary.values_changed})
        for chunk in store.select_changes("braze", mode="mirror", ttl=timedelta(days=30)):
            ...  # send, then store.record_batch(sync_run_id, "braze", outcome)
    store.close()
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import re
import socket
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from io import BytesIO
from itertools import chain, groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url

from churnsync.errors import StoreError, StoreLockedError
from churnsync.records import BatchOutcome, Change, SyncCounts, Value
from churnsync.store import schema as s

if TYPE_CHECKING:
    import pyarrow as pa

    from churnsync.config import AttributeSettings

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

#: How long a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLite page cache per connection (KiB), for the store and for its temporary tables.
SQLITE_CACHE_KIB = 65_536
#: SQLite page size of a new store (bytes).
SQLITE_PAGE_BYTES = 16_384
#: PostgreSQL sort memory for the duration of a write (the server default, 4 MB, spills to disk).
POSTGRES_WRITE_WORK_MEM = "256MB"
#: PostgreSQL advisory lock held while migrating ("chsy"); SQLite's BEGIN IMMEDIATE does the same job.
MIGRATION_LOCK_KEY = 0x63687379
#: Customers converted and staged at a time: bounds the memory of a write, whatever the run's size.
STAGE_CHUNK_CUSTOMERS = 50_000
#: Rows fetched per round trip (or per chunk of a stream) while streaming the sync selection.
SELECT_FETCH_ROWS = 10_000
#: SQLite: up to this many attribute names, a selection writes each code's name into its statement (a CASE).
CASE_NAMES = 256
#: SQLite: how the selection's JSON objects write a number (17 significant digits; see ``_json_value``).
JSON_NUMBER_FORMAT = "%!.17g"
#: The libpq version (17) from which a result streams in chunks of rows (psycopg's ``stream(size=...)``).
CHUNKED_ROWS_LIBPQ = 170_000
#: PostgreSQL: a table with more rows changed since its last ANALYZE than this (and a tenth of its size) is analysed
#: before a bulk statement is planned on it.
ANALYZE_AFTER_CHANGED_ROWS = 10_000
#: PostgreSQL: below this share of all customers, a change-driven selection looks candidates up by key (nested loops).
SELECT_LOOKUP_SHARE = 0.25
#: PostgreSQL: a write whose changed values are fewer than this share of the current values updates them by key
#: lookups; more, by one merge of the changes with every current value.
UPDATE_LOOKUP_SHARE = 0.25
#: PostgreSQL: the plan methods turned off so that joins of whole tables are merges of their primary keys.
_MERGE_IN_KEY_ORDER = ("hashjoin", "sort")
#: PostgreSQL: how the store's sessions compress the whole pages they write to the WAL, best first, where the server
#: does not and the store's role may (:meth:`AttributeStore._compress_full_pages`).
WAL_COMPRESSION_METHODS = ("lz4", "zstd", "pglz")
#: A move of exactly the tolerance counts as a change; this absorbs binary rounding (0.58 - 0.56 < 0.02).
TOLERANCE_SLACK = 1e-9

#: PostgreSQL run lock: a two-key session advisory lock ("chsr", the schema's hash), one per store.
RUN_LOCK_KEY = 0x63687372
_PG_RUN_LOCK = f"{RUN_LOCK_KEY}, hashtext(current_schema())"
#: The one row of store_lock.
RUN_LOCK_NAME = "run"

_FINAL_STATUSES = ("succeeded", "failed", "partial")


@dataclass(frozen=True)
class WriteSummary:
    """What one :meth:`AttributeStore.write_predictions` call changed."""

    customers_scored: int
    customers_new: int
    customers_changed: int
    values_changed: int
    #: What the database server's settings cost this write, and what to change (:func:`checkpoint_advice`); empty
    #: when nothing is to be said, and after a first load.
    advice: tuple[str, ...] = ()


def checkpoint_advice(
    written: int,
    seconds: float,
    *,
    max_wal_mb: float,
    completion_target: float,
    timeout_s: float,
    wal_compression: str = "lz4",
) -> str | None:
    """PostgreSQL: advice when one write spans the server's checkpoints (``written`` bytes of WAL in ``seconds``).

    The server checkpoints every ``checkpoint_timeout``, and sooner once the WAL since the last checkpoint reaches
    ``max_wal_size`` / (1 + ``checkpoint_completion_target``). After a checkpoint, the first change to each page writes
    the whole page to the WAL again, and the selection after a write changes every page of current values the write
    replaced (it prunes the replaced rows): without a checkpoint between the two it writes a few bytes per page, with
    one a whole page (at 10M customers 3 GB of WAL and 10 s more per selection; docs/benchmarks.md, "Where the 10M
    daily run's time goes"). Advised: room for twice this write's WAL (the write, then the selection and the sync)
    within one checkpoint distance, and a timeout of at least four times the write, so that a daily run seldom
    spans a timed checkpoint. When the write's session wrote its full-page images uncompressed
    (``wal_compression`` off: the server's setting, which the store's role may not change for its own sessions), the
    advice also asks for compression (:meth:`AttributeStore._compress_full_pages`).
    """
    distance = max_wal_mb * 2**20 / (1 + completion_target)
    raise_size = written >= distance
    raise_timeout = 4 * seconds > timeout_s
    if not (raise_size or raise_timeout):
        return None
    wanted = []
    if raise_size:
        wanted.append(f"max_wal_size to at least {math.ceil(2 * written * (1 + completion_target) / 2**30)} GB")
    if raise_timeout:
        wanted.append(f"checkpoint_timeout to at least {math.ceil(4 * seconds / 60)} min")
    compress = (
        ", and set wal_compression = lz4 (or grant the store's role SET on it: its sessions then compress their own)"
        if wal_compression == "off"
        else ""
    )
    spent = f"{written / 2**30:.1f} GB of WAL in {seconds:.0f} s"
    every = (
        f"{distance / 2**30:.2f} GB of WAL (max_wal_size {max_wal_mb:g} MB, checkpoint_completion_target "
        f"{completion_target:g}) or every {timeout_s:g} s (checkpoint_timeout)"
    )
    return (
        f"this write made the PostgreSQL server write {spent}; it checkpoints every {every}, and a checkpoint between "
        f"a write and its selection makes the selection rewrite whole pages to the WAL: raise {' and '.join(wanted)}"
        f"{compress} (docs/configuration.md)"
    )


@dataclass(frozen=True)
class HistoryEntry:
    """One change of one attribute of one customer, and when each destination acknowledged the new value.

    The value was current from ``changed_at`` until ``valid_to`` (``None``: still current).
    ``acknowledged`` maps a destination to the first time it acknowledged this value while it was current.
    """

    customer_id: str
    attribute: str
    old_value: Value
    new_value: Value
    prediction_run_id: int
    model_version: str
    changed_at: datetime
    valid_to: datetime | None
    acknowledged: dict[str, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class CompactSummary:
    """What one :meth:`AttributeStore.compact_history` call removed."""

    boundary: datetime
    history_deleted: int
    acks_deleted: int


def _pivot(rows: list[Any], schema: pa.Schema, codes: Sequence[int]) -> pa.Table:
    """Long rows (customer_id, attribute code, num, text), ordered by customer, as one wide table of ``schema``, whose
    attribute columns have the attribute codes ``codes``."""
    import numpy as np
    import pyarrow as pa

    ids_col, attrs_col, nums_col, texts_col = zip(*rows, strict=True)
    ids = np.array(ids_col, dtype=object)
    attrs = np.array(attrs_col, dtype=np.int64)
    starts = np.concatenate(([True], ids[1:] != ids[:-1]))
    customer = np.cumsum(starts) - 1
    count = int(customer[-1]) + 1
    columns: list[Any] = [pa.array(ids[starts], pa.string())]
    all_numbers = pa.array(nums_col, pa.float64()).to_numpy(zero_copy_only=False)
    all_texts = np.array(texts_col, dtype=object)
    for name, code in zip(schema.names[1:], codes, strict=True):
        mask = attrs == code
        where = customer[mask]
        if pa.types.is_string(schema.field(name).type):
            texts = np.full(count, None, dtype=object)
            texts[where] = all_texts[mask]
            columns.append(pa.array(texts, pa.string()))
        else:
            numbers = np.full(count, np.nan)
            present = np.zeros(count, dtype=bool)
            picked = all_numbers[mask]
            numbers[where] = picked
            present[where] = ~np.isnan(picked)
            columns.append(pa.array(numbers, pa.float64(), mask=~present))
    return pa.Table.from_arrays(columns, schema=schema)


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the store's migrations, without any alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _redact(url: str) -> str:
    """Hide a password in a URL that SQLAlchemy could not parse."""
    return re.sub(r"://([^:/@]*):[^@]*@", r"://\1:***@", url)


def _to_value(num: float | None, text: str | None) -> Value:
    if num is not None:
        return float(num)
    if text is not None:
        return str(text)
    return None


def _from_value(value: Value, where: str) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool):
        raise StoreError(f"{where}: boolean values are not stored", remedy="Publish booleans as numbers or strings")
    if isinstance(value, int | float):
        return float(value), None
    return None, str(value)


def _new_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None, "an INSERT of one row reports its key"
    return int(key[0])


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"{what} {value.isoformat()} has no time zone", remedy="Pass an aware UTC datetime")
    return value.astimezone(UTC)


def _enable_wal(cursor: Any) -> None:
    """Switch a SQLite database to WAL (a no-op once it is: the mode is kept in the file).

    Switching needs an exclusive lock, and SQLite answers "locked" at once, without its busy handler, while
    another connection opening the same new file holds a lock: retry for up to the busy timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


# The per-batch statements, as plain SQL: SQLAlchemy's per-row parameter processing cost more than the
# work itself, and this runs once per request of every sync. SQLite takes an executemany; PostgreSQL one
# statement over arrays (unnest), 3-4x faster there than executemany or a multi-row VALUES list.
_STATE_COLUMNS = "destination, customer_id, attribute_id, num_value, text_value, sync_run_id, acknowledged_at"
_STATE_UPSERT = (
    f"INSERT INTO destination_state ({_STATE_COLUMNS}) {{rows}} "
    "ON CONFLICT (destination, customer_id, attribute_id) DO UPDATE SET num_value = excluded.num_value, "
    "text_value = excluded.text_value, sync_run_id = excluded.sync_run_id, acknowledged_at = excluded.acknowledged_at"
)
#: The acknowledgements about to be replaced move into the log (revision 0008): the log holds the replaced rows, the
#: state the latest. SQLite: a move, then the upsert, per row. PostgreSQL: one statement for the whole batch, whose
#: CTE reads the state as it was before the upsert beside it.
_SQLITE_STATE_MOVE = (
    f"INSERT INTO destination_acks ({_STATE_COLUMNS}) SELECT {_STATE_COLUMNS} FROM destination_state "
    "WHERE destination = ? AND customer_id = ? AND attribute_id = ?"
)
_SQLITE_STATE_UPSERT = _STATE_UPSERT.format(rows="VALUES (?, ?, ?, ?, ?, ?, ?)")
_POSTGRESQL_STATE_WRITE = (
    "WITH u AS (SELECT * FROM unnest(%(customers)s::text[], %(attributes)s::int2[], %(nums)s::float8[], "
    "%(texts)s::text[]) AS u(customer_id, attribute_id, num_value, text_value)), "
    f"moved AS (INSERT INTO destination_acks ({_STATE_COLUMNS}) SELECT d.destination, d.customer_id, d.attribute_id, "
    "d.num_value, d.text_value, d.sync_run_id, d.acknowledged_at FROM destination_state d JOIN u "
    "ON d.customer_id = u.customer_id AND d.attribute_id = u.attribute_id WHERE d.destination = %(destination)s) "
    + _STATE_UPSERT.format(
        rows="SELECT %(destination)s, u.customer_id, u.attribute_id, u.num_value, u.text_value, %(run)s, %(stamp)s "
        "FROM u"
    )
)
_FAILURE_INSERT = {
    "sqlite": "INSERT INTO sync_failures (sync_run_id, seq, customer_id, reason) VALUES (?, ?, ?, ?)",
    "postgresql": (
        "INSERT INTO sync_failures (sync_run_id, seq, customer_id, reason) "
        "SELECT %s, %s, u.customer_id, u.reason FROM unnest(%s::text[], %s::text[]) AS u(customer_id, reason)"
    ),
}


# Staging: the run's values go into a temporary table, one row per customer (``_wide_stage``), gone at commit
# (PostgreSQL) or dropped explicitly (SQLite); a rules table (one row per attribute: its name and change threshold)
# expands it to one row per (customer, attribute) inside the database (``_long_stage``).
_stage_metadata = sa.MetaData()
_stage_rules = sa.Table(
    "churnsync_stage_rules",
    _stage_metadata,
    sa.Column("attr_idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("attribute_id", sa.SmallInteger, nullable=False),
    sa.Column("threshold", sa.Double, nullable=False),
    sa.Column("rel_threshold", sa.Double, nullable=False),
    sa.Column("text_len", sa.Integer, nullable=True),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)


def _selected_columns() -> list[Any]:
    return [
        sa.Column("customer_id", s.key_type(), nullable=False),
        sa.Column("attribute_id", sa.SmallInteger, nullable=False),
        sa.Column("num_value", sa.Double, nullable=True),
        sa.Column("text_value", sa.Text, nullable=True),
    ]


#: The sync selection's result, computed once per selection and streamed from (dropped when the stream ends).
_selected = sa.Table("churnsync_selected", _stage_metadata, *_selected_columns(), prefixes=["TEMPORARY"])
#: SQLite's: clustered on its key. The comparison produces rows in key order (B-tree appends), and the stream reads
#: them back in that order instead of sorting them (on PostgreSQL the index cost more than the sort it saves).
_selected_clustered = sa.Table(
    "churnsync_selected",
    sa.MetaData(),
    *_selected_columns(),
    sa.PrimaryKeyConstraint("customer_id", "attribute_id"),
    prefixes=["TEMPORARY"],
    sqlite_with_rowid=False,
)
#: SQLite's, where its numbers read back exactly as JSON text (:meth:`AttributeStore._sqlite_exact_documents`): one
#: JSON object per customer (attribute → wanted value), clustered on the customer. An eighth of the rows to write,
#: read back and turn into Python objects; orjson parses each object in C.
_selected_documents = sa.Table(
    "churnsync_selected",
    sa.MetaData(),
    sa.Column("customer_id", s.key_type(), primary_key=True),
    sa.Column("document", sa.Text, nullable=False),
    prefixes=["TEMPORARY"],
    sqlite_with_rowid=False,
)


def _json_value(num: Any, text: Any) -> Any:
    """SQLite: a wanted value as JSON: text as a string, no value as null, and a number as 17 significant digits (every
    double reads back as itself from that many; SQLite's own JSON writes 15). SQLite 3.40 computes those digits
    exactly below about 1e100 but not above, so a number of 2**256 or more is written divided by a power of two (an
    exact division) as ``[digits, power]``, which :func:`_read_document` multiplies back."""
    digits = partial(sa.func.printf, JSON_NUMBER_FORMAT)
    size = sa.func.abs(num)
    scaled = [
        (size < sa.literal(2.0 ** (power + 256)), sa.func.json_array(sa.func.json(digits(num * 2.0**-power)), power))
        for power in (256, 512)
    ]
    return sa.case(
        (num.is_(None), text),
        (size < sa.literal(2.0**256), sa.func.json(digits(num))),
        *scaled,
        else_=sa.func.json_array(sa.func.json(digits(num * 2.0**-768)), 768),
    )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while one chunk of a selection is built (thousands of dicts, none in a cycle).

    Every 700 new containers start a collection, and every hundredth of those walks every object of the process:
    at 1M customers that was 2.5 s of a 5.8 s stream. It is back on (if it was on) before the chunk is handed over, so
    the consumer's code never runs without it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_document(document: str) -> dict[str, Value]:
    """SQLite: one customer's values from the JSON object :func:`_json_value` wrote."""
    values: dict[str, Any] = orjson.loads(document)
    if "[" in document:  # a number written scaled (or only a text with a bracket)
        for name, value in values.items():
            if type(value) is list:
                values[name] = math.ldexp(value[0], value[1])
    return values


#: The customers a change-driven selection compares (marked since the watermark, pending, newly dropped).
_candidates = sa.Table(
    "churnsync_candidates",
    _stage_metadata,
    sa.Column("customer_id", s.key_type(), primary_key=True),
    prefixes=["TEMPORARY"],
)
#: One write's changed values: the new value, and the current value it replaces (``old_run_id`` null: there was none,
#: the value is new). Filled by the comparison of the staged run with the current values; the history, the current
#: values, the counts and the change marks are all written from it.
_changes = sa.Table(
    "churnsync_changes",
    _stage_metadata,
    sa.Column("customer_id", s.key_type(), nullable=False),
    sa.Column("attribute_id", sa.SmallInteger, nullable=False),
    sa.Column("num_value", sa.Double, nullable=True),
    sa.Column("text_value", sa.Text, nullable=True),
    sa.Column("old_num", sa.Double, nullable=True),
    sa.Column("old_text", sa.Text, nullable=True),
    sa.Column("old_run_id", sa.Integer, nullable=True),
    sa.Column("old_since", s.UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint("customer_id", "attribute_id"),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
    sqlite_with_rowid=False,
)
#: The columns a write sets in attribute_values.
_VALUE_COLUMNS = ["customer_id", "attribute_id", "num_value", "text_value", "prediction_run_id", "updated_at"]
#: 0 written into the SQL, not bound: `last_run_id` 0 (the latest write's run) is in a partial index's predicate.
_ZERO = sa.literal_column("0", sa.Integer)
#: The store_counters row that numbers writes (see churnsync.store.schema.store_counters).
CHANGES_COUNTER = "changes"


def _wide_stage(plan: list[_Attribute]) -> sa.Table:
    """One row per customer and one column per attribute (``v0``, ``v1``…): an eighth of the rows of long staging.

    The primary key refuses a customer staged twice (across chunks of a streamed write).
    """
    columns: list[Any] = [sa.Column("customer_id", s.key_type(), primary_key=True)]
    columns += [sa.Column(f"v{a.idx}", sa.Double if a.kind == "num" else sa.Text, nullable=True) for a in plan]
    return sa.Table(
        "churnsync_stage",
        sa.MetaData(),
        *columns,
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
        sqlite_with_rowid=False,
    )


def _long_stage(wide: sa.Table, plan: list[_Attribute]) -> Any:
    """The wide stage as (customer, attribute) rows with each attribute's rule, computed in the query (no copy)."""
    rules = _stage_rules
    nums = [(rules.c.attr_idx == a.idx, wide.c[f"v{a.idx}"]) for a in plan if a.kind == "num"]
    texts = [(rules.c.attr_idx == a.idx, wide.c[f"v{a.idx}"]) for a in plan if a.kind != "num"]
    num: Any = sa.case(*nums, else_=sa.null()) if nums else sa.cast(sa.null(), sa.Double)
    text: Any = sa.case(*texts, else_=sa.null()) if texts else sa.cast(sa.null(), sa.Text)
    return (
        sa.select(
            wide.c.customer_id,
            rules.c.attr_idx,
            rules.c.attribute_id,
            rules.c.threshold,
            rules.c.rel_threshold,
            rules.c.text_len,
            num.label("num_value"),
            text.label("text_value"),
        )
        .select_from(wide.join(rules, sa.true()))
        .subquery("st")
    )


def run_changes(run_id: int, tables: tuple[sa.Table, sa.Table] | None = None) -> Any:
    """The values prediction run ``run_id`` set, with the values they replaced, as a subquery.

    Columns ``customer_id``, ``attribute`` (the name), ``old_num``, ``old_text`` (null: the value was new),
    ``new_num`` and ``new_text``. A value the run set is current, or in the history if a later run replaced it; the
    value it replaced is the past value that ended when it began, replaced by this run. ``tables``: (history, values)
    as a store before revision 0010 has them, with the name in each row (the dashboard).
    """
    h, v = tables or (s.attribute_history, s.attribute_values)
    key = s.attribute_key(v)
    set_by_run = sa.union_all(
        sa.select(v.c.customer_id, v.c[key], v.c.num_value, v.c.text_value, v.c.updated_at.label("since")).where(
            v.c.prediction_run_id == run_id
        ),
        sa.select(h.c.customer_id, h.c[key], h.c.num_value, h.c.text_value, h.c.valid_from).where(
            h.c.prediction_run_id == run_id
        ),
    ).subquery("set_by_run")
    old = h.alias("old")
    replaced = sa.and_(
        old.c.customer_id == set_by_run.c.customer_id,
        old.c[key] == set_by_run.c[key],
        old.c.replaced_by_run_id == run_id,
        old.c.valid_to == set_by_run.c.since,
    )
    changes = sa.select(
        set_by_run.c.customer_id,
        set_by_run.c[key],
        old.c.num_value.label("old_num"),
        old.c.text_value.label("old_text"),
        set_by_run.c.num_value.label("new_num"),
        set_by_run.c.text_value.label("new_text"),
    ).select_from(set_by_run.outerjoin(old, replaced))
    return s.by_name(changes, "run_changes")


@dataclass(frozen=True)
class _Attribute:
    name: str
    idx: int
    kind: str  # "num" | "text" | "time" | "date"
    round: int | None
    threshold: float
    rel_threshold: float = 0.0
    text_len: int | None = None  # compare only this many leading characters (day granularity of times)
    unless_changed: tuple[str, ...] = ()
    code: int = 0  # its code in ``attributes``, given in the write's transaction


def _plan_columns(table: pa.Table, attributes: AttributeSettings) -> list[_Attribute]:
    """Check the predictions table and decide, per attribute column, how it is stored."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(table.schema.names)
    if "customer_id" not in names:
        raise StoreError(
            f"predictions table has no customer_id column (columns: {', '.join(names)})",
            remedy="Pass a table with a string customer_id column and one column per attribute",
        )
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise StoreError(
            f"predictions table repeats columns {', '.join(dupes)}", remedy="Give each attribute one column"
        )
    id_type = table.schema.field("customer_id").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type) or pa.types.is_string_view(id_type)):
        raise StoreError(
            f"predictions table: customer_id is {id_type}, not a string",
            remedy="Cast customer ids to strings before storing them",
        )
    ids = table.column("customer_id")
    if ids.null_count:
        raise StoreError(
            f"predictions table: {ids.null_count} rows have no customer_id",
            remedy="Drop rows without a customer id before storing predictions",
        )
    if table.num_rows and pc.count_distinct(ids).as_py() != table.num_rows:
        raise StoreError(
            "predictions table: a customer_id appears more than once",
            remedy="Score each customer once per run",
        )
    plan: list[_Attribute] = []
    for name in names:
        if name == "customer_id":
            continue
        if not name or len(name) > 255:
            raise StoreError(
                f"predictions table: attribute name {name!r} is empty or longer than 255 characters",
                remedy="Rename the attribute",
            )
        dtype = table.schema.field(name).type
        if pa.types.is_floating(dtype) or pa.types.is_integer(dtype) or pa.types.is_null(dtype):
            kind = "num"
        elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
            kind = "text"
        elif pa.types.is_timestamp(dtype):
            kind = "time"
        elif pa.types.is_date(dtype):
            kind = "date"
        else:
            raise StoreError(
                f"predictions table: attribute {name!r} has type {dtype}, which the store cannot keep",
                remedy="Publish numbers as float64, and tiers or times as strings",
            )
        rule = attributes.rule_for(name)
        tolerance = float(rule.abs_tolerance) if kind == "num" else 0.0
        threshold = tolerance - min(TOLERANCE_SLACK, tolerance * 1e-3)
        relative = float(rule.rel_tolerance) if kind == "num" else 0.0
        rel_threshold = relative - min(TOLERANCE_SLACK, relative * 1e-3)
        text_len = len("YYYY-MM-DD") if kind == "time" and rule.granularity == "day" else None
        coupled = tuple(c for c in rule.unless_changed if c != name and c in names)
        plan.append(
            _Attribute(
                name,
                len(plan),
                kind,
                rule.round if kind == "num" else None,
                threshold,
                rel_threshold,
                text_len,
                coupled,
            )
        )
    return plan


def _prediction_chunks(
    table: pa.Table | Iterable[pa.Table | pa.RecordBatch], attributes: AttributeSettings
) -> tuple[list[_Attribute], Iterator[pa.Table]]:
    """The storage plan (from the first chunk) and every chunk, each checked as it comes."""
    import pyarrow as pa

    source: Iterator[Any] = iter([table]) if isinstance(table, pa.Table | pa.RecordBatch) else iter(table)
    first = next(source, None)
    if first is None:
        return [], iter(())
    head = pa.Table.from_batches([first]) if isinstance(first, pa.RecordBatch) else first
    plan = _plan_columns(head, attributes)

    def chunks() -> Iterator[pa.Table]:
        yield head
        for number, item in enumerate(source, start=2):
            chunk = pa.Table.from_batches([item]) if isinstance(item, pa.RecordBatch) else item
            if not chunk.schema.equals(head.schema):
                raise StoreError(
                    f"predictions chunk {number} has columns {chunk.schema.names}, not those of the first chunk",
                    remedy="Give every chunk of one write the same columns and types",
                )
            _plan_columns(chunk, attributes)  # ids present, strings, unique within the chunk
            yield chunk

    return plan, chunks()


def _column_values(batch: Any, attr: _Attribute) -> tuple[Any, Any]:
    """One attribute column of a batch as (numbers, texts) Arrow arrays; the unused one is all null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = batch.column(attr.name)
    n = len(column)
    if attr.kind == "num":
        numbers = column.cast(pa.float64())
        # NaN and ±inf are no value: Braze cannot take them in JSON, and the engines disagree on storing NaN.
        numbers = pc.if_else(pc.is_finite(numbers), numbers, pa.scalar(None, pa.float64()))
        if attr.round is not None:
            numbers = pc.round(numbers, ndigits=attr.round)
        return numbers, pa.nulls(n, pa.string())
    if attr.kind == "time":
        utc = column.cast(pa.timestamp("s", tz="UTC"), safe=False)
        texts = pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ")
    elif attr.kind == "date":
        texts = pc.strftime(column.cast(pa.date32()), format="%Y-%m-%d")
    else:
        texts = column.cast(pa.string())
    return pa.nulls(n, pa.float64()), texts


class AttributeStore:
    """The attribute store on SQLite or PostgreSQL; see the module docstring for an example.

    ``clock`` returns the current time (aware, UTC); tests inject a fixed one. Every database error
    becomes a :class:`~churnsync.errors.StoreError` naming the store (never its password) and a remedy.
    """

    def __init__(self, url: str, *, clock: Callable[[], datetime] | None = None) -> None:
        self._url = self._parse_url(url)
        self.url = self._url.render_as_string(hide_password=True)
        self._clock = clock or _utcnow
        self._dialect = self._url.get_backend_name()
        self._told_compression = False
        self._documents_exact: bool | None = None
        try:
            self._engine = self._create_engine()
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"store {self.url}: cannot create a database engine ({exc})",
                remedy="Use sqlite:///path/to/churnsync.db or postgresql+psycopg://user@host/database",
            ) from exc
        # The dialect's own processor: SQLite's writes the same text as SQLAlchemy (with microseconds), so raw
        # SQL stamps compare as strings with stamps written through SQLAlchemy.
        self._time_to_db = s.UtcDateTime().dialect_impl(self._engine.dialect).bind_processor(self._engine.dialect)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], datetime] | None = None) -> AttributeStore:
        """Connect to the store at ``url`` and migrate it to the newest schema."""
        store = cls(url, clock=clock)
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    def migrate(self) -> None:
        """Apply every pending migration (``alembic upgrade head``); a no-op on an up-to-date store."""
        with self._transaction("migrate the schema", write=True) as conn:
            if self._dialect == "postgresql":  # two processes opening a new store must not both create it
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            config = alembic_config(conn)
            script = ScriptDirectory.from_config(config)
            for revision in MigrationContext.configure(conn).get_current_heads():
                try:
                    script.get_revision(revision)
                except (CommandError, RevisionError):
                    raise StoreError(
                        f"store {self.url} has schema revision {revision}, newer than this churnsync knows",
                        remedy="Upgrade churnsync (pip install -U churnsync) to use this store",
                    ) from None
            command.upgrade(config, "head")

    def close(self) -> None:
        """Release every connection."""
        self._engine.dispose()

    # ------------------------------------------------------------------ the run lock

    @contextmanager
    def run_lock(self, owner: str) -> Iterator[None]:
        """Hold the store's run lock for the ``with`` block: two runs against one store cannot interleave.

        PostgreSQL: a session advisory lock held on a dedicated connection (it ends with that session, so a
        crashed run never leaves it behind), plus a ``store_lock`` row describing the holder. SQLite: the
        ``store_lock`` row itself, inserted in a write transaction; a row left by a process that is gone from
        this host is taken over. Raises :class:`~churnsync.errors.StoreLockedError` naming the holder.
        """
        token = uuid.uuid4().hex
        holder = {"owner": owner[:200], "host": socket.gethostname()[:255], "pid": os.getpid(), "token": token}
        if self._dialect == "sqlite":
            self._take_lock_row(holder, takeover=self._holder_gone)
            try:
                yield
            except BaseException:
                # The run's own error is the one to report (a locked or lost store fails the release too).
                with suppress(Exception):
                    self._drop_lock_row(token)
                raise
            self._drop_lock_row(token)
            return
        session = self._lock_session()
        try:
            if not self._try_advisory(session):
                raise StoreLockedError(self.url, self.lock_holder())
            try:
                # The advisory lock is ours: any row left is a crashed holder's description.
                self._take_lock_row(holder, takeover=lambda _row: True)
                yield
            except BaseException:
                # The run's own error is the one to report: a lost connection fails the release too, and the
                # advisory lock ends with its session anyway (a row left behind is taken over by the next holder).
                with suppress(Exception):
                    try:
                        self._drop_lock_row(token)
                    finally:
                        self._unlock_advisory(session)
                raise
            else:
                try:
                    self._drop_lock_row(token)
                finally:
                    self._unlock_advisory(session)
        finally:
            session.close()

    def lock_holder(self) -> dict[str, Any] | None:
        """Who holds the run lock: ``owner``, ``host``, ``pid``, ``acquired_at`` and ``stale`` (None: nobody).

        ``stale`` is True when the holder is certainly gone: on PostgreSQL the advisory lock is free; on SQLite
        the holder's process no longer exists on this host.
        """
        with self._transaction("read the run lock") as conn:
            row = self._lock_row(conn)
        if row is None:
            return None
        if self._dialect == "postgresql":
            session = self._lock_session()
            try:
                stale = self._try_advisory(session)
                if stale:
                    self._unlock_advisory(session)
            finally:
                session.close()
        else:
            stale = self._holder_gone(row)
        return {
            "owner": row["owner"],
            "host": row["host"],
            "pid": row["pid"],
            "acquired_at": row["acquired_at"],
            "stale": stale,
        }

    def clear_lock(self, *, force: bool = False) -> bool:
        """Remove a stale run lock and say whether one was removed.

        A lock is stale when its holder's process is gone from this host (SQLite) or the advisory lock is free
        (PostgreSQL). ``force`` clears a live lock too; on PostgreSQL that terminates the holder's database
        session, so the holding run fails at its next statement.
        """
        if self._dialect == "sqlite":
            with self._transaction("clear the run lock", write=True) as conn:
                row = self._lock_row(conn)
                if row is None or not (force or self._holder_gone(row)):
                    return False
                conn.execute(s.store_lock.delete())
                return True
        session = self._lock_session()
        try:
            free = self._try_advisory(session)
            terminated = False
            if not free and force:
                self._terminate_holder(session)
                terminated = True
                free = self._try_advisory(session)
            if not free:
                return False
            try:
                with self._transaction("clear the run lock", write=True) as conn:
                    removed = conn.execute(s.store_lock.delete()).rowcount
            finally:
                self._unlock_advisory(session)
            return bool(removed) or terminated
        finally:
            session.close()

    def __enter__(self) -> AttributeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ prediction runs

    def start_prediction_run(
        self, *, as_of: datetime, horizon_days: int, model_version: str, details: Mapping[str, Any]
    ) -> int:
        """Record the start of a prediction run (status ``running``) and return its id."""
        as_of = _aware(as_of, "as_of")
        now = self._now()
        with self._transaction("start a prediction run", write=True) as conn:
            result = conn.execute(
                s.prediction_runs.insert().values(
                    started_at=now,
                    status="running",
                    as_of=as_of,
                    horizon_days=horizon_days,
                    model_version=model_version,
                    details=dict(details),
                )
            )
            return _new_id(result)

    def write_predictions(
        self, run_id: int, table: pa.Table | Iterable[pa.Table | pa.RecordBatch], attributes: AttributeSettings
    ) -> WriteSummary:
        """Store one run's predictions: only values that really changed replace current ones (moved to the history).

        ``table`` holds a string ``customer_id`` column and one column per attribute: numbers (rounded by
        the attribute's rule; NaN and ±inf are stored as no value), strings, timestamps (stored as ISO 8601
        UTC text with ``Z``) or dates. A value changed when it is new, turns null or non-null, differs as
        text, or (numbers) moved by at least the rule's ``abs_tolerance`` (any move when that is 0). A
        missing value and a null are the same: a customer's first null is no change.

        Customers already in the store but absent from ``table`` are left as they are.

        ``table`` may also be an iterable of tables or record batches with one schema (e.g. a Parquet file read
        batch by batch): they are written in one transaction, and only one chunk is in memory at a time.
        """
        plan, chunks = _prediction_chunks(table, attributes)
        now = self._now()
        wal_start, started = self._server_wal(), time.monotonic()
        with self._transaction(f"write predictions of run {run_id}", write=True) as conn:
            self._require_running(conn, run_id)
            # Numbers this write's marks; the counter row stays locked until commit (selections wait for it).
            seq = self._next_change_seq(conn)
            codes = self._attribute_codes(conn, (a.name for a in plan))
            plan = [replace(a, code=codes[a.name]) for a in plan]
            if self._dialect == "postgresql":
                self._tune_bulk_transaction(conn)
            wide = _wide_stage(plan)
            self._create_stage(conn, wide, plan)
            scored = self._fill_stage(conn, wide, chunks, plan)
            summary, changed = self._apply_stage(conn, run_id, now, wide, plan, scored=scored)
            if plan and scored:
                self._mark_scored(
                    conn, run_id, wide, seq=seq, changed=changed, changed_customers=summary.customers_changed
                )
            if self._dialect == "postgresql":
                # Autovacuum analyses a grown table only later: the selection is planned with the real sizes.
                self._analyze_if_grown(conn, "customers", summary.customers_new)
                self._analyze_if_grown(conn, "attribute_values", summary.values_changed)
                self._analyze_if_grown(conn, "attribute_history", summary.values_changed)
            if self._dialect == "sqlite":
                conn.exec_driver_sql("DROP TABLE temp.churnsync_stage")
                conn.exec_driver_sql("DROP TABLE temp.churnsync_stage_rules")
                conn.exec_driver_sql("DROP TABLE IF EXISTS temp.churnsync_changes")
            runs = s.prediction_runs
            conn.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    customers_scored=runs.c.customers_scored + summary.customers_scored,
                    customers_new=runs.c.customers_new + summary.customers_new,
                    customers_changed=runs.c.customers_changed + summary.customers_changed,
                    values_changed=runs.c.values_changed + summary.values_changed,
                )
            )
        # Not after a first load: it writes every value once, and leaves no replaced rows for the next reader to prune.
        replaced = summary.customers_scored > summary.customers_new
        advice = self._checkpoint_advice(wal_start, time.monotonic() - started) if replaced else None
        return replace(summary, advice=(advice,)) if advice else summary

    def finish_prediction_run(self, run_id: int, *, status: str, summary: Mapping[str, Any]) -> None:
        """Close a prediction run with its final status (succeeded, failed or partial) and summary."""
        self._check_status(status)
        now = self._now()
        runs = s.prediction_runs
        with self._transaction(f"finish prediction run {run_id}", write=True) as conn:
            result = conn.execute(
                runs.update().where(runs.c.id == run_id).values(finished_at=now, status=status, summary=dict(summary))
            )
            if result.rowcount == 0:
                raise StoreError(f"prediction run {run_id} does not exist", remedy="Pass the id it was started with")

    def prediction_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent prediction runs, newest first."""
        runs = s.prediction_runs
        with self._transaction("list prediction runs") as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.id.desc()).limit(limit))
            return [dict(row._mapping) for row in rows]

    # ------------------------------------------------------------------ sync runs

    def start_sync_run(self, destination: str, *, prediction_run_id: int | None) -> int:
        """Record the start of a sync to ``destination`` (status ``running``) and return its id."""
        now = self._now()
        with self._transaction(f"start a sync run to {destination}", write=True) as conn:
            result = conn.execute(
                s.sync_runs.insert().values(
                    destination=destination,
                    prediction_run_id=prediction_run_id,
                    started_at=now,
                    status="running",
                )
            )
            return _new_id(result)

    def select_changes(
        self,
        destination: str,
        *,
        chunk_size: int = 5000,
        mode: str = "upsert",
        ttl: timedelta | None = None,
        now: datetime | None = None,
    ) -> Iterator[list[Change]]:
        """Stream, in chunks of ``chunk_size`` customers ordered by id, what differs from ``destination``.

        Each :class:`Change` holds only the attributes whose wanted value differs from what the
        destination acknowledged (numbers as float, text as str, a deleted value as None). An attribute
        never acknowledged counts as null there, so a null current value that was never sent is no change.
        The wanted value is the current value, except null for every attribute of a customer who is
        no longer scored (absent from the latest succeeded prediction run) when ``mode`` is ``"mirror"``,
        and of a customer whose last scoring run started more than ``ttl`` before ``now`` (default: the
        store's clock). The selection is computed at the first ``next()`` (waiting for a write in progress) and
        then streamed; batches may be recorded meanwhile.

        It compares only candidates once ``destination`` has a watermark from a selection with the same ``mode``
        and TTL: customers marked by writes since, those that selection returned (until a selection finds them
        acknowledged; on PostgreSQL a destination's first selection counts every customer as returned), and those the
        policy drops since; the watermark and pending set move with every selection, dry runs included, and
        :meth:`record_batch` removes acknowledged customers from the pending set. The result is the same as comparing
        everyone.
        """
        if chunk_size < 1:
            raise StoreError(f"chunk_size must be at least 1, not {chunk_size}", remedy="Pass a positive size")
        if mode not in ("upsert", "mirror"):
            raise StoreError(f"selection mode {mode!r} is not known", remedy="Use 'upsert' or 'mirror'")
        if ttl is not None and ttl <= timedelta(0):
            raise StoreError(f"ttl must be positive, not {ttl}", remedy="Pass a positive timedelta or None")
        cutoff = None if ttl is None else (self._now() if now is None else _aware(now, "now")) - ttl
        return self._stream_changes(destination, chunk_size, mirror=mode == "mirror", cutoff=cutoff)

    def record_batch(
        self,
        sync_run_id: int,
        destination: str,
        outcome: BatchOutcome,
        *,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """Journal one acknowledged request and, in the same transaction, what the destination now holds.

        Writes the ``sync_batches`` row, upserts ``destination_state`` for every accepted attribute, appends
        them to ``destination_acks`` (the log that :meth:`history` reads), one ``sync_failures`` row per
        refused customer, and removes the accepted customers from the destination's pending set (the next selection
        compares them only if a write marks them). This is the only writer of acknowledged state.
        """
        now = self._now()
        stamp = self._db_time(now)
        state: dict[tuple[str, str], tuple[float | None, str | None]] = {}
        for change in outcome.accepted:
            for attribute, value in change.values.items():
                where = f"batch {outcome.seq}, customer {change.customer_id}, {attribute}"
                state[(change.customer_id, attribute)] = _from_value(value, where)
        failures = [(f.customer_id, f.reason) for f in outcome.failed]
        action = f"record batch {outcome.seq} of sync run {sync_run_id}"
        with self._transaction(action, write=True) as conn:
            if self._dialect == "postgresql":
                # One commit per request: not waiting for the WAL flush more than doubles the rate. A server
                # crash may lose the last few acknowledgements (never corrupt them): those are sent again.
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            self._require_sync_run(conn, sync_run_id, destination)
            conn.execute(
                s.sync_batches.insert().values(
                    sync_run_id=sync_run_id,
                    seq=outcome.seq,
                    http_status=outcome.http_status,
                    attempts=outcome.attempts,
                    accepted=len(outcome.accepted),
                    failed=len(outcome.failed),
                    data_points=outcome.data_points,
                    acknowledged_at=now,
                )
            )
            if state:
                self._write_state(conn, destination, sync_run_id, stamp, state)
            if outcome.accepted:
                self._clear_pending(conn, destination, [change.customer_id for change in outcome.accepted])
            if failures:
                self._write_failures(conn, sync_run_id, outcome.seq, failures)
            if also is not None:  # the sync journal's acknowledgement (churnsync.store.ledger): same commit
                also(conn)

    def finish_sync_run(self, sync_run_id: int, *, status: str, counts: SyncCounts, error: str | None = None) -> None:
        """Close a sync run with its final status (succeeded, failed or partial), totals and error."""
        self._check_status(status)
        now = self._now()
        runs = s.sync_runs
        with self._transaction(f"finish sync run {sync_run_id}", write=True) as conn:
            result = conn.execute(
                runs.update()
                .where(runs.c.id == sync_run_id)
                .values(
                    finished_at=now,
                    status=status,
                    selected=counts.selected,
                    sent=counts.sent,
                    accepted=counts.accepted,
                    failed=counts.failed,
                    data_points=counts.data_points,
                    requests=counts.requests,
                    retries=counts.retries,
                    rate_limited=counts.rate_limited,
                    error=error,
                )
            )
            if result.rowcount == 0:
                raise StoreError(f"sync run {sync_run_id} does not exist", remedy="Pass the id it was started with")

    def sync_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent sync runs, newest first."""
        runs = s.sync_runs
        with self._transaction("list sync runs") as conn:
            rows = conn.execute(sa.select(runs).order_by(runs.c.id.desc()).limit(limit))
            return [dict(row._mapping) for row in rows]

    # ------------------------------------------------------------------ reading state

    def acknowledged_state(self, destination: str) -> dict[str, dict[str, Value]]:
        """What ``destination`` acknowledged, per customer and attribute (None: a value it deleted)."""
        d = s.named(s.destination_state)
        query = (
            sa.select(d.c.customer_id, d.c.attribute, d.c.num_value, d.c.text_value)
            .where(d.c.destination == destination)
            .order_by(d.c.customer_id, d.c.attribute)
        )
        with self._transaction(f"read the state acknowledged by {destination}") as conn:
            return self._nest(conn.execute(query))

    def current_values(self, customer_id: str | None = None) -> dict[str, dict[str, Value]]:
        """Current values per customer and attribute (None: a value that turned null); one customer or all."""
        v = s.named(s.attribute_values)
        query = sa.select(v.c.customer_id, v.c.attribute, v.c.num_value, v.c.text_value).order_by(
            v.c.customer_id, v.c.attribute
        )
        if customer_id is not None:
            query = query.where(v.c.customer_id == customer_id)
        with self._transaction("read current values") as conn:
            return self._nest(conn.execute(query))

    def history(self, customer_id: str) -> list[HistoryEntry]:
        """Every change of a customer's attributes in time order, and when each destination acknowledged it.

        Each value the customer held (past values from the history, then the current value) is one entry; its old
        value is the one before it (None for the first value, and for the oldest value left by compaction).
        """
        h, v, runs = s.attribute_history, s.attribute_values, s.prediction_runs
        a = s.acknowledgements(customer_id)
        past = sa.select(
            h.c.attribute_id,
            h.c.num_value,
            h.c.text_value,
            h.c.prediction_run_id,
            h.c.valid_from,
            h.c.valid_to,
            sa.literal(0).label("is_current"),
            h.c.id.label("seq"),
        ).where(h.c.customer_id == customer_id)
        current = sa.select(
            v.c.attribute_id,
            v.c.num_value,
            v.c.text_value,
            v.c.prediction_run_id,
            v.c.updated_at,
            sa.type_coerce(sa.null(), s.UtcDateTime()),
            sa.literal(1),
            sa.literal(0),
        ).where(v.c.customer_id == customer_id)
        held = s.named(sa.union_all(past, current).subquery("held_ids"), "held")
        # Time order; values set at the same instant (a test clock) in the order of their runs, past before current.
        order = (held.c.valid_from, held.c.prediction_run_id, held.c.is_current, held.c.seq)
        changes = sa.select(
            held.c.attribute,
            sa.func.lag(held.c.num_value).over(partition_by=held.c.attribute, order_by=order).label("old_num"),
            sa.func.lag(held.c.text_value).over(partition_by=held.c.attribute, order_by=order).label("old_text"),
            held.c.num_value.label("new_num"),
            held.c.text_value.label("new_text"),
            held.c.prediction_run_id,
            held.c.valid_from.label("changed_at"),
            held.c.valid_to,
            sa.func.row_number().over(order_by=(*order, held.c.attribute)).label("id"),
        ).subquery("changes")
        entries_query = (
            sa.select(changes, runs.c.model_version)
            .join(runs, runs.c.id == changes.c.prediction_run_id)
            .order_by(changes.c.id)
        )
        # An acknowledgement belongs to a value when it carries that value while the value was current.
        acks_query = (
            sa.select(changes.c.id, a.c.destination, sa.func.min(a.c.acknowledged_at).label("acknowledged_at"))
            .join(
                a,
                sa.and_(
                    a.c.attribute == changes.c.attribute,
                    a.c.num_value.is_not_distinct_from(changes.c.new_num),
                    a.c.text_value.is_not_distinct_from(changes.c.new_text),
                    a.c.acknowledged_at >= changes.c.changed_at,
                    sa.or_(changes.c.valid_to.is_(None), a.c.acknowledged_at < changes.c.valid_to),
                ),
            )
            .group_by(changes.c.id, a.c.destination)
        )
        with self._transaction(f"read the history of customer {customer_id}") as conn:
            acks: dict[int, dict[str, datetime]] = {}
            for row in conn.execute(acks_query):
                acks.setdefault(row.id, {})[row.destination] = row.acknowledged_at
            return [
                HistoryEntry(
                    customer_id=customer_id,
                    attribute=row.attribute,
                    old_value=_to_value(row.old_num, row.old_text),
                    new_value=_to_value(row.new_num, row.new_text),
                    prediction_run_id=row.prediction_run_id,
                    model_version=row.model_version,
                    changed_at=row.changed_at,
                    valid_to=row.valid_to,
                    acknowledged=dict(sorted(acks.get(row.id, {}).items())),
                )
                for row in conn.execute(entries_query)
            ]

    # ------------------------------------------------------------------ history retention and export

    def compact_history(self, older_than_days: int) -> CompactSummary:
        """Drop history older than ``older_than_days`` days without changing the current state.

        Past values replaced at or before the boundary are deleted; the value current at the boundary (a past
        value replaced after it, or the current value) stays: current values and as-of reads at or after the
        boundary are unchanged. Acknowledgements are compacted the same way per destination: a replaced one
        (``destination_acks``) goes when a later one came before the boundary, the latest (``destination_state``)
        stays; the first acknowledgement of a kept change may then show as a later one.
        """
        if older_than_days < 1:
            raise StoreError(
                f"older_than_days must be at least 1, not {older_than_days}", remedy="Pass a positive number of days"
            )
        boundary = self._now() - timedelta(days=older_than_days)
        h, a, d = s.attribute_history, s.destination_acks, s.destination_state
        later_a = a.alias("later")
        # A replaced acknowledgement goes when a later one of its key came before the boundary: a later replaced one,
        # or the latest (destination_state, always later than the replaced ones of its key).
        acks_superseded = sa.or_(
            sa.exists().where(
                later_a.c.customer_id == a.c.customer_id,
                later_a.c.attribute_id == a.c.attribute_id,
                later_a.c.destination == a.c.destination,
                later_a.c.acknowledged_at < boundary,
                sa.or_(
                    later_a.c.acknowledged_at > a.c.acknowledged_at,
                    sa.and_(later_a.c.acknowledged_at == a.c.acknowledged_at, later_a.c.id > a.c.id),
                ),
            ),
            sa.exists().where(
                d.c.destination == a.c.destination,
                d.c.customer_id == a.c.customer_id,
                d.c.attribute_id == a.c.attribute_id,
                d.c.acknowledged_at < boundary,
            ),
        )
        with self._transaction(f"compact the history before {boundary:%Y-%m-%d}", write=True) as conn:
            history_rows = conn.execute(h.delete().where(h.c.valid_to <= boundary)).rowcount
            ack_rows = conn.execute(a.delete().where(a.c.acknowledged_at < boundary, acks_superseded)).rowcount
        return CompactSummary(boundary=boundary, history_deleted=int(history_rows), acks_deleted=int(ack_rows))

    def attribute_tables(self, *, as_of: datetime | None = None, chunk_customers: int = 50_000) -> Iterator[pa.Table]:
        """Every customer's attributes, one row per customer and one column per attribute, in chunks.

        Current values, or (``as_of``) the values current at that instant, from the past values valid then
        and the current values set by then. Customers are ordered by id; a customer is never split
        across chunks. Numeric attributes are float64 columns, others strings; null where there is no value.
        """
        import pyarrow as pa

        if chunk_customers < 1:
            raise StoreError(
                f"chunk_customers must be at least 1, not {chunk_customers}", remedy="Pass a positive size"
            )
        source = self._export_source(None if as_of is None else _aware(as_of, "as_of"))
        names = s.attributes
        is_text = sa.func.max(sa.case((source.c.text_value.is_not(None), 1), else_=0)).label("is_text")
        per_code = sa.select(source.c.attribute_id, is_text).group_by(source.c.attribute_id).subquery("kinds")
        kinds = (
            sa.select(names.c.name, per_code.c.attribute_id, per_code.c.is_text)
            .join(names, names.c.id == per_code.c.attribute_id)
            .order_by(names.c.name)
        )
        rows = sa.select(source.c.customer_id, source.c.attribute_id, source.c.num_value, source.c.text_value).order_by(
            source.c.customer_id, source.c.attribute_id
        )
        with self._transaction("export the attributes") as conn:
            attributes = {name: (code, bool(is_text)) for name, code, is_text in conn.execute(kinds)}
            schema = pa.schema(
                [("customer_id", pa.string())]
                + [(n, pa.string() if is_text else pa.float64()) for n, (_, is_text) in attributes.items()]
            )
            codes = [code for code, _ in attributes.values()]
            fetch = max(chunk_customers * max(len(attributes), 1), 1)
            with conn.execute(rows.execution_options(yield_per=min(fetch, SELECT_FETCH_ROWS * 10))) as result:
                carry: list[Any] = []
                while True:
                    batch = result.fetchmany(fetch)
                    done = len(batch) < fetch
                    pending = carry + list(batch)
                    if not pending:
                        break
                    if done:
                        carry = []
                    else:  # keep the last customer's rows for the next chunk: it may continue there
                        last = pending[-1][0]
                        cut = len(pending)
                        while cut > 0 and pending[cut - 1][0] == last:
                            cut -= 1
                        if cut == 0:  # one customer fills the whole fetch: keep reading
                            carry = pending
                            continue
                        pending, carry = pending[:cut], pending[cut:]
                    yield _pivot(pending, schema, codes)
                    if done and not carry:
                        break
            if not attributes:
                yield schema.empty_table()

    def export(self, out: Path, *, format: str, as_of: datetime | None = None) -> int:
        """Write :meth:`attribute_tables` to ``out`` as CSV or Parquet, streaming; return the customers written."""
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if format not in ("csv", "parquet"):
            raise StoreError(f"export format {format!r} is not known", remedy="Use csv or parquet")
        written = 0
        writer: Any = None
        try:
            for table in self.attribute_tables(as_of=as_of):
                if writer is None:
                    try:
                        writer = (
                            pacsv.CSVWriter(str(out), table.schema)
                            if format == "csv"
                            else pq.ParquetWriter(str(out), table.schema)
                        )
                    except OSError as exc:
                        raise StoreError(
                            f"cannot write the export to {out}: {exc}", remedy="Check the folder exists and is writable"
                        ) from exc
                writer.write_table(table)
                written += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        return written

    def _export_source(self, as_of: datetime | None) -> Any:
        """(customer_id, attribute_id, num_value, text_value): current values, or as they were at ``as_of``."""
        v, h = s.attribute_values, s.attribute_history
        current = sa.select(v.c.customer_id, v.c.attribute_id, v.c.num_value, v.c.text_value)
        if as_of is None:
            return current.subquery("source")
        # At most one value per (customer, attribute) was current at ``as_of``: a past value valid then, or the
        # current value if it was set by then.
        past = sa.select(h.c.customer_id, h.c.attribute_id, h.c.num_value, h.c.text_value).where(
            h.c.valid_from <= as_of, h.c.valid_to > as_of
        )
        return sa.union_all(past, current.where(v.c.updated_at <= as_of)).subquery("source")

    # ------------------------------------------------------------------ internals: the run lock

    @staticmethod
    def _lock_row(conn: Connection) -> dict[str, Any] | None:
        row = conn.execute(sa.select(s.store_lock).where(s.store_lock.c.name == RUN_LOCK_NAME)).one_or_none()
        return None if row is None else dict(row._mapping)

    @staticmethod
    def _holder_gone(row: Mapping[str, Any]) -> bool:
        """The holder ran on this host and its process no longer exists (a pid on another host is unknowable)."""
        if row["host"] != socket.gethostname()[:255]:
            return False
        try:
            os.kill(int(row["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, OverflowError, ValueError):
            return False
        return False

    def _take_lock_row(self, holder: dict[str, Any], *, takeover: Callable[[Mapping[str, Any]], bool]) -> None:
        now = self._now()
        with self._transaction("take the run lock", write=True) as conn:
            row = self._lock_row(conn)
            if row is not None:
                if not takeover(row):
                    raise StoreLockedError(self.url, {k: row[k] for k in ("owner", "host", "pid", "acquired_at")})
                conn.execute(s.store_lock.delete().where(s.store_lock.c.name == RUN_LOCK_NAME))
            conn.execute(s.store_lock.insert().values(name=RUN_LOCK_NAME, acquired_at=now, **holder))

    def _drop_lock_row(self, token: str) -> None:
        with self._transaction("release the run lock", write=True) as conn:
            conn.execute(s.store_lock.delete().where(s.store_lock.c.token == token))

    def _lock_session(self) -> Connection:
        """PostgreSQL: a dedicated autocommit connection for the session advisory lock."""
        try:
            return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("connect for the run lock", exc) from exc

    def _try_advisory(self, session: Connection) -> bool:
        try:
            return bool(session.execute(sa.text(f"SELECT pg_try_advisory_lock({_PG_RUN_LOCK})")).scalar_one())
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("take the run lock", exc) from exc

    def _unlock_advisory(self, session: Connection) -> None:
        try:
            session.execute(sa.text(f"SELECT pg_advisory_unlock({_PG_RUN_LOCK})"))
        except sa.exc.SQLAlchemyError:
            session.invalidate()  # closing the session for good releases the lock

    def _terminate_holder(self, session: Connection) -> None:
        # The two-key advisory lock shows in pg_locks as classid = key 1, objid = key 2 (as unsigned), objsubid 2.
        query = (
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
            "WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted AND l.pid <> pg_backend_pid() "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            f"AND l.classid::bigint = {RUN_LOCK_KEY} "
            "AND l.objid::bigint = (hashtext(current_schema())::bigint & 4294967295)"
        )
        try:
            session.execute(sa.text(query)).all()
        except sa.exc.SQLAlchemyError as exc:
            raise self._error("end the session holding the run lock", exc) from exc
        for _ in range(50):  # the terminated backend releases its locks as it exits
            if self._try_advisory(session):
                self._unlock_advisory(session)
                return
            time.sleep(0.1)

    # ------------------------------------------------------------------ internals: engine and errors

    @staticmethod
    def _parse_url(url: str) -> URL:
        try:
            parsed = make_url(url)
        except sa.exc.ArgumentError:
            raise StoreError(
                f"store URL {_redact(url)!r} is not a database URL",
                remedy="Use sqlite:///path/to/churnsync.db or postgresql+psycopg://user@host/database",
            ) from None
        backend = parsed.get_backend_name()
        if backend == "postgresql" and parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver churnsync ships
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(
                f"store {parsed.render_as_string(hide_password=True)}: {backend} is not supported",
                remedy="Use SQLite (sqlite:///churnsync.db) or PostgreSQL (postgresql+psycopg://…)",
            )
        if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
            raise StoreError(
                "store sqlite:// is in memory and would vanish between connections",
                remedy="Give SQLite a file: sqlite:///churnsync.db",
            )
        return parsed

    def _create_engine(self) -> Engine:
        serializer = lambda obj: json.dumps(obj, default=str)  # noqa: E731 (datetimes in run summaries)
        if self._dialect == "postgresql":
            connect_args: dict[str, Any] = {}
            if "application_name" not in self._url.query:  # a name given in the URL wins (monitoring, tests)
                connect_args["application_name"] = "churnsync"
            if "connect_timeout" not in self._url.query:
                connect_args["connect_timeout"] = 10
            pg = sa.create_engine(self._url, connect_args=connect_args, json_serializer=serializer, pool_pre_ping=True)
            sa.event.listen(pg, "connect", self._compress_full_pages)
            return pg
        engine = sa.create_engine(self._url, json_serializer=serializer)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy emits BEGIN itself (below): the sqlite3 module's own transaction handling skips
            # SELECTs and DDL, which would break snapshots and transactional migrations.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # A new database only (an existing one keeps its page size): 16 KiB pages, for a store whose runs write
            # millions of rows (first load of 1M customers: 33.2–34.0 s with SQLite's 4 KiB, 29.9–31.4 s with 16 KiB;
            # a sync's small per-request writes about 3 % slower).
            cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_BYTES}")
            _enable_wal(cursor)  # readers (dashboard, sync) never block the writer
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # the 2 MB default thrashes on big upserts
            cursor.execute(f"PRAGMA temp.cache_size=-{SQLITE_CACHE_KIB}")  # staging and the selection: temp tables
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the write lock up front, so two writers queue on busy_timeout instead of one
            # failing when it upgrades a read snapshot that the other has made stale.
            immediate = conn.get_execution_options().get("churnsync_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def _compress_full_pages(self, dbapi_connection: Any, _record: Any) -> None:
        """PostgreSQL: each new session of the store compresses the whole pages it writes to the WAL, when nobody chose
        for it (``wal_compression`` off as the server's built-in default, not set in its configuration, for the role,
        the database or the connection) and the store's role may set it for its own sessions (a superuser, or
        ``GRANT SET ON PARAMETER wal_compression``, PostgreSQL 15+).

        A write of predictions, a sync's acknowledgements and the selection after a write change pages that a
        checkpoint has just written out, and the first change to such a page writes all of it to the WAL: at 10M
        customers most of a daily write's WAL (docs/benchmarks.md). Compressed (lz4 where the server has it, else
        zstd, else its built-in pglz), that WAL is about half the size (a 10M daily write: 2.7 GB instead of 5.5 GB);
        nothing about durability changes. A role without the privilege keeps the server's setting, and the checkpoint
        advice asks for it. A session's setting changes nothing for the server's other sessions.
        """
        server_version = int(dbapi_connection.info.server_version)
        may_set = (
            "has_parameter_privilege('wal_compression', 'SET')"
            if server_version >= 150000
            else "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        )
        method = None
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT setting, source, enumvals, {may_set} FROM pg_settings WHERE name = 'wal_compression'"
                )
                setting, source, methods, allowed = cursor.fetchone()
                if setting == "off" and source == "default" and allowed:
                    # PostgreSQL 14 and older: a boolean (on = pglz).
                    method = next((m for m in WAL_COMPRESSION_METHODS if m in (methods or ())), "on")
                    cursor.execute(f"SET wal_compression = {method}")
            dbapi_connection.commit()  # a SET in a transaction rolled back (the pool's reset) would be undone
        except Exception as exc:
            if not _driver_error(exc):
                raise
            dbapi_connection.rollback()
            log.debug("store: the server's wal_compression is kept, it could not be read or set (%s)", exc)
            return
        if method is not None and not self._told_compression:
            self._told_compression = True
            log.debug("store: this store's sessions compress their full-page images in the WAL (%s)", method)

    def _db_time(self, value: datetime) -> Any:
        """``value`` as the driver takes it for a UtcDateTime column (for SQL sent without SQLAlchemy types)."""
        return value if self._time_to_db is None else self._time_to_db(value)

    def _now(self) -> datetime:
        return _aware(self._clock(), "the clock's time")

    def transaction(self, action: str, *, write: bool = False) -> AbstractContextManager[Connection]:
        """A connection in one transaction for the store's companions (churnsync.store.ledger)."""
        return self._transaction(action, write=write)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self._dialect)

    @contextmanager
    def _transaction(self, action: str, *, write: bool = False) -> Iterator[Connection]:
        """A connection inside one transaction; database errors become one-line StoreErrors."""
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(churnsync_write=True)
                with conn.begin():
                    yield conn
        except (sa.exc.SQLAlchemyError, CommandError, RevisionError) as exc:
            raise self._error(action, exc) from exc
        except Exception as exc:
            # The bulk paths (COPY, executemany) talk to the driver directly: its errors are the store's too.
            if _driver_error(exc):
                raise self._error(action, exc) from exc
            raise

    def _error(self, action: str, exc: Exception) -> StoreError:
        orig = getattr(exc, "orig", None) or exc
        lines = str(orig).strip().splitlines()
        detail = lines[0].rstrip(".") if lines else type(orig).__name__
        lowered = detail.lower()
        if "locked" in lowered or "busy" in lowered:
            remedy = "Another process is writing to the store: let it finish, then retry"
        elif isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            remedy = "Check that the database is reachable and that store.url (or $CHURNSYNC_STORE_URL) is right"
        elif isinstance(exc, sa.exc.IntegrityError):
            remedy = "Check that the run ids passed to the store exist; if they do, report this churnsync bug"
        else:
            remedy = "If the store was changed outside churnsync, restore it from a backup; else report this bug"
        return StoreError(f"store {self.url}: cannot {action}: {detail}", remedy=remedy)

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in _FINAL_STATUSES:
            raise StoreError(
                f"run status {status!r} is not a final status", remedy=f"Use one of {', '.join(_FINAL_STATUSES)}"
            )

    @staticmethod
    def _require_running(conn: Connection, run_id: int) -> None:
        runs = s.prediction_runs
        status = conn.execute(sa.select(runs.c.status).where(runs.c.id == run_id)).scalar_one_or_none()
        if status is None:
            raise StoreError(
                f"prediction run {run_id} does not exist", remedy="Start it with start_prediction_run() first"
            )
        if status != "running":
            raise StoreError(f"prediction run {run_id} is already {status}", remedy="Start a new prediction run")

    @staticmethod
    def _require_sync_run(conn: Connection, sync_run_id: int, destination: str) -> None:
        runs = s.sync_runs
        row = conn.execute(sa.select(runs.c.destination).where(runs.c.id == sync_run_id)).one_or_none()
        if row is None:
            raise StoreError(f"sync run {sync_run_id} does not exist", remedy="Start it with start_sync_run() first")
        if row.destination != destination:
            raise StoreError(
                f"sync run {sync_run_id} belongs to destination {row.destination!r}, not {destination!r}",
                remedy="Record each batch under the sync run of its destination",
            )

    @staticmethod
    def _nest(rows: Any) -> dict[str, dict[str, Value]]:
        nested: dict[str, dict[str, Value]] = {}
        for customer_id, attribute, num, text in rows:
            nested.setdefault(customer_id, {})[attribute] = _to_value(num, text)
        return nested

    # ------------------------------------------------------------------ internals: writing a run

    def _create_stage(self, conn: Connection, wide: sa.Table, plan: list[_Attribute]) -> None:
        if self._dialect == "sqlite":  # a failed write on this pooled connection may have left them behind
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.churnsync_stage")
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.churnsync_stage_rules")
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.churnsync_changes")
        wide.create(conn)
        _stage_rules.create(conn)
        if plan:
            conn.execute(
                _stage_rules.insert(),
                [
                    {
                        "attr_idx": a.idx,
                        "attribute_id": a.code,
                        "threshold": a.threshold,
                        "rel_threshold": a.rel_threshold,
                        "text_len": a.text_len,
                    }
                    # In code order, as both engines order the keys: a scan of the rules returns them so.
                    for a in sorted(plan, key=lambda a: a.code)
                ],
            )

    def _fill_stage(self, conn: Connection, wide: sa.Table, chunks: Iterator[pa.Table], plan: list[_Attribute]) -> int:
        """Stage the run's values, one row per customer, a chunk at a time (memory stays flat); return the count."""
        driver: Any = conn.connection.driver_connection
        names = ["customer_id", *(a.name for a in plan)]
        batches = (
            batch for chunk in chunks for batch in chunk.select(names).to_batches(max_chunksize=STAGE_CHUNK_CUSTOMERS)
        )
        if not plan:
            return sum(batch.num_rows for batch in batches)
        try:
            if self._dialect == "postgresql":
                staged = self._copy_stage(driver, batches, plan)
                conn.exec_driver_sql("ANALYZE churnsync_stage, churnsync_stage_rules")  # temp tables: no autovacuum
                return staged
            staged = 0
            insert = f"INSERT INTO temp.churnsync_stage VALUES (?{', ?' * len(plan)})"
            cursor = driver.cursor()
            try:
                for batch in batches:
                    ids = batch.column("customer_id").cast("string").to_pylist()
                    columns = []
                    for attr in plan:
                        numbers, texts = _column_values(batch, attr)
                        columns.append((numbers if attr.kind == "num" else texts).to_pylist())
                    cursor.executemany(insert, zip(ids, *columns, strict=True))
                    staged += len(ids)
            finally:
                cursor.close()
            return staged
        except Exception as exc:
            if type(exc).__name__ in ("UniqueViolation", "IntegrityError"):
                raise StoreError(
                    "predictions: a customer_id appears more than once (in two chunks of one write)",
                    remedy="Score each customer once per run",
                ) from None
            if _driver_error(exc):
                raise self._error("stage the predictions", exc) from exc
            raise

    @staticmethod
    def _copy_stage(driver: Any, batches: Iterator[Any], plan: list[_Attribute]) -> int:
        """PostgreSQL: COPY one row per customer as CSV written by Arrow (no Python loop per row)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        options = pacsv.WriteOptions(include_header=False)
        columns = ", ".join(f"v{a.idx}" for a in plan)
        sql = f"COPY churnsync_stage (customer_id, {columns}) FROM STDIN (FORMAT csv)"
        staged = 0
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for batch in batches:
                arrays = [batch.column("customer_id").cast(pa.string())]
                for attr in plan:
                    numbers, texts = _column_values(batch, attr)
                    arrays.append(numbers if attr.kind == "num" else texts)
                buffer = BytesIO()
                # Arrow writes nulls as empty fields and quotes every string, so "" stays an empty string.
                names = ["customer_id", *(f"v{a.idx}" for a in plan)]
                pacsv.write_csv(pa.table(arrays, names=names), buffer, options)
                copy.write(buffer.getbuffer())
                staged += batch.num_rows
        return staged

    def _apply_stage(
        self,
        conn: Connection,
        run_id: int,
        now: datetime,
        wide: sa.Table,
        plan: list[_Attribute],
        *,
        scored: int,
    ) -> tuple[WriteSummary, Any]:
        """Make the staged values that really changed current, and move the values they replace to the history.

        Set-based: first every value that changed by its own rule (tolerances, granularity) goes into the
        temporary ``churnsync_changes`` with the value it replaces; then, for attributes with ``unless_changed``,
        values that moved at all while a coupled attribute of the same customer changed. Returns the summary and
        the customers with a changed value (a select of ``customer_id``).
        """
        if not plan or not scored:
            empty = WriteSummary(customers_scored=scored, customers_new=0, customers_changed=0, values_changed=0)
            return empty, sa.select(wide.c.customer_id).where(sa.false())
        h, v, ch = s.attribute_history, s.attribute_values, _changes
        st = _long_stage(wide, plan)
        if conn.execute(sa.select(v.c.customer_id).limit(1)).first() is None:
            # A first load: with no current value, every staged value is new. It is written once, as a current value
            # (in key order: B-tree appends); the history holds only replaced values, so it gets nothing. Ordered by
            # customer only: the stage is read in key order and each customer's rows follow the rules' scan, which is
            # in attribute order, so nothing is sorted (sorting the 8M rows of 1M customers by both keys took 2.5 s
            # of a 17 s write on PostgreSQL). Any order would be correct; this one is also the stored order.
            present = sa.or_(st.c.num_value.is_not(None), st.c.text_value.is_not(None))
            rows = (
                sa.select(
                    st.c.customer_id,
                    st.c.attribute_id,
                    st.c.num_value,
                    st.c.text_value,
                    sa.literal(run_id, sa.Integer),
                    sa.literal(now, s.UtcDateTime()),
                )
                .where(present)
                .order_by(st.c.customer_id)
            )
            with self._keys_built_after(conn, v):
                conn.execute(v.insert().from_select(_VALUE_COLUMNS, rows))
            values = conn.execute(sa.select(sa.func.count()).select_from(v)).scalar_one()
            anything = sa.or_(*(wide.c[f"v{a.idx}"].is_not(None) for a in plan))
            customers = conn.execute(sa.select(sa.func.count()).select_from(wide).where(anything)).scalar_one()
            summary = WriteSummary(
                customers_scored=scored,
                customers_new=int(customers),
                customers_changed=int(customers),
                values_changed=int(values),
            )
            return summary, sa.select(v.c.customer_id)
        if any(a.text_len is not None for a in plan):
            cut = sa.func.coalesce(st.c.text_len, 1_000_000_000)
            text_changed = sa.func.substr(st.c.text_value, 1, cut).is_distinct_from(
                sa.func.substr(v.c.text_value, 1, cut)
            )
        else:
            text_changed = st.c.text_value.is_distinct_from(v.c.text_value)
        moved = sa.func.abs(st.c.num_value - v.c.num_value)
        num_changed = sa.and_(
            # threshold is 0 for an exact compare; `<>` keeps an equal number from counting then.
            moved >= st.c.threshold,
            st.c.num_value != v.c.num_value,
        )
        if any(a.rel_threshold > 0 for a in plan):
            num_changed = sa.and_(num_changed, moved >= st.c.rel_threshold * sa.func.abs(v.c.num_value))
        changed = sa.or_(
            text_changed,
            sa.and_(st.c.num_value.is_(None), v.c.num_value.is_not(None)),
            sa.and_(st.c.num_value.is_not(None), v.c.num_value.is_(None)),
            num_changed,
        )
        change_columns = [c.name for c in ch.columns]
        replaced = (v.c.num_value, v.c.text_value, v.c.prediction_run_id, v.c.updated_at)
        joined = st.outerjoin(v, sa.and_(v.c.customer_id == st.c.customer_id, v.c.attribute_id == st.c.attribute_id))
        candidates = (
            sa.select(st.c.customer_id, st.c.attribute_id, st.c.num_value, st.c.text_value, *replaced)
            .select_from(joined)
            .where(changed)
            .order_by(st.c.customer_id, st.c.attribute_id)
        )
        ch.create(conn)
        if self._dialect == "postgresql":
            # One merge of the staged values with the current values, both read in key order through their primary
            # keys: linear in the store's size, without spilling.
            self._merge_in_key_order(conn)
        conn.execute(ch.insert().from_select(change_columns, candidates))
        if self._dialect == "postgresql":
            self._merge_in_key_order(conn, reset=True)
        code_of = {a.name: a.code for a in plan}
        for attr in plan:
            if not attr.unless_changed:
                continue
            # Driven by the customers whose coupled attribute changed in the first step (few), each looked up by key
            # in the stage and the current values: the cost follows the changes, not the store's size.
            mine = ch.alias("mine")
            coupled_ids = (
                sa.select(ch.c.customer_id)
                .where(ch.c.attribute_id.in_([code_of[name] for name in attr.unless_changed]))
                .distinct()
                .subquery()
            )
            staged = wide.c[f"v{attr.idx}"]
            new_num: Any = staged if attr.kind == "num" else sa.cast(sa.null(), sa.Double)
            new_text: Any = sa.cast(sa.null(), sa.Text) if attr.kind == "num" else staged
            already = sa.exists().where(
                mine.c.customer_id == coupled_ids.c.customer_id, mine.c.attribute_id == attr.code
            )
            moved_at_all = sa.or_(new_num != v.c.num_value, new_text != v.c.text_value)
            coupled = (
                sa.select(
                    coupled_ids.c.customer_id, sa.literal(attr.code, sa.SmallInteger), new_num, new_text, *replaced
                )
                .select_from(
                    coupled_ids.join(wide, wide.c.customer_id == coupled_ids.c.customer_id).join(
                        v, sa.and_(v.c.customer_id == coupled_ids.c.customer_id, v.c.attribute_id == attr.code)
                    )
                )
                .where(moved_at_all, ~already)
                .order_by(coupled_ids.c.customer_id)
            )
            conn.execute(ch.insert().from_select(change_columns, coupled))
        if self._dialect == "postgresql":
            conn.exec_driver_sql("ANALYZE pg_temp.churnsync_changes")  # temp tables: no autovacuum
        values_changed = conn.execute(sa.select(sa.func.count()).select_from(ch)).scalar_one()
        # Per changed customer (not per value): is it new, i.e. without any current value before this write? One
        # that replaces a value is not; only the others (whose every change is a value it had none of) are looked up.
        touched = (
            sa.select(ch.c.customer_id, sa.func.max(ch.c.old_run_id).label("replaced"))
            .group_by(ch.c.customer_id)
            .subquery("touched")
        )
        is_new = sa.case(
            (touched.c.replaced.is_not(None), 0),
            (~sa.exists().where(v.c.customer_id == touched.c.customer_id), 1),
            else_=0,
        )
        customers_changed, customers_new = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(is_new), 0)).select_from(touched)
        ).one()
        # The replaced values move to the history, valid until now.
        past = (
            sa.select(
                ch.c.customer_id,
                ch.c.attribute_id,
                ch.c.old_num,
                ch.c.old_text,
                ch.c.old_run_id,
                sa.literal(run_id, sa.Integer),
                ch.c.old_since,
                sa.literal(now, s.UtcDateTime()),
            )
            .where(ch.c.old_run_id.is_not(None))
            .order_by(ch.c.customer_id, ch.c.attribute_id)
        )
        history_columns = [
            "customer_id",
            "attribute_id",
            "num_value",
            "text_value",
            "prediction_run_id",
            "replaced_by_run_id",
            "valid_from",
            "valid_to",
        ]
        conn.execute(h.insert().from_select(history_columns, past))
        self._replace_current(conn, run_id, now, changed=int(values_changed))
        summary = WriteSummary(
            customers_scored=scored,
            customers_new=int(customers_new),
            customers_changed=int(customers_changed),
            values_changed=int(values_changed),
        )
        return summary, sa.select(ch.c.customer_id)

    def _replace_current(self, conn: Connection, run_id: int, now: datetime, *, changed: int) -> None:
        """Make this write's ``changed`` values (``churnsync_changes``) the current values."""
        v, ch = s.attribute_values, _changes
        new = sa.select(
            ch.c.customer_id,
            ch.c.attribute_id,
            ch.c.num_value,
            ch.c.text_value,
            sa.literal(run_id, sa.Integer),
            sa.literal(now, s.UtcDateTime()),
        )
        if self._dialect == "sqlite":
            upsert = sqlite.insert(v).from_select(_VALUE_COLUMNS, new.where(sa.true()))
            upsert = upsert.on_conflict_do_update(
                index_elements=[v.c.customer_id, v.c.attribute_id],
                set_={name: upsert.excluded[name] for name in _VALUE_COLUMNS[2:]},
            )
            conn.execute(upsert)
            return
        # PostgreSQL: an update where the value replaces one, then a plain insert of the new ones. ON CONFLICT inserts
        # speculatively, row by row: 24.5 s for 8M new rows, against 19.7 s for the update and the insert.
        # The plan is chosen here, not left to the planner: at 10M customers it hashed the changes and probed them
        # with every current value (46 s, two thirds of it walking hash buckets, against 1.1 s at 1M). Few changes:
        # each looked up by its key, in key order (the changes are written in that order); many: one merge of both
        # primary keys.
        few = changed < UPDATE_LOOKUP_SHARE * max(self._estimated_rows(conn, "attribute_values"), 1.0)
        methods = ("hashjoin", "mergejoin", "memoize") if few else _MERGE_IN_KEY_ORDER
        self._set_plan_methods(conn, methods, "off")
        conn.execute(
            v.update()
            .where(
                ch.c.old_run_id.is_not(None), v.c.customer_id == ch.c.customer_id, v.c.attribute_id == ch.c.attribute_id
            )
            .values(num_value=ch.c.num_value, text_value=ch.c.text_value, prediction_run_id=run_id, updated_at=now)
        )
        self._set_plan_methods(conn, methods, "DEFAULT")
        conn.execute(v.insert().from_select(_VALUE_COLUMNS, new.where(ch.c.old_run_id.is_(None))))

    def _server_wal(self) -> tuple[int, float, float, float, str] | None:
        """PostgreSQL: the server's WAL insert position (bytes), ``max_wal_size`` (MB),
        ``checkpoint_completion_target``, ``checkpoint_timeout`` (s) and the store's sessions' ``wal_compression``;
        None on SQLite or when the server does not say (the write goes on)."""
        if self._dialect != "postgresql":
            return None
        try:
            with self._engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0'), "
                    "(SELECT setting::float8 FROM pg_settings WHERE name = 'max_wal_size' AND unit = 'MB'), "
                    "current_setting('checkpoint_completion_target')::float8, "
                    "(SELECT setting::float8 FROM pg_settings WHERE name = 'checkpoint_timeout' AND unit = 's'), "
                    "current_setting('wal_compression')"
                ).one()
        except sa.exc.SQLAlchemyError as exc:
            log.info("store: no checkpoint advice, the server's WAL position is not readable (%s)", type(exc).__name__)
            return None
        if any(value is None for value in row):
            return None
        return int(row[0]), float(row[1]), float(row[2]), float(row[3]), str(row[4])

    def _checkpoint_advice(self, start: tuple[int, float, float, float, str] | None, seconds: float) -> str | None:
        """PostgreSQL: :func:`checkpoint_advice` for the WAL the server wrote since ``start`` (:meth:`_server_wal`;
        this write's WAL and any other session's) in ``seconds``, with the server's settings as they are now."""
        now = self._server_wal() if start is not None else None
        if start is None or now is None:
            return None
        position, max_wal_mb, target, timeout_s, compression = now
        return checkpoint_advice(
            position - start[0],
            seconds,
            max_wal_mb=max_wal_mb,
            completion_target=target,
            timeout_s=timeout_s,
            wal_compression=compression,
        )

    @staticmethod
    def _tune_bulk_transaction(conn: Connection) -> None:
        """PostgreSQL: planner and memory settings for this transaction only (nothing about durability).

        Sorts and hashes of a run's values stay in memory; JIT compilation is off because these statements are
        planned with costs far above its thresholds and compiled in about a second each, longer than it saves.
        """
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{POSTGRES_WRITE_WORK_MEM}'")
        conn.exec_driver_sql("SET LOCAL jit = off")

    @staticmethod
    def _refresh_statistics(conn: Connection, *tables: str) -> None:
        """PostgreSQL: ANALYZE each table whose statistics lag far behind its rows (after bulk writes)."""
        rows = conn.exec_driver_sql(
            "SELECT relname, n_mod_since_analyze, n_live_tup FROM pg_stat_user_tables "
            "WHERE relid = ANY (ARRAY[" + ", ".join(f"to_regclass('{t}')" for t in tables) + "])"
        ).all()
        stale = [
            name
            for name, changed, live in rows
            if changed > ANALYZE_AFTER_CHANGED_ROWS and changed > 0.1 * max(live - changed, 0)
        ]
        if stale:
            conn.exec_driver_sql(f"ANALYZE {', '.join(stale)}")

    @staticmethod
    def _analyze_if_grown(conn: Connection, table: str, written: int) -> None:
        """PostgreSQL: ANALYZE ``table`` when this transaction wrote more rows than a tenth of what it last counted."""
        counted = AttributeStore._estimated_rows(conn, table)
        if written > ANALYZE_AFTER_CHANGED_ROWS and written > 0.1 * max(counted, 0.0):
            conn.exec_driver_sql(f"ANALYZE {table}")

    @staticmethod
    def _estimated_rows(conn: Connection, table: str) -> float:
        """PostgreSQL: the rows ``table`` held when last analysed or vacuumed (``reltuples``; 0 or -1 before that)."""
        counted = conn.exec_driver_sql(f"SELECT reltuples FROM pg_class WHERE oid = to_regclass('{table}')").scalar()
        return float(counted or 0)

    @staticmethod
    def _next_change_seq(conn: Connection) -> int:
        """Advance the change counter and return it; its row stays locked by this transaction until commit."""
        counters = s.store_counters
        this = counters.c.name == CHANGES_COUNTER
        conn.execute(counters.update().where(this).values(value=counters.c.value + 1))
        value = conn.execute(sa.select(counters.c.value).where(this)).scalar_one_or_none()
        if value is None:  # a store whose counter row was removed: start again above every mark
            start = conn.execute(sa.select(sa.func.coalesce(sa.func.max(s.customers.c.changed_seq), 0))).scalar_one()
            value = int(start) + 1
            conn.execute(counters.insert().values(name=CHANGES_COUNTER, value=value))
        return int(value)

    def _mark_scored(
        self, conn: Connection, run_id: int, wide: sa.Table, *, seq: int, changed: Any, changed_customers: int
    ) -> None:
        """Record ``run_id`` as the last run that scored every staged customer, and mark what selection must see.

        ``last_run_id`` 0 stands for the run of the store's latest write (``scored_by``, revision 0009), so a write
        rewrites only the rows that change: customers the previous write scored and this one does not get that
        run written out, customers that come back get 0, changed customers get this write's mark, new ones are
        added; everyone else's row stays as it is (at 10M customers, 10M rows a day not rewritten).

        A customer gets this write's mark (``changed_seq``) when it is new, when a value of it changed, or when a
        destination's last selection may have dropped it (mirror: last scored before that selection's latest run;
        TTL: last scored by a run that had expired at that selection) and this run brings it back. When this run
        itself is older than such a selection's latest run or TTL cutoff, every customer it scores is marked.
        """
        c, runs, w = s.customers, s.prediction_runs, s.selection_watermarks
        columns = ["customer_id", "first_run_id", "last_run_id", "changed_seq"]
        new = sa.select(
            wide.c.customer_id,
            sa.literal(run_id, sa.Integer),
            sa.literal(0, sa.Integer),
            sa.literal(seq, sa.BigInteger),
        )
        if conn.execute(sa.select(c.c.customer_id).limit(1)).first() is None:
            # No customer yet (a first load): everyone staged is new, and nobody can have been dropped.
            with self._keys_built_after(conn, c):
                conn.execute(c.insert().from_select(columns, new.order_by(wide.c.customer_id)))
            self._set_scored_by(conn, run_id)
            return
        previous = self._scored_by(conn)
        latest_seen, cutoff_seen = conn.execute(
            sa.select(
                sa.func.max(sa.case((w.c.mode == "mirror", w.c.latest_run_id), else_=None)),
                sa.func.max(w.c.cutoff),
            )
        ).one()
        started = conn.execute(sa.select(runs.c.started_at).where(runs.c.id == run_id)).scalar_one()
        last = s.last_scored_run(c)
        gaps: list[Any] = []
        mark_all = False
        # Whether the previous write's run is itself a gap: then every customer it scored that is staged again is.
        previous_gap = False
        if latest_seen is not None:
            gaps.append(last < int(latest_seen))
            mark_all = run_id < int(latest_seen)
            previous_gap = previous is not None and previous < int(latest_seen)
        if cutoff_seen is not None:
            cutoff_seen = s.UtcDateTime().process_result_value(cutoff_seen, conn.dialect)
            expired = sa.select(runs.c.id).where(runs.c.started_at < cutoff_seen)
            gaps.append(last.in_(expired))
            mark_all = mark_all or started < cutoff_seen
            if previous is not None:
                expired_previous = sa.select(runs.c.id).where(runs.c.id == previous, runs.c.started_at < cutoff_seen)
                previous_gap = previous_gap or conn.execute(expired_previous).first() is not None
        staged = sa.select(wide.c.customer_id)
        postgres = self._dialect == "postgresql"
        if postgres:
            # The scored customers against every customer: merges of both keys, read in order, not a lookup each.
            self._merge_in_key_order(conn)
        added: Any = new.where(~sa.exists().where(c.c.customer_id == wide.c.customer_id))
        if previous is not None and previous != run_id:
            # Scored by the previous write and not by this one: that run stays their last, written out.
            if postgres:
                # With the new customers, from one merge of both keys: the staged customers without a row, and the
                # customers without a staged row.
                unmatched = (
                    sa.select(wide.c.customer_id.label("staged"), c.c.customer_id, c.c.last_run_id)
                    .select_from(wide.outerjoin(c, c.c.customer_id == wide.c.customer_id, full=True))
                    .where(sa.or_(wide.c.customer_id.is_(None), c.c.customer_id.is_(None)))
                    .cte("unmatched")
                )
                fresh = sa.select(
                    unmatched.c.staged,
                    sa.literal(run_id, sa.Integer),
                    sa.literal(0, sa.Integer),
                    sa.literal(seq, sa.BigInteger),
                ).where(unmatched.c.customer_id.is_(None))
                conn.execute(
                    c.update()
                    .where(
                        c.c.customer_id == unmatched.c.customer_id,
                        unmatched.c.staged.is_(None),
                        unmatched.c.last_run_id == _ZERO,
                    )
                    .values(last_run_id=previous)
                    .add_cte(c.insert().from_select(columns, fresh).cte("added"))
                )
                added = None
            else:
                unstaged = ~sa.exists().where(wide.c.customer_id == c.c.customer_id)
                conn.execute(c.update().where(c.c.last_run_id == _ZERO, unstaged).values(last_run_id=previous))
        if added is not None:
            conn.execute(c.insert().from_select(columns, added))
        # This write's mark where a selection may have dropped the customer or a value of it changed.
        mark: Any = sa.case((sa.or_(*gaps, c.c.customer_id.in_(changed)), seq), else_=c.c.changed_seq)
        everyone = mark_all or previous_gap
        if everyone:
            # Every staged customer may have to be marked: one pass over them all (rare: this run, or the previous
            # write's, is older than a selection's latest run or TTL cutoff).
            values = {"last_run_id": 0, "changed_seq": seq if mark_all else mark}
            conn.execute(c.update().where(c.c.customer_id.in_(staged)).values(**values))
        if postgres:
            self._merge_in_key_order(conn, reset=True)
        if everyone:
            self._set_scored_by(conn, run_id)
            return
        # Back after a gap (few, found by the partial index): scored by the latest write from now on, marked if a
        # selection may have dropped them.
        back = sa.and_(c.c.last_run_id != _ZERO, c.c.customer_id.in_(staged))  # inline: the partial index's predicate
        conn.execute(c.update().where(back).values(last_run_id=0, changed_seq=mark))
        # Changed (``changed``: the customers with a value changed by this write): marked. Other rows stay untouched.
        # On PostgreSQL as the current values are updated: few, each looked up by key; many, one merge.
        methods: tuple[str, ...] = ()
        if postgres:
            total = self._estimated_rows(conn, "customers")
            few = changed_customers < UPDATE_LOOKUP_SHARE * max(total, 1.0)
            # Few: also no hashed DISTINCT of the changed customers, so that they are looked up in key order.
            methods = ("hashjoin", "mergejoin", "memoize", "hashagg") if few else _MERGE_IN_KEY_ORDER
        self._set_plan_methods(conn, methods, "off")
        conn.execute(c.update().where(c.c.customer_id.in_(changed), c.c.changed_seq != seq).values(changed_seq=seq))
        self._set_plan_methods(conn, methods, "DEFAULT")
        self._set_scored_by(conn, run_id)

    @staticmethod
    def _scored_by(conn: Connection) -> int | None:
        """The run of the store's latest write that scored customers (the run a ``last_run_id`` of 0 stands for)."""
        value = conn.execute(s.latest_write_run()).scalar_one_or_none()
        return None if value is None else int(value)

    def _set_scored_by(self, conn: Connection, run_id: int) -> None:
        counters = s.store_counters
        this = counters.c.name == s.SCORED_BY
        if conn.execute(counters.update().where(this).values(value=run_id)).rowcount == 0:
            conn.execute(counters.insert().values(name=s.SCORED_BY, value=run_id))

    # ------------------------------------------------------------------ internals: attribute codes

    @staticmethod
    def _attribute_codes(conn: Connection, names: Iterable[str]) -> dict[str, int]:
        """The code of each attribute name (``attributes``); a name the store has not seen gets the next free code.

        Codes are given under the run lock or the change counter's lock (a write or a sync), never renumbered, and
        read in the transaction that uses them (a code given in a transaction that rolls back is gone with it).
        """
        a = s.attributes
        wanted = sorted(set(names))
        if not wanted:
            return {}
        codes = {
            str(name): int(code) for name, code in conn.execute(sa.select(a.c.name, a.c.id).where(a.c.name.in_(wanted)))
        }
        new = [name for name in wanted if name not in codes]
        if new:
            top = int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(a.c.id), 0))).scalar_one())
            if top + len(new) > s.MAX_ATTRIBUTE_ID:
                raise StoreError(
                    f"the store would hold more than {s.MAX_ATTRIBUTE_ID} attribute names ({top} already)",
                    remedy="Publish fewer distinct attribute names",
                )
            conn.execute(a.insert(), [{"id": top + i, "name": name} for i, name in enumerate(new, start=1)])
            codes.update((name, top + i) for i, name in enumerate(new, start=1))
        return codes

    @staticmethod
    def _attribute_names(conn: Connection) -> dict[int, str]:
        """Every attribute code and its name."""
        a = s.attributes
        return {int(code): str(name) for code, name in conn.execute(sa.select(a.c.id, a.c.name))}

    # ------------------------------------------------------------------ internals: syncing

    def _write_state(
        self,
        conn: Connection,
        destination: str,
        sync_run_id: int,
        stamp: Any,
        state: dict[tuple[str, str], tuple[float | None, str | None]],
    ) -> None:
        """Upsert acknowledged values into destination_state; the rows they replace move to destination_acks."""
        codes = self._attribute_codes(conn, {name for _, name in state})
        if self._dialect == "postgresql":
            keys, values = list(state), list(state.values())
            params = {
                "destination": destination,
                "run": sync_run_id,
                "stamp": stamp,
                "customers": [k[0] for k in keys],
                "attributes": [codes[k[1]] for k in keys],
                "nums": [v[0] for v in values],
                "texts": [v[1] for v in values],
            }
            conn.exec_driver_sql(_POSTGRESQL_STATE_WRITE, params)
            return
        conn.exec_driver_sql(_SQLITE_STATE_MOVE, [(destination, c, codes[a]) for c, a in state])
        rows = [(destination, c, codes[a], n, t, sync_run_id, stamp) for (c, a), (n, t) in state.items()]
        conn.exec_driver_sql(_SQLITE_STATE_UPSERT, rows)

    def _clear_pending(self, conn: Connection, destination: str, customer_ids: list[str]) -> None:
        """Drop acknowledged customers from the destination's pending set: the next selection need not compare them.

        Safe because the run lock keeps writes out of a sync: what a batch acknowledges is what the destination's
        latest selection wanted for those customers, and a later write marks whatever it changes.
        """
        if self._dialect == "postgresql":
            conn.exec_driver_sql(
                "DELETE FROM selection_pending WHERE destination = %s AND customer_id = ANY(%s::text[])",
                (destination, customer_ids),
            )
        else:
            conn.exec_driver_sql(
                "DELETE FROM selection_pending WHERE destination = ? AND customer_id = ?",
                [(destination, c) for c in customer_ids],
            )

    def _write_failures(self, conn: Connection, sync_run_id: int, seq: int, failures: list[tuple[str, str]]) -> None:
        sql = _FAILURE_INSERT[self._dialect]
        if self._dialect == "postgresql":
            params = (sync_run_id, seq, [f[0] for f in failures], [f[1] for f in failures])
            conn.exec_driver_sql(sql, params)
        else:
            conn.exec_driver_sql(sql, [(sync_run_id, seq, c, r) for c, r in failures])

    def _changes_query(
        self,
        conn: Connection,
        destination: str,
        *,
        mirror: bool,
        cutoff: datetime | None,
        latest: int | None,
        candidates: sa.Table | None,
        nothing_acknowledged: bool = False,
    ) -> Any:
        """(customer_id, attribute, wanted num, wanted text) where the wanted value differs from the acknowledged one.

        Over every current value, or only over those of ``candidates``' customers. ``nothing_acknowledged``: the
        destination holds nothing yet (its first selection), so every wanted value that is not null differs, and the
        acknowledged state is not read (at 1M customers PostgreSQL looked each value up in the empty table: 3.9 s
        against 2.5 s without it).
        """
        v, d, c, runs = s.attribute_values, s.destination_state, s.customers, s.prediction_runs
        acknowledged = sa.and_(
            d.c.destination == destination,
            d.c.customer_id == v.c.customer_id,
            d.c.attribute_id == v.c.attribute_id,
        )
        dropped: list[Any] = []
        last = s.last_scored_run(c)
        if mirror and latest is not None:  # no succeeded run yet: nobody is "no longer scored"
            dropped.append(last < sa.literal_column(str(int(latest))))
        if cutoff is not None:
            expired = list(conn.execute(sa.select(runs.c.id).where(runs.c.started_at < cutoff)).scalars())
            if expired:
                dropped.append(last.in_([sa.literal_column(str(int(i))) for i in expired]))
        if candidates is not None and self._dialect == "postgresql":
            return self._candidate_changes_query(destination, candidates, dropped)
        source: Any = v
        customer_id = v.c.customer_id
        if candidates is not None:
            source = candidates.join(v, v.c.customer_id == candidates.c.customer_id)
            # The candidates' (the table scanned): SQLite then groups the rows per customer as they come, unsorted.
            customer_id = candidates.c.customer_id
        if not nothing_acknowledged:
            source = source.outerjoin(d, acknowledged)
        num: Any = v.c.num_value
        text: Any = v.c.text_value
        if dropped:
            source = source.outerjoin(c, c.c.customer_id == v.c.customer_id)
            # Integers inline (not bound): few, and the plan does not depend on them.
            keep = sa.not_(sa.func.coalesce(sa.or_(*dropped), sa.false()))
            num = sa.case((keep, v.c.num_value), else_=sa.null())
            text = sa.case((keep, v.c.text_value), else_=sa.null())
        # Never acknowledged = null at the destination: IS DISTINCT FROM against the outer join's nulls.
        differs = (
            sa.or_(num.is_not(None), text.is_not(None))
            if nothing_acknowledged
            else sa.or_(num.is_distinct_from(d.c.num_value), text.is_distinct_from(d.c.text_value))
        )
        return (
            sa.select(customer_id, v.c.attribute_id, num.label("num_value"), text.label("text_value"))
            .select_from(source)
            .where(differs)
        )

    @staticmethod
    def _candidate_changes_query(destination: str, candidates: sa.Table, dropped: list[Any]) -> Any:
        """PostgreSQL: the comparison per candidate as one merge of its values with its acknowledged state.

        Two index range scans per customer (its values, its state at the destination) instead of one index lookup
        per value: a fifth of the work of the plain join when few customers are compared.
        """
        v, d, c = s.attribute_values, s.destination_state, s.customers
        pair = (
            sa.select(
                v.c.customer_id,
                v.c.attribute_id,
                v.c.num_value,
                v.c.text_value,
                d.c.num_value.label("acked_num"),
                d.c.text_value.label("acked_text"),
            )
            .select_from(
                v.outerjoin(
                    d,
                    sa.and_(
                        d.c.destination == destination,
                        d.c.customer_id == candidates.c.customer_id,
                        d.c.attribute_id == v.c.attribute_id,
                    ),
                )
            )
            .where(v.c.customer_id == candidates.c.customer_id)
            .lateral("pair")
        )
        source: Any = candidates.join(pair, sa.true())
        num: Any = pair.c.num_value
        text: Any = pair.c.text_value
        if dropped:
            source = source.join(c, c.c.customer_id == candidates.c.customer_id)
            keep = sa.not_(sa.func.coalesce(sa.or_(*dropped), sa.false()))
            num = sa.case((keep, pair.c.num_value), else_=sa.null())
            text = sa.case((keep, pair.c.text_value), else_=sa.null())
        return (
            sa.select(pair.c.customer_id, pair.c.attribute_id, num.label("num_value"), text.label("text_value"))
            .select_from(source)
            .where(sa.or_(num.is_distinct_from(pair.c.acked_num), text.is_distinct_from(pair.c.acked_text)))
        )

    def _prepare_selection(self, conn: Connection, destination: str, *, mirror: bool, cutoff: datetime | None) -> Any:
        """Compute the selection into the temporary ``churnsync_selected``, and move the destination's watermark.

        Returns None, or (PostgreSQL, everyone compared) the ordered comparison for the stream to run instead of
        reading ``churnsync_selected``.

        Change-driven when the destination has a watermark from a selection with the same policy: the candidates
        are the customers marked by writes since (new, changed, back after a gap), those its last selection left
        pending (not yet acknowledged: failed, crashed, partial, quarantined or skipped sends), and those the
        policy drops since (mirror: last scored before the latest succeeded run but not before the watermark's;
        TTL: last scored by a run that expired since). Otherwise (first selection, or a policy that changed) every
        current value is compared. Either way the result is exact: the candidates are compared value by value
        with what the destination acknowledged. The customers returned become the destination's pending set, which
        acknowledgements shrink (:meth:`record_batch`).
        """
        c, runs, w, pend, counters = (
            s.customers,
            s.prediction_runs,
            s.selection_watermarks,
            s.selection_pending,
            s.store_counters,
        )
        mode = "mirror" if mirror else "upsert"
        if self._dialect == "postgresql":
            self._tune_bulk_transaction(conn)
        # Wait for a write in progress (it holds this row) so that its marks are all visible or all later.
        counter = sa.select(counters.c.value).where(counters.c.name == CHANGES_COUNTER)
        seq_now = conn.execute(counter.with_for_update() if self._dialect == "postgresql" else counter).scalar()
        seq_now = int(seq_now or 0)
        latest = conn.execute(sa.select(sa.func.max(runs.c.id)).where(runs.c.status == "succeeded")).scalar()
        mark = conn.execute(sa.select(w).where(w.c.destination == destination)).one_or_none()
        full = (
            mark is None
            or mark.mode != mode
            or (mark.cutoff is None) != (cutoff is None)
            or (cutoff is not None and mark.cutoff is not None and cutoff < mark.cutoff)
            or (latest or 0) < (mark.latest_run_id or 0)
        )
        temp = "pg_temp" if self._dialect == "postgresql" else "temp"
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temp}.churnsync_selected")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temp}.churnsync_candidates")
        candidates: sa.Table | None = None
        if not full:
            assert mark is not None
            _candidates.create(conn)
            sources: list[Any] = [
                sa.select(c.c.customer_id).where(c.c.changed_seq > int(mark.changed_seq)),
                sa.select(pend.c.customer_id).where(pend.c.destination == destination),
            ]
            last = s.last_scored_run(c)
            if mirror and latest is not None and latest > (mark.latest_run_id or 0):
                since = [last >= int(mark.latest_run_id)] if mark.latest_run_id is not None else []
                sources.append(sa.select(c.c.customer_id).where(last < int(latest), *since))
            if cutoff is not None and mark.cutoff is not None and cutoff > mark.cutoff:
                expired_since = sa.select(runs.c.id).where(runs.c.started_at >= mark.cutoff, runs.c.started_at < cutoff)
                sources.append(sa.select(c.c.customer_id).where(last.in_(expired_since)))
            # In key order: the candidates' values and acknowledged state are then read in the order they are stored
            # (a store larger than memory is read ahead, not at random).
            union = sa.union(*sources).subquery("union")
            conn.execute(
                _candidates.insert().from_select(
                    ["customer_id"], sa.select(union.c.customer_id).order_by(union.c.customer_id)
                )
            )
            # Counted, not the INSERT's rowcount: psycopg reports -1 for an INSERT ... SELECT sent this way.
            picked = conn.execute(sa.select(sa.func.count()).select_from(_candidates)).scalar_one()
            if self._dialect == "postgresql":
                total = self._estimated_rows(conn, "customers")
            else:
                total = float(conn.execute(sa.select(sa.func.count()).select_from(c)).scalar_one())
            # Many candidates (e.g. right after a sync of everyone, whose customers are all pending): one pass over
            # every value costs less than looking each candidate up.
            candidates = _candidates if picked < SELECT_LOOKUP_SHARE * max(total, 1.0) else None
            if self._dialect == "sqlite" and candidates is not None:
                # Its size, for the planner: without it SQLite scans every current value and probes the candidates.
                conn.exec_driver_sql("ANALYZE temp.churnsync_candidates")
            if self._dialect == "postgresql" and candidates is not None:
                conn.exec_driver_sql("ANALYZE pg_temp.churnsync_candidates")
                # Few candidates: look their rows up by key. Statistics of destination_state lag behind a sync's
                # many small commits until autovacuum analyses it, and a plan that hashes the whole acknowledged
                # state would read every row this selection exists to skip.
                self._set_plan_methods(conn, ("hashjoin",), "off")
        if self._dialect == "postgresql" and candidates is None:
            self._refresh_statistics(conn, "attribute_values", "destination_state")
        d = s.destination_state
        nothing_acknowledged = (
            conn.execute(sa.select(d.c.customer_id).where(d.c.destination == destination).limit(1)).first() is None
        )
        query = self._changes_query(
            conn,
            destination,
            mirror=mirror,
            cutoff=cutoff,
            latest=latest,
            candidates=candidates,
            nothing_acknowledged=nothing_acknowledged,
        )
        conn.execute(pend.delete().where(pend.c.destination == destination))
        streamed: Any = None
        if self._dialect == "postgresql" and candidates is None:
            # Everyone compared: no temporary copy of every value to write, sort and read back. The pending set is
            # the customers of the comparison, and the stream runs the comparison itself, both as merges of the
            # current values with the acknowledged state read in key order: rows leave in order, without a sort, and
            # the stream's first rows arrive while the server still reads. What the stream reads is what this
            # transaction saw: the run lock keeps writes out of a sync (and a write that slipped in would have marked
            # its customers for the next selection).
            self._merge_in_key_order(conn)
            if nothing_acknowledged:
                # Nothing acknowledged at this destination (its first selection): every customer with a value to
                # send is returned. The pending set is then every customer, read in key order, instead of the
                # customers of a second comparison of every value (4.7 s of 12.4 s at 1M customers). The few extra
                # (no value, or every value nulled out by the policy: nothing to send) cost the next selection a look
                # each, which finds nothing and leaves them out of its pending set.
                returned: Any = sa.select(c.c.customer_id)
            else:
                wanted = query.subquery("wanted")
                returned = sa.select(wanted.c.customer_id).group_by(wanted.c.customer_id)
            v = s.attribute_values
            streamed = query.order_by(v.c.customer_id, v.c.attribute_id)
        elif self._dialect == "sqlite" and self._sqlite_exact_documents(conn):
            _selected_documents.create(conn)
            wanted = query.subquery("wanted")
            names = self._attribute_names(conn)
            name: Any = (
                # Each code's name written into the statement (a CASE): 0.3 s at 1M customers, where a lookup per row
                # in ``attributes`` took 0.9 s. Beyond a few hundred names, the lookup (a statement's parameters are
                # limited, and a long CASE is slow).
                sa.case(names, value=wanted.c.attribute_id)
                if 0 < len(names) <= CASE_NAMES
                else sa.select(s.attributes.c.name).where(s.attributes.c.id == wanted.c.attribute_id).scalar_subquery()
            )
            # Grouped as the comparison yields rows, in key order: nothing is sorted.
            documents = (
                sa.select(
                    wanted.c.customer_id,
                    sa.func.json_group_object(name, _json_value(wanted.c.num_value, wanted.c.text_value)),
                )
                .group_by(wanted.c.customer_id)
                .order_by(wanted.c.customer_id)
            )
            conn.execute(_selected_documents.insert().from_select(["customer_id", "document"], documents))
            returned = sa.select(_selected_documents.c.customer_id)
        else:
            (_selected_clustered if self._dialect == "sqlite" else _selected).create(conn)
            conn.execute(
                _selected.insert().from_select(["customer_id", "attribute_id", "num_value", "text_value"], query)
            )
            returned = sa.select(_selected.c.customer_id).distinct()
        # The customers returned become the pending set, in key order: B-tree appends (on PostgreSQL 4.3 s → 2.8 s for
        # 1M customers, against a hash's order).
        ids = returned.subquery("returned")
        conn.execute(
            pend.insert().from_select(
                ["destination", "customer_id"],
                sa.select(sa.literal(destination, s.key_type(100)), ids.c.customer_id).order_by(ids.c.customer_id),
            )
        )
        if streamed is not None:
            self._merge_in_key_order(conn, reset=True)
        values = {
            "changed_seq": seq_now,
            "mode": mode,
            "latest_run_id": latest,
            "cutoff": cutoff,
            "selected_at": self._now(),
        }
        if mark is None:
            conn.execute(w.insert().values(destination=destination, **values))
        else:
            conn.execute(w.update().where(w.c.destination == destination).values(**values))
        return streamed

    @contextmanager
    def _keys_built_after(self, conn: Connection, table: sa.Table) -> Iterator[None]:
        """PostgreSQL: fill an empty ``table`` without its primary key and indexes, then build them once.

        One sort per index (with parallel workers) instead of maintaining each row by row; the keys come from
        ``schema.py``, and the whole is rolled back with the write if it fails. On SQLite a plain insert (its tables
        are clustered on their keys, and rows arrive in key order).
        """
        if self._dialect != "postgresql":
            yield
            return
        for index in table.indexes:
            conn.execute(sa.schema.DropIndex(index))
        conn.execute(sa.schema.DropConstraint(table.primary_key))
        yield
        conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{POSTGRES_WRITE_WORK_MEM}'")
        conn.execute(sa.schema.AddConstraint(table.primary_key))
        for index in table.indexes:
            conn.execute(sa.schema.CreateIndex(index))

    @staticmethod
    def _merge_in_key_order(conn: Connection, *, reset: bool = False) -> None:
        """PostgreSQL: plan joins of whole tables as merges of their primary keys (no hash join, no sort), or undo it.

        Hashing every current value (or sorting both sides) outgrows work_mem and spills to disk as the store grows;
        the merge reads both tables in key order, linear in their size, and yields rows in that order.
        """
        AttributeStore._set_plan_methods(conn, _MERGE_IN_KEY_ORDER, "DEFAULT" if reset else "off")

    @staticmethod
    def _set_plan_methods(conn: Connection, methods: tuple[str, ...], value: str) -> None:
        """PostgreSQL: turn the planner's ``enable_<method>`` settings off or back to DEFAULT for this transaction."""
        for method in methods:
            conn.exec_driver_sql(f"SET LOCAL enable_{method} = {value}")

    def _stream_changes(
        self, destination: str, chunk_size: int, *, mirror: bool = False, cutoff: datetime | None = None
    ) -> Iterator[list[Change]]:
        action = f"select the changes for {destination}"
        temp = "pg_temp" if self._dialect == "postgresql" else "temp"
        try:
            conn = self._engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(action, exc) from exc
        try:
            try:
                # A write transaction (SQLite: BEGIN IMMEDIATE) that also moves the watermark; the stream then
                # reads the computed result on the same connection, so batches may be recorded meanwhile.
                conn.execution_options(churnsync_write=True)
                with conn.begin():
                    streamed = self._prepare_selection(conn, destination, mirror=mirror, cutoff=cutoff)
                conn.execution_options(churnsync_write=False)
                with conn.begin():
                    driver: Any = conn.connection.driver_connection
                    if self._dialect == "postgresql":
                        self._tune_bulk_transaction(conn)
                        if streamed is None:
                            sel = _selected
                            streamed = sa.select(
                                sel.c.customer_id, sel.c.attribute_id, sel.c.num_value, sel.c.text_value
                            ).order_by(sel.c.customer_id, sel.c.attribute_id)
                        else:
                            self._merge_in_key_order(conn)
                        names = _AttributeNames(self._engine, self._attribute_names(conn))
                        yield from self._stream_documents(conn, driver, streamed, chunk_size, names)
                        return
                    # The driver's own cursor, without SQLAlchemy's per-row work.
                    cursor = driver.cursor()
                    try:
                        if self._sqlite_exact_documents(conn):
                            cursor.execute(
                                f"SELECT customer_id, document FROM {temp}.churnsync_selected ORDER BY customer_id"
                            )
                            yield from self._load_documents(cursor, chunk_size)
                        else:
                            names = _AttributeNames(self._engine, self._attribute_names(conn))
                            cursor.execute(
                                "SELECT customer_id, attribute_id, num_value, text_value "
                                f"FROM {temp}.churnsync_selected ORDER BY customer_id, attribute_id"
                            )
                            yield from self._group_changes(cursor, chunk_size, names)
                    finally:
                        cursor.close()
            finally:
                if not conn.invalidated:
                    with conn.begin():
                        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temp}.churnsync_selected")
                        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {temp}.churnsync_candidates")
        except Exception as exc:
            # The stream reads through the driver's own cursor: its errors (a cancelled or lost connection) are the
            # store's too, as SQLAlchemy's are.
            if not (isinstance(exc, sa.exc.SQLAlchemyError) or _driver_error(exc)):
                raise
            if _while_closing(exc):
                return  # the consumer closed the stream (it failed itself, or exits): its clean-up has nobody to tell
            raise self._error(action, exc) from exc
        finally:
            conn.close()

    @staticmethod
    def _stream_documents(
        conn: Connection, driver: Any, changes: Any, chunk_size: int, names: Mapping[int, str]
    ) -> Iterator[list[Change]]:
        """PostgreSQL: stream ``changes`` (customer, attribute code, num, text rows in key order) as one row per
        customer, with each code's name from ``names``.

        The server folds each customer's rows into three arrays (attribute codes, numbers, texts), which psycopg decodes
        from their binary form in C: an eighth of the rows for the driver to read, numbers exact as the server holds
        them (no text in between), and no Python loop per row. The selection of everyone at 1M customers × 8 values
        took 18.1–18.5 s as rows read through a server-side cursor, 9.1–9.2 s as JSON objects the server wrote and
        orjson parsed; streamed alone from a store written beforehand, 7.7–8.1 s as JSON objects against 4.5–4.6 s as
        arrays (building the JSON was most of the server's work).
        With libpq 17 or later (psycopg's binary wheel bundles it) the rows arrive in chunks as the server produces
        them, so the server computes while this process reads; with an older libpq, a server-side cursor is read a
        block at a time. Either way a consumer that stops early leaves no query running.
        """
        rows_in = changes.subquery("changes")
        customer_id, attribute, num, text = rows_in.c
        # Each customer's rows reach the aggregates in key order (the input is ordered, the aggregate groups it as it
        # comes), so the three arrays line up, in attribute order.
        documents = (
            sa.select(customer_id, sa.func.array_agg(attribute), sa.func.array_agg(num), sa.func.array_agg(text))
            .group_by(customer_id)
            .order_by(customer_id)
        )
        conn.exec_driver_sql("SET LOCAL enable_hashagg = off")
        # The stream is one statement that lasts as long as the sync reading it (the server waits while the sync sends):
        # a statement_timeout set for the role or database would cancel a long sync halfway. This read-only statement
        # is exempt; a server-side cursor's fetches (older libpq) are short statements of their own.
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        compiled = documents.compile(dialect=conn.dialect)
        sql, params = str(compiled), compiled.params
        import psycopg  # the driver of every PostgreSQL store; not needed to open a SQLite one

        cursor: Any
        rows: Iterator[tuple[str, list[int], list[float | None], list[str | None]]]
        if psycopg.pq.version() >= CHUNKED_ROWS_LIBPQ:
            cursor = driver.cursor(binary=True)
            rows = cursor.stream(sql, params, size=SELECT_FETCH_ROWS)
        else:
            cursor = driver.cursor(name="churnsync_changes", binary=True)
            cursor.execute(sql, params)
            rows = chain.from_iterable(iter(partial(cursor.fetchmany, SELECT_FETCH_ROWS), []))
        with cursor:  # closed however the stream ends: a consumer that stops early leaves no query or cursor open
            try:
                while True:
                    with _collector_paused():
                        chunk = [
                            Change(
                                customer,
                                {
                                    names[a]: n if n is not None else t
                                    for a, n, t in zip(codes, nums, texts, strict=True)
                                },
                            )
                            for customer, codes, nums, texts in islice(rows, chunk_size)
                        ]
                    if not chunk:
                        break
                    yield chunk
            finally:
                # psycopg's stream holds the connection's lock while suspended: closed now (it cancels the query and
                # reads what is left), not when an error's traceback lets it go, or the rollback after it would wait.
                if isinstance(rows, Generator):
                    rows.close()

    @staticmethod
    def _load_documents(cursor: Any, chunk_size: int) -> Iterator[list[Change]]:
        """SQLite: (customer, JSON object) rows as chunks of Changes."""
        while rows := cursor.fetchmany(chunk_size):
            with _collector_paused():
                chunk = [Change(customer, _read_document(document)) for customer, document in rows]
            yield chunk

    def _sqlite_exact_documents(self, conn: Connection) -> bool:
        """SQLite: whether this SQLite library writes the selection's JSON objects with numbers that read back exactly.

        Its text for a double (``printf('%!.17g')``) is computed with the C library's ``long double`` where that is
        wider than a double, or since SQLite 3.43 with its own exact method; where neither holds it can be off in the
        last digit, and a value sent that differs from the stored one would be selected again at every sync. Checked
        once per store against known doubles (random bit patterns, rounded and whole numbers, the extremes), through
        the same SQL and parser as the selection; if one differs, or the library has no JSON functions, the selection
        is read as rows instead (exact, about twice as long).
        """
        if self._documents_exact is None:
            self._documents_exact = self._check_documents(conn)
            if not self._documents_exact:
                log.debug(
                    "store: SQLite %s writes numbers inexactly as JSON: selections are read as rows",
                    sqlite3.sqlite_version,
                )
        return self._documents_exact

    @staticmethod
    def _check_documents(conn: Connection) -> bool:
        rng = random.Random(20261130)
        numbers = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308]
        numbers += [0.1, 0.57, 1 / 3, 2.0**53, 2.0**53 + 2, 1e15, 1e16, 123456789.12345679, 99.99]
        numbers += [round(rng.uniform(-1000, 1000), 2) for _ in range(500)]
        numbers += [rng.random() for _ in range(500)]
        numbers += [float(rng.randrange(-(10**12), 10**12)) for _ in range(100)]
        while len(numbers) < 3000:
            number = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            if math.isfinite(number):
                numbers.append(number)
        probe = sa.Table(
            "churnsync_json_probe", sa.MetaData(), sa.Column("num_value", sa.Double), prefixes=["TEMPORARY"]
        )
        try:
            probe.drop(conn, checkfirst=True)
            probe.create(conn)
            driver: Any = conn.connection.driver_connection
            driver.executemany("INSERT INTO temp.churnsync_json_probe VALUES (?)", [(n,) for n in numbers])
            value = _json_value(probe.c.num_value, sa.cast(sa.null(), sa.Text))
            # As the selection builds its objects: grouped (here one row a group).
            documents = sa.select(probe.c.num_value, sa.func.json_group_object("v", value)).group_by(
                sa.literal_column("rowid")
            )
            rows = conn.execute(documents).all()
            probe.drop(conn)
        except sa.exc.OperationalError:  # no JSON functions in this SQLite library
            return False
        return len(rows) == len(numbers) and all(_read_document(document)["v"] == number for number, document in rows)

    @staticmethod
    def _group_changes(cursor: Any, chunk_size: int, names: Mapping[int, str]) -> Iterator[list[Change]]:
        """SQLite: (customer, attribute code, num, text) rows in key order as chunks of Changes, with each code's name
        from ``names``.

        Whole fetched blocks are grouped by customer in C (groupby) and each group becomes its dict in one
        comprehension. The selection of everyone
        at 1M customers × 8 values took 14.8 s in ``bench/store.py`` against 21.3 s with a loop per row (16.5–16.7 s
        against 17.3–17.9 s when run alone on a store written beforehand).
        """
        chunk: list[Change] = []
        customer: str | None = None
        values: dict[str, Value] = {}
        while rows := cursor.fetchmany(SELECT_FETCH_ROWS):
            for customer_id, group in groupby(rows, key=itemgetter(0)):
                found = {names[a]: (float(n) if n is not None else t) for _, a, n, t in group}
                if customer_id == customer:  # the customer continues from the previous block
                    values.update(found)
                    continue
                if customer is not None:
                    chunk.append(Change(customer, values))
                    if len(chunk) >= chunk_size:
                        yield chunk
                        chunk = []
                customer, values = customer_id, found
        if customer is not None:
            chunk.append(Change(customer, values))
        if chunk:
            yield chunk


class _AttributeNames(dict[int, str]):
    """Attribute codes and their names, read when a selection starts; a code added since (by a write that slipped in
    while the selection streams, which the run lock keeps out) is looked up on a connection of its own."""

    def __init__(self, engine: sa.Engine, names: Mapping[int, str]) -> None:
        super().__init__(names)
        self._engine = engine

    def __missing__(self, code: int) -> str:
        a = s.attributes
        with self._engine.connect() as conn:
            name = conn.execute(sa.select(a.c.name).where(a.c.id == code)).scalar_one()
        self[code] = str(name)
        return self[code]


def _driver_error(exc: BaseException) -> bool:
    """True for an error of the database driver itself (sqlite3, psycopg), raised where the store uses it directly."""
    return isinstance(exc, sqlite3.Error) or type(exc).__module__.startswith("psycopg")


def _while_closing(exc: BaseException) -> bool:
    """True when ``exc`` was raised while a generator was being closed (``GeneratorExit`` in its context chain)."""
    seen: BaseException | None = exc.__context__
    while seen is not None:
        if isinstance(seen, GeneratorExit):
            return True
        seen = seen.__context__
    return False


__all__ = ["AttributeStore", "CompactSummary", "HistoryEntry", "WriteSummary", "alembic_config", "run_changes"]
