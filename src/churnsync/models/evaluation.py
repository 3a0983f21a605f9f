"""Quality measures of churn scores and value forecasts, in plain numpy.

Every function takes the observed outcome first (``y``: 1 = churned, 0 = stayed) and the score second
(a probability, or any number where higher means more likely to churn for the ranking measures). Ties in
scores are handled exactly (as averages over every order of the tied customers).

**Lift quality** (Braze's "Prediction Quality" idea, made precise). Rank customers by score, highest first.
For an audience of the top ``k`` customers (``k = 1 .. n``) let ``captured(k)`` be the churners in it,
``random(k) = k·P/n`` what a random audience of that size catches on average (``P`` churners in all), and
``perfect(k) = min(k, P)`` the best possible. Then::

    lift_quality = Σ_k (captured(k) − random(k)) / Σ_k (perfect(k) − random(k))

the average lift over random across every audience size, scaled so that a random ranking scores 0 (in
expectation) and a perfect one 1; a ranking worse than random is negative. It equals the accuracy ratio
(the Gini coefficient of the gains curve) and, for scores without ties, ``2·AUC − 1`` rescaled by the
share of churners. Reports print it as a percentage.

Example::

    >>> import numpy as np
    >>> y = np.array([1, 1, 0, 0]); s = np.array([0.9, 0.8, 0.3, 0.1])
    >>> float(auc(y, s)), float(lift_quality(y, s))
    (1.0, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from churnsync.errors import DataError

__all__ = [
    "auc",
    "brier",
    "calibration_curve",
    "churn_metrics",
    "expected_calibration_error",
    "gains_by_decile",
    "lift_quality",
    "log_loss",
    "normalized_gini",
    "pr_auc",
]

_EPS = 1e-12


def _check(y: Any, s: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y, dtype=np.float64).ravel()
    ss = np.asarray(s, dtype=np.float64).ravel()
    if yy.shape != ss.shape:
        raise DataError(
            f"{what}: outcomes and scores differ in length ({yy.size} vs {ss.size})",
            remedy="Pass one score per customer, aligned with the outcomes",
        )
    if yy.size == 0:
        raise DataError(f"{what}: no customers to evaluate", remedy="Evaluate on a non-empty population")
    if not (np.all(np.isfinite(ss)) and np.all(np.isfinite(yy))):
        raise DataError(f"{what}: scores or outcomes contain NaN or infinity", remedy="Drop or fix those rows")
    return yy, ss


def _binary(y: np.ndarray, what: str) -> None:
    if not np.all((y == 0) | (y == 1)):
        raise DataError(f"{what}: outcomes must be 0 or 1", remedy="Pass churned = 1, stayed = 0")


def _tie_ranks(s: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of ``s``, ties sharing their mean rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(y: Any, s: Any) -> float:
    """Area under the ROC curve (probability that a random churner scores above a random stayer); NaN when
    only one class is present."""
    yy, ss = _check(y, s, "AUC")
    _binary(yy, "AUC")
    pos = float(yy.sum())
    neg = yy.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _tie_ranks(ss)
    return float((ranks[yy == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _groups_desc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tie groups of ``s`` from the highest score down: (sizes, positives per group)."""
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    yy = y[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1]
    sizes = np.diff(np.r_[starts, ss.size])
    positives = np.add.reduceat(yy, starts)
    return sizes.astype(np.float64), positives.astype(np.float64)


def pr_auc(y: Any, s: Any) -> float:
    """Average precision (area under the precision–recall curve, step-wise); NaN without churners."""
    yy, ss = _check(y, s, "PR-AUC")
    _binary(yy, "PR-AUC")
    total = yy.sum()
    if total == 0:
        return float("nan")
    sizes, positives = _groups_desc(yy, ss)
    tp = np.cumsum(positives)
    k = np.cumsum(sizes)
    return float(np.sum((positives / total) * (tp / k)))


def lift_quality(y: Any, s: Any) -> float:
    """Average lift over random across every audience size, 0 = random, 1 = perfect (module docstring)."""
    yy, ss = _check(y, s, "lift quality")
    _binary(yy, "lift quality")
    n = float(yy.size)
    pos = float(yy.sum())
    if pos == 0 or pos == n:
        return float("nan")
    sizes, positives = _groups_desc(yy, ss)
    before = np.cumsum(positives) - positives
    # Within a tie group the churners are spread evenly over its positions: Σ_j (C + p·j/m) = m·C + p·(m+1)/2.
    captured = float(np.sum(sizes * before + positives * (sizes + 1.0) / 2.0))
    k = np.arange(1, int(n) + 1, dtype=np.float64)
    random = float(np.sum(k * pos / n))
    perfect = float(np.sum(np.minimum(k, pos)))
    return (captured - random) / (perfect - random)


