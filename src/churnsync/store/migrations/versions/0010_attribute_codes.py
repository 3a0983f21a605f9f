"""Attribute codes: the four high-volume tables keep a 2-byte code per attribute instead of its name.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

``attribute_values``, ``attribute_history``, ``destination_state`` and ``destination_acks`` repeated the attribute's
name (up to 255 characters, ``churn_probability`` and the like) in every row and in every key entry. At 10M customers
× 8 attributes the names took about a quarter of the current values, the acknowledged state and their keys. Measured
at 1M customers × 8 attributes on PostgreSQL, heap plus primary key: ``destination_state`` 1,076 MB with names against
817 MB with codes, ``attribute_values`` 892 MB against 698 MB. Every selection and write reads those keys.

A new table ``attributes`` holds each name once, with its code (``id``, SMALLINT). In the four tables the column
``attribute`` becomes ``attribute_id`` (SMALLINT), at the same position, in the same keys and indexes.

The upgrade gives every distinct name of the four tables a code, 1, 2, 3… in name order (the bytewise order of the
old keys, so a table copied in its old key order is in its new key order too), and rebuilds each table: the old table
is renamed aside, the new one created under the final name and filled by joining ``attributes`` on the name, in key
order; the old one is dropped, then the new one's keys and indexes are built under their final names. Renaming a table
renames none of its constraints, indexes or sequence (PostgreSQL), so no name moves from one table to the other, and
the new table's stored definition (SQLite) is the one ``CREATE TABLE`` wrote. On PostgreSQL the primary key is built
once, after the copy, as a bulk load would; on SQLite it is part of the table (``WITHOUT ROWID`` tables are clustered on
it, and ``id`` is the rowid). Fill factors (``attribute_values`` 0006, ``destination_state`` 0007) are set before the
copy, and each new table is analysed after it. ``attribute_history.id`` and ``destination_acks.id`` keep their values;
on PostgreSQL the new column takes over the old column's sequence where it stood, so the next insert continues after
the highest id (as the rowid does on SQLite). More than 32767 distinct names do not fit a code: the upgrade then stops
with an error and changes nothing.

The check "at most one of ``num_value`` and ``text_value``" gets schema.py's name, ``ck_<table>_one_value``: revisions
0001..0009 passed the full name to ``op.create_table``, which ran it through the naming convention again
(``ck_<table>_ck_<table>_one_value``). The downgrade rebuilds the four tables with the names back, in the same way,
restores that name, and drops ``attributes``: exactly the 0009 schema.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from alembic import op

from churnsync.errors import StoreError

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The largest code (a signed 2-byte integer on both engines).
MAX_CODE = 32767
ONE_VALUE = "num_value IS NULL OR text_value IS NULL"
#: Stands for the attribute's column (``attribute`` or ``attribute_id``) in a key or index.
ATTRIBUTE = "{attribute}"

Columns = Callable[[sa.Column[Any]], list[sa.Column[Any]]]


def _key(length: int = 255) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _value() -> list[sa.Column[Any]]:
    return [sa.Column("num_value", sa.Double(), nullable=True), sa.Column("text_value", sa.Text(), nullable=True)]


def _values(attribute: sa.Column[Any]) -> list[sa.Column[Any]]:
    return [
        sa.Column("customer_id", _key(), nullable=False),
        attribute,
        *_value(),
        sa.Column("prediction_run_id", sa.Integer(), nullable=False),
        _time("updated_at"),
    ]


def _history(attribute: sa.Column[Any]) -> list[sa.Column[Any]]:
    return [
        sa.Column("id", _id(), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        attribute,
        *_value(),
        sa.Column("prediction_run_id", sa.Integer(), nullable=False),
        sa.Column("replaced_by_run_id", sa.Integer(), nullable=False),
        _time("valid_from"),
        _time("valid_to"),
    ]


def _state(attribute: sa.Column[Any]) -> list[sa.Column[Any]]:
    return [
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        attribute,
        *_value(),
        sa.Column("sync_run_id", sa.Integer(), nullable=False),
        _time("acknowledged_at"),
    ]


def _acks(attribute: sa.Column[Any]) -> list[sa.Column[Any]]:
    return [
        sa.Column("id", _id(), nullable=False),
        sa.Column("sync_run_id", sa.Integer(), nullable=False),
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        attribute,
        *_value(),
        _time("acknowledged_at"),
    ]


class Rebuilt(NamedTuple):
    """One of the four tables: its columns around the attribute's, its keys, and how its storage is set.

    (A named tuple: alembic loads a revision outside ``sys.modules``, where a dataclass cannot be made.)
    """

    name: str
    columns: Columns
    #: The primary key; ``("id",)`` for a table with a surrogate key (a bigserial on PostgreSQL, the rowid on SQLite).
    key: tuple[str, ...]
    #: The secondary index's columns, if any.
    indexed: tuple[str, ...] = ()
    #: Whether the table has the check "at most one of num_value and text_value".
    one_value: bool = False
    #: SQLite: clustered on its primary key (``WITHOUT ROWID``).
    without_rowid: bool = False
    #: PostgreSQL: the table's fill factor, if not the default.
    fillfactor: int | None = None


TABLES = (
    Rebuilt("attribute_values", _values, ("customer_id", ATTRIBUTE), one_value=True, without_rowid=True, fillfactor=90),
    Rebuilt("attribute_history", _history, ("id",), indexed=("customer_id", ATTRIBUTE, "valid_from")),
    Rebuilt(
        "destination_state",
        _state,
        ("destination", "customer_id", ATTRIBUTE),
        one_value=True,
        without_rowid=True,
        fillfactor=90,
    ),
    Rebuilt("destination_acks", _acks, ("id",), indexed=("customer_id", ATTRIBUTE, "acknowledged_at")),
)


def _rebuild(table: Rebuilt, codes: bool) -> None:
    """Rebuild ``table`` with the attribute's code (``codes``) or its name instead of the other, keeping every row."""
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"
    name, aside = table.name, f"{table.name}_0010"
    attribute: sa.Column[Any]
    if codes:
        old, new = "attribute", "attribute_id"
        attribute = sa.Column(new, sa.SmallInteger(), nullable=False)
        # Every name has its code: an inner join keeps every row.
        join, value = f"JOIN attributes a ON a.name = t.{old}", "a.id"
        # schema.py's name. Revisions 0001..0009 gave op.create_table the full name, to which the naming convention
        # added its prefix once more: the 0009 name is restored on the way down.
        check = f"ck_{name}_one_value"
    else:
        old, new = "attribute_id", "attribute"
        attribute = sa.Column(new, _key(), nullable=False)
        # A code without a name would leave a null name: the NOT NULL column stops the downgrade, no row is dropped.
        join, value = f"LEFT JOIN attributes a ON a.id = t.{old}", "a.name"
        check = f"ck_{name}_ck_{name}_one_value"

    sequence = None
    if postgres and table.key == ("id",):
        # The id's sequence outlives the old table, and the new column takes it over where it stood.
        sequence = conn.execute(sa.text(f"SELECT pg_get_serial_sequence('{name}', 'id')")).scalar_one()
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY NONE")
    # The old table steps aside and the new one is created under its final name. Renaming a table renames none of
    # its constraints, indexes or sequence (PostgreSQL) and quotes its name in its stored definition (SQLite): no name
    # ever moves from one table to the other. Constraint names are final (op.f), not run through the convention again.
    op.rename_table(name, aside)
    columns = table.columns(attribute)
    key = [new if c == ATTRIBUTE else c for c in table.key]
    constraints: list[sa.Constraint] = []
    if not postgres:  # SQLite: a WITHOUT ROWID table's key, and the rowid, are part of the table
        constraints.append(sa.PrimaryKeyConstraint(*key, name=op.f(f"pk_{name}")))
    if table.one_value:
        constraints.append(sa.CheckConstraint(ONE_VALUE, name=op.f(check)))
    op.create_table(name, *columns, *constraints, sqlite_with_rowid=not table.without_rowid)
    if postgres and table.fillfactor is not None:
        op.execute(f"ALTER TABLE {name} SET (fillfactor = {table.fillfactor})")

    names = [c.name for c in columns]
    selected = ", ".join(value if c == new else f"t.{c}" for c in names)
    # Codes follow the names' order, so the old key's order is the new key's order.
    order = ", ".join(f"t.{old if c == ATTRIBUTE else c}" for c in table.key)
    op.execute(f"INSERT INTO {name} ({', '.join(names)}) SELECT {selected} FROM {aside} t {join} ORDER BY {order}")
    op.drop_table(aside)  # with its keys and indexes: their names are free

    if postgres:  # the key built once, after the copy, as a bulk load would
        op.create_primary_key(op.f(f"pk_{name}"), name, key)
    if sequence is not None:
        op.execute(f"ALTER TABLE {name} ALTER COLUMN id SET DEFAULT nextval('{sequence}'::regclass)")
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY {name}.id")
        # Were ids ever written past the sequence, the next insert still goes after the highest.
        op.execute(
            f"SELECT setval('{sequence}', max(id)) FROM {name} HAVING max(id) >= (SELECT last_value FROM {sequence})"
        )
    if table.indexed:
        index = [new if c == ATTRIBUTE else c for c in table.indexed]
        op.create_index(op.f(f"ix_{name}_{'_'.join(index)}"), name, index)
    if postgres:
        op.execute(f"ANALYZE {name}")  # a new table has no statistics: plan the next write on the real ones


