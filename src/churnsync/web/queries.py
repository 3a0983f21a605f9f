"""What the dashboard reads from the store: set-based SQL over the store's tables, on a read-only connection.

Every function takes an :class:`~churnsync.store.store.AttributeStore` opened by :func:`open_read_only` and
only reads. Tables added by later revisions (the sync journal, quarantine) are read when they exist; a
function answers ``None`` for what the store cannot tell yet, and the page says so. A store before revision 0010
names the attribute in every row (column ``attribute``) instead of by its code (``attribute_id``): every query reads
the attribute through :class:`_Names`, which knows which of the two the store has.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from churnsync.errors import StoreError
from churnsync.records import Value
from churnsync.store import schema as s
from churnsync.store.store import AttributeStore, run_changes

#: Bins of a distribution: 40 bars read well and keep a page small whatever the number of customers.
HISTOGRAM_BINS = 40
#: Text attributes with more distinct values than this are not drawn as segment sizes.
MAX_SEGMENT_VALUES = 50
#: Customers shown in a segment preview.
PREVIEW_ROWS = 50

NUMERIC_OPS = (">=", ">", "<=", "<", "=", "!=")
TEXT_OPS = ("=", "!=")


def read_only_url(url: str) -> str:
    """The store URL opened so the database itself refuses writes (SQLite ``mode=ro``, PostgreSQL read-only)."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError:
        return url  # AttributeStore names the problem
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        if parsed.query.get("uri") == "true" or parsed.database.startswith("file:"):
            query = dict(parsed.query)
            query.update({"mode": "ro", "uri": "true"})
            return parsed.set(query=query).render_as_string(hide_password=False)
        return parsed.set(database=f"file:{parsed.database}", query={"mode": "ro", "uri": "true"}).render_as_string(
            hide_password=False
        )
    if backend == "postgresql":
        options = parsed.query.get("options", "")
        if isinstance(options, tuple):
            options = " ".join(options)
        options = f"{options} -c default_transaction_read_only=on".strip()
        return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)
    return url


def open_read_only(url: str) -> AttributeStore:
    """An AttributeStore on a read-only connection, never migrated (the dashboard must not change the store)."""
    return AttributeStore(read_only_url(url))


def _tables(conn: Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


# ---------------------------------------------------------------------------------------------- attribute names

#: The four high-volume tables as a store before revision 0010 has them: the attribute's name in each row, column
#: ``attribute`` (where revision 0010 has the code, ``attribute_id``). Only read, so columns without constraints.
_BY_NAME = sa.MetaData()


def _by_name(table: sa.Table) -> sa.Table:
    columns = [
        sa.Column("attribute", s.key_type(), nullable=False)
        if c.name == "attribute_id"
        else sa.Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key)
        for c in table.c
    ]
    return sa.Table(table.name, _BY_NAME, *columns)


_LEGACY = {
    t.name: _by_name(t) for t in (s.attribute_values, s.attribute_history, s.destination_state, s.destination_acks)
}


def _legacy(table: sa.Table) -> sa.Table:
    return _LEGACY[table.name]


@dataclass(frozen=True)
class _Names:
    """How a store's rows name their attribute: by code from revision 0010 on, by name before.

    From revision 0010 (the ``attributes`` table exists) the high-volume tables hold a 2-byte code,
    ``attribute_id``, and ``attributes`` maps codes to names; a store not yet upgraded (the dashboard never migrates)
    holds the name itself, ``attribute``. Queries that scan every current value filter and group by :meth:`key` (the
    code, not a join with ``attributes``) and map keys to names in Python with :meth:`name`.
    """

    codes: dict[str, int] | None  # name -> code; None: the rows hold the name (before revision 0010)
    names: dict[int, str] = field(default_factory=dict)  # code -> name

    @classmethod
    def of(cls, codes: dict[str, int] | None) -> _Names:
        return cls(codes, {code: name for name, code in (codes or {}).items()})

    @property
    def coded(self) -> bool:
        return self.codes is not None

    def table(self, table: sa.Table) -> sa.Table:
        """``table`` as the store has it: the schema's, or before 0010 the definition with the name."""
        return table if self.codes is not None else _LEGACY[table.name]

    def key(self, table: sa.Table) -> Any:
        """The column of ``table`` (from :meth:`table`) that says which attribute a row is of."""
        return table.c.attribute_id if self.codes is not None else table.c.attribute

    def is_(self, key: Any, name: str) -> Any:
        """``key`` is attribute ``name`` (never true for a name the store has no code for)."""
        if self.codes is None:
            return key == name
        code = self.codes.get(name)
        return sa.false() if code is None else key == code

    def in_(self, key: Any, names: Sequence[str]) -> Any:
        if self.codes is None:
            return key.in_(sorted(set(names)))
        return key.in_(sorted(self.codes[n] for n in set(names) if n in self.codes))

    def name(self, key: Any) -> str:
        """The name of the attribute a row's ``key`` stands for."""
        return str(key) if self.codes is None else self.names.get(int(key), str(key))


