"""Operating churnsync unattended: one guarded run, run history, logs, Prometheus metrics and alerts.

- :mod:`churnsync.ops.job`: one run as the scheduler (or cron) does it: the pipeline under the store's run
  lock, then metrics, an alert when it failed, and the schedule state.
- :mod:`churnsync.ops.history`: prediction and sync runs combined per run; health for ``churnsync status``.
- :mod:`churnsync.ops.logs`: plain or JSON log lines on stderr, with every known secret redacted.
- :mod:`churnsync.ops.metrics`: Prometheus gauges, served over HTTP while scheduling or written as a textfile.
- :mod:`churnsync.ops.alerts`: a Slack-compatible webhook on a failed run or too many failed customers.
"""
