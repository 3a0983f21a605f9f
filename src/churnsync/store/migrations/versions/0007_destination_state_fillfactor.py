"""Room on each page of destination_state for the acknowledged values a sync updates (PostgreSQL).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

A sync upserts the values a destination acknowledged: after the first sync, each one updates a row of
``destination_state`` in place. On full pages the new version goes to another page and needs a new primary-key
entry, so the primary key splits its pages throughout: at 1M customers it grew from 309 MB to 644 MB after one sync
of 5 % of them, and every later selection looks the candidates up in it. With a tenth of each page free, PostgreSQL
keeps the new version on the same page without touching the key (a heap-only update), as ``attribute_values`` does
since 0006. Applies to pages written from now (a ``VACUUM FULL`` rewrites existing ones). SQLite is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: PostgreSQL fill factor of destination_state: a tenth of each page free for the values a sync updates.
STATE_FILLFACTOR = 90


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE destination_state SET (fillfactor = {STATE_FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE destination_state RESET (fillfactor)")
