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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import digamma, gammaln

from churnsync.errors import ConvergenceError, ModelError, NotFittedError
from churnsync.models.bgnbd import _as_float, _blas_single_thread, _wsum

__all__ = ["GammaGammaModel", "GammaGammaParams"]

_NAME = "Gamma-Gamma"
_FORMAT = 1
_PARAM_NAMES = ("p", "q", "v")
_LOG_BOUND = 20.0
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


class GammaGammaModel:
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

    def __init__(self, *, n_starts: int = 3, penalizer: float = 0.0, tol: float = 1e-10, max_iter: int = 2000) -> None:
        if n_starts < 1:
            raise ModelError(f"{_NAME}: n_starts must be at least 1 (got {n_starts})", remedy="Use 3")
        if not (penalizer >= 0.0 and math.isfinite(penalizer)):
            raise ModelError(f"{_NAME}: penalizer must be >= 0 (got {penalizer})", remedy="Use 0.0 or e.g. 0.001")
        if not (tol > 0.0 and max_iter >= 1):
            raise ModelError(f"{_NAME}: tol must be > 0 and max_iter >= 1 (got {tol}, {max_iter})")
        self.n_starts = int(n_starts)
        self.penalizer = float(penalizer)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self._params: GammaGammaParams | None = None
        self.log_likelihood_: float = math.nan
        self.n_customers_: int = 0

    def __repr__(self) -> str:
        fitted = (
            "unfitted" if self._params is None else ", ".join(f"{k}={v:.4g}" for k, v in asdict(self._params).items())
        )
        return f"GammaGammaModel({fitted})"

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, as a dict."""
        return {"n_starts": self.n_starts, "penalizer": self.penalizer, "tol": self.tol, "max_iter": self.max_iter}

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
        best: Any = None
        reasons: list[str] = []
        mean = _wsum(w, m) / float(w.sum())
        with np.errstate(all="ignore"), _blas_single_thread():
            for p0, q0, v0 in _STARTS[: self.n_starts]:
                # Scale v so that each start's population mean p·v/(q−1) is near the observed mean spend.
                start = np.log([p0, q0 + 1.0, v0 * mean * q0 / p0])
                value, _ = _objective(start, x, m, w, self.penalizer)
                if not math.isfinite(value):
                    reasons.append("non-finite likelihood at the starting point")
                    continue
                result = minimize(
                    _objective,
                    start,
                    args=(x, m, w, self.penalizer),
                    jac=True,
                    method="L-BFGS-B",
                    bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 3,
                    options={"maxiter": self.max_iter, "ftol": self.tol, "gtol": 1e-8},
                )
                finite = math.isfinite(float(result.fun)) and bool(np.all(np.isfinite(result.x)))
                flat = bool(np.all(np.isfinite(result.jac))) and float(np.max(np.abs(result.jac))) < 1e-5
                if not (finite and (bool(result.success) or flat)):
                    reasons.append(str(result.message))
                    continue
                if best is None or float(result.fun) < float(best.fun):
                    best = result
        if best is None:
            raise ConvergenceError(
                f"{_NAME}: no starting point converged ({'; '.join(sorted(set(reasons)))})",
                remedy="Try a small penalizer (e.g. 0.001) or check the spend values",
            )
        at_bound = [name for name, t in zip(_PARAM_NAMES, best.x, strict=True) if abs(t) > _LOG_BOUND - 1e-3]
        if at_bound:
            raise ConvergenceError(
                f"{_NAME}: parameter(s) {', '.join(at_bound)} ran to the edge of the search range",
                remedy="Try a small penalizer (e.g. 0.001); spend may not vary enough between customers",
            )
        p, q, v = (float(t) for t in np.exp(best.x))
        self._params = GammaGammaParams(p=p, q=q, v=v)
        penalty = self.penalizer * (p * p + q * q + v * v)
        self.log_likelihood_ = -(float(best.fun) - penalty) * float(w.sum())
        self.n_customers_ = int(x.size)
        return self

    @property
    def is_fitted(self) -> bool:
        """Whether the model has parameters (from :meth:`fit` or :meth:`from_dict`)."""
        return self._params is not None

    @property
    def params_(self) -> GammaGammaParams:
        """The fitted parameters; :class:`NotFittedError` before fitting."""
        if self._params is None:
            raise NotFittedError(
                f"{_NAME}: this model is not fitted yet", remedy="Call fit() or load one with from_dict()"
            )
        return self._params

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: parameters, hyper-parameters and fit diagnostics."""
        return {
            "model": "gamma_gamma",
            "format": _FORMAT,
            "params": None if self._params is None else asdict(self._params),
            "hyperparameters": self.hyperparameters(),
            "log_likelihood": None if math.isnan(self.log_likelihood_) else self.log_likelihood_,
            "n_customers": self.n_customers_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GammaGammaModel:
        """Rebuild a model from :meth:`to_dict`'s output."""
        if not isinstance(d, dict) or d.get("model") != "gamma_gamma":
            raise ModelError(f"{_NAME}: not a saved Gamma-Gamma model (key 'model' is not 'gamma_gamma')")
        if d.get("format") != _FORMAT:
            raise ModelError(
                f"{_NAME}: saved model format {d.get('format')!r} is not supported (expected {_FORMAT})",
                remedy="Refit the model with this version of churnsync",
            )
        try:
            model = cls(**dict(d.get("hyperparameters") or {}))
            params = d.get("params")
            if params is not None:
                values = {name: float(params[name]) for name in _PARAM_NAMES}
                if not all(math.isfinite(v) and v > 0 for v in values.values()):
                    raise ModelError(f"{_NAME}: saved parameters must be positive numbers (got {values})")
                model._params = GammaGammaParams(**values)
            ll = d.get("log_likelihood")
            model.log_likelihood_ = math.nan if ll is None else float(ll)
            model.n_customers_ = int(d.get("n_customers", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{_NAME}: saved model is malformed ({exc})", remedy="Refit the model") from None
        return model
