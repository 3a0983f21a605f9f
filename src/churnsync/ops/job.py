"""One run as the scheduler, cron or an orchestrator does it: guarded, measured, alerted, remembered.

:func:`run_job` calls :func:`churnsync.pipeline.run_pipeline` (which holds the store's run lock), then
updates the metrics, posts an alert when the run failed or too many customers failed to sync, writes the
metrics textfile when configured, and returns a :class:`JobOutcome` whose ``exit_code`` follows the CLI's
convention (0 ok, 1 failed, 2 configuration, 3 partial). Errors are caught and reported in the outcome:
a scheduler keeps going after a failed run.

Retraining: a tick says whether retraining is due (``schedule.retrain_every_days``); the flag goes to
``run_pipeline(retrain=...)``, which trains a new churn model first and lets the quality gate decide whether it
replaces the model in service. Otherwise the run rescores with the model in service.

The one-off ``churnsync run`` goes through :func:`run_job` too (``interactive=True``): a person reads its
summary tables, so the start and outcome are not logged again, and an alert is posted only when a webhook is
configured (no "no webhook" warning under the one-line error).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from churnsync.errors import ChurnsyncError
from churnsync.ops.alerts import alert_text, send_alert, webhook_configured
from churnsync.ops.logs import redact, secrets_of

if TYPE_CHECKING:
    import httpx

    from churnsync.config import Settings
    from churnsync.ops.metrics import RunMetrics
    from churnsync.pipeline import Progress, RunReport

log = logging.getLogger("churnsync.job")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def lock_owner(what: str) -> str:
    """How this process names itself as the run lock's holder."""
    return f"{what} (pid {os.getpid()} on {socket.gethostname()})"


@dataclass
class JobOutcome:
    """What one guarded run did."""

    status: str  # succeeded | partial | failed
    started: datetime
    finished: datetime
    report: RunReport | None = None
    error: ChurnsyncError | None = None
    alert: str | None = None
    alerted: bool = False

    @property
    def exit_code(self) -> int:
        """0 succeeded, 3 partial, else the error's code (1, or 2 for configuration)."""
        if self.error is not None:
            return self.error.exit_code
        return {"succeeded": 0, "partial": 3}.get(self.status, 1)


def run_job(
    settings: Settings,
    *,
    retrain: bool = False,
    as_of: date | None = None,
    sync: bool = True,
    stop: threading.Event | None = None,
    on_progress: Progress | None = None,
    on_stage: Callable[[str], None] | None = None,
    metrics: RunMetrics | None = None,
    clock: Callable[[], datetime] = _utcnow,
    now: datetime | None = None,
    api_keys: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    owner: str = "churnsync schedule",
    interactive: bool = False,
    predictions: Sequence[str] | None = None,
) -> JobOutcome:
    """Run the pipeline once and report it; never raises a :class:`ChurnsyncError` (it is in the outcome).

    ``as_of``, ``sync`` and ``predictions`` are passed to :func:`~churnsync.pipeline.run_pipeline`;
    ``interactive`` is the one-off CLI run's mode (see the module's description).
    """
    from churnsync.pipeline import run_pipeline

    secrets = secrets_of(settings)
    started = clock()
    if metrics is not None:
        metrics.run_started(started)
    if not interactive:
        log.info("run starts", extra={"retrain": retrain})
    report: RunReport | None = None
    error: ChurnsyncError | None = None
    try:
        report = run_pipeline(
            settings,
            now=now or started,
            as_of=as_of,
            sync=sync,
            api_keys=api_keys,
            transport=transport,
            on_stage=on_stage,
            on_progress=on_progress,
            stop=stop,
            lock_owner=lock_owner(owner),
            retrain=retrain,
            predictions=predictions,
        )
    except ChurnsyncError as exc:
        error = exc
    finished = clock()
    if error is not None:
        status = "failed"
    else:
        assert report is not None
        failed_sync = any(s.status == "failed" for s in report.syncs)
        status = "succeeded" if report.ok else ("failed" if failed_sync else "partial")
        if status == "succeeded" and len(report.syncs) < len(settings.destinations) and stop and stop.is_set():
            status = "partial"  # stopped after predicting: the skipped syncs run next time
    outcome = JobOutcome(status=status, started=started, finished=finished, report=report, error=error)
    if not interactive:
        _log_outcome(outcome, secrets)
    if metrics is not None:
        metrics.run_finished(status=status, started=started, finished=finished, report=report, retrained=retrain)
        if settings.observability.metrics_textfile:
            metrics.write_textfile(settings.observability.metrics_textfile)
    outcome.alert = alert_text(
        report, str(error) if error else None, threshold=settings.observability.alert_failed_share
    )
    if outcome.alert is not None and (not interactive or webhook_configured(settings)):
        outcome.alerted = send_alert(settings, outcome.alert, secrets)
    return outcome


def _log_outcome(outcome: JobOutcome, secrets: list[str]) -> None:
    seconds = round((outcome.finished - outcome.started).total_seconds(), 3)
    if outcome.error is not None:
        log.error(
            "run failed: %s",
            redact(str(outcome.error), secrets),
            extra={"status": "failed", "seconds": seconds, "error_type": type(outcome.error).__name__},
        )
        return
    report = outcome.report
    assert report is not None
    fields: dict[str, Any] = {
        "status": outcome.status,
        "seconds": seconds,
        "prediction_run_id": report.prediction_run_id,
        "as_of": report.as_of.isoformat(),
        "customers_scored": report.write.customers_scored,
        "customers_changed": report.write.customers_changed,
        "model_version": report.model_version,
        "sent": sum(s.counts.sent for s in report.syncs),
        "accepted": sum(s.counts.accepted for s in report.syncs),
        "failed": sum(s.counts.failed for s in report.syncs),
        "data_points": sum(s.counts.data_points for s in report.syncs),
    }
    level = logging.INFO if outcome.status == "succeeded" else logging.WARNING
    log.log(level, "run %s: prediction run %s", outcome.status, report.prediction_run_id, extra=fields)
