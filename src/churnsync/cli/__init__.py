"""The ``churnsync`` command line: a thin layer that renders library results and turns errors into exit codes.

One module per noun registers its commands on the shared Typer ``app`` (``_app.py``). Heavy imports (DuckDB, numpy,
the store, the sync) happen inside commands, so ``--help`` answers at once.
"""

from __future__ import annotations

from churnsync.cli import models as _models  # noqa: F401  (train, evaluate, `churnsync models ...`)
from churnsync.cli import ops as _ops  # noqa: F401  (schedule, status, runs)
from churnsync.cli import run, store  # noqa: F401  (registers the commands)
from churnsync.cli import sync as _sync  # noqa: F401  (registers `churnsync sync ...`)
from churnsync.cli import web as _web  # noqa: F401  (registers `churnsync serve`)
from churnsync.cli._app import app, main

__all__ = ["app", "main"]
