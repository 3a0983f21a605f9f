"""The attribute store on real SQLite and real PostgreSQL: change detection, selection, acknowledgement, history."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from churnsync.config import AttributeRule, AttributeSettings
from churnsync.errors import StoreError
from churnsync.records import BatchOutcome, Change, ObjectFailure, SyncCounts, Value
from churnsync.store import AttributeStore, WriteSummary
from churnsync.web.queries import destination_view
from clocks import Clock

RULES = AttributeSettings(rules={"churn_probability": AttributeRule(round=2, abs_tolerance=0.02)})
EXACT = AttributeSettings(rules={})


def write(
    store: AttributeStore, columns: dict[str, list[Any]], rules: AttributeSettings = RULES
) -> tuple[int, WriteSummary]:
    """One whole prediction run of ``columns`` (customer_id plus attributes)."""
    run = store.start_prediction_run(
        as_of=datetime(2026, 6, 1, tzinfo=UTC), horizon_days=30, model_version="test-1", details={"k": 1}
    )
    summary = store.write_predictions(run, pa.table(columns), rules)
    store.finish_prediction_run(run, status="succeeded", summary={"values_changed": summary.values_changed})
    return run, summary


def changes(store: AttributeStore, destination: str = "braze", chunk_size: int = 5000) -> dict[str, dict[str, Value]]:
    return {
        c.customer_id: dict(c.values)
        for chunk in store.select_changes(destination, chunk_size=chunk_size)
        for c in chunk
    }


def acknowledge(
    store: AttributeStore,
    destination: str = "braze",
    *,
    fail: dict[str, str] | None = None,
    seq: int = 0,
    prediction_run_id: int | None = None,
) -> int:
    """A sync run that sends every change in one batch; customers in ``fail`` are refused with that reason."""
    fail = fail or {}
    sync = store.start_sync_run(destination, prediction_run_id=prediction_run_id)
    selected = [c for chunk in store.select_changes(destination) for c in chunk]
    outcome = BatchOutcome(
        seq=seq,
        accepted=[c for c in selected if c.customer_id not in fail],
        failed=[ObjectFailure(c.customer_id, fail[c.customer_id]) for c in selected if c.customer_id in fail],
        http_status=201,
        attempts=1,
    )
    store.record_batch(sync, destination, outcome)
    counts = SyncCounts(
        selected=len(selected),
        sent=len(selected),
        accepted=len(outcome.accepted),
        failed=len(outcome.failed),
        data_points=outcome.data_points,
        requests=1,
    )
    store.finish_sync_run(sync, status="partial" if fail else "succeeded", counts=counts)
    return sync


def test_round_trip_write_select_record_then_nothing_left(store: AttributeStore) -> None:
    run, summary = write(
        store,
        {
            "customer_id": ["c1", "c2", "c3"],
            "churn_probability": [0.123, 0.5, None],
            "churn_risk": ["low", "medium", "high"],
        },
    )
    assert summary == WriteSummary(customers_scored=3, customers_new=3, customers_changed=3, values_changed=5)
    assert changes(store) == {
        "c1": {"churn_probability": 0.12, "churn_risk": "low"},
        "c2": {"churn_probability": 0.5, "churn_risk": "medium"},
        "c3": {"churn_risk": "high"},
    }
    selected = [c for chunk in store.select_changes("braze") for c in chunk]
    assert all(isinstance(c, Change) for c in selected)
    assert isinstance(selected[0].values["churn_probability"], float)
    acknowledge(store, prediction_run_id=run)
    assert changes(store) == {}
    # The same predictions again change nothing and select nothing.
    _, again = write(
        store,
        {
            "customer_id": ["c1", "c2", "c3"],
            "churn_probability": [0.123, 0.5, None],
            "churn_risk": ["low", "medium", "high"],
        },
    )
    assert again == WriteSummary(customers_scored=3, customers_new=0, customers_changed=0, values_changed=0)
    assert changes(store) == {}


def test_updated_at_moves_only_on_a_real_change(store: AttributeStore, db: sa.Engine, clock: Clock) -> None:
    write(store, {"customer_id": ["a", "b"], "churn_probability": [0.30, 0.60], "churn_risk": ["low", "medium"]})
    first = clock.now
    clock.advance(days=1)
    _, summary = write(
        store, {"customer_id": ["a", "b"], "churn_probability": [0.301, 0.90], "churn_risk": ["low", "high"]}
    )
    assert summary.customers_changed == 1 and summary.values_changed == 2
    with db.connect() as conn:
        named = "attribute_values JOIN attributes ON id = attribute_id"
        rows = conn.execute(sa.text(f"SELECT customer_id, name AS attribute, updated_at FROM {named}")).all()
    stamps = {(r.customer_id, r.attribute): as_utc(r.updated_at) for r in rows}
    assert stamps == {
        ("a", "churn_probability"): first,
        ("a", "churn_risk"): first,
        ("b", "churn_probability"): clock.now,
        ("b", "churn_risk"): clock.now,
    }


def as_utc(value: datetime | str) -> datetime:
    """A timestamp read with plain SQL: SQLite gives UTC text, PostgreSQL an aware datetime."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.astimezone(UTC)


