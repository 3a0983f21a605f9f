"""The Typer app, shared options, rendering helpers and the entry point that maps errors to exit codes."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from churnsync.config import DEFAULT_CONFIG_NAME, Settings, find_config, load_settings
from churnsync.errors import ChurnsyncError

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
PredictionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--prediction",
        help="Only this prediction (a [predictions.<name>] table, or 'default'); repeatable. Default: all.",
        show_default=False,
    ),
]


@dataclass
class GlobalOptions:
    """What the global options asked for, read by commands that log or draw progress."""

    quiet: bool = False
    log_json: bool = False


options = GlobalOptions()


@app.callback()
def global_options(
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", envvar="CHURNSYNC_QUIET", help="Print only warnings and errors (for cron)."),
    ] = False,
    log_json: Annotated[
        bool,
        typer.Option("--log-json", envvar="CHURNSYNC_LOG_JSON", help="Log one JSON object per line on stderr."),
    ] = False,
    no_color: Annotated[
        # NO_COLOR (any value) is honoured by rich itself; no envvar here, since click would reject "yes, please".
        bool, typer.Option("--no-color", help="No colours (off anyway when not a terminal, or with NO_COLOR set).")
    ] = False,
) -> None:
    """Options for every command; they go before the command: `churnsync --quiet run`."""
    from churnsync.ops.logs import configure_logging

    console.quiet = quiet
    if no_color:
        console.no_color = err.no_color = True
    options.quiet, options.log_json = quiet, log_json
    configure_logging(json_lines=log_json, quiet=quiet)


def load_config(config: Path | None) -> Settings:
    return load_settings(find_config(config))


def parse_date(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    return str(value)


def print_rows(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    if not rows:
        console.print(f"{title}: none yet.")
        return
    table = Table(title=title)
    columns = columns or [k for k in rows[0] if not isinstance(rows[0][k], dict | list)]
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(cell(row.get(c)) for c in columns))
    console.print(table)


def with_duration(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