def brier(y: Any, p: Any) -> float:
    """Mean squared difference between probabilities and outcomes."""
    yy, pp = _check(y, p, "Brier score")
    return float(np.mean((pp - yy) ** 2))


def log_loss(y: Any, p: Any) -> float:
    """Mean negative log-likelihood of the outcomes (probabilities clipped to [1e-12, 1 − 1e-12])."""
    yy, pp = _check(y, p, "log-loss")
    pp = np.clip(pp, _EPS, 1.0 - _EPS)
    return float(-np.mean(yy * np.log(pp) + (1.0 - yy) * np.log1p(-pp)))


def calibration_curve(y: Any, p: Any, *, bins: int = 10) -> dict[str, list[float]]:
    """Per equal-width probability bin (empty bins left out): mean predicted, observed rate, count."""
    yy, pp = _check(y, p, "calibration curve")
    idx = np.clip((pp * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=pp, minlength=bins)
    sum_y = np.bincount(idx, weights=yy, minlength=bins)
    keep = count > 0
    return {
        "predicted": (sum_p[keep] / count[keep]).tolist(),
        "observed": (sum_y[keep] / count[keep]).tolist(),
        "count": count[keep].tolist(),
    }


def expected_calibration_error(y: Any, p: Any, *, bins: int = 10) -> float:
    """Σ over equal-width bins of (share of customers) × |mean predicted − observed rate|."""
    curve = calibration_curve(y, p, bins=bins)
    count = np.asarray(curve["count"])
    gap = np.abs(np.asarray(curve["predicted"]) - np.asarray(curve["observed"]))
    return float(np.sum(count * gap) / count.sum())


def gains_by_decile(y: Any, s: Any) -> dict[str, list[float]]:
    """Customers ranked by score (highest first) cut into 10 equal groups: per decile the outcome rate, the
    cumulative share of all churners captured (gains) and the lift over the overall rate."""
    yy, ss = _check(y, s, "gains")
    order = np.argsort(-ss, kind="mergesort")
    ranked = yy[order]
    edges = np.linspace(0, ranked.size, 11).round().astype(np.int64)
    sums = np.add.reduceat(ranked, edges[:-1]) if ranked.size >= 10 else np.array([ranked.sum()])
    counts = np.diff(edges) if ranked.size >= 10 else np.array([ranked.size])
    total = max(float(yy.sum()), _EPS)
    rate = sums / np.maximum(counts, 1)
    base = float(yy.mean()) or _EPS
    return {
        "rate": rate.tolist(),
        "gains": (np.cumsum(sums) / total).tolist(),
        "lift": (rate / base).tolist(),
    }


def normalized_gini(actual: Any, predicted: Any) -> float:
    """Gini of ``actual`` ordered by ``predicted`` divided by the Gini of the perfect order (1 = perfect ranking
    of value, 0 = random); for value forecasts such as CLV."""
    aa, pp = _check(actual, predicted, "normalized Gini")

    def gini(order_by: np.ndarray) -> float:
        sizes, sums = _groups_desc(aa, order_by)
        before = np.cumsum(sums) - sums
        captured = float(np.sum(sizes * before + sums * (sizes + 1.0) / 2.0))
        total = float(aa.sum())
        n = float(aa.size)
        return captured / (total * n) - (n + 1.0) / (2.0 * n) if total else float("nan")

    best = gini(aa)
    return gini(pp) / best if best else float("nan")


def churn_metrics(y: Any, p: Any) -> dict[str, float]:
    """Every churn measure at once: auc, pr_auc, brier, log_loss, ece, lift_quality, churn_rate, mean_predicted."""
    yy, pp = _check(y, p, "churn metrics")
    return {
        "auc": auc(yy, pp),
        "pr_auc": pr_auc(yy, pp),
        "brier": brier(yy, pp),
        "log_loss": log_loss(yy, pp),
        "ece": expected_calibration_error(yy, pp),
        "lift_quality": lift_quality(yy, pp),
        "churn_rate": float(yy.mean()),
        "mean_predicted": float(pp.mean()),
        "customers": float(yy.size),
    }