def test_rounding_and_tolerance_decide_what_is_a_change(store: AttributeStore) -> None:
    write(store, {"customer_id": ["x"], "churn_probability": [0.501]})
    assert store.current_values("x") == {"x": {"churn_probability": 0.5}}
    acknowledge(store)
    _, summary = write(store, {"customer_id": ["x"], "churn_probability": [0.509]})  # 0.51: moved 0.01 < 0.02
    assert summary.values_changed == 0
    assert store.current_values("x") == {"x": {"churn_probability": 0.5}}
    assert changes(store) == {}
    _, summary = write(store, {"customer_id": ["x"], "churn_probability": [0.53]})
    assert summary.values_changed == 1
    assert changes(store) == {"x": {"churn_probability": 0.53}}


def test_a_move_of_exactly_the_tolerance_counts_despite_binary_rounding(store: AttributeStore) -> None:
    assert 0.58 - 0.56 < 0.02  # the trap
    write(store, {"customer_id": ["x", "y"], "churn_probability": [0.56, 0.3]})
    _, summary = write(store, {"customer_id": ["x", "y"], "churn_probability": [0.58, 0.31]})
    assert (summary.values_changed, store.current_values()["x"]["churn_probability"]) == (1, 0.58)


def test_zero_tolerance_compares_exactly_and_text_compares_as_text(store: AttributeStore) -> None:
    write(store, {"customer_id": ["x"], "clv": [100.0], "last_seen": ["2026-06-01T00:00:00Z"]}, EXACT)
    _, same = write(store, {"customer_id": ["x"], "clv": [100.0], "last_seen": ["2026-06-01T00:00:00Z"]}, EXACT)
    assert same.values_changed == 0
    _, moved = write(store, {"customer_id": ["x"], "clv": [100.0000001], "last_seen": ["2026-06-02T00:00:00Z"]}, EXACT)
    assert moved.values_changed == 2
    assert store.current_values("x") == {"x": {"clv": 100.0000001, "last_seen": "2026-06-02T00:00:00Z"}}


def test_null_transitions(store: AttributeStore) -> None:
    _, first = write(store, {"customer_id": ["n"], "churn_probability": [None], "churn_risk": ["low"]})
    assert first.values_changed == 1  # a first null is no change: missing and null are the same
    assert changes(store) == {"n": {"churn_risk": "low"}}
    acknowledge(store)
    _, appear = write(store, {"customer_id": ["n"], "churn_probability": [0.4], "churn_risk": ["low"]})
    assert appear.values_changed == 1
    assert changes(store) == {"n": {"churn_probability": 0.4}}
    acknowledge(store)
    _, vanish = write(store, {"customer_id": ["n"], "churn_probability": [float("nan")], "churn_risk": [None]})
    assert vanish.values_changed == 2
    assert changes(store) == {"n": {"churn_probability": None, "churn_risk": None}}
    acknowledge(store)
    assert store.acknowledged_state("braze") == {"n": {"churn_probability": None, "churn_risk": None}}
    assert changes(store) == {}
    history = store.history("n")
    assert [(e.attribute, e.old_value, e.new_value) for e in history] == [
        ("churn_risk", None, "low"),
        ("churn_probability", None, 0.4),
        ("churn_probability", 0.4, None),
        ("churn_risk", "low", None),
    ]


