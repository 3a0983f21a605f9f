"""Plain records passed between stages (store ↔ sync ↔ pipeline). No behaviour, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: A published attribute value as it travels to a destination: JSON-native. Times are ISO 8601 strings
#: in UTC with a ``Z``; ``None`` deletes the attribute at the destination.
Value = float | int | str | bool | None


@dataclass(frozen=True, slots=True)
class Change:
    """One customer's attributes that differ from what the destination acknowledged."""

    customer_id: str
    values: Mapping[str, Value]


@dataclass(frozen=True, slots=True)
class ObjectFailure:
    """One customer whose update the destination refused, with the destination's reason."""

    customer_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What the destination acknowledged for one request: recorded in one store transaction."""

    seq: int
    accepted: Sequence[Change]
    failed: Sequence[ObjectFailure]
    http_status: int
    attempts: int

    @property
    def data_points(self) -> int:
        """Billable data points: one per attribute written to an accepted profile."""
        return sum(len(c.values) for c in self.accepted)


@dataclass(slots=True)
class SyncCounts:
    """Totals of one sync run, as shown in the run summary."""

    selected: int = 0
    sent: int = 0
    accepted: int = 0
    failed: int = 0
    data_points: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures: list[ObjectFailure] = field(default_factory=list)
