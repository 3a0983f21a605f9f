"""Commands that do the job: init, generate, run, demo, emulator."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from churnsync.cli._app import (
    AsOfOption,
    ConfigOption,
    PredictionOption,
    app,
    console,
    err,
    load_config,
    options,
    parse_date,
)
from churnsync.config import DEFAULT_CONFIG_NAME, STARTER_CONFIG
from churnsync.errors import ConfigError

if TYPE_CHECKING:
    from churnsync.demo import DemoResult
    from churnsync.pipeline import RunReport


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter configuration.")] = Path(DEFAULT_CONFIG_NAME),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter churnsync.toml."""
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists", remedy="Pass --force to overwrite it")
    path.write_text(STARTER_CONFIG, encoding="utf-8")
    console.print(f"Wrote {path}. Edit [data] and [destinations], then run `churnsync run`.")


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for events and truth files.")] = Path("data"),
    customers: Annotated[int, typer.Option("--customers", min=1, help="Number of customers.")] = 10_000,
    days: Annotated[int, typer.Option("--days", min=30, help="Days of behaviour to write.")] = 365,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same data).")] = 1,
    start: Annotated[
        datetime | None, typer.Option("--start", formats=["%Y-%m-%d"], help="First day (default 2025-01-01).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
) -> None:
    """Generate realistic sample behaviour with its ground truth."""
    from churnsync.events.generator import generate_sample

    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"--format must be csv or parquet, not {fmt!r}")
    kwargs: dict[str, Any] = {"start": start.date()} if start else {}
    result = generate_sample(
        out, customers=customers, days=days, seed=seed, fmt="csv" if fmt == "csv" else "parquet", **kwargs
    )
    console.print(
        f"Wrote {result.events:,} events for {result.customers:,} customers ({result.start} to {result.cut}) "
        f"to {result.events_path}; ground truth in {result.truth_path}"
    )


def _render_run(report: RunReport) -> None:
    load = report.load
    table = Table(title=f"Prediction run {report.prediction_run_id} as of {report.as_of}", show_header=False)
    table.add_row("events read", f"{load.rows_read:,} from {len(load.files)} file(s)")
    table.add_row(
        "events rejected",
        f"{load.rows_rejected:,}" + (f" → {load.rejects_path}" if load.rejects_path else ""),
    )
    table.add_row("events used", f"{load.rows_loaded:,}")
    table.add_row("customers scored", f"{report.write.customers_scored:,}")
    table.add_row("new / changed", f"{report.write.customers_new:,} / {report.write.customers_changed:,}")
    several = len(report.predictions) > 1 or any(p.attribute_suffix for p in report.predictions)
    if not several:
        table.add_row("model", report.model_version)
    for message in report.model_messages:  # issue 3: training, quality gate, fallback to BG/NBD
        table.add_row("churn model", message)
    if not several:
        tiers = ", ".join(f"{k} {v:,}" for k, v in sorted(report.risk_counts.items()))
        table.add_row("churn risk", tiers)
    for p in report.predictions if several else []:  # issue 3: several predictions side by side
        tiers = ", ".join(f"{k} {v:,}" for k, v in sorted(p.risk_counts.items()))
        table.add_row(
            f"prediction {p.name}",
            f"model {p.model_version}; {p.customers_scored:,} scored; churn_risk{p.attribute_suffix}: {tiers}",
        )
    console.print(table)
    for sync in report.syncs:
        c = sync.counts
        t = Table(title=f"Sync {sync.sync_run_id} → {sync.destination}: {sync.status}", show_header=False)
        t.add_row("customers selected", f"{c.selected:,}")
        t.add_row("sent / accepted / failed", f"{c.sent:,} / {c.accepted:,} / {c.failed:,}")
        t.add_row("data points", f"{c.data_points:,}")
        t.add_row("requests (retries, 429s)", f"{c.requests:,} ({c.retries:,}, {c.rate_limited:,})")
        console.print(t)
        for failure in c.failures[:10]:
            err.print(f"  failed {failure.customer_id}: {failure.reason}")


@app.command()
def run(
    config: ConfigOption = None,
    as_of: AsOfOption = None,
    no_sync: Annotated[bool, typer.Option("--no-sync", help="Predict and store only.")] = False,
    retrain: Annotated[
        bool,
        typer.Option("--retrain", help="Train a new churn model first (the quality gate decides whether it serves)."),
    ] = False,
    prediction: PredictionOption = None,
) -> None:
    """Read behaviour, predict, store, and sync the changes to every destination.

    The run is guarded like a scheduled one: progress bars with ETA on a terminal, the metrics textfile
    (observability.metrics_textfile) and an alert to the webhook on a failed run or too many failed customers.
    """
    from churnsync.cli.ops import progress_display
    from churnsync.ops.job import run_job
    from churnsync.ops.logs import configure_logging, secrets_of

    settings = load_config(config)
    configure_logging(
        json_lines=options.log_json or settings.observability.log_json,
        quiet=options.quiet,
        secrets=secrets_of(settings),
    )
    metrics = None
    if settings.observability.metrics_textfile:
        from churnsync.ops.metrics import RunMetrics

        metrics = RunMetrics()
    with progress_display() as (on_stage, on_progress):
        outcome = run_job(
            settings,
            retrain=retrain,
            as_of=parse_date(as_of),
            sync=not no_sync,
            on_stage=on_stage,
            on_progress=on_progress,
            metrics=metrics,
            owner="churnsync run",
            interactive=True,
            predictions=prediction,
        )
    if outcome.error is not None:
        raise outcome.error  # one line on stderr and its exit code (churnsync.cli._app.main)
    assert outcome.report is not None
    _render_run(outcome.report)
    if outcome.alert and outcome.alerted:
        err.print(f"alert sent: {outcome.alert}", markup=False, highlight=False, soft_wrap=True)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