def _names(conn: Connection) -> _Names:
    """How the store behind ``conn`` names attributes (one look at its tables, and its small ``attributes``)."""
    if not sa.inspect(conn).has_table(s.attributes.name):
        return _Names.of(None)
    a = s.attributes
    return _Names.of({str(name): int(code) for name, code in conn.execute(sa.select(a.c.name, a.c.id))})


def available_tables(store: AttributeStore) -> set[str]:
    """The store's tables (an empty set for a store that was never migrated)."""
    with store.transaction("list the store's tables") as conn:
        return _tables(conn)


def duration_seconds(row: dict[str, Any]) -> float | None:
    start, end = row.get("started_at"), row.get("finished_at")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return (end - start).total_seconds()
    return None


# ---------------------------------------------------------------------------------------------- overview


@dataclass(frozen=True)
class Check:
    """One line of the health summary."""

    name: str
    state: str  # "ok" | "warn" | "bad" | "none"
    text: str


def health(
    store: AttributeStore,
    prediction_runs: list[dict[str, Any]],
    sync_runs: list[dict[str, Any]],
    now: datetime,
    tables: set[str],
) -> list[Check]:
    """Health at a glance: the last prediction run, each destination's last sync, quarantine and the run lock."""
    checks: list[Check] = []
    if not prediction_runs:
        checks.append(Check("Predictions", "none", "No prediction run yet: run `churnsync run`."))
    else:
        last = prediction_runs[0]
        age = now - last["started_at"]
        hours = age.total_seconds() / 3600
        state = {"succeeded": "ok", "running": "warn"}.get(last["status"], "bad")
        if state == "ok" and hours > 48:
            state = "warn"
        checks.append(
            Check(
                "Predictions",
                state,
                f"Run {last['id']} {last['status']}, started {hours:.1f} h ago, {last['customers_scored']:,} scored.",
            )
        )
    latest: dict[str, dict[str, Any]] = {}
    for run in sync_runs:
        latest.setdefault(run["destination"], run)
    if not latest:
        checks.append(Check("Syncs", "none", "No sync yet."))
    for name, run in sorted(latest.items()):
        state = {"succeeded": "ok", "running": "warn", "partial": "warn"}.get(run["status"], "bad")
        text = f"Run {run['id']} {run['status']}: {run['accepted']:,} accepted, {run['failed']:,} failed."
        if run.get("error"):
            text += f" {run['error']}"
        checks.append(Check(f"Sync to {name}", state, text))
    with store.transaction("read the health of the store") as conn:
        if "sync_object_failures" in tables:
            q = s.sync_object_failures
            quarantined = conn.execute(
                sa.select(sa.func.count()).select_from(q).where(q.c.quarantined_at.is_not(None))
            ).scalar_one()
            checks.append(
                Check("Quarantine", "warn" if quarantined else "ok", f"{quarantined:,} customers quarantined.")
            )
        if "sync_journal" in tables:
            j = s.sync_journal
            doubt = conn.execute(sa.select(sa.func.count()).select_from(j).where(j.c.status == "in_doubt")).scalar_one()
            checks.append(Check("Sync journal", "warn" if doubt else "ok", f"{doubt:,} requests in doubt."))
        if "store_lock" in tables:
            lock = conn.execute(sa.select(s.store_lock)).first()
            if lock is None:
                checks.append(Check("Run lock", "ok", "Free."))
            else:
                checks.append(
                    Check("Run lock", "warn", f"Held by {lock.owner} (pid {lock.pid}) since {lock.acquired_at:%c}.")
                )
    return checks


