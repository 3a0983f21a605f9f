"""One run: read behaviour → predict → store → sync. Used by the CLI, the demo and (later) the scheduler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from churnsync.config import Settings
from churnsync.errors import ChurnsyncError, DataError
from churnsync.records import SyncCounts

if TYPE_CHECKING:
    import httpx

    from churnsync.events.reader import LoadResult
    from churnsync.store.store import AttributeStore, WriteSummary


def utcnow() -> datetime:
    """The real clock, aware UTC."""
    return datetime.now(UTC)


def cut_for(as_of: date) -> datetime:
    """The scoring cut for ``as_of``: the end of that UTC day, so events on ``as_of`` count."""
    return datetime.combine(as_of + timedelta(days=1), time(0), tzinfo=UTC)


@dataclass
class SyncReport:
    """What one destination's sync did."""

    destination: str
    sync_run_id: int
    status: str
    counts: SyncCounts
    error: str | None = None


@dataclass
class RunReport:
    """What one pipeline run did, stage by stage."""

    prediction_run_id: int
    as_of: date
    cut: datetime
    load: LoadResult
    write: WriteSummary
    model_version: str
    model_params: dict[str, float]
    risk_counts: dict[str, int]
    syncs: list[SyncReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every destination's sync succeeded."""
        return all(s.status == "succeeded" for s in self.syncs)


def predict_and_store(
    settings: Settings,
    store: AttributeStore,
    *,
    now: datetime,
    as_of: date | None = None,
) -> RunReport:
    """Read events, fit and score, write the predictions; record the prediction run (failed runs too)."""
    import duckdb
    import pyarrow.compute as pc

    from churnsync.events.reader import load_events
    from churnsync.models.scoring import fit_and_score, model_version

    as_of = as_of or settings.prediction.as_of or now.date()
    cut = cut_for(as_of)
    prediction = settings.prediction.model_copy(update={"as_of": as_of})
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        # A cut after `now` would score on a partial day; events after the cut are ignored as of `as_of`.
        load = load_events(con, settings.data, now=now, as_of=cut - timedelta(microseconds=1))
        if load.rows_loaded == 0:
            raise DataError(
                f"no events on or before {as_of.isoformat()} in {', '.join(settings.data.paths)}",
                remedy="Check data.paths and --as-of",
            )
        table, model, _rfm = fit_and_score(con, cut, prediction)
    finally:
        con.close()
    version = model_version(model, prediction)
    run_id = store.start_prediction_run(
        as_of=cut,
        horizon_days=prediction.horizon_days,
        model_version=version,
        details={
            "model": model.to_dict(),
            "rows_loaded": load.rows_loaded,
            "rows_rejected": load.rows_rejected,
        },
    )
    try:
        write = store.write_predictions(run_id, table, settings.attributes)
    except ChurnsyncError as exc:
        store.finish_prediction_run(run_id, status="failed", summary={"error": str(exc)})
        raise
    tiers = pc.value_counts(table.column("churn_risk")).to_pylist()
    risk_counts = {str(t["values"]): int(t["counts"]) for t in tiers}
    store.finish_prediction_run(
        run_id,
        status="succeeded",
        summary={
            "customers_scored": write.customers_scored,
            "customers_new": write.customers_new,
            "customers_changed": write.customers_changed,
            "values_changed": write.values_changed,
            "rows_read": load.rows_read,
            "rows_rejected": load.rows_rejected,
            "risk_counts": risk_counts,
        },
    )
    params = model.params_
    return RunReport(
        prediction_run_id=run_id,
        as_of=as_of,
        cut=cut,
        load=load,
        write=write,
        model_version=version,
        model_params={"r": params.r, "alpha": params.alpha, "a": params.a, "b": params.b},
        risk_counts=risk_counts,
    )


def sync_destination(
    settings: Settings,
    store: AttributeStore,
    name: str,
    *,
    prediction_run_id: int | None,
    api_key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SyncReport:
    """Push one destination's changes; acknowledged state is written per batch by the store."""
    from churnsync.sync.braze import push_changes

    destination = settings.destinations[name]
    key = api_key if api_key is not None else destination.api_key(name)
    sync_run_id = store.start_sync_run(name, prediction_run_id=prediction_run_id)

    def record(outcome: Any) -> None:
        store.record_batch(sync_run_id, name, outcome)

    try:
        counts = push_changes(
            store.select_changes(name),
            name=name,
            destination=destination,
            api_key=key,
            on_batch=record,
            transport=transport,
        )
    except ChurnsyncError as exc:
        store.finish_sync_run(sync_run_id, status="failed", counts=SyncCounts(), error=str(exc))
        raise
    status = "succeeded" if counts.failed == 0 else ("partial" if counts.accepted else "failed")
    store.finish_sync_run(sync_run_id, status=status, counts=counts)
    return SyncReport(destination=name, sync_run_id=sync_run_id, status=status, counts=counts)


def run_pipeline(
    settings: Settings,
    *,
    now: datetime | None = None,
    as_of: date | None = None,
    sync: bool = True,
    api_keys: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> RunReport:
    """Read → predict → store → sync every configured destination. Raises on the first terminal error."""
    from churnsync.store.store import AttributeStore

    now = now or utcnow()
    say = on_stage or (lambda _stage: None)
    # Missing keys are configuration errors: find them before an hour of scoring, not after.
    keys = {n: (api_keys or {}).get(n) or d.api_key(n) for n, d in settings.destinations.items()} if sync else {}
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        say("predict")
        report = predict_and_store(settings, store, now=now, as_of=as_of)
        if sync:
            for name in settings.destinations:
                say(f"sync {name}")
                report.syncs.append(
                    sync_destination(
                        settings,
                        store,
                        name,
                        prediction_run_id=report.prediction_run_id,
                        api_key=keys[name],
                        transport=transport,
                    )
                )
        return report
    finally:
        store.close()
