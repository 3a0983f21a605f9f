"""The Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV"; Colombo & Jiang 1999), by maximum likelihood.

A customer's transaction values are Gamma(p, ν) around their own mean spend p/ν, and ν ~ Gamma(q, γ) across
customers (γ is called ``v`` here, as in ``lifetimes``). It is fitted on repeat buyers only: from the number of
repeat transactions ``x`` and their mean value ``m``, the conditional expected average spend shrinks ``m`` towards
the population mean p·v/(q−1), the more so the fewer transactions a customer has:

    E[Z | x, m] = (q−1)/(p·x+q−1) · p·v/(q−1) + p·x/(p·x+q−1) · m.

The model assumes spend is independent of purchase frequency; check that on your data (the correlation between
``x`` and ``m`` among repeat buyers should be near 0).

Example::

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> x = rng.integers(1, 8, 500)
    >>> nu = rng.gamma(4.0, 1 / 15.0, 500)  # each customer's spend scale
    >>> m = rng.gamma(6.0 * x, 1.0) / (nu * x)  # mean of x Gamma(6, nu) transaction values
    >>> model = GammaGammaModel().fit(frequency=x, monetary_value=m)
    >>> spend = model.expected_spend(frequency=[0, 6], monetary_value=[0, 31])
    >>> bool(abs(spend[0] - model.population_mean()) < 1e-9)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import digamma, gammaln

from churnsync.errors import ConvergenceError, ModelError
from churnsync.models._mle import MLEModel
from churnsync.models.bgnbd import _as_float, _wsum

__all__ = ["GammaGammaModel", "GammaGammaParams"]

_NAME = "Gamma-Gamma"
_STARTS = ((1.0, 1.0, 1.0), (5.0, 3.0, 10.0), (0.5, 2.0, 1.0))


@dataclass(frozen=True)
class GammaGammaParams:
    """Fitted Gamma-Gamma parameters: spend shape p, and per-customer scale ~ Gamma(q, v)."""

    p: float
    q: float
    v: float


def _objective(theta: np.ndarray, x: np.ndarray, m: np.ndarray, w: np.ndarray, penalizer: float) -> Any:
    """Mean negative log-likelihood per repeat buyer (plus the L2 penalty) and its gradient in log-parameters.

    log L = log Γ(px+q) − log Γ(px) − log Γ(q) + q log v + (px−1) log m + px log x − (px+q) log(xm+v).
    """
    p, q, v = (float(t) for t in np.exp(theta))
    total = float(w.sum())
    px = p * x
    log_xm_v = np.log(x * m + v)
    log_m, log_x = np.log(m), np.log(x)
    per = gammaln(px + q) - gammaln(px) + (px - 1.0) * log_m + px * log_x - (px + q) * log_xm_v
    ll = _wsum(w, per) + total * (q * math.log(v) - gammaln(q))
    psi = digamma(px + q)
    g_p = _wsum(w * x, psi - digamma(px) + log_m + log_x - log_xm_v)
    g_q = _wsum(w, psi - log_xm_v) + total * (math.log(v) - float(digamma(q)))
    g_v = total * q / v - _wsum(w, (px + q) / (x * m + v))
    params = np.array([p, q, v])
    value = -ll / total + penalizer * _wsum(params, params)
    gradient = (-np.array([g_p, g_q, g_v]) / total + 2.0 * penalizer * params) * params
    return value, gradient


class GammaGammaModel(MLEModel[GammaGammaParams]):
    """Gamma-Gamma spend model: fit on repeat buyers' (frequency, monetary_value), predict expected spend.

    Parameters
    ----------
    n_starts:
        Starting points for L-BFGS-B; the best converged fit is kept.
    penalizer:
        L2 penalty on (p, q, v) added to the mean negative log-likelihood; 0 gives the plain MLE.
    tol, max_iter:
        Convergence tolerance and iteration cap of each L-BFGS-B run.
    """

    _NAME = "Gamma-Gamma"
    _KEY = "gamma_gamma"
    _PARAM_NAMES = ("p", "q", "v")
    _params_type = GammaGammaParams

    def __init__(self, *, n_starts: int = 3, penalizer: float = 0.0, tol: float = 1e-10, max_iter: int = 2000) -> None:
        self._init_mle(n_starts, penalizer, tol, max_iter, default_starts=3)

    def _inputs(self, frequency: Any, monetary_value: Any) -> tuple[np.ndarray, np.ndarray]:
        x = _as_float("frequency", frequency, _NAME)
        m = _as_float("monetary_value", monetary_value, _NAME)
        try:
            x, m = np.broadcast_arrays(x, m)
        except ValueError:
            raise ModelError(
                f"{_NAME}: frequency and monetary_value have incompatible shapes {x.shape}, {m.shape}",
                remedy="Pass one value per customer in each",
            ) from None
        return np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64)

    def fit(self, frequency: Any, monetary_value: Any, weights: Any = None) -> GammaGammaModel:
        """Fit on the customers with a repeat purchase and a positive mean spend (others are skipped)."""
        x, m = (v.reshape(-1) for v in self._inputs(frequency, monetary_value))
        w = (
            np.ones_like(x)
            if weights is None
            else np.broadcast_to(_as_float("weights", weights, _NAME), x.shape).astype(np.float64)
        )
        keep = (x > 0) & (m > 0) & (w > 0)
        if int(keep.sum()) < 2:
            raise ConvergenceError(
                f"{_NAME}: {int(keep.sum())} customer(s) with a repeat purchase and a positive spend; need at least 2",
                remedy="Use a longer history, or check that the events carry a value",
            )
        x, m, w = x[keep], m[keep], w[keep]
        mean = _wsum(w, m) / float(w.sum())
        # Scale v so that each start's population mean p·v/(q−1) is near the observed mean spend.
        starts = [np.log([p0, q0 + 1.0, v0 * mean * q0 / p0]) for p0, q0, v0 in _STARTS[: self.n_starts]]
        best, _ = self._minimize(
            _objective,
            starts,
            (x, m, w),
            jac=True,
            gtol=1e-8,
            flat_tol=1e-5,
            remedy="Try a small penalizer (e.g. 0.001) or check the spend values",
            bound_note="",
            bound_remedy="Try a small penalizer (e.g. 0.001); spend may not vary enough between customers",
        )
        self._set_fit(best, float(w.sum()))
        self.n_customers_ = int(x.size)
        return self

    def population_mean(self) -> float:
        """Mean spend per transaction across customers, p·v/(q−1); inf when q <= 1 (no finite mean)."""
        p = self.params_
        return math.inf if p.q <= 1.0 else p.p * p.v / (p.q - 1.0)

    def expected_spend(self, frequency: Any, monetary_value: Any) -> np.ndarray:
        """E[Z | x, m]: expected value of a customer's future transactions; the population mean when x = 0."""
        params = self.params_
        if params.q <= 1.0:
            raise ModelError(
                f"{_NAME}: q = {params.q:.4g} <= 1, so the expected spend is infinite",
                remedy="Refit with more repeat buyers or a small penalizer",
            )
        x, m = self._inputs(frequency, monetary_value)
        px = params.p * x
        weight = px / (px + params.q - 1.0)
        return np.asarray((1.0 - weight) * self.population_mean() + weight * m)
