"""Create the attribute store: runs, current values, history, destination state and the sync journal.

Revision ID: 0001
Revises:
Create Date: 2026-06-30

A frozen copy of churnsync.store.schema at version 0001: later schema changes go in new revisions, never
here. tests/test_store_migrations.py checks that head equals schema.py's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('running', 'succeeded', 'failed', 'partial')"
ONE_VALUE = "num_value IS NULL OR text_value IS NULL"


def _key(length: int = 255) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")


def upgrade() -> None:
    """Create every table of version 0001."""
    op.create_table(
        "prediction_runs",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        _time("started_at"),
        _time("finished_at", nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        _time("as_of"),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        _count("customers_scored"),
        _count("customers_new"),
        _count("customers_changed"),
        _count("values_changed"),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_runs"),
        sa.CheckConstraint(STATUSES, name="ck_prediction_runs_status"),
    )
    op.create_table(
        "attribute_values",
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("attribute", _key(), nullable=False),
        sa.Column("num_value", sa.Double(), nullable=True),
        sa.Column("text_value", sa.Text(), nullable=True),
        sa.Column("prediction_run_id", sa.Integer(), nullable=False),
        _time("updated_at"),
        sa.PrimaryKeyConstraint("customer_id", "attribute", name="pk_attribute_values"),
        sa.CheckConstraint(ONE_VALUE, name="ck_attribute_values_one_value"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "attribute_history",
        sa.Column("id", _id(), nullable=False, autoincrement=True),
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("attribute", _key(), nullable=False),
        sa.Column("old_num", sa.Double(), nullable=True),
        sa.Column("old_text", sa.Text(), nullable=True),
        sa.Column("new_num", sa.Double(), nullable=True),
        sa.Column("new_text", sa.Text(), nullable=True),
        sa.Column("prediction_run_id", sa.Integer(), nullable=False),
        _time("changed_at"),
        sa.PrimaryKeyConstraint("id", name="pk_attribute_history"),
    )
    op.create_index(
        "ix_attribute_history_customer_id_attribute_changed_at",
        "attribute_history",
        ["customer_id", "attribute", "changed_at"],
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("prediction_run_id", sa.Integer(), nullable=True),
        _time("started_at"),
        _time("finished_at", nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        _count("selected"),
        _count("sent"),
        _count("accepted"),
        _count("failed"),
        _count("data_points"),
        _count("requests"),
        _count("retries"),
        _count("rate_limited"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sync_runs"),
        sa.CheckConstraint(STATUSES, name="ck_sync_runs_status"),
        sa.ForeignKeyConstraint(
            ["prediction_run_id"],
            ["prediction_runs.id"],
            name="fk_sync_runs_prediction_run_id_prediction_runs",
        ),
    )
    op.create_index("ix_sync_runs_destination_id", "sync_runs", ["destination", "id"])
    op.create_table(
        "sync_batches",
        sa.Column("id", _id(), nullable=False, autoincrement=True),
        sa.Column("sync_run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("data_points", sa.Integer(), nullable=False),
        _time("acknowledged_at"),
        sa.PrimaryKeyConstraint("id", name="pk_sync_batches"),
        sa.UniqueConstraint("sync_run_id", "seq", name="uq_sync_batches_sync_run_id_seq"),
        sa.ForeignKeyConstraint(["sync_run_id"], ["sync_runs.id"], name="fk_sync_batches_sync_run_id_sync_runs"),
    )
    op.create_table(
        "sync_failures",
        sa.Column("id", _id(), nullable=False, autoincrement=True),
        sa.Column("sync_run_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sync_failures"),
        sa.ForeignKeyConstraint(["sync_run_id"], ["sync_runs.id"], name="fk_sync_failures_sync_run_id_sync_runs"),
    )
    op.create_index("ix_sync_failures_sync_run_id", "sync_failures", ["sync_run_id"])
    op.create_table(
        "destination_state",
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("attribute", _key(), nullable=False),
        sa.Column("num_value", sa.Double(), nullable=True),
        sa.Column("text_value", sa.Text(), nullable=True),
        sa.Column("sync_run_id", sa.Integer(), nullable=False),
        _time("acknowledged_at"),
        sa.PrimaryKeyConstraint("destination", "customer_id", "attribute", name="pk_destination_state"),
        sa.CheckConstraint(ONE_VALUE, name="ck_destination_state_one_value"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "destination_acks",
        sa.Column("id", _id(), nullable=False, autoincrement=True),
        sa.Column("sync_run_id", sa.Integer(), nullable=False),
        sa.Column("destination", _key(100), nullable=False),
        sa.Column("customer_id", _key(), nullable=False),
        sa.Column("attribute", _key(), nullable=False),
        sa.Column("num_value", sa.Double(), nullable=True),
        sa.Column("text_value", sa.Text(), nullable=True),
        _time("acknowledged_at"),
        sa.PrimaryKeyConstraint("id", name="pk_destination_acks"),
    )
    op.create_index(
        "ix_destination_acks_customer_id_attribute_acknowledged_at",
        "destination_acks",
        ["customer_id", "attribute", "acknowledged_at"],
    )


def downgrade() -> None:
    """Drop every table of version 0001 (all data is lost)."""
    for table in (
        "destination_acks",
        "destination_state",
        "sync_failures",
        "sync_batches",
        "sync_runs",
        "attribute_history",
        "attribute_values",
        "prediction_runs",
    ):
        op.drop_table(table)
