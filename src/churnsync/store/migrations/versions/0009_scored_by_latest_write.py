"""A write rewrites only the customers whose record changes, not every scored customer's row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

Until now every write set ``customers.last_run_id`` on every customer it scored: at 10M customers a daily run rewrote
10M rows (a quarter of the write's time at 1M, and WAL for every page of the table) to record what is, for nearly
everyone, "scored by this run". Now ``last_run_id`` = 0 means "scored by the store's latest write", whose run is kept
once, in the ``store_counters`` row ``scored_by``. A write sets the run of the previous write on the customers it did
not score (usually none), sets 0 on those that come back, and leaves everyone else's row alone. A partial index finds
the customers the latest write did not score. The table's fill factor goes from 50 (room for the per-run rewrite) to
90 (room for the rows that change).

The upgrade takes the highest ``last_run_id`` as the latest write's run and sets 0 on its customers; the downgrade
writes that run back.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LATEST = "(SELECT value FROM store_counters WHERE name = 'scored_by')"


def upgrade() -> None:
    """Keep the latest write's run once, and 0 on its customers."""
    op.execute(
        "INSERT INTO store_counters (name, value) "
        "SELECT 'scored_by', max(last_run_id) FROM customers HAVING count(*) > 0"
    )
    op.execute(f"UPDATE customers SET last_run_id = 0 WHERE last_run_id = {_LATEST}")
    op.create_index(
        "ix_customers_not_scored_by_latest",
        "customers",
        ["customer_id"],
        postgresql_where=sa.text("last_run_id <> 0"),
        sqlite_where=sa.text("last_run_id <> 0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE customers SET (fillfactor = 90)")


def downgrade() -> None:
    """Write the latest write's run back on its customers."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE customers SET (fillfactor = 50)")
    op.drop_index("ix_customers_not_scored_by_latest", table_name="customers")
    op.execute(f"UPDATE customers SET last_run_id = {_LATEST} WHERE last_run_id = 0")
    op.execute("DELETE FROM store_counters WHERE name = 'scored_by'")
