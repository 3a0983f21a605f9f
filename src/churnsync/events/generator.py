"""Realistic sample behaviour with its ground truth: a BG/NBD world, simulated in vectorised numpy.

The world, per customer (time in days since ``start``, all times UTC):

- **Acquisition.** The first purchase falls on a day of the first two thirds of the period (days weighted by the
  weekly profile below), at a uniform time of that day.
- **Purchases (BG/NBD).** Purchase rate ``lambda ~ Gamma(shape=PURCHASE_SHAPE, rate=PURCHASE_RATE)`` per day;
  after every purchase, the first included, the customer drops out for good with probability
  ``p ~ Beta(DROPOUT_A, DROPOUT_B)``. While active, purchases form a Poisson process of intensity
  ``lambda * w(day of week)``, where the weekly profile ``w`` has mean 1 (so ``lambda`` is the weekly-average rate).
- **Spend (Gamma-Gamma).** Each purchase's value ``~ Gamma(shape=SPEND_SHAPE, rate=nu)`` with the customer's
  ``nu ~ Gamma(shape=SPEND_Q, rate=SPEND_GAMMA)``; ``mean_spend = SPEND_SHAPE / nu``.
- **Sessions.** While active, at ``k * lambda * w`` per day with ``k ~ Gamma(SESSIONS_SHAPE, SESSIONS_SCALE)``
  sessions per purchase; after dropout the rate fades as ``exp(-(t - dropout) / SESSION_FADE_DAYS)``.
- **Email opens.** From acquisition at ``e * w`` per day with ``e = EMAILS_PER_DAY * open_share``,
  ``open_share ~ Beta(OPEN_A, OPEN_B)``; after dropout they go on at ``EMAIL_AFTER_DROPOUT`` of that rate.
- **Weekly seasonality.** Every event stream is thinned by the day-of-week weights ``WEEKDAY_WEIGHTS`` (Monday
  first, weekends busier), normalised to mean 1.

Files (``events.csv`` or ``events.parquet``) hold the canonical columns ``customer_id`` (``c_0000001`` …),
``occurred_at`` (ISO 8601 UTC with ``Z`` in CSV; a UTC timestamp in Parquet), ``event_type`` (``purchase``,
``session``, ``email_open``) and ``value`` (purchase amount, empty otherwise) for ``[start, cut)``, with
``cut = start + days``, sorted by customer then time. Every customer has made a first purchase before the cut.

The simulation goes on for ``holdout_days`` after the cut; those events are not written. Instead the truth file
(``truth.csv`` / ``truth.parquet``) has one row per customer:

- ``customer_id``; ``lambda`` (purchases per day while active); ``p`` (dropout probability after a purchase);
  ``mean_spend`` (expected value of one purchase);
- ``first_purchase_at`` (date); ``purchases_before_cut`` (purchases in the events file);
- ``alive_at_cut``: the customer had not dropped out before the cut;
- ``dropout_at``: the date of the purchase after which the customer dropped out, when that happened before
  ``cut + holdout_days``; empty otherwise;
- ``purchases_in_holdout``: purchases in ``[cut, cut + holdout_days)``;
- for each horizon ``h``: ``purchases_next_{h}d`` = purchases in ``[cut, cut + h days)``, and
  ``true_churn_probability_{h}d`` = the probability of no purchase in that window given the customer's true
  parameters and state at the cut: 1 for a customer who dropped out before the cut, otherwise
  ``exp(-lambda * sum of w over the h days after the cut)`` (``= exp(-lambda * h)`` when ``h`` is a whole number of
  weeks). Dropout only happens right after a purchase, so it does not change the chance of that first purchase.

Deterministic for a given seed (and independent of the machine): customers are simulated in fixed chunks, each
with its own generator spawned from ``np.random.SeedSequence(seed)``, and written incrementally, so memory stays
bounded at any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from churnsync.errors import ConfigError

__all__ = ["GenerateResult", "generate_sample"]

# The world's parameters (time unit: days). Chosen for a mean inter-purchase time of about a month with strong
# heterogeneity (CDNOW-like), a quarter to a third of customers dropping out after each purchase on average, and
# roughly 20 events per customer over a year.
PURCHASE_SHAPE = 0.7  # r of BG/NBD
PURCHASE_RATE = 20.0  # alpha of BG/NBD, in days: mean lambda = r / alpha = 0.035 per day
DROPOUT_A = 1.0
DROPOUT_B = 2.5  # mean p = a / (a + b) ≈ 0.29
SPEND_SHAPE = 6.0  # p of Gamma-Gamma
SPEND_Q = 4.0
SPEND_GAMMA = 15.0  # mean spend per purchase = p * gamma / (q - 1) = 30
SESSIONS_SHAPE = 3.0
SESSIONS_SCALE = 1.5  # 4.5 sessions per purchase on average
SESSION_FADE_DAYS = 21.0
EMAILS_PER_DAY = 1.0 / 7.0  # one campaign a week
OPEN_A = 2.0
OPEN_B = 6.0  # a quarter of emails opened on average
EMAIL_AFTER_DROPOUT = 0.3
ACQUISITION_SHARE = 2.0 / 3.0
#: Monday … Sunday; normalised to mean 1 below.
WEEKDAY_WEIGHTS = (0.9, 0.88, 0.9, 0.92, 1.0, 1.25, 1.15)

_CHUNK = 100_000
_DAY = 86_400
_EVENT_TYPES = ("purchase", "session", "email_open")
_PURCHASE, _SESSION, _EMAIL = 0, 1, 2

_F = npt.NDArray[np.float64]
_I = npt.NDArray[np.int64]


@dataclass(frozen=True)
class GenerateResult:
    """What :func:`generate_sample` wrote."""

    events_path: Path
    truth_path: Path
    customers: int
    events: int
    """Rows written to the events file (events in ``[start, cut)``)."""
    start: date
    cut: date
    """``start + days``: the first day not in the events file."""
    end: date
    """``cut + holdout_days``: the end (exclusive) of the simulated holdout described by the truth file."""


def generate_sample(
    out_dir: Path,
    *,
    customers: int,
    days: int,
    seed: int,
    start: date = date(2025, 1, 1),
    holdout_days: int = 90,
    fmt: Literal["csv", "parquet"] = "csv",
    horizons: Sequence[int] = (30,),
) -> GenerateResult:
    """Write ``events.{fmt}`` (behaviour in ``[start, start + days)``) and ``truth.{fmt}`` into ``out_dir``.

    Same arguments, same files. See the module docstring for the world and the exact truth definitions.

    Example
    -------
    >>> result = generate_sample(tmp_path, customers=1_000, days=365, seed=1)  # doctest: +SKIP
    >>> result.events_path.name, result.cut  # doctest: +SKIP
    ('events.csv', datetime.date(2026, 1, 1))
    """
    _check_arguments(customers, days, holdout_days, fmt, horizons)
    horizons = sorted({int(h) for h in horizons})
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path = out_dir / f"events.{fmt}"
    truth_path = out_dir / f"truth.{fmt}"
    weights = np.asarray(WEEKDAY_WEIGHTS, dtype=np.float64)
    weights = weights / weights.mean()
    world = _World(
        days=days,
        holdout_days=holdout_days,
        first_weekday=start.weekday(),
        weights=weights,
        start_epoch=int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp()),
        id_width=max(7, len(str(customers))),
        horizons=horizons,
    )

    n_chunks = -(-customers // _CHUNK)
    seeds = np.random.SeedSequence(seed).spawn(n_chunks)
    written = 0
    with (
        _Writer(events_path, _EVENTS_SCHEMA, fmt) as events_out,
        _Writer(truth_path, _truth_schema(horizons), fmt) as truth_out,
    ):
        for chunk, chunk_seed in enumerate(seeds):
            first = chunk * _CHUNK
            size = min(_CHUNK, customers - first)
            events, truth = _simulate(np.random.default_rng(chunk_seed), world, first, size)
            events_out.write(events)
            truth_out.write(truth)
            written += events.num_rows
    cut = start + timedelta(days=days)
    return GenerateResult(
        events_path=events_path,
        truth_path=truth_path,
        customers=customers,
        events=written,
        start=start,
        cut=cut,
        end=cut + timedelta(days=holdout_days),
    )


def _check_arguments(customers: int, days: int, holdout_days: int, fmt: str, horizons: Sequence[int]) -> None:
    if customers < 1:
        raise ConfigError(f"customers must be at least 1, not {customers}")
    if days < 1:
        raise ConfigError(f"days must be at least 1, not {days}")
    if holdout_days < 1:
        raise ConfigError(f"holdout_days must be at least 1, not {holdout_days}")
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"format must be csv or parquet, not {fmt!r}")
    if not horizons:
        raise ConfigError("horizons must name at least one horizon in days")
    for h in horizons:
        if not 1 <= h <= holdout_days:
            raise ConfigError(
                f"horizon {h} days is outside 1..holdout_days ({holdout_days})",
                remedy="Use horizons no longer than the simulated holdout, or raise holdout_days",
            )


@dataclass(frozen=True)
class _World:
    days: int
    holdout_days: int
    first_weekday: int
    weights: _F
    start_epoch: int
    id_width: int
    horizons: list[int]

    def keep_share(self, t: _F) -> _F:
        """Thinning probability of a candidate at time ``t``: its weekday's weight over the largest weight."""
        weekday = (self.first_weekday + np.floor(t).astype(np.int64)) % 7
        result: _F = self.weights[weekday] / self.weights.max()
        return result


