"""The cadence and the scheduler loop, driven by a fake clock through a day, a week, a missed run and a stop."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from churnsync.config import ScheduleSettings, settings_from_mapping
from churnsync.errors import ConfigError
from churnsync.schedule import (
    MAX_NAP_SECONDS,
    Cadence,
    Scheduler,
    ScheduleState,
    Tick,
    cadence_from_settings,
    crontab_lines,
)


@dataclass
class FakeClock:
    """A clock that moves only when the scheduler sleeps."""

    now: datetime
    naps: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= MAX_NAP_SECONDS
        self.naps.append(seconds)
        self.now += timedelta(seconds=seconds)


@dataclass
class Recorder:
    """A job that records each tick and the clock when it ran; it takes ``minutes`` of fake time."""

    clock: FakeClock
    minutes: float = 3.0
    ticks: list[tuple[Tick, datetime]] = field(default_factory=list)

    def __call__(self, tick: Tick) -> bool:
        self.ticks.append((tick, self.clock()))
        self.clock.now += timedelta(minutes=self.minutes)
        return True


def scheduler(cadence: Cadence, clock: FakeClock, job: Recorder, state: Path, **kwargs: object) -> Scheduler:
    return Scheduler(cadence, job=job, state_path=state, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


def daily(at: str = "06:00", tz: str = "Europe/Berlin") -> Cadence:
    return cadence_from_settings(ScheduleSettings(cadence="daily", at=at, timezone=tz))


def test_a_day_runs_once_at_the_local_time(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 6, 30, 0, 0, tzinfo=UTC))
    job = Recorder(clock)
    runs = scheduler(daily(), clock, job, tmp_path / "state.json").run(max_runs=1)
    assert runs == 1
    (tick, ran_at), *_ = job.ticks
    # 06:00 in Berlin in summer is 04:00 UTC; the job starts exactly then, not a nap later.
    assert tick.due == datetime(2026, 6, 30, 4, 0, tzinfo=UTC) == ran_at
    assert not tick.catch_up and tick.retrain  # first run ever: retraining is due
    assert len(clock.naps) == 4 * 60  # four hours in one-minute naps: a stop is noticed within a minute
    state = ScheduleState.load(tmp_path / "state.json")
    assert state.last_run == state.last_retrain == tick.due


def test_a_week_daily_with_retraining_every_three_days_and_a_dst_change(tmp_path: Path) -> None:
    # The week across Europe's switch to summer time (29 March 2026): 06:00 local stays 06:00 local.
    clock = FakeClock(datetime(2026, 3, 26, 12, 0, tzinfo=UTC))
    job = Recorder(clock)
    sched = scheduler(daily(), clock, job, tmp_path / "state.json", retrain_every=timedelta(days=3))
    assert sched.run(max_runs=7) == 7
    local = [tick.due.astimezone(sched.cadence.zone) for tick, _ in job.ticks]
    assert [d.day for d in local] == [27, 28, 29, 30, 31, 1, 2]
    assert {(d.hour, d.minute) for d in local} == {(6, 0)}
    assert [tick.due.hour for tick, _ in job.ticks] == [5, 5, 4, 4, 4, 4, 4]  # UTC moves, local time does not
    assert [tick.retrain for tick, _ in job.ticks] == [True, False, False, True, False, False, True]


def test_weekly_on_a_day_at_a_time(tmp_path: Path) -> None:
    cadence = cadence_from_settings(
        ScheduleSettings(cadence="weekly", day="wednesday", at="23:30", timezone="America/New_York")
    )
    assert cadence.expression == "30 23 * * 3"
    clock = FakeClock(datetime(2026, 6, 1, tzinfo=UTC))  # a Monday
    job = Recorder(clock)
    scheduler(cadence, clock, job, tmp_path / "state.json").run(max_runs=3)
    local = [tick.due.astimezone(cadence.zone) for tick, _ in job.ticks]
    assert [d.strftime("%a %d %H:%M") for d in local] == ["Wed 03 23:30", "Wed 10 23:30", "Wed 17 23:30"]
    assert [tick.retrain for tick, _ in job.ticks] == [True, False, True]  # every 14 days by default


def test_cron_expression_and_print_cron_lines() -> None:
    cadence = cadence_from_settings(ScheduleSettings(cadence="cron", cron="15 */6 * * 1-5", timezone="UTC"))
    start = datetime(2026, 7, 3, 19, 0, tzinfo=UTC)  # a Friday evening
    assert cadence.next_after(start) == datetime(2026, 7, 6, 0, 15, tzinfo=UTC)  # Monday 00:15
    assert cadence.last_at_or_before(datetime(2026, 7, 6, 0, 15, tzinfo=UTC)) == datetime(2026, 7, 6, 0, 15, tzinfo=UTC)
    assert crontab_lines(cadence, "churnsync --quiet schedule --once") == [
        "# churnsync: cron '15 */6 * * 1-5' in UTC",
        "15 */6 * * 1-5 churnsync --quiet schedule --once",
    ]
    assert crontab_lines(daily(), "x")[1:] == ["CRON_TZ=Europe/Berlin", "0 6 * * * x"]


def test_bad_schedule_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cron expression 'every day'"):
        cadence_from_settings(ScheduleSettings(cadence="cron", cron="every day"))
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        settings_from_mapping({"schedule": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ConfigError, match=r"schedule\.at"):
        settings_from_mapping({"schedule": {"at": "25:00"}})
    with pytest.raises(ConfigError, match="needs a cron expression"):
        settings_from_mapping({"schedule": {"cadence": "cron"}})


def test_a_run_missed_while_down_runs_once_at_start(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    # Last ran on Sunday 28 June; the scheduler was down for two due runs (29 and 30 June, 04:00 UTC).
    ScheduleState(
        last_run=datetime(2026, 6, 28, 4, 0, tzinfo=UTC), last_retrain=datetime(2026, 6, 20, 4, 0, tzinfo=UTC)
    ).save(state_path)
    clock = FakeClock(datetime(2026, 6, 30, 12, 0, tzinfo=UTC))
    job = Recorder(clock)
    assert scheduler(daily(), clock, job, state_path).run(max_runs=2) == 2
    (missed, missed_at), (regular, regular_at) = job.ticks
    assert missed.catch_up and missed.due == datetime(2026, 6, 30, 4, 0, tzinfo=UTC)
    assert missed_at == datetime(2026, 6, 30, 12, 0, tzinfo=UTC)  # at once, not at the next slot
    assert not missed.retrain  # 10 days since the last retraining < 14
    assert not regular.catch_up and regular.due == regular_at == datetime(2026, 7, 1, 4, 0, tzinfo=UTC)

    # Started again the same day after that run: nothing was missed, so nothing runs before the next slot.
    clock.now = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
    again = Recorder(clock)
    assert scheduler(daily(), clock, again, state_path).run(max_runs=1) == 1
    assert [t.due for t, _ in again.ticks] == [datetime(2026, 7, 2, 4, 0, tzinfo=UTC)]


def test_catch_up_off_and_a_first_start_wait_for_the_next_slot(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 6, 30, 12, 0, tzinfo=UTC))
    job = Recorder(clock)
    first = scheduler(daily(), clock, job, tmp_path / "fresh.json")
    assert first.missed() is None  # never ran: nothing was missed
    ScheduleState(last_run=datetime(2026, 6, 1, tzinfo=UTC)).save(tmp_path / "old.json")
    off = scheduler(daily(), clock, job, tmp_path / "old.json", catch_up=False)
    assert off.missed() is None


def test_a_failed_run_keeps_retraining_due_and_the_schedule_going(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 6, 30, 0, 0, tzinfo=UTC))
    seen: list[Tick] = []

    def flaky(tick: Tick) -> bool:
        seen.append(tick)
        if len(seen) == 1:
            raise RuntimeError("boom")
        return len(seen) != 2  # the second run "fails" without raising

    sched = Scheduler(daily(), job=flaky, state_path=tmp_path / "s.json", clock=clock, sleep=clock.sleep)
    assert sched.run(max_runs=3) == 3
    assert [t.retrain for t in seen] == [True, True, True]
    assert ScheduleState.load(tmp_path / "s.json").last_retrain == seen[2].due


def test_stop_during_a_run_lets_it_finish_then_the_loop_exits(tmp_path: Path) -> None:
    """The loop runs in a thread on a fast fake clock; a stop arrives while a job is in flight."""
    clock = FakeClock(datetime(2026, 6, 30, 3, 59, tzinfo=UTC))
    stop = threading.Event()
    started, release = threading.Event(), threading.Event()
    finished: list[Tick] = []

    def job(tick: Tick) -> bool:
        started.set()
        assert release.wait(5)
        assert stop.is_set()  # the job sees the stop (the pipeline finishes its batch, records, returns)
        finished.append(tick)
        return True

    sched = Scheduler(daily(), job=job, state_path=tmp_path / "s.json", clock=clock, sleep=clock.sleep, stop=stop)
    thread = threading.Thread(target=sched.run)
    thread.start()
    assert started.wait(5)
    stop.set()  # what the SIGTERM handler does
    release.set()
    thread.join(5)
    assert not thread.is_alive()
    assert len(finished) == 1
    assert ScheduleState.load(tmp_path / "s.json").last_run == finished[0].due  # the run is recorded


def test_stop_while_waiting_returns_at_once(tmp_path: Path) -> None:
    stop = threading.Event()
    sched = Scheduler(daily(), job=lambda _t: True, state_path=tmp_path / "s.json", stop=stop)
    thread = threading.Thread(target=sched.run)
    thread.start()  # real clock and sleep (stop.wait): due hours away at most
    stop.set()
    thread.join(2)
    assert not thread.is_alive()
    assert not (tmp_path / "s.json").exists()
