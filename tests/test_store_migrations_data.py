"""Upgrading a store that holds data: from revision 0001, with rows in every table, to head (both engines)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command

from churnsync.records import BatchOutcome, Change
from churnsync.store import AttributeStore
from churnsync.store import schema as s
from churnsync.store.store import alembic_config

T0 = datetime(2026, 6, 1, tzinfo=UTC)
T1 = datetime(2026, 6, 2, tzinfo=UTC)

ROWS_0001 = {
    "prediction_runs": [
        "INSERT INTO prediction_runs (id, started_at, finished_at, status, as_of, horizon_days, model_version, "
        "customers_scored, details, summary) VALUES (1, :t0, :t0, 'succeeded', :t0, 30, 'm-1', 2, '{}', '{}'), "
        "(2, :t1, :t1, 'succeeded', :t1, 30, 'm-1', 1, '{}', '{}'), (3, :t1, :t1, 'failed', :t1, 30, 'm-2', 1, "
        "'{}', '{}')",
    ],
    "attribute_values": [
        "INSERT INTO attribute_values VALUES ('a', 'churn_risk', NULL, 'low', 1, :t0), "
        "('a', 'churn_probability', 0.2, NULL, 1, :t0), ('b', 'churn_risk', NULL, 'high', 3, :t1)",
    ],
    "attribute_history": [
        "INSERT INTO attribute_history (customer_id, attribute, old_num, old_text, new_num, new_text, "
        "prediction_run_id, changed_at) VALUES ('a', 'churn_risk', NULL, NULL, NULL, 'low', 1, :t0), "
        "('a', 'churn_probability', NULL, NULL, 0.2, NULL, 1, :t0), "
        "('b', 'churn_risk', NULL, NULL, NULL, 'low', 1, :t0), "
        "('b', 'churn_risk', NULL, 'low', NULL, 'high', 3, :t1)",
    ],
    "sync_runs": [
        "INSERT INTO sync_runs (id, destination, prediction_run_id, started_at, finished_at, status, selected) "
        "VALUES (1, 'braze', 1, :t0, :t0, 'succeeded', 2)",
    ],
    "sync_batches": [
        "INSERT INTO sync_batches (sync_run_id, seq, http_status, attempts, accepted, failed, data_points, "
        "acknowledged_at) VALUES (1, 0, 201, 1, 1, 1, 2, :t0)",
    ],
    "sync_failures": ["INSERT INTO sync_failures (sync_run_id, seq, customer_id, reason) VALUES (1, 0, 'b', 'bad')"],
    "destination_state": [
        "INSERT INTO destination_state VALUES ('braze', 'a', 'churn_risk', NULL, 'low', 1, :t0), "
        "('braze', 'a', 'churn_probability', 0.2, NULL, 1, :t0)",
    ],
    "destination_acks": [
        "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute, num_value, text_value, "
        "acknowledged_at) VALUES (1, 'braze', 'a', 'churn_risk', NULL, 'low', :t0), "
        "(1, 'braze', 'a', 'churn_probability', 0.2, NULL, :t0)",
        # An acknowledgement that a later one of its key replaced: not repeated by destination_state.
        "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute, num_value, text_value, "
        "acknowledged_at) VALUES (1, 'braze', 'a', 'churn_risk', NULL, 'medium', :t0)",
    ],
}


def test_upgrade_from_0001_keeps_every_row_and_fills_the_new_tables(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            for statements in ROWS_0001.values():
                for sql in statements:
                    conn.execute(sa.text(sql), {"t0": T0, "t1": T1})
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT setval('prediction_runs_id_seq', 3)"))
                conn.execute(sa.text("SELECT setval('sync_runs_id_seq', 1)"))
            before = {table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() for table in ROWS_0001}
        assert all(before.values())

        store = AttributeStore.open(store_url, clock=lambda: T1)
        try:
            with engine.connect() as conn:
                after = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ROWS_0001}
                scored = dict(conn.execute(sa.select(s.customers.c.customer_id, s.last_scored_run())).all())
                first = dict(conn.execute(sa.text("SELECT customer_id, first_run_id FROM customers")).all())
                locks = conn.execute(sa.text("SELECT count(*) FROM store_lock")).scalar_one()
                marks = dict(conn.execute(sa.text("SELECT customer_id, changed_seq FROM customers")).all())
                counter = conn.execute(sa.text("SELECT value FROM store_counters WHERE name = 'changes'")).scalar_one()
                watermarks = conn.execute(sa.text("SELECT count(*) FROM selection_watermarks")).scalar_one()
            # 0006: the history keeps past values only. b's "low" (run 1, replaced by run 3 at T1) is one; the other
            # three change rows held values still current, which live in attribute_values alone. 0008: likewise the
            # acknowledgement log keeps the replaced acknowledgement only; the other two repeat destination_state.
            assert after == before | {"attribute_history": 1, "destination_acks": 1}
            assert [
                (e.old_value, e.new_value, e.prediction_run_id, e.changed_at, e.valid_to) for e in store.history("b")
            ] == [
                (None, "low", 1, T0, T1),
                ("low", "high", 3, T1, None),
            ]
            # 0005: no customer marked and no watermark yet, so each destination's first selection compares everyone.
            assert marks == {"a": 0, "b": 0} and counter == 0 and watermarks == 0
            # Everyone counts as scored by the latest succeeded run (2), or a later run that changed them (3).
            assert scored == {"a": 2, "b": 3} and first == {"a": 1, "b": 3}
            assert locks == 0
            # The data reads back through the API, acknowledgements still match their changes, and new writes work.
            assert store.current_values() == {
                "a": {"churn_probability": 0.2, "churn_risk": "low"},
                "b": {"churn_risk": "high"},
            }
            assert store.acknowledged_state("braze") == {"a": {"churn_probability": 0.2, "churn_risk": "low"}}
            acked = {e.attribute: e.acknowledged for e in store.history("a")}
            assert acked == {"churn_risk": {"braze": T0}, "churn_probability": {"braze": T0}}
            assert store.prediction_runs()[0]["model_version"] == "m-2"
            assert [c.customer_id for chunk in store.select_changes("braze") for c in chunk] == ["b"]
            assert [c.customer_id for chunk in store.select_changes("braze", mode="mirror") for c in chunk] == ["b"]
            # The next selection is change-driven (from the watermark): b is still pending, a still acknowledged.
            assert [c.customer_id for chunk in store.select_changes("braze", mode="mirror") for c in chunk] == ["b"]
            sync = store.start_sync_run("braze", prediction_run_id=2)
            assert sync == 2
            store.record_batch(
                sync,
                "braze",
                BatchOutcome(
                    seq=0, accepted=[Change("b", {"churn_risk": "high"})], failed=[], http_status=201, attempts=1
                ),
            )
            with store.run_lock("after upgrade"):
                assert store.lock_holder() is not None
        finally:
            store.close()
    finally:
        engine.dispose()


HISTORY_0005 = (
    "SELECT customer_id, attribute, old_num, old_text, new_num, new_text, prediction_run_id, changed_at "
    "FROM attribute_history ORDER BY customer_id, attribute, changed_at, id"
)


def _at_0001_with(conn: sa.Connection, tables: tuple[str, ...]) -> None:
    """Create the 0001 schema and fill ``tables`` with their rows of ROWS_0001."""
    command.upgrade(alembic_config(conn), "0001")
    for table in tables:
        for sql in ROWS_0001[table]:
            conn.execute(sa.text(sql), {"t0": T0, "t1": T1})


def test_history_converts_to_past_values_and_back(store_url: str) -> None:
    """0005 → 0006 → 0005 gives back every change row; the history in between reads the same through the API."""
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _at_0001_with(conn, ("prediction_runs", "attribute_values", "attribute_history"))
            command.upgrade(alembic_config(conn), "0005")
            changes = conn.execute(sa.text(HISTORY_0005)).all()
            command.upgrade(alembic_config(conn), "0006")
            past = conn.execute(
                sa.text(
                    "SELECT customer_id, attribute, text_value, prediction_run_id, replaced_by_run_id "
                    "FROM attribute_history"
                )
            ).all()
            assert [tuple(r) for r in past] == [("b", "churn_risk", "low", 1, 3)]
        store = AttributeStore.open(store_url, clock=lambda: T1)
        try:
            shown = [(e.customer_id, e.attribute, e.old_value, e.new_value) for c in "ab" for e in store.history(c)]
        finally:
            store.close()
        assert shown == [
            ("a", "churn_probability", None, 0.2),
            ("a", "churn_risk", None, "low"),
            ("b", "churn_risk", None, "low"),
            ("b", "churn_risk", "low", "high"),
        ]
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0005")
            assert conn.execute(sa.text(HISTORY_0005)).all() == changes
    finally:
        engine.dispose()


def test_destination_state_gets_room_for_in_place_updates_and_keeps_its_rows(store_url: str) -> None:
    """0006 → 0007 → 0006 keeps every acknowledged value; on PostgreSQL 0007 sets the fill factor and 0006 resets it."""
    state = "SELECT destination, customer_id, attribute, num_value, text_value FROM destination_state ORDER BY 2, 3"
    options = "SELECT reloptions FROM pg_class WHERE oid = 'destination_state'::regclass"
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _at_0001_with(conn, ("prediction_runs", "sync_runs", "destination_state"))
            command.upgrade(alembic_config(conn), "0006")
            rows = conn.execute(sa.text(state)).all()
            assert rows
            command.upgrade(alembic_config(conn), "0007")
            assert conn.execute(sa.text(state)).all() == rows
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                assert conn.execute(sa.text(options)).scalar_one() == ["fillfactor=90"]
            command.downgrade(alembic_config(conn), "0006")
            assert conn.execute(sa.text(state)).all() == rows
            if postgres:
                assert conn.execute(sa.text(options)).scalar_one() is None
    finally:
        engine.dispose()


def test_the_acknowledgement_log_drops_rows_the_state_repeats_and_gets_them_back(store_url: str) -> None:
    """0007 → 0008 → 0007: log rows repeating destination_state go and come back; a replaced acknowledgement stays."""
    log = (
        "SELECT sync_run_id, destination, customer_id, attribute, num_value, text_value, acknowledged_at "
        "FROM destination_acks ORDER BY customer_id, attribute, text_value"
    )
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _at_0001_with(conn, ("prediction_runs", "sync_runs", "destination_state", "destination_acks"))
            command.upgrade(alembic_config(conn), "0007")
            rows = conn.execute(sa.text(log)).all()
            assert len(rows) == 3
            command.upgrade(alembic_config(conn), "0008")
            assert [(r.customer_id, r.attribute, r.text_value) for r in conn.execute(sa.text(log))] == [
                ("a", "churn_risk", "medium")
            ]
            command.downgrade(alembic_config(conn), "0007")
            assert conn.execute(sa.text(log)).all() == rows
    finally:
        engine.dispose()


def test_the_dashboard_shows_each_acknowledgement_once_on_a_store_not_yet_upgraded(store_url: str) -> None:
    """A store at 0007 logs the latest acknowledgements too; the dashboard, which never migrates, shows them once."""
    from churnsync.web.queries import destination_view

    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _at_0001_with(conn, ("prediction_runs", "sync_runs", "destination_state", "destination_acks"))
            command.upgrade(alembic_config(conn), "0007")
    finally:
        engine.dispose()
    with AttributeStore(store_url) as store:
        view = destination_view(store, "a", set())
    assert sorted((r["attribute"], r["value"]) for r in view["state"]) == [
        ("churn_probability", 0.2),
        ("churn_risk", "low"),
    ]
    assert sorted((r["attribute"], r["value"]) for r in view["acks"]) == [
        ("churn_probability", 0.2),
        ("churn_risk", "low"),
        ("churn_risk", "medium"),
    ]


def test_customers_scored_by_the_latest_write_get_0_and_their_run_back(store_url: str) -> None:
    """0008 → 0009 → 0008: the highest last_run_id is kept once (``scored_by``) and becomes 0 on its customers."""
    customers = "SELECT customer_id, first_run_id, last_run_id FROM customers ORDER BY customer_id"
    counter = "SELECT value FROM store_counters WHERE name = 'scored_by'"
    options = "SELECT reloptions FROM pg_class WHERE oid = 'customers'::regclass"
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _at_0001_with(conn, ("prediction_runs", "attribute_values"))
            command.upgrade(alembic_config(conn), "0008")
            rows = conn.execute(sa.text(customers)).all()
            assert [tuple(r) for r in rows] == [("a", 1, 2), ("b", 3, 3)]
            command.upgrade(alembic_config(conn), "0009")
            assert [tuple(r) for r in conn.execute(sa.text(customers))] == [("a", 1, 2), ("b", 3, 0)]
            assert conn.execute(sa.text(counter)).scalar_one() == 3
            last = dict(conn.execute(sa.select(s.customers.c.customer_id, s.last_scored_run())).all())
            assert last == {"a": 2, "b": 3}
            assert "ix_customers_not_scored_by_latest" in _indexes(conn)
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                assert conn.execute(sa.text(options)).scalar_one() == ["fillfactor=90"]
            command.downgrade(alembic_config(conn), "0008")
            assert conn.execute(sa.text(customers)).all() == rows
            assert conn.execute(sa.text(counter)).first() is None
            assert "ix_customers_not_scored_by_latest" not in _indexes(conn)
            if postgres:
                assert conn.execute(sa.text(options)).scalar_one() == ["fillfactor=50"]
    finally:
        engine.dispose()


def _indexes(conn: sa.Connection) -> set[str]:
    return {str(index["name"]) for index in sa.inspect(conn).get_indexes("customers")}
