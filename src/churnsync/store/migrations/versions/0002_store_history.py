"""Who was scored when (for removal and TTL policies), and the run lock.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Adds ``customers`` (per customer: the first and last prediction run that scored it) and ``store_lock`` (at most
one row: the run holding the run lock). Existing customers are back-filled from ``attribute_values``: a store at
0001 never recorded who each run scored, so every existing customer is taken as scored by the latest succeeded run
(or by the last run that changed it, if later) — nothing is treated as "no longer scored" by the upgrade itself.
On SQLite, acknowledgement times written on a whole second get the text form of every other time.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key(length: int = 255) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    """Create customers and store_lock; back-fill customers from the current values."""
    op.create_table(
        "customers",
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("first_run_id", sa.Integer(), nullable=False),
        sa.Column("last_run_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name="pk_customers"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "store_lock",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_store_lock"),
    )
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":
        # 0001 wrote acknowledgement times on whole seconds without the ".000000" that SQLAlchemy writes, so
        # they sorted before an equal change time: give them the same text form.
        for table in ("destination_acks", "destination_state"):
            conn.execute(
                sa.text(
                    f"UPDATE {table} SET acknowledged_at = acknowledged_at || '.000000' "
                    "WHERE length(acknowledged_at) = 19"
                )
            )
    latest = conn.execute(
        sa.text("SELECT coalesce(max(id), 0) FROM prediction_runs WHERE status = 'succeeded'")
    ).scalar_one()
    conn.execute(
        sa.text(
            "INSERT INTO customers (customer_id, first_run_id, last_run_id) "
            "SELECT customer_id, min(prediction_run_id), "
            "CASE WHEN max(prediction_run_id) > :latest THEN max(prediction_run_id) ELSE :latest END "
            "FROM attribute_values GROUP BY customer_id"
        ),
        {"latest": int(latest)},
    )


def downgrade() -> None:
    """Drop what upgrade created."""
    op.drop_table("store_lock")
    op.drop_table("customers")
