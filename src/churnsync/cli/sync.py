"""``churnsync sync``: push changed attributes without predicting; dry runs, failures, quarantine, drift audit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from churnsync.cli._app import ConfigOption, JsonOption, app, console, err, load_config, print_rows
from churnsync.errors import ConfigError

sync_app = typer.Typer(
    help="Sync changed attributes to the configured destinations (no prediction), and manage the sync's ledger.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(sync_app, name="sync")

DestinationOption = Annotated[
    str | None,
    typer.Option("--destination", "-d", help="Only this destination (default: every configured one)."),
]


def _names(settings: Any, destination: str | None) -> list[str]:
    names = list(settings.destinations)
    if destination is not None:
        if destination not in settings.destinations:
            raise ConfigError(
                f"no destination named '{destination}' (configured: {', '.join(names) or 'none'})",
                remedy="Pass one of the [destinations.<name>] names of the configuration",
            )
        return [destination]
    if not names:
        raise ConfigError("no destination is configured", remedy="Add a [destinations.<name>] table")
    return names


@sync_app.callback()
def sync(
    ctx: typer.Context,
    config: ConfigOption = None,
    destination: DestinationOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write the exact payloads to --out and a summary; send nothing.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Dry run: NDJSON file of request bodies (one destination: this path; several: PATH.<name>)."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Push what changed since each destination's last acknowledgement (no prediction); or a dry run."""
    if ctx.invoked_subcommand is not None:
        return
    from churnsync.pipeline import sync_destination, utcnow
    from churnsync.store.store import AttributeStore
    from churnsync.sync.runner import summary_json, write_dry_run

    settings = load_config(config)
    names = _names(settings, destination)
    if dry_run and out is None:
        raise typer.BadParameter("--dry-run needs --out FILE", param_hint="--out")
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        if dry_run:
            assert out is not None
            for name in names:
                path = out if len(names) == 1 else out.with_name(f"{out.name}.{name}")
                summary = write_dry_run(store, name, settings.destinations[name], path, now=utcnow())
                console.print(f"dry run of {name} → {path} (nothing sent)", markup=False)
                console.print(summary_json(summary), markup=False, highlight=False)
            return
        keys = {name: settings.destinations[name].api_key(name) for name in names}
        reports = []
        with store.run_lock("churnsync sync"):
            for name in names:
                reports.append(sync_destination(settings, store, name, prediction_run_id=None, api_key=keys[name]))
    finally:
        store.close()
    rows = []
    for report in reports:
        c = report.counts
        rows.append(
            {"destination": report.destination, "sync_run": report.sync_run_id, "status": report.status,
             "sent": c.sent, "accepted": c.accepted, "failed": c.failed, "data_points": c.data_points,
             "requests": c.requests, **report.details}
        )  # fmt: skip
    if as_json:
        console.print_json(json.dumps(rows, default=str))
    else:
        print_rows("Sync", rows)
    if any(r.status != "succeeded" for r in reports):
        raise typer.Exit(1)


@sync_app.command()
def failures(
    config: ConfigOption = None,
    destination: DestinationOption = None,
    as_json: JsonOption = False,
) -> None:
    """List customers Braze keeps refusing: failure streaks, reasons, and who is quarantined."""
    from churnsync.store import ledger
    from churnsync.store.store import AttributeStore

    settings = load_config(config)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        rows = ledger.failures(store, destination)
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    for row in rows:
        row["quarantined"] = "yes" if row.pop("quarantined_at") else ""
    print_rows("Sync failures", rows)


@sync_app.command()
def release(
    customer_id: Annotated[str | None, typer.Argument(help="The customer to release.")] = None,
    release_all: Annotated[bool, typer.Option("--all", help="Release every failing or quarantined customer.")] = False,
    config: ConfigOption = None,
    destination: DestinationOption = None,
) -> None:
    """Release a quarantined customer (or --all): the next sync tries it again."""
    from churnsync.store import ledger
    from churnsync.store.store import AttributeStore

    if (customer_id is None) == (not release_all):
        raise typer.BadParameter("pass a CUSTOMER_ID or --all (not both)")
    settings = load_config(config)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        ids = None if release_all else [customer_id or ""]
        released = ledger.release(store, destination=destination, customer_ids=ids)
    finally:
        store.close()
    err.print(f"released {released} customer record(s)")


@sync_app.command()
def audit(
    sample: Annotated[int, typer.Option("--sample", min=1, help="How many acknowledged customers to read back.")] = 500,
    config: ConfigOption = None,
    destination: DestinationOption = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample.")] = 0,
    per_minute: Annotated[
        int, typer.Option("--per-minute", min=1, help="Export requests per minute (Braze allows 250).")
    ] = 250,
    as_json: JsonOption = False,
) -> None:
    """Read sampled profiles back via /users/export/ids and report where Braze differs from acknowledged state."""
    from dataclasses import asdict

    from churnsync.store.store import AttributeStore
    from churnsync.sync.audit import audit_destination

    settings = load_config(config)
    names = _names(settings, destination)
    store = AttributeStore.open(settings.store.resolved_url())
    try:
        reports = [
            audit_destination(
                store,
                name,
                settings.destinations[name],
                api_key=settings.destinations[name].api_key(name),
                sample=sample,
                seed=seed,
                requests_per_minute=per_minute,
            )
            for name in names
        ]
    finally:
        store.close()
    if as_json:
        console.print_json(
            json.dumps([{**asdict(r), "matching": r.matching} for r in reports], default=str), indent=None
        )
    else:
        for r in reports:
            console.print(
                f"{r.destination}: {r.sampled} sampled, {r.matching} match, {len(r.missing_profiles)} missing in "
                f"Braze, {len(r.differences)} attribute differences ({r.requests} export requests)",
                markup=False,
            )
            print_rows(f"Differences in {r.destination}", [asdict(d) for d in r.differences[:50]])
    if any(r.differences or r.missing_profiles for r in reports):
        raise typer.Exit(1)
