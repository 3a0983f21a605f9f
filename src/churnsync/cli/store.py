"""Commands on the attribute store: history, export, and the ``churnsync store ...`` group (unlock)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import typer

from churnsync.cli._app import ConfigOption, JsonOption, app, console, err, load_config, print_rows

store_app = typer.Typer(
    help="Maintain the attribute store: clear a stale run lock, compact old history.", no_args_is_help=True
)
app.add_typer(store_app, name="store")


@app.command()
def history(
    customer_id: Annotated[str, typer.Argument(help="The customer's id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show each attribute of one customer over time: value, valid from/to, run, and when each destination got it."""
    from dataclasses import asdict

    from churnsync.store.store import AttributeStore

    settings = load_config(config)
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
    table = [
        {
            "attribute": row["attribute"],
            "value": row["new_value"],
            "previous": row["old_value"],
            "valid_from": row["changed_at"],
            "valid_to": row["valid_to"] or "(current)",
            "run": row["prediction_run_id"],
            "model": row["model_version"],
            "reached": ", ".join(f"{dest} {at:%Y-%m-%d %H:%M:%S}" for dest, at in sorted(row["acknowledged"].items()))
            or "(not sent)",
        }
        for row in sorted(rows, key=lambda r: (r["attribute"], r["changed_at"]))
    ]
    print_rows(f"History of {customer_id}", table)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="The file to write (overwritten).")],
    fmt: Annotated[
        Literal["csv", "parquet"], typer.Option("--format", help="csv or parquet.", case_sensitive=False)
    ] = "csv",
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of", formats=["%Y-%m-%d"], help="The values as they were at the end of this day (UTC), from history."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write every customer's attributes (one row each), current or as of a date, to CSV or Parquet."""
    from churnsync.store.store import AttributeStore

    settings = load_config(config)
    instant = None if as_of is None else as_of.replace(tzinfo=UTC) + timedelta(days=1) - timedelta(microseconds=1)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        written = store.export(out, format=fmt.lower(), as_of=instant)
    finally:
        store.close()
    when = "current values" if as_of is None else f"values as of {as_of:%Y-%m-%d}"
    console.print(f"Wrote {written} customers ({when}) to {out}.")


@store_app.command("compact")
def compact(
    config: ConfigOption = None,
    older_than_days: Annotated[
        int | None,
        typer.Option(
            "--older-than-days", min=1, help="Compact history older than this (default: store.history_retention_days)."
        ),
    ] = None,
) -> None:
    """Compact history older than N days, keeping current values and the last value before the boundary."""
    from churnsync.store.store import AttributeStore

    settings = load_config(config)
    days = older_than_days or settings.store.history_retention_days
    if days is None:
        err.print("No retention set: pass --older-than-days N or set store.history_retention_days.")
        raise typer.Exit(2)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        summary = store.compact_history(days)
    finally:
        store.close()
    console.print(
        f"Compacted history before {summary.boundary:%Y-%m-%d %H:%M}: removed {summary.history_deleted} changes and "
        f"{summary.acks_deleted} acknowledgements."
    )


@store_app.command("unlock")
def unlock(
    config: ConfigOption = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Clear the lock even if its holder seems alive (PostgreSQL: ends its session)."),
    ] = False,
) -> None:
    """Clear a stale run lock left by a run whose process is gone."""
    from churnsync.store.store import AttributeStore

    settings = load_config(config)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        holder = store.lock_holder()
        cleared = store.clear_lock(force=force)
    finally:
        store.close()
    if holder is None and not cleared:
        console.print("The store is not locked.")
        return
    who = "" if holder is None else f" held by run '{holder['owner']}' (host {holder['host']}, pid {holder['pid']})"
    if cleared:
        console.print(f"Cleared the run lock{who}.")
        return
    err.print(
        f"The run lock{who} is still held by a live process; wait for it, or clear it anyway with "
        "`churnsync store unlock --force`."
    )
    raise typer.Exit(1)