def test_history_has_old_and_new_values_runs_validity_and_acknowledgements(store: AttributeStore, clock: Clock) -> None:
    run1, _ = write(store, {"customer_id": ["h", "other"], "churn_probability": [0.2, 0.9]})
    t1 = clock.now
    clock.advance(hours=1)
    acknowledge(store, "braze")
    ack_braze = clock.now
    clock.advance(hours=1)
    run2, _ = write(store, {"customer_id": ["h", "other"], "churn_probability": [0.7, 0.9]})
    t2 = clock.now
    clock.advance(hours=1)
    acknowledge(store, "braze")
    acknowledge(store, "eu")  # a second destination sees only the current value
    ack_both = clock.now
    history = store.history("h")
    assert [(e.old_value, e.new_value, e.prediction_run_id) for e in history] == [(None, 0.2, run1), (0.2, 0.7, run2)]
    assert [e.changed_at for e in history] == [t1, t2]
    assert history[0].valid_to == t2 and history[1].valid_to is None
    assert history[0].acknowledged == {"braze": ack_braze}
    assert history[1].acknowledged == {"braze": ack_both, "eu": ack_both}
    assert all(e.model_version == "test-1" and e.changed_at.tzinfo is not None for e in history)
    assert store.history("nobody") == []


def test_an_acknowledgement_is_written_once_and_moves_to_the_log_when_replaced(
    store: AttributeStore, db: sa.Engine, clock: Clock
) -> None:
    write(store, {"customer_id": ["a", "b"], "churn_probability": [0.2, 0.4]})
    first = acknowledge(store)
    clock.advance(hours=1)
    write(store, {"customer_id": ["a", "b"], "churn_probability": [0.7, 0.4]})
    second = acknowledge(store)
    log = "SELECT customer_id, num_value, sync_run_id FROM destination_acks ORDER BY id"
    state = "SELECT customer_id, num_value, sync_run_id FROM destination_state ORDER BY customer_id"
    with db.connect() as conn:
        # The latest acknowledgement of each key is in the state only; a's first one moved to the log when replaced.
        assert [tuple(r) for r in conn.execute(sa.text(state))] == [("a", 0.7, second), ("b", 0.4, first)]
        assert [tuple(r) for r in conn.execute(sa.text(log))] == [("a", 0.2, first)]
    # Acknowledged again with the same value (a resend): the log still gets the one it replaced.
    sync = store.start_sync_run("braze", prediction_run_id=None)
    resend = BatchOutcome(
        seq=0, accepted=[Change("a", {"churn_probability": 0.7})], failed=[], http_status=201, attempts=1
    )
    store.record_batch(sync, "braze", resend)
    with db.connect() as conn:
        assert [tuple(r) for r in conn.execute(sa.text(log))] == [("a", 0.2, first), ("a", 0.7, second)]
        assert conn.execute(sa.text(state)).first() == ("a", 0.7, sync)
    acknowledged = [(e.new_value, e.acknowledged) for e in store.history("a")]
    assert [value for value, _ in acknowledged] == [0.2, 0.7]
    assert all(set(destinations) == {"braze"} for _, destinations in acknowledged)
    # The dashboard's customer page: what the destination holds (the latest), and the whole log, newest first.
    view = destination_view(store, "a", set())
    assert [(r["value"], r["sync_run_id"]) for r in view["state"]] == [(0.7, sync)]
    assert [(r["value"], r["sync_run_id"]) for r in view["acks"]] == [(0.7, sync), (0.7, second), (0.2, first)]


def test_partial_acceptance_keeps_failed_customers_selected(store: AttributeStore, db: sa.Engine) -> None:
    write(store, {"customer_id": ["ok1", "bad", "ok2"], "churn_probability": [0.1, 0.2, 0.3]})
    sync = acknowledge(store, fail={"bad": "invalid external_id"}, seq=7)
    assert changes(store) == {"bad": {"churn_probability": 0.2}}
    assert set(store.acknowledged_state("braze")) == {"ok1", "ok2"}
    with db.connect() as conn:
        failures = conn.execute(sa.text("SELECT sync_run_id, seq, customer_id, reason FROM sync_failures")).all()
        batches = conn.execute(
            sa.text("SELECT sync_run_id, seq, http_status, attempts, accepted, failed, data_points FROM sync_batches")
        ).all()
    assert [tuple(f) for f in failures] == [(sync, 7, "bad", "invalid external_id")]
    assert [tuple(b) for b in batches] == [(sync, 7, 201, 1, 2, 1, 2)]
    runs = store.sync_runs()
    assert runs[0]["status"] == "partial" and runs[0]["failed"] == 1 and runs[0]["accepted"] == 2
    assert runs[0]["finished_at"].tzinfo is not None


