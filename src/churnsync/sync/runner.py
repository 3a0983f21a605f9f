"""One sync run of one destination, around the Braze client: selection, budget, quarantine, journal, dry run.

::

    store.select_changes ─> destination filter (customer id prefixes, include/exclude attributes)
                         ─> quarantine (skip objects whose failing values did not change)
                         ─> budget (per run / per month: priority attributes first, or stop before sending)
                         ─> dry run: NDJSON of the exact bodies + a summary      (nothing sent; the summary
                                                                                  recorded in sync_dry_runs)
                         ─> push_changes: journal "intended" → POST → record_batch + journal "acknowledged"

Crash safety comes from the order of writes: a batch's values become acknowledged state only in the
transaction that also marks its journal row acknowledged, so after a kill -9 at any point the next run
selects exactly what was not acknowledged, and :func:`churnsync.store.ledger.recover_in_doubt` reports the
requests that were in flight (the only possible duplicates).

Before anything leaves, each object is checked against Braze's rules for custom attributes
(:func:`check_changes`): a name Braze would refuse or read as a standard profile field stops the run with a
:class:`~churnsync.errors.ConfigError`; a value Braze would refuse (a string over 255 characters, a type it
has no attribute for) fails only that customer, who is recorded and quarantined like a refusal by Braze.

Test hooks (environment only, off unless set; no setting of the configuration reaches them), used by the
crash tests (tests/chaos) to kill the process with SIGKILL at a named point:

- ``CHURNSYNC_TEST_CRASH_AFTER_ACK=SEQ``: batch ``SEQ`` was acknowledged by Braze, nothing committed yet.
- ``CHURNSYNC_TEST_CRASH_AT=POINT:N``: ``select:N`` when the selection yields its N-th customer (batches
  before it may be in flight), ``intended:N`` once batch N's journal row is committed and before its request
  is sent, ``ack:N`` as ``CHURNSYNC_TEST_CRASH_AFTER_ACK=N``.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnsync.config import BrazeDestination
from churnsync.errors import ChurnsyncError, ConfigError, SyncError
from churnsync.records import BatchOutcome, Change, ObjectFailure, SyncCounts
from churnsync.store import ledger

if TYPE_CHECKING:
    import httpx

    from churnsync.store.store import AttributeStore

__all__ = [
    "BudgetExceededError",
    "DryRunSummary",
    "SyncResult",
    "check_changes",
    "plan_changes",
    "run_sync",
    "write_dry_run",
]

CRASH_AFTER_ACK_ENV = "CHURNSYNC_TEST_CRASH_AFTER_ACK"
CRASH_AT_ENV = "CHURNSYNC_TEST_CRASH_AT"

#: Names a custom attribute may not have: Braze's standard profile fields, identifiers, and its own keys.
RESERVED_ATTRIBUTE_NAMES = frozenset(
    {
        "country", "current_location", "date_of_first_session", "date_of_last_session", "dob", "email",
        "email_click_tracking_disabled", "email_open_tracking_disabled", "email_subscribe", "facebook",
        "first_name", "gender", "home_city", "image_url", "language", "last_name", "marked_email_as_spam_at",
        "phone", "push_subscribe", "push_tokens", "subscription_groups", "time_zone", "twitter",
        "external_id", "user_alias", "braze_id", "_update_existing_only", "_merge_objects",
    }
)  # fmt: skip
#: Braze's limits on a custom attribute's name and on a string value (characters).
MAX_NAME_LENGTH = 255
MAX_STRING_LENGTH = 255


class BudgetExceededError(SyncError):
    """The run would send more data points than the budget allows and ``budget_policy = "stop"``."""


@dataclass
class Selection:
    """What the filters and the budget left out of one run (the rest is sent)."""

    skipped_quarantined: int = 0
    skipped_budget_customers: int = 0
    skipped_budget_points: int = 0
    budget: int | None = None
    #: Customers whose values break Braze's rules: customer id → (reason, values hash); never sent.
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class SyncResult:
    """What one destination's sync did, beyond the client's counts."""

    counts: SyncCounts
    selection: Selection
    in_doubt: ledger.InDoubt
    newly_quarantined: int = 0

    def details(self) -> dict[str, Any]:
        """The figures the run summary shows."""
        return {
            "possible_duplicates": self.in_doubt.objects,
            "requests_in_doubt": self.in_doubt.batches,
            "interrupted_runs": self.in_doubt.interrupted_runs,
            "skipped_quarantined": self.selection.skipped_quarantined,
            "newly_quarantined": self.newly_quarantined,
            "skipped_budget_customers": self.selection.skipped_budget_customers,
            "skipped_budget_data_points": self.selection.skipped_budget_points,
            "budget": self.selection.budget,
        }


@dataclass
class DryRunSummary:
    """What a run would send: customers, requests, and data points per (sent) attribute name."""

    customers: int = 0
    requests: int = 0
    data_points: int = 0
    data_points_by_attribute: dict[str, int] = field(default_factory=dict)
    selection: Selection = field(default_factory=Selection)


# -- selection -------------------------------------------------------------------------------------------------


def _filtered(
    chunks: Iterable[list[Change]],
    destination: BrazeDestination,
    quarantine: dict[str, str],
    selection: Selection,
) -> Iterator[list[Change]]:
    """The destination's customers and attributes, minus quarantined objects whose values did not change."""
    prefixes = tuple(destination.customer_id_prefixes)
    include = frozenset(destination.attributes_include)
    exclude = frozenset(destination.attributes_exclude)
    if not (prefixes or include or exclude or quarantine):
        yield from chunks  # nothing to filter: chunks pass through untouched (the common, fast case)
        return
    for chunk in chunks:
        kept: list[Change] = []
        for change in chunk:
            if prefixes and not change.customer_id.startswith(prefixes):
                continue
            values = change.values
            if include or exclude:
                values = {k: v for k, v in values.items() if (not include or k in include) and k not in exclude}
                if not values:
                    continue
                change = Change(change.customer_id, values)
            digest = quarantine.get(change.customer_id)
            if digest is not None and digest == ledger.values_hash(values):
                selection.skipped_quarantined += 1
                continue
            kept.append(change)
        if kept:
            yield kept


