"""Run the dashboard on a background thread (tests, notebooks) and stop it cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from churnsync.errors import ChurnsyncError

#: How long to wait for the server to accept connections.
START_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class RunningDashboard:
    """A dashboard serving on ``url`` until its context ends."""

    url: str
    host: str
    port: int


@contextmanager
def serve_in_thread(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[RunningDashboard]:
    """Serve ``app`` with uvicorn on a thread; ``port=0`` takes a free port (the chosen one is in ``url``)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="churnsync-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ChurnsyncError(f"the dashboard did not start on {host}:{port}", remedy="Check that the port is free")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    shown = f"[{host}]" if ":" in host else host
    try:
        yield RunningDashboard(url=f"http://{shown}:{bound[1]}", host=host, port=int(bound[1]))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
