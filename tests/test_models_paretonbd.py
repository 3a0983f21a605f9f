"""Pareto/NBD: golden CDNOW values, the lifetimes oracle, closed forms, a Monte-Carlo check, errors."""

from __future__ import annotations

import csv
import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.integrate import quad

from churnsync.errors import ConvergenceError, ModelError, NotFittedError
from churnsync.models import ParetoNBDModel, ParetoNBDParams
from churnsync.models.paretonbd import _log_tail

GOLDEN = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
History = tuple[np.ndarray, np.ndarray, np.ndarray]


def _datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.origin is not None, "lifetimes (a dev dependency) ships the CDNOW data"
    return Path(spec.origin).parent / "datasets"


@pytest.fixture(scope="module")
def summary() -> History:
    with (_datasets() / "cdnow_customers_summary.csv").open() as f:
        rows = np.array([[float(v) for v in row] for row in list(csv.reader(f))[1:]])
    return rows[:, 1], rows[:, 2], rows[:, 3]


@pytest.fixture(scope="module")
def fitted(summary: History) -> ParetoNBDModel:
    return ParetoNBDModel().fit(*summary)


@pytest.fixture(scope="module")
def lifetimes_fitter(summary: History) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import ParetoNBDFitter

        return ParetoNBDFitter().fit(*summary)


def model_with(params: dict[str, float]) -> ParetoNBDModel:
    return ParetoNBDModel.from_dict({"model": "paretonbd", "format": 1, "params": params})


def test_cdnow_golden_parameters_and_log_likelihood(fitted: ParetoNBDModel) -> None:
    for name, value in GOLDEN.items():
        # The likelihood is flat along alpha and beta: the published 3-decimal values hold to about 2e-3.
        assert getattr(fitted.params_, name) == pytest.approx(value, abs=3e-3 if name in ("alpha", "beta") else 1e-3)
    assert fitted.log_likelihood_ == pytest.approx(-9595.0, abs=0.05)
    assert fitted.n_customers_ == 2357 and fitted.n_unique_ < 2357


def test_parameters_match_lifetimes(fitted: ParetoNBDModel, lifetimes_fitter: Any) -> None:
    for name in GOLDEN:
        assert getattr(fitted.params_, name) == pytest.approx(float(lifetimes_fitter.params_[name]), rel=1e-3), name


def test_predictions_match_lifetimes_formulas(lifetimes_fitter: Any, summary: History) -> None:
    ours = model_with({k: float(v) for k, v in lifetimes_fitter.params_.items()})
    x, t_x, T = summary
    for t in (1.0, 39.0, 78.0):
        np.testing.assert_allclose(
            ours.expected_purchases(t, x, t_x, T),
            lifetimes_fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T),
            rtol=1e-9,
        )
    np.testing.assert_allclose(ours.p_alive(x, t_x, T), lifetimes_fitter.conditional_probability_alive(x, t_x, T))
    grid = np.array([1.0, 39.0, 78.0])
    np.testing.assert_allclose(
        ours.expected_unconditional(grid), lifetimes_fitter.expected_number_of_purchases_up_to_time(grid), rtol=1e-9
    )


@pytest.mark.parametrize("params", [(0.55, 10.6, 0.6, 11.7), (0.55, 15.0, 0.6, 5.0), (2.0, 1.0, 1.5, 30.0)])
@pytest.mark.parametrize("history", [(0.0, 0.0, 30.0), (3.0, 10.0, 39.0), (40.0, 5.0, 39.0)])
def test_stable_hypergeometric_form_equals_the_integral(
    params: tuple[float, float, float, float], history: tuple[float, float, float]
) -> None:
    """Both branches (α ≥ β and α < β) of the Euler-transformed antiderivative, against quadrature."""
    r, alpha, s, beta = params
    x, t_x, T = (np.array([v]) for v in history)
    ours = (np.exp(_log_tail(x, t_x, T, *params)) - np.exp(_log_tail(x, T, T, *params))) / (r + s + x)
    first = (alpha + T) ** -(r + x) * (beta + T) ** -s
    integral, _ = quad(
        lambda y: (alpha + y) ** -(r + x[0]) * (beta + y) ** -(s + 1), t_x[0], T[0], epsabs=0.0, epsrel=1e-12, limit=200
    )
    assert float(ours[0]) == pytest.approx(integral / float(first[0]), rel=1e-9)


