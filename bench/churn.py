"""Benchmark of the learned churn model: CDNOW (FHL split), generated data with known truth, and scale.

    .venv/bin/python bench/churn.py                       # all three, small scale run (20k customers)
    .venv/bin/python bench/churn.py --only scale --customers 1000000 --threads 2

CDNOW: churn = no purchase in weeks 40–78 (1997-10-01 to 1998-06-30), scored at 1997-10-01 with events before it
only. The label window of the training cuts is shorter than the 39-week horizon (too little history before the cut),
so the level is anchored to the BG/NBD aggregate. Generated: `churnsync.events.generator` with its true 30-day churn
probabilities. Scale: generate, load, train and score; wall-clock seconds and peak resident memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from churnsync.events.generator import generate_sample
from churnsync.models.churn import ChurnModel, label_churn
from churnsync.models.evaluation import churn_metrics

CDNOW_CUT = datetime(1997, 10, 1)
CDNOW_END = datetime(1998, 7, 1)


def cdnow_events() -> duckdb.DuckDBPyConnection:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or spec.origin is None:
        raise SystemExit("bench/churn.py needs lifetimes (a dev dependency): it ships the CDNOW data")
    raw = np.loadtxt(Path(spec.origin).parent / "datasets" / "CDNOW_sample.txt", dtype=str)
    days = np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 2]], dtype="datetime64[us]")
    table = pa.table(
        {
            "customer_id": raw[:, 1],
            "occurred_at": pa.array(days),
            "event_type": ["purchase"] * raw.shape[0],
            "value": raw[:, 4].astype(np.float64),
        }
    )
    con = duckdb.connect()
    con.register("cdnow", table)
    con.execute("CREATE TABLE events AS SELECT * FROM cdnow")
    return con


def print_selection(model: ChurnModel) -> None:
    """The champion rule's inputs: validation log-loss, gap to the best and its standard error per candidate."""
    selection = (model.state_ or {}).get("selection", {})
    cells = [f"{n} log-loss {v['log_loss']:.4f} gap {v['gap']:+.4f} ± {v['se']:.4f}" for n, v in selection.items()]
    print("  selection (one-SE rule): " + ", ".join(cells))


def show(name: str, m: dict[str, float]) -> None:
    print(
        f"  {name:<28} AUC {m['auc']:.3f}  Brier {m['brier']:.4f}  log-loss {m['log_loss']:.4f}  "
        f"ECE {m['ece']:.4f}  lift quality {m['lift_quality']:.1%}  mean {m['mean_predicted']:.3f}"
    )


def bench_cdnow(args: argparse.Namespace) -> dict[str, Any]:
    con = cdnow_events()
    horizon = (CDNOW_END - CDNOW_CUT).days  # 273 days = 39 weeks
    t0 = time.perf_counter()
    model = ChurnModel(
        horizon_days=horizon,
        qualifying_events=["purchase"],
        label_days=args.cdnow_label_days,
        cut_spacing_days=args.cdnow_spacing_days,
        training_cuts=args.cdnow_cuts,
        n_estimators=args.trees,
        num_threads=args.threads,
    ).fit(con, CDNOW_CUT)
    scores = model.predict(con, CDNOW_CUT, all_candidates=True)
    seconds = time.perf_counter() - t0
    # The holdout: the label window crosses the scoring cut on purpose here (it is the test set).
    y = label_churn(con, scores.customer_id, CDNOW_CUT, horizon, ["purchase"], scoring_cut=CDNOW_END)
    r, b = scores.frame.rfm, scores.frame.btyd
    p0 = b.prob_no_purchase(horizon / 7.0, r.frequency, r.recency, r.T)
    print(f"CDNOW FHL split: {len(y):,} customers, churn rate {y.mean():.3f}, fit+score {seconds:.2f} s")
    print(f"  champion: {model.reason_}")
    print_selection(model)
    peer = churn_metrics(y, p0)
    show("BG/NBD P0 (39 weeks)", peer)
    candidates = {name: churn_metrics(y, p) for name, p in scores.candidates.items()}
    for name, metrics in candidates.items():
        show(f"{name}{' (champion)' if name == model.champion_ else ''}", metrics)
    m = churn_metrics(y, scores.churn_probability)
    print_brier_bounds(y, {**scores.candidates, "BG/NBD P0 (39 weeks)": p0})
    print(f"  goal AUC >= 0.78: {m['auc']:.3f} {'meets' if m['auc'] >= 0.78 else 'MISSED'}; "
          f"Brier <= 0.150: {m['brier']:.4f} {'meets' if m['brier'] <= 0.150 else 'MISSED'}")  # fmt: skip
    return {"champion": model.champion_, "reason": model.reason_, "metrics": m, "peer": peer,
            "candidates": candidates, "seconds": seconds, "customers": len(y)}  # fmt: skip


def print_brier_bounds(y: Any, probabilities: dict[str, Any]) -> None:
    """The lowest Brier score each model's ranking allows: isotonic regression fitted on the holdout itself.

    A diagnosis, not a model (it uses the outcomes it is scored on, and in-sample isotonic fits flatter it): no
    recalibration of these scores, however well informed, gets below it. Brier then moves only with a better ranking.
    """
    from sklearn.isotonic import IsotonicRegression

    cells = []
    for name, p in probabilities.items():
        fitted = IsotonicRegression(out_of_bounds="clip").fit(p, y).predict(p)
        cells.append(f"{name} {float(np.mean((fitted - y) ** 2)):.4f}")
    print("  lowest Brier any recalibration reaches (isotonic fitted on the holdout): " + ", ".join(cells))


