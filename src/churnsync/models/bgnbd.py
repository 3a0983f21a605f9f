"""The BG/NBD model (Fader, Hardie & Lee 2005, "Counting your customers the easy way"), fitted by maximum likelihood.

Each customer buys as a Poisson process with rate λ ~ Gamma(r, α) and, after every repeat purchase, drops out
for good with probability p ~ Beta(a, b). From a customer's repeat purchases ``x``, the time of the last one
``t_x`` and the time since the first purchase ``T`` (all in one time unit, e.g. weeks), the fitted model gives
the expected number of purchases and the probability of none in a coming period, and P(alive).

Fitting is fast because the likelihood only depends on the distinct (x, t_x, T) rows: they are fitted once,
weighted by how many customers share them. Parameters are optimised on the log scale with L-BFGS-B from
several starting points, with an analytic gradient; terms that depend on x alone are computed once per
distinct x.

Example::

    >>> import numpy as np
    >>> model = BetaGeoModel().fit(frequency=[2, 1, 0, 0, 5, 3, 0, 1], recency=[30.4, 1.7, 0, 0, 35, 20, 0, 10],
    ...                            T=[38.9, 38.9, 38.9, 38.9, 38.0, 37.0, 36.0, 36.0])
    >>> churn = model.prob_no_purchase(4.0, frequency=[0, 5], recency=[0, 35], T=[38.9, 38.0])
    >>> bool(churn[0] > churn[1])
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

from churnsync.errors import ConvergenceError, ModelError
from churnsync.models._mle import LOG_BOUND, MLEModel

__all__ = ["BetaGeoModel", "BetaGeoParams"]

_RECENCY_TOLERANCE = 1e-6
# Starting points as (r, alpha multiplier, a, b); alpha = multiplier * r * mean(T) / mean(x), so every start
# matches the observed purchase rate whatever the time unit.
_STARTS = ((1.0, 1.0, 1.0, 1.0), (0.3, 1.0, 0.8, 3.0), (2.0, 1.0, 2.0, 5.0), (0.5, 0.5, 0.5, 0.5))


@dataclass(frozen=True)
class BetaGeoParams:
    """Fitted BG/NBD parameters: purchase rates ~ Gamma(r, alpha), dropout probability ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _as_float(name: str, values: Any, model: str = "BG/NBD") -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"{model}: {name} must be numeric", remedy="Pass numbers (arrays or scalars)") from None
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ModelError(
            f"{model}: {name} has {bad} missing or non-finite value(s)",
            remedy="Drop or fill those customers before fitting or predicting",
        )
    if np.any(array < 0):
        raise ModelError(
            f"{model}: {name} has {int(np.count_nonzero(array < 0))} negative value(s) (minimum {array.min()})",
            remedy="Check the RFM features: counts and times cannot be negative",
        )
    return array


def _check_history(frequency: Any, recency: Any, T: Any, model: str = "BG/NBD") -> Arrays:
    """Validated, broadcast (x, t_x, T) arrays; t_x is clipped to T within a tiny tolerance."""
    x = _as_float("frequency", frequency, model)
    t_x = _as_float("recency", recency, model)
    age = _as_float("T", T, model)
    try:
        x, t_x, age = np.broadcast_arrays(x, t_x, age)
    except ValueError:
        raise ModelError(
            f"{model}: frequency, recency and T have incompatible shapes {x.shape}, {t_x.shape}, {age.shape}",
            remedy="Pass one value per customer in each",
        ) from None
    if np.any(x != np.floor(x)):
        raise ModelError(
            f"{model}: frequency must be whole numbers of repeat purchases",
            remedy="Count repeat purchase days (distinct purchase days minus one)",
        )
    over = t_x - age
    if np.any(over > _RECENCY_TOLERANCE * np.maximum(1.0, age)):
        raise ModelError(
            f"{model}: recency exceeds T for {int(np.count_nonzero(over > 0))} customer(s) "
            f"(by up to {float(over.max()):.6g})",
            remedy="Recency is measured from the first purchase to the last one, T to the cut: check both",
        )
    return x, np.minimum(t_x, age), age


