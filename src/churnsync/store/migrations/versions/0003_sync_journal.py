"""The sync journal (intended → acknowledged per request) and per-object failure streaks / quarantine.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A frozen copy of the tables ``sync_journal`` and ``sync_object_failures`` of churnsync.store.schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key(length: int = 255) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the journal and the failure/quarantine table."""
    op.create_table(
        "sync_journal",
        sa.Column("id", _id(), nullable=False, autoincrement=True),
        sa.Column("sync_run_id", sa.Integer(), nullable=False),
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("objects", sa.Integer(), nullable=False),
        sa.Column("data_points", sa.Integer(), nullable=False),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("customer_ids", sa.Text(), nullable=False),
        _time("intended_at"),
        _time("acknowledged_at", nullable=True),
        sa.Column("resolved_by_run_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sync_journal"),
        sa.CheckConstraint("status IN ('intended', 'acknowledged', 'in_doubt')", name="ck_sync_journal_status"),
        sa.UniqueConstraint("sync_run_id", "seq", name="uq_sync_journal_sync_run_id_seq"),
    )
    op.create_index("ix_sync_journal_destination_status", "sync_journal", ["destination", "status"])
    op.create_table(
        "sync_object_failures",
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("consecutive_runs", sa.Integer(), nullable=False),
        sa.Column("last_sync_run_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("values_sha256", sa.String(64), nullable=False),
        _time("first_failed_at"),
        _time("last_failed_at"),
        _time("quarantined_at", nullable=True),
        sa.PrimaryKeyConstraint("destination", "customer_id", name="pk_sync_object_failures"),
    )


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("sync_object_failures")
    op.drop_index("ix_sync_journal_destination_status", table_name="sync_journal")
    op.drop_table("sync_journal")
