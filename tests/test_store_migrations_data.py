"""Upgrading a store that holds data: from revision 0001, with rows in every table, to head (both engines)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext

from churnsync.errors import StoreError
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
                codes = conn.execute(sa.text("SELECT id, name FROM attributes ORDER BY id")).all()
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
            # 0010: every name has its code, in name order.
            assert [tuple(r) for r in codes] == [(1, "churn_probability"), (2, "churn_risk")]
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


#: The columns of the four tables at 0009 (``attribute`` the name) and the ordinals of their keys among them.
COLUMNS_0009 = {
    "attribute_values": (
        ("customer_id", "attribute", "num_value", "text_value", "prediction_run_id", "updated_at"),
        "1, 2",
    ),
    "attribute_history": (
        (
            "id",
            "customer_id",
            "attribute",
            "num_value",
            "text_value",
            "prediction_run_id",
            "replaced_by_run_id",
            "valid_from",
            "valid_to",
        ),
        "1",
    ),
    "destination_state": (
        ("destination", "customer_id", "attribute", "num_value", "text_value", "sync_run_id", "acknowledged_at"),
        "1, 2, 3",
    ),
    "destination_acks": (
        ("id", "sync_run_id", "destination", "customer_id", "attribute", "num_value", "text_value", "acknowledged_at"),
        "1",
    ),
}

#: At 0009, on top of ROWS_0001: names found in one table only (one sorting before the others bytewise, one not ASCII),
#: and gaps in the ids of the history and the acknowledgement log (the highest history id, one acknowledgement).
ROWS_0009 = [
    "INSERT INTO attribute_history (customer_id, attribute, num_value, text_value, prediction_run_id, "
    "replaced_by_run_id, valid_from, valid_to) VALUES ('a', 'größe', NULL, 'xl', 1, 2, :t0, :t1), "
    "('b', 'Zeta', 1.5, NULL, 1, 3, :t0, :t1), ('c', 'churn_risk', NULL, 'low', 1, 2, :t0, :t1)",
    "DELETE FROM attribute_history WHERE customer_id = 'c'",
    "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute, num_value, text_value, "
    "acknowledged_at) VALUES (1, 'braze', 'b', 'churn_risk', NULL, 'low', :t0)",
    "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute, num_value, text_value, "
    "acknowledged_at) VALUES (1, 'braze', 'b', 'tier', NULL, 'gold', :t1)",
    "DELETE FROM destination_acks WHERE customer_id = 'b' AND attribute = 'churn_risk'",
]
NAMES = ["Zeta", "churn_probability", "churn_risk", "größe", "tier"]  # bytewise order, as on both engines


def _rows(conn: sa.Connection, codes: bool) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the four tables as at 0009, the attribute's name read through ``attributes`` at 0010."""
    rows = {}
    for table, (columns, key) in COLUMNS_0009.items():
        if codes:
            selected = ", ".join("a.name" if c == "attribute" else f"t.{c}" for c in columns)
            source = f"{table} t JOIN attributes a ON a.id = t.attribute_id"
        else:
            selected, source = ", ".join(columns), table
        rows[table] = [tuple(r) for r in conn.execute(sa.text(f"SELECT {selected} FROM {source} ORDER BY {key}"))]
    return rows


def _catalogue(conn: sa.Connection) -> list[tuple[Any, ...]]:
    """The schema as the engine records it: each table's stored definition and indexes (SQLite); columns, constraints,
    indexes, storage options and sequence owners (PostgreSQL)."""
    if conn.dialect.name == "sqlite":
        queries = ["SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"]
    else:
        here = "to_regnamespace(current_schema())::oid"
        queries = [
            "SELECT relname, relkind, reloptions::text, pg_get_indexdef(oid) FROM pg_class "
            f"WHERE relnamespace = {here} ORDER BY relname",
            "SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
            f"WHERE connamespace = {here} ORDER BY 1, 2",
            "SELECT table_name, ordinal_position, column_name, data_type, character_maximum_length, collation_name, "
            "column_default, is_nullable FROM information_schema.columns WHERE table_schema = current_schema() "
            "ORDER BY 1, 2",
            "SELECT d.objid::regclass::text, d.refobjid::regclass::text, d.refobjsubid, d.deptype::text "
            f"FROM pg_depend d JOIN pg_class s ON s.oid = d.objid WHERE s.relkind = 'S' AND s.relnamespace = {here} "
            "AND d.refobjsubid > 0 ORDER BY 1",
        ]
    return [tuple(r) for q in queries for r in conn.execute(sa.text(q))]


