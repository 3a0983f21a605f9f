"""The summaries of dry runs (`churnsync sync --dry-run --out FILE`), for the dashboard's Syncs page.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

A frozen copy of the table ``sync_dry_runs`` of churnsync.store.schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the dry-run table."""
    op.create_table(
        "sync_dry_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column(
            "destination", sa.String(100).with_variant(sa.String(100, collation="C"), "postgresql"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("customers", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("data_points", sa.BigInteger(), nullable=False),
        sa.Column("data_points_by_attribute", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sync_dry_runs"),
    )
    op.create_index("ix_sync_dry_runs_destination_id", "sync_dry_runs", ["destination", "id"])


def downgrade() -> None:
    """Drop the dry-run table."""
    op.drop_index("ix_sync_dry_runs_destination_id", table_name="sync_dry_runs")
    op.drop_table("sync_dry_runs")
