"""The store's schema comes from its migrations, matches schema.py, and refuses what it cannot handle."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from churnsync.errors import StoreError
from churnsync.store import AttributeStore
from churnsync.store.schema import metadata
from churnsync.store.store import alembic_config
from test_store import write

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_migrations_create_exactly_the_schema_of_schema_py(store_url: str) -> None:
    store = AttributeStore(store_url)
    store.migrate()
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
            tables = set(sa.inspect(conn).get_table_names())
        assert diff == []
        assert tables == set(metadata.tables) | {"alembic_version"}
        store.migrate()  # a second run is a no-op
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)
            assert set(sa.inspect(conn).get_table_names()) == tables
    finally:
        engine.dispose()
        store.close()


def test_a_store_newer_than_the_code_is_refused(store_url: str) -> None:
    AttributeStore.open(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"revision 9999, newer than this churnsync.*Upgrade churnsync"):
        AttributeStore.open(store_url)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    with AttributeStore.open(sqlite_url) as store:
        store.start_sync_run("braze", prediction_run_id=None)
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    with AttributeStore.open(sqlite_url) as store, pytest.raises(StoreError, match="FOREIGN KEY"):
        store.start_sync_run("braze", prediction_run_id=12345)  # no such prediction run


def test_times_come_back_aware_utc(store_url: str, fixed_now: datetime) -> None:
    with AttributeStore.open(store_url, clock=lambda: fixed_now) as store:
        store.start_sync_run("braze", prediction_run_id=None)
        started = store.sync_runs()[0]["started_at"]
    assert started == fixed_now and started.tzinfo == UTC


def test_unreachable_database_error_hides_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        AttributeStore.open("postgresql://churn:s3cret@127.0.0.1:9/nowhere")
    message = str(caught.value)
    assert "s3cret" not in message and "***" in message
    assert "\n" not in message and "store.url" in message


@pytest.mark.parametrize(
    ("url", "expected"),
    [("not a url", "not a database URL"), ("mysql://u:pw@host/db", "not supported"), ("sqlite://", "in memory")],
)
def test_unusable_urls_are_refused(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected) as caught:
        AttributeStore(url)
    assert "pw" not in str(caught.value)


def test_stores_opened_at_once_migrate_once(store_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        stores = list(pool.map(lambda _: AttributeStore.open(store_url), range(3)))
    for store in stores:
        assert store.prediction_runs() == []
        store.close()


def test_a_first_load_keeps_the_schema_of_schema_py(store_url: str) -> None:
    """On PostgreSQL a first load builds its tables' keys after the insert: the same keys, indexes and fill factors."""
    with AttributeStore.open(store_url) as store:
        write(store, {"customer_id": ["a", "b"], "churn_probability": [0.1, 0.9]})
        write(store, {"customer_id": ["a", "c"], "churn_probability": [0.5, 0.2]})
        assert store.current_values() == {
            "a": {"churn_probability": 0.5},
            "b": {"churn_probability": 0.9},
            "c": {"churn_probability": 0.2},
        }
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
            with pytest.raises(sa.exc.IntegrityError):
                conn.execute(
                    sa.text("INSERT INTO customers (customer_id, first_run_id, last_run_id) VALUES ('a', 1, 1)")
                )
            conn.rollback()
            if conn.dialect.name == "postgresql":
                options = dict(
                    conn.execute(
                        sa.text(
                            "SELECT relname, reloptions FROM pg_class "
                            "WHERE relname IN ('attribute_values', 'customers', 'destination_state') "
                            "AND relnamespace = to_regnamespace(current_schema())::oid"
                        )
                    ).all()
                )
                assert options == {
                    "attribute_values": ["fillfactor=90"],
                    "customers": ["fillfactor=90"],
                    "destination_state": ["fillfactor=90"],
                }
        assert diff == []
    finally:
        engine.dispose()
