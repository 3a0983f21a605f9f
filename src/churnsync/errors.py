"""The one exception tree of churnsync.

Every error a user can meet is a :class:`ChurnsyncError`. Each carries the context it happened in and
ends its message with a remedy, so the CLI can print ``str(error)`` as one actionable line.

::

    ChurnsyncError                       exit code 1 unless said otherwise
    ├── ConfigError                      exit 2: churnsync.toml or the environment is wrong
    ├── DataError                        behaviour data cannot be used
    │   ├── MissingColumnError           a mapped column is absent from a file
    │   └── TooManyRejectsError          rejected rows exceed data.max_reject_share
    ├── ModelError                       a model cannot be fitted or used
    │   ├── NotFittedError               predicting before fitting
    │   └── ConvergenceError             maximum likelihood did not converge
    ├── StoreError                       the attribute store cannot be opened, migrated or written
    │   └── StoreLockedError             another run holds the store's run lock
    └── SyncError                        pushing to a destination failed
        ├── TransientSyncError           worth retrying: 429, 5xx, timeouts, dropped connections
        │   └── RateLimitedError         429; carries the seconds to wait
        └── TerminalSyncError            retrying cannot help
            ├── DestinationAuthError     401 / 403 / 404: key, permission or instance URL
            └── BadResponseError         a reply that breaks the documented contract

``transient`` tells the retry logic whether trying again can help.
"""

from __future__ import annotations


class ChurnsyncError(Exception):
    """Base of every churnsync error: ``str(e)`` is a complete one-line message with a remedy."""

    exit_code: int = 1
    transient: bool = False

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        self.message = message
        self.remedy = remedy
        super().__init__(message if remedy is None else f"{message}. {remedy}")


class ConfigError(ChurnsyncError):
    """The configuration file, a setting or a required environment variable is wrong."""

    exit_code = 2


class DataError(ChurnsyncError):
    """Behaviour data cannot be read or used."""


class MissingColumnError(DataError):
    """A column named in ``[data.columns]`` is missing from an input file."""

    def __init__(self, column: str, source: str, *, available: list[str] | None = None) -> None:
        self.column = column
        self.source = source
        have = f" (it has: {', '.join(available)})" if available else ""
        super().__init__(
            f"{source}: column '{column}' is missing{have}",
            remedy="Fix [data.columns] in churnsync.toml to name the file's column",
        )


class TooManyRejectsError(DataError):
    """More rows were rejected than ``data.max_reject_share`` allows."""

    def __init__(self, rejected: int, total: int, limit: float, rejects_path: str) -> None:
        self.rejected = rejected
        self.total = total
        self.limit = limit
        self.rejects_path = rejects_path
        share = rejected / total if total else 1.0
        super().__init__(
            f"{rejected} of {total} event rows rejected ({share:.2%}, limit {limit:.2%}); reasons in {rejects_path}",
            remedy="Fix the source data or raise data.max_reject_share",
        )


class ModelError(ChurnsyncError):
    """A model cannot be fitted or used."""


class NotFittedError(ModelError):
    """A model was asked to predict before it was fitted."""


class ConvergenceError(ModelError):
    """Maximum-likelihood fitting did not converge."""


class StoreError(ChurnsyncError):
    """The attribute store cannot be opened, migrated or written."""


class StoreLockedError(StoreError):
    """Another run holds the store's run lock; ``holder`` describes it (owner, host, pid, acquired_at)."""

    def __init__(self, store: str, holder: dict[str, object] | None) -> None:
        self.holder = holder
        if holder is None:
            who = "another run (its description is not written yet)"
        else:
            since = holder.get("acquired_at")
            since_text = since.isoformat() if hasattr(since, "isoformat") else str(since)
            where = f"host {holder.get('host')}, pid {holder.get('pid')}, since {since_text}"
            who = f"run '{holder.get('owner')}' ({where})"
        super().__init__(
            f"store {store} is locked by {who}",
            remedy="Wait for that run to finish, or run `churnsync store unlock` if its process is gone",
        )


class SyncError(ChurnsyncError):
    """Pushing attributes to a destination failed."""

    def __init__(
        self,
        message: str,
        *,
        remedy: str | None = None,
        status: int | None = None,
        destination: str | None = None,
    ) -> None:
        self.status = status
        self.destination = destination
        super().__init__(message, remedy=remedy)


class TransientSyncError(SyncError):
    """A failure that may pass: retry with backoff."""

    transient = True


class RateLimitedError(TransientSyncError):
    """The destination answered 429; ``wait_seconds`` says how long to pause every worker."""

    def __init__(self, message: str, *, wait_seconds: float, destination: str | None = None) -> None:
        self.wait_seconds = wait_seconds
        super().__init__(message, status=429, destination=destination)


class TerminalSyncError(SyncError):
    """A failure that retrying cannot mend."""


class DestinationAuthError(TerminalSyncError):
    """401, 403 or 404 from Braze: the key, its permission or the instance URL is wrong."""

    exit_code = 2


class BadResponseError(TerminalSyncError):
    """The destination replied outside its documented contract."""