def _budget(store: AttributeStore, name: str, destination: BrazeDestination, now: datetime) -> int | None:
    limits = []
    if destination.max_data_points_per_run is not None:
        limits.append(destination.max_data_points_per_run)
    if destination.max_data_points_per_month is not None:
        used = ledger.data_points_since(store, name, ledger.month_start(now))
        limits.append(max(destination.max_data_points_per_month - used, 0))
    return min(limits) if limits else None


def _within(chunks: Iterable[list[Change]], selection: Selection, spent: list[int]) -> Iterator[list[Change]]:
    """Changes while they fit the budget; those that do not fit are counted and left for a later run."""
    assert selection.budget is not None
    for chunk in chunks:
        kept = []
        for change in chunk:
            points = len(change.values)
            if spent[0] + points <= selection.budget:
                spent[0] += points
                kept.append(change)
            else:
                selection.skipped_budget_customers += 1
                selection.skipped_budget_points += points
        if kept:
            yield kept


def _only(chunks: Iterable[list[Change]], priority: frozenset[str], wanted: bool) -> Iterator[list[Change]]:
    for chunk in chunks:
        kept = [c for c in chunk if (not priority.isdisjoint(c.values)) is wanted]
        if kept:
            yield kept


def _name_problem(sent: str) -> str | None:
    """Why Braze would refuse ``sent`` as a custom attribute name (or read it as something else), or None."""
    if not sent:
        return "is empty"
    if len(sent) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    if sent[0] == "$":
        return "starts with '$'"
    if sent in RESERVED_ATTRIBUTE_NAMES:
        return "is a standard Braze profile field or identifier, which a prediction must never overwrite"
    return None


