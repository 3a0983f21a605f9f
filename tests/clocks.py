"""A clock for tests: the store and the scheduler read the time from it, and it moves only when told to."""

from __future__ import annotations

from datetime import datetime, timedelta


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now
