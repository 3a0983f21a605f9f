"""Where a daily run's time goes on PostgreSQL: the selection's comparison in four states, then a daily cycle.

Builds a store of N customers as ``bench/store.py`` does (run 1, its selection, the acknowledgement of everyone,
"a day later", run 2's write), then times the selection's comparison alone (the store's plan: each candidate looked up
by key in the current values and the acknowledged state, in key order) under ``EXPLAIN (ANALYZE, BUFFERS)`` with
``track_io_timing``, with the server's WAL, full-page images and checkpoints during it:

1. ``as left``: as run 2's write left the store (the first read after a write prunes the rows it replaced);
2. ``warm``: the same again, every page already pruned and in memory;
3. ``cold``: with the OS page cache of the acknowledged state and its key dropped (``posix_fadvise`` DONTNEED on the
   server's files: only where this process can open them, i.e. on the database host as their owner or root);
4. ``after update``: after one ``UPDATE`` of the values run 2 changed, as a write does.

Then one daily cycle with the benchmark's own steps and the WAL per step: acknowledge run 2 (bulk), "a day later",
write run 3, select. docs/benchmarks.md ("Where the 10M daily run's time goes") has the figures, e.g.::

    python bench/store_wal.py --customers 1000000
    python bench/store_wal.py --customers 10000000
    # then with ALTER SYSTEM SET max_wal_size = '16GB' and SELECT pg_reload_conf(), the same again

The store lives in a schema of its own, dropped at the end (``--keep`` leaves it).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from churnsync.config import AttributeSettings
from churnsync.store import AttributeStore

_spec = importlib.util.spec_from_file_location("churnsync_bench_store", Path(__file__).with_name("store.py"))
assert _spec is not None and _spec.loader is not None
b = importlib.util.module_from_spec(_spec)
sys.modules["churnsync_bench_store"] = b
_spec.loader.exec_module(b)

#: The selection's comparison for the candidates of the destination's last watermark (the store's plan).
COMPARISON = """
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF)
SELECT count(*) FROM pg_temp.candidates c CROSS JOIN LATERAL (
    SELECT v.num_value, v.text_value, d.num_value AS acked_num, d.text_value AS acked_text
    FROM attribute_values v
    LEFT JOIN destination_state d
      ON d.destination = 'braze' AND d.customer_id = c.customer_id AND d.attribute_id = v.attribute_id
    WHERE v.customer_id = c.customer_id) p
WHERE p.num_value IS DISTINCT FROM p.acked_num OR p.text_value IS DISTINCT FROM p.acked_text
"""
CANDIDATES = """
CREATE TEMP TABLE candidates AS SELECT customer_id FROM customers
WHERE changed_seq > (SELECT changed_seq FROM selection_watermarks WHERE destination = 'braze') ORDER BY 1
"""
#: The values run 2 changed (the benchmark moves the probability, hence its complement and its tier).
UPDATE = """
UPDATE attribute_values v SET num_value = v.num_value FROM pg_temp.candidates c
WHERE v.customer_id = c.customer_id AND v.attribute_id IN (
    SELECT id FROM attributes WHERE name IN ('churn_probability', 'p_alive', 'churn_risk'))
"""


def compare(engine: sa.Engine, meter: Any, state: str, compression: str) -> None:
    """The comparison under EXPLAIN, in a session with the store's settings for it (``compression``: the store's
    sessions' ``wal_compression``)."""
    with engine.connect() as conn:
        settings = ("track_io_timing = on", "work_mem = '256MB'", "jit = off", "enable_hashjoin = off")
        for setting in (*settings, f"wal_compression = {compression}"):
            conn.exec_driver_sql(f"SET {setting}")
        conn.exec_driver_sql("DROP TABLE IF EXISTS pg_temp.candidates")
        conn.exec_driver_sql(CANDIDATES)
        conn.exec_driver_sql("ANALYZE pg_temp.candidates")
        if state == "after update":
            conn.exec_driver_sql(UPDATE)
            conn.commit()
        before = meter.read()
        plan = [row[0] for row in conn.exec_driver_sql(COMPARISON)]
        conn.rollback()
    written, fpi, checkpoints = (a - z for a, z in zip(meter.read(), before, strict=True))
    lines = [line.strip() for line in plan]
    took = next(line for line in lines if line.startswith("Execution Time"))
    buffers = next(line for line in lines if line.startswith("Buffers"))
    timings = next((line for line in lines if line.startswith("I/O Timings")), "I/O Timings: none")
    print(f"  comparison, {state}: {took}", flush=True)
    print(f"    {buffers}; {timings}", flush=True)
    print(f"    server WAL {written / 1e6:,.0f} MB, full-page images {fpi:,}, checkpoints {checkpoints}", flush=True)