def _value_problem(attribute: str, value: Any) -> str | None:
    """Why Braze would refuse ``value`` for a custom attribute, or None (numbers, short strings, null, times)."""
    kind = type(value)
    if kind is float or kind is int or kind is bool or value is None:
        return None  # NaN and infinity are refused by the client's encoder, alone
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            return f"invalid_value: '{attribute}' is longer than {MAX_STRING_LENGTH} characters ({len(value)})"
        return None
    if isinstance(value, datetime | date):
        return None
    if isinstance(value, list | tuple) and all(type(v) is str and len(v) <= MAX_STRING_LENGTH for v in value):
        return None
    return f"invalid_value: '{attribute}' is a {kind.__name__}, not a number, string, boolean, time or array"


def check_changes(
    chunks: Iterable[list[Change]], name: str, destination: BrazeDestination, selection: Selection
) -> Iterator[list[Change]]:
    """``chunks`` without the customers whose values Braze would refuse (kept in ``selection.refused``).

    Raises :class:`~churnsync.errors.ConfigError` for an attribute whose sent name (after ``attribute_prefix``
    and ``attribute_rename``) Braze refuses or would read as a standard profile field: every customer has it.
    """
    prefix, rename = destination.attribute_prefix, destination.attribute_rename
    named: set[str] = set()
    for chunk in chunks:
        kept = []
        for change in chunk:
            values = change.values
            if not named.issuperset(values):
                for attribute in values:
                    sent = prefix + rename.get(attribute, attribute)
                    problem = _name_problem(sent)
                    if problem is not None:
                        raise ConfigError(
                            f"destination '{name}': attribute '{attribute}' would be sent as {sent[:60]!r}, "
                            f"which {problem}; nothing more was sent",
                            remedy="Map it to another name with attribute_rename or attribute_prefix, or leave it "
                            "out with attributes_exclude",
                        )
                    named.add(attribute)
            reason = None
            for attribute, value in values.items():
                # The common cases first, cheaply: numbers, short strings, nulls.
                if type(value) is float or (type(value) is str and len(value) <= MAX_STRING_LENGTH) or value is None:
                    continue
                reason = _value_problem(attribute, value)
                if reason is not None:
                    break
            if reason is None:
                kept.append(change)
            else:
                selection.refused[change.customer_id] = (reason, ledger.values_hash(change.values))
        if kept:
            yield kept


def _planned(
    store: AttributeStore,
    name: str,
    destination: BrazeDestination,
    *,
    now: datetime | None,
    selection: Selection,
) -> Iterator[list[Change]]:
    """:func:`plan_changes` before the check against Braze's rules."""
    quarantine = ledger.quarantined(store, name)
    selection.budget = _budget(store, name, destination, now or datetime.now(UTC))

    ttl = timedelta(days=destination.ttl_days) if destination.ttl_days is not None else None

    def select(counted: Selection = selection) -> Iterator[list[Change]]:
        # mirror / TTL (the store's): customers no longer scored or scored too long ago are nulled out.
        chunks = store.select_changes(name, mode=destination.mode, ttl=ttl, now=now)
        return _filtered(chunks, destination, quarantine, counted)

    if selection.budget is None:
        return select()
    if destination.budget_policy == "stop":
        counting = Selection()
        total = sum(len(c.values) for chunk in select(counting) for c in chunk)
        if total > selection.budget:
            raise BudgetExceededError(
                f"destination '{name}': this run would send {total:,} data points, over the budget of "
                f"{selection.budget:,} left (max_data_points_per_run / max_data_points_per_month); nothing was sent",
                remedy='Raise the budget, or set budget_policy = "prioritise" to send the most important changes',
            )
        return select()
    priority = frozenset(destination.priority_attributes)
    spent = [0]

    def prioritised() -> Iterator[list[Change]]:
        # Two streamed passes; the second query starts after the first is read, and cannot repeat its
        # customers: they hold a priority change, which the second pass excludes.
        yield from _within(_only(select(), priority, True), selection, spent)
        # The first pass counted the quarantine's skips already.
        yield from _within(_only(select(Selection()), priority, False), selection, spent)

    return prioritised()


