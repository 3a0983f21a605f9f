"""The whole issue-3 benchmark table in one command: every prediction figure beside its target and its peer.

    .venv/bin/python bench/predictions.py                          # everything at full size (several minutes)
    .venv/bin/python bench/predictions.py --scale-data gen1m       # reuse (or create) the 1M files in gen1m/
    .venv/bin/python bench/predictions.py --quick                  # reduced sizes: a smoke run, not the figures

Parts (each in its own child process, so that peak memory and CPU time are each part's own):

- ``cdnow``: CDNOW counts and spend on the Fader–Hardie–Lee split (bench/cdnow.py), churnsync beside lifetimes.
- ``churn``: the learned churn model on CDNOW, 39-week churn (bench/churn.py --only cdnow); the peer is BG/NBD P0.
- ``truth``: generated data with known truth (bench/churn.py --only truth); the peer is the true probabilities.
- ``btyd``: BG/NBD and Pareto/NBD fitting speed against lifetimes (bench/btyd.py).
- ``scale``: train + score 1M customers (bench/churn.py --only scale).

The table at the end marks each figure ``meets`` or ``MISSED``. Nothing here fits or tunes on a holdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARTS = ("cdnow", "churn", "truth", "btyd", "scale")
_MARK = "PREDICTIONS-RESULT "


def _child(part: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one part in this process (the child) and return its figures."""
    sys.path.insert(0, str(HERE))
    if part == "cdnow":
        import cdnow

        return {"rows": cdnow.run(91)}
    if part == "btyd":
        import btyd

        return {"rows": btyd.run(args.bgnbd_customers, args.paretonbd_customers)}
    import churn

    ns = argparse.Namespace(
        trees=100,
        threads=args.threads,
        cdnow_label_days=91,
        cdnow_spacing_days=28,
        cdnow_cuts=4,
        truth_customers=args.truth_customers,
        customers=args.scale_customers,
        data=args.scale_data,
        max_training_rows=200_000,
    )
    if part == "churn":
        return churn.bench_cdnow(ns)
    if part == "truth":
        return churn.bench_truth(ns)
    return churn.bench_scale(ns)


def _run_part(part: str, argv: list[str]) -> dict[str, Any]:
    """Run one part in a child process, pass its output through and return its figures with its own cost."""
    print(f"\n## {part}", flush=True)
    started = time.perf_counter()
    before = os.times()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", part, *argv],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    after = os.times()
    result: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        if line.startswith(_MARK):
            result = json.loads(line[len(_MARK) :])
        else:
            print(line)
    if proc.returncode != 0 or not result:
        raise SystemExit(f"bench/predictions.py: part {part!r} failed (exit {proc.returncode})")
    result["_wall"] = time.perf_counter() - started
    result["_cpu"] = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    result["_load"] = os.getloadavg()[0]
    return result


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**MISSED**"


