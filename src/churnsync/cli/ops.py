"""Commands for running churnsync unattended: schedule, status, runs."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from churnsync.cli._app import (
    ConfigOption,
    JsonOption,
    app,
    console,
    err,
    load_config,
    options,
    parse_date,
    print_rows,
)
from churnsync.errors import ConfigError

if TYPE_CHECKING:
    from churnsync.config import Settings
    from churnsync.ops.job import JobOutcome
    from churnsync.ops.metrics import RunMetrics
    from churnsync.schedule import Tick

RUN_COLUMNS = ["id", "status", "started_at", "seconds", "as_of", "customers_scored", "customers_changed", "sent",
               "accepted", "failed", "data_points", "model_version", "error"]  # fmt: skip


def _json(value: Any) -> None:
    # Plain print: JSON for machines carries no colour codes and is not wrapped.
    sys.stdout.write(json.dumps(value, default=str, indent=2) + "\n")


@contextmanager
def progress_display() -> Iterator[tuple[Callable[[str], None], Callable[[str, int, int | None], None]]]:
    """``(on_stage, on_progress)`` callbacks drawing rich progress bars with ETA on stderr.

    Nothing is drawn with ``--quiet`` or when stderr is not a terminal (cron, systemd, CI).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=options.quiet or not err.is_terminal,
    )
    tasks: dict[str, Any] = {}
    current: list[str] = []

    def on_stage(stage: str) -> None:
        if current:
            bars.update(tasks[current[-1]], completed=bars.tasks[tasks[current[-1]]].total or 1, total=None)
            bars.stop_task(tasks[current[-1]])
        tasks[stage] = bars.add_task(stage, total=None)
        current.append(stage)

    def on_progress(step: str, done: int, total: int | None) -> None:
        if step not in tasks:
            tasks[step] = bars.add_task(step, total=total)
        bars.update(tasks[step], completed=done, total=total)

    with bars:
        yield on_stage, on_progress


def _render_outcome(outcome: JobOutcome) -> None:
    if outcome.error is not None:
        err.print(f"error: {outcome.error}", markup=False, highlight=False, soft_wrap=True)
    elif outcome.report is not None:
        r = outcome.report
        sent = sum(s.counts.sent for s in r.syncs)
        failed = sum(s.counts.failed for s in r.syncs)
        console.print(
            f"Run {outcome.status}: prediction run {r.prediction_run_id} as of {r.as_of}, "
            f"{r.write.customers_scored:,} scored, {r.write.customers_changed:,} changed, "
            f"{sent:,} sent, {failed:,} failed in {(outcome.finished - outcome.started).total_seconds():.1f} s"
        )
    if outcome.alert:
        err.print(f"alert {'sent' if outcome.alerted else 'not sent (no webhook)'}: {outcome.alert}", markup=False)


def _one_job(
    settings: Settings, tick: Tick, stop: threading.Event, metrics: RunMetrics, as_of: date | None = None
) -> JobOutcome:
    from churnsync.ops.job import run_job

    with progress_display() as (on_stage, on_progress):
        outcome = run_job(
            settings,
            retrain=tick.retrain,
            stop=stop,
            metrics=metrics,
            on_stage=on_stage,
            on_progress=on_progress,
            as_of=as_of,
        )
    _render_outcome(outcome)
    return outcome


