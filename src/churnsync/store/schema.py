"""The attribute store's tables, as SQLAlchemy Core metadata (migration 0001 creates exactly these).

Values are stored long-format, one row per (customer, attribute), in two typed columns: ``num_value``
(double) and ``text_value`` (text); at most one is set, and both null means "no value". Two columns
rather than one text or JSON column, because tolerance needs arithmetic in SQL on both engines, numbers
must come back as the same float that was written (a text round trip could change them), and text
(tiers, ISO times) must compare exactly as text. A missing row and a row with both columns null mean
the same thing: the customer has no value for that attribute. The attribute is a 2-byte code (``attribute_id``,
revision 0010), whose name ``attributes`` holds once.

::

    prediction_runs ─┬─< attribute_values     current value per (customer, attribute)
                     └─< attribute_history    past values: value, run, valid_from → valid_to (0006)
    sync_runs ───────┬─< sync_batches         journal: one row per acknowledged request
                     ├─< sync_failures        one row per object the destination refused
                     ├─< destination_state    what each destination last acknowledged per (customer, attribute)
                     └─< destination_acks     acknowledgements replaced by a later one (0008); with the state,
                                              the log of every acknowledged value (for history)
    customers                                 per customer: the last prediction run that scored it (0002; 0 for
                                              the latest write's run, 0009), and the change counter when it last
                                              changed (0005)
    store_counters                            the change counter; writers hold its row lock (0005); the run of
                                              the latest write (0009)
    selection_watermarks                      per destination: the counter and policy of its last selection (0005)
    selection_pending                         per destination: selected customers not acknowledged yet (0005)
    store_lock                                at most one row: the run holding the run lock (0002)
    attributes                                each attribute name once, with the code the four tables above hold
                                              instead of it (0010)

A value is current from its ``updated_at`` (``attribute_values``); when a write replaces it, it moves to
``attribute_history`` with ``valid_to`` = the replacement's time.

The four high-volume tables (current values, history, destination state, acks) carry run ids without
foreign keys: on PostgreSQL the per-row constraint triggers took ~40 % of a bulk write. The store checks
the run before it writes (a prediction run must be ``running``; a sync run must exist and belong to the
destination), and it is their only writer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

#: Run states shared by prediction and sync runs.
RUN_STATUSES = ("running", "succeeded", "failed", "partial")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every engine.

    PostgreSQL keeps ``timestamp with time zone``; SQLite keeps an ISO string without an offset (always
    UTC, so strings sort and compare in time order). Values come back aware, in UTC. A naive value
    given to the store is taken as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # a raw SQLite string from an aggregate such as min()
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def key_type(length: int = 255) -> sa.types.TypeEngine[str]:
    """A short identifier column: bytewise ("C") collation on PostgreSQL, as SQLite's default BINARY.

    The same order on both engines (``select_changes`` orders by customer id), and faster comparisons on
    PostgreSQL than a linguistic collation.
    """
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def id_type() -> sa.types.TypeEngine[int]:
    """A 64-bit surrogate key on PostgreSQL; SQLite's INTEGER PRIMARY KEY (the rowid) is already 64-bit."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _status_check() -> sa.CheckConstraint:
    allowed = ", ".join(f"'{s}'" for s in RUN_STATUSES)
    return sa.CheckConstraint(f"status IN ({allowed})", name="status")