def test_acknowledged_state_is_what_was_recorded(store: AttributeStore) -> None:
    write(store, {"customer_id": ["a", "b"], "churn_probability": [0.25, 0.75], "churn_risk": ["low", "high"]})
    sync = store.start_sync_run("braze", prediction_run_id=None)
    recorded = [
        Change("a", {"churn_probability": 0.25}),
        Change("b", {"churn_risk": "high", "churn_probability": None}),
    ]
    store.record_batch(sync, "braze", BatchOutcome(seq=0, accepted=recorded, failed=[], http_status=201, attempts=2))
    assert store.acknowledged_state("braze") == {
        "a": {"churn_probability": 0.25},
        "b": {"churn_probability": None, "churn_risk": "high"},
    }
    assert store.acknowledged_state("elsewhere") == {}
    assert changes(store) == {"a": {"churn_risk": "low"}, "b": {"churn_probability": 0.75}}


def test_new_attribute_for_an_existing_customer(store: AttributeStore) -> None:
    write(store, {"customer_id": ["a", "b"], "churn_probability": [0.1, 0.2]})
    acknowledge(store)
    _, summary = write(store, {"customer_id": ["a", "b"], "churn_probability": [0.1, 0.2], "clv_365d": [10.0, None]})
    assert summary == WriteSummary(customers_scored=2, customers_new=0, customers_changed=1, values_changed=1)
    assert changes(store) == {"a": {"clv_365d": 10.0}}


def test_each_attribute_name_is_kept_once_with_a_code_that_never_changes(store: AttributeStore, db: sa.Engine) -> None:
    """The big tables hold a 2-byte code per attribute; names come back everywhere the store shows them."""
    write(store, {"customer_id": ["a"], "zeta": [1.0], "alpha": ["x"]})
    codes_before = attribute_codes(db)
    assert sorted(codes_before) == ["alpha", "zeta"] and sorted(codes_before.values()) == [1, 2]
    # A later write with a new attribute gives it the next code; the others keep theirs.
    write(store, {"customer_id": ["a", "b"], "zeta": [2.0, 3.0], "alpha": ["x", "y"], "beta": [None, 5.0]})
    # An acknowledgement may name an attribute no write has (a destination's own field): it gets a code too.
    sync = store.start_sync_run("braze", prediction_run_id=None)
    outcome = BatchOutcome(
        seq=0, accepted=[Change("b", {"gamma": "g", "beta": 5.0})], failed=[], http_status=201, attempts=1
    )
    store.record_batch(sync, "braze", outcome)
    codes = attribute_codes(db)
    assert codes == {**codes_before, "beta": 3, "gamma": 4}
    with db.connect() as conn:
        stored = set(conn.execute(sa.text("SELECT attribute_id FROM attribute_values")).scalars())
        acknowledged = set(conn.execute(sa.text("SELECT attribute_id FROM destination_state")).scalars())
        past = set(conn.execute(sa.text("SELECT attribute_id FROM attribute_history")).scalars())
    assert stored == {1, 2, 3} and acknowledged == {3, 4} and past == {codes["zeta"]}
    assert store.current_values() == {"a": {"alpha": "x", "zeta": 2.0}, "b": {"alpha": "y", "beta": 5.0, "zeta": 3.0}}
    assert store.acknowledged_state("braze") == {"b": {"beta": 5.0, "gamma": "g"}}
    assert changes(store) == {"a": {"alpha": "x", "zeta": 2.0}, "b": {"alpha": "y", "zeta": 3.0}}
    assert [(e.attribute, e.old_value, e.new_value) for e in store.history("a") if e.attribute == "zeta"] == [
        ("zeta", None, 1.0),
        ("zeta", 1.0, 2.0),
    ]
    exported = pa.concat_tables(list(store.attribute_tables())).to_pylist()
    assert exported == [
        {"customer_id": "a", "alpha": "x", "beta": None, "zeta": 2.0},
        {"customer_id": "b", "alpha": "y", "beta": 5.0, "zeta": 3.0},
    ]