@app.command()
def demo(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the demo's files (default: a new temporary folder)."),
    ] = None,
    customers: Annotated[int, typer.Option("--customers", min=100, help="Customers to generate.")] = 20_000,
    days: Annotated[int, typer.Option("--days", min=60, help="Days of behaviour.")] = 365,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 7,
) -> None:
    """Generate data, start the Braze emulator, run twice a week apart, and verify what Braze received."""
    from churnsync.demo import run_demo

    folder = out or Path(tempfile.mkdtemp(prefix="churnsync-demo-"))
    with console.status("demo…") as status:
        result = run_demo(folder, customers=customers, days=days, seed=seed, on_stage=lambda s: status.update(s + "…"))
    _render_demo(result)
    if not result.verified:
        raise typer.Exit(1)


def _render_demo(result: DemoResult) -> None:
    console.print(
        f"Generated {result.events:,} events for {result.customers:,} customers; "
        f"Braze emulator at {result.emulator_url}"
    )
    table = Table(title="Two runs, one week apart")
    for col in ("", "run 1", "run 2"):
        table.add_column(col, justify="right" if col else "left")
    first, second = result.first, result.second
    s1, s2 = first.syncs[0].counts, second.syncs[0].counts
    rows: list[tuple[str, str, str]] = [
        ("as of", str(first.as_of), str(second.as_of)),
        ("events used", f"{first.load.rows_loaded:,}", f"{second.load.rows_loaded:,}"),
        ("customers scored", f"{first.write.customers_scored:,}", f"{second.write.customers_scored:,}"),
        ("customers changed", f"{first.write.customers_changed:,}", f"{second.write.customers_changed:,}"),
        (
            "high churn risk",
            f"{first.risk_counts.get('high', 0):,}",
            f"{second.risk_counts.get('high', 0):,}",
        ),
        ("customers sent", f"{s1.sent:,}", f"{s2.sent:,}"),
        ("accepted / failed", f"{s1.accepted:,} / {s1.failed:,}", f"{s2.accepted:,} / {s2.failed:,}"),
        ("data points billed", f"{s1.data_points:,}", f"{s2.data_points:,}"),
        ("requests", f"{s1.requests:,}", f"{s2.requests:,}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    ok = "[green]✓[/green]"
    bad = "[red]✗[/red]"
    console.print(
        f"{ok if result.second_sync_only_changed and s2.sent < s1.sent else bad} run 2 sent {s2.sent:,} customers "
        f"(of {result.changed_before_second_sync:,} whose attributes changed), not all {s1.sent:,} again"
    )
    console.print(
        f"{ok if result.profile_mismatches == 0 else bad} emulator profiles equal the store's acknowledged state "
        f"for all {result.profiles_checked:,} customers ({result.profile_mismatches} differ)"
    )
    console.print(
        f"Files in {result.folder}: {result.config_path.name}, the store churnsync.db, "
        f"events in {result.events_path.relative_to(result.folder)}"
    )
    console.print(f"Next: .venv/bin/churnsync runs --config {result.config_path}")


@app.command()
def emulator(
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0 = a free one).")] = 8787,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    api_key: Annotated[
        str,
        typer.Option("--api-key", envvar="CHURNSYNC_EMULATOR_KEY", help="The REST key the emulator accepts."),
    ] = "emulator-key",
    rate_limit: Annotated[int, typer.Option("--rate-limit", help="Requests allowed per window.")] = 3000,
    rate_window: Annotated[float, typer.Option("--rate-window", help="Rate-limit window in seconds.")] = 3.0,
    latency: Annotated[float, typer.Option("--latency", help="Seconds added to every answer.")] = 0.0,
    create_unknown: Annotated[
        bool, typer.Option("--create-unknown", help="Create profiles even under _update_existing_only.")
    ] = False,
    faults: Annotated[
        str,
        typer.Option(
            "--faults",
            help="Injected faults as NAME=PROBABILITY,...: 429, 5xx, html, slow, drop, object (per object).",
        ),
    ] = "",
    slow_seconds: Annotated[float, typer.Option("--slow-seconds", help="Delay of a 'slow' fault.")] = 2.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the faults' random generator.")] = 0,
) -> None:
    """Serve a local Braze /users/track emulator (inspect it at /_emulator/stats and /_emulator/users)."""
    from churnsync.sync.emulator import EmulatorConfig, parse_faults, serve_forever

    cfg = EmulatorConfig(
        api_key=api_key,
        rate_limit_requests=rate_limit,
        rate_limit_window_seconds=rate_window,
        latency_seconds=latency,
        create_unknown_users=create_unknown,
        faults=parse_faults(faults),
        slow_seconds=slow_seconds,
        fault_seed=seed,
    )

    def ready(url: str) -> None:
        err.print(f"Braze emulator on {url} (POST /users/track; GET /_emulator/stats). Ctrl-C stops.")

    try:
        serve_forever(cfg, host=host, port=port, on_ready=ready)
    except KeyboardInterrupt:
        err.print("emulator stopped")