def _assert_keys_of_0010(conn: sa.Connection) -> None:
    """The four tables and ``attributes`` have schema.py's keys, indexes, checks, column and storage, by name."""
    inspector = sa.inspect(conn)
    keys = {
        "attribute_values": ["customer_id", "attribute_id"],
        "attribute_history": ["id"],
        "destination_state": ["destination", "customer_id", "attribute_id"],
        "destination_acks": ["id"],
        "attributes": ["id"],
    }
    for table, columns in keys.items():
        key = inspector.get_pk_constraint(table)
        assert (key["name"], key["constrained_columns"]) == (f"pk_{table}", columns)
    indexes = {
        table: {str(ix["name"]): ix["column_names"] for ix in inspector.get_indexes(table)}
        for table in (*COLUMNS_0009, "attributes")
    }
    assert indexes == {
        "attribute_values": {},
        "attribute_history": {
            "ix_attribute_history_customer_id_attribute_id_valid_from": ["customer_id", "attribute_id", "valid_from"]
        },
        "destination_state": {},
        "destination_acks": {
            "ix_destination_acks_customer_id_attribute_id_acknowledged_at": [
                "customer_id",
                "attribute_id",
                "acknowledged_at",
            ]
        },
        # PostgreSQL reports a unique constraint's index too (SQLite's is an automatic index, not reported).
        "attributes": {"uq_attributes_name": ["name"]} if conn.dialect.name == "postgresql" else {},
    }
    assert [(u["name"], u["column_names"]) for u in inspector.get_unique_constraints("attributes")] == [
        ("uq_attributes_name", ["name"])
    ]
    checks = {table: [c["name"] for c in inspector.get_check_constraints(table)] for table in COLUMNS_0009}
    assert checks == {
        "attribute_values": ["ck_attribute_values_one_value"],
        "attribute_history": [],
        "destination_state": ["ck_destination_state_one_value"],
        "destination_acks": [],
    }
    for table, (columns, _) in COLUMNS_0009.items():
        reflected = inspector.get_columns(table)
        assert [c["name"] for c in reflected] == ["attribute_id" if c == "attribute" else c for c in columns]
        code = reflected[columns.index("attribute")]
        assert isinstance(code["type"], sa.SmallInteger) and not code["nullable"]
    if conn.dialect.name == "postgresql":
        options = dict(
            conn.execute(
                sa.text(
                    "SELECT relname, reloptions FROM pg_class "
                    "WHERE relnamespace = to_regnamespace(current_schema())::oid "
                    "AND relname IN ('attribute_values', 'attribute_history', 'destination_state', 'destination_acks')"
                )
            ).all()
        )
        assert options == {
            "attribute_values": ["fillfactor=90"],
            "attribute_history": None,
            "destination_state": ["fillfactor=90"],
            "destination_acks": None,
        }
    else:
        tables = dict(conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'table'")).all())
        clustered = {t for t in COLUMNS_0009 if tables[t].rstrip().endswith("WITHOUT ROWID")}
        assert clustered == {"attribute_values", "destination_state"}


def test_attribute_names_become_codes_and_come_back(store_url: str) -> None:
    """0009 → 0010 → 0009 → 0010: every row keeps its name (through ``attributes``) and its id; keys get their names."""
    insert_history = (
        "INSERT INTO attribute_history (customer_id, attribute_id, num_value, text_value, prediction_run_id, "
        "replaced_by_run_id, valid_from, valid_to) VALUES ('d', 1, 2.5, NULL, 3, 3, :t1, :t1) RETURNING id"
    )
    insert_ack = (
        "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute_id, num_value, text_value, "
        "acknowledged_at) VALUES (1, 'braze', 'd', 1, 2.5, NULL, :t1) RETURNING id"
    )
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _at_0001_with(conn, tuple(ROWS_0001))
            command.upgrade(alembic_config(conn), "0009")
            for sql in ROWS_0009:
                conn.execute(sa.text(sql), {"t0": T0, "t1": T1})
            rows, schema_0009 = _rows(conn, codes=False), _catalogue(conn)
            assert {table: len(r) for table, r in rows.items()} == {
                "attribute_values": 3,
                "attribute_history": 3,
                "destination_state": 2,
                "destination_acks": 2,
            }
            highest = {
                t: conn.execute(sa.text(f"SELECT max(id) FROM {t}")).scalar_one()
                for t in ("attribute_history", "destination_acks")
            }

            command.upgrade(alembic_config(conn), "0010")
            codes = conn.execute(sa.text("SELECT id, name FROM attributes ORDER BY id")).all()
            assert [tuple(r) for r in codes] == list(enumerate(NAMES, start=1))
            assert sorted(NAMES) == NAMES
            assert _rows(conn, codes=True) == rows  # ids of the history and the log included
            _assert_keys_of_0010(conn)
            schema_0010 = _catalogue(conn)

            command.downgrade(alembic_config(conn), "0009")
            assert _rows(conn, codes=False) == rows
            assert _catalogue(conn) == schema_0009
            assert "attributes" not in sa.inspect(conn).get_table_names()

            command.upgrade(alembic_config(conn), "0010")
            assert [tuple(r) for r in conn.execute(sa.text("SELECT id, name FROM attributes ORDER BY id"))] == [
                tuple(r) for r in codes
            ]
            assert _rows(conn, codes=True) == rows
            assert _catalogue(conn) == schema_0010
            # New rows continue after the highest id kept (on PostgreSQL from where the sequence stood).
            history_id = conn.execute(sa.text(insert_history), {"t1": T1}).scalar_one()
            ack_id = conn.execute(sa.text(insert_ack), {"t1": T1}).scalar_one()
            assert history_id > highest["attribute_history"] and ack_id > highest["destination_acks"]
    finally:
        engine.dispose()


def test_more_attribute_names_than_codes_stop_the_upgrade(store_url: str) -> None:
    """32768 distinct names over the four tables leave the store at 0009, untouched; 32767 get codes 1..32767."""
    many = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 32766) "
        "INSERT INTO destination_acks (sync_run_id, destination, customer_id, attribute, num_value, text_value, "
        "acknowledged_at) SELECT 1, 'braze', 'a', 'name_' || i, NULL, 'x', :t0 FROM n"
    )
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            _at_0001_with(conn, ("prediction_runs", "sync_runs", "attribute_values"))  # 2 names
            command.upgrade(alembic_config(conn), "0009")
            conn.execute(sa.text(many), {"t0": T0})
            schema = _catalogue(conn)
        with pytest.raises(StoreError, match=r"32768 distinct attribute names, more than the 32767") as caught:
            AttributeStore.open(store_url)
        assert "previous churnsync version" in str(caught.value)
        with engine.begin() as conn:
            assert MigrationContext.configure(conn).get_current_heads() == ("0009",)
            assert _catalogue(conn) == schema
            conn.execute(sa.text("DELETE FROM destination_acks WHERE attribute = 'name_1'"))
            command.upgrade(alembic_config(conn), "0010")
            codes = conn.execute(sa.text("SELECT count(*), min(id), max(id) FROM attributes")).one()
            assert tuple(codes) == (32767, 1, 32767)
            joined = conn.execute(
                sa.text(
                    "SELECT count(*) FROM destination_acks t JOIN attributes a ON a.id = t.attribute_id "
                    "WHERE a.name = 'name_' || t.id"
                )
            ).scalar_one()
            assert joined == 32765
    finally:
        engine.dispose()