_EVENTS_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("occurred_at", pa.timestamp("s", tz="UTC")),
        ("event_type", pa.string()),
        ("value", pa.float64()),
    ]
)


def _truth_schema(horizons: list[int]) -> Any:
    fields: list[tuple[str, Any]] = [
        ("customer_id", pa.string()),
        ("lambda", pa.float64()),
        ("p", pa.float64()),
        ("mean_spend", pa.float64()),
        ("first_purchase_at", pa.date32()),
        ("purchases_before_cut", pa.int64()),
        ("alive_at_cut", pa.bool_()),
        ("dropout_at", pa.date32()),
        ("purchases_in_holdout", pa.int64()),
    ]
    for h in horizons:
        fields.append((f"purchases_next_{h}d", pa.int64()))
        fields.append((f"true_churn_probability_{h}d", pa.float64()))
    return pa.schema(fields)


class _Writer:
    """Appends Arrow tables to one CSV (header once, ISO 8601 times with ``Z``, no quotes) or Parquet file."""

    def __init__(self, path: Path, schema: Any, fmt: str) -> None:
        self.path, self.schema, self.fmt = path, schema, fmt
        self._sink: Any = None
        self._writer: Any = None

    def __enter__(self) -> _Writer:
        if self.fmt == "parquet":
            self._writer = pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
        else:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._sink.write((",".join(self.schema.names) + "\n").encode())
            text_schema = pa.schema(
                [(f.name, pa.string()) if pa.types.is_timestamp(f.type) else (f.name, f.type) for f in self.schema]
            )
            # Every string we write is an id, a type or a formatted time: nothing that needs quoting.
            options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
            self._writer = pa_csv.CSVWriter(self._sink, text_schema, write_options=options)
        return self

    def write(self, table: Any) -> None:
        if self.fmt == "csv":
            for i, field in enumerate(table.schema):
                if pa.types.is_timestamp(field.type):
                    seconds = table.column(i).cast(pa.int64()).to_numpy()
                    table = table.set_column(i, field.name, _iso_utc(seconds))
        self._writer.write_table(table)

    def __exit__(self, *exc: object) -> None:
        self._writer.close()
        if self._sink is not None:
            self._sink.close()


