"""The attribute store: current predictions, their history, what each destination acknowledged, and runs.

One class, :class:`AttributeStore`, over SQLAlchemy Core on SQLite (the default, in WAL mode) or PostgreSQL
(psycopg 3). Tables are described in :mod:`churnsync.store.schema`; Alembic migrations in ``migrations/``
create them and are applied by :meth:`AttributeStore.open`.

Bulk work is set-based: a run's predictions are staged into a temporary table (executemany on SQLite, COPY
on PostgreSQL), then two statements append the changed values to the history and upsert them into the
current values. The next sync's changes are one streamed query. Nothing loops per customer in SQL round
trips.

Example::

    store = AttributeStore.open("sqlite:///churnsync.db")
    run = store.start_prediction_run(as_of=cut, horizon_days=30, model_version="bgnbd-1", details={})
    summary = store.write_predictions(run, table, settings.attributes)
    store.finish_prediction_run(run, status="succeeded", summary={"values_changed": summary.values_changed})
    for chunk in store.select_changes("braze"):
        ...  # send, then store.record_batch(sync_run_id, "braze", outcome)
    store.close()
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util.exc import CommandError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url

from churnsync.errors import StoreError
from churnsync.records import BatchOutcome, Change, SyncCounts, Value
from churnsync.store import schema as s

if TYPE_CHECKING:
    import pyarrow as pa

    from churnsync.config import AttributeSettings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

#: How long a SQLite writer waits for another writer's lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: SQLite page cache per connection (KiB).
SQLITE_CACHE_KIB = 65_536
#: PostgreSQL sort memory for the duration of a write (the server default, 4 MB, spills to disk).
POSTGRES_WRITE_WORK_MEM = "256MB"
#: PostgreSQL advisory lock held while migrating ("chsy"); SQLite's BEGIN IMMEDIATE does the same job.
MIGRATION_LOCK_KEY = 0x63687379
#: Customers converted and staged at a time: bounds the memory of a write, whatever the run's size.
STAGE_CHUNK_CUSTOMERS = 50_000
#: Rows fetched per round trip while streaming the sync selection.
SELECT_FETCH_ROWS = 10_000
#: A move of exactly the tolerance counts as a change; this absorbs binary rounding (0.58 - 0.56 < 0.02).
TOLERANCE_SLACK = 1e-9

_FINAL_STATUSES = ("succeeded", "failed", "partial")


@dataclass(frozen=True)
class WriteSummary:
    """What one :meth:`AttributeStore.write_predictions` call changed."""

    customers_scored: int
    customers_new: int
    customers_changed: int
    values_changed: int


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


def _dialect_insert(dialect: str, table: sa.Table) -> Any:
    """INSERT that supports ON CONFLICT, for the engine at hand (both render the same SQL)."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


# The per-batch statements, as plain SQL: SQLAlchemy's per-row parameter processing cost more than the
# work itself, and this runs once per request of every sync. SQLite takes an executemany; PostgreSQL one
# statement over arrays (unnest), 3-4x faster there than executemany or a multi-row VALUES list.
_STATE_INSERT = (
    "INSERT INTO {table} (destination, customer_id, attribute, num_value, text_value, sync_run_id, acknowledged_at) "
)
_STATE_UPSERT_TAIL = (
    " ON CONFLICT (destination, customer_id, attribute) DO UPDATE SET num_value = excluded.num_value, "
    "text_value = excluded.text_value, sync_run_id = excluded.sync_run_id, acknowledged_at = excluded.acknowledged_at"
)
_STATE_ROWS = {
    "sqlite": "VALUES (?, ?, ?, ?, ?, ?, ?)",
    "postgresql": (
        "SELECT %s, u.customer_id, u.attribute, u.num_value, u.text_value, %s, %s "
        "FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[]) "
        "AS u(customer_id, attribute, num_value, text_value)"
    ),
}
_FAILURE_INSERT = {
    "sqlite": "INSERT INTO sync_failures (sync_run_id, seq, customer_id, reason) VALUES (?, ?, ?, ?)",
    "postgresql": (
        "INSERT INTO sync_failures (sync_run_id, seq, customer_id, reason) "
        "SELECT %s, %s, u.customer_id, u.reason FROM unnest(%s::text[], %s::text[]) AS u(customer_id, reason)"
    ),
}