def _pct(value: float) -> str:
    return f"{value:+.1f} %"


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """The markdown rows: figure | churnsync | peer | target | verdict."""
    rows = ["| figure | churnsync | peer | target | verdict |", "|---|---|---|---|---|"]
    if "cdnow" in results:
        figures = results["cdnow"]["rows"]
        peers = {"BG/NBD": figures["lifetimes BG/NBD"], "Pareto/NBD": figures["lifetimes Pareto/NBD"]}
        for name, f in figures.items():
            if not name.startswith("churnsync"):
                continue
            peer = peers["Pareto/NBD" if "Pareto" in name else "BG/NBD"]
            label = name.replace("churnsync ", "")
            rows += [
                f"| CDNOW holdout total, {label} | {_pct(f['error'])} | {_pct(peer['error'])} (lifetimes) "
                f"| within ±5 % | {_verdict(abs(f['error']) <= 5.0)} |",
                f"| CDNOW MAE, {label} | {f['mae']:.3f} | {peer['mae']:.3f} | < 0.74 | {_verdict(f['mae'] < 0.74)} |",
                f"| CDNOW RMSE, {label} | {f['rmse']:.3f} | {peer['rmse']:.3f} | < 1.58 "
                f"| {_verdict(f['rmse'] < 1.58)} |",
                f"| CDNOW spend total, {label} × Gamma-Gamma | {_pct(f['spend_error'])} | "
                f"{_pct(peer['spend_error'])} | within ±7 % | {_verdict(abs(f['spend_error']) <= 7.0)} |",
            ]
    if "churn" in results:
        r = results["churn"]
        m, p = r["metrics"], r["peer"]
        rows += [
            f"| CDNOW 39-week churn AUC, champion ({r['champion']}) | {m['auc']:.3f} | {p['auc']:.3f} (BG/NBD P0) "
            f"| ≥ 0.78 | {_verdict(m['auc'] >= 0.78)} |",
            f"| CDNOW 39-week churn Brier, champion ({r['champion']}) | {m['brier']:.4f} | {p['brier']:.4f} "
            f"| ≤ 0.150 | {_verdict(m['brier'] <= 0.150)} |",
        ]
    if "truth" in results:
        r = results["truth"]
        m, t = r["metrics"], r["truth"]
        peer = r["candidates"].get("bgnbd", {})
        rows += [
            f"| generated data, 30-day churn AUC, champion ({r['champion']}) | {m['auc']:.3f} | "
            f"{t['auc']:.3f} (true probabilities); {peer.get('auc', float('nan')):.3f} (calibrated BG/NBD) "
            f"| within 0.01 of the truth's | {_verdict(t['auc'] - m['auc'] <= 0.01)} |",
            f"| generated data, expected calibration error | {m['ece']:.4f} | {t['ece']:.4f} (true probabilities) "
            f"| ≤ 0.02 | {_verdict(m['ece'] <= 0.02)} |",
        ]
    if "btyd" in results:
        for r in results["btyd"]["rows"]:
            rows.append(
                f"| {r['model']} fit, {r['customers']:,} customers | {r['churnsync']:.2f} s | "
                f"{r['lifetimes']:.2f} s (lifetimes) | ≥ 10× faster | "
                f"{r['speedup']:.1f}× {_verdict(r['speedup'] >= 10)} |"
            )
    if "scale" in results:
        r = results["scale"]
        rows += [
            f"| train + score {r['customers']:,} customers ({r['events']:,} events) | {r['total']:.1f} s "
            f"(train {r['fit']:.1f} s, score {r['score']:.1f} s; CPU {r['cpu']:.1f} s; load {r['load_average']:.1f}) "
            f"| — | ≤ 60 s | {_verdict(r['total'] <= 60.0)} |",
            f"| peak memory of that run | {r['peak_gib']:.2f} GiB | — | ≤ 4 GiB | {_verdict(r['peak_gib'] <= 4.0)} |",
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=PARTS, action="append", help="Run only these parts (repeatable).")
    parser.add_argument("--quick", action="store_true", help="Reduced sizes (a smoke run; not the reported figures).")
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads (default 2).")
    parser.add_argument("--truth-customers", type=int, default=50_000, help="Customers of the known-truth world.")
    parser.add_argument("--bgnbd-customers", type=int, default=1_000_000, help="Customers of the BG/NBD speed fit.")
    parser.add_argument("--paretonbd-customers", type=int, default=100_000, help="Customers of the Pareto/NBD fit.")
    parser.add_argument("--scale-customers", type=int, default=1_000_000, help="Customers of the scale run.")
    parser.add_argument("--scale-data", help="Folder of the scale run's generated files (reused when present).")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(_MARK + json.dumps(_child(args.child, args), default=float), flush=True)
        return
    if args.quick:
        args.truth_customers, args.bgnbd_customers = (
            min(args.truth_customers, 10_000),
            min(args.bgnbd_customers, 50_000),
        )
        args.paretonbd_customers, args.scale_customers = (
            min(args.paretonbd_customers, 5_000),
            min(args.scale_customers, 20_000),
        )
    argv = [
        f"--threads={args.threads}",
        f"--truth-customers={args.truth_customers}",
        f"--bgnbd-customers={args.bgnbd_customers}",
        f"--paretonbd-customers={args.paretonbd_customers}",
        f"--scale-customers={args.scale_customers}",
        *([f"--scale-data={args.scale_data}"] if args.scale_data else []),
    ]
    results = {part: _run_part(part, argv) for part in PARTS if not args.only or part in args.only}
    print("\n## Issue 3: predictions, each figure beside its target and its peer\n")
    for line in table(results):
        print(line)
    print()
    for part, r in results.items():
        print(f"{part}: {r['_wall']:.1f} s wall, {r['_cpu']:.1f} s CPU (child), 1-minute load average {r['_load']:.1f}")


if __name__ == "__main__":
    main()