def test_no_overflow_for_heavy_buyers() -> None:
    model = model_with(GOLDEN)
    # About 10 purchases a week: silent for 38 weeks means gone, for a few hours means alive.
    alive = model.p_alive([500, 500], [1.0, 38.98], [39.0, 39.0])
    assert np.all(np.isfinite(alive)) and alive[0] < 1e-10 and alive[1] > 0.5
    assert np.isfinite(model.expected_purchases(39.0, 500, 38.98, 39.0)).all()


def test_monte_carlo_churn_and_expected_purchases() -> None:
    """Simulate customers from known parameters; conditional predictions match what followed."""
    params = {"r": 0.8, "alpha": 6.0, "s": 0.9, "beta": 12.0}
    model = model_with(params)
    rng = np.random.default_rng(7)
    n, T, horizon = 200_000, 20.0, 10.0
    lam = rng.gamma(params["r"], 1.0 / params["alpha"], n)
    mu = rng.gamma(params["s"], 1.0 / params["beta"], n)
    death = rng.exponential(1.0 / mu)
    # Purchases over [0, T + horizon] while alive: Poisson counts, uniform times.
    seen = np.minimum(death, T + horizon)
    total = rng.poisson(lam * seen)
    x = np.zeros(n)
    t_x = np.zeros(n)
    future = np.zeros(n)
    for k in np.unique(total[total > 0]):
        rows = np.flatnonzero(total == k)
        times = rng.uniform(0.0, 1.0, (rows.size, k)) * seen[rows, None]
        before = times <= T
        x[rows] = before.sum(axis=1)
        t_x[rows] = np.where(before, times, 0.0).max(axis=1)
        future[rows] = (~before).sum(axis=1)
    groups = (x == 0, (x >= 1) & (x <= 3), x > 3)
    expected = model.expected_purchases(horizon, x, t_x, T)
    quiet = model.prob_no_purchase(horizon, x, t_x, T)
    for group in groups:
        assert expected[group].mean() == pytest.approx(future[group].mean(), rel=0.03)
        assert quiet[group].mean() == pytest.approx((future[group] == 0).mean(), abs=0.006)


def test_churn_score_limits_and_next_purchase_quantile() -> None:
    model = model_with(GOLDEN)
    assert float(model.prob_no_purchase(0.0, 3, 10, 30)) == pytest.approx(1.0)
    x0 = float(model.prob_no_purchase(39.0, 0, 0, 38.86))
    assert 0.0 < x0 < 1.0
    median = model.time_to_next_purchase_if_alive(0.5, [10, 0], [37.0, 0.0], [38.0, 38.0])
    assert math.isfinite(float(median[0])) and math.isinf(float(median[1]))
    assert float(model.prob_no_purchase_if_alive(median[0], 10, 37.0, 38.0)) == pytest.approx(0.5, abs=1e-9)


def test_api_errors_and_round_trip(fitted: ParetoNBDModel) -> None:
    with pytest.raises(NotFittedError, match="Pareto/NBD: this model is not fitted"):
        ParetoNBDModel().p_alive(1, 1, 2)
    with pytest.raises(ModelError, match="Pareto/NBD: recency exceeds T"):
        ParetoNBDModel().fit([1, 2], [5.0, 1.0], [4.0, 4.0])
    with pytest.raises(ConvergenceError, match="no customer has a repeat purchase"):
        ParetoNBDModel().fit([0, 0], [0, 0], [4.0, 5.0])
    again = ParetoNBDModel.from_dict(fitted.to_dict())
    assert again.params_ == fitted.params_ and isinstance(again.params_, ParetoNBDParams)
    assert again.log_likelihood_ == fitted.log_likelihood_
    with pytest.raises(ModelError, match="not a saved Pareto/NBD model"):
        ParetoNBDModel.from_dict({"model": "bgnbd"})


def test_weights_equal_repeated_rows(summary: History, fitted: ParetoNBDModel) -> None:
    x, t_x, T = summary
    half = slice(0, None, 2)
    doubled = ParetoNBDModel().fit(x[half], t_x[half], T[half], weights=np.full(x[half].size, 2.0))
    repeated = ParetoNBDModel().fit(np.repeat(x[half], 2), np.repeat(t_x[half], 2), np.repeat(T[half], 2))
    assert doubled.params_.r == pytest.approx(repeated.params_.r, rel=1e-5)
    assert doubled.params_.beta == pytest.approx(repeated.params_.beta, rel=1e-4)
