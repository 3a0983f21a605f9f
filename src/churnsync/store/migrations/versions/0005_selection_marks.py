"""Change-driven selection: a change mark per customer, a change counter, and per-destination watermarks.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Adds ``customers.changed_seq`` (indexed), ``store_counters`` (the ``changes`` counter, starting at 0),
``selection_watermarks`` and ``selection_pending``. Existing customers get mark 0 and no destination has a
watermark yet, so the first selection of every destination after the upgrade compares everyone, as before. On
PostgreSQL, ``customers`` gets a fill factor of 50 (room for heap-only updates of its per-run rewrite).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key(length: int = 255) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    """Add the change mark, the counter and the selection tables."""
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("changed_seq", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_customers_changed_seq", "customers", ["changed_seq"])
    if op.get_bind().dialect.name == "postgresql":
        # Every run rewrites each scored customer's row (last_run_id): free room on each page lets PostgreSQL keep
        # the new version on the same page without touching the indexes (a heap-only update).
        op.execute("ALTER TABLE customers SET (fillfactor = 50)")
    counters = op.create_table(
        "store_counters",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_store_counters"),
    )
    op.bulk_insert(counters, [{"name": "changes", "value": 0}])
    op.create_table(
        "selection_watermarks",
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("changed_seq", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("latest_run_id", sa.Integer(), nullable=True),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=True),
        sa.Column("selected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("destination", name="pk_selection_watermarks"),
    )
    op.create_table(
        "selection_pending",
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        sa.PrimaryKeyConstraint("destination", "customer_id", name="pk_selection_pending"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    """Drop the selection tables, the counter and the change mark."""
    op.drop_table("selection_pending")
    op.drop_table("selection_watermarks")
    op.drop_table("store_counters")
    op.drop_index("ix_customers_changed_seq", table_name="customers")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE customers RESET (fillfactor)")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("changed_seq")