def _names() -> str:
    """Every distinct name in the four tables, as a subquery.

    Distinct per table, then the union: PostgreSQL then hashes each table's few names (a union of whole tables it
    sorts, on disk), and SQLite keeps just distinct names (a union ordered at once it sorts whole).
    """
    return "(" + " UNION ".join(f"SELECT DISTINCT attribute AS name FROM {table.name}" for table in TABLES) + ") n"


def upgrade() -> None:
    """Give every attribute name a code, and keep the code instead of the name in the four tables."""
    conn = op.get_bind()
    # One more than fits, to know that too many do, without fetching them all.
    first = sa.text(f"SELECT name FROM {_names()} ORDER BY name LIMIT :limit")
    names = conn.execute(first, {"limit": MAX_CODE + 1}).scalars().all()
    if len(names) > MAX_CODE:
        count = conn.execute(sa.text(f"SELECT count(*) FROM {_names()}")).scalar_one()
        raise StoreError(
            f"cannot upgrade the store to schema revision 0010: it holds {count} distinct attribute names, "
            f"more than the {MAX_CODE} that a 2-byte attribute code can number",
            remedy="Keep this store on the previous churnsync version, or delete the attributes no longer used",
        )
    attributes = op.create_table(
        "attributes",
        sa.Column("id", sa.SmallInteger(), nullable=False, autoincrement=False),
        sa.Column("name", _key(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_attributes"),
        sa.UniqueConstraint("name", name="uq_attributes_name"),
    )
    if names:
        op.bulk_insert(attributes, [{"id": code, "name": name} for code, name in enumerate(names, start=1)])
    if conn.dialect.name == "postgresql":
        op.execute("ANALYZE attributes")
    for table in TABLES:
        _rebuild(table, codes=True)


def downgrade() -> None:
    """Put each attribute's name back in the four tables, and drop the codes."""
    for table in TABLES:
        _rebuild(table, codes=False)
    op.drop_table("attributes")
