"""The sync ledger: the request journal, failure streaks and quarantine, and data-point budget queries.

A companion of :class:`~churnsync.store.store.AttributeStore` (it uses the store's engine and transactions)
for what only the sync needs. Two tables (revision 0003):

- ``sync_journal``: one row per request. ``intended`` (customer ids, SHA-256 of the exact body, data points)
  is committed before the request is sent; it turns ``acknowledged`` in the very transaction that records
  Braze's answer (:meth:`AttributeStore.record_batch` with ``also=``). A row still ``intended`` when the next
  run starts belonged to a process that died with the request in flight: Braze may or may not have applied
  it. That run marks it ``in_doubt``, and because its values were never acknowledged the run sends them
  again: the duplicates of a crash are at most the requests in flight, and are reported.
- ``sync_object_failures``: per destination and customer, how many runs in a row Braze refused the object,
  the last reason and a hash of the values tried. After ``quarantine_after_runs`` runs the object is
  quarantined: skipped while its values stay the same, retried as soon as they change, or when released.

And ``sync_dry_runs`` (revision 0004): the summary of each dry run and the path of its NDJSON file, never the
payloads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from churnsync.store import schema as s

if TYPE_CHECKING:
    from churnsync.records import Value
    from churnsync.store.store import AttributeStore

__all__ = [
    "InDoubt",
    "acknowledge",
    "data_points_since",
    "dry_runs",
    "failures",
    "journal_intended",
    "month_start",
    "quarantined",
    "record_dry_run",
    "record_run_failures",
    "recover_in_doubt",
    "release",
    "sample_acknowledged",
    "values_hash",
]


@dataclass(frozen=True)
class InDoubt:
    """Requests a dead process had in flight: Braze may have applied them; this run sends them again."""

    batches: int
    objects: int
    interrupted_runs: int


def values_hash(values: Mapping[str, Value]) -> str:
    """A stable hash of one customer's values (to see whether a quarantined object changed)."""
    text = json.dumps(sorted(values.items()), separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def journal_intended(
    store: AttributeStore,
    *,
    sync_run_id: int,
    destination: str,
    seq: int,
    customer_ids: list[str],
    body: bytes,
    data_points: int,
) -> None:
    """Commit the ``intended`` journal row of one request, before it is sent."""
    # Plain SQL: this runs once per request, and SQLAlchemy's statement handling cost more than the insert.
    dialect = store.dialect
    params = (
        sync_run_id,
        destination,
        seq,
        len(customer_ids),
        data_points,
        hashlib.sha256(body).hexdigest(),
        json.dumps(customer_ids, separators=(",", ":")),
        _db_now(dialect),
    )
    with store.transaction(f"journal batch {seq} of sync run {sync_run_id}", write=True) as conn:
        if dialect == "postgresql":
            # As record_batch: a server crash may lose the newest rows; they are then simply not reported in doubt.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        conn.exec_driver_sql(_INTENDED_SQL[dialect], params)


def acknowledge(store: AttributeStore, sync_run_id: int, seq: int) -> Callable[[Connection], None]:
    """The statement that marks a journal row acknowledged, for ``record_batch(..., also=...)``."""
    dialect = store.dialect

    def run(conn: Connection) -> None:
        conn.exec_driver_sql(_ACKNOWLEDGED_SQL[dialect], (_db_now(dialect), sync_run_id, seq))

    return run


_INTENDED_SQL = {
    dialect: (
        "INSERT INTO sync_journal (sync_run_id, destination, seq, status, objects, data_points, payload_sha256, "
        f"customer_ids, intended_at) VALUES ({mark}, {mark}, {mark}, 'intended', "
        f"{mark}, {mark}, {mark}, {mark}, {mark})"
    )
    for dialect, mark in (("sqlite", "?"), ("postgresql", "%s"))
}
_ACKNOWLEDGED_SQL = {
    dialect: (
        f"UPDATE sync_journal SET status = 'acknowledged', acknowledged_at = {mark} "
        f"WHERE sync_run_id = {mark} AND seq = {mark}"
    )
    for dialect, mark in (("sqlite", "?"), ("postgresql", "%s"))
}


def _db_now(dialect: str) -> Any:
    """Now, as the store's UtcDateTime column keeps it (SQLite: naive UTC ISO text; PostgreSQL: aware)."""
    now = datetime.now(UTC)
    return now.replace(tzinfo=None).isoformat(sep=" ") if dialect == "sqlite" else now


def recover_in_doubt(store: AttributeStore, destination: str, sync_run_id: int) -> InDoubt:
    """Mark what earlier, dead runs left in flight as ``in_doubt``; close those runs as failed."""
    j, runs = s.sync_journal, s.sync_runs
    with store.transaction(f"recover the sync journal of {destination}", write=True) as conn:
        pending = j.c.destination == destination, j.c.status == "intended", j.c.sync_run_id != sync_run_id
        batches, objects = conn.execute(sa.select(sa.func.count(), sa.func.sum(j.c.objects)).where(*pending)).one()
        conn.execute(j.update().where(*pending).values(status="in_doubt", resolved_by_run_id=sync_run_id))
        interrupted = conn.execute(
            runs.update()
            .where(runs.c.destination == destination, runs.c.status == "running", runs.c.id != sync_run_id)
            .values(
                status="failed",
                finished_at=datetime.now(UTC),
                error=f"interrupted: the process ended during the run; sync run {sync_run_id} resent what was "
                "not acknowledged",
            )
        ).rowcount
    return InDoubt(batches=int(batches or 0), objects=int(objects or 0), interrupted_runs=int(interrupted or 0))


def quarantined(store: AttributeStore, destination: str) -> dict[str, str]:
    """Quarantined customers of ``destination`` and the hash of the values that kept failing."""
    f = s.sync_object_failures
    query = sa.select(f.c.customer_id, f.c.values_sha256).where(
        f.c.destination == destination, f.c.quarantined_at.is_not(None)
    )
    with store.transaction(f"read the quarantine of {destination}") as conn:
        return {row.customer_id: row.values_sha256 for row in conn.execute(query)}


def record_run_failures(
    store: AttributeStore,
    destination: str,
    sync_run_id: int,
    failed: Mapping[str, tuple[str, str]],
    *,
    quarantine_after: int,
) -> int:
    """After a run: extend failure streaks, quarantine long ones, clear customers accepted this run.

    ``failed`` maps a customer refused in this run to (reason, values hash). Returns how many customers
    were newly quarantined.
    """
    f, d = s.sync_object_failures, s.destination_state
    now = datetime.now(UTC)
    with store.transaction(f"record the failures of sync run {sync_run_id}", write=True) as conn:
        # A customer this run acknowledged holds this run's state for what it sent: a lookup by key for each
        # customer with a failure streak, not a scan of everything acknowledged.
        accepted = sa.exists().where(
            d.c.destination == f.c.destination, d.c.customer_id == f.c.customer_id, d.c.sync_run_id == sync_run_id
        )
        conn.execute(f.delete().where(f.c.destination == destination, accepted))
        if failed:
            known = {
                row.customer_id: row
                for row in conn.execute(
                    sa.select(f).where(f.c.destination == destination, f.c.customer_id.in_(list(failed)))
                )
            }
            inserts: list[dict[str, Any]] = []
            for customer_id, (reason, digest) in failed.items():
                row = known.get(customer_id)
                if row is None:
                    inserts.append(
                        {
                            "destination": destination,
                            "customer_id": customer_id,
                            "consecutive_runs": 1,
                            "last_sync_run_id": sync_run_id,
                            "reason": reason,
                            "values_sha256": digest,
                            "first_failed_at": now,
                            "last_failed_at": now,
                        }
                    )
                    continue
                streak = row.consecutive_runs + (0 if row.last_sync_run_id == sync_run_id else 1)
                conn.execute(
                    f.update()
                    .where(f.c.destination == destination, f.c.customer_id == customer_id)
                    .values(
                        consecutive_runs=streak,
                        last_sync_run_id=sync_run_id,
                        reason=reason,
                        values_sha256=digest,
                        last_failed_at=now,
                    )
                )
            if inserts:
                conn.execute(f.insert(), inserts)
        newly = conn.execute(
            f.update()
            .where(
                f.c.destination == destination,
                f.c.quarantined_at.is_(None),
                f.c.consecutive_runs >= quarantine_after,
            )
            .values(quarantined_at=now)
        ).rowcount
    return int(newly or 0)


def failures(store: AttributeStore, destination: str | None = None) -> list[dict[str, Any]]:
    """Customers with a failure streak (quarantined or not), longest streak first."""
    f = s.sync_object_failures
    query = sa.select(
        f.c.destination,
        f.c.customer_id,
        f.c.consecutive_runs,
        f.c.quarantined_at,
        f.c.last_failed_at,
        f.c.reason,
    ).order_by(f.c.consecutive_runs.desc(), f.c.destination, f.c.customer_id)
    if destination is not None:
        query = query.where(f.c.destination == destination)
    with store.transaction("list sync failures") as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def release(store: AttributeStore, *, destination: str | None, customer_ids: Iterable[str] | None) -> int:
    """Forget the failure streaks (and quarantine) of ``customer_ids``, or of everyone when ``None``."""
    f = s.sync_object_failures
    query = f.delete()
    if destination is not None:
        query = query.where(f.c.destination == destination)
    if customer_ids is not None:
        query = query.where(f.c.customer_id.in_(list(customer_ids)))
    with store.transaction("release quarantined customers", write=True) as conn:
        return int(conn.execute(query).rowcount or 0)


def month_start(now: datetime) -> datetime:
    """The first instant of ``now``'s calendar month, UTC (the monthly budget's period)."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def data_points_since(store: AttributeStore, destination: str, since: datetime) -> int:
    """Data points ``destination`` acknowledged since ``since`` (from the per-request journal of acks)."""
    b, runs = s.sync_batches, s.sync_runs
    query = (
        sa.select(sa.func.coalesce(sa.func.sum(b.c.data_points), 0))
        .select_from(b.join(runs, runs.c.id == b.c.sync_run_id))
        .where(runs.c.destination == destination, b.c.acknowledged_at >= since)
    )
    with store.transaction(f"count the data points sent to {destination}") as conn:
        return int(conn.execute(query).scalar_one())


def sample_acknowledged(store: AttributeStore, destination: str, size: int, seed: int) -> dict[str, dict[str, Value]]:
    """A random sample of ``size`` customers and what ``destination`` acknowledged for them."""
    d = s.destination_state
    with store.transaction(f"sample the state acknowledged by {destination}") as conn:
        ids = [
            row[0]
            for row in conn.execute(
                sa.select(d.c.customer_id).where(d.c.destination == destination).distinct().order_by(d.c.customer_id)
            )
        ]
        import random

        chosen = sorted(random.Random(seed).sample(ids, min(size, len(ids))))
        state: dict[str, dict[str, Value]] = {c: {} for c in chosen}
        named = s.named(d)
        for start in range(0, len(chosen), 500):
            part = chosen[start : start + 500]
            rows = conn.execute(
                sa.select(named.c.customer_id, named.c.attribute, named.c.num_value, named.c.text_value).where(
                    named.c.destination == destination, named.c.customer_id.in_(part)
                )
            )
            for customer_id, attribute, num, text in rows:
                state[customer_id][attribute] = float(num) if num is not None else text
    return state


def record_dry_run(
    store: AttributeStore,
    *,
    destination: str,
    path: str,
    customers: int,
    requests: int,
    data_points_by_attribute: Mapping[str, int],
    at: datetime | None = None,
) -> int:
    """Record one dry run's summary (not its payloads, which stay in ``path``); return its id."""
    d = s.sync_dry_runs
    by_attribute = {str(k): int(v) for k, v in sorted(data_points_by_attribute.items())}
    row = {
        "destination": destination,
        "created_at": (at or datetime.now(UTC)).astimezone(UTC),
        "path": path,
        "customers": int(customers),
        "requests": int(requests),
        "data_points": sum(by_attribute.values()),
        "data_points_by_attribute": json.dumps(by_attribute, separators=(",", ":")),
    }
    with store.transaction(f"record a dry run of {destination}", write=True) as conn:
        key = conn.execute(d.insert().values(**row)).inserted_primary_key
    return int(key[0]) if key is not None else 0


def dry_runs(store: AttributeStore, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest recorded dry runs, newest first, with ``data_points_by_attribute`` as a dict."""
    d = s.sync_dry_runs
    query = sa.select(d).order_by(d.c.id.desc()).limit(limit)
    with store.transaction("list dry runs") as conn:
        rows = [dict(row._mapping) for row in conn.execute(query)]
    for row in rows:
        try:
            parsed = json.loads(row["data_points_by_attribute"])
        except ValueError:
            parsed = {}
        row["data_points_by_attribute"] = parsed if isinstance(parsed, dict) else {}
    return rows
