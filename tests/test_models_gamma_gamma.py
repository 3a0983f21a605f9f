"""Gamma-Gamma: golden CDNOW values, the lifetimes oracle, errors and persistence."""

from __future__ import annotations

import csv
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

from churnsync.errors import ConvergenceError, ModelError, NotFittedError
from churnsync.models import GammaGammaModel


@pytest.fixture(scope="module")
def spend() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "datasets" / "cdnow_customers_summary_with_transactions.csv"
    with path.open() as f:
        rows = np.array([[float(v) for v in row] for row in list(csv.reader(f))[1:]])
    return rows[:, 1], rows[:, 4]


def test_cdnow_golden_parameters(spend: tuple[np.ndarray, np.ndarray]) -> None:
    model = GammaGammaModel().fit(*spend)
    assert model.n_customers_ == 946
    assert model.params_.p == pytest.approx(6.25, abs=5e-3)
    assert model.params_.q == pytest.approx(3.74, abs=6e-3)
    assert model.params_.v == pytest.approx(15.44, abs=1e-2)


def test_matches_lifetimes(spend: tuple[np.ndarray, np.ndarray]) -> None:
    x, m = spend
    ours = GammaGammaModel().fit(x, m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import GammaGammaFitter

        theirs = GammaGammaFitter().fit(x[x > 0], m[x > 0])
        for name in ("p", "q", "v"):
            assert getattr(ours.params_, name) == pytest.approx(float(theirs.params_[name]), rel=1e-4)
        np.testing.assert_allclose(
            ours.expected_spend(x, m), theirs.conditional_expected_average_profit(x, m), rtol=1e-5
        )


def test_shrinkage_and_population_mean(spend: tuple[np.ndarray, np.ndarray]) -> None:
    model = GammaGammaModel().fit(*spend)
    p = model.params_
    assert model.population_mean() == pytest.approx(p.p * p.v / (p.q - 1.0))
    few, many = model.expected_spend([1, 50], [100.0, 100.0])
    assert model.population_mean() < few < many < 100.0
    assert float(model.expected_spend(0, 0.0)) == pytest.approx(model.population_mean())


def test_errors_and_round_trip(spend: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(NotFittedError, match="Gamma-Gamma"):
        GammaGammaModel().expected_spend(1, 10.0)
    with pytest.raises(ConvergenceError, match="need at least 2"):
        GammaGammaModel().fit([0, 1], [0.0, 10.0])
    with pytest.raises(ModelError, match="negative"):
        GammaGammaModel().fit([1, 2], [-1.0, 10.0])
    model = GammaGammaModel().fit(*spend)
    again = GammaGammaModel.from_dict(model.to_dict())
    assert again.params_ == model.params_ and again.n_customers_ == 946
    with pytest.raises(ModelError, match="not a saved Gamma-Gamma model"):
        GammaGammaModel.from_dict({"model": "bgnbd"})


def test_recovers_known_parameters_from_simulated_spend() -> None:
    rng = np.random.default_rng(3)
    n = 20_000
    x = rng.integers(1, 8, n)
    nu = rng.gamma(4.0, 1.0 / 15.0, n)
    mean_spend = rng.gamma(6.0 * x, 1.0) / (nu * x)  # the mean of x Gamma(6, nu) transaction values
    params = GammaGammaModel().fit(x, mean_spend).params_
    assert params.p == pytest.approx(6.0, rel=0.05)
    assert params.q == pytest.approx(4.0, rel=0.05)
    assert params.v == pytest.approx(15.0, rel=0.05)
