"""The Pareto/NBD model (Schmittlein, Morrison & Colombo 1987), fitted by maximum likelihood.

While alive, a customer buys as a Poisson process with rate λ ~ Gamma(r, α); their lifetime is exponential with
rate μ ~ Gamma(s, β), independent of λ. Unlike BG/NBD, a customer can drop out at any time, also before a
first repeat purchase, so P(alive) is below 1 for one-time buyers too.

The likelihood (Fader & Hardie 2005, "A note on deriving the Pareto/NBD model", eq. 19) is

    L = Γ(r+x) α^r β^s / Γ(r) · [ (α+T)^−(r+x) (β+T)^−s + s ∫_{t_x}^{T} (α+y)^−(r+x) (β+y)^−(s+1) dy ].

The integral is (A0 in the literature, divided by r+s+x) the difference g(t_x) − g(T) of an antiderivative written
with a Gauss hypergeometric function. The textbook form 2F1(r+s+x, s+1; r+s+x+1; z) diverges as z → 1 and
``lifetimes`` subtracts two such large numbers; after Euler's transformation the series is
2F1(1, r+x; r+s+x+1; z) (for α ≥ β; 2F1(1, s+1; r+s+x+1; z) for α < β), which converges on all of [0, 1].
Everything is then computed relative to the first term, in logs, so nothing overflows for large x or T.

The hypergeometric factor depends on a customer only through (x, t_x) and (x, T): it is evaluated once per
distinct pair; the rest of the likelihood once per distinct (x, t_x, T) row, weighted by how many customers
share it. Parameters are optimised on the log scale with L-BFGS-B from several starting points.

Example::

    >>> model = ParetoNBDModel().fit(frequency=[2, 1, 0, 0, 5, 3, 0, 1, 0, 4],
    ...                              recency=[30.4, 1.7, 0, 0, 35, 20, 0, 10, 0, 12],
    ...                              T=[38.9, 38.9, 38.9, 38.9, 38.0, 37.0, 36.0, 36.0, 30.0, 38.0])
    >>> alive = model.p_alive(frequency=[4, 4], recency=[37.0, 5.0], T=[38.0, 38.0])
    >>> bool(alive[0] > alive[1])
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import gammaln, hyp2f1

from churnsync.errors import ConvergenceError, ModelError
from churnsync.models._mle import LOG_BOUND, MLEModel
from churnsync.models.bgnbd import _as_float, _check_history, _wsum

__all__ = ["ParetoNBDModel", "ParetoNBDParams"]

_NAME = "Pareto/NBD"
# (r, alpha multiplier, s, beta multiplier): alpha = multiplier * r / rate and beta = multiplier * mean(T),
# so every start matches the observed purchase rate and age whatever the time unit.
_STARTS = ((1.0, 1.0, 1.0, 1.0), (0.5, 1.0, 0.5, 0.3), (2.0, 1.0, 2.0, 3.0), (0.3, 0.5, 1.0, 0.1))
_BISECTION_STEPS = 60


@dataclass(frozen=True)
class ParetoNBDParams:
    """Fitted Pareto/NBD parameters: purchase rates ~ Gamma(r, alpha), dropout rates ~ Gamma(s, beta)."""

    r: float
    alpha: float
    s: float
    beta: float


def _log_tail(
    x: np.ndarray, y: np.ndarray, age: np.ndarray, r: float, alpha: float, s: float, beta: float
) -> np.ndarray:
    """log h(y), h(y) = (r+s+x) ∫_y^∞ (α+u)^−(r+x) (β+u)^−(s+1) du / [(α+T)^−(r+x) (β+T)^−s].

    ∫_{t_x}^{T} = (h(t_x) − h(T)) / (r+s+x) in units of the first term.
    """
    c = r + s + x + 1.0
    log_a_y = np.log(alpha + y)
    log_b_y = np.log(beta + y)
    shift = (r + x) * (np.log(alpha + age) - log_a_y) + s * (np.log(beta + age) - log_b_y)
    if alpha >= beta:
        series = hyp2f1(1.0, r + x, c, (alpha - beta) / (alpha + y))
        return np.asarray(np.log(series) + shift)
    series = hyp2f1(1.0, s + 1.0, c, (beta - alpha) / (beta + y))
    return np.asarray(np.log(series) + log_a_y - log_b_y + shift)


def _log_ratio_dead(
    x: np.ndarray, t_x: np.ndarray, age: np.ndarray, r: float, alpha: float, s: float, beta: float
) -> np.ndarray:
    """log[P(dropped out) / P(alive)] = log(s/(r+s+x) · (h(t_x) − h(T))); −inf when t_x = T."""
    log_h1 = _log_tail(x, t_x, age, r, alpha, s, beta)
    log_h2 = _log_tail(x, age, age, r, alpha, s, beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.minimum(log_h2 - log_h1, 0.0)
        log_diff = log_h1 + np.log(-np.expm1(gap))
    return np.asarray(math.log(s) - np.log(r + s + x) + log_diff)


def _lifetime_factor(s: float, log_shrink: np.ndarray) -> np.ndarray:
    """[1 − e^((s−1)·log_shrink)] / (s−1), and its limit −log_shrink at s = 1."""
    if abs(s - 1.0) < 1e-9:
        return np.asarray(-log_shrink)
    return np.asarray(-np.expm1((s - 1.0) * log_shrink) / (s - 1.0))


class _FitData:
    """Distinct (x, t_x, T) rows with weights, and the distinct (x, t_x) and (x, T) pairs they use."""

    def __init__(self, x: np.ndarray, t_x: np.ndarray, age: np.ndarray, weights: np.ndarray | None) -> None:
        t_x = np.where(x > 0, t_x, 0.0)
        xs, xi = np.unique(x, return_inverse=True)
        ts, ti = np.unique(np.concatenate([t_x, age]), return_inverse=True)
        txi, agei = ti[: x.size], ti[x.size :]
        n_t = ts.size
        key = (xi.astype(np.int64) * n_t + txi) * n_t + agei
        keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        u_xi, rest = np.divmod(keys, n_t * n_t)
        u_txi, u_agei = np.divmod(rest, n_t)
        self.n_unique = int(keys.size)
        self.w = (
            counts.astype(np.float64)
            if weights is None
            else np.bincount(inverse.reshape(-1), weights=weights, minlength=self.n_unique)
        )
        self.total = float(self.w.sum())
        self.x = xs[u_xi]
        self.t_x = ts[u_txi]
        self.age = ts[u_agei]
        self.mean_x = _wsum(self.w, self.x) / self.total
        self.mean_T = _wsum(self.w, self.age) / self.total
        self.any_repeat = bool(np.any((self.x > 0) & (self.w > 0)))
        # The hypergeometric factor depends on (x, y) only: y = t_x for h(t_x), y = T for h(T).
        pair_tx, self.inv_tx = np.unique(u_xi * n_t + u_txi, return_inverse=True)
        pair_T, self.inv_T = np.unique(u_xi * n_t + u_agei, return_inverse=True)
        self.pair_tx_x, self.pair_tx_y = xs[pair_tx // n_t], ts[pair_tx % n_t]
        self.pair_T_x, self.pair_T_y = xs[pair_T // n_t], ts[pair_T % n_t]


def _series(x: np.ndarray, y: np.ndarray, r: float, alpha: float, s: float, beta: float) -> np.ndarray:
    """log of the hypergeometric factor of h(y), with its α < β prefactor (α+y)/(β+y) folded in."""
    c = r + s + x + 1.0
    if alpha >= beta:
        return np.asarray(np.log(hyp2f1(1.0, r + x, c, (alpha - beta) / (alpha + y))))
    return np.asarray(
        np.log(hyp2f1(1.0, s + 1.0, c, (beta - alpha) / (beta + y))) + np.log(alpha + y) - np.log(beta + y)
    )


def _negative_ll(theta: np.ndarray, data: _FitData, penalizer: float) -> float:
    """Mean negative log-likelihood per customer (plus the L2 penalty) at log-parameters ``theta``."""
    r, alpha, s, beta = (float(v) for v in np.exp(theta))
    x, t_x, age, w = data.x, data.t_x, data.age, data.w
    log_a_T, log_b_T = np.log(alpha + age), np.log(beta + age)
    log_first = -(r + x) * log_a_T - s * log_b_T
    series_tx = _series(data.pair_tx_x, data.pair_tx_y, r, alpha, s, beta)[data.inv_tx]
    series_T = _series(data.pair_T_x, data.pair_T_y, r, alpha, s, beta)[data.inv_T]
    log_h1 = series_tx + (r + x) * (log_a_T - np.log(alpha + t_x)) + s * (log_b_T - np.log(beta + t_x))
    gap = np.minimum(series_T - log_h1, 0.0)
    log_dead = math.log(s) - np.log(r + s + x) + log_h1 + np.log(-np.expm1(gap))
    per_row = gammaln(r + x) + log_first + np.logaddexp(0.0, log_dead)
    ll = _wsum(w, per_row) + data.total * (r * math.log(alpha) + s * math.log(beta) - gammaln(r))
    params = np.array([r, alpha, s, beta])
    return float(-ll / data.total + penalizer * _wsum(params, params))


class ParetoNBDModel(MLEModel[ParetoNBDParams]):
    """Pareto/NBD customer-base model: fit on (frequency, recency, T), then predict per customer.

    Same interface as :class:`~churnsync.models.BetaGeoModel`: ``fit`` returns ``self``, parameters are in
    ``params_``, ``to_dict``/``from_dict`` persist it, predicting before fitting raises :class:`NotFittedError`.

    Parameters
    ----------
    n_starts:
        Starting points for L-BFGS-B; the best converged fit is kept.
    penalizer:
        L2 penalty on (r, alpha, s, beta) added to the mean negative log-likelihood; 0 gives the plain MLE.
    tol, max_iter:
        Convergence tolerance and iteration cap of each L-BFGS-B run.
    time_unit_days:
        Length in days of the model's time unit; it travels with the parameters, fitting does not use it.
    """

    _NAME = "Pareto/NBD"
    _KEY = "paretonbd"
    _PARAM_NAMES = ("r", "alpha", "s", "beta")
    _HYPERPARAMETERS = (*MLEModel._HYPERPARAMETERS, "time_unit_days")
    _COUNTS = ("n_customers", "n_unique")
    _params_type = ParetoNBDParams

    def __init__(
        self,
        *,
        n_starts: int = 3,
        penalizer: float = 0.0,
        tol: float = 1e-10,
        max_iter: int = 2000,
        time_unit_days: float = 1.0,
    ) -> None:
        self._init_mle(n_starts, penalizer, tol, max_iter, default_starts=3)
        self.time_unit_days = self._check_time_unit(time_unit_days)
        self.n_unique_: int = 0
        self.n_iterations_: int = 0

    # ------------------------------------------------------------------ fitting

    def _starts(self, data: _FitData) -> list[np.ndarray]:
        rate = max(data.mean_x, 1e-2) / max(data.mean_T, 1e-6)
        mean_T = max(data.mean_T, 1e-6)
        starts = [np.log([r, m * r / rate, s, k * mean_T]) for r, m, s, k in _STARTS]
        rng = np.random.default_rng(19870301)
        while len(starts) < self.n_starts:
            starts.append(starts[0] + rng.normal(0.0, 1.0, size=4))
        return [np.clip(v, -LOG_BOUND + 1.0, LOG_BOUND - 1.0) for v in starts[: self.n_starts]]

    def fit(self, frequency: Any, recency: Any, T: Any, weights: Any = None) -> ParetoNBDModel:
        """Fit by maximum likelihood to one row per customer (or group, with ``weights``); returns ``self``."""
        x, t_x, age = (v.reshape(-1) for v in _check_history(frequency, recency, T, _NAME))
        if x.size == 0:
            raise ModelError(f"{_NAME}: no customers to fit", remedy="Check the cut date and qualifying events")
        w: np.ndarray | None = None
        if weights is not None:
            w = np.broadcast_to(_as_float("weights", weights, _NAME), x.shape).astype(np.float64)
            if not np.any(w > 0):
                raise ModelError(f"{_NAME}: all weights are zero", remedy="Give positive weights")
        if not np.any(age > 0):
            raise ConvergenceError(
                f"{_NAME}: every customer has T = 0, so nothing about purchase or dropout rates can be estimated",
                remedy="Use a cut date after the first purchases",
            )
        data = _FitData(x, t_x, age, w)
        if not data.any_repeat:
            raise ConvergenceError(
                f"{_NAME}: no customer has a repeat purchase, so the purchase rates cannot be estimated",
                remedy="Use a longer history or a more frequent qualifying event",
            )
        # Gradients are finite differences here: a line-search stop at the optimum is common.
        best, iterations = self._minimize(
            _negative_ll, self._starts(data), (data,), jac=False, gtol=1e-6, flat_tol=1e-4
        )
        self._set_fit(best, data.total)
        self.n_customers_ = int(x.size)
        self.n_unique_ = data.n_unique
        self.n_iterations_ = iterations
        return self

    # ------------------------------------------------------------------ predictions

    def _history(self, frequency: Any, recency: Any, T: Any, *extra: Any) -> list[np.ndarray]:
        x, t_x, age = _check_history(frequency, recency, T, _NAME)
        more = [_as_float("t", e, _NAME) for e in extra]
        return [np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(x, t_x, age, *more)]

    def _p_alive(self, x: np.ndarray, t_x: np.ndarray, age: np.ndarray) -> np.ndarray:
        p = self.params_
        with np.errstate(all="ignore"):
            log_dead = _log_ratio_dead(x, t_x, age, p.r, p.alpha, p.s, p.beta)
        return np.asarray(np.exp(-np.logaddexp(0.0, log_dead)))

    def p_alive(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(the customer has not dropped out by T) given their history (below 1 for one-time buyers too)."""
        x, t_x, age = self._history(frequency, recency, T)
        return self._p_alive(x, t_x, age)

    def expected_purchases(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """E[X(T, T+t) | x, t_x, T]: expected purchases in the next ``t`` time units.

        P(alive) · (r+x)(β+T) / ((α+T)(s−1)) · [1 − ((β+T)/(β+T+t))^(s−1)]   (log limit at s = 1).
        """
        p = self.params_
        # P(alive) does not depend on the horizon: compute it before broadcasting against several horizons.
        alive = self.p_alive(frequency, recency, T)
        x, _, age, horizon = self._history(frequency, recency, T, t)
        rate = (p.r + x) / (p.alpha + age) * (p.beta + age)
        log_shrink = np.log(p.beta + age) - np.log(p.beta + age + horizon)
        lifetime = _lifetime_factor(p.s, log_shrink)
        return np.asarray(alive * rate * lifetime)

    def prob_no_purchase_if_alive(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(X(T, T+t) = 0 | alive at T, history): no purchase before the horizon or before dropping out.

        ((α+T)/(α+T+t))^(r+x) ((β+T)/(β+T+t))^s + s ∫_T^{T+t} (α+T)^(r+x) (β+T)^s (α+y)^−(r+x) (β+y)^−(s+1) dy.
        Tends to E[μ/(λ+μ)] as t grows: the chance of dropping out before the next purchase.
        """
        p = self.params_
        x, _, age, horizon = self._history(frequency, recency, T, t)
        end = age + horizon
        with np.errstate(all="ignore"):
            log_quiet = (p.r + x) * (np.log(p.alpha + age) - np.log(p.alpha + end)) + p.s * (
                np.log(p.beta + age) - np.log(p.beta + end)
            )
            # h is relative to the first term at T; h(T+t) relative to it is h_{T+t}(T+t) · e^{log_quiet}.
            log_h_start = _log_tail(x, age, age, p.r, p.alpha, p.s, p.beta)
            log_h_end = _log_tail(x, end, end, p.r, p.alpha, p.s, p.beta) + log_quiet
            died = np.exp(log_h_start) - np.exp(log_h_end)
            died = p.s / (p.r + p.s + x) * np.maximum(died, 0.0)
        return np.asarray(np.clip(np.exp(log_quiet) + died, 0.0, 1.0))

    def prob_no_purchase(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(X(T, T+t) = 0 | x, t_x, T): no purchase in the next ``t`` time units. This is the churn score."""
        x, t_x, age, horizon = self._history(frequency, recency, T, t)
        alive = self._p_alive(x, t_x, age)
        quiet = self.prob_no_purchase_if_alive(horizon, x, t_x, age)
        return np.asarray(np.clip((1.0 - alive) + alive * quiet, 0.0, 1.0))

    def time_to_next_purchase_if_alive(self, q: float, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """The ``q``-quantile of the time to the next purchase given alive at T; inf when it may never come.

        Solves P(no purchase by t | alive) = 1 − q by bisection on a log scale (vectorised); the answer is inf
        when the chance of dropping out before buying again is at least 1 − q.
        """
        x, t_x, age = self._history(frequency, recency, T)
        target = 1.0 - float(q)
        never = self.prob_no_purchase_if_alive(1e12, x, t_x, age) >= target
        low = np.full(x.shape, -12.0)
        high = np.full(x.shape, 12.0)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (low + high)
            above = self.prob_no_purchase_if_alive(np.exp(mid), x, t_x, age) > target
            low = np.where(above, mid, low)
            high = np.where(above, high, mid)
        return np.asarray(np.where(never, np.inf, np.exp(0.5 * (low + high))))

    def expected_unconditional(self, t: Any) -> np.ndarray:
        """E[X(t)]: expected repeat purchases in the first ``t`` time units of a new customer.

        r β / (α (s−1)) · [1 − (β/(β+t))^(s−1)]   (log limit at s = 1).
        """
        p = self.params_
        horizon = _as_float("t", t, _NAME)
        log_shrink = math.log(p.beta) - np.log(p.beta + horizon)
        lifetime = _lifetime_factor(p.s, log_shrink)
        return np.asarray(p.r * p.beta / p.alpha * lifetime)
