"""Benchmark the attribute store: write a prediction run and compute the next sync's changes.

For N customers × 8 attributes (6 numbers, 2 strings), on SQLite and/or PostgreSQL:

1. run 1: every customer is new: write the run, then select the first sync's changes (everyone);
2. the destination acknowledges everything (bulk SQL here: the sync's per-request path is benchmarked in issue 5);
3. run 2: 5 % of customers changed (probability moved beyond the tolerance, tier changed), the rest jittered within
   the tolerance: write the run, then select: the selection must be exactly those customers.

Prints wall seconds per step, this process's CPU seconds (on SQLite all the work; on PostgreSQL the client's share),
the 1-minute load average (the machine is shared: a high load stretches wall time), and the process's peak RSS (the
predictions table itself is in this process too, as in ``churnsync run``). The default size is small so ``make bench``
stays quick; the figures in docs/benchmarks.md used::

    python bench/store.py --customers 1000000 --engine both
    python bench/store.py --customers 10000000 --engine postgresql
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from churnsync.config import AttributeSettings
from churnsync.store import AttributeStore

PG_ADMIN_URL = os.environ.get("CHURNSYNC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TIERS = np.array(["low", "medium", "high"], dtype=object)
SEGMENTS = np.array(["new", "active", "lapsing", "lost"], dtype=object)


def predictions(n: int, seed: int, base: dict[str, np.ndarray] | None, changed: np.ndarray | None) -> pa.Table:
    """Run 1 (``base`` None) or run 2: the same as ``base`` jittered within tolerance, ``changed`` rows moved."""
    rng = np.random.default_rng(seed)
    ids = pa.array(np.char.add("c", np.arange(n).astype("U9")).astype(object), pa.string())
    if base is None:
        p = rng.random(n)
        cols = {
            "churn_probability": p,
            "p_alive": 1 - p,
            "expected_purchases_30d": rng.gamma(2.0, 0.5, n),
            "expected_purchases_90d": rng.gamma(2.0, 1.5, n),
            "clv": rng.gamma(2.0, 50.0, n),
            "recency_days": rng.integers(0, 365, n).astype(float),
        }
    else:
        # Score jitter, within every tolerance: rounds to at most ±0.01. (Not on the probability, whose jitter
        # could cross a tier cut point: that is a real change, and this benchmark counts the exact 5 %.)
        jitter = rng.uniform(-0.004, 0.004, n)
        cols = {k: v.copy() for k, v in base.items() if k not in ("churn_risk", "segment")}
        for key in ("expected_purchases_30d", "expected_purchases_90d"):
            cols[key] = np.clip(cols[key] + jitter, 0.0, None)
        assert changed is not None
        cols["churn_probability"][changed] = np.where(base["churn_probability"][changed] < 0.5, 0.9, 0.1)
        cols["p_alive"][changed] = 1 - cols["churn_probability"][changed]
    p = cols["churn_probability"]
    cols["churn_risk"] = TIERS[np.digitize(p, [0.5, 0.75])]
    cols["segment"] = SEGMENTS[(cols["recency_days"] // 92).astype(int)]
    table = pa.table({"customer_id": ids, **{k: pa.array(v) for k, v in cols.items()}})
    return table


def raw_columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.schema.names[1:]}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, fn, results: dict[str, float]):  # type: ignore[no-untyped-def]
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    results[label] = time.perf_counter() - start
    used = time.process_time() - cpu
    load = os.getloadavg()[0]
    print(
        f"  {label:<34} {results[label]:8.2f} s  (this process's CPU {used:7.2f} s, load {load:4.1f})"
        f"   peak RSS {peak_rss_mib():7.0f} MiB",
        flush=True,
    )
    return value


def write_run(store: AttributeStore, table: pa.Table, rules: AttributeSettings) -> int:
    run = store.start_prediction_run(
        as_of=datetime.now(UTC) - timedelta(days=1), horizon_days=30, model_version="bench", details={}
    )
    summary = store.write_predictions(run, table, rules)
    store.finish_prediction_run(run, status="succeeded", summary={"values_changed": summary.values_changed})
    return summary.values_changed


def count_selection(store: AttributeStore) -> int:
    return sum(len(chunk) for chunk in store.select_changes("braze", chunk_size=5000))


def acknowledge_all(url: str) -> None:
    """What a complete sync leaves behind, written in bulk (bench shortcut, not churnsync's sync path)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO destination_state (destination, customer_id, attribute, num_value, text_value, "
                "sync_run_id, acknowledged_at) SELECT 'braze', customer_id, attribute, num_value, text_value, 1, "
                "updated_at FROM attribute_values"
            )
        )
    engine.dispose()


def bench(engine: str, n: int, seed: int, share: float) -> dict[str, float]:
    results: dict[str, float] = {}
    print(f"{engine}: {n:,} customers × 8 attributes", flush=True)
    tmp = tempfile.TemporaryDirectory()
    admin = None
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    if engine == "sqlite":
        url = f"sqlite:///{Path(tmp.name) / 'store.db'}"
    else:
        admin = sa.create_engine(PG_ADMIN_URL)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    rules = AttributeSettings()
    try:
        first = predictions(n, seed, None, None)
        base = raw_columns(first)
        rng = np.random.default_rng(seed + 1)
        changed = np.sort(rng.choice(n, size=int(n * share), replace=False))
        second = predictions(n, seed + 2, base, changed)
        del base
        with AttributeStore.open(url) as store:
            timed("run 1: write (all new)", lambda: write_run(store, first, rules), results)
            selected = timed("run 1: select changes (everyone)", lambda: count_selection(store), results)
            assert selected == n, (selected, n)
            timed("acknowledge all (bulk SQL)", lambda: acknowledge_all(url), results)
            timed("run 2: write (5 % changed)", lambda: write_run(store, second, rules), results)
            selected = timed("run 2: select changes", lambda: count_selection(store), results)
            assert selected == len(changed), (selected, len(changed))
        total = results["run 2: write (5 % changed)"] + results["run 2: select changes"]
        print(f"  run 2 write + select: {total:.2f} s; selection = exactly the {len(changed):,} changed customers")
        print(f"  peak RSS of this process: {peak_rss_mib():.0f} MiB", flush=True)
    finally:
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
    parser.add_argument("--changed-share", type=float, default=0.05, help="Share of customers changed in run 2.")
    parser.add_argument("--seed", type=int, default=7, help="Random seed.")
    args = parser.parse_args()
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    for engine in engines:
        bench(engine, args.customers, args.seed, args.changed_share)


if __name__ == "__main__":
    main()
