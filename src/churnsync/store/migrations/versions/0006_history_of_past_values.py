"""History holds past values only: the current value lives in attribute_values alone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

Before, every change was a history row (old → new value, run, changed_at), so every current value was written
twice: in ``attribute_values`` and as the newest history row of its (customer, attribute). Now a history row is a
value that was current and has been replaced: its value, the run that set it, the run that replaced it, and its
validity ``valid_from`` → ``valid_to``. The upgrade converts the rows in place: each change that a later change of
the same (customer, attribute) superseded becomes a past value, valid until that later change; the newest change of
each (customer, attribute) is the current value and already in ``attribute_values``. Nothing a history read shows is
lost. The downgrade rebuilds one change row per past and current value. On PostgreSQL, ``attribute_values`` gets a
fill factor of 90 (room for heap-only updates of the values a run changes).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: PostgreSQL fill factor of attribute_values: a tenth of each page free for the values a run changes.
VALUES_FILLFACTOR = 90
OLD = "attribute_history_0005"
NEW = "attribute_history_0006"


def _key(length: int = 255) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _keys() -> list[sa.Column[object]]:
    """The columns both forms of the history start with."""
    return [
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("attribute", _key(), nullable=False),
    ]


def _set_aside(name: str, index: str) -> None:
    """Rename ``attribute_history`` (and on PostgreSQL its key, index and id sequence) to ``name``."""
    op.drop_index(index, table_name="attribute_history")
    op.rename_table("attribute_history", name)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {name} RENAME CONSTRAINT pk_attribute_history TO pk_{name}")
        op.execute(f"ALTER SEQUENCE attribute_history_id_seq RENAME TO {name}_id_seq")


def upgrade() -> None:
    """Convert every superseded change into a past value; drop the rows of the current values."""
    _set_aside(OLD, "ix_attribute_history_customer_id_attribute_changed_at")
    op.create_table(
        "attribute_history",
        *_keys(),
        sa.Column("num_value", sa.Double(), nullable=True),
        sa.Column("text_value", sa.Text(), nullable=True),
        sa.Column("prediction_run_id", sa.Integer(), nullable=False),
        sa.Column("replaced_by_run_id", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_attribute_history"),
    )
    op.execute(
        "INSERT INTO attribute_history (customer_id, attribute, num_value, text_value, prediction_run_id, "
        "replaced_by_run_id, valid_from, valid_to) "
        "SELECT customer_id, attribute, new_num, new_text, prediction_run_id, next_run, changed_at, next_at FROM ("
        "SELECT h.*, "
        "lead(changed_at) OVER (PARTITION BY customer_id, attribute ORDER BY changed_at, id) AS next_at, "
        "lead(prediction_run_id) OVER (PARTITION BY customer_id, attribute ORDER BY changed_at, id) AS next_run "
        f"FROM {OLD} h) changes WHERE next_at IS NOT NULL ORDER BY customer_id, attribute, changed_at, id"
    )
    op.drop_table(OLD)
    op.create_index(
        "ix_attribute_history_customer_id_attribute_valid_from",
        "attribute_history",
        ["customer_id", "attribute", "valid_from"],
    )
    if op.get_bind().dialect.name == "postgresql":
        # A write updates the current values that changed in place: free room on each page lets PostgreSQL keep the
        # new version on the same page without touching the primary key (a heap-only update). Pages written from now.
        op.execute(f"ALTER TABLE attribute_values SET (fillfactor = {VALUES_FILLFACTOR})")


def downgrade() -> None:
    """One change row per past and current value, its old value the one before it."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE attribute_values RESET (fillfactor)")
    _set_aside(NEW, "ix_attribute_history_customer_id_attribute_valid_from")
    op.create_table(
        "attribute_history",
        *_keys(),
        sa.Column("old_num", sa.Double(), nullable=True),
        sa.Column("old_text", sa.Text(), nullable=True),
        sa.Column("new_num", sa.Double(), nullable=True),
        sa.Column("new_text", sa.Text(), nullable=True),
        sa.Column("prediction_run_id", sa.Integer(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_attribute_history"),
    )
    window = "OVER (PARTITION BY customer_id, attribute ORDER BY valid_from, is_current, seq)"
    op.execute(
        "INSERT INTO attribute_history (customer_id, attribute, old_num, old_text, new_num, new_text, "
        "prediction_run_id, changed_at) "
        f"SELECT customer_id, attribute, lag(num_value) {window}, lag(text_value) {window}, num_value, text_value, "
        "prediction_run_id, valid_from FROM ("
        "SELECT customer_id, attribute, num_value, text_value, prediction_run_id, valid_from, "
        f"0 AS is_current, id AS seq FROM {NEW} UNION ALL "
        "SELECT customer_id, attribute, num_value, text_value, prediction_run_id, updated_at, 1, 0 "
        "FROM attribute_values) v ORDER BY customer_id, attribute, valid_from, is_current, seq"
    )
    op.drop_table(NEW)
    op.create_index(
        "ix_attribute_history_customer_id_attribute_changed_at",
        "attribute_history",
        ["customer_id", "attribute", "changed_at"],
    )