def test_a_write_past_the_last_attribute_code_is_refused_and_leaves_nothing(
    store: AttributeStore, db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnsync.store import schema

    write(store, {"customer_id": ["a"], "p": [0.1]})
    monkeypatch.setattr(schema, "MAX_ATTRIBUTE_ID", 2)
    with pytest.raises(StoreError, match="more than 2 attribute names"):
        write(store, {"customer_id": ["a"], "p": [0.1], "q": [0.2], "r": [0.3]})
    assert attribute_codes(db) == {"p": 1}
    assert store.current_values() == {"a": {"p": 0.1}}
    write(store, {"customer_id": ["a"], "p": [0.1], "q": [0.2]})  # within the limit
    assert attribute_codes(db) == {"p": 1, "q": 2}


def test_sqlite_names_the_codes_of_a_selection_in_its_statement_or_by_lookup(
    store: AttributeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to CASE_NAMES names are written into the statement; beyond, each code is looked up: the same selection."""
    from churnsync.store import store as store_module

    columns = {"customer_id": ["a", "b"], "p": [0.1, None], "q": ["x", "y"], "r": [None, 2.0]}
    write(store, columns)
    expected = {"a": {"p": 0.1, "q": "x"}, "b": {"q": "y", "r": 2.0}}
    monkeypatch.setattr(store_module, "CASE_NAMES", 2)  # fewer than the three names: looked up
    assert changes(store) == expected
    monkeypatch.setattr(store_module, "CASE_NAMES", 3)  # written into the statement
    assert changes(store, "elsewhere") == expected


def test_a_code_given_while_a_selection_streams_is_looked_up(store: AttributeStore) -> None:
    """The names a selection maps codes with are read when it starts; a code added since is read when first met."""
    from churnsync.store.store import _AttributeNames

    write(store, {"customer_id": ["a"], "p": [0.1]})
    names = _AttributeNames(store._engine, {})  # as read before the write that gave "p" its code
    assert names[1] == "p" and dict(names) == {1: "p"}


def attribute_codes(db: sa.Engine) -> dict[str, int]:
    with db.connect() as conn:
        return {name: code for code, name in conn.execute(sa.text("SELECT id, name FROM attributes"))}


def test_customers_absent_from_a_run_are_left_untouched(store: AttributeStore) -> None:
    write(store, {"customer_id": ["stay", "gone"], "churn_probability": [0.1, 0.2]})
    _, summary = write(store, {"customer_id": ["stay", "new"], "churn_probability": [0.1, 0.3]})
    assert summary == WriteSummary(customers_scored=2, customers_new=1, customers_changed=1, values_changed=1)
    assert store.current_values() == {
        "gone": {"churn_probability": 0.2},
        "new": {"churn_probability": 0.3},
        "stay": {"churn_probability": 0.1},
    }


def test_select_changes_streams_ordered_chunks(store: AttributeStore) -> None:
    ids = [f"c{i:03d}" for i in range(7)]
    write(store, {"customer_id": list(reversed(ids)), "churn_probability": [0.5] * 7, "churn_risk": ["low"] * 7})
    chunks = list(store.select_changes("braze", chunk_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [c.customer_id for chunk in chunks for c in chunk] == ids
    assert all(c.values == {"churn_probability": 0.5, "churn_risk": "low"} for chunk in chunks for c in chunk)
    with pytest.raises(StoreError, match="chunk_size"):
        store.select_changes("braze", chunk_size=0)


def test_batches_recorded_while_the_selection_streams(store: AttributeStore) -> None:
    write(store, {"customer_id": [f"s{i}" for i in range(5)], "churn_probability": [0.5] * 5})
    sync = store.start_sync_run("braze", prediction_run_id=None)
    for seq, chunk in enumerate(store.select_changes("braze", chunk_size=2)):
        store.record_batch(sync, "braze", BatchOutcome(seq, chunk, [], 201, 1))
    assert len(store.acknowledged_state("braze")) == 5
    assert changes(store) == {}


def test_column_types_become_numbers_or_text(store: AttributeStore) -> None:
    table = {
        "customer_id": ["t"],
        "purchases": pa.array([3], pa.int64()),
        "predicted_at": pa.array([datetime(2026, 6, 30, 12, 0, 5, 123456, tzinfo=UTC)], pa.timestamp("us", "UTC")),
        "next_date": pa.array([datetime(2026, 7, 1).date()], pa.date32()),
        "infinite": [float("inf")],
    }
    write(store, table)
    assert store.current_values("t") == {
        "t": {"purchases": 3.0, "predicted_at": "2026-06-30T12:00:05Z", "next_date": "2026-07-01"}
    }


def test_runs_are_listed_newest_first_with_counts(store: AttributeStore) -> None:
    first, _ = write(store, {"customer_id": ["a"], "churn_probability": [0.1]})
    second, _ = write(store, {"customer_id": ["a", "b"], "churn_probability": [0.5, 0.2]})
    runs = store.prediction_runs(limit=5)
    assert [r["id"] for r in runs] == [second, first]
    latest = runs[0]
    assert (latest["status"], latest["customers_scored"], latest["customers_new"]) == ("succeeded", 2, 1)
    assert (latest["customers_changed"], latest["values_changed"], latest["horizon_days"]) == (2, 2, 30)
    assert latest["summary"] == {"values_changed": 2} and latest["details"] == {"k": 1}
    assert latest["as_of"] == datetime(2026, 6, 1, tzinfo=UTC)
    assert store.prediction_runs(limit=1)[0]["id"] == second


def test_bad_input_is_refused_with_a_store_error(store: AttributeStore) -> None:
    run = store.start_prediction_run(
        as_of=datetime(2026, 6, 1, tzinfo=UTC), horizon_days=30, model_version="m", details={}
    )
    with pytest.raises(StoreError, match="more than once"):
        store.write_predictions(run, pa.table({"customer_id": ["a", "a"], "p": [0.1, 0.2]}), RULES)
    with pytest.raises(StoreError, match="no customer_id"):
        store.write_predictions(run, pa.table({"id": ["a"]}), RULES)
    with pytest.raises(StoreError, match="does not exist"):
        store.write_predictions(run + 99, pa.table({"customer_id": ["a"]}), RULES)
    with pytest.raises(StoreError, match="not a final status"):
        store.finish_prediction_run(run, status="done", summary={})
    store.finish_prediction_run(run, status="failed", summary={"error": "x"})
    with pytest.raises(StoreError, match="already failed"):
        store.write_predictions(run, pa.table({"customer_id": ["a"], "p": [0.1]}), RULES)
    with pytest.raises(StoreError, match="time zone"):
        store.start_prediction_run(as_of=datetime(2026, 6, 1), horizon_days=30, model_version="m", details={})
    sync = store.start_sync_run("braze", prediction_run_id=None)
    with pytest.raises(StoreError, match="belongs to destination 'braze'"):
        store.record_batch(sync, "other", BatchOutcome(0, [], [], 201, 1))
    store.record_batch(sync, "braze", BatchOutcome(0, [], [], 201, 1))
    with pytest.raises(StoreError, match=r"cannot record batch 0 of sync run .*\. "):
        store.record_batch(sync, "braze", BatchOutcome(0, [], [], 201, 1))  # the same seq twice


def test_an_abandoned_selection_releases_its_connection(store: AttributeStore) -> None:
    write(store, {"customer_id": [f"a{i}" for i in range(5)], "churn_probability": [0.5] * 5})
    selection = store.select_changes("braze", chunk_size=2)
    assert len(next(selection)) == 2
    selection.close()  # what a failed sync does: the read transaction ends, writers are not held up
    sync = store.start_sync_run("braze", prediction_run_id=None)
    store.record_batch(sync, "braze", BatchOutcome(0, [Change("a0", {"churn_probability": 0.5})], [], 201, 1))
    assert len(changes(store)) == 4


def test_a_new_sqlite_store_gets_large_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    new_url = f"sqlite:///{tmp_path / 'new.db'}"
    with AttributeStore.open(new_url) as opened:
        write(opened, {"customer_id": ["a"], "churn_probability": [0.5]})
    with sqlite3.connect(tmp_path / "new.db") as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 16_384
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    old = tmp_path / "old.db"  # a store created with SQLite's default pages, e.g. by an earlier version
    with sqlite3.connect(old) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE before_churnsync (x INTEGER)")
    with AttributeStore.open(f"sqlite:///{old}") as opened:
        write(opened, {"customer_id": ["a"], "churn_probability": [0.5]})
        assert opened.current_values() == {"a": {"churn_probability": 0.5}}
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
