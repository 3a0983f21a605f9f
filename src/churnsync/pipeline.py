"""One run: read behaviour → predict → store → sync. Used by the CLI, the demo and (later) the scheduler."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from churnsync.config import Settings
from churnsync.errors import ChurnsyncError, DataError
from churnsync.records import SyncCounts

if TYPE_CHECKING:
    import threading

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
    #: Journal, quarantine and budget figures of the run (churnsync.sync.runner.SyncResult.details).
    details: dict[str, Any] = field(default_factory=dict)


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
    #: What the churn model step did (trained, published or refused by the quality gate, fell back to BG/NBD).
    model_messages: list[str] = field(default_factory=list)

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
    retrain: bool = False,
) -> RunReport:
    """Read events, fit and score, write the predictions; record the prediction run (failed runs too).

    ``retrain``: train a new churn model first (the quality gate decides whether it replaces the one in service).
    """
    import duckdb
    import pyarrow.compute as pc

    from churnsync.events.reader import load_events
    from churnsync.models.scoring import predict_attributes

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
        scored = predict_attributes(
            con, cut, settings.model_copy(update={"prediction": prediction}), now=now, retrain=retrain
        )
    finally:
        con.close()
    table, version = scored.table, scored.model_version
    run_id = store.start_prediction_run(
        as_of=cut,
        horizon_days=prediction.horizon_days,
        model_version=version,
        details={
            **scored.details,
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
    return RunReport(
        prediction_run_id=run_id,
        as_of=as_of,
        cut=cut,
        load=load,
        write=write,
        model_version=version,
        model_params=scored.model_params,
        risk_counts=risk_counts,
        model_messages=scored.messages,
    )


@dataclass
class TrainReport:
    """What ``churnsync train`` did: the version saved, whether the quality gate put it in service, and why."""

    as_of: date
    cut: datetime
    version: str
    published: bool
    reason: str
    champion: str
    champion_reason: str


def _events_until(settings: Settings, *, now: datetime, as_of: date | None) -> tuple[Any, date, datetime]:
    """A DuckDB connection holding the events up to the end of ``as_of`` (default: today), the date and the cut."""
    import duckdb

    from churnsync.events.reader import load_events

    as_of = as_of or settings.prediction.as_of or now.date()
    cut = cut_for(as_of)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        load = load_events(con, settings.data, now=now, as_of=cut - timedelta(microseconds=1))
        if load.rows_loaded == 0:
            raise DataError(
                f"no events on or before {as_of.isoformat()} in {', '.join(settings.data.paths)}",
                remedy="Check data.paths and --as-of",
            )
    except BaseException:
        con.close()
        raise
    return con, as_of, cut


def train_model(settings: Settings, *, now: datetime | None = None, as_of: date | None = None) -> TrainReport:
    """Retrain the churn model on the events up to ``as_of``, save it, and put it in service if the gate allows."""
    from churnsync.models.registry import ModelRegistry
    from churnsync.models.scoring import train_churn_model

    now = now or utcnow()
    con, as_of, cut = _events_until(settings, now=now, as_of=as_of)
    try:
        version, published, reason = train_churn_model(con, cut.replace(tzinfo=None), settings, now=now)
    finally:
        con.close()
    meta = ModelRegistry(settings.model.registry_path).load(version).meta
    return TrainReport(
        as_of=as_of,
        cut=cut,
        version=version,
        published=published,
        reason=reason,
        champion=str(meta.get("champion")),
        champion_reason=str(meta.get("champion_reason")),
    )


def evaluate_model(settings: Settings, *, now: datetime | None = None, as_of: date | None = None) -> dict[str, Any]:
    """The quality report (a backtest over the last horizon before ``as_of``) as a JSON-ready dict."""
    from churnsync.models.report import evaluate_backtest

    now = now or utcnow()
    con, as_of, cut = _events_until(settings, now=now, as_of=as_of)
    try:
        return evaluate_backtest(con, cut, settings, now=now)
    finally:
        con.close()


#: ``on_progress(step, done, total)``: ``total`` is an estimate (None: unknown); called from the running thread.
Progress = Callable[[str, int, int | None], None]


def _until_stopped(chunks: Iterator[list[Any]], size: int, stop: threading.Event | None) -> Iterator[list[Any]]:
    """Re-cut ``chunks`` into batches of ``size`` and end early once ``stop`` is set (batches in flight finish)."""
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            if stop is not None and stop.is_set():
                return
            yield chunk[start : start + size]


def sync_destination(
    settings: Settings,
    store: AttributeStore,
    name: str,
    *,
    prediction_run_id: int | None,
    api_key: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    stop: threading.Event | None = None,
    on_progress: Progress | None = None,
    expected: int | None = None,
) -> SyncReport:
    """Push one destination's changes; acknowledged state is written per batch by the store.

    When ``stop`` is set, no new batch starts: the batches in flight finish and are recorded, and the sync run
    ends ``partial`` (the rest is selected again by the next run).
    """
    from churnsync.sync.runner import run_sync

    destination = settings.destinations[name]
    key = api_key if api_key is not None else destination.api_key(name)
    sync_run_id = store.start_sync_run(name, prediction_run_id=prediction_run_id)
    done = 0

    def record(outcome: Any) -> None:
        nonlocal done
        done += len(outcome.accepted) + len(outcome.failed)
        if on_progress is not None:
            on_progress(f"sync {name}", done, max(expected, done) if expected is not None else None)

    try:
        result = run_sync(
            store,
            name,
            destination,
            sync_run_id=sync_run_id,
            api_key=key,
            transport=transport,
            wrap=lambda chunks: _until_stopped(chunks, destination.batch_size, stop),
            on_recorded=record,
        )
        counts = result.counts
    except ChurnsyncError as exc:
        store.finish_sync_run(sync_run_id, status="failed", counts=SyncCounts(), error=str(exc))
        raise
    status = "succeeded" if counts.failed == 0 else ("partial" if counts.accepted else "failed")
    error = None
    if stop is not None and stop.is_set():
        status = "partial" if status == "succeeded" else status
        error = f"stopped by a signal after {counts.requests} requests; the rest is sent by the next run"
    store.finish_sync_run(sync_run_id, status=status, counts=counts, error=error)
    return SyncReport(
        destination=name,
        sync_run_id=sync_run_id,
        status=status,
        counts=counts,
        error=error,
        details=result.details(),
    )


def run_pipeline(
    settings: Settings,
    *,
    now: datetime | None = None,
    as_of: date | None = None,
    sync: bool = True,
    api_keys: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Progress | None = None,
    stop: threading.Event | None = None,
    lock_owner: str = "churnsync run",
    retrain: bool = False,
) -> RunReport:
    """Read → predict → store → sync every configured destination. Raises on the first terminal error.

    The whole run holds the store's run lock (:class:`~churnsync.errors.StoreLockedError` when another run
    holds it). Once ``stop`` is set, the batches in flight finish and are recorded, and no further step starts.
    """
    from churnsync.store.store import AttributeStore

    now = now or utcnow()
    say = on_stage or (lambda _stage: None)
    # Missing keys are configuration errors: find them before an hour of scoring, not after.
    keys = {n: (api_keys or {}).get(n) or d.api_key(n) for n, d in settings.destinations.items()} if sync else {}
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        with store.run_lock(lock_owner):
            return _run_locked(
                settings, store, now=now, as_of=as_of, sync=sync, keys=keys, transport=transport, say=say,
                on_progress=on_progress, stop=stop, retrain=retrain,
            )  # fmt: skip
    finally:
        store.close()


def _run_locked(
    settings: Settings,
    store: AttributeStore,
    *,
    now: datetime,
    as_of: date | None,
    sync: bool,
    keys: Mapping[str, str],
    transport: httpx.AsyncBaseTransport | None,
    say: Callable[[str], None],
    on_progress: Progress | None,
    stop: threading.Event | None,
    retrain: bool = False,
) -> RunReport:
    """The run itself, inside the run lock."""
    say("predict")
    report = predict_and_store(settings, store, now=now, as_of=as_of, retrain=retrain)
    expected = report.write.customers_changed
    if sync:
        for name in settings.destinations:
            if stop is not None and stop.is_set():
                break
            say(f"sync {name}")
            report.syncs.append(
                sync_destination(
                    settings,
                    store,
                    name,
                    prediction_run_id=report.prediction_run_id,
                    api_key=keys[name],
                    transport=transport,
                    stop=stop,
                    on_progress=on_progress,
                    expected=expected,
                )
            )
    return report
