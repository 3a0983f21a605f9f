"""Change-driven selection stays exact: what it must not miss, checked against a brute-force reference (both engines).

After a destination's first selection, the store compares only candidate customers (marked by writes since its
watermark, left pending by earlier selections, or newly dropped by the mirror / TTL policy). These tests drive the
situations where a candidate set could miss someone and compare every selection with a reference computed in
Python from the current values, the acknowledged state and who was scored when.
"""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from churnsync.config import AttributeRule, AttributeSettings
from churnsync.errors import StoreError
from churnsync.records import BatchOutcome, Change, ObjectFailure, Value
from churnsync.store import AttributeStore
from churnsync.store import schema as s
from churnsync.store import store as store_module
from clocks import Clock

RULES = AttributeSettings(rules={"p": AttributeRule(round=2, abs_tolerance=0.02)})


@pytest.fixture(autouse=True, params=["by-candidates", "compare-all"])
def lookup_share(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a selection can go: candidates looked up (whatever their share), or every value compared.

    With few customers, the candidates are often above the share that switches to comparing everyone, so each
    test runs once with the switch off and once with it always on.
    """
    monkeypatch.setattr(store_module, "SELECT_LOOKUP_SHARE", 2.0 if request.param == "by-candidates" else 0.0)
    return str(request.param)


def write(store: AttributeStore, rows: dict[str, dict[str, Any]], *, status: str = "succeeded") -> int:
    """One prediction run scoring exactly ``rows`` (customer -> {"p": float, "tier": str})."""
    run = store.start_prediction_run(as_of=store._now(), horizon_days=30, model_version="m", details={})
    ids = sorted(rows)
    table = pa.table(
        {
            "customer_id": pa.array(ids, pa.string()),
            "p": pa.array([rows[i]["p"] for i in ids], pa.float64()),
            "tier": pa.array([rows[i]["tier"] for i in ids], pa.string()),
        }
    )
    store.write_predictions(run, table, RULES)
    store.finish_prediction_run(run, status=status, summary={})
    return run


def select(store: AttributeStore, destination: str, **policy: Any) -> dict[str, dict[str, Value]]:
    return {c.customer_id: dict(c.values) for chunk in store.select_changes(destination, **policy) for c in chunk}


def sync(
    store: AttributeStore,
    destination: str,
    *,
    accept: Callable[[str], bool] = lambda _c: True,
    fail: Callable[[str], bool] = lambda _c: False,
    **policy: Any,
) -> dict[str, dict[str, Value]]:
    """A sync run: ``accept``-ed customers acknowledged, ``fail``-ed refused, the rest never sent (a crash)."""
    selected = [c for chunk in store.select_changes(destination, **policy) for c in chunk]
    run = store.start_sync_run(destination, prediction_run_id=None)
    accepted = [c for c in selected if accept(c.customer_id) and not fail(c.customer_id)]
    failed = [ObjectFailure(c.customer_id, "refused") for c in selected if fail(c.customer_id)]
    if accepted or failed:
        store.record_batch(
            run, destination, BatchOutcome(seq=0, accepted=accepted, failed=failed, http_status=201, attempts=1)
        )
    return {c.customer_id: dict(c.values) for c in selected}


def reference(
    store: AttributeStore, db: sa.Engine, destination: str, *, mode: str = "upsert", ttl: timedelta | None = None
) -> dict[str, dict[str, Value]]:
    """What must be selected, from first principles: wanted value (policy applied) != acknowledged value."""
    runs = {r["id"]: r for r in store.prediction_runs(limit=10_000)}
    succeeded = [i for i, r in runs.items() if r["status"] == "succeeded"]
    latest = max(succeeded) if succeeded else None
    with db.connect() as conn:
        last_run = dict(conn.execute(sa.select(s.customers.c.customer_id, s.last_scored_run())).all())
    cutoff = None if ttl is None else store._now() - ttl
    acked = store.acknowledged_state(destination)
    expected: dict[str, dict[str, Value]] = {}
    for customer, values in store.current_values().items():
        scored_by = last_run[customer]
        dropped = (mode == "mirror" and latest is not None and scored_by < latest) or (
            cutoff is not None and runs[scored_by]["started_at"] < cutoff
        )
        for attribute, value in values.items():
            wanted = None if dropped else value
            if wanted != acked.get(customer, {}).get(attribute):
                expected.setdefault(customer, {})[attribute] = wanted
    return expected


def has_watermark(db: sa.Engine, destination: str) -> bool:
    with db.connect() as conn:
        query = sa.text("SELECT count(*) FROM selection_watermarks WHERE destination = :d")
        return bool(conn.execute(query, {"d": destination}).scalar_one())


ROWS = {
    "a": {"p": 0.10, "tier": "low"},
    "b": {"p": 0.50, "tier": "medium"},
    "c": {"p": 0.90, "tier": "high"},
}


def test_a_failed_sync_then_a_run_without_changes_still_resends_what_was_not_acknowledged(
    store: AttributeStore, db: sa.Engine
) -> None:
    write(store, ROWS)
    # a acknowledged, b refused by the destination, c never sent (the process died).
    first = sync(store, "braze", accept=lambda c: c == "a", fail=lambda c: c == "b")
    assert set(first) == {"a", "b", "c"} and has_watermark(db, "braze")
    write(store, ROWS)  # the same predictions: nothing changes, nobody is marked
    assert select(store, "braze") == {"b": ROWS["b"], "c": ROWS["c"]}
    # Still pending after a selection that nobody acknowledged (a dry run, a budget stop, a quarantine skip).
    assert select(store, "braze") == {"b": ROWS["b"], "c": ROWS["c"]}
    sync(store, "braze")
    assert select(store, "braze") == {}
    write(store, ROWS)
    assert select(store, "braze") == {}


def test_a_ttl_expiry_without_a_new_run_nulls_out(store: AttributeStore, clock: Clock) -> None:
    write(store, ROWS)
    sync(store, "braze", ttl=timedelta(days=7))
    assert select(store, "braze", ttl=timedelta(days=7)) == {}
    clock.advance(days=8)  # no run since: every prediction is older than the TTL
    nulls = {c: {"p": None, "tier": None} for c in ROWS}
    assert select(store, "braze", ttl=timedelta(days=7)) == nulls
    sync(store, "braze", ttl=timedelta(days=7))
    assert select(store, "braze", ttl=timedelta(days=7)) == {}
    # Scored again with unchanged values: no value changed, but the destination must get them back.
    write(store, {"a": ROWS["a"]})
    assert select(store, "braze", ttl=timedelta(days=7)) == {"a": ROWS["a"]}
    # A longer TTL brings the others back too (a policy change compares everyone).
    assert select(store, "braze", ttl=timedelta(days=30)) == {"a": ROWS["a"], "b": ROWS["b"], "c": ROWS["c"]}


def test_mirror_drops_and_brings_back_customers_without_value_changes(store: AttributeStore) -> None:
    write(store, ROWS)
    sync(store, "braze", mode="mirror")
    write(store, {"a": ROWS["a"], "c": ROWS["c"]})  # b no longer scored; nobody's values changed
    assert select(store, "braze", mode="mirror") == {"b": {"p": None, "tier": None}}
    sync(store, "braze", mode="mirror")
    write(store, {"a": ROWS["a"], "c": ROWS["c"]})
    assert select(store, "braze", mode="mirror") == {}
    write(store, ROWS)  # b is back, with the values it had
    assert select(store, "braze", mode="mirror") == {"b": ROWS["b"]}


def test_a_destination_added_later_gets_everyone_and_two_destinations_keep_their_own_point(
    store: AttributeStore, db: sa.Engine
) -> None:
    write(store, ROWS)
    sync(store, "braze")
    changed = {**ROWS, "a": {"p": 0.40, "tier": "low"}}
    write(store, changed)
    assert select(store, "braze") == {"a": {"p": 0.40}}
    assert not has_watermark(db, "braze-eu")
    assert select(store, "braze-eu") == changed  # never synced: everyone, every attribute
    sync(store, "braze-eu")
    # braze has not acknowledged a's change yet; braze-eu has everything.
    assert select(store, "braze") == {"a": {"p": 0.40}}
    assert select(store, "braze-eu") == {}
    write(store, {**changed, "d": {"p": 0.2, "tier": "low"}})
    assert select(store, "braze") == {"a": {"p": 0.40}, "d": {"p": 0.2, "tier": "low"}}
    assert select(store, "braze-eu") == {"d": {"p": 0.2, "tier": "low"}}


@pytest.mark.parametrize("lookup_share", ["by-candidates"], indirect=True)
def test_selection_compares_only_candidates_once_a_destination_has_a_watermark(
    store: AttributeStore, db: sa.Engine
) -> None:
    """The mechanism itself: a change made behind the store's back is not seen until a full comparison."""
    write(store, ROWS)
    sync(store, "braze")
    assert select(store, "braze") == {}  # everything acknowledged: nothing pending any more
    with db.begin() as conn:  # not a path churnsync takes: only to show which rows a selection reads
        conn.execute(
            sa.text(
                "UPDATE destination_state SET text_value = 'tampered' WHERE customer_id = 'c' "
                "AND attribute_id = (SELECT id FROM attributes WHERE name = 'tier')"
            )
        )
    write(store, {**ROWS, "a": {"p": 0.40, "tier": "low"}})
    assert select(store, "braze") == {"a": {"p": 0.40}}  # c is not a candidate: not read
    # A new policy compares everyone again.
    assert select(store, "braze", mode="mirror") == {"a": {"p": 0.40}, "c": {"tier": "high"}}


def test_a_streamed_write_marks_like_a_whole_one(store: AttributeStore) -> None:
    write(store, ROWS)
    sync(store, "braze")
    run = store.start_prediction_run(as_of=store._now(), horizon_days=30, model_version="m", details={})
    chunks = [
        pa.table({"customer_id": ["a"], "p": [0.45], "tier": ["low"]}),
        pa.table({"customer_id": ["b", "c"], "p": [0.5, 0.9], "tier": ["medium", "low"]}).to_batches()[0],
    ]
    summary = store.write_predictions(run, iter(chunks), RULES)
    store.finish_prediction_run(run, status="succeeded", summary={})
    assert summary.customers_scored == 3 and summary.values_changed == 2
    assert select(store, "braze") == {"a": {"p": 0.45}, "c": {"tier": "low"}}


def test_a_write_rewrites_only_the_customers_whose_record_changes(store: AttributeStore, db: sa.Engine) -> None:
    """A last_run_id of 0 stands for the latest write's run (0009): a write leaves the others' rows as they are."""
    c = s.customers

    def rows() -> dict[str, tuple[int, int]]:
        with db.connect() as conn:
            query = sa.select(c.c.customer_id, c.c.first_run_id, c.c.last_run_id)
            return {r[0]: (r[1], r[2]) for r in conn.execute(query)}

    def last_scored() -> dict[str, int]:
        with db.connect() as conn:
            return dict(conn.execute(sa.select(c.c.customer_id, s.last_scored_run())).all())

    def versions() -> dict[str, str]:
        """PostgreSQL: the transaction that wrote each customer's row version (a rewrite changes it)."""
        with db.connect() as conn:
            return dict(conn.execute(sa.text("SELECT customer_id, xmin::text FROM customers")).all())

    postgres = db.dialect.name == "postgresql"
    first = write(store, {**ROWS, "d": {"p": 0.3, "tier": "low"}})
    assert rows() == {k: (first, 0) for k in "abcd"}
    before = versions() if postgres else {}
    # a scored again unchanged, b changed, c and d not scored, e new.
    second = write(store, {"a": ROWS["a"], "b": {"p": 0.7, "tier": "high"}, "e": {"p": 0.2, "tier": "low"}})
    assert rows() == {"a": (first, 0), "b": (first, 0), "c": (first, first), "d": (first, first), "e": (second, 0)}
    assert last_scored() == {"a": second, "b": second, "c": first, "d": first, "e": second}
    if postgres:
        after = versions()
        assert [k for k in "abcd" if after[k] == before[k]] == ["a"]  # b marked, c and d written out
    # c comes back; b and e, scored by the previous write only, get its run written out.
    third = write(store, {"a": ROWS["a"], "c": ROWS["c"]})
    assert last_scored() == {"a": third, "b": second, "c": third, "d": first, "e": second}
    assert rows()["c"] == (first, 0) and rows()["b"] == (first, second)
    # A second write of the same run (a run written in parts) keeps the first part's customers scored by it.
    run = store.start_prediction_run(as_of=store._now(), horizon_days=30, model_version="m", details={})
    store.write_predictions(run, pa.table({"customer_id": ["a"], "p": [0.1], "tier": ["low"]}), RULES)
    store.write_predictions(run, pa.table({"customer_id": ["b"], "p": [0.7], "tier": ["high"]}), RULES)
    store.finish_prediction_run(run, status="succeeded", summary={})
    assert last_scored() == {"a": run, "b": run, "c": third, "d": first, "e": second}
    assert select(store, "braze", mode="mirror") == {"a": ROWS["a"], "b": {"p": 0.7, "tier": "high"}}


@pytest.mark.parametrize("seed", [1, 2])
def test_random_runs_syncs_and_failures_select_exactly_the_reference(
    store: AttributeStore, db: sa.Engine, clock: Clock, seed: int
) -> None:
    """Writes (some customers dropped, some back, some failed runs), partial syncs and time passing, two policies."""
    random_runs_select_exactly_the_reference(store, db, clock, seed=seed)


def random_runs_select_exactly_the_reference(store: AttributeStore, db: sa.Engine, clock: Clock, *, seed: int) -> None:
    rng = random.Random(seed)
    customers = [f"c{i:02d}" for i in range(24)]
    values = {c: {"p": round(rng.random(), 2), "tier": rng.choice(["low", "high"])} for c in customers}
    policies: dict[str, dict[str, Any]] = {
        "mirror-ttl": {"mode": "mirror", "ttl": timedelta(days=5)},
        "upsert": {"mode": "upsert"},
    }
    for step in range(14):
        action = rng.choice(["write", "write", "sync", "sync", "time"])
        if action == "write":
            for c in rng.sample(customers, 6):
                values[c] = {
                    "p": round(min(1.0, max(0.0, values[c]["p"] + rng.choice([-0.01, 0.01, 0.3, -0.3]))), 2),
                    "tier": rng.choice(["low", "high", values[c]["tier"]]),
                }
            scored = rng.sample(customers, rng.randint(12, 24))
            write(store, {c: values[c] for c in scored}, status=rng.choice(["succeeded", "succeeded", "failed"]))
        elif action == "time":
            clock.advance(days=rng.choice([1, 3, 6]))
        else:
            name = rng.choice(sorted(policies))
            accepted = set(rng.sample(customers, 16))
            refused = set(rng.sample(customers, 3))
            sync(store, name, accept=accepted.__contains__, fail=refused.__contains__, **policies[name])
        if step == 7:
            policies["late"] = {"mode": "upsert", "ttl": timedelta(days=4)}  # a destination added later
        for name, policy in policies.items():
            assert select(store, name, **policy) == reference(store, db, name, **policy), (step, action, name)


def test_the_selected_values_are_exactly_the_changes(store: AttributeStore) -> None:
    write(store, ROWS)
    selected = [c for chunk in store.select_changes("braze", chunk_size=2) for c in chunk]
    assert [c.customer_id for c in selected] == ["a", "b", "c"]
    assert all(isinstance(c, Change) for c in selected)


#: Doubles whose text forms go wrong in the usual ways: shortest repr, whole numbers (an int in JSON), the 15- and
#: 17-digit edges, exponents both ways, subnormal and the largest finite double (on SQLite, numbers from 2**256 on are
#: written scaled by 2**-256, 2**-512 or 2**-768: 1e100, -1e200 and 1e300 take one each).
AWKWARD_NUMBERS = [
    0.1 + 0.2,
    1e-7,
    5.0,
    -3.0,
    0.0,
    123456789012345.0,
    999999999999999.0,
    1e15,
    2.0**53,
    2.0**53 + 2,
    1e100,
    -1e200,
    1e300,
    5e-324,
    -2.5,
    1.7976931348623157e308,
    0.30000000000000004,
    2 / 3,
]
AWKWARD_TEXTS = ['a "quoted" word', "back\\slash", "new\nline", "tab\t", "é ✓ 🙂", "", "null", "5.0", "{}"]


def test_selected_values_read_back_exactly_with_their_types(store: AttributeStore) -> None:
    """Numbers come back as the same double and as floats (never ints), texts as the same string."""
    selects_awkward_values_exactly(store)
    if store.dialect == "sqlite":  # this SQLite writes its numbers exactly: the selection was read as JSON objects
        assert store._documents_exact is True


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_sqlite_reads_the_selection_as_rows_where_its_json_numbers_are_inexact(
    store: AttributeStore, db: sa.Engine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite library whose JSON numbers do not read back exactly: the selection is read as rows, just as exact."""
    monkeypatch.setattr(store_module, "JSON_NUMBER_FORMAT", "%!.15g")  # SQLite's own JSON: 15 digits
    selects_awkward_values_exactly(store)
    assert store._documents_exact is False
    random_runs_select_exactly_the_reference(store, db, clock, seed=3)


def selects_awkward_values_exactly(store: AttributeStore) -> None:
    count = max(len(AWKWARD_NUMBERS), len(AWKWARD_TEXTS))
    ids = [f"c{i:02d}" for i in range(count)]
    numbers = [AWKWARD_NUMBERS[i % len(AWKWARD_NUMBERS)] for i in range(count)]
    texts = [AWKWARD_TEXTS[i % len(AWKWARD_TEXTS)] for i in range(count)]
    run = store.start_prediction_run(as_of=store._now(), horizon_days=30, model_version="m", details={})
    table = pa.table({"customer_id": ids, "n": pa.array(numbers, pa.float64()), "t": pa.array(texts, pa.string())})
    store.write_predictions(run, table, AttributeSettings(rules={}))
    store.finish_prediction_run(run, status="succeeded", summary={})
    selected = select(store, "braze")
    assert selected == {i: {"n": n, "t": t} for i, n, t in zip(ids, numbers, texts, strict=True)}
    assert all(type(values["n"]) is float for values in selected.values())
    assert str(selected["c01"]["n"]) == "1e-07" and math.copysign(1.0, selected["c04"]["n"]) == 1.0


def test_the_selection_leaves_the_cycle_collector_as_it_found_it(store: AttributeStore) -> None:
    """The collector is paused only while a chunk is built: on between chunks, off if the caller had it off."""
    write(store, {f"c{i:03d}": {"p": i / 1000, "tier": "low"} for i in range(30)})
    states = [gc.isenabled() for _chunk in store.select_changes("braze", chunk_size=7)]
    assert states == [True] * 5 and gc.isenabled()
    gc.disable()
    try:  # nothing was acknowledged: the same 30 customers again
        states = [gc.isenabled() for _chunk in store.select_changes("braze", chunk_size=7)]
        assert states == [False] * 5 and not gc.isenabled()
    finally:
        gc.enable()


def test_each_change_lists_its_attributes_in_name_order(store: AttributeStore) -> None:
    """The payload's key order is the same from run to run, whatever the order of the predictions' columns."""
    run = store.start_prediction_run(as_of=store._now(), horizon_days=30, model_version="m", details={})
    table = pa.table({"customer_id": ["a", "b"], "zeta": [1.5, 2.5], "alpha": ["x", "y"], "mid": [0.25, None]})
    store.write_predictions(run, table, AttributeSettings(rules={}))
    store.finish_prediction_run(run, status="succeeded", summary={})
    changes = [c for chunk in store.select_changes("braze") for c in chunk]
    assert [(c.customer_id, list(c.values)) for c in changes] == [
        ("a", ["alpha", "mid", "zeta"]),
        ("b", ["alpha", "zeta"]),
    ]


def test_postgresql_selects_the_same_through_a_server_cursor_as_through_a_chunked_stream(
    postgres_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a libpq older than 17 (no chunked rows), the selection is read through a server-side cursor instead."""
    with AttributeStore.open(postgres_url, clock=clock) as pg:
        write(pg, {f"c{i:03d}": {"p": i / 1000, "tier": "low" if i % 2 else "high"} for i in range(250)})
        streamed = [c for chunk in pg.select_changes("braze", chunk_size=7) for c in chunk]
        with pg._engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM selection_watermarks"))
        monkeypatch.setattr(store_module, "CHUNKED_ROWS_LIBPQ", 10**9)
        monkeypatch.setattr(store_module, "SELECT_FETCH_ROWS", 40)  # several round trips
        by_cursor = [c for chunk in pg.select_changes("braze", chunk_size=7) for c in chunk]
    assert len(streamed) == 250 and by_cursor == streamed


def test_postgresql_an_error_while_reading_the_stream_surfaces_and_leaves_the_store_usable(
    postgres_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error raised between two rows of the stream (here: building a change) ends the selection, instead of waiting
    forever."""
    with AttributeStore.open(postgres_url, clock=clock) as pg:
        write(pg, {f"c{i:03d}": {"p": 0.5, "tier": "low"} for i in range(100)})
        calls = iter(range(1_000))

        def failing_change(customer_id: str, values: Any) -> Change:
            if next(calls) == 40:
                raise ValueError("unreadable row")
            return Change(customer_id, values)

        with monkeypatch.context() as patched, pytest.raises(ValueError, match="unreadable row"):
            patched.setattr(store_module, "Change", failing_change)
            select(pg, "braze")
        assert len(select(pg, "braze")) == 100


def test_postgresql_a_slow_sync_outlasts_a_statement_timeout_set_for_the_store(postgres_url: str, clock: Clock) -> None:
    """The selection streams as one statement for as long as the sync reads it; a role's statement_timeout is no limit.

    The result is larger than the socket's buffers, so the server is still sending when the consumer, sleeping
    between chunks, passes the timeout. The timeout leaves room for the selection's other statements, which it still
    limits (on a slow machine the pending set of 60,000 customers took more than 300 ms).
    """
    with AttributeStore.open(postgres_url, clock=clock) as pg:
        write(pg, {f"c{i:06d}": {"p": 0.123456789, "tier": "x" * 200} for i in range(60_000)})
    with AttributeStore.open(f"{postgres_url}%20-cstatement_timeout%3D2000", clock=clock) as limited:
        with pytest.raises(sa.exc.OperationalError, match="statement timeout"), limited._engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_sleep(2.5)")  # the limit holds for the store's connections
        started, seen = time.monotonic(), 0
        for chunk in limited.select_changes("braze", chunk_size=2_000):
            seen += len(chunk)
            if time.monotonic() - started < 3.0:
                time.sleep(0.2)
    assert seen == 60_000


@pytest.mark.parametrize("end", ["pg_cancel_backend", "pg_terminate_backend"])
def test_postgresql_a_stream_cancelled_or_cut_off_is_a_store_error(postgres_url: str, clock: Clock, end: str) -> None:
    """A query cancelled (the connection lives on) or a connection lost while the sync reads: a one-line StoreError."""
    admin = sa.create_engine(postgres_url)
    with AttributeStore.open(postgres_url, clock=clock) as pg:
        write(pg, {f"c{i:06d}": {"p": 0.5, "tier": "x" * 200} for i in range(60_000)})
        stream = pg.select_changes("braze", chunk_size=1_000)
        next(stream)
        with admin.begin() as conn:
            ended = conn.execute(
                sa.text(
                    f"SELECT {end}(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'churnsync' AND query LIKE 'SELECT changes.customer_id%'"
                )
            ).scalars()
            assert list(ended) == [True]
        with pytest.raises(StoreError, match="cannot select the changes for braze"):
            for _ in stream:
                pass
        assert len(select(pg, "braze")) == 60_000  # nothing was acknowledged: the next selection has everyone
    admin.dispose()


def test_a_consumer_that_stops_early_leaves_no_query_running(store: AttributeStore, db: sa.Engine) -> None:
    write(store, {f"c{i:04d}": {"p": 0.5, "tier": "low"} for i in range(3000)})
    stream = store.select_changes("braze", chunk_size=10)
    first = next(stream)
    stream.close()
    assert len(first) == 10
    if store.dialect == "postgresql":
        with db.connect() as conn:
            busy = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'churnsync' AND state <> 'idle'"
                )
            ).scalar_one()
        assert busy == 0
    assert len(select(store, "braze")) == 3000  # the selection is whole again (nothing was acknowledged)


def pending(db: sa.Engine, destination: str) -> set[str]:
    with db.connect() as conn:
        query = sa.text("SELECT customer_id FROM selection_pending WHERE destination = :d")
        return set(conn.execute(query, {"d": destination}).scalars())


@pytest.mark.parametrize("lookup_share", ["by-candidates"], indirect=True)
def test_acknowledged_customers_leave_the_pending_set_and_refused_ones_stay(
    store: AttributeStore, db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Candidates looked up however many they are (PostgreSQL counts a never-analysed table as empty).
    monkeypatch.setattr(store_module, "SELECT_LOOKUP_SHARE", 1e9)
    write(store, ROWS)
    sync(store, "braze", accept=lambda c: c != "c", fail=lambda c: c == "b")
    assert pending(db, "braze") == {"b", "c"}  # b refused, c never sent: both still to send
    # The next selection compares the two pending customers and the one the write marks, not a.
    with db.begin() as conn:  # behind the store's back, to show that a (acknowledged) is not read again
        tamper = (
            "UPDATE destination_state SET text_value = 'x' WHERE customer_id = 'a' "
            "AND attribute_id = (SELECT id FROM attributes WHERE name = 'tier')"
        )
        conn.execute(sa.text(tamper))
    write(store, {**ROWS, "d": {"p": 0.2, "tier": "low"}})
    assert set(select(store, "braze")) == {"b", "c", "d"}
    sync(store, "braze")
    assert pending(db, "braze") == set()
    assert select(store, "braze") == {}
