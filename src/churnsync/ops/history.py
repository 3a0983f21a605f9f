"""Run history: each prediction run with its sync runs as one row, and the health ``churnsync status`` shows."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from churnsync.schedule import Cadence
    from churnsync.store.store import AttributeStore

#: A scheduled run that has not started this long after its due time is late.
LATE_AFTER = timedelta(hours=1)
_SEVERITY = {"failed": 3, "running": 2, "partial": 1, "succeeded": 0}


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=lambda s: _SEVERITY.get(s, 3))


def combined_runs(store: AttributeStore, limit: int = 20) -> list[dict[str, Any]]:
    """The newest ``limit`` runs, newest first: a prediction run and its syncs in one row; sync-only runs too.

    Each row: ``id`` (prediction run; None for a sync-only run), ``sync_run_ids``, ``started_at``,
    ``finished_at``, ``seconds``, ``as_of``, ``customers_scored``, ``customers_changed``, ``sent``,
    ``accepted``, ``failed``, ``data_points``, ``model_version``, ``status`` (the worst of its parts) and
    ``error``.
    """
    predictions = store.prediction_runs(limit=limit)
    oldest = min((p["id"] for p in predictions), default=0)
    syncs = store.sync_runs(limit=limit * 20)
    by_run: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for sync in syncs:
        by_run[sync["prediction_run_id"]].append(sync)
    rows = [_row(p, by_run.get(p["id"], [])) for p in predictions]
    rows += [_row(None, [s]) for s in by_run.get(None, []) if not predictions or s["id"] >= oldest]
    rows.sort(key=lambda r: r["started_at"], reverse=True)
    return rows[:limit]


def _row(prediction: dict[str, Any] | None, syncs: list[dict[str, Any]]) -> dict[str, Any]:
    syncs = sorted(syncs, key=lambda s: s["id"])
    parts = ([prediction] if prediction else []) + syncs
    started = min(p["started_at"] for p in parts)
    finished_all = [p["finished_at"] for p in parts]
    finished = None if None in finished_all else max(finished_all)
    summary = (prediction or {}).get("summary") or {}
    errors = [s["error"] for s in syncs if s.get("error")]
    if summary.get("error"):
        errors.insert(0, summary["error"])
    as_of = prediction["as_of"] if prediction else None
    if isinstance(as_of, datetime):  # stored as the cut (end of the day); show the day asked for
        as_of = (as_of - timedelta(microseconds=1)).date()
    return {
        "id": prediction["id"] if prediction else None,
        "sync_run_ids": [s["id"] for s in syncs],
        "destinations": [s["destination"] for s in syncs],
        "started_at": started,
        "finished_at": finished,
        "seconds": round((finished - started).total_seconds(), 1) if finished else None,
        "as_of": as_of,
        "customers_scored": prediction["customers_scored"] if prediction else None,
        "customers_changed": prediction["customers_changed"] if prediction else None,
        "sent": sum(s["sent"] or 0 for s in syncs),
        "accepted": sum(s["accepted"] or 0 for s in syncs),
        "failed": sum(s["failed"] or 0 for s in syncs),
        "data_points": sum(s["data_points"] or 0 for s in syncs),
        "model_version": prediction["model_version"] if prediction else None,
        "status": _worst([p["status"] for p in parts]),
        "error": errors[0] if errors else None,
    }


def run_health(store: AttributeStore, cadence: Cadence, now: datetime) -> dict[str, Any]:
    """Last run, next due time, who holds the lock, and ``health``: ok, running, partial, failed, late or never.

    ``late``: the latest due time passed more than an hour ago and no run started since.
    """
    runs = combined_runs(store, limit=1)
    last = runs[0] if runs else None
    holder = store.lock_holder()
    previous_due = cadence.last_at_or_before(now)
    if holder is not None and not holder.get("stale"):
        health = "running"
    elif last is None:
        health = "never"
    elif last["started_at"] < previous_due and now - previous_due > LATE_AFTER:
        health = "late"
    elif last["status"] == "running":
        health = "failed"  # a run left running without the lock died mid-way
    else:
        health = {"succeeded": "ok"}.get(last["status"], last["status"])
    return {
        "health": health,
        "last_run": last,
        "next_run": cadence.next_after(now),
        "cadence": cadence.description,
        "lock": holder,
    }


#: ``churnsync status`` exit code per health.
HEALTH_EXIT = {"ok": 0, "running": 0, "partial": 3, "failed": 1, "late": 1, "never": 1}