def drop_from_page_cache(engine: sa.Engine, relations: list[str]) -> bool:
    """Drop the OS page cache of ``relations`` (every segment file); False when their files cannot be opened here."""
    with engine.connect() as conn:
        root = conn.exec_driver_sql("SHOW data_directory").scalar_one()
        paths = [conn.exec_driver_sql(f"SELECT pg_relation_filepath('{r}')").scalar_one() for r in relations]
    try:
        for path in paths:
            base = os.path.join(root, path)
            for segment in [base, *glob.glob(base + ".[0-9]*")]:
                fd = os.open(segment, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=50_000, help="Customers (default 50,000).")
    parser.add_argument("--seed", type=int, default=7, help="Random seed.")
    parser.add_argument("--keep", action="store_true", help="Leave the store's schema in place.")
    parser.add_argument(
        "--no-wal-compression", action="store_true", help="The store's sessions keep wal_compression off."
    )
    args = parser.parse_args()
    n, seed, share = args.customers, args.seed, 0.05
    schema = f"bench_wal_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(b.PG_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        wal_size = conn.execute(sa.text("SHOW max_wal_size")).scalar()
    url = f"{b.PG_ADMIN_URL}?options=-csearch_path%3D{schema}" + (
        b.NO_WAL_COMPRESSION if args.no_wal_compression else ""
    )
    engine = sa.create_engine(url)
    b.WAL = b.WalMeter(b.PG_ADMIN_URL)
    rules = AttributeSettings()
    results: dict[str, float] = {}
    print(f"postgresql: {n:,} customers × 8 attributes, max_wal_size {wal_size}, schema {schema}", flush=True)
    try:
        with b.SpeedProbe() as b.PROBE, AttributeStore.open(url) as store:
            compression = b.session_wal_compression(store)
            print(f"  the store's sessions: wal_compression {compression}", flush=True)
            b.timed(
                "run 1: write (all new)", lambda: b.write_run(store, b.predictions(n, seed, 1, share), rules), results
            )
            b.timed("run 1: select (everyone)", lambda: b.count_selection(store), results)
            b.timed("acknowledge all (bulk SQL)", lambda: b.acknowledge(store, None), results)
            b.timed("a day later (autovacuum, checkpoint)", lambda: b.a_day_later(url), results)
            run2 = b.timed(
                "run 2: write (5% changed)",
                lambda: b.write_run(store, b.predictions(n, seed, 2, share), rules),
                results,
            )
            meter = b.WAL
            compare(engine, meter, "as left", compression)
            compare(engine, meter, "warm", compression)
            if drop_from_page_cache(engine, ["destination_state", "pk_destination_state"]):
                compare(engine, meter, "cold", compression)
            else:
                print("  comparison, cold: skipped (the server's files cannot be opened from here)", flush=True)
            compare(engine, meter, "after update", compression)
            # The daily cycle: run 2's selection, its acknowledgement, a day, run 3.
            b.timed("run 2: select", lambda: b.count_selection(store), results)
            b.timed("acknowledge run 2 (bulk SQL)", lambda: b.acknowledge(store, run2), results)
            b.timed("a day later (autovacuum, checkpoint)", lambda: b.a_day_later(url), results)
            b.timed(
                "run 3: write (5% changed)",
                lambda: b.write_run(store, b.predictions(n, seed, 3, share), rules),
                results,
            )
            selected = b.timed("run 3: select", lambda: b.count_selection(store), results)
            assert selected == b.changed_count(n, seed, 3, share), selected
            total = results["run 3: write (5% changed)"] + results["run 3: select"]
            print(f"  run 3 write + select: {total:.2f} s; selection = exactly the {selected:,} changed", flush=True)
    finally:
        b.WAL.close()
        engine.dispose()
        if not args.keep:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
