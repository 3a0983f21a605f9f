"""``churnsync serve``: the dashboard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from churnsync.cli._app import ConfigOption, app, console, load_config


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Anything but loopback requires the token in CHURNSYNC_DASHBOARD_TOKEN.",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8765,
    report: Annotated[
        Path,
        typer.Option("--report", help="Folder of `churnsync evaluate --out DIR` (report.json, report.html)."),
    ] = Path("report"),
) -> None:
    """Start the dashboard (read-only): runs, model, predictions, customers, syncs and a segment builder."""
    import uvicorn

    from churnsync.web.app import create_app
    from churnsync.web.auth import TOKEN_ENV, allowed_hosts, required_token

    token = required_token(host, os.environ.get(TOKEN_ENV))
    settings = load_config(config)
    web = create_app(
        settings.store.resolved_url(),
        settings=settings,
        token=token,
        report_dir=report,
        allowed_hosts=allowed_hosts(host),
    )
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"churnsync dashboard on http://{shown}:{port}/ "
        + ("(token required)" if token else "(this machine only)")
        + ". Ctrl+C stops it."
    )
    uvicorn.run(web, host=host, port=port, log_level="warning", server_header=False)
