"""BTYD fitting speed: churnsync vs lifetimes on the same synthetic customers, in the same process.

Customers follow a Pareto/NBD process (λ ~ Gamma(0.55, 10.6), μ ~ Gamma(0.6, 11.7), as on CDNOW), join
uniformly over a year and are observed to a common cut; purchase times are whole days, as churnsync's RFM
features make them, expressed in weeks. BG/NBD is fitted on --bgnbd-customers, Pareto/NBD on
--paretonbd-customers, each by churnsync and by lifetimes on the same arrays; the ratio is the speed-up.
Goals: both at least 10x faster than lifetimes.

Usage: .venv/bin/python bench/btyd.py [--bgnbd-customers 1000000] [--paretonbd-customers 100000]
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np

from churnsync.models import BetaGeoModel, ParetoNBDModel


def synthetic(n: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised Pareto/NBD draws: x, t_x, T in weeks, with times rounded to whole days."""
    rng = np.random.default_rng(seed)
    age_days = rng.integers(1, 366, n).astype(np.float64)
    lam = rng.gamma(0.55, 1.0 / 10.6, n) / 7.0  # per day
    mu = rng.gamma(0.6, 1.0 / 11.7, n) / 7.0
    seen = np.minimum(rng.exponential(1.0 / mu), age_days)
    x = rng.poisson(lam * seen)
    # The last of x uniform times on [0, seen] is seen * U^(1/x).
    last = np.where(x > 0, seen * rng.uniform(size=n) ** (1.0 / np.maximum(x, 1)), 0.0)
    t_x = np.minimum(np.floor(last), age_days)
    x = np.where(t_x > 0, x, 0)  # a repeat purchase on the first day merges into it
    return x.astype(np.float64), np.where(x > 0, t_x, 0.0) / 7.0, age_days / 7.0


def timed_fit(cls: Any, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> tuple[float, Any]:
    started = time.perf_counter()
    result = cls().fit(x, t_x, T)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bgnbd-customers", type=int, default=1_000_000, help="customers for the BG/NBD fits")
    parser.add_argument("--paretonbd-customers", type=int, default=100_000, help="customers for the Pareto/NBD fits")
    args = parser.parse_args()
    run(args.bgnbd_customers, args.paretonbd_customers)


def run(bgnbd_customers: int, paretonbd_customers: int) -> list[dict[str, Any]]:
    """Print the speed table; return per model its customers, distinct rows, both fit times and the speed-up."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter, ParetoNBDFitter

        rows = []
        for name, n, ours_cls, theirs_cls in (
            ("BG/NBD", bgnbd_customers, BetaGeoModel, BetaGeoFitter),
            ("Pareto/NBD", paretonbd_customers, ParetoNBDModel, ParetoNBDFitter),
        ):
            x, t_x, T = synthetic(n)
            ours_s, ours = timed_fit(ours_cls, x, t_x, T)
            theirs_s, theirs = timed_fit(theirs_cls, x, t_x, T)
            ours_ll = float(ours.log_likelihood_)
            ours_params = ", ".join(f"{v:.4g}" for v in vars(ours.params_).values())
            theirs_params = ", ".join(f"{float(v):.4g}" for v in theirs.params_.values)
            unique = int(ours.n_unique_)
            rows.append((name, n, unique, ours_s, theirs_s, ours_params, theirs_params, ours_ll))
    print("| model | customers | distinct (x, t_x, T) | churnsync s | lifetimes s | speed-up (goal >= 10x) |")
    print("|---|---|---|---|---|---|")
    for name, n, unique, ours_s, theirs_s, *_ in rows:
        ratio = theirs_s / ours_s
        verdict = "meets" if ratio >= 10 else "MISSES"
        print(f"| {name} | {n:,} | {unique:,} | {ours_s:.2f} | {theirs_s:.2f} | {ratio:.1f}x ({verdict}) |")
    print()
    for name, _, _, _, _, ours_params, theirs_params, ll in rows:
        print(f"{name}: churnsync params ({ours_params}), log-likelihood {ll:,.1f}; lifetimes params ({theirs_params})")
    return [
        {
            "model": name,
            "customers": n,
            "distinct": unique,
            "churnsync": ours_s,
            "lifetimes": theirs_s,
            "speedup": theirs_s / ours_s,
        }
        for name, n, unique, ours_s, theirs_s, *_ in rows
    ]


if __name__ == "__main__":
    main()
