"""Benchmark the attribute store: write prediction runs and compute the next sync's changes.

For N customers × 8 attributes (6 numbers, 2 strings) with the default attribute rules, on SQLite and/or PostgreSQL:

1. run 1: every customer is new: write the run, then select the first sync's changes (everyone);
2. the destination acknowledges everything (bulk SQL here, doing what ``record_batch`` does per request: the
   acknowledged state, and the customers leave the destination's pending set; the sync's per-request path is
   benchmarked in issue 5);
3. run 2: 5 % of customers changed (probability moved across the tolerance and its tier), the rest jittered within
   tolerance: write, then select. This is the first selection after the full first sync: it compares the customers
   the write marked (nobody is left pending);
4. the destination acknowledges run 2's changes (bulk SQL), and run 3 changes another 5 %: write, then select, the
   steady state.

With ``--cold``, "a day later" ends with the store's files dropped from the OS page cache, as on a server whose
memory served other work between two daily runs: runs 2 and 3 then read from disk what they need at every size,
where without it a 1M store is still whole in memory and a 10M one only in part.

Each selection is checked to be exactly the changed customers. The generated predictions are streamed to the store
in chunks (``write_predictions`` takes an iterable of tables), so this process holds one chunk at a time and its peak
RSS is that of the store's own work (the whole of ``churnsync run``'s store side).

Prints wall seconds per step, this process's CPU seconds (on SQLite all the work; on PostgreSQL the client's share),
the 1-minute load average (the machine is shared: a high load stretches wall time), the speed probe, and the process's
peak RSS. The speed probe is a separate process that times a fixed pure-Python task every two seconds; the median of
its times during a step says how fast the machine ran then (the same code has run 2-3x slower on this machine kind
from one hour to the next, at the same load), so steps of different sizes can be compared per unit of machine speed.
The default size is small so ``make bench`` stays quick; docs/benchmarks.md has the commands of its figures, e.g.::

    python bench/store.py --customers 1000000 --engine both
    python bench/store.py --customers 10000000 --engine postgresql
    python bench/store.py --customers 10000000 --engine postgresql --cold
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from churnsync.config import AttributeSettings
from churnsync.store import AttributeStore

PG_ADMIN_URL = os.environ.get("CHURNSYNC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TIERS = np.array(["low", "medium", "high"], dtype=object)
SEGMENTS = np.array(["new", "active", "lapsing", "lost"], dtype=object)
#: Customers generated at a time.
CHUNK = 200_000


def _base(seed: int, k: int, count: int) -> dict[str, np.ndarray]:
    """Chunk ``k``'s run-1 scores: the same numbers every time it is regenerated."""
    rng = np.random.default_rng([seed, k])
    p = rng.random(count)
    return {
        "churn_probability": p,
        "p_alive": 1 - p,
        "expected_purchases_30d": rng.gamma(2.0, 0.5, count),
        "expected_purchases_90d": rng.gamma(2.0, 1.5, count),
        "clv": rng.gamma(2.0, 50.0, count),
        "recency_days": rng.integers(0, 365, count).astype(float),
    }


def _changed(seed: int, run: int, k: int, count: int, share: float) -> np.ndarray:
    """Positions in chunk ``k`` whose probability run ``run`` (2, 3, …) moves across the tolerance and its tier."""
    rng = np.random.default_rng([seed, run, k, 1])
    return np.sort(rng.choice(count, size=round(count * share), replace=False))


