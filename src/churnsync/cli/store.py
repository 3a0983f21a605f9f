"""Commands that read the attribute store: runs, history."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from churnsync.cli._app import ConfigOption, JsonOption, app, console, err, load_config, print_rows, with_duration


@app.command()
def runs(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many of each.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """List recent prediction runs and sync runs."""
    from churnsync.store.store import AttributeStore

    settings = load_config(config)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        predictions = store.prediction_runs(limit=limit)
        syncs = store.sync_runs(limit=limit)
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps({"prediction_runs": predictions, "sync_runs": syncs}, default=str))
        return
    print_rows(
        "Prediction runs",
        with_duration(predictions),
        ["id", "status", "as_of", "started_at", "seconds", "model_version", "customers_scored", "customers_changed",
         "values_changed"],
    )  # fmt: skip
    print_rows(
        "Sync runs",
        with_duration(syncs),
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
    for row in rows:
        del row["customer_id"]
        acks = row.pop("acknowledged")
        row["acknowledged"] = ", ".join(f"{dest} {at:%Y-%m-%d %H:%M:%S}" for dest, at in sorted(acks.items()))
    print_rows(f"History of {customer_id}", rows)