def plan_changes(
    store: AttributeStore,
    name: str,
    destination: BrazeDestination,
    *,
    now: datetime | None,
    selection: Selection,
) -> Iterator[list[Change]]:
    """The changes one run sends, filtered, without quarantined objects, and within the data-point budget.

    With a budget and ``budget_policy = "prioritise"``, customers with a change of a priority attribute
    (``churn_risk`` by default) go first, then the others, until the budget is spent. With ``"stop"``, a
    run that does not fit raises :class:`BudgetExceededError` before anything is sent. Customers whose values
    break Braze's rules are left out and kept in ``selection.refused`` (:func:`check_changes`).
    """
    return check_changes(_planned(store, name, destination, now=now, selection=selection), name, destination, selection)


# -- dry run -----------------------------------------------------------------------------------------------------


def write_dry_run(
    store: AttributeStore, name: str, destination: BrazeDestination, out: Path, *, now: datetime | None = None
) -> DryRunSummary:
    """Write the exact request bodies of a run to ``out`` (NDJSON, one request a line); send nothing.

    The summary (not the payloads) is recorded in the store (:func:`churnsync.store.ledger.record_dry_run`) for
    the dashboard; no sync state changes.
    """
    from churnsync.sync.braze import batches, encode_payload, track_url

    track_url(destination.endpoint, name, allow_http=destination.allow_insecure_http)  # refused as a real run would
    summary = DryRunSummary()
    by_attribute: Counter[str] = Counter()
    prefix, rename = destination.attribute_prefix, destination.attribute_rename
    chunks = plan_changes(store, name, destination, now=now, selection=summary.selection)
    try:
        with out.open("wb") as file:
            for batch in batches(chunks, destination.batch_size):
                file.write(encode_payload(batch, destination))
                file.write(b"\n")
                summary.requests += 1
                summary.customers += len(batch)
                for change in batch:
                    by_attribute.update(prefix + rename.get(k, k) for k in change.values)
    except OSError as exc:
        raise ChurnsyncError(
            f"dry run of destination '{name}': cannot write {out} ({exc.strerror or exc})",
            remedy="Choose a writable --out path",
        ) from None
    summary.data_points_by_attribute = dict(sorted(by_attribute.items()))
    summary.data_points = sum(by_attribute.values())
    ledger.record_dry_run(
        store,
        destination=name,
        path=str(out.resolve()),
        customers=summary.customers,
        requests=summary.requests,
        data_points_by_attribute=summary.data_points_by_attribute,
        at=now,
    )
    return summary


# -- a live run --------------------------------------------------------------------------------------------------


def _crash_after_ack() -> int | None:
    value = os.environ.get(CRASH_AFTER_ACK_ENV)
    return int(value) if value and value.lstrip("-").isdigit() else None


def _crash_at(point: str) -> int | None:
    """N of ``CHURNSYNC_TEST_CRASH_AT=POINT:N`` when it names ``point`` (a test hook; None otherwise)."""
    named, _, value = os.environ.get(CRASH_AT_ENV, "").partition(":")
    return int(value) if named == point and value.isdigit() else None


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)  # test hook only (see the module docstring)


def _crash_at_customer(chunks: Iterator[list[Change]], n: int) -> Iterator[list[Change]]:
    seen = 0
    for chunk in chunks:
        if seen + len(chunk) > n:
            yield chunk[: n - seen]
            _crash()
        seen += len(chunk)
        yield chunk


