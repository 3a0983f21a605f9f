"""What the database server's settings cost a write, told to the user: the checkpoint advice (issue 4), both engines."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from churnsync.config import AttributeSettings, Settings
from churnsync.events.generator import generate_sample
from churnsync.pipeline import predict_and_store
from churnsync.store import AttributeStore
from churnsync.store import store as store_module
from churnsync.store.store import checkpoint_advice

GIB = 2**30


def test_advice_only_for_a_write_that_spans_a_checkpoint() -> None:
    default = {"max_wal_mb": 1024, "completion_target": 0.9, "timeout_s": 300}
    # 1 GB max_wal_size at the default target of 0.9: the server requests a checkpoint every 1024 / 1.9 = 539 MB.
    distance = 1024 * 2**20 / 1.9
    assert checkpoint_advice(400 * 2**20, 60, **default) is None
    assert checkpoint_advice(int(distance) - 1, 60, **default) is None
    assert checkpoint_advice(int(distance) + 1, 60, **default) is not None
    advice = checkpoint_advice(5 * GIB, 60, **default)
    assert advice is not None
    assert "5.0 GB of WAL in 60 s" in advice and "0.53 GB of WAL (max_wal_size 1024 MB" in advice
    # Room for twice the write within one checkpoint distance: 2 × 5 GB × 1.9 = 19 GB; 60 s is short enough.
    assert advice.endswith("raise max_wal_size to at least 19 GB (docs/configuration.md)")
    # A write longer than a quarter of checkpoint_timeout: a timeout of four times the write, rounded up to minutes.
    slow = checkpoint_advice(100 * 2**20, 95, **default)
    assert slow is not None and slow.endswith("raise checkpoint_timeout to at least 7 min (docs/configuration.md)")
    both = checkpoint_advice(5 * GIB, 330, **default)
    assert both is not None and "at least 19 GB and checkpoint_timeout to at least 22 min" in both
    # A server already sized for it says nothing.
    assert checkpoint_advice(5 * GIB, 95, max_wal_mb=20 * 1024, completion_target=0.9, timeout_s=1800) is None


def _write(store: AttributeStore, probability: float = 0.5) -> Any:
    run = store.start_prediction_run(
        as_of=datetime(2026, 6, 1, tzinfo=UTC), horizon_days=30, model_version="test-1", details={}
    )
    table = pa.table({"customer_id": [f"c{i}" for i in range(200)], "churn_probability": [probability] * 200})
    summary = store.write_predictions(run, table, AttributeSettings())
    store.finish_prediction_run(run, status="succeeded", summary={})
    return summary


def test_a_write_asks_the_server_for_its_wal_and_settings(
    store: AttributeStore, db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, float, dict[str, Any]]] = []

    def advise(written: int, seconds: float, **settings: Any) -> str:
        seen.append((written, seconds, settings))
        return "raise it"

    monkeypatch.setattr(store_module, "checkpoint_advice", advise)
    # A first load is not advised on: it leaves no replaced rows behind.
    assert _write(store).advice == () and seen == []
    summary = _write(store, probability=0.9)
    if store.dialect == "sqlite":  # no server, nothing to advise
        assert seen == [] and summary.advice == ()
        return
    with db.connect() as conn:
        max_wal_mb, timeout_s = conn.execute(
            sa.text(
                "SELECT (SELECT setting::float8 FROM pg_settings WHERE name = 'max_wal_size'), "
                "(SELECT setting::float8 FROM pg_settings WHERE name = 'checkpoint_timeout')"
            )
        ).one()
        target = conn.execute(sa.text("SELECT current_setting('checkpoint_completion_target')::float8")).scalar_one()
    [(written, seconds, settings)] = seen
    # The write's own WAL at least: 200 replaced values, their history, the customers, the run's row.
    assert written > 10_000
    assert 0 < seconds < 60
    # wal_compression as the write's session had it: the store's sessions compress (the server's is off here).
    assert settings == {
        "max_wal_mb": max_wal_mb,
        "completion_target": target,
        "timeout_s": timeout_s,
        "wal_compression": "lz4",
    }
    assert summary.advice == ("raise it",)


def test_a_small_write_gets_no_advice(store: AttributeStore) -> None:
    assert _write(store).advice == ()
    assert _write(store, probability=0.9).advice == ()


START = date(2025, 1, 1)


def test_the_advice_is_logged_and_kept_in_the_runs_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generate_sample(tmp_path, customers=300, days=120, seed=2, start=START, fmt="parquet")
    settings = Settings.model_validate(
        {
            "data": {"paths": [str(tmp_path / "events.parquet")], "rejects_path": str(tmp_path / "rejects.csv")},
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "model": {"registry_path": str(tmp_path / "models"), "kind": "bgnbd"},
        }
    )
    # The server's side is faked here (SQLite has none); what follows the advice is real.
    monkeypatch.setattr(
        AttributeStore, "_checkpoint_advice", lambda self, start, seconds: "raise max_wal_size to at least 19 GB"
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("churnsync.pipeline")
    logger.addHandler(handler)
    now, as_of = datetime(2025, 6, 1, tzinfo=UTC), START + timedelta(days=119)
    try:
        with AttributeStore.open(settings.store.url) as store:
            first = predict_and_store(settings, store, now=now, as_of=as_of)
            report = predict_and_store(settings, store, now=now, as_of=as_of)
            [run] = store.prediction_runs(limit=1)
    finally:
        logger.removeHandler(handler)
    assert first.write.advice == ()  # a first load
    assert report.write.advice == ("raise max_wal_size to at least 19 GB",)
    assert run["summary"]["store_advice"] == ["raise max_wal_size to at least 19 GB"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.WARNING, "store: raise max_wal_size to at least 19 GB")
    ]


def test_the_advice_asks_for_wal_compression_when_the_write_had_none() -> None:
    default = {"max_wal_mb": 1024, "completion_target": 0.9, "timeout_s": 300}
    off = checkpoint_advice(5 * GIB, 60, wal_compression="off", **default)
    assert off is not None
    assert off.endswith(
        "raise max_wal_size to at least 19 GB, and set wal_compression = lz4 (or grant the store's role SET on it: "
        "its sessions then compress their own) (docs/configuration.md)"
    )
    for compressed in ("lz4", "zstd", "pglz", "on"):
        advice = checkpoint_advice(5 * GIB, 60, wal_compression=compressed, **default)
        assert advice is not None and "wal_compression" not in advice
    # Compression alone is no reason to speak: a write within the checkpoint distance gets no advice.
    assert checkpoint_advice(100 * 2**20, 60, wal_compression="off", **default) is None


def _session_compression(url: str) -> str:
    with AttributeStore.open(url) as store, store.transaction("read a setting") as conn:
        return str(conn.exec_driver_sql("SELECT current_setting('wal_compression')").scalar_one())


def _best_method(admin: sa.Engine) -> str:
    with admin.connect() as conn:
        methods = conn.execute(sa.text("SELECT enumvals FROM pg_settings WHERE name = 'wal_compression'")).scalar()
    return next((m for m in store_module.WAL_COMPRESSION_METHODS if m in (methods or ())), "on")


def test_postgresql_sessions_compress_full_page_images_where_the_server_does_not(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = sa.create_engine(postgres_url)
    try:
        with admin.connect() as conn:
            server = conn.execute(sa.text("SELECT boot_val, reset_val FROM pg_settings WHERE name = 'wal_compression'"))
            boot, reset = server.one()
        assert (boot, reset) == ("off", "off"), "this test needs the server's wal_compression at its built-in default"
        with caplog.at_level(logging.DEBUG, logger="churnsync.store.store"):
            assert _session_compression(postgres_url) == _best_method(admin) == "lz4"  # this machine's server has lz4
        told = [r.getMessage() for r in caplog.records if "compress" in r.getMessage()]
        assert told == ["store: this store's sessions compress their full-page images in the WAL (lz4)"]
        # A session of the server outside the store keeps the server's setting.
        with admin.connect() as conn:
            assert conn.execute(sa.text("SELECT current_setting('wal_compression')")).scalar_one() == "off"
        # A choice made for the session (here in the URL; in the server's configuration, for the role or the database
        # alike) is kept, off included: only the built-in default is replaced.
        assert _session_compression(f"{postgres_url}%20-cwal_compression%3Dpglz") == "pglz"
        assert _session_compression(f"{postgres_url}%20-cwal_compression%3Doff") == "off"
    finally:
        admin.dispose()


def test_postgresql_a_role_that_may_not_set_it_keeps_the_servers_setting_which_the_advice_reads(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"churnsync_t_{uuid.uuid4().hex[:10]}"
    schema = postgres_url.rsplit("%3D", 1)[1]
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'GRANT ALL ON SCHEMA "{schema}" TO "{role}"'))
    url = postgres_url.replace("postgres@", f"{role}@", 1)
    try:
        with caplog.at_level(logging.DEBUG, logger="churnsync.store.store"):
            assert _session_compression(url) == "off"
        assert not [r for r in caplog.records if "compress" in r.getMessage()]
        with AttributeStore.open(url) as store:
            # The store works as before; the settings its advice reads are the session's.
            _write(store)
            _write(store, probability=0.9)
            start = store._server_wal()
            assert start is not None and start[4] == "off"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}" CASCADE'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
