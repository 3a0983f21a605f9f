"""BG/NBD: golden CDNOW values, the lifetimes oracle, a Monte-Carlo check of the predictions, errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from scipy.optimize import approx_fprime

from churnsync.errors import ConvergenceError, ModelError, NotFittedError
from churnsync.features import build_rfm
from churnsync.models import BetaGeoModel, BetaGeoParams
from churnsync.models.bgnbd import _FitData, _objective

GOLDEN = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


def _datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.origin is not None, "lifetimes (a dev dependency) ships the CDNOW data"
    return Path(spec.origin).parent / "datasets"


@pytest.fixture(scope="module")
def summary() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cdnow_customers_summary.csv: x, t_x, T in weeks for the 2,357 customers (FHL calibration period)."""
    with (_datasets() / "cdnow_customers_summary.csv").open() as f:
        rows = np.array([[float(v) for v in row] for row in list(csv.reader(f))[1:]])
    return rows[:, 1], rows[:, 2], rows[:, 3]


@pytest.fixture(scope="module")
def fitted(summary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> BetaGeoModel:
    return BetaGeoModel().fit(*summary)


@pytest.fixture(scope="module")
def lifetimes_fitter(summary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Any:
    """lifetimes' BetaGeoFitter on the same data: the oracle. It warns on import under pandas 3."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter

        return BetaGeoFitter().fit(*summary)


def model_with(params: dict[str, float]) -> BetaGeoModel:
    return BetaGeoModel.from_dict({"model": "bgnbd", "format": 1, "params": params})


# ------------------------------------------------------------------ golden values (FHL 2005)


def test_cdnow_golden_parameters_and_log_likelihood(fitted: BetaGeoModel) -> None:
    for name, value in GOLDEN.items():
        assert getattr(fitted.params_, name) == pytest.approx(value, abs=6e-4), name
    # Sum over customers of log L, time in weeks, no constant term: FHL's −9,582.4.
    assert fitted.log_likelihood_ == pytest.approx(-9582.4, abs=0.05)
    assert fitted.n_customers_ == 2357 and fitted.n_unique_ < 2357


def test_cdnow_golden_predictions(fitted: BetaGeoModel) -> None:
    assert float(fitted.expected_purchases(39, 2, 30.43, 38.86)) == pytest.approx(1.226, abs=5e-4)
    assert float(fitted.expected_unconditional(78)) == pytest.approx(1.8576, abs=1e-3)
    assert float(fitted.expected_unconditional(0)) == 0.0


def test_own_rfm_of_the_cdnow_sample_gives_the_same_fit(fitted: BetaGeoModel) -> None:
    raw = np.loadtxt(_datasets() / "CDNOW_sample.txt", dtype=str)
    con = duckdb.connect()
    table = pa.table(
        {
            "customer_id": raw[:, 1],
            "occurred_at": pa.array(np.array([f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in raw[:, 2]], dtype="datetime64[us]")),
            "event_type": ["purchase"] * raw.shape[0],
            "value": raw[:, 4].astype(np.float64),
        }
    )
    con.register("cdnow", table)
    con.execute("CREATE TABLE events AS SELECT * FROM cdnow")
    rfm = build_rfm(con, datetime(1997, 10, 1), ["purchase"], time_unit_days=7.0)
    own = BetaGeoModel().fit(rfm.frequency, rfm.recency, rfm.T)
    # The summary rounds recency and T to 2 decimals: parameters agree to about 1e-3.
    for name, value in GOLDEN.items():
        assert getattr(own.params_, name) == pytest.approx(value, abs=2e-3), name
    assert own.log_likelihood_ == pytest.approx(-9582.4, abs=0.5)


# ------------------------------------------------------------------ the lifetimes oracle


def test_parameters_and_log_likelihood_match_lifetimes(
    fitted: BetaGeoModel, lifetimes_fitter: Any, summary: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    theirs = lifetimes_fitter.params_
    for name in GOLDEN:
        assert getattr(fitted.params_, name) == pytest.approx(float(theirs[name]), rel=1e-4), name
    # lifetimes reports the mean negative log-likelihood with time rescaled by `_scale`; scaling time by s
    # shifts each customer's log L by −x·log(s).
    x = summary[0]
    theirs_total = -lifetimes_fitter._negative_log_likelihood_ * x.size + x.sum() * math.log(lifetimes_fitter._scale)
    assert fitted.log_likelihood_ == pytest.approx(theirs_total, abs=1e-3)


def test_predictions_match_lifetimes_formulas(
    lifetimes_fitter: Any, summary: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    # Same parameters on both sides, so this compares the formulas, not the optimisers.
    ours = model_with({k: float(v) for k, v in lifetimes_fitter.params_.items()})
    x, t_x, T = summary
    for t in (1.0, 10.0, 39.0, 78.0):
        np.testing.assert_allclose(
            ours.expected_purchases(t, x, t_x, T),
            lifetimes_fitter.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T),
            rtol=1e-9,
        )
    np.testing.assert_allclose(
        ours.p_alive(x, t_x, T), lifetimes_fitter.conditional_probability_alive(x, t_x, T), rtol=1e-12
    )
    grid = np.array([1.0, 13.0, 39.0, 78.0, 156.0])
    np.testing.assert_allclose(
        ours.expected_unconditional(grid), lifetimes_fitter.expected_number_of_purchases_up_to_time(grid), rtol=1e-9
    )


# ------------------------------------------------------------------ closed forms and Monte-Carlo


def test_p_alive_is_one_without_repeat_purchases_and_churn_has_its_closed_form() -> None:
    model = model_with(GOLDEN)
    T = np.array([5.0, 20.0, 38.86])
    assert np.all(model.p_alive(0, 0, T) == 1.0)
    expected = ((GOLDEN["alpha"] + T) / (GOLDEN["alpha"] + T + 39.0)) ** GOLDEN["r"]
    np.testing.assert_allclose(model.prob_no_purchase(39.0, 0, 0, T), expected, rtol=1e-12)
    assert np.all(model.prob_no_purchase(0.0, [0, 3, 10], [0, 10, 20], 30) == model.prob_no_purchase(0, 0, 0, 1))
    # As the horizon grows, only customers who dropped out stay silent: P0 -> 1 - P(alive).
    alive = model.p_alive(3, 10, 30)
    assert float(model.prob_no_purchase(1e9, 3, 10, 30)) == pytest.approx(1.0 - float(alive), abs=1e-3)


def simulate_bgnbd(
    params: dict[str, float], T: np.ndarray, horizon: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Customers from the BG/NBD process: x, t_x in (0, T], whether alive at T, purchases in (T, T+horizon]."""
    n = T.size
    lam = rng.gamma(params["r"], 1.0 / params["alpha"], size=n)
    p = rng.beta(params["a"], params["b"], size=n)
    t, x, t_x = np.zeros(n), np.zeros(n), np.zeros(n)
    holdout, dead_at_T = np.zeros(n), np.zeros(n, dtype=bool)
    idx = np.arange(n)
    while idx.size:
        t[idx] += rng.exponential(1.0 / lam[idx])
        idx = idx[t[idx] <= T[idx] + horizon]
        calibration = t[idx] <= T[idx]
        x[idx[calibration]] += 1
        t_x[idx[calibration]] = t[idx[calibration]]
        holdout[idx[~calibration]] += 1
        drop = rng.random(idx.size) < p[idx]  # dropout happens only right after a (repeat) purchase
        dead_at_T[idx[drop & calibration]] = True
        idx = idx[~drop]
    return {"x": x, "t_x": t_x, "T": T, "alive": ~dead_at_T, "holdout": holdout}


def test_predictions_agree_with_a_monte_carlo_of_the_model() -> None:
    """By the law of total probability, within any group defined by the calibration data the mean prediction
    equals the simulated share (or mean) in the holdout."""
    rng = np.random.default_rng(7)
    sim = simulate_bgnbd(GOLDEN, rng.uniform(27.0, 39.0, size=150_000), 39.0, rng)
    model = model_with(GOLDEN)
    x, t_x, T = sim["x"], sim["t_x"], sim["T"]
    p0 = model.prob_no_purchase(39.0, x, t_x, T)
    expected = model.expected_purchases(39.0, x, t_x, T)
    alive = model.p_alive(x, t_x, T)
    for group in (x >= 0, x == 0, x == 1, (x >= 2) & (x < 5), x >= 5):
        n = int(group.sum())
        silent = (sim["holdout"][group] == 0).astype(float)
        assert abs(p0[group].mean() - silent.mean()) < 4 * silent.std() / math.sqrt(n) + 1e-3
        is_alive = sim["alive"][group].astype(float)
        assert abs(alive[group].mean() - is_alive.mean()) < 4 * is_alive.std() / math.sqrt(n) + 1e-3
        counts = sim["holdout"][group]
        assert abs(expected[group].mean() - counts.mean()) < 4 * counts.std() / math.sqrt(n) + 1e-3


def test_fit_recovers_simulated_parameters() -> None:
    rng = np.random.default_rng(11)
    truth = {"r": 0.5, "alpha": 6.0, "a": 1.2, "b": 3.0}
    sim = simulate_bgnbd(truth, rng.uniform(20.0, 52.0, size=60_000), 0.0, rng)
    model = BetaGeoModel().fit(sim["x"], sim["t_x"], sim["T"])
    for name, value in truth.items():
        assert getattr(model.params_, name) == pytest.approx(value, rel=0.15), name


# ------------------------------------------------------------------ the likelihood and its gradient


@pytest.mark.parametrize("penalizer", [0.0, 0.05])
def test_analytic_gradient_matches_finite_differences(
    summary: tuple[np.ndarray, np.ndarray, np.ndarray], penalizer: float
) -> None:
    weights = np.random.default_rng(3).uniform(0.5, 2.0, size=summary[0].size)
    data = _FitData(*summary, weights)
    for theta in (np.log([0.3, 5.0, 0.9, 2.0]), np.log([1.5, 0.7, 3.0, 0.4]), np.zeros(4)):
        value, gradient = _objective(theta, data, penalizer)
        numeric = approx_fprime(theta, lambda th: _objective(th, data, penalizer)[0], 1e-7)
        assert math.isfinite(value)
        np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-6)


def test_weights_on_unique_rows_equal_repeated_customers(summary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, t_x, T = summary
    rows, counts = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
    weighted = BetaGeoModel().fit(rows[:, 0], rows[:, 1], rows[:, 2], weights=counts)
    plain = BetaGeoModel().fit(x, t_x, T)
    for name in GOLDEN:
        assert getattr(weighted.params_, name) == pytest.approx(getattr(plain.params_, name), rel=1e-6)
    assert weighted.log_likelihood_ == pytest.approx(plain.log_likelihood_, abs=1e-6)


def test_penalizer_shrinks_parameters(summary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    plain = BetaGeoModel().fit(*summary)
    penalised = BetaGeoModel(penalizer=0.1).fit(*summary)
    assert penalised.params_.alpha < plain.params_.alpha
    assert penalised.log_likelihood_ < plain.log_likelihood_  # the unpenalised log L at a worse optimum


# ------------------------------------------------------------------ errors and persistence


def test_predicting_before_fit_fails_clearly() -> None:
    model = BetaGeoModel()
    calls: list[Callable[[], object]] = [
        lambda: model.p_alive(1, 1, 2),
        lambda: model.expected_purchases(1, 1, 1, 2),
        lambda: model.prob_no_purchase(1, 1, 1, 2),
        lambda: model.expected_unconditional(1),
    ]
    for call in calls:
        with pytest.raises(NotFittedError, match="not fitted"):
            call()


@pytest.mark.parametrize(
    ("frequency", "recency", "T", "message"),
    [
        ([1, -1], [1, 0], [2, 2], "frequency has 1 negative"),
        ([1, 1], [1, np.nan], [2, 2], "recency has 1 missing or non-finite"),
        ([1, 1], [1, 1], [2, np.inf], "T has 1 missing or non-finite"),
        ([1, 1], [1, 3], [2, 2], "recency exceeds T for 1 customer"),
        ([1.5, 1], [1, 1], [2, 2], "whole numbers"),
        ([1, 1, 1], [1, 1], [2, 2], "incompatible shapes"),
        (["a", 1], [1, 1], [2, 2], "frequency must be numeric"),
    ],
)
def test_invalid_input_names_the_problem(frequency: Any, recency: Any, T: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        BetaGeoModel().fit(frequency, recency, T)
    with pytest.raises(ModelError, match=message):
        model_with(GOLDEN).p_alive(frequency, recency, T)


def test_recency_a_hair_above_T_is_tolerated(summary: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    x, t_x, T = summary
    fuzzed = t_x.copy()
    fuzzed[0] = T[0] * (1 + 1e-9)
    assert BetaGeoModel(n_starts=1).fit(x, fuzzed, T).is_fitted
    assert float(model_with(GOLDEN).p_alive(2, 10.0 + 1e-12, 10.0)) == pytest.approx(
        float(model_with(GOLDEN).p_alive(2, 10.0, 10.0))
    )


def test_non_convergence_and_unidentified_data_raise_convergence_error(
    summary: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    with pytest.raises(ConvergenceError, match="no starting point converged"):
        BetaGeoModel(max_iter=1).fit(*summary)
    with pytest.raises(ConvergenceError, match="no customer has a repeat purchase"):
        BetaGeoModel().fit([0, 0, 0], [0, 0, 0], [3, 4, 5])
    with pytest.raises(ModelError, match="no customers"):
        BetaGeoModel().fit([], [], [])
    with pytest.raises(ModelError, match="n_starts"):
        BetaGeoModel(n_starts=0)


def test_to_dict_round_trips_through_json(fitted: BetaGeoModel) -> None:
    restored = BetaGeoModel.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert restored.params_ == fitted.params_
    assert restored.log_likelihood_ == fitted.log_likelihood_ and restored.n_customers_ == 2357
    assert restored.hyperparameters() == fitted.hyperparameters()
    x, t_x, T = np.array([0, 2, 7]), np.array([0, 30.43, 35.0]), np.array([38.86, 38.86, 36.0])
    np.testing.assert_array_equal(restored.prob_no_purchase(4, x, t_x, T), fitted.prob_no_purchase(4, x, t_x, T))
    assert isinstance(fitted.params_, BetaGeoParams)
    unfitted = BetaGeoModel.from_dict(BetaGeoModel(penalizer=0.5).to_dict())
    assert not unfitted.is_fitted and unfitted.penalizer == 0.5
    with pytest.raises(NotFittedError):
        _ = unfitted.params_


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"model": "paretonbd", "format": 1}, "not a saved BG/NBD model"),
        ({"model": "bgnbd", "format": 99}, "format 99 is not supported"),
        ({"model": "bgnbd", "format": 1, "params": {"r": 1.0}}, "malformed"),
        ({"model": "bgnbd", "format": 1, "params": {"r": -1.0, "alpha": 1, "a": 1, "b": 1}}, "positive"),
    ],
)
def test_from_dict_rejects_bad_payloads(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        BetaGeoModel.from_dict(payload)