def predictions(n: int, seed: int, run: int, share: float) -> Iterator[pa.Table]:
    """Run ``run``'s predictions, chunk by chunk: run 1's scores, then each later run's moves, jittered."""
    for k, start in enumerate(range(0, n, CHUNK)):
        count = min(CHUNK, n - start)
        cols = _base(seed, k, count)
        p = cols["churn_probability"]
        for later in range(2, run + 1):
            moved = _changed(seed, later, k, count, share)
            p[moved] = np.where(p[moved] < 0.5, 0.9, 0.1)
        cols["p_alive"] = 1 - p
        if run > 1:
            # Score jitter within every tolerance (rounds to at most ±0.01); not on the probability, whose jitter
            # could cross a tier cut point: that is a real change, and this benchmark counts the exact 5 %.
            jitter = np.random.default_rng([seed, run, k, 2]).uniform(-0.004, 0.004, count)
            for key in ("expected_purchases_30d", "expected_purchases_90d"):
                cols[key] = np.clip(cols[key] + jitter, 0.0, None)
        cols["churn_risk"] = TIERS[np.digitize(p, [0.5, 0.75])]
        cols["segment"] = SEGMENTS[(cols["recency_days"] // 92).astype(int)]
        ids = np.char.add("c", np.arange(start, start + count).astype("U9")).astype(object)
        yield pa.table({"customer_id": pa.array(ids, pa.string()), **{k: pa.array(v) for k, v in cols.items()}})


def changed_count(n: int, seed: int, run: int, share: float) -> int:
    return sum(len(_changed(seed, run, k, min(CHUNK, n - start), share)) for k, start in enumerate(range(0, n, CHUNK)))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: The speed probe's task (about 20 ms on a quiet machine of this kind) and loop: one line per timing, on stdout.
_PROBE = """
import sys, time
def task():
    total = 0
    for i in range(200_000):
        total += (i * i) % 7
    return sorted(str(i) for i in range(20_000))[-1], total
while True:
    start = time.monotonic()
    task()
    end = time.monotonic()
    print(end, end - start, flush=True)
    time.sleep(2.0)
"""


class SpeedProbe:
    """A child process that times a fixed task every two seconds; ``during(start, end)`` is its median then (ms)."""

    def __init__(self) -> None:
        self._child = subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, text=True)
        self._times: list[tuple[float, float]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._child.stdout is not None
        for line in self._child.stdout:
            stamp, took = line.split()
            self._times.append((float(stamp), float(took)))

    def during(self, start: float, end: float) -> float | None:
        times = [took for stamp, took in list(self._times) if start <= stamp <= end]
        return statistics.median(times) * 1000 if times else None

    def __enter__(self) -> SpeedProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self._child.kill()
        self._child.wait()


#: Set by main(): the probe the steps report.
PROBE: SpeedProbe | None = None

#: The server's checkpoint counters: pg_stat_checkpointer from PostgreSQL 17, pg_stat_bgwriter before.
_CHECKPOINTS = (
    "SELECT num_timed + num_requested FROM pg_stat_checkpointer",
    "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
)


class WalMeter:
    """PostgreSQL: the WAL the server wrote during a step, its full-page images and its checkpoints.

    Server-wide figures (the WAL insert position, ``pg_stat_wal`` from PostgreSQL 14), read before and after each
    step: they include what other sessions did meanwhile (run one benchmark at a time). A full-page image is the whole
    page written to the WAL at its first change after a checkpoint; many of them in a step that reads (a selection)
    mean it pruned pages that a checkpoint had already flushed (docs/benchmarks.md, "Where the 10M daily run's time
    goes").
    """

    def __init__(self, url: str) -> None:
        self._engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        self._checkpoints: str | None = None
        with self._engine.connect() as conn:
            for query in _CHECKPOINTS:
                try:
                    conn.execute(sa.text(query))
                except sa.exc.ProgrammingError:
                    continue
                self._checkpoints = query
                break

    def read(self) -> tuple[int, int, int]:
        with self._engine.connect() as conn:
            # The WAL position is exact; the full-page images are the sessions' statistics, which a session reports
            # when it goes idle, at most once a second: a step's last second may show in the next step's count.
            written = conn.execute(sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')")).scalar_one()
            fpi = conn.execute(sa.text("SELECT wal_fpi FROM pg_stat_wal")).scalar_one()
            checkpoints = conn.execute(sa.text(self._checkpoints)).scalar_one() if self._checkpoints else 0
        return int(written), int(fpi), int(checkpoints)

    def close(self) -> None:
        self._engine.dispose()


#: Set by bench() for PostgreSQL: the meter the steps report.
WAL: WalMeter | None = None


def timed(label: str, fn: Callable[[], Any], results: dict[str, float]) -> Any:
    wal_before = WAL.read() if WAL is not None else None
    start, cpu, began = time.perf_counter(), time.process_time(), time.monotonic()
    value = fn()
    results[label] = time.perf_counter() - start
    used = time.process_time() - cpu
    load = os.getloadavg()[0]
    speed = PROBE.during(began, time.monotonic()) if PROBE is not None else None
    probe = f", probe {speed:5.1f} ms" if speed is not None else ""
    print(
        f"  {label:<40} {results[label]:8.2f} s  (this process's CPU {used:7.2f} s, load {load:4.1f}{probe})"
        f"   peak RSS {peak_rss_mib():7.0f} MiB",
        flush=True,
    )
    if WAL is not None and wal_before is not None:
        written, fpi, checkpoints = (after - before for after, before in zip(WAL.read(), wal_before, strict=True))
        print(
            f"    server WAL {written / 1e6:,.0f} MB, full-page images {fpi:,}, checkpoints {checkpoints}", flush=True
        )
    return value


#: Appended to a PostgreSQL store URL's options by ``--no-wal-compression``: the store's sessions then keep the
#: server's uncompressed full-page images (the store compresses them only where nobody chose; see its
#: ``_compress_full_pages``), for a comparison.
NO_WAL_COMPRESSION = "%20-cwal_compression%3Doff"


def session_wal_compression(store: AttributeStore) -> str:
    """PostgreSQL: the ``wal_compression`` of the store's sessions."""
    with store.transaction("read wal_compression") as conn:
        return str(conn.exec_driver_sql("SELECT current_setting('wal_compression')").scalar_one())


def write_run(store: AttributeStore, chunks: Iterator[pa.Table], rules: AttributeSettings) -> int:
    run = store.start_prediction_run(
        as_of=datetime.now(UTC) - timedelta(days=1), horizon_days=30, model_version="bench", details={}
    )
    summary = store.write_predictions(run, chunks, rules)
    store.finish_prediction_run(run, status="succeeded", summary={"values_changed": summary.values_changed})
    for advice in summary.advice:  # what `churnsync run` logs as a warning
        print(f"    store advice: {advice}", flush=True)
    return run


def count_selection(store: AttributeStore) -> int:
    return sum(len(chunk) for chunk in store.select_changes("braze", chunk_size=5000))


def acknowledge(store: AttributeStore, run: int | None) -> None:
    """What a complete sync leaves behind, in bulk SQL (bench shortcut, not churnsync's sync path).

    ``run`` None: everything (the first sync); else the values that run changed. As ``record_batch`` does for each
    acknowledged request: the acknowledgements these replace move to the log (``destination_acks``), the values are
    upserted into the acknowledged state in customer order (the order of a selection), and the customers leave the
    destination's pending set. In one of the store's sessions (with its settings, e.g. WAL compression).
    """
    columns = "destination, customer_id, attribute_id, num_value, text_value, sync_run_id, acknowledged_at"
    values = "SELECT 'braze', customer_id, attribute_id, num_value, text_value, 1, updated_at FROM attribute_values"
    with store.transaction("acknowledge (benchmark)", write=True) as conn:
        if run is None:
            acknowledged = f"{values} ORDER BY customer_id, attribute_id"
            conn.execute(sa.text(f"INSERT INTO destination_state ({columns}) {acknowledged}"))
        else:
            conn.execute(
                sa.text(
                    f"INSERT INTO destination_acks ({columns}) SELECT d.destination, d.customer_id, d.attribute_id, "
                    "d.num_value, d.text_value, d.sync_run_id, d.acknowledged_at FROM destination_state d "
                    "JOIN attribute_values v ON v.customer_id = d.customer_id AND v.attribute_id = d.attribute_id "
                    "WHERE d.destination = 'braze' AND v.prediction_run_id = :run "
                    "ORDER BY d.customer_id, d.attribute_id"
                ),
                {"run": run},
            )
            acknowledged = f"{values} WHERE prediction_run_id = :run ORDER BY customer_id, attribute_id"
            conn.execute(
                sa.text(
                    f"INSERT INTO destination_state ({columns}) {acknowledged} "
                    "ON CONFLICT (destination, customer_id, attribute_id) DO UPDATE SET "
                    "num_value = excluded.num_value, text_value = excluded.text_value, "
                    "sync_run_id = excluded.sync_run_id, acknowledged_at = excluded.acknowledged_at"
                ),
                {"run": run},
            )
        pending = "DELETE FROM selection_pending WHERE destination = 'braze'"
        if run is not None:
            pending += " AND customer_id IN (SELECT customer_id FROM attribute_values WHERE prediction_run_id = :run)"
        conn.execute(sa.text(pending), {"run": run})
        if store.dialect == "postgresql":
            conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))  # this session's counts, for a_day_later


def a_day_later(url: str) -> None:
    """PostgreSQL: what the server does in the day between a sync and the next run, before that run is timed.

    Autovacuum, with its default thresholds (this benchmark's server may run with it off): a table with more dead
    rows than 50 + 20 % of its live rows, or more rows inserted since its last vacuum than 1,000 + 20 %, is
    vacuumed; one with more rows changed since its last analysis than 50 + 10 % is analysed. Then a checkpoint
    writes the sync's pages out, as the checkpointer would have.
    """
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT relname, n_dead_tup > 50 + 0.2 * n_live_tup OR n_ins_since_vacuum > 1000 + 0.2 * n_live_tup, "
                "n_mod_since_analyze > 50 + 0.1 * n_live_tup FROM pg_stat_user_tables "
                "WHERE schemaname = current_schema() ORDER BY relname"
            )
        ).all()
        done = []
        for table, vacuum, analyze in tables:
            if vacuum or analyze:
                conn.execute(sa.text(f"{'VACUUM (ANALYZE)' if vacuum else 'ANALYZE'} {table}"))
                done.append(f"{table} ({'vacuumed' if vacuum else 'analysed'})")
        conn.execute(sa.text("CHECKPOINT"))
    engine.dispose()
    print(f"    autovacuum would have: {', '.join(done) or 'nothing to vacuum'}; checkpoint", flush=True)