def tiers_over_time(prediction_runs: list[dict[str, Any]]) -> list[tuple[datetime, int, dict[str, int]]]:
    """(as_of, run id, customers per risk tier) of each succeeded run, oldest first, from the runs' summaries."""
    points = []
    for run in reversed(prediction_runs):
        counts = (run.get("summary") or {}).get("risk_counts")
        if run["status"] == "succeeded" and isinstance(counts, dict):
            points.append((run["as_of"], run["id"], {str(k): int(v) for k, v in counts.items()}))
    return points


# ---------------------------------------------------------------------------------------------- attributes


@dataclass(frozen=True)
class AttributeInfo:
    """One attribute in the current values: its kind and range."""

    name: str
    numeric: bool
    customers: int
    minimum: float | None
    maximum: float | None


def attributes(store: AttributeStore) -> list[AttributeInfo]:
    """Every attribute with a current value, by name; numeric when any value is a number."""
    with store.transaction("list the attributes") as conn:
        names = _names(conn)
        v = names.table(s.attribute_values)
        key = names.key(v)
        query = sa.select(
            key.label("key"),
            sa.func.count(v.c.num_value).label("nums"),
            sa.func.count(v.c.text_value).label("texts"),
            sa.func.min(v.c.num_value).label("lo"),
            sa.func.max(v.c.num_value).label("hi"),
        ).group_by(key)
        infos = [
            AttributeInfo(names.name(row.key), row.nums >= row.texts, row.nums + row.texts, row.lo, row.hi)
            for row in conn.execute(query)
        ]
    return sorted(infos, key=lambda info: info.name)


def customer_count(store: AttributeStore) -> int:
    v = s.attribute_values
    with store.transaction("count customers") as conn:
        return int(conn.execute(sa.select(sa.func.count(sa.distinct(v.c.customer_id)))).scalar_one())


@dataclass(frozen=True)
class Histogram:
    """Counts per bin; bin i covers [low + i*width, low + (i+1)*width)."""

    low: float
    width: float
    counts: list[int]

    @property
    def centers(self) -> list[float]:
        return [self.low + (i + 0.5) * self.width for i in range(len(self.counts))]


def _binned(
    dialect: str, is_attribute: Callable[[str], Any], value: Any, ranges: dict[str, tuple[float, float]], bins: int
) -> tuple[Any, dict[str, Histogram]]:
    """A bin index expression over several attributes at once (each with its own range), and empty histograms.

    ``is_attribute(name)`` is the condition that a row is of attribute ``name``.
    """
    empty: dict[str, Histogram] = {}
    whens = []
    for name, (low, high) in ranges.items():
        width = (high - low) / bins if high > low else 1.0
        empty[name] = Histogram(low, width, [0] * bins)
        whens.append((is_attribute(name), (value - low) / width))
    scaled = sa.case(*whens)
    # Values are at or above their low: truncation is floor. PostgreSQL's CAST rounds, so it gets floor() first.
    index = sa.cast(sa.func.floor(scaled) if dialect == "postgresql" else scaled, sa.Integer)
    return sa.case((index >= bins, bins - 1), else_=index), empty


def histograms(
    store: AttributeStore, infos: Sequence[AttributeInfo], *, bins: int = HISTOGRAM_BINS
) -> dict[str, Histogram]:
    """The distribution of every numeric attribute's current values, binned in SQL in one scan."""
    ranges = {
        i.name: (i.minimum, i.maximum)
        for i in infos
        if i.numeric
        and i.minimum is not None
        and i.maximum is not None
        and math.isfinite(i.minimum)
        and math.isfinite(i.maximum)
    }
    if not ranges:
        return {}
    with store.transaction("bin the current values") as conn:
        names = _names(conn)
        v = names.table(s.attribute_values)
        key = names.key(v)
        index, result = _binned(store.dialect, lambda name: names.is_(key, name), v.c.num_value, ranges, bins)
        query = (
            sa.select(key, index.label("bin"), sa.func.count())
            .where(names.in_(key, list(ranges)), v.c.num_value.is_not(None))
            .group_by(key, index)
        )
        for attribute, i, n in conn.execute(query):
            result[names.name(attribute)].counts[int(i)] += int(n)
    return result