class _FitData:
    """The distinct (x, t_x, T) rows with their total weights, split by x = 0 and x > 0.

    Distinct rows are found by factorising each column and combining the codes into one integer key:
    ``np.unique(axis=0)`` on a million stacked rows sorts structured values and took about 4 s; this takes
    a few tenths of a second.
    The likelihood then needs log(α + T) and log(α + t_x) only once per distinct T and t_x value.
    """

    def __init__(self, x: np.ndarray, t_x: np.ndarray, age: np.ndarray, weights: np.ndarray | None) -> None:
        # t_x carries no information when x = 0: zero it so those rows collapse onto distinct T values.
        t_x = np.where(x > 0, t_x, 0.0)
        # x holds whole numbers: use them as their own codes unless the range is huge (a sort is then cheaper
        # than per-x terms over every value up to the maximum).
        x_max = int(x.max())
        if x_max <= 4096:
            self.xs, xi = np.arange(x_max + 1, dtype=np.float64), x.astype(np.int64)
        else:
            self.xs, xi = np.unique(x, return_inverse=True)
        self.Ts, ti = np.unique(age, return_inverse=True)
        self.txs, txi = np.unique(t_x, return_inverse=True)
        n_x, n_T, n_tx = self.xs.size, self.Ts.size, self.txs.size
        if n_x * n_T * n_tx < 2**62:
            key = (xi.astype(np.int64) * n_T + ti) * n_tx + txi
            keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
            u_xi, rest = np.divmod(keys, n_T * n_tx)
            u_ti, u_txi = np.divmod(rest, n_tx)
        else:  # pragma: no cover - needs more than 2**20 distinct values in every column
            codes = np.column_stack([xi, ti, txi])
            rows, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
            u_xi, u_ti, u_txi = rows[:, 0], rows[:, 1], rows[:, 2]
        inverse = inverse.reshape(-1)
        self.n_unique = int(counts.size)
        w = (
            counts.astype(np.float64)
            if weights is None
            else np.bincount(inverse, weights=weights, minlength=self.n_unique)
        )
        self.total = float(w.sum())
        self.w_by_x = np.bincount(u_xi, weights=w, minlength=n_x)
        repeat = self.xs[u_xi] > 0
        # Customers without a repeat purchase: their likelihood depends on T only.
        self.w0_by_T = np.bincount(u_ti[~repeat], weights=w[~repeat], minlength=n_T)
        self.w_rep = w[repeat]
        self.xi_rep = u_xi[repeat]
        self.ti_rep = u_ti[repeat]
        self.txi_rep = u_txi[repeat]
        self.x_rep = self.xs[self.xi_rep]
        self.any_repeat = bool(np.any(repeat & (w > 0)))
        self.mean_x = _wsum(w, self.xs[u_xi]) / self.total
        self.mean_T = _wsum(w, self.Ts[u_ti]) / self.total


def _wsum(left: np.ndarray, right: np.ndarray) -> float:
    """Σ left·right with numpy's own loop: ``np.dot`` goes to multi-threaded BLAS, whose spinning threads
    made each likelihood evaluation 2–5× slower on a busy 2-core machine."""
    return float(np.multiply(left, right).sum())


