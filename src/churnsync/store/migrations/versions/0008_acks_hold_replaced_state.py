"""The acknowledgement log holds replaced acknowledgements only: the latest one lives in destination_state alone.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

Before, every acknowledged value was written twice: upserted into ``destination_state`` and appended to
``destination_acks``. At 10M customers × 8 attributes that log and its two keys took about 12 GB, a third of the
store, for rows that repeat ``destination_state`` word for word; the first sync of everyone wrote all of it, and the
server's vacuum read it all again. Now an acknowledgement is written once, into ``destination_state``; when a later
acknowledgement of the same (destination, customer, attribute) replaces it, it moves to ``destination_acks``, as a
replaced value moves to ``attribute_history`` (0006). The whole log, as before, is ``destination_acks`` plus
``destination_state``.

The upgrade deletes each log row that the state row of its key repeats (same run, time and value); nothing a
history read shows is lost. The downgrade copies the state rows back into the log.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: A log row that the state row of its key repeats.
_REPEATED = (
    "SELECT 1 FROM destination_state s WHERE s.destination = destination_acks.destination "
    "AND s.customer_id = destination_acks.customer_id AND s.attribute = destination_acks.attribute "
    "AND s.sync_run_id = destination_acks.sync_run_id AND s.acknowledged_at = destination_acks.acknowledged_at "
    "AND s.num_value IS NOT DISTINCT FROM destination_acks.num_value "
    "AND s.text_value IS NOT DISTINCT FROM destination_acks.text_value"
)


def upgrade() -> None:
    sql = f"DELETE FROM destination_acks WHERE EXISTS ({_REPEATED})"
    if op.get_bind().dialect.name == "sqlite":
        sql = sql.replace("IS NOT DISTINCT FROM", "IS")  # SQLite's null-safe equality
    op.execute(sql)


def downgrade() -> None:
    op.execute(
        "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute, num_value, text_value, "
        "acknowledged_at) SELECT sync_run_id, destination, customer_id, attribute, num_value, text_value, "
        "acknowledged_at FROM destination_state ORDER BY acknowledged_at, destination, customer_id, attribute"
    )