#: A file of a PostgreSQL relation: its main fork's segments (``16384``, ``16384.1`` …) and its other forks.
_RELATION_FILE = re.compile(r"^(?P<node>\d+)(\.\d+|_fsm|_vm|_init)?$")


def store_files(store: AttributeStore, url: str) -> list[Path]:
    """The files that hold the store: SQLite's database with its WAL; on PostgreSQL, every relation of the store's
    schema (tables, keys, indexes, sequences, and the TOAST tables and their keys) with all their segments and forks,
    found in the server's data directory (so only on the server's host, as its user or root)."""
    if store.dialect == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        return [f for f in (path, path.with_name(path.name + "-wal")) if f.exists()]
    with store.transaction("find the store's files (benchmark)") as conn:
        rows = conn.execute(
            sa.text(
                "WITH mine AS (SELECT oid, reltoastrelid FROM pg_class "
                "WHERE relnamespace = current_schema()::regnamespace) "
                "SELECT current_setting('data_directory'), pg_relation_filepath(c.oid) FROM pg_class c "
                "WHERE c.oid IN (SELECT oid FROM mine) OR c.oid IN (SELECT reltoastrelid FROM mine) "
                "OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT reltoastrelid FROM mine))"
            )
        ).all()
    # Relations without storage of their own (a view, a partitioned table) have no path. Each directory (one per
    # database and tablespace) is listed once, for all the store's relations in it.
    nodes: dict[Path, set[str]] = {}
    for data_dir, relative in rows:
        if relative is not None:
            main = Path(data_dir) / relative
            nodes.setdefault(main.parent, set()).add(main.name)
    files = []
    for directory, names in nodes.items():
        try:
            entries = list(directory.iterdir())
        except PermissionError:
            raise SystemExit(
                f"--cold: cannot read the PostgreSQL data directory {rows[0][0]}: run the benchmark on the server's "
                "host as the server's user or root"
            ) from None
        files += [f for f in entries if (m := _RELATION_FILE.match(f.name)) and m["node"] in names]
    return files