# Staging tables: temporary, one per write, gone at commit (PostgreSQL) or dropped explicitly (SQLite).
_stage_metadata = sa.MetaData()
_stage = sa.Table(
    "churnsync_stage",
    _stage_metadata,
    sa.Column("customer_id", s.key_type(), nullable=False),
    sa.Column("attr_idx", sa.Integer, nullable=False),
    sa.Column("num_value", sa.Double, nullable=True),
    sa.Column("text_value", sa.Text, nullable=True),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
# One row per attribute: its name and change threshold, so the staged rows carry a small integer only.
_stage_rules = sa.Table(
    "churnsync_stage_rules",
    _stage_metadata,
    sa.Column("attr_idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("attribute", s.key_type(), nullable=False),
    sa.Column("threshold", sa.Double, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)


@dataclass(frozen=True)
class _Attribute:
    name: str
    idx: int
    kind: str  # "num" | "text" | "time" | "date"
    round: int | None
    threshold: float


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
        plan.append(_Attribute(name, len(plan), kind, rule.round if kind == "num" else None, threshold))
    return plan


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
        try:
            self._engine = self._create_engine()
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"store {self.url}: cannot create a database engine ({exc})",
                remedy="Use sqlite:///path/to/churnsync.db or postgresql+psycopg://user@host/database",
            ) from exc
        self._time_to_db = s.UtcDateTime().bind_processor(self._engine.dialect)

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

    def write_predictions(self, run_id: int, table: pa.Table, attributes: AttributeSettings) -> WriteSummary:
        """Store one run's predictions: only values that really changed update the current row and the history.

        ``table`` holds a string ``customer_id`` column and one column per attribute: numbers (rounded by
        the attribute's rule; NaN and ±inf are stored as no value), strings, timestamps (stored as ISO 8601
        UTC text with ``Z``) or dates. A value changed when it is new, turns null or non-null, differs as
        text, or (numbers) moved by at least the rule's ``abs_tolerance`` (any move when that is 0). A
        missing value and a null are the same: a customer's first null is no change.

        Customers already in the store but absent from ``table`` are left as they are.
        """
        plan = _plan_columns(table, attributes)
        now = self._now()
        with self._transaction(f"write predictions of run {run_id}", write=True) as conn:
            self._require_running(conn, run_id)
            if self._dialect == "postgresql":  # the change join sorts the run's values: keep that in memory
                conn.exec_driver_sql(f"SET LOCAL work_mem = '{POSTGRES_WRITE_WORK_MEM}'")
            self._create_stage(conn, plan)
            self._fill_stage(conn, table, plan)
            summary = self._apply_stage(conn, run_id, now, scored=table.num_rows)
            if self._dialect == "sqlite":
                conn.exec_driver_sql("DROP TABLE temp.churnsync_stage")
                conn.exec_driver_sql("DROP TABLE temp.churnsync_stage_rules")
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
        return summary

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

    def select_changes(self, destination: str, *, chunk_size: int = 5000) -> Iterator[list[Change]]:
        """Stream, in chunks of ``chunk_size`` customers ordered by id, what differs from ``destination``.

        Each :class:`Change` holds only the attributes whose current value differs from what the
        destination acknowledged (numbers as float, text as str, a deleted value as None). An attribute
        never acknowledged counts as null there, so a null current value that was never sent is no change.
        The query reads a snapshot taken at the first ``next()``; batches may be recorded meanwhile.
        """
        if chunk_size < 1:
            raise StoreError(f"chunk_size must be at least 1, not {chunk_size}", remedy="Pass a positive size")
        return self._stream_changes(destination, chunk_size)

    def record_batch(self, sync_run_id: int, destination: str, outcome: BatchOutcome) -> None:
        """Journal one acknowledged request and, in the same transaction, what the destination now holds.

        Writes the ``sync_batches`` row, upserts ``destination_state`` for every accepted attribute, appends
        them to ``destination_acks`` (the log that :meth:`history` reads), and one ``sync_failures`` row per
        refused customer. This is the only writer of acknowledged state.
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
            if failures:
                self._write_failures(conn, sync_run_id, outcome.seq, failures)

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
        d = s.destination_state
        query = (
            sa.select(d.c.customer_id, d.c.attribute, d.c.num_value, d.c.text_value)
            .where(d.c.destination == destination)
            .order_by(d.c.customer_id, d.c.attribute)
        )
        with self._transaction(f"read the state acknowledged by {destination}") as conn:
            return self._nest(conn.execute(query))

    def current_values(self, customer_id: str | None = None) -> dict[str, dict[str, Value]]:
        """Current values per customer and attribute (None: a value that turned null); one customer or all."""
        v = s.attribute_values
        query = sa.select(v.c.customer_id, v.c.attribute, v.c.num_value, v.c.text_value).order_by(
            v.c.customer_id, v.c.attribute
        )
        if customer_id is not None:
            query = query.where(v.c.customer_id == customer_id)
        with self._transaction("read current values") as conn:
            return self._nest(conn.execute(query))

    def history(self, customer_id: str) -> list[HistoryEntry]:
        """Every change of a customer's attributes in time order, and when each destination acknowledged it."""
        h, runs, a = s.attribute_history, s.prediction_runs, s.destination_acks
        valid_to = sa.func.lead(h.c.changed_at, type_=s.UtcDateTime()).over(
            partition_by=h.c.attribute, order_by=(h.c.changed_at, h.c.id)
        )
        changes = (
            sa.select(
                h.c.id,
                h.c.attribute,
                h.c.old_num,
                h.c.old_text,
                h.c.new_num,
                h.c.new_text,
                h.c.prediction_run_id,
                h.c.changed_at,
                valid_to.label("valid_to"),
            )
            .where(h.c.customer_id == customer_id)
            .subquery("changes")
        )
        entries_query = (
            sa.select(changes, runs.c.model_version)
            .join(runs, runs.c.id == changes.c.prediction_run_id)
            .order_by(changes.c.changed_at, changes.c.id)
        )
        # An acknowledgement belongs to a change when it carries the same value while that value was current.
        acks_query = (
            sa.select(changes.c.id, a.c.destination, sa.func.min(a.c.acknowledged_at).label("acknowledged_at"))
            .join(
                a,
                sa.and_(
                    a.c.customer_id == customer_id,
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
            connect_args: dict[str, Any] = {"application_name": "churnsync"}
            if "connect_timeout" not in self._url.query:
                connect_args["connect_timeout"] = 10
            return sa.create_engine(
                self._url, connect_args=connect_args, json_serializer=serializer, pool_pre_ping=True
            )
        engine = sa.create_engine(self._url, json_serializer=serializer)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy emits BEGIN itself (below): the sqlite3 module's own transaction handling skips
            # SELECTs and DDL, which would break snapshots and transactional migrations.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)  # readers (dashboard, sync) never block the writer
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # the 2 MB default thrashes on big upserts
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the write lock up front, so two writers queue on busy_timeout instead of one
            # failing when it upgrades a read snapshot that the other has made stale.
            immediate = conn.get_execution_options().get("churnsync_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def _db_time(self, value: datetime) -> Any:
        """``value`` as the driver takes it for a UtcDateTime column (for SQL sent without SQLAlchemy types)."""
        return value if self._time_to_db is None else self._time_to_db(value)

    def _now(self) -> datetime:
        return _aware(self._clock(), "the clock's time")

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

    def _create_stage(self, conn: Connection, plan: list[_Attribute]) -> None:
        if self._dialect == "sqlite":  # a failed write on this pooled connection may have left them behind
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.churnsync_stage")
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.churnsync_stage_rules")
        _stage.create(conn)
        _stage_rules.create(conn)
        if plan:
            conn.execute(
                _stage_rules.insert(),
                [{"attr_idx": a.idx, "attribute": a.name, "threshold": a.threshold} for a in plan],
            )

    def _fill_stage(self, conn: Connection, table: pa.Table, plan: list[_Attribute]) -> None:
        """Stage the run's values long-format, a chunk of customers at a time (memory stays flat)."""
        if not plan or table.num_rows == 0:
            return
        driver: Any = conn.connection.driver_connection
        batches = table.select(["customer_id", *(a.name for a in plan)]).to_batches(max_chunksize=STAGE_CHUNK_CUSTOMERS)
        if self._dialect == "postgresql":
            self._copy_stage(driver, batches, plan)
            conn.exec_driver_sql("ANALYZE churnsync_stage")  # temp tables get no autovacuum statistics
            return
        cursor = driver.cursor()
        try:
            for batch in batches:
                ids = batch.column("customer_id").cast("string").to_pylist()
                for attr in plan:
                    numbers, texts = _column_values(batch, attr)
                    cursor.executemany(
                        "INSERT INTO temp.churnsync_stage (customer_id, attr_idx, num_value, text_value) "
                        "VALUES (?, ?, ?, ?)",
                        zip(ids, repeat(attr.idx), numbers.to_pylist(), texts.to_pylist(), strict=False),
                    )
        finally:
            cursor.close()

    @staticmethod
    def _copy_stage(driver: Any, batches: list[Any], plan: list[_Attribute]) -> None:
        """PostgreSQL: COPY the long-format rows as CSV written by Arrow (no Python loop per row)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        options = pacsv.WriteOptions(include_header=False)
        sql = "COPY churnsync_stage (customer_id, attr_idx, num_value, text_value) FROM STDIN (FORMAT csv)"
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for batch in batches:
                ids = batch.column("customer_id").cast(pa.string())
                parts = []
                for attr in plan:
                    numbers, texts = _column_values(batch, attr)
                    parts.append(
                        pa.table(
                            {
                                "customer_id": ids,
                                "attr_idx": pa.repeat(pa.scalar(attr.idx, pa.int32()), len(ids)),
                                "num_value": numbers,
                                "text_value": texts,
                            }
                        )
                    )
                buffer = BytesIO()
                # Arrow writes nulls as empty fields and quotes every string, so "" stays an empty string.
                pacsv.write_csv(pa.concat_tables(parts), buffer, options)
                copy.write(buffer.getbuffer())

    def _apply_stage(self, conn: Connection, run_id: int, now: datetime, *, scored: int) -> WriteSummary:
        """Append changed values to the history, then upsert exactly those into the current values."""
        h, v, st, rules = s.attribute_history, s.attribute_values, _stage, _stage_rules
        first_id = conn.execute(sa.select(sa.func.coalesce(sa.func.max(h.c.id), 0))).scalar_one()
        changed = sa.or_(
            st.c.text_value.is_distinct_from(v.c.text_value),
            sa.and_(st.c.num_value.is_(None), v.c.num_value.is_not(None)),
            sa.and_(st.c.num_value.is_not(None), v.c.num_value.is_(None)),
            # threshold is 0 for an exact compare; `<>` keeps an equal number from counting then.
            sa.and_(
                sa.func.abs(st.c.num_value - v.c.num_value) >= rules.c.threshold,
                st.c.num_value != v.c.num_value,
            ),
        )
        candidates = (
            sa.select(
                st.c.customer_id,
                rules.c.attribute,
                v.c.num_value,
                v.c.text_value,
                st.c.num_value,
                st.c.text_value,
                sa.literal(run_id, sa.Integer),
                sa.literal(now, s.UtcDateTime()),
            )
            .select_from(
                st.join(rules, rules.c.attr_idx == st.c.attr_idx).outerjoin(
                    v, sa.and_(v.c.customer_id == st.c.customer_id, v.c.attribute == rules.c.attribute)
                )
            )
            .where(changed)
            # In key order, history ids and the current values' clustered key grow together: B-tree appends.
            .order_by(st.c.customer_id, rules.c.attribute)
        )
        conn.execute(
            h.insert().from_select(
                [
                    "customer_id",
                    "attribute",
                    "old_num",
                    "old_text",
                    "new_num",
                    "new_text",
                    "prediction_run_id",
                    "changed_at",
                ],
                candidates,
            )
        )
        this_write = sa.and_(h.c.id > first_id, h.c.prediction_run_id == run_id)
        values_changed = conn.execute(sa.select(sa.func.count()).where(this_write)).scalar_one()
        # Per changed customer (not per value): is it new, i.e. without any current value before this write?
        touched = sa.select(h.c.customer_id).where(this_write).distinct().subquery("touched")
        is_new = ~sa.exists().where(v.c.customer_id == touched.c.customer_id)
        customers_changed, customers_new = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((is_new, 1), else_=0)), 0)).select_from(
                touched
            )
        ).one()
        upsert = _dialect_insert(self._dialect, v).from_select(
            ["customer_id", "attribute", "num_value", "text_value", "prediction_run_id", "updated_at"],
            sa.select(
                h.c.customer_id, h.c.attribute, h.c.new_num, h.c.new_text, h.c.prediction_run_id, h.c.changed_at
            ).where(this_write),
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[v.c.customer_id, v.c.attribute],
            set_={
                "num_value": upsert.excluded.num_value,
                "text_value": upsert.excluded.text_value,
                "prediction_run_id": upsert.excluded.prediction_run_id,
                "updated_at": upsert.excluded.updated_at,
            },
        )
        conn.execute(upsert)
        return WriteSummary(
            customers_scored=scored,
            customers_new=int(customers_new),
            customers_changed=int(customers_changed),
            values_changed=int(values_changed),
        )

    # ------------------------------------------------------------------ internals: syncing

    def _write_state(
        self,
        conn: Connection,
        destination: str,
        sync_run_id: int,
        stamp: Any,
        state: dict[tuple[str, str], tuple[float | None, str | None]],
    ) -> None:
        """Upsert acknowledged values into destination_state and append them to destination_acks."""
        rows = _STATE_ROWS[self._dialect]
        upsert = _STATE_INSERT.format(table="destination_state") + rows + _STATE_UPSERT_TAIL
        log = _STATE_INSERT.format(table="destination_acks") + rows
        if self._dialect == "postgresql":
            keys, values = list(state), list(state.values())
            params = (
                destination,
                sync_run_id,
                stamp,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [v[0] for v in values],
                [v[1] for v in values],
            )
            conn.exec_driver_sql(upsert, params)
            conn.exec_driver_sql(log, params)
            return
        flat = [(destination, c, a, n, t, sync_run_id, stamp) for (c, a), (n, t) in state.items()]
        conn.exec_driver_sql(upsert, flat)
        conn.exec_driver_sql(log, flat)

    def _write_failures(self, conn: Connection, sync_run_id: int, seq: int, failures: list[tuple[str, str]]) -> None:
        sql = _FAILURE_INSERT[self._dialect]
        if self._dialect == "postgresql":
            params = (sync_run_id, seq, [f[0] for f in failures], [f[1] for f in failures])
            conn.exec_driver_sql(sql, params)
        else:
            conn.exec_driver_sql(sql, [(sync_run_id, seq, c, r) for c, r in failures])

    def _changes_query(self, destination: str) -> sa.Select[Any]:
        v, d = s.attribute_values, s.destination_state
        acknowledged = sa.and_(
            d.c.destination == destination,
            d.c.customer_id == v.c.customer_id,
            d.c.attribute == v.c.attribute,
        )
        # Never acknowledged = null at the destination: IS DISTINCT FROM against the outer join's nulls.
        return (
            sa.select(v.c.customer_id, v.c.attribute, v.c.num_value, v.c.text_value)
            .select_from(v.outerjoin(d, acknowledged))
            .where(
                sa.or_(
                    v.c.num_value.is_distinct_from(d.c.num_value),
                    v.c.text_value.is_distinct_from(d.c.text_value),
                )
            )
            .order_by(v.c.customer_id, v.c.attribute)
        )

    def _stream_changes(self, destination: str, chunk_size: int) -> Iterator[list[Change]]:
        query = self._changes_query(destination)
        # The result is closed explicitly: a consumer that stops early must not leave PostgreSQL's server
        # cursor open.
        with (
            self._transaction(f"select the changes for {destination}") as conn,
            conn.execute(query.execution_options(yield_per=SELECT_FETCH_ROWS)) as result,
        ):
            chunk: list[Change] = []
            customer: str | None = None
            values: dict[str, Value] = {}
            for customer_id, attribute, num, text in result:
                if customer_id != customer:
                    if customer is not None:
                        chunk.append(Change(customer, values))
                        if len(chunk) >= chunk_size:
                            yield chunk
                            chunk = []
                    customer, values = customer_id, {}
                values[attribute] = _to_value(num, text)
            if customer is not None:
                chunk.append(Change(customer, values))
            if chunk:
                yield chunk


__all__ = ["AttributeStore", "HistoryEntry", "WriteSummary", "alembic_config"]