def _fixed_width_strings(chars: npt.NDArray[np.uint8]) -> Any:
    """An Arrow string array from an ``(n, width)`` array of ASCII codes, without a Python string per row."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def _put_digits(chars: npt.NDArray[np.uint8], column: int, value: _I, width: int) -> None:
    for k in range(width):
        chars[:, column + width - 1 - k] = 48 + (value // 10**k) % 10


def _iso_utc(epoch_seconds: _I) -> Any:
    """``YYYY-MM-DDTHH:MM:SSZ`` strings, built digit by digit (Arrow's own formatting is ~50× slower)."""
    seconds = np.asarray(epoch_seconds, dtype=np.int64)
    days = (seconds // _DAY).astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (days - months).astype(np.int64) + 1
    second_of_day = seconds % _DAY
    chars = np.empty((len(seconds), 20), dtype=np.uint8)
    _put_digits(chars, 0, year, 4)
    _put_digits(chars, 5, month, 2)
    _put_digits(chars, 8, day, 2)
    _put_digits(chars, 11, second_of_day // 3600, 2)
    _put_digits(chars, 14, second_of_day // 60 % 60, 2)
    _put_digits(chars, 17, second_of_day % 60, 2)
    chars[:, 4] = chars[:, 7] = ord("-")
    chars[:, 10] = ord("T")
    chars[:, 13] = chars[:, 16] = ord(":")
    chars[:, 19] = ord("Z")
    return _fixed_width_strings(chars)


def _customer_ids(first: int, size: int, width: int) -> Any:
    """``c_0000001`` … for customers ``first + 1`` to ``first + size``."""
    chars = np.empty((size, width + 2), dtype=np.uint8)
    chars[:, 0] = ord("c")
    chars[:, 1] = ord("_")
    _put_digits(chars, 2, np.arange(first + 1, first + size + 1, dtype=np.int64), width)
    return _fixed_width_strings(chars)


def _simulate(rng: np.random.Generator, world: _World, first: int, size: int) -> tuple[Any, Any]:
    """One chunk of customers: their events before the cut (an Arrow table) and their truth rows."""
    days, end = float(world.days), float(world.days + world.holdout_days)
    # A floor keeps a (vanishingly rare) zero rate from dividing by zero; it means "never buys again".
    lam = np.maximum(rng.gamma(PURCHASE_SHAPE, 1.0 / PURCHASE_RATE, size), 1e-12)
    p = rng.beta(DROPOUT_A, DROPOUT_B, size)
    nu = rng.gamma(SPEND_Q, 1.0 / SPEND_GAMMA, size)
    sessions_per_purchase = rng.gamma(SESSIONS_SHAPE, SESSIONS_SCALE, size)
    open_share = rng.beta(OPEN_A, OPEN_B, size)

    # Acquisition: a day of the first two thirds, weighted by weekday, at a uniform time of day.
    acquisition_days = max(1, round(world.days * ACQUISITION_SHARE))
    day_weights = world.weights[(world.first_weekday + np.arange(acquisition_days)) % 7]
    t0 = rng.choice(acquisition_days, size=size, p=day_weights / day_weights.sum()) + rng.random(size)

    buyers, times, dropout = _purchases(rng, world, lam, p, t0, end)

    # Sessions and email opens are only needed before the cut (the truth is about purchases).
    active_until = np.minimum(dropout, days)
    after_dropout = np.maximum(days - dropout, 0.0)
    s_who, s_when = _stream(rng, world, sessions_per_purchase * lam, t0, active_until - t0)
    f_who, f_when = _fading(rng, world, sessions_per_purchase * lam, np.minimum(dropout, days), after_dropout)
    email_rate = EMAILS_PER_DAY * open_share
    e_who, e_when = _stream(rng, world, email_rate, t0, active_until - t0)
    d_who, d_when = _stream(rng, world, email_rate * EMAIL_AFTER_DROPOUT, active_until, after_dropout)

    # Whole seconds decide which side of the cut an event falls, for the file and the truth alike.
    purchase_second = np.floor(times * _DAY).astype(np.int64)
    written = purchase_second < world.days * _DAY
    spend = rng.gamma(SPEND_SHAPE, 1.0 / nu[buyers[written]])

    who = np.concatenate([buyers[written], s_who, f_who, e_who, d_who])
    other_when = np.concatenate([s_when, f_when, e_when, d_when])
    # Clipped because a time a hair before the cut can round up onto it.
    other_second = np.minimum(np.floor(other_when * _DAY).astype(np.int64), world.days * _DAY - 1)
    when = np.concatenate([purchase_second[written], other_second])
    kind = np.concatenate(
        [
            np.full(int(written.sum()), _PURCHASE, dtype=np.int8),
            np.full(len(s_who) + len(f_who), _SESSION, dtype=np.int8),
            np.full(len(e_who) + len(d_who), _EMAIL, dtype=np.int8),
        ]
    )
    value = np.concatenate([np.maximum(np.round(spend, 2), 0.01), np.zeros(len(who) - len(spend))])
    order = np.lexsort((kind, when, who))
    who, when, kind, value = who[order], when[order], kind[order], value[order]
    # Two sessions (or opens) in the same second would be exact duplicates, which readers drop: keep one.
    repeat = np.zeros(len(who), dtype=bool)
    repeat[1:] = (who[1:] == who[:-1]) & (when[1:] == when[:-1]) & (kind[1:] == kind[:-1]) & (kind[1:] != _PURCHASE)
    who, when, kind, value = who[~repeat], when[~repeat], kind[~repeat], value[~repeat]

    ids = _customer_ids(first, size, world.id_width)
    events = pa.table(
        {
            "customer_id": ids.take(pa.array(who)),
            "occurred_at": pa.array(world.start_epoch + when, pa.timestamp("s", tz="UTC")),
            "event_type": pa.array(_EVENT_TYPES).take(pa.array(kind)),
            "value": pa.array(value, mask=kind != _PURCHASE),
        },
        schema=_EVENTS_SCHEMA,
    )
    truth = _truth(world, ids, lam, p, nu, t0, buyers, purchase_second, dropout, size)
    return events, truth


def _purchases(rng: np.random.Generator, world: _World, lam: _F, p: _F, t0: _F, end: float) -> tuple[_I, _F, _F]:
    """BG/NBD purchases up to ``end``: (customer index, time) of each, and each customer's dropout time (inf if none).

    Rounds over the customers still active: each draws its next candidate time at the weekday-peak rate, keeps it
    with its weekday's share (thinning), and after a kept purchase drops out with probability ``p``. A round is
    one vectorised step; their number is the longest purchase sequence, not the number of customers.
    """
    size = len(lam)
    dropout = np.full(size, np.inf)
    who_parts: list[_I] = [np.arange(size, dtype=np.int64)]
    when_parts: list[_F] = [t0.copy()]
    gone = rng.random(size) < p
    dropout[gone] = t0[gone]
    active = np.flatnonzero(~gone)
    t = t0[active]
    peak_rate = lam[active] * world.weights.max()
    while active.size:
        t = t + rng.exponential(1.0, active.size) / peak_rate
        within = t < end
        active, t, peak_rate = active[within], t[within], peak_rate[within]
        kept = rng.random(active.size) < world.keep_share(t)
        who_parts.append(active[kept])
        when_parts.append(t[kept])
        drops = np.zeros(active.size, dtype=bool)
        drops[kept] = rng.random(int(kept.sum())) < p[active[kept]]
        dropout[active[drops]] = t[drops]
        stay = ~drops
        active, t, peak_rate = active[stay], t[stay], peak_rate[stay]
    return np.concatenate(who_parts), np.concatenate(when_parts), dropout


def _stream(rng: np.random.Generator, world: _World, rate: _F, begin: _F, length: _F) -> tuple[_I, _F]:
    """A Poisson stream of ``rate * w(weekday)`` per day on ``[begin, begin + length)`` for each customer."""
    length = np.maximum(length, 0.0)
    counts = rng.poisson(rate * world.weights.max() * length)
    who = np.repeat(np.arange(len(rate), dtype=np.int64), counts)
    when = begin[who] + length[who] * rng.random(who.size)
    kept = rng.random(who.size) < world.keep_share(when)
    return who[kept], when[kept]


def _fading(rng: np.random.Generator, world: _World, rate: _F, begin: _F, length: _F) -> tuple[_I, _F]:
    """A stream whose rate decays as ``exp(-(t - begin) / SESSION_FADE_DAYS)`` on ``[begin, begin + length)``."""
    tau = SESSION_FADE_DAYS
    mass = 1.0 - np.exp(-length / tau)
    counts = rng.poisson(rate * world.weights.max() * tau * mass)
    who = np.repeat(np.arange(len(rate), dtype=np.int64), counts)
    # Inverse of the truncated exponential's distribution function.
    when = begin[who] - tau * np.log1p(-rng.random(who.size) * mass[who])
    kept = rng.random(who.size) < world.keep_share(when)
    return who[kept], when[kept]


def _truth(
    world: _World,
    ids: Any,
    lam: _F,
    p: _F,
    nu: _F,
    t0: _F,
    buyers: _I,
    purchase_second: _I,
    dropout: _F,
    size: int,
) -> Any:
    """The truth rows of one chunk (see the module docstring for each column)."""
    cut = world.days * _DAY
    offset_days = world.start_epoch // _DAY

    def count_between(lo: int, hi: int) -> _I:
        inside = (purchase_second >= lo) & (purchase_second < hi)
        return np.bincount(buyers[inside], minlength=size).astype(np.int64)

    dropped = np.isfinite(dropout)
    alive_at_cut = ~(dropout * _DAY < cut)
    dropout_day = np.where(dropped, np.floor(dropout), 0).astype(np.int64) + offset_days
    columns: dict[str, Any] = {
        "customer_id": ids,
        "lambda": lam,
        "p": p,
        "mean_spend": SPEND_SHAPE / nu,
        "first_purchase_at": pa.array(np.floor(t0).astype(np.int32) + offset_days, pa.date32()),
        "purchases_before_cut": count_between(0, cut),
        "alive_at_cut": alive_at_cut,
        "dropout_at": pa.array(dropout_day.astype(np.int32), pa.date32(), mask=~dropped),
        "purchases_in_holdout": count_between(cut, cut + world.holdout_days * _DAY),
    }
    for h in world.horizons:
        exposure = world.weights[(world.first_weekday + world.days + np.arange(h)) % 7].sum()
        columns[f"purchases_next_{h}d"] = count_between(cut, cut + h * _DAY)
        columns[f"true_churn_probability_{h}d"] = np.where(alive_at_cut, np.exp(-lam * exposure), 1.0)
    return pa.table(columns, schema=_truth_schema(world.horizons))