def drop_page_cache(store: AttributeStore, url: str) -> None:
    """The next day's run starts with the store out of memory: each of the store's files is written back (fsync) and
    dropped from the OS page cache (``posix_fadvise`` DONTNEED), as on a server whose memory served other work
    since the last run. At every size the run then reads from disk what it needs, instead of finding a 1M store
    whole in the page cache and only part of a 10M one. On PostgreSQL the server's own ``shared_buffers`` keep what
    they hold (128 MB at the defaults)."""
    files = store_files(store, url)
    held = 0
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            held += os.fstat(fd).st_size
        finally:
            os.close(fd)
    print(f"    dropped {len(files)} files of the store ({held / 1e9:.2f} GB) from the OS page cache", flush=True)


#: The tables whose size the benchmark prints (with their keys and indexes), and the whole store.
SIZED = ("attribute_values", "destination_state", "customers", "attribute_history", "destination_acks")


def store_size(store: AttributeStore, url: str) -> str:
    """The store's size after the last run: the big tables with their keys, and the whole (PostgreSQL: its schema;
    SQLite: the database file with its WAL)."""
    gb = 1e9
    if store.dialect == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal")]
        return f"{sum(f.stat().st_size for f in files if f.exists()) / gb:.2f} GB (database file and WAL)"
    with store.transaction("measure the store (benchmark)") as conn:
        sizes: dict[str, int] = dict(
            conn.execute(
                sa.text(
                    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).all()
        )
    parts = ", ".join(f"{name} {sizes.get(name, 0) / gb:.2f} GB" for name in SIZED)
    return f"{sum(sizes.values()) / gb:.2f} GB in all, with keys and indexes ({parts})"


def between_runs(store: AttributeStore, url: str, results: dict[str, float], *, cold: bool) -> None:
    """Between a sync and the next run (untimed for the runs): on PostgreSQL the server's upkeep; with ``cold``
    (``--cold``) the store's files then leave the OS page cache."""
    if store.dialect == "postgresql":
        timed("a day later (autovacuum, checkpoint)", lambda: a_day_later(url), results)
    if cold:
        timed("a day later (page cache dropped)", lambda: drop_page_cache(store, url), results)


def bench(
    engine: str,
    n: int,
    seed: int,
    share: float,
    runs: int,
    *,
    write_only: bool = False,
    wal_compression: bool = True,
    cold: bool = False,
) -> dict[str, float]:
    global WAL
    results: dict[str, float] = {}
    print(f"{engine}: {n:,} customers × 8 attributes, load {os.getloadavg()[0]:.1f}", flush=True)
    tmp = tempfile.TemporaryDirectory()
    admin = None
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    if engine == "sqlite":
        url = f"sqlite:///{Path(tmp.name) / 'store.db'}"
    else:
        admin = sa.create_engine(PG_ADMIN_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            buffers = conn.execute(sa.text("SHOW shared_buffers")).scalar()
            wal_size = conn.execute(sa.text("SHOW max_wal_size")).scalar()
        print(f"  server: shared_buffers {buffers}, max_wal_size {wal_size}", flush=True)
        url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}" + ("" if wal_compression else NO_WAL_COMPRESSION)
        WAL = WalMeter(PG_ADMIN_URL)
    rules = AttributeSettings()
    try:
        with AttributeStore.open(url) as store:
            if engine == "postgresql":
                print(f"  the store's sessions: wal_compression {session_wal_compression(store)}", flush=True)
            timed("run 1: write (all new)", lambda: write_run(store, predictions(n, seed, 1, share), rules), results)
            if write_only:
                print(f"  peak RSS of this process: {peak_rss_mib():.0f} MiB (run 1's write only)", flush=True)
                return results
            selected = timed("run 1: select (everyone)", lambda: count_selection(store), results)
            assert selected == n, (selected, n)
            total = results["run 1: write (all new)"] + results["run 1: select (everyone)"]
            print(f"  run 1 write + select (first load): {total:.2f} s; selection = exactly the {n:,} customers")
            timed("acknowledge all (bulk SQL)", lambda: acknowledge(store, None), results)
            between_runs(store, url, results, cold=cold)
            for run in range(2, runs + 1):
                expected = changed_count(n, seed, run, share)
                label = f"run {run}: write ({share:.0%} changed)"
                prediction_run = timed(
                    label, lambda r=run: write_run(store, predictions(n, seed, r, share), rules), results
                )
                selected = timed(f"run {run}: select", lambda: count_selection(store), results)
                assert selected == expected, (selected, expected)
                total = results[label] + results[f"run {run}: select"]
                print(f"  run {run} write + select: {total:.2f} s; selection = exactly the {expected:,} changed")
                if run < runs:
                    timed(f"acknowledge run {run} (bulk SQL)", lambda r=prediction_run: acknowledge(store, r), results)
                    between_runs(store, url, results, cold=cold)
            print(f"  store size: {store_size(store, url)}", flush=True)
        print(f"  peak RSS of this process: {peak_rss_mib():.0f} MiB", flush=True)
    finally:
        if WAL is not None:
            WAL.close()
            WAL = None
        if admin is not None:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        tmp.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=50_000, help="Customers per run (default 50,000).")
    parser.add_argument(
        "--engine", choices=["sqlite", "postgresql", "both"], default="both", help="Which store engine(s)."
    )
    parser.add_argument("--changed-share", type=float, default=0.05, help="Share of customers changed per run.")
    parser.add_argument("--runs", type=int, default=3, choices=[2, 3], help="Prediction runs (default 3).")
    parser.add_argument("--seed", type=int, default=7, help="Random seed.")
    parser.add_argument("--write-only", action="store_true", help="Only run 1's write (a first load), then stop.")
    parser.add_argument(
        "--no-wal-compression",
        action="store_true",
        help="PostgreSQL: the store's sessions keep wal_compression off (by default they compress, where allowed).",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="Before runs 2 and 3, drop the store's files from the OS page cache (needs the database files: SQLite's, "
        "or the PostgreSQL server's data directory on this host).",
    )
    args = parser.parse_args()
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    global PROBE
    with SpeedProbe() as PROBE:
        for engine in engines:
            bench(
                engine,
                args.customers,
                args.seed,
                args.changed_share,
                args.runs,
                write_only=args.write_only,
                wal_compression=not args.no_wal_compression,
                cold=args.cold,
            )


if __name__ == "__main__":
    main()