prediction_runs = sa.Table(
    "prediction_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("as_of", UtcDateTime, nullable=False),
    sa.Column("horizon_days", sa.Integer, nullable=False),
    sa.Column("model_version", sa.String(200), nullable=False),
    sa.Column("customers_scored", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("customers_new", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("customers_changed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("values_changed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("details", sa.JSON, nullable=True),
    sa.Column("summary", sa.JSON, nullable=True),
    _status_check(),
)

attribute_values = sa.Table(
    "attribute_values",
    metadata,
    sa.Column("customer_id", key_type(), nullable=False),
    sa.Column("attribute_id", sa.SmallInteger, nullable=False),
    sa.Column("num_value", sa.Double, nullable=True),
    sa.Column("text_value", sa.Text, nullable=True),
    sa.Column("prediction_run_id", sa.Integer, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("customer_id", "attribute_id"),
    sa.CheckConstraint("num_value IS NULL OR text_value IS NULL", name="one_value"),
    # Clustered on (customer_id, attribute): lookups and the ordered scan of select_changes read in place.
    sqlite_with_rowid=False,
)

#: Past values (revision 0006): one row per value that was current and has been replaced, valid from ``valid_from``
#: until ``valid_to`` (the replacement). The current value lives only in ``attribute_values``, as the current row of a
#: system-versioned table lives in the table and its past versions in the history table (SQL:2011): a value is
#: written once while current, and moved here when replaced. A customer's history is these rows followed by the
#: current value; a first load writes no history row.
attribute_history = sa.Table(
    "attribute_history",
    metadata,
    sa.Column("id", id_type(), primary_key=True, autoincrement=True),
    sa.Column("customer_id", key_type(), nullable=False),
    sa.Column("attribute_id", sa.SmallInteger, nullable=False),
    sa.Column("num_value", sa.Double, nullable=True),
    sa.Column("text_value", sa.Text, nullable=True),
    # The run that set the value, and the run that replaced it.
    sa.Column("prediction_run_id", sa.Integer, nullable=False),
    sa.Column("replaced_by_run_id", sa.Integer, nullable=False),
    sa.Column("valid_from", UtcDateTime, nullable=False),
    sa.Column("valid_to", UtcDateTime, nullable=False),
    sa.Index(None, "customer_id", "attribute_id", "valid_from"),
)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("prediction_run_id", sa.Integer, sa.ForeignKey("prediction_runs.id"), nullable=True),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("selected", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("sent", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("accepted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("data_points", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("retries", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rate_limited", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("error", sa.Text, nullable=True),
    _status_check(),
    sa.Index(None, "destination", "id"),
)

sync_batches = sa.Table(
    "sync_batches",
    metadata,
    sa.Column("id", id_type(), primary_key=True, autoincrement=True),
    sa.Column("sync_run_id", sa.Integer, sa.ForeignKey("sync_runs.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("http_status", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("failed", sa.Integer, nullable=False),
    sa.Column("data_points", sa.Integer, nullable=False),
    sa.Column("acknowledged_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("sync_run_id", "seq"),
)

sync_failures = sa.Table(
    "sync_failures",
    metadata,
    sa.Column("id", id_type(), primary_key=True, autoincrement=True),
    sa.Column("sync_run_id", sa.Integer, sa.ForeignKey("sync_runs.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("customer_id", key_type(), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Index(None, "sync_run_id"),
)

destination_state = sa.Table(
    "destination_state",
    metadata,
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("customer_id", key_type(), nullable=False),
    sa.Column("attribute_id", sa.SmallInteger, nullable=False),
    sa.Column("num_value", sa.Double, nullable=True),
    sa.Column("text_value", sa.Text, nullable=True),
    sa.Column("sync_run_id", sa.Integer, nullable=False),
    sa.Column("acknowledged_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("destination", "customer_id", "attribute_id"),
    sa.CheckConstraint("num_value IS NULL OR text_value IS NULL", name="one_value"),
    sqlite_with_rowid=False,
)

#: Acknowledgements replaced by a later one (revision 0008): the latest acknowledgement of a (destination, customer,
#: attribute) lives only in ``destination_state``, and moves here when the destination acknowledges that key again,
#: as a replaced value moves from ``attribute_values`` to ``attribute_history``. :func:`acknowledgements` is the whole
#: log. Rows keep their order of arrival in ``id``.
destination_acks = sa.Table(
    "destination_acks",
    metadata,
    sa.Column("id", id_type(), primary_key=True, autoincrement=True),
    sa.Column("sync_run_id", sa.Integer, nullable=False),
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("customer_id", key_type(), nullable=False),
    sa.Column("attribute_id", sa.SmallInteger, nullable=False),
    sa.Column("num_value", sa.Double, nullable=True),
    sa.Column("text_value", sa.Text, nullable=True),
    sa.Column("acknowledged_at", UtcDateTime, nullable=False),
    sa.Index(None, "customer_id", "attribute_id", "acknowledged_at"),
)


def acknowledgements(customer_id: str, tables: tuple[sa.Table, sa.Table] | None = None) -> sa.Subquery:
    """A customer's acknowledgement log: every value each destination acknowledged, replaced ones and the latest.

    Columns: ``destination``, ``attribute`` (the name), ``num_value``, ``text_value``, ``sync_run_id``,
    ``acknowledged_at``, ``latest`` (1 for the row from ``destination_state``) and ``seq`` (the log row's ``id``; 0 for
    the latest), so that ``acknowledged_at, latest, seq`` orders a key's acknowledgements in the order they came.
    ``tables``: (acks, state) as a store before revision 0010 has them, with the name in each row (the dashboard).
    """
    a, d = tables or (destination_acks, destination_state)
    key = attribute_key(a)
    # destination_state is keyed by destination first: naming the destinations lets a lookup use its key.
    destinations = sa.select(sync_runs.c.destination).distinct()
    replaced = sa.select(
        a.c.destination,
        a.c[key],
        a.c.num_value,
        a.c.text_value,
        a.c.sync_run_id,
        a.c.acknowledged_at,
        sa.literal(0).label("latest"),
        a.c.id.label("seq"),
    ).where(a.c.customer_id == customer_id)
    latest = sa.select(
        d.c.destination,
        d.c[key],
        d.c.num_value,
        d.c.text_value,
        d.c.sync_run_id,
        d.c.acknowledged_at,
        sa.literal(1),
        sa.literal(0),
    ).where(d.c.customer_id == customer_id, d.c.destination.in_(destinations))
    return by_name(sa.union_all(replaced, latest), "acknowledgements")


# ---- revision 0002 (issue 4): who was scored when, and the run lock.

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", key_type(), nullable=False),
    # The first and the last prediction run that scored the customer (whether or not a value changed):
    # "no longer scored" and prediction age (TTL) are decided from the last (:func:`last_scored_run`). Since revision
    # 0009 a last_run_id of 0 means "the run of the store's latest write" (``store_counters`` row ``scored_by``):
    # a write then rewrites only the rows of customers that are new, changed, come back, or that it did not score,
    # instead of every scored customer's row.
    sa.Column("first_run_id", sa.Integer, nullable=False),
    sa.Column("last_run_id", sa.Integer, nullable=False),
    # The store's change counter (store_counters) when something that decides what this customer should hold at
    # a destination last moved: a value changed, or it was scored again after a gap (0005). Selection reads the
    # customers whose mark is newer than the destination's watermark, instead of every current value.
    sa.Column("changed_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.PrimaryKeyConstraint("customer_id"),
    sa.Index(None, "changed_seq"),
    # The customers the latest write did not score (0009): few, looked up when a write brings them back.
    sa.Index(
        "ix_customers_not_scored_by_latest",
        "customer_id",
        postgresql_where=sa.text("last_run_id <> 0"),
        sqlite_where=sa.text("last_run_id <> 0"),
    ),
    sqlite_with_rowid=False,
)

#: The ``store_counters`` row holding the prediction run of the store's latest write that scored customers (0009).
SCORED_BY = "scored_by"


def last_scored_run(table: sa.Table = customers) -> Any:
    """The last prediction run that scored each customer of ``table``, as a SQL expression.

    ``last_run_id``, or where it is 0 the run of the store's latest write (``store_counters`` row :data:`SCORED_BY`).
    """
    return sa.case((table.c.last_run_id == 0, latest_write_run().scalar_subquery()), else_=table.c.last_run_id)


def latest_write_run() -> sa.Select[Any]:
    """The run of the store's latest write that scored customers (:data:`SCORED_BY`): what ``last_run_id`` 0 means."""
    return sa.select(store_counters.c.value).where(store_counters.c.name == SCORED_BY)


store_lock = sa.Table(
    "store_lock",
    metadata,
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("token", sa.String(32), nullable=False),
    sa.Column("acquired_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("name"),
)

# -- the sync journal and quarantine (issue 5, revision 0003; written by churnsync.store.ledger) -----------------

#: Journal states: ``intended`` before a request is sent, ``acknowledged`` in the transaction that records
#: Braze's answer, ``in_doubt`` when a later run found it still intended (the process died in flight).
JOURNAL_STATUSES = ("intended", "acknowledged", "in_doubt")

sync_journal = sa.Table(
    "sync_journal",
    metadata,
    sa.Column("id", id_type(), primary_key=True, autoincrement=True),
    sa.Column("sync_run_id", sa.Integer, nullable=False),
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("objects", sa.Integer, nullable=False),
    sa.Column("data_points", sa.Integer, nullable=False),
    sa.Column("payload_sha256", sa.String(64), nullable=False),
    sa.Column("customer_ids", sa.Text, nullable=False),
    sa.Column("intended_at", UtcDateTime, nullable=False),
    sa.Column("acknowledged_at", UtcDateTime, nullable=True),
    sa.Column("resolved_by_run_id", sa.Integer, nullable=True),
    sa.CheckConstraint("status IN ('intended', 'acknowledged', 'in_doubt')", name="status"),
    sa.UniqueConstraint("sync_run_id", "seq"),
    sa.Index(None, "destination", "status"),
)

sync_object_failures = sa.Table(
    "sync_object_failures",
    metadata,
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("customer_id", key_type(), nullable=False),
    sa.Column("consecutive_runs", sa.Integer, nullable=False),
    sa.Column("last_sync_run_id", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("values_sha256", sa.String(64), nullable=False),
    sa.Column("first_failed_at", UtcDateTime, nullable=False),
    sa.Column("last_failed_at", UtcDateTime, nullable=False),
    sa.Column("quarantined_at", UtcDateTime, nullable=True),
    sa.PrimaryKeyConstraint("destination", "customer_id"),
)

#: One row per dry run (``churnsync sync --dry-run --out FILE``): its summary and where the payloads went; the
#: payloads themselves stay in that file (revision 0004).
sync_dry_runs = sa.Table(
    "sync_dry_runs",
    metadata,
    sa.Column("id", id_type(), primary_key=True, autoincrement=True),
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("customers", sa.BigInteger, nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("data_points", sa.BigInteger, nullable=False),
    sa.Column("data_points_by_attribute", sa.Text, nullable=False),
    sa.Index(None, "destination", "id"),
)

# -- change-driven selection (issue 4, revision 0005) ------------------------------------------------------------

#: Named counters. ``changes`` grows by one per write of predictions; the writer holds the row's lock until it
#: commits, and a selection takes the same lock, so a selection never sees half of a write's marks.
store_counters = sa.Table(
    "store_counters",
    metadata,
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("name"),
)

#: Per destination, where its last selection stood: the change counter, and the policy it was computed with
#: (mode, the latest succeeded prediction run, the TTL cutoff). The next selection with the same policy reads only
#: the customers marked after it, those left pending, and those the policy drops since.
selection_watermarks = sa.Table(
    "selection_watermarks",
    metadata,
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("changed_seq", sa.BigInteger, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("latest_run_id", sa.Integer, nullable=True),
    sa.Column("cutoff", UtcDateTime, nullable=True),
    sa.Column("selected_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("destination"),
)

#: Per destination, the customers its last selection returned: they stay candidates until the destination
#: acknowledges them (``record_batch`` removes them) or a selection finds them equal to what it acknowledged (a
#: failed, crashed, partial, quarantined or dry-run send leaves them here).
selection_pending = sa.Table(
    "selection_pending",
    metadata,
    sa.Column("destination", key_type(100), nullable=False),
    sa.Column("customer_id", key_type(), nullable=False),
    sa.PrimaryKeyConstraint("destination", "customer_id"),
    sqlite_with_rowid=False,
)


# -- attribute codes (issue 4, revision 0010) ---------------------------------------------------------------------

#: Every attribute name the store has seen, and its code. The four high-volume tables keep the code (a 2-byte
#: ``attribute_id``) instead of the name in every row and key: at 10M customers × 8 attributes the names took about
#: a quarter of the current values, the acknowledged state and their keys. A write or an acknowledgement gives each new
#: name the next code (under the run lock); codes are never reused or renumbered. No foreign keys, as for the run ids.
attributes = sa.Table(
    "attributes",
    metadata,
    sa.Column("id", sa.SmallInteger, nullable=False, autoincrement=False),
    sa.Column("name", key_type(), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name"),
)

#: The largest attribute code (a signed 2-byte integer on both engines).
MAX_ATTRIBUTE_ID = 32767


def attribute_key(columns: sa.FromClause | Any) -> str:
    """The column of a table (or of a query's ``selected_columns``) that says which attribute a row is of:
    ``attribute_id``, or before revision 0010 (a table as the dashboard reads an older store) ``attribute``, the name
    itself."""
    found = columns.c if isinstance(columns, sa.FromClause) else columns
    return "attribute_id" if "attribute_id" in found else "attribute"


def by_name(query: sa.CompoundSelect[Any] | sa.Select[Any], name: str) -> sa.Subquery:
    """``query`` as a subquery with the attribute's name as ``attribute`` (:func:`named`, where it has codes)."""
    if attribute_key(query.selected_columns) == "attribute":
        return query.subquery(name)
    return named(query.subquery(f"{name}_rows"), name)


def named(table: sa.FromClause, name: str | None = None) -> sa.Subquery:
    """``table`` (or a subquery) with its ``attribute_id`` column replaced by the attribute's name, ``attribute``."""
    a = attributes
    columns = [a.c.name.label("attribute") if c.name == "attribute_id" else c for c in table.c]
    return sa.select(*columns).select_from(table.join(a, a.c.id == table.c.attribute_id)).subquery(name)
