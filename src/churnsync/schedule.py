"""Cadence only: when the next run is due, whether it retrains, and a loop that waits for it.

No business logic lives here: :class:`Scheduler` calls a ``job`` with a :class:`Tick` and knows nothing of
predictions or Braze. Daily and weekly cadences are cron expressions underneath, evaluated by ``cronsim`` in
the configured IANA time zone (so "06:00 Europe/Berlin" stays 06:00 across daylight-saving changes).

The clock, the sleep and the stop event are injected, so tests drive a week of schedule in milliseconds::

    cadence = cadence_from_settings(settings.schedule)
    Scheduler(cadence, job=run_one, state_path=Path("churnsync-schedule.json")).run()

Rules:

- A run missed while the scheduler was down (the last recorded run is older than the latest due time) runs
  once at start, however many were missed (``catch_up``). A first start with no state waits for the next slot.
- Retraining is due when the last retraining is ``retrain_every`` (less two hours) or more before the tick.
- ``stop`` (set by SIGTERM) ends the wait at once; a job in flight gets the same event and finishes its batch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from churnsync.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from churnsync.config import ScheduleSettings

log = logging.getLogger("churnsync.schedule")

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
#: Longest single sleep: a wall clock that jumps (suspend, NTP) is noticed within this.
MAX_NAP_SECONDS = 60.0
#: Retraining is due this much before ``retrain_every`` has fully passed (daylight saving, run durations).
RETRAIN_SLACK = timedelta(hours=2)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Cadence:
    """A cron expression in a time zone; ``description`` says it in words."""

    expression: str
    timezone: str
    description: str

    def __post_init__(self) -> None:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(self.expression, datetime(2026, 1, 1, tzinfo=ZoneInfo(self.timezone)))
        except CronSimError as exc:
            raise ConfigError(
                f"schedule: cron expression {self.expression!r} is not valid ({exc})",
                remedy="Use five fields: minute hour day-of-month month day-of-week, e.g. '0 6 * * 1'",
            ) from None

    @property
    def zone(self) -> ZoneInfo:
        """The time zone the cadence is evaluated in."""
        return ZoneInfo(self.timezone)

    def next_after(self, moment: datetime) -> datetime:
        """The first due time strictly after ``moment`` (aware), in UTC."""
        from cronsim import CronSim

        local = moment.astimezone(ZoneInfo(self.timezone))
        return next(CronSim(self.expression, local)).astimezone(UTC)

    def last_at_or_before(self, moment: datetime) -> datetime:
        """The latest due time at or before ``moment`` (aware), in UTC."""
        from cronsim import CronSim

        # cronsim works in whole minutes and its reverse iteration excludes the start: start a minute later.
        local = moment.astimezone(ZoneInfo(self.timezone)).replace(second=0, microsecond=0) + timedelta(minutes=1)
        return next(CronSim(self.expression, local, reverse=True)).astimezone(UTC)


def cadence_from_settings(settings: ScheduleSettings) -> Cadence:
    """The :class:`Cadence` that ``[schedule]`` describes."""
    hour, minute = (int(part) for part in settings.at.split(":"))
    if settings.cadence == "daily":
        return Cadence(f"{minute} {hour} * * *", settings.timezone, f"daily at {settings.at} {settings.timezone}")
    if settings.cadence == "weekly":
        dow = (WEEKDAYS.index(settings.day) + 1) % 7  # cron: 0 = Sunday
        return Cadence(
            f"{minute} {hour} * * {dow}",
            settings.timezone,
            f"weekly on {settings.day.capitalize()} at {settings.at} {settings.timezone}",
        )
    expression = (settings.cron or "").strip()
    return Cadence(expression, settings.timezone, f"cron '{expression}' in {settings.timezone}")


def crontab_lines(cadence: Cadence, command: str) -> list[str]:
    """Lines for a crontab that run ``command`` on ``cadence`` (``CRON_TZ`` when the zone is not UTC)."""
    lines = [f"# churnsync: {cadence.description}"]
    if cadence.timezone != "UTC":
        # cronie and systemd honour CRON_TZ; Debian's Vixie cron ignores it (then use the systemd timer).
        lines.append(f"CRON_TZ={cadence.timezone}")
    lines.append(f"{cadence.expression} {command}")
    return lines


def retrain_due(last_retrain: datetime | None, due: datetime, every: timedelta) -> bool:
    """Whether a run due at ``due`` retrains, given the last retraining."""
    # The slack keeps "every 14 days" true across a daylight-saving change (a day of 23 hours).
    return last_retrain is None or due - last_retrain >= every - RETRAIN_SLACK


@dataclass(frozen=True)
class Tick:
    """One due run: the time it was due, whether it retrains, and whether it catches up a missed run."""

    due: datetime
    retrain: bool
    catch_up: bool = False


@dataclass
class ScheduleState:
    """What the scheduler remembers between starts (a small JSON file)."""

    last_run: datetime | None = None
    last_retrain: datetime | None = None

    @classmethod
    def load(cls, path: Path) -> ScheduleState:
        """Read ``path``; a missing file is a fresh state."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"schedule state {path} cannot be read ({exc})",
                remedy="Delete the file: the scheduler then waits for the next due time",
            ) from None

        def when(key: str) -> datetime | None:
            value = raw.get(key)
            return datetime.fromisoformat(value).astimezone(UTC) if value else None

        return cls(last_run=when("last_run"), last_retrain=when("last_retrain"))

    def save(self, path: Path) -> None:
        """Write atomically (a crash never leaves half a file)."""
        data = {
            "last_run": self.last_run.isoformat() if self.last_run else None,
            "last_retrain": self.last_retrain.isoformat() if self.last_retrain else None,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


class Scheduler:
    """Wait for each due time of ``cadence`` and call ``job(tick)``; see the module docstring for the rules.

    ``clock`` returns aware UTC now; ``sleep(seconds)`` waits (default: ``stop.wait``, so a stop wakes it).
    ``on_wait(next_due)`` is told each time the scheduler starts waiting (for ``status`` and metrics).
    ``job`` returns False (or raises) when its run failed: retraining then stays due. A job that raises is
    logged and the schedule goes on: the job itself records and alerts.
    """

    def __init__(
        self,
        cadence: Cadence,
        *,
        job: Callable[[Tick], object],
        state_path: Path,
        retrain_every: timedelta = timedelta(days=14),
        catch_up: bool = True,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], object] | None = None,
        stop: threading.Event | None = None,
        on_wait: Callable[[datetime], None] | None = None,
    ) -> None:
        self.cadence = cadence
        self.job = job
        self.state_path = state_path
        self.retrain_every = retrain_every
        self.catch_up = catch_up
        self.clock = clock
        self.stop = stop or threading.Event()
        self.sleep = sleep or self.stop.wait
        self.on_wait = on_wait or (lambda _due: None)
        self.state = ScheduleState.load(state_path)

    def next_due(self) -> datetime:
        """The next due time after now."""
        return self.cadence.next_after(self.clock())

    def missed(self) -> datetime | None:
        """The latest due time that passed without a run while the scheduler was down, if any."""
        last = self.state.last_run
        if last is None or not self.catch_up:
            return None
        due = self.cadence.last_at_or_before(self.clock())
        return due if due > last else None

    def run(self, *, max_runs: int | None = None) -> int:
        """Run until ``stop`` is set (or ``max_runs`` jobs ran); return how many jobs ran."""
        runs = 0
        missed = self.missed()
        if missed is not None:
            log.info("catching up the run due at %s, missed while the scheduler was down", missed.isoformat())
            self._fire(Tick(due=missed, retrain=self._retrain_due(missed), catch_up=True))
            runs += 1
        while not self.stop.is_set() and (max_runs is None or runs < max_runs):
            due = self.next_due()
            self.on_wait(due)
            log.info("next run due at %s (%s)", due.isoformat(), self.cadence.description)
            if not self._wait_until(due):
                break
            self._fire(Tick(due=due, retrain=self._retrain_due(due)))
            runs += 1
        return runs

    def _retrain_due(self, due: datetime) -> bool:
        return retrain_due(self.state.last_retrain, due, self.retrain_every)

    def _wait_until(self, due: datetime) -> bool:
        """Sleep until ``due``; False when stopped first."""
        while not self.stop.is_set():
            remaining = (due - self.clock()).total_seconds()
            if remaining <= 0:
                return True
            self.sleep(min(remaining, MAX_NAP_SECONDS))
        return False

    def _fire(self, tick: Tick) -> None:
        log.info("run due at %s starts (retrain: %s)", tick.due.isoformat(), tick.retrain)
        try:
            ok = self.job(tick) is not False
        except Exception:
            log.exception("run due at %s failed; the schedule goes on", tick.due.isoformat())
            ok = False
        # A failed run is still a run: it is not repeated as "missed" at the next start. Its retraining is.
        self.state.last_run = tick.due
        if tick.retrain and ok:
            self.state.last_retrain = tick.due
        self.state.save(self.state_path)
