"""One run: read behaviour → predict → store → sync. Used by the CLI, the demo and (later) the scheduler."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from churnsync.config import DEFAULT_PREDICTION, AttributeSettings, PredictionSpec, Settings
from churnsync.errors import ChurnsyncError, DataError
from churnsync.records import SyncCounts

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import threading

    import httpx
    import pyarrow as pa

    from churnsync.events.reader import LoadResult
    from churnsync.models.scoring import Prediction
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
class PredictionOutcome:
    """What one prediction of a run did: its model, the attributes' suffix, how many it scored, its tiers."""

    name: str
    attribute_suffix: str
    model_version: str
    customers_scored: int
    risk_counts: dict[str, int]
    messages: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    """What one pipeline run did, stage by stage (``model_version`` and ``risk_counts``: the first prediction's)."""

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
    #: Every prediction of the run (one for the single ``[prediction]``), in configuration order.
    predictions: list[PredictionOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every destination's sync succeeded."""
        return all(s.status == "succeeded" for s in self.syncs)


def _predict_on_duckdb(
    settings: Settings,
    specs: Sequence[PredictionSpec],
    as_of: date,
    cut: datetime,
    *,
    now: datetime,
    retrain: bool,
    scored: list[tuple[PredictionSpec, Prediction]],
) -> LoadResult:
    """Read the events into DuckDB and make every prediction of ``specs`` (appended to ``scored``)."""
    import duckdb

    from churnsync.events.reader import load_events
    from churnsync.models.scoring import predict_attributes

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
        for spec in specs:
            one = predict_attributes(
                con, cut, settings.for_prediction(spec), now=now, retrain=retrain, prediction_name=spec.name
            )
            scored.append((spec, one))
    finally:
        con.close()
    return load


def predict_and_store(
    settings: Settings,
    store: AttributeStore,
    *,
    now: datetime,
    as_of: date | None = None,
    retrain: bool = False,
    predictions: Sequence[str] | None = None,
) -> RunReport:
    """Read events, fit and score, write the predictions; record the prediction run (failed runs too).

    ``retrain``: train a new churn model first (the quality gate decides whether it replaces the one in service).
    ``predictions``: the names of the predictions to make (default: every configured one). All of them read the
    same events up to ``as_of`` and are written as one run: each prediction's attributes carry its suffix.
    """
    specs = settings.select_predictions(predictions)
    as_of = as_of or settings.prediction.as_of or now.date()
    cut = cut_for(as_of)
    specs = [spec.model_copy(update={"settings": spec.settings.model_copy(update={"as_of": as_of})}) for spec in specs]
    scored: list[tuple[PredictionSpec, Prediction]] = []
    if settings.engine == "spark":  # issue 8: read, features, training sample and scoring on Spark
        from churnsync.engines.spark import predict_on_spark

        jobs = [(settings.for_prediction(spec), spec.name) for spec in specs]
        load, results = predict_on_spark(settings, jobs, cut, now=now, retrain=retrain)
        scored = list(zip(specs, results, strict=True))
    else:
        load = _predict_on_duckdb(settings, specs, as_of, cut, now=now, retrain=retrain, scored=scored)
    table = _published_table(scored)
    outcomes = [_outcome(spec, one) for spec, one in scored]
    first = scored[0][1]
    several = len(scored) > 1 or specs[0].name != DEFAULT_PREDICTION
    version = first.model_version if not several else "; ".join(f"{o.name}={o.model_version}" for o in outcomes)
    details: dict[str, Any] = {**first.details, "rows_loaded": load.rows_loaded, "rows_rejected": load.rows_rejected}
    if several:
        details["predictions"] = {
            spec.name: {
                "model_version": one.model_version,
                "horizon_days": spec.settings.horizon_days,
                "qualifying_events": list(spec.settings.qualifying_events),
                "attribute_suffix": spec.attribute_suffix,
                "customers_scored": outcome.customers_scored,
                "risk_counts": outcome.risk_counts,
                "messages": one.messages,
                **({"population": one.details["population"]} if "population" in one.details else {}),
            }
            for (spec, one), outcome in zip(scored, outcomes, strict=True)
        }
    run_id = store.start_prediction_run(
        as_of=cut, horizon_days=specs[0].settings.horizon_days, model_version=version[:200], details=details
    )
    try:
        write = store.write_predictions(run_id, table, published_rules(settings.attributes, specs))
    except ChurnsyncError as exc:
        store.finish_prediction_run(run_id, status="failed", summary={"error": str(exc)})
        raise
    risk_counts = outcomes[0].risk_counts
    summary: dict[str, Any] = {
        "customers_scored": write.customers_scored,
        "customers_new": write.customers_new,
        "customers_changed": write.customers_changed,
        "values_changed": write.values_changed,
        "rows_read": load.rows_read,
        "rows_rejected": load.rows_rejected,
        "risk_counts": risk_counts,
    }
    if write.advice:
        summary["store_advice"] = list(write.advice)
    for advice in write.advice:
        log.warning("store: %s", advice)
    if several:
        summary["predictions"] = {o.name: {"customers_scored": o.customers_scored, "risk_counts": o.risk_counts}
                                  for o in outcomes}  # fmt: skip
    store.finish_prediction_run(run_id, status="succeeded", summary=summary)
    messages = [m if not several else f"{o.name}: {m}" for o, (_, one) in zip(outcomes, scored, strict=True)
                for m in one.messages]  # fmt: skip
    return RunReport(
        prediction_run_id=run_id,
        as_of=as_of,
        cut=cut,
        load=load,
        write=write,
        model_version=version,
        model_params=first.model_params,
        risk_counts=risk_counts,
        model_messages=messages,
        predictions=outcomes,
    )


def _outcome(spec: PredictionSpec, scored: Prediction) -> PredictionOutcome:
    import pyarrow.compute as pc

    tiers = scored.table.column("churn_risk")
    counts = pc.value_counts(pc.drop_null(tiers)).to_pylist()
    return PredictionOutcome(
        name=spec.name,
        attribute_suffix=spec.attribute_suffix,
        model_version=scored.model_version,
        customers_scored=len(tiers) - tiers.null_count,
        risk_counts={str(t["values"]): int(t["counts"]) for t in counts},
        messages=list(scored.messages),
    )


def _published_table(scored: Sequence[tuple[PredictionSpec, Prediction]]) -> pa.Table:
    """One row per customer with every prediction's attributes under their published (suffixed) names.

    A customer scored by one prediction and not by another (no qualifying event of its kind) has no value for the
    other's attributes: nulls, which the store treats as no value (a customer's first null is no change).
    """
    table: pa.Table | None = None
    for spec, one in scored:
        part = one.table.rename_columns(
            [c if c == "customer_id" else c + spec.attribute_suffix for c in one.table.column_names]
        )
        table = part if table is None else table.join(part, keys="customer_id", join_type="full outer")
    assert table is not None
    return table


def published_rules(attributes: AttributeSettings, specs: Sequence[PredictionSpec]) -> AttributeSettings:
    """The change rules of every published name: ``churn_probability_session_7d`` follows the rule of
    ``churn_probability`` (unless it has its own), and its ``unless_changed`` couples to the same prediction's
    attributes (``churn_risk_session_7d``)."""
    rules = dict(attributes.rules)
    for spec in specs:
        suffix = spec.attribute_suffix
        if not suffix:
            continue
        for name in spec.published():
            if name in attributes.rules:
                continue
            rule = attributes.rule_for(name[: -len(suffix)])
            rules[name] = rule.model_copy(update={"unless_changed": [c + suffix for c in rule.unless_changed]})
    return attributes.model_copy(update={"rules": rules})


@dataclass
class TrainReport:
    """What ``churnsync train`` did for one prediction: the version saved, whether the quality gate put it in
    service, and why."""

    as_of: date
    cut: datetime
    version: str
    published: bool
    reason: str
    champion: str
    champion_reason: str
    prediction: str = DEFAULT_PREDICTION


def _events_until(settings: Settings, *, now: datetime, as_of: date | None) -> tuple[Any, date, datetime]:
    """A DuckDB connection holding the events up to the end of ``as_of`` (default: today), the date and the cut.

    With ``engine = "spark"``: the events of a hash sample of ``spark.training_sample_customers`` customers."""
    import duckdb

    from churnsync.events.reader import load_events

    as_of = as_of or settings.prediction.as_of or now.date()
    cut = cut_for(as_of)
    if settings.engine == "spark":  # issue 8: the events of a sample of customers, pulled from Spark
        from churnsync.engines.spark import sample_on_spark

        return sample_on_spark(settings, cut, now=now), as_of, cut
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


def train_models(
    settings: Settings,
    *,
    now: datetime | None = None,
    as_of: date | None = None,
    predictions: Sequence[str] | None = None,
) -> list[TrainReport]:
    """Retrain the churn model of every prediction (or of those named) on the events up to ``as_of``; each is
    saved under its prediction's name and put in service if that prediction's quality gate allows."""
    from churnsync.models.registry import ModelRegistry
    from churnsync.models.scoring import train_churn_model

    specs = settings.select_predictions(predictions)
    now = now or utcnow()
    con, as_of, cut = _events_until(settings, now=now, as_of=as_of)
    reports = []
    try:
        for spec in specs:
            scoped = settings.for_prediction(spec)
            version, published, reason = train_churn_model(
                con, cut.replace(tzinfo=None), scoped, now=now, prediction=spec.name
            )
            meta = ModelRegistry(settings.model.registry_path).load(version).meta
            reports.append(
                TrainReport(
                    as_of=as_of,
                    cut=cut,
                    version=version,
                    published=published,
                    reason=reason,
                    champion=str(meta.get("champion")),
                    champion_reason=str(meta.get("champion_reason")),
                    prediction=spec.name,
                )
            )
    finally:
        con.close()
    return reports


def train_model(
    settings: Settings, *, now: datetime | None = None, as_of: date | None = None, prediction: str | None = None
) -> TrainReport:
    """Retrain one prediction's churn model (default: the first configured) on the events up to ``as_of``, save
    it, and put it in service if the gate allows."""
    names = [prediction] if prediction else settings.prediction_names()[:1]
    return train_models(settings, now=now, as_of=as_of, predictions=names)[0]


def evaluate_models(
    settings: Settings,
    *,
    now: datetime | None = None,
    as_of: date | None = None,
    predictions: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The quality report of every prediction (or of those named), by prediction name; see :func:`evaluate_model`."""
    from churnsync.models.report import evaluate_backtest

    specs = settings.select_predictions(predictions)
    now = now or utcnow()
    con, as_of, cut = _events_until(settings, now=now, as_of=as_of)
    try:
        return {
            spec.name: evaluate_backtest(con, cut, settings.for_prediction(spec), now=now, prediction=spec.name)
            for spec in specs
        }
    finally:
        con.close()


def evaluate_model(
    settings: Settings, *, now: datetime | None = None, as_of: date | None = None, prediction: str | None = None
) -> dict[str, Any]:
    """The quality report (a backtest over the last horizon before ``as_of``) of one prediction (default: the
    first configured) as a JSON-ready dict."""
    names = [prediction] if prediction else settings.prediction_names()[:1]
    return next(iter(evaluate_models(settings, now=now, as_of=as_of, predictions=names).values()))


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
        try:
            store.finish_sync_run(sync_run_id, status="failed", counts=SyncCounts(), error=str(exc))
        except ChurnsyncError:
            # The store failing too (e.g. still locked) must not hide why the run failed: the run stays "running"
            # and the next run marks it interrupted; the first error is the one to report.
            log.debug("sync run %s could not be marked failed in the store", sync_run_id)
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
    predictions: Sequence[str] | None = None,
) -> RunReport:
    """Read → predict → store → sync every configured destination. Raises on the first terminal error.

    ``predictions`` names the predictions to make (default: all); the sync sends every changed attribute.

    The whole run holds the store's run lock (:class:`~churnsync.errors.StoreLockedError` when another run
    holds it). Once ``stop`` is set, the batches in flight finish and are recorded, and no further step starts.
    """
    from churnsync.store.store import AttributeStore

    now = now or utcnow()
    say = on_stage or (lambda _stage: None)
    settings.select_predictions(predictions)  # an unknown --prediction is a configuration error, before any work
    # Missing keys are configuration errors: find them before an hour of scoring, not after.
    keys = {n: (api_keys or {}).get(n) or d.api_key(n) for n, d in settings.destinations.items()} if sync else {}
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        with store.run_lock(lock_owner):
            return _run_locked(
                settings, store, now=now, as_of=as_of, sync=sync, keys=keys, transport=transport, say=say,
                on_progress=on_progress, stop=stop, retrain=retrain, predictions=predictions,
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
    predictions: Sequence[str] | None = None,
) -> RunReport:
    """The run itself, inside the run lock."""
    say("predict")
    report = predict_and_store(settings, store, now=now, as_of=as_of, retrain=retrain, predictions=predictions)
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
