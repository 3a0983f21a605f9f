"""Alerts: a Slack-compatible webhook (``{"text": ...}``) on a failed run or too many failed customers.

The webhook URL comes from the environment variable named by ``observability.webhook_url_env`` (it is a
secret: whoever has it can post). Bodies never carry an API key: the text is built from counts and error
messages, and every known secret is redacted from it all the same. Posting failures are logged, never raised:
an unreachable chat must not fail the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from churnsync.ops.logs import redact

if TYPE_CHECKING:
    from churnsync.config import Settings
    from churnsync.pipeline import RunReport

log = logging.getLogger("churnsync.alerts")

WEBHOOK_TIMEOUT_SECONDS = 10.0


def alert_text(
    report: RunReport | None, error: str | None, *, threshold: float, where: str = "churnsync"
) -> str | None:
    """The alert for a run, or None when it needs none: a failure, or a failed share above ``threshold``."""
    if error is not None:
        return f":rotating_light: {where}: run failed: {error}"
    if report is None:
        return None
    problems: list[str] = []
    for sync in report.syncs:
        c = sync.counts
        share = c.failed / c.sent if c.sent else 0.0
        if sync.status == "failed":
            problems.append(f"sync to {sync.destination} failed ({sync.error or f'{c.failed:,} customers failed'})")
        elif share > threshold:
            problems.append(
                f"{c.failed:,} of {c.sent:,} customers ({share:.1%}) failed to sync to {sync.destination} "
                f"(alert threshold {threshold:.1%})"
            )
    if not problems:
        return None
    return (
        f":warning: {where}: prediction run {report.prediction_run_id} as of {report.as_of}: "
        + "; ".join(problems)
        + ". See `churnsync runs` and `churnsync history`."
    )


def post_alert(url: str, text: str, *, secrets: Iterable[str] = (), timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> bool:
    """POST ``{"text": text}`` (secrets redacted) to ``url``; True when the hook answered 2xx."""
    import httpx

    body: dict[str, Any] = {"text": redact(text, secrets), "username": "churnsync"}
    try:
        response = httpx.post(url, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        log.warning("alert webhook unreachable (%s); the alert was: %s", type(exc).__name__, body["text"])
        return False
    if response.is_success:
        return True
    log.warning("alert webhook answered HTTP %s; the alert was: %s", response.status_code, body["text"])
    return False


def webhook_configured(settings: Settings) -> bool:
    """Whether the variable named by ``observability.webhook_url_env`` holds a webhook URL."""
    return bool(os.environ.get(settings.observability.webhook_url_env, "").strip())


def send_alert(settings: Settings, text: str, secrets: Iterable[str]) -> bool:
    """Post ``text`` to the configured webhook; False (and a log line) when none is configured."""
    url = os.environ.get(settings.observability.webhook_url_env, "").strip()
    if not url:
        log.warning("alert (no webhook: set %s): %s", settings.observability.webhook_url_env, redact(text, secrets))
        return False
    return post_alert(url, text, secrets=secrets)
