"""Benchmark the dashboard: how long each page takes, and how big it is, over a store of N customers.

Fills a SQLite store with two prediction runs (run 2 moves 10 % of the customers) written through
``AttributeStore.write_predictions``, starts the dashboard on a thread and requests every page (and the CSV export
of a segment) a few times. Prints per page the wall milliseconds of the first request (computed from the store), the
median of the next ones (what depends only on the current values is kept until the next prediction run) and the
response size: charts are binned in SQL, so a page's size must not grow with N, only its time. The default size is
small so ``make bench`` stays quick; the figures in docs/benchmarks.md used::

    python bench/web.py --customers 100000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

from churnsync.config import AttributeSettings
from churnsync.store import AttributeStore
from churnsync.web import create_app
from churnsync.web.server import serve_in_thread

TIERS = np.array(["low", "medium", "high"], dtype=object)
SEGMENTS = np.array(["new", "active", "at_risk", "hibernating", "lost"], dtype=object)


def predictions(ids: np.ndarray, rng: np.random.Generator) -> pa.Table:
    churn = rng.beta(2, 2, ids.size).round(2)
    return pa.table(
        {
            "customer_id": pa.array(ids.tolist(), pa.string()),
            "churn_probability": churn,
            "p_alive": (1 - churn).round(2),
            "expected_purchases_30d": rng.gamma(1.5, 0.5, ids.size).round(2),
            "clv_365d": rng.lognormal(4, 1, ids.size).round(2),
            "churn_risk": pa.array(TIERS[np.digitize(churn, [0.5, 0.75])].tolist(), pa.string()),
            "segment": pa.array(SEGMENTS[rng.integers(0, SEGMENTS.size, ids.size)].tolist(), pa.string()),
        }
    )


def fill(url: str, customers: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = np.array([f"c{i:09d}" for i in range(customers)], dtype=object)
    first = predictions(ids, rng)
    moved = rng.random(customers) < 0.10
    second = predictions(ids, rng)
    second = pa.table({name: np.where(moved, second[name], first[name]) for name in first.column_names})
    cut = datetime(2026, 6, 1, tzinfo=UTC)
    with AttributeStore.open(url) as store:
        for i, table in enumerate((first, second)):
            run = store.start_prediction_run(
                as_of=cut + timedelta(days=7 * i), horizon_days=30, model_version="bench", details={}
            )
            store.write_predictions(run, table, AttributeSettings())
            store.finish_prediction_run(run, status="succeeded", summary={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000, help="Customers in the store (default 20,000).")
    parser.add_argument(
        "--repeat", type=int, default=3, help="Requests per page: the first, then the median of the rest."
    )
    parser.add_argument("--seed", type=int, default=1, help="Random seed.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        started = time.perf_counter()
        fill(url, args.customers, args.seed)
        print(f"filled {args.customers:,} customers × 6 attributes, 2 runs in {time.perf_counter() - started:.1f} s")
        pages = [
            "/",
            "/model",
            "/predictions",
            "/customer?id=c000000001",
            "/syncs",
            "/segments?a=churn_probability&o=%3E%3D&v=0.7&a=clv_365d&o=%3E%3D&v=200",
            "/segments.csv?a=churn_probability&o=%3E%3D&v=0.7",
        ]
        with serve_in_thread(create_app(url)) as running, httpx.Client(base_url=running.url, timeout=300) as client:
            print(f"{'page':<75} {'first ms':>9} {'then ms':>8} {'bytes':>10}")
            for page in pages:
                times, size = [], 0
                for _ in range(args.repeat):
                    begin = time.perf_counter()
                    response = client.get(page)
                    times.append((time.perf_counter() - begin) * 1000)
                    response.raise_for_status()
                    size = len(response.content)
                then = statistics.median(times[1:]) if len(times) > 1 else float("nan")
                print(f"{page:<75} {times[0]:>9.0f} {then:>8.0f} {size:>10,}")
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