def run_sync(
    store: AttributeStore,
    name: str,
    destination: BrazeDestination,
    *,
    sync_run_id: int,
    api_key: str,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
    wrap: Callable[[Iterator[list[Change]]], Iterator[list[Change]]] | None = None,
    on_recorded: Callable[[BatchOutcome], None] | None = None,
) -> SyncResult:
    """Send one destination's changes under the journal; record acknowledged state, failures and quarantine.

    The caller started ``sync_run_id`` and finishes it. ``wrap`` may cut the planned chunks short (a stop
    signal); ``on_recorded`` sees each batch after it is committed (progress). Raises what :func:`push_changes` raises
    (e.g. :class:`~churnsync.errors.DestinationAuthError`) and :class:`BudgetExceededError`.
    """
    from churnsync.sync.braze import push_changes

    in_doubt = ledger.recover_in_doubt(store, name, sync_run_id)
    selection = Selection()
    chunks = plan_changes(store, name, destination, now=now, selection=selection)
    if wrap is not None:
        chunks = wrap(chunks)
    sent: dict[int, list[Change]] = {}  # batches in flight, for the values of refused customers
    failed: dict[str, tuple[str, str]] = {}
    crash_at = _crash_after_ack()
    if crash_at is None:
        crash_at = _crash_at("ack")
    crash_intended = _crash_at("intended")
    crash_select = _crash_at("select")
    if crash_select is not None:
        chunks = _crash_at_customer(chunks, crash_select)

    def on_send(seq: int, changes: list[Change], body: bytes) -> None:
        sent[seq] = changes
        ledger.journal_intended(
            store,
            sync_run_id=sync_run_id,
            destination=name,
            seq=seq,
            customer_ids=[c.customer_id for c in changes],
            body=body,
            data_points=sum(len(c.values) for c in changes),
        )
        if crash_intended is not None and seq == crash_intended:
            _crash()  # test hook: journaled as intended, not sent

    def on_batch(outcome: BatchOutcome) -> None:
        if crash_at is not None and outcome.seq == crash_at:
            _crash()  # test hook: Braze acknowledged, nothing committed yet
        changes = sent.pop(outcome.seq, [])
        if outcome.failed:
            values = {c.customer_id: c.values for c in changes}
            for failure in outcome.failed:
                failed[failure.customer_id] = (failure.reason, ledger.values_hash(values.get(failure.customer_id, {})))
        also = ledger.acknowledge(store, sync_run_id, outcome.seq) if changes else None
        store.record_batch(sync_run_id, name, outcome, also=also)
        if on_recorded is not None:
            on_recorded(outcome)

    counts = push_changes(
        chunks,
        name=name,
        destination=destination,
        api_key=api_key,
        on_batch=on_batch,
        on_send=on_send,
        transport=transport,
    )
    if selection.refused:  # never sent: Braze's rules refused them here (check_changes)
        failed.update(selection.refused)
        refusals = [ObjectFailure(customer_id, reason) for customer_id, (reason, _) in selection.refused.items()]
        counts.selected += len(refusals)
        counts.failed += len(refusals)
        counts.failures.extend(refusals)
    newly = ledger.record_run_failures(
        store, name, sync_run_id, failed, quarantine_after=destination.quarantine_after_runs
    )
    return SyncResult(counts=counts, selection=selection, in_doubt=in_doubt, newly_quarantined=newly)


def summary_json(summary: DryRunSummary) -> str:
    """The dry-run summary as one JSON document."""
    body = {
        "customers": summary.customers,
        "requests": summary.requests,
        "data_points": summary.data_points,
        "data_points_by_attribute": summary.data_points_by_attribute,
        "skipped_quarantined": summary.selection.skipped_quarantined,
        "skipped_budget_customers": summary.selection.skipped_budget_customers,
        "budget": summary.selection.budget,
        "refused": len(summary.selection.refused),
    }
    return json.dumps(body, indent=2)