def load_parquet(folder: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TABLE events AS SELECT CAST(customer_id AS VARCHAR) AS customer_id, "
        f"CAST(occurred_at AS TIMESTAMP) AS occurred_at, event_type, value FROM '{folder}/events.parquet'"
    )
    return con


def bench_truth(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        g = generate_sample(Path(tmp), customers=args.truth_customers, days=365, seed=4, fmt="parquet", horizons=(30,))
        con = load_parquet(Path(tmp))
        truth = con.execute(
            f"SELECT CAST(customer_id AS VARCHAR) AS id, true_churn_probability_30d AS p, purchases_next_30d AS n "
            f"FROM '{tmp}/truth.parquet' ORDER BY id"
        ).fetchnumpy()
    cut = datetime(g.cut.year, g.cut.month, g.cut.day)
    t0 = time.perf_counter()
    model = ChurnModel(horizon_days=30, qualifying_events=["purchase"], n_estimators=args.trees,
                       num_threads=args.threads).fit(con, cut)  # fmt: skip
    scores = model.predict(con, cut, all_candidates=True)
    seconds = time.perf_counter() - t0
    idx = np.searchsorted(truth["id"], scores.customer_id)
    y = (truth["n"][idx] == 0).astype(np.float64)
    true_p = truth["p"][idx]
    print(f"Generated data: {len(y):,} customers, 30-day churn rate {y.mean():.3f}, fit+score {seconds:.2f} s")
    print(f"  champion: {model.reason_}")
    print_selection(model)
    show("true probabilities", churn_metrics(y, true_p))
    candidates = {name: churn_metrics(y, p) for name, p in scores.candidates.items()}
    for name, metrics in candidates.items():
        show(f"{name}{' (champion)' if name == model.champion_ else ''}", metrics)
    m, t = churn_metrics(y, scores.churn_probability), churn_metrics(y, true_p)
    print(f"  goal ECE <= 0.02: {m['ece']:.4f} {'meets' if m['ece'] <= 0.02 else 'MISSED'}; AUC within 0.01 of the "
          f"truth's {t['auc']:.3f}: {m['auc']:.3f} {'meets' if t['auc'] - m['auc'] <= 0.01 else 'MISSED'}")  # fmt: skip
    return {"champion": model.champion_, "metrics": m, "truth": t, "candidates": candidates, "seconds": seconds,
            "customers": len(y)}  # fmt: skip


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.data) if args.data else Path(tmp)
        t0 = time.perf_counter()
        if not (folder / "events.parquet").exists():
            generate_sample(folder, customers=args.customers, days=365, seed=8, fmt="parquet", horizons=(30,))
        gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        con = load_parquet(folder)
        rows = con.execute("SELECT count(*) FROM events").fetchall()[0]
        last = con.execute("SELECT CAST(max(occurred_at) AS DATE) FROM events").fetchall()[0][0]
        load = time.perf_counter() - t0
    cut = datetime(last.year, last.month, last.day) + timedelta(days=1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = ChurnModel(horizon_days=30, qualifying_events=["purchase"], n_estimators=args.trees,
                       num_threads=args.threads, max_training_rows=args.max_training_rows).fit(con, cut)  # fmt: skip
    fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = model.predict(con, cut)
    score = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    load_average = os.getloadavg()[0]
    state = model.state_ or {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    total = fit + score
    print(f"Scale: {len(scores.customer_id):,} customers, {rows[0] if rows else 0:,} events "
          f"(generated in {gen:.1f} s, loaded in {load:.1f} s)")  # fmt: skip
    print(
        f"  train {fit:.1f} s (champion {model.champion_}, {state.get('training_rows', 0):,} stacked training rows, "
        f"customer sample share {state.get('customer_sample_share', 1.0):.3f}), score + drivers {score:.1f} s, "
        f"total {total:.1f} s, peak RSS {peak:.2f} GiB"
    )
    print(f"  train + score CPU time {cpu:.1f} s (this process), 1-minute load average {load_average:.1f}")
    print(f"  goal <= 60 s and <= 4 GiB: {'meets' if total <= 60 and peak <= 4 else 'MISSED'} "
          "(peak RSS covers the whole process: generation too unless --data names existing files)")  # fmt: skip
    return {"customers": len(scores.customer_id), "events": rows[0] if rows else 0, "load": load, "fit": fit,
            "score": score, "total": total, "cpu": cpu, "peak_gib": peak, "load_average": load_average}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["cdnow", "truth", "scale"], help="Run one part only.")
    parser.add_argument("--customers", type=int, default=20_000, help="Customers for the scale run (default 20k).")
    parser.add_argument("--truth-customers", type=int, default=50_000, help="Customers for the known-truth run.")
    parser.add_argument("--trees", type=int, default=100, help="LightGBM boosting rounds.")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads.")
    parser.add_argument("--data", help="Folder for the scale run's generated files (reused when present).")
    parser.add_argument("--max-training-rows", type=int, default=200_000, help="Training sample size (scale run).")
    parser.add_argument("--cdnow-label-days", type=int, default=91, help="Label window of the CDNOW training cuts.")
    parser.add_argument("--cdnow-spacing-days", type=int, default=28, help="Days between CDNOW training cuts.")
    parser.add_argument("--cdnow-cuts", type=int, default=4, help="Number of CDNOW training cuts.")
    args = parser.parse_args()
    if args.only in (None, "cdnow"):
        bench_cdnow(args)
    if args.only in (None, "truth"):
        bench_truth(args)
    if args.only in (None, "scale"):
        bench_scale(args)


if __name__ == "__main__":
    main()
