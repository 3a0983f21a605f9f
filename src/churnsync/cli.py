"""The ``churnsync`` command line: a thin layer that renders library results and turns errors into exit codes.

Heavy imports (DuckDB, numpy, the store, the sync) happen inside commands, so ``--help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from churnsync.config import DEFAULT_CONFIG_NAME, STARTER_CONFIG, Settings, find_config, load_settings
from churnsync.errors import ChurnsyncError, ConfigError

if TYPE_CHECKING:
    from churnsync.demo import DemoResult
    from churnsync.pipeline import RunReport

app = typer.Typer(
    name="churnsync",
    help="Churn and value predictions for Braze: read behaviour, predict, keep history, sync only what changed.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (cron logs, CI) is not cut at 80 columns.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="CHURNSYNC_CONFIG",
        help=f"Configuration file (default: ./{DEFAULT_CONFIG_NAME} if present, else built-in defaults).",
        show_default=False,
    ),
]
AsOfOption = Annotated[
    datetime | None,
    typer.Option("--as-of", formats=["%Y-%m-%d"], help="Score as of this date (UTC): later events are ignored."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(config: Path | None) -> Settings:
    return load_settings(find_config(config))


def _parse_date(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


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
    table.add_row("model", report.model_version)
    tiers = ", ".join(f"{k} {v:,}" for k, v in sorted(report.risk_counts.items()))
    table.add_row("churn risk", tiers)
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
) -> None:
    """Read behaviour, predict, store, and sync the changes to every destination."""
    from churnsync.pipeline import run_pipeline

    settings = _settings(config)
    with console.status("running…"):
        report = run_pipeline(settings, as_of=_parse_date(as_of), sync=not no_sync)
    _render_run(report)
    if not report.ok:
        raise typer.Exit(3)


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
    console.print(f"Files: {result.folder}  (config {result.config_path.name}, store {result.store_url})")
    console.print(f"Next: churnsync --help; churnsync runs --config {result.config_path}")


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
) -> None:
    """Serve a local Braze /users/track emulator (inspect it at /_emulator/stats and /_emulator/users)."""
    from churnsync.sync.emulator import EmulatorConfig, serve_forever

    cfg = EmulatorConfig(
        api_key=api_key,
        rate_limit_requests=rate_limit,
        rate_limit_window_seconds=rate_window,
        latency_seconds=latency,
        create_unknown_users=create_unknown,
    )

    def ready(url: str) -> None:
        err.print(f"Braze emulator on {url} (POST /users/track; GET /_emulator/stats). Ctrl-C stops.")

    try:
        serve_forever(cfg, host=host, port=port, on_ready=ready)
    except KeyboardInterrupt:
        err.print("emulator stopped")


@app.command()
def runs(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many of each.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List recent prediction runs and sync runs."""
    from churnsync.store.store import AttributeStore

    settings = _settings(config)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        predictions = store.prediction_runs(limit=limit)
        syncs = store.sync_runs(limit=limit)
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps({"prediction_runs": predictions, "sync_runs": syncs}, default=str))
        return
    _print_rows(
        "Prediction runs",
        _with_duration(predictions),
        ["id", "status", "as_of", "started_at", "seconds", "model_version", "customers_scored", "customers_changed",
         "values_changed"],
    )  # fmt: skip
    _print_rows(
        "Sync runs",
        _with_duration(syncs),
        ["id", "destination", "prediction_run_id", "status", "started_at", "seconds", "selected", "sent", "accepted",
         "failed", "data_points", "requests", "retries", "error"],
    )  # fmt: skip


@app.command()
def history(
    customer_id: Annotated[str, typer.Argument(help="The customer's id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show every change of one customer's attributes and when each destination acknowledged it."""
    from dataclasses import asdict

    from churnsync.store.store import AttributeStore

    settings = _settings(config)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        entries = store.history(customer_id)
    finally:
        store.close()
    rows = [asdict(e) for e in entries]
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    if not rows:
        err.print(f"No history for customer {customer_id!r}.")
        raise typer.Exit(1)
    for row in rows:
        del row["customer_id"]
        acks = row.pop("acknowledged")
        row["acknowledged"] = ", ".join(f"{dest} {at:%Y-%m-%d %H:%M:%S}" for dest, at in sorted(acks.items()))
    _print_rows(f"History of {customer_id}", rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value)


def _print_rows(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    if not rows:
        console.print(f"{title}: none yet.")
        return
    table = Table(title=title)
    columns = columns or [k for k in rows[0] if not isinstance(rows[0][k], dict | list)]
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _with_duration(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        start, end = row.get("started_at"), row.get("finished_at")
        row["seconds"] = f"{(end - start).total_seconds():.1f}" if start and end else ""
        if isinstance(row.get("as_of"), datetime):
            # Stored as the cut (the end of the as-of day); show the day users asked for.
            row["as_of"] = (row["as_of"] - timedelta(microseconds=1)).date()
    return rows


def main() -> None:
    """Entry point: run the app; a ChurnsyncError becomes one line on stderr and its exit code."""
    try:
        app()  # standalone: usage errors and typer.Exit end the process with their own codes
    except ChurnsyncError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("CHURNSYNC_DEBUG"):
            raise
        err.print(
            f"internal error: {type(exc).__name__}: {exc}. This is a bug in churnsync: rerun with "
            "CHURNSYNC_DEBUG=1 for the traceback and report it",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
