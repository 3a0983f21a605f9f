"""Churn and value measures against scikit-learn and hand-computed cases."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from churnsync.config import Settings
from churnsync.errors import DataError
from churnsync.events.generator import generate_sample
from churnsync.models import evaluation as ev
from churnsync.models.report import render_html
from churnsync.pipeline import evaluate_model


@pytest.fixture
def sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    p = rng.uniform(0.01, 0.99, 4000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    return y, np.round(p, 2)  # rounded: many ties


def test_ranking_measures_match_scikit_learn(sample: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = sample
    assert ev.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert ev.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert ev.log_loss(y, p) == pytest.approx(sk_log_loss(y, p), abs=1e-9)
    unique = np.random.default_rng(1).permutation(y.size) / y.size  # average precision only agrees without ties
    assert ev.pr_auc(y, unique) == pytest.approx(average_precision_score(y, unique), abs=1e-12)


def test_lift_quality_is_one_for_perfect_and_zero_for_random() -> None:
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=20_000) < 0.3).astype(float)
    assert ev.lift_quality(y, y + 0.0) == pytest.approx(1.0)
    assert ev.lift_quality(y, -y) == pytest.approx(-1.0)
    randoms = [ev.lift_quality(y, rng.uniform(size=y.size)) for _ in range(5)]
    assert abs(float(np.mean(randoms))) < 0.02
    # A constant score is exactly random: every audience is an average one.
    assert ev.lift_quality(y, np.zeros_like(y)) == pytest.approx(0.0, abs=1e-12)


def test_lift_quality_by_hand() -> None:
    # n = 4, P = 2; ranked outcomes 1, 0, 1, 0 → captured 1, 1, 2, 2 = 6; random 0.5+1+1.5+2 = 5; perfect 1+2+2+2 = 7
    y = np.array([1, 0, 1, 0])
    s = np.array([4.0, 3.0, 2.0, 1.0])
    assert ev.lift_quality(y, s) == pytest.approx((6 - 5) / (7 - 5))


def test_calibration_measures() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(size=200_000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    assert ev.expected_calibration_error(y, p) < 0.01
    assert ev.expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.1
    curve = ev.calibration_curve(y, p)
    assert len(curve["predicted"]) == 10 and sum(curve["count"]) == p.size


def test_gains_and_gini() -> None:
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 10, dtype=float)
    gains = ev.gains_by_decile(y, y)
    assert gains["gains"][1] == pytest.approx(1.0) and gains["lift"][0] == pytest.approx(5.0)
    value = np.random.default_rng(2).gamma(2.0, 10.0, 1000)
    assert ev.normalized_gini(value, value) == pytest.approx(1.0)
    assert ev.normalized_gini(value, -value) < -0.5
    assert abs(ev.normalized_gini(value, np.zeros_like(value))) < 1e-9


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(DataError, match="differ in length"):
        ev.auc([1, 0], [0.5])
    with pytest.raises(DataError, match="0 or 1"):
        ev.auc([2, 0], [0.5, 0.1])
    assert np.isnan(ev.auc([1, 1], [0.2, 0.3]))
    metrics = ev.churn_metrics([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.3])
    assert metrics["auc"] == 1.0 and metrics["lift_quality"] == 1.0


def test_quality_report_has_baselines_and_renders_offline(tmp_path: Path) -> None:
    generate_sample(tmp_path, customers=1000, days=240, seed=4, start=date(2025, 1, 1), fmt="parquet")
    settings = Settings.model_validate(
        {
            "data": {"paths": [str(tmp_path / "events.parquet")], "rejects_path": str(tmp_path / "r.csv")},
            "model": {"registry_path": str(tmp_path / "models"), "n_estimators": 20},
        }
    )
    report = evaluate_model(settings, now=datetime(2025, 9, 1, tzinfo=UTC), as_of=date(2025, 8, 28))
    assert report["evaluation_cut"] == "2025-07-30T00:00:00"  # 30 days before the end of 2025-08-28
    names = set(report["churn"])
    assert {"baseline recency", "baseline BG/NBD P0", "baseline logistic log-RFM"} <= names
    assert any(n.startswith("champion (") for n in names)
    assert len(report["counts"]["conditional_expectation"]) == 8
    json.dumps(report, allow_nan=False)  # strict JSON
    page = render_html(report)
    assert page.count("<script") >= 4 and "<script src=" not in page and "Plotly.newPlot" in page
    assert "baseline recency" in page and "lift quality" in page.lower()
