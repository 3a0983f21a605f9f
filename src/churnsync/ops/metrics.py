"""Prometheus metrics of churnsync runs: an HTTP endpoint while scheduling, a textfile after a one-off run.

Metric names (all gauges except ``churnsync_runs_total``)::

    churnsync_runs_total{status}                       runs finished, by status (succeeded, partial, failed)
    churnsync_last_run_start_timestamp_seconds         when the last run started
    churnsync_last_run_duration_seconds                how long it took
    churnsync_last_run_success                         1 when it succeeded, else 0
    churnsync_last_success_timestamp_seconds           when a run last succeeded (alert on its age)
    churnsync_last_retrain_timestamp_seconds           when a run last retrained
    churnsync_customers_scored / _changed              of the last run
    churnsync_sync_customers{destination,outcome}      sent, accepted, failed in the last run
    churnsync_sync_data_points{destination}            data points billed by Braze in the last run
    churnsync_next_run_timestamp_seconds               when the scheduler runs next
    churnsync_run_in_progress                          1 while a run holds the lock
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile

if TYPE_CHECKING:
    from datetime import datetime

    from churnsync.pipeline import RunReport


class RunMetrics:
    """The metrics above, in a registry of their own (never the process-global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Counter("churnsync_runs", "Runs finished, by status.", ["status"], registry=r)
        self.last_start = Gauge("churnsync_last_run_start_timestamp_seconds", "Start of the last run.", registry=r)
        self.last_duration = Gauge("churnsync_last_run_duration_seconds", "Duration of the last run.", registry=r)
        self.last_success = Gauge("churnsync_last_run_success", "1 when the last run succeeded.", registry=r)
        self.last_ok_at = Gauge("churnsync_last_success_timestamp_seconds", "Last successful run.", registry=r)
        self.last_retrain = Gauge("churnsync_last_retrain_timestamp_seconds", "Last retraining run.", registry=r)
        self.scored = Gauge("churnsync_customers_scored", "Customers scored by the last run.", registry=r)
        self.changed = Gauge("churnsync_customers_changed", "Customers changed by the last run.", registry=r)
        self.sync = Gauge(
            "churnsync_sync_customers", "Customers synced by the last run.", ["destination", "outcome"], registry=r
        )
        self.data_points = Gauge(
            "churnsync_sync_data_points", "Data points billed in the last run.", ["destination"], registry=r
        )
        self.next_run = Gauge("churnsync_next_run_timestamp_seconds", "When the scheduler runs next.", registry=r)
        self.in_progress = Gauge("churnsync_run_in_progress", "1 while a run is in progress.", registry=r)
        self._server: Any = None

    def run_started(self, at: datetime) -> None:
        """A run started at ``at``."""
        self.last_start.set(at.timestamp())
        self.in_progress.set(1)

    def run_finished(
        self, *, status: str, started: datetime, finished: datetime, report: RunReport | None, retrained: bool
    ) -> None:
        """Record a finished run: its status, duration and (when it got that far) its counts."""
        self.in_progress.set(0)
        self.runs.labels(status=status).inc()
        self.last_duration.set((finished - started).total_seconds())
        self.last_success.set(1 if status == "succeeded" else 0)
        if status == "succeeded":
            self.last_ok_at.set(finished.timestamp())
        if retrained:
            self.last_retrain.set(started.timestamp())
        if report is None:
            return
        self.scored.set(report.write.customers_scored)
        self.changed.set(report.write.customers_changed)
        for sync in report.syncs:
            c = sync.counts
            for outcome, value in (("sent", c.sent), ("accepted", c.accepted), ("failed", c.failed)):
                self.sync.labels(destination=sync.destination, outcome=outcome).set(value)
            self.data_points.labels(destination=sync.destination).set(c.data_points)

    def next_run_at(self, at: datetime) -> None:
        """The scheduler's next due time."""
        self.next_run.set(at.timestamp())

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread (port 0: a free one); return the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def shutdown(self) -> None:
        """Stop the HTTP endpoint, if serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def write_textfile(self, path: str) -> None:
        """Write the metrics atomically for node_exporter's textfile collector."""
        write_to_textfile(path, self.registry)