def _objective(theta: np.ndarray, data: _FitData, penalizer: float) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood per customer (plus the L2 penalty) and its gradient in log-parameters.

    Per customer, log L = log Γ(r+x) − log Γ(r) + r log α + log B(a, b+x) − log B(a, b)
    + log[(α+T)^−(r+x) + 1{x>0} a/(b+x−1) (α+t_x)^−(r+x)]   (FHL 2005, eq. 6).
    """
    r, alpha, a, b = np.exp(theta)
    xs = data.xs
    # Terms that depend on x only: once per distinct x, weighted by the customers with that x.
    g = gammaln(r + xs) - gammaln(r) + betaln(a, b + xs) - betaln(a, b)
    psi_abx = digamma(a + b + xs)
    wx = data.w_by_x
    ll = _wsum(wx, g) + data.total * r * math.log(alpha)
    g_r = _wsum(wx, digamma(r + xs) - digamma(r)) + data.total * math.log(alpha)
    g_alpha = data.total * r / alpha
    g_a = _wsum(wx, digamma(a + b) - psi_abx)
    g_b = _wsum(wx, digamma(b + xs) - psi_abx - digamma(b) + digamma(a + b))
    log_aT_all = np.log(alpha + data.Ts)
    inv_aT_all = 1.0 / (alpha + data.Ts)
    # x = 0: the bracket is (α+T)^−r.
    w0 = data.w0_by_T
    ll -= r * _wsum(w0, log_aT_all)
    g_r -= _wsum(w0, log_aT_all)
    g_alpha -= r * _wsum(w0, inv_aT_all)
    # x > 0: log bracket = u + log(1 + e^d), u = −(r+x) log(α+T), d = log(a/(b+x−1)) − (r+x) log((α+t_x)/(α+T)).
    if data.x_rep.size:
        log_aT = log_aT_all[data.ti_rep]
        log_at = np.log(alpha + data.txs)[data.txi_rep]
        inv_b = 1.0 / (b + np.maximum(xs, 1.0) - 1.0)
        rx = r + data.x_rep
        log_ratio = log_at - log_aT
        d = (math.log(a) + np.log(inv_b))[data.xi_rep] - rx * log_ratio
        w = data.w_rep
        # log(1 + e^d) and the logistic e^d / (1 + e^d) from one exp(-|d|): cheaper than logaddexp + expit.
        e = np.exp(-np.abs(d))
        softplus = np.maximum(d, 0.0) + np.log1p(e)
        share = 1.0 / (1.0 + e)
        share = np.where(d >= 0.0, share, e * share)
        ll += _wsum(w, softplus) - _wsum(w * rx, log_aT)
        ww2 = w * share  # weight times the share of the bracket from the "dropped out after t_x" term
        g_r -= _wsum(w, log_aT) + _wsum(ww2, log_ratio)
        inv_aT = inv_aT_all[data.ti_rep]
        inv_at = (1.0 / (alpha + data.txs))[data.txi_rep]
        g_alpha -= _wsum(w * rx, inv_aT) + _wsum(ww2 * rx, inv_at - inv_aT)
        sum_ww2 = float(ww2.sum())
        g_a += sum_ww2 / a
        g_b -= _wsum(ww2, inv_b[data.xi_rep])
    params = np.array([r, alpha, a, b])
    grad = np.array([g_r, g_alpha, g_a, g_b])
    value = -ll / data.total + penalizer * _wsum(params, params)
    # Chain rule to log-parameters: d/dθ = p · d/dp.
    gradient = (-grad / data.total + 2.0 * penalizer * params) * params
    return value, gradient


class BetaGeoModel(MLEModel[BetaGeoParams]):
    """BG/NBD customer-base model: fit on (frequency, recency, T), then predict per customer.

    Parameters
    ----------
    n_starts:
        Starting points for L-BFGS-B; the best converged fit is kept.
    penalizer:
        L2 penalty on (r, alpha, a, b) added to the mean negative log-likelihood, as ``lifetimes``'
        ``penalizer_coef``; 0 gives the plain maximum-likelihood estimate.
    tol, max_iter:
        Convergence tolerance and iteration cap of each L-BFGS-B run.
    time_unit_days:
        Length in days of the model's time unit (7.0 when recency and T are in weeks). Fitting does not use
        it; it travels with the parameters so that callers convert day horizons correctly.
    """

    _NAME = "BG/NBD"
    _KEY = "bgnbd"
    _PARAM_NAMES = ("r", "alpha", "a", "b")
    _HYPERPARAMETERS = (*MLEModel._HYPERPARAMETERS, "time_unit_days")
    _COUNTS = ("n_customers", "n_unique")
    _params_type = BetaGeoParams

    def __init__(
        self,
        *,
        n_starts: int = 4,
        penalizer: float = 0.0,
        tol: float = 1e-8,
        max_iter: int = 2000,
        time_unit_days: float = 1.0,
    ) -> None:
        self._init_mle(n_starts, penalizer, tol, max_iter, default_starts=4)
        self.time_unit_days = self._check_time_unit(time_unit_days)
        self.n_unique_: int = 0
        self.n_iterations_: int = 0

    # ------------------------------------------------------------------ fitting

    def _starts(self, data: _FitData) -> list[np.ndarray]:
        rate = max(data.mean_x, 1e-2) / max(data.mean_T, 1e-6)
        starts = [np.log([r, m * r / rate, a, b]) for r, m, a, b in _STARTS]
        rng = np.random.default_rng(20050301)
        while len(starts) < self.n_starts:
            starts.append(starts[0] + rng.normal(0.0, 1.0, size=4))
        return [np.clip(s, -LOG_BOUND + 1.0, LOG_BOUND - 1.0) for s in starts[: self.n_starts]]

    def fit(self, frequency: Any, recency: Any, T: Any, weights: Any = None) -> BetaGeoModel:
        """Fit by maximum likelihood to one row per customer (or group, with ``weights``); returns ``self``."""
        x, t_x, age = _check_history(frequency, recency, T)
        x, t_x, age = x.reshape(-1), t_x.reshape(-1), age.reshape(-1)
        if x.size == 0:
            raise ModelError("BG/NBD: no customers to fit", remedy="Check the cut date and qualifying events")
        w: np.ndarray | None = None
        if weights is not None:
            w = np.broadcast_to(_as_float("weights", weights), x.shape).astype(np.float64)
            if not np.any(w > 0):
                raise ModelError("BG/NBD: all weights are zero", remedy="Give positive weights")
        data = _FitData(x, t_x, age, w)
        if not data.any_repeat:
            raise ConvergenceError(
                "BG/NBD: no customer has a repeat purchase, so the dropout process cannot be estimated",
                remedy="Use a longer history or a more frequent qualifying event",
            )
        best, iterations = self._minimize(
            _objective, self._starts(data), (data,), jac=True, gtol=self.tol * 100, flat_tol=1e-5
        )
        self._set_fit(best, data.total)
        self.n_customers_ = int(x.size)
        self.n_unique_ = data.n_unique
        self.n_iterations_ = iterations
        return self

    # ------------------------------------------------------------------ predictions

    def _log_odds_dead(self, x: np.ndarray, t_x: np.ndarray, age: np.ndarray, p: BetaGeoParams) -> np.ndarray:
        """log[P(dropped out) / P(alive)] given the history; meaningful where x > 0."""
        return np.asarray(
            math.log(p.a)
            - np.log(p.b + np.maximum(x, 1.0) - 1.0)
            + (p.r + x) * (np.log(p.alpha + age) - np.log(p.alpha + t_x))
        )

    def p_alive(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(the customer has not dropped out) given their history; 1 for customers without a repeat purchase.

        Do not use it as a churn score (it is 1 for every one-time buyer): use :meth:`prob_no_purchase`.
        """
        p = self.params_
        x, t_x, age = _check_history(frequency, recency, T)
        return np.asarray(np.where(x > 0, expit(-self._log_odds_dead(x, t_x, age, p)), 1.0))

    def _growth(self, t: np.ndarray, x: np.ndarray, age: np.ndarray, p: BetaGeoParams) -> np.ndarray:
        """((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x−1; t/(α+T+t)), the hypergeometric factor of E[X]."""
        z = t / (p.alpha + age + t)
        c = p.a + p.b + x - 1.0
        log_one_minus_z = np.log(p.alpha + age) - np.log(p.alpha + age + t)
        with np.errstate(all="ignore"):
            # Euler's transformation keeps the series' parameters small for large x; fall back to the direct
            # form where it is not finite.
            growth = np.asarray(
                np.exp((p.a - 1.0) * log_one_minus_z) * hyp2f1(p.a + p.b - 1.0 - p.r, p.a - 1.0, c, z),
                dtype=np.float64,
            )
            bad = ~np.isfinite(growth)
            if np.any(bad):
                xb, zb = x[bad], z[bad]
                growth[bad] = np.exp((p.r + xb) * log_one_minus_z[bad]) * hyp2f1(p.r + xb, p.b + xb, c[bad], zb)
        return growth

    def expected_purchases(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """E[X(T, T+t) | x, t_x, T]: expected purchases in the next ``t`` time units (FHL 2005, eq. 10)."""
        p = self.params_
        horizon = _as_float("t", t)
        x, t_x, age = _check_history(frequency, recency, T)
        horizon, x, t_x, age = np.broadcast_arrays(horizon, x, t_x, age)
        numerator = (p.a + p.b + x - 1.0) / (p.a - 1.0) * (1.0 - self._growth(horizon, x, age, p))
        odds_dead = np.where(x > 0, np.exp(self._log_odds_dead(x, t_x, age, p)), 0.0)
        return np.asarray(numerator / (1.0 + odds_dead))

    def prob_no_purchase(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(X(T, T+t) = 0 | x, t_x, T): no purchase in the next ``t`` time units. This is the churn score.

        (1 − P(alive)) + P(alive) · ((α+T)/(α+T+t))^(r+x).
        """
        p = self.params_
        horizon = _as_float("t", t)
        x, t_x, age = _check_history(frequency, recency, T)
        horizon, x, t_x, age = np.broadcast_arrays(horizon, x, t_x, age)
        alive = np.where(x > 0, expit(-self._log_odds_dead(x, t_x, age, p)), 1.0)
        quiet_if_alive = np.exp((p.r + x) * (np.log(p.alpha + age) - np.log(p.alpha + age + horizon)))
        return np.asarray(np.clip((1.0 - alive) + alive * quiet_if_alive, 0.0, 1.0))

    def expected_unconditional(self, t: Any) -> np.ndarray:
        """E[X(t)]: expected repeat purchases in the first ``t`` time units of a new customer."""
        p = self.params_
        horizon = _as_float("t", t)
        zero = np.zeros_like(horizon)
        return np.asarray((p.a + p.b - 1.0) / (p.a - 1.0) * (1.0 - self._growth(horizon, zero, zero, p)))
