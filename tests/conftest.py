"""Shared fixtures: real components only (SQLite in a temp dir, PostgreSQL on localhost, a fixed clock)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from churnsync.store import AttributeStore
from clocks import Clock

PG_ADMIN_URL = os.environ.get("CHURNSYNC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PG_HINT = (
    "PostgreSQL is not reachable on 127.0.0.1:5432. Start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(.ci/run does this), or set CHURNSYNC_TEST_PG to a server with database 'test'"
)


@pytest.fixture
def fixed_now() -> datetime:
    """The clock every test agrees on."""
    return datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL server, dropped afterwards. Fails (never skips) without a server."""
    admin = sa.create_engine(PG_ADMIN_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(f"{PG_HINT} ({exc.orig})", pytrace=False)
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on SQLite and on the real PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def clock(fixed_now: datetime) -> Clock:
    """The store's clock, at ``fixed_now`` until a test moves it."""
    return Clock(fixed_now)


@pytest.fixture
def store(store_url: str, clock: Clock) -> Iterator[AttributeStore]:
    """A migrated store on each engine, reading the time from ``clock``."""
    with AttributeStore.open(store_url, clock=clock) as opened:
        yield opened


@pytest.fixture
def db(store_url: str, store: AttributeStore) -> Iterator[sa.Engine]:
    """A second, plain connection to the store's database, to look at tables the API does not expose."""
    engine = sa.create_engine(store_url)
    yield engine
    engine.dispose()