def value_counts(store: AttributeStore, attributes: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """Customers per value of each text attribute (a segment or risk tier), largest first, in one scan."""
    if not attributes:
        return {}
    counts: dict[str, list[tuple[str, int]]] = {name: [] for name in attributes}
    with store.transaction("count the values of text attributes") as conn:
        names = _names(conn)
        v = names.table(s.attribute_values)
        key = names.key(v)
        n = sa.func.count().label("n")
        query = (
            sa.select(key, v.c.text_value, n)
            .where(names.in_(key, attributes), v.c.text_value.is_not(None))
            .group_by(key, v.c.text_value)
            .order_by(key, n.desc(), v.c.text_value)
        )
        for attribute, value, count in conn.execute(query):
            counts[names.name(attribute)].append((str(value), int(count)))
    return counts


@dataclass(frozen=True)
class Movement:
    """What the latest prediction run changed, compared with the values before it."""

    run_id: int
    previous_run_id: int | None
    changed_per_attribute: list[tuple[str, int]]
    transitions: dict[str, list[tuple[str, str, int]]]  # text attribute -> (old, new, customers)
    deltas: dict[str, Histogram]  # numeric attribute -> distribution of new - old


def movement(store: AttributeStore, run_id: int, previous_run_id: int | None, numeric: Sequence[str]) -> Movement:
    """How values moved in run ``run_id``: changes per attribute, tier transitions, and numeric deltas."""
    in_run = sa.true()
    with store.transaction(f"read the changes of run {run_id}") as conn:
        # Columns customer_id, attribute (the name), old_num, old_text, new_num, new_text on either revision.
        h = run_changes(
            run_id, None if _names(conn).coded else (_legacy(s.attribute_history), _legacy(s.attribute_values))
        )
        n = sa.func.count().label("n")
        per_attribute = [
            (str(a), int(c))
            for a, c in conn.execute(
                sa.select(h.c.attribute, n).where(in_run).group_by(h.c.attribute).order_by(h.c.attribute)
            )
        ]
        transitions: dict[str, list[tuple[str, str, int]]] = {}
        rows = conn.execute(
            sa.select(h.c.attribute, h.c.old_text, h.c.new_text, n)
            .where(in_run, sa.or_(h.c.old_text.is_not(None), h.c.new_text.is_not(None)))
            .group_by(h.c.attribute, h.c.old_text, h.c.new_text)
            .order_by(h.c.attribute, n.desc())
        )
        for attribute, old, new, count in rows:
            transitions.setdefault(attribute, []).append((old or "(none)", new or "(none)", int(count)))
        delta = h.c.new_num - h.c.old_num
        where = (in_run, h.c.attribute.in_(sorted(numeric)), h.c.old_num.is_not(None), h.c.new_num.is_not(None))
        ranges: dict[str, tuple[float, float]] = {}
        for attribute, lo, hi in conn.execute(
            sa.select(h.c.attribute, sa.func.min(delta), sa.func.max(delta)).where(*where).group_by(h.c.attribute)
        ):
            bound = max(abs(lo), abs(hi)) or 1.0
            ranges[str(attribute)] = (-bound, bound)
        deltas: dict[str, Histogram] = {}
        if ranges:
            index, deltas = _binned(store.dialect, lambda name: h.c.attribute == name, delta, ranges, HISTOGRAM_BINS)
            binned = (
                sa.select(h.c.attribute, index.label("bin"), sa.func.count())
                .where(*where)
                .group_by(h.c.attribute, index)
            )
            for attribute, i, c in conn.execute(binned):
                deltas[attribute].counts[int(i)] += int(c)
    return Movement(run_id, previous_run_id, per_attribute, transitions, deltas)


# ---------------------------------------------------------------------------------------------- customer


def _value(num: float | None, text: str | None) -> Value:
    return float(num) if num is not None else text


def _ack_key(ack: dict[str, Any]) -> tuple[Any, ...]:
    return (ack["destination"], ack["attribute"], ack["value"], ack["sync_run_id"], ack["acknowledged_at"])


def destination_view(store: AttributeStore, customer_id: str, tables: set[str]) -> dict[str, Any]:
    """What each destination holds for a customer, its acknowledgement log, and its refusals."""
    f, r = s.sync_failures, s.sync_runs
    with store.transaction(f"read what destinations hold for customer {customer_id}") as conn:
        legacy = None if _names(conn).coded else (_legacy(s.destination_acks), _legacy(s.destination_state))
        a = s.acknowledgements(customer_id, legacy)
        log = sa.select(a).order_by(a.c.acknowledged_at.desc(), a.c.latest.desc(), a.c.seq.desc())
        acks = [
            {
                "destination": row.destination,
                "attribute": row.attribute,
                "value": _value(row.num_value, row.text_value),
                "sync_run_id": row.sync_run_id,
                "acknowledged_at": row.acknowledged_at,
                "latest": bool(row.latest),
            }
            for row in conn.execute(log)
        ]
        # What each destination holds: the latest acknowledgement of each attribute; the log, newest first. A store
        # not yet at revision 0008 (the dashboard never migrates) also logs the latest ones: shown once.
        state = sorted((ack for ack in acks if ack["latest"]), key=lambda ack: (ack["destination"], ack["attribute"]))
        held = {_ack_key(ack) for ack in state}
        acks = [ack for ack in acks if ack["latest"] or _ack_key(ack) not in held][:500]
        failures = [
            dict(row._mapping)
            for row in conn.execute(
                sa.select(r.c.destination, f.c.sync_run_id, f.c.reason, r.c.started_at)
                .join(r, r.c.id == f.c.sync_run_id)
                .where(f.c.customer_id == customer_id)
                .order_by(f.c.sync_run_id.desc())
                .limit(100)
            )
        ]
        quarantine = None
        if "sync_object_failures" in tables:
            q = s.sync_object_failures
            quarantine = [
                dict(row._mapping) for row in conn.execute(sa.select(q).where(q.c.customer_id == customer_id))
            ]
        scored = None
        if "customers" in tables:
            c = s.customers
            row = conn.execute(sa.select(c).where(c.c.customer_id == customer_id)).first()
            scored = dict(row._mapping) if row is not None else None
            if scored is not None and scored["last_run_id"] == 0:  # revision 0009: scored by the latest write
                scored["last_run_id"] = conn.execute(s.latest_write_run()).scalar_one_or_none()
    return {"state": state, "acks": acks, "failures": failures, "quarantine": quarantine, "scored": scored}


def similar_customers(store: AttributeStore, prefix: str, limit: int = 20) -> list[str]:
    """Customer ids starting with ``prefix`` (for a lookup that found nothing)."""
    v = s.attribute_values
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = (
        sa.select(v.c.customer_id)
        .where(v.c.customer_id.like(f"{escaped}%", escape="\\"))
        .group_by(v.c.customer_id)
        .order_by(v.c.customer_id)
        .limit(limit)
    )
    with store.transaction("look up customer ids") as conn:
        return [str(cid) for (cid,) in conn.execute(query)]


# ---------------------------------------------------------------------------------------------- syncs


def sync_failures(store: AttributeStore, tables: set[str], *, limit: int = 200) -> dict[str, Any]:
    """Refusals grouped by reason, the latest refused customers, the quarantine and the journal's states."""
    f, r = s.sync_failures, s.sync_runs
    n = sa.func.count().label("n")
    with store.transaction("read sync failures") as conn:
        by_reason = [
            dict(row._mapping)
            for row in conn.execute(
                sa.select(r.c.destination, f.c.reason, n, sa.func.max(f.c.sync_run_id).label("last_run"))
                .join(r, r.c.id == f.c.sync_run_id)
                .group_by(r.c.destination, f.c.reason)
                .order_by(n.desc())
                .limit(100)
            )
        ]
        recent = [
            dict(row._mapping)
            for row in conn.execute(
                sa.select(f.c.sync_run_id, r.c.destination, f.c.customer_id, f.c.reason)
                .join(r, r.c.id == f.c.sync_run_id)
                .order_by(f.c.id.desc())
                .limit(limit)
            )
        ]
        quarantine = None
        if "sync_object_failures" in tables:
            q = s.sync_object_failures
            quarantine = [
                dict(row._mapping)
                for row in conn.execute(
                    sa.select(q).order_by(q.c.quarantined_at.is_(None), q.c.last_failed_at.desc()).limit(limit)
                )
            ]
        journal = None
        if "sync_journal" in tables:
            j = s.sync_journal
            journal = [
                dict(row._mapping)
                for row in conn.execute(
                    sa.select(j.c.destination, j.c.status, n)
                    .group_by(j.c.destination, j.c.status)
                    .order_by(j.c.destination, j.c.status)
                )
            ]
    return {"by_reason": by_reason, "recent": recent, "quarantine": quarantine, "journal": journal}


#: Keys whose values a payload preview never shows (Braze bodies carry none; a file edited by hand might).
_SECRET_KEY_WORDS = ("key", "token", "secret", "password", "authorization", "auth")
_PREVIEW_BYTES = 256 * 1024


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "***" if any(w in str(k).lower() for w in _SECRET_KEY_WORDS) else _redact(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def payload_preview(path: str, *, objects: int = 3) -> tuple[list[dict[str, Any]], str | None]:
    """The first ``objects`` attribute objects of a dry run's NDJSON file (secret-looking keys masked), or why not.

    Reads at most the first 256 KiB, and shows only what has the shape of a ``/users/track`` body.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(_PREVIEW_BYTES)
    except FileNotFoundError:
        return [], "the file no longer exists"
    except OSError as exc:
        return [], f"the file cannot be read ({exc.strerror or type(exc).__name__})"
    found: list[dict[str, Any]] = []
    lines = head.split(b"\n")
    if len(head) == _PREVIEW_BYTES:
        lines = lines[:-1]  # the last line may be cut short
    for line in lines:
        if len(found) >= objects or not line.strip():
            continue
        try:
            body = json.loads(line)
        except ValueError:
            return found, "the file is not a churnsync dry run (not NDJSON)"
        attributes = body.get("attributes") if isinstance(body, dict) else None
        if not isinstance(attributes, list):
            return found, "the file is not a churnsync dry run (no attributes in a request)"
        found.extend(_redact(o) for o in attributes[: objects - len(found)] if isinstance(o, dict))
    if not found:
        return [], "the file holds no request" if head.strip() == b"" else "no payload in the first 256 KiB"
    return found, None


def dry_runs(
    store: AttributeStore, tables: set[str], *, limit: int = 20, preview: int = 5
) -> list[dict[str, Any]] | None:
    """Recorded dry runs, newest first, each with a preview of its first objects (the newest ``preview`` runs);
    None when the store predates the dry-run table."""
    if "sync_dry_runs" not in tables:
        return None
    from churnsync.store import ledger

    runs = ledger.dry_runs(store, limit=limit)
    for index, run in enumerate(runs):
        if index < preview:
            run["preview"], run["preview_problem"] = payload_preview(str(run["path"]))
        else:
            run["preview"], run["preview_problem"] = [], "not previewed (older run)"
        run["preview_json"] = [json.dumps(o, indent=1, sort_keys=False) for o in run["preview"]]
    return runs


# ---------------------------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Filter:
    """One condition of a segment: ``attribute op value``."""

    attribute: str
    op: str
    value: float | str


def parse_filters(
    raw: Sequence[tuple[str, str, str]], known: Sequence[AttributeInfo]
) -> tuple[list[Filter], list[str]]:
    """Turn form rows into filters; blank rows are skipped, bad ones reported (one message each)."""
    by_name = {a.name: a for a in known}
    filters: list[Filter] = []
    problems: list[str] = []
    for attribute, op, value in raw:
        if not attribute or not value.strip():
            continue
        info = by_name.get(attribute)
        if info is None:
            problems.append(f"unknown attribute {attribute!r}")
            continue
        allowed = NUMERIC_OPS if info.numeric else TEXT_OPS
        if op not in allowed:
            problems.append(f"{attribute}: operator {op!r} is not one of {' '.join(allowed)}")
            continue
        if info.numeric:
            try:
                number = float(value)
            except ValueError:
                problems.append(f"{attribute}: {value!r} is not a number")
                continue
            if not math.isfinite(number):
                problems.append(f"{attribute}: {value!r} is not a finite number")
                continue
            filters.append(Filter(attribute, op, number))
        else:
            filters.append(Filter(attribute, op, value.strip()))
    return filters, problems


def _segment_query(names: _Names, filters: Sequence[Filter], columns: Sequence[AttributeInfo]) -> sa.Select[Any]:
    """One row per matching customer: its id and the ``columns`` values (pivoted from the long table)."""
    v = names.table(s.attribute_values)
    key = names.key(v)

    def pivot(name: str, numeric: bool) -> Any:
        column = v.c.num_value if numeric else v.c.text_value
        return sa.func.max(sa.case((names.is_(key, name), column)))

    compare = {
        ">=": lambda c, x: c >= x,
        ">": lambda c, x: c > x,
        "<=": lambda c, x: c <= x,
        "<": lambda c, x: c < x,
        "=": lambda c, x: c == x,
        "!=": lambda c, x: c != x,
    }
    numeric = {c.name: c.numeric for c in columns}
    # A customer without a value for a filtered attribute does not match (as in Braze: absent is neither > nor =).
    having = [compare[f.op](pivot(f.attribute, isinstance(f.value, float)), f.value) for f in filters]
    query = sa.select(v.c.customer_id, *(pivot(c.name, numeric[c.name]).label(c.name) for c in columns))
    if filters and not columns:  # a count reads only the filtered attributes' rows
        query = query.where(names.in_(key, [f.attribute for f in filters]))
    return query.group_by(v.c.customer_id).having(sa.and_(sa.true(), *having))


def segment_count(store: AttributeStore, filters: Sequence[Filter]) -> int:
    """How many customers match every filter."""
    with store.transaction("count a segment") as conn:
        query = _segment_query(_names(conn), filters, []).subquery("segment")
        return int(conn.execute(sa.select(sa.func.count()).select_from(query)).scalar_one())


def segment_preview(
    store: AttributeStore, filters: Sequence[Filter], columns: Sequence[AttributeInfo], *, limit: int = PREVIEW_ROWS
) -> list[dict[str, Any]]:
    """The first matching customers (by id) with their current values."""
    with store.transaction("preview a segment") as conn:
        query = _segment_query(_names(conn), filters, columns)
        query = query.order_by(query.selected_columns.customer_id).limit(limit)
        return [dict(row._mapping) for row in conn.execute(query)]


def segment_rows(
    store: AttributeStore, filters: Sequence[Filter], columns: Sequence[AttributeInfo], *, chunk: int = 10_000
) -> Iterator[list[tuple[Any, ...]]]:
    """Every matching customer with its values, streamed in chunks (for the CSV export)."""
    with store.transaction("export a segment") as conn:
        query = _segment_query(_names(conn), filters, columns)
        query = query.order_by(query.selected_columns.customer_id)
        result = conn.execution_options(yield_per=chunk).execute(query)
        while rows := result.fetchmany(chunk):
            yield [tuple(row) for row in rows]


_BRAZE_NUMBER = {
    ">": ["more than {v}"],
    "<": ["less than {v}"],
    "=": ["exactly {v}"],
    "!=": ["does not equal {v}"],
    ">=": ["more than {v}", "exactly {v}"],
    "<=": ["less than {v}", "exactly {v}"],
}
_BRAZE_TEXT = {"=": "equals {v}", "!=": "does not equal {v}"}


def braze_filters(filters: Sequence[Filter], prefix: str = "") -> list[str]:
    """The segment as Braze segment filters on custom attributes, one line per filter (AND between lines).

    Braze's number filters have no "at least": ``>=`` becomes "more than x OR exactly x".
    """
    lines = []
    for f in filters:
        name = f"{prefix}{f.attribute}"
        if isinstance(f.value, float):
            shown = f"{f.value:g}"
            options = [o.format(v=shown) for o in _BRAZE_NUMBER[f.op]]
            lines.append(" OR ".join(f"Custom Attribute '{name}' (number) {o}" for o in options))
        else:
            lines.append(f"Custom Attribute '{name}' (string) {_BRAZE_TEXT[f.op].format(v=f.value)}")
    if not lines:
        lines.append("(no filter: every customer with a prediction)")
    return lines


def ensure_store(tables: set[str], url: str) -> None:
    """Fail with a remedy when the URL points at something that is not (yet) a churnsync store."""
    if "attribute_values" not in tables or "prediction_runs" not in tables:
        raise StoreError(
            f"store {url} has no churnsync tables yet",
            remedy="Run `churnsync run` (or `churnsync demo`) against it first",
        )
