"""What the maximum-likelihood customer models (BG/NBD, Pareto/NBD, Gamma-Gamma) share.

Hyper-parameter checks, the multi-start L-BFGS-B fit on log-parameters with its convergence errors, the
fitted-state checks, ``__repr__`` and ``to_dict``/``from_dict``. The likelihoods, starting points and
predictions stay in each model.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import numpy as np
from scipy.optimize import minimize

from churnsync.errors import ConvergenceError, ModelError, NotFittedError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["MLEModel"]

P = TypeVar("P", bound="DataclassInstance")

_FORMAT = 1
# Log-parameter bounds: exp(±20) spans 2e-9 .. 5e8, far beyond any identified fit. A fit that ends on a
# bound means the data do not identify that parameter (the MLE lies at 0 or infinity).
LOG_BOUND = 20.0


def _blas_single_thread() -> contextlib.AbstractContextManager[Any]:
    """Keep BLAS to one thread while optimising, when ``threadpoolctl`` is installed.

    SciPy's L-BFGS-B calls BLAS on 4×4 problems; multi-threaded OpenBLAS wakes its threads for each call,
    which cost ~3 ms per iteration on a busy 2-core machine (a 1M-customer fit: 1.5 s instead of 1.0 s).
    Results are identical either way; only speed differs.
    """
    try:
        threadpoolctl = importlib.import_module("threadpoolctl")
    except ImportError:
        return contextlib.nullcontext()
    limiter: contextlib.AbstractContextManager[Any] = threadpoolctl.threadpool_limits(limits=1, user_api="blas")
    return limiter


class MLEModel(Generic[P]):
    """Base of the fitted-by-maximum-likelihood models; ``P`` is the model's frozen parameter dataclass."""

    _NAME: ClassVar[str]  # as in messages, e.g. "BG/NBD"
    _KEY: ClassVar[str]  # the "model" key of to_dict, e.g. "bgnbd"
    _PARAM_NAMES: ClassVar[tuple[str, ...]]
    _HYPERPARAMETERS: ClassVar[tuple[str, ...]] = ("n_starts", "penalizer", "tol", "max_iter")
    _COUNTS: ClassVar[tuple[str, ...]] = ("n_customers",)  # fit diagnostics saved as "<name>" from "<name>_"
    _params_type: type[P]

    def _init_mle(self, n_starts: int, penalizer: float, tol: float, max_iter: int, *, default_starts: int) -> None:
        name = self._NAME
        if n_starts < 1:
            raise ModelError(f"{name}: n_starts must be at least 1 (got {n_starts})", remedy=f"Use {default_starts}")
        if not (penalizer >= 0.0 and math.isfinite(penalizer)):
            raise ModelError(f"{name}: penalizer must be >= 0 (got {penalizer})", remedy="Use 0.0 or e.g. 0.001")
        if not (tol > 0.0 and max_iter >= 1):
            raise ModelError(f"{name}: tol must be > 0 and max_iter >= 1 (got {tol}, {max_iter})")
        self.n_starts = int(n_starts)
        self.penalizer = float(penalizer)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self._params: P | None = None
        self.log_likelihood_: float = math.nan
        self.n_customers_: int = 0

    def _check_time_unit(self, time_unit_days: float) -> float:
        if not (time_unit_days > 0.0 and math.isfinite(time_unit_days)):
            raise ModelError(f"{self._NAME}: time_unit_days must be > 0 (got {time_unit_days})", remedy="Use 1 or 7")
        return float(time_unit_days)

    def __repr__(self) -> str:
        fitted = (
            "unfitted" if self._params is None else ", ".join(f"{k}={v:.4g}" for k, v in asdict(self._params).items())
        )
        return f"{type(self).__name__}({fitted})"

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, as a dict."""
        return {name: getattr(self, name) for name in self._HYPERPARAMETERS}

    # ------------------------------------------------------------------ fitting

    def _minimize(
        self,
        objective: Callable[..., Any],
        starts: Iterable[np.ndarray],
        args: tuple[Any, ...],
        *,
        jac: bool,
        gtol: float,
        flat_tol: float,
        remedy: str = "Try a small penalizer (e.g. 0.001) or check the RFM features",
        bound_note: str = " (the data do not identify them)",
        bound_remedy: str = "Try a small penalizer (e.g. 0.001) or a longer history with more repeat purchases",
    ) -> tuple[Any, int]:
        """The best L-BFGS-B result over ``starts`` of ``objective(theta, *args, penalizer)``, and the total
        iterations; :class:`ConvergenceError` when no start converges or the best one ends on a bound.

        ``objective`` returns the value, or (value, gradient) with ``jac``.
        """
        args = (*args, self.penalizer)
        best: Any = None
        reasons: list[str] = []
        iterations = 0
        with np.errstate(all="ignore"), _blas_single_thread():
            for start in starts:
                value = objective(start, *args)
                if not math.isfinite(value[0] if jac else value):
                    reasons.append("non-finite likelihood at the starting point")
                    continue
                result = minimize(
                    objective,
                    start,
                    args=args,
                    jac=True if jac else None,
                    method="L-BFGS-B",
                    bounds=[(-LOG_BOUND, LOG_BOUND)] * len(self._PARAM_NAMES),
                    options={"maxiter": self.max_iter, "ftol": self.tol, "gtol": gtol},
                )
                iterations += int(result.nit)
                finite = math.isfinite(float(result.fun)) and bool(np.all(np.isfinite(result.x)))
                # A line-search stop right at the optimum is common in double precision: accept it when
                # the gradient is flat.
                flat = bool(np.all(np.isfinite(result.jac))) and float(np.max(np.abs(result.jac))) < flat_tol
                if not (finite and (bool(result.success) or flat)):
                    reasons.append(str(result.message))
                    continue
                if best is None or float(result.fun) < float(best.fun):
                    best = result
        if best is None:
            raise ConvergenceError(
                f"{self._NAME}: no starting point converged ({'; '.join(sorted(set(reasons)))})", remedy=remedy
            )
        at_bound = [name for name, v in zip(self._PARAM_NAMES, best.x, strict=True) if abs(v) > LOG_BOUND - 1e-3]
        if at_bound:
            raise ConvergenceError(
                f"{self._NAME}: parameter(s) {', '.join(at_bound)} ran to the edge of the search range{bound_note}",
                remedy=bound_remedy,
            )
        return best, iterations

    def _set_fit(self, best: Any, total: float) -> None:
        """Store the parameters of an optimisation result and the (unpenalised) log-likelihood of ``total``."""
        values = [float(v) for v in np.exp(best.x)]
        self._params = self._params_type(**dict(zip(self._PARAM_NAMES, values, strict=True)))
        penalty = self.penalizer * sum(v * v for v in values)
        self.log_likelihood_ = -(float(best.fun) - penalty) * total

    # ------------------------------------------------------------------ fitted state

    @property
    def is_fitted(self) -> bool:
        """Whether the model has parameters (from :meth:`fit` or :meth:`from_dict`)."""
        return self._params is not None

    @property
    def params_(self) -> P:
        """The fitted parameters; :class:`NotFittedError` before fitting."""
        if self._params is None:
            raise NotFittedError(
                f"{self._NAME}: this model is not fitted yet", remedy="Call fit() or load one with from_dict()"
            )
        return self._params

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: parameters, hyper-parameters and fit diagnostics."""
        return {
            "model": self._KEY,
            "format": _FORMAT,
            "params": None if self._params is None else asdict(self._params),
            "hyperparameters": self.hyperparameters(),
            "log_likelihood": None if math.isnan(self.log_likelihood_) else self.log_likelihood_,
            **{name: getattr(self, f"{name}_") for name in self._COUNTS},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Rebuild a model from :meth:`to_dict`'s output."""
        name = cls._NAME
        if not isinstance(d, dict) or d.get("model") != cls._KEY:
            raise ModelError(f"{name}: not a saved {name} model (key 'model' is not '{cls._KEY}')")
        if d.get("format") != _FORMAT:
            raise ModelError(
                f"{name}: saved model format {d.get('format')!r} is not supported (expected {_FORMAT})",
                remedy="Refit the model with this version of churnsync",
            )
        try:
            model = cls(**dict(d.get("hyperparameters") or {}))
            params = d.get("params")
            if params is not None:
                values = {key: float(params[key]) for key in cls._PARAM_NAMES}
                if not all(math.isfinite(v) and v > 0 for v in values.values()):
                    raise ModelError(f"{name}: saved parameters must be positive numbers (got {values})")
                model._params = model._params_type(**values)
            ll = d.get("log_likelihood")
            model.log_likelihood_ = math.nan if ll is None else float(ll)
            for count in cls._COUNTS:
                setattr(model, f"{count}_", int(d.get(count, 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{name}: saved model is malformed ({exc})", remedy="Refit the model") from None
        return model
