"""bench/store.py's ``--cold``: it must find every file of the store, or a "cold" run would read part of it warm."""

from __future__ import annotations

import ctypes
import mmap
import random
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

from bench_modules import load_bench
from churnsync.config import AttributeSettings
from churnsync.store import AttributeStore

bench = load_bench("store")
libc = ctypes.CDLL(None, use_errno=True)


def _resident_pages(path: Path) -> int:
    """How many of the file's pages the OS page cache holds (mincore(2) on a private mapping of it)."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vector = (ctypes.c_ubyte * pages)()
        start = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(mapped)))
        assert libc.mincore(start, ctypes.c_size_t(size), vector) == 0, ctypes.get_errno()
        return sum(v & 1 for v in vector)


def _files(store: AttributeStore, store_url: str) -> list[Path]:
    """The store's files as the benchmark finds them; on PostgreSQL only where this process may read the server's
    data directory (the server's host, as its user or root: CI runs so), as ``--cold`` itself requires."""
    try:
        return bench.store_files(store, store_url)
    except SystemExit as exc:
        pytest.skip(str(exc))


def _write(store: AttributeStore, customers: int) -> None:
    run = store.start_prediction_run(as_of=store._now(), horizon_days=30, model_version="t", details={})
    ids = [f"c{i}" for i in range(customers)]
    # A long text that does not compress goes to the TOAST table, which has files of its own.
    long_text = random.Random(1).randbytes(20_000).hex()
    table = pa.table(
        {
            "customer_id": ids,
            "churn_probability": [i / customers for i in range(customers)],
            "segment": [long_text if i == 0 else "active" for i in range(customers)],
        }
    )
    store.write_predictions(run, [table], AttributeSettings())
    store.finish_prediction_run(run, status="succeeded", summary={})


def test_the_cold_benchmark_finds_every_file_of_the_store(store: AttributeStore, store_url: str) -> None:
    _write(store, 2_000)
    files = _files(store, store_url)
    assert files, "no file found"
    assert len(set(files)) == len(files)
    on_disk = sum(f.stat().st_size for f in files)
    if store.dialect == "sqlite":
        path = Path(store_url.removeprefix("sqlite:///"))
        assert path in files
        assert all(f.parent == path.parent and f.name.startswith(path.name) for f in files)
        return
    with store.transaction("sizes") as conn:
        # Every relation of the schema (tables with their TOAST, keys and indexes; sequences), all forks.
        expected = conn.execute(
            sa.text(
                "SELECT sum(CASE WHEN relkind = 'r' THEN pg_total_relation_size(oid) "
                "WHEN relkind = 'S' THEN pg_relation_size(oid) ELSE 0 END) "
                "FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
            )
        ).scalar_one()
        toasted = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_class t JOIN pg_class c ON c.reltoastrelid = t.oid "
                "WHERE c.relnamespace = current_schema()::regnamespace AND pg_relation_size(t.oid) > 0"
            )
        ).scalar_one()
    assert toasted >= 1, "the test meant to put a value in a TOAST table"
    assert on_disk == int(expected)


def test_the_cold_benchmark_drops_the_store_from_the_page_cache(store: AttributeStore, store_url: str) -> None:
    _write(store, 2_000)
    files = _files(store, store_url)
    for path in files:
        path.read_bytes()  # now in the page cache
    assert sum(_resident_pages(f) for f in files) > 0
    bench.drop_page_cache(store, store_url)
    assert sum(_resident_pages(f) for f in files) == 0
