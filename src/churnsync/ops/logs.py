"""Log lines on stderr: plain for people, one JSON object per line for log shippers; secrets never appear."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from churnsync.config import Settings

REDACTED = "***"
#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def secrets_of(settings: Settings) -> list[str]:
    """Values that must never be logged or alerted: API keys, the webhook URL, the store URL from the environment."""
    names = {d.api_key_env for d in settings.destinations.values()}
    names |= {settings.observability.webhook_url_env, settings.store.url_env}
    values = [os.environ.get(name, "").strip() for name in sorted(names)]
    # Short values would redact ordinary words; real keys and URLs are long.
    return [v for v in values if len(v) >= 8]


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Replaces known secrets in the formatted message (a safety net: churnsync never logs keys)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = redact(record.getMessage(), self.secrets)
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, any ``extra=`` fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(
    *, json_lines: bool = False, quiet: bool = False, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """Send churnsync's log records to ``stream`` (stderr); ``quiet`` keeps warnings and errors only.

    Calling it again replaces the handler (the CLI calls it once globally, then again with the config's secrets).
    """
    logger = logging.getLogger("churnsync")
    for old in [h for h in logger.handlers if getattr(h, "_churnsync", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._churnsync = True  # type: ignore[attr-defined]
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RedactingFilter(secrets))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    return handler