@app.command(rich_help_panel="Run unattended")
def schedule(
    config: ConfigOption = None,
    print_cron: Annotated[
        bool, typer.Option("--print-cron", help="Print crontab lines for this cadence and exit (use your own cron).")
    ] = False,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Run one job now as the scheduler would (lock, retrain cadence, metrics, alert) and exit: "
            "for cron, systemd timers and orchestrators.",
        ),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", help="Serve Prometheus /metrics on this port (overrides the config)."),
    ] = None,
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of", formats=["%Y-%m-%d"], help="With --once: score as of this date (UTC); later events are ignored."
        ),
    ] = None,
) -> None:
    """Run the pipeline on the configured cadence (the schedule section) until SIGTERM or Ctrl-C."""
    from churnsync.ops.logs import configure_logging, secrets_of
    from churnsync.ops.metrics import RunMetrics
    from churnsync.schedule import Scheduler, ScheduleState, Tick, cadence_from_settings, crontab_lines, retrain_due

    settings = load_config(config)
    if as_of is not None and not once:
        raise ConfigError("--as-of needs --once (a schedule scores as of each run's day)", remedy="Add --once")
    cadence = cadence_from_settings(settings.schedule)
    if print_cron:
        path = config or _config_path()
        command = f"{sys.executable} -m churnsync --quiet schedule --once"
        if path is not None:
            command += f" --config {path.resolve()}"
        for line in crontab_lines(cadence, command):
            typer.echo(line)
        return
    configure_logging(
        json_lines=options.log_json or settings.observability.log_json,
        quiet=options.quiet,
        secrets=secrets_of(settings),
    )
    metrics = RunMetrics()
    state_path = Path(settings.schedule.state_path)
    retrain_every = timedelta(days=settings.schedule.retrain_every_days)
    stop = threading.Event()
    if once:
        state = ScheduleState.load(state_path)
        now = datetime.now(UTC)
        retrain = retrain_due(state.last_retrain, now, retrain_every)
        outcome = _one_job(settings, Tick(due=now, retrain=retrain), stop, metrics, parse_date(as_of))
        state.last_run = now
        if retrain and outcome.status != "failed":
            state.last_retrain = now
        state.save(state_path)
        raise typer.Exit(outcome.exit_code)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        err.print(f"{signal.Signals(signum).name}: finishing the batch in flight, then stopping")
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def waiting(due: datetime) -> None:
        metrics.next_run_at(due)
        console.print(f"Next run {due.astimezone(cadence.zone):%Y-%m-%d %H:%M %Z} ({cadence.description})")

    port = metrics_port if metrics_port is not None else settings.observability.metrics_port
    try:
        if port is not None:
            bound = metrics.serve(port, settings.observability.metrics_host)
            err.print(f"Prometheus metrics on http://{settings.observability.metrics_host}:{bound}/metrics")
        scheduler = Scheduler(
            cadence,
            job=lambda tick: _one_job(settings, tick, stop, metrics).status != "failed",
            state_path=state_path,
            retrain_every=retrain_every,
            catch_up=settings.schedule.catch_up,
            stop=stop,
            on_wait=waiting,
        )
        runs = scheduler.run()
    finally:
        metrics.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    console.print(f"Scheduler stopped after {runs} run(s).")


def _config_path() -> Path | None:
    from churnsync.config import find_config

    return find_config(None)


@app.command(rich_help_panel="Run unattended")
def status(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Show the last run, the next due run and the health; exit 0 ok, 1 failed/late/never run, 3 partial."""
    from churnsync.ops.history import HEALTH_EXIT, run_health
    from churnsync.schedule import cadence_from_settings
    from churnsync.store.store import AttributeStore

    settings = load_config(config)
    cadence = cadence_from_settings(settings.schedule)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        health = run_health(store, cadence, datetime.now(UTC))
    finally:
        store.close()
    if as_json:
        _json(health)
    else:
        colour = {"ok": "green", "running": "cyan", "partial": "yellow"}.get(health["health"], "red")
        console.print(f"health: [{colour}]{health['health']}[/{colour}]")
        last = health["last_run"]
        if last is None:
            console.print("last run: none yet")
        else:
            started = f"{last['started_at']:%Y-%m-%d %H:%M:%S} UTC"
            console.print(
                f"last run: {last['id'] or 'sync only'} {last['status']}, started {started}, "
                f"{last['customers_scored'] or 0:,} scored, {last['sent']:,} sent, {last['failed']:,} failed"
                + (f" ({last['error']})" if last["error"] else ""),
                markup=False,
            )
        due = health["next_run"].astimezone(cadence.zone)
        console.print(f"next run: {due:%Y-%m-%d %H:%M %Z} ({health['cadence']})")
        lock = health["lock"]
        if lock is not None:
            state = "stale" if lock.get("stale") else "held"
            who = f"{lock['owner']} (host {lock['host']}, pid {lock['pid']})"
            console.print(f"run lock: {state} by {who}", markup=False)
    raise typer.Exit(HEALTH_EXIT[health["health"]])


@app.command(rich_help_panel="Run unattended")
def runs(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many runs to show.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List recent runs: each prediction run with its syncs (counts, data points, model, status)."""
    from churnsync.ops.history import combined_runs
    from churnsync.store.store import AttributeStore

    settings = load_config(config)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        rows = combined_runs(store, limit=limit)
        predictions, syncs = store.prediction_runs(limit=limit), store.sync_runs(limit=limit)
    finally:
        store.close()
    if as_json:
        # "runs" combines each prediction run with its syncs; the raw rows stay for scripts written before.
        _json({"runs": rows, "prediction_runs": predictions, "sync_runs": syncs})
        return
    print_rows("Runs", rows, RUN_COLUMNS)
