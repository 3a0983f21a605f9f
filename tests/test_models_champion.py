"""Issue 3: the champion rule (one standard error, simplest first) and the per-type activity features."""

from __future__ import annotations

import math
from datetime import datetime

import duckdb
import numpy as np
import pytest

from churnsync.errors import ModelError
from churnsync.features.windows import build_window_features
from churnsync.models.churn import SIMPLICITY, choose_champion


def _outcomes(n: int = 4000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, n)
    return (rng.uniform(size=n) < p).astype(np.float64), p


def test_a_clearly_better_complex_model_is_the_champion() -> None:
    y, p = _outcomes()
    vague = np.full_like(p, y.mean())
    champion, selection = choose_champion(y, {"bgnbd": vague, "logistic": vague, "gbm": p})
    assert champion == "gbm"
    assert selection["gbm"]["gap"] == 0.0 and selection["gbm"]["se"] == 0.0
    # The others are many standard errors behind.
    assert selection["bgnbd"]["gap"] > 5 * selection["bgnbd"]["se"] > 0.0


def test_a_lead_within_the_noise_goes_to_the_simpler_model() -> None:
    y, p = _outcomes()
    rng = np.random.default_rng(10)
    # Two equally good models (the truth plus independent noise); on this window the GBM leads, within the noise.
    logistic, gbm = (np.clip(p + rng.normal(0.0, 0.03, p.size), 0.01, 0.99) for _ in range(2))
    vague = np.full_like(p, y.mean())
    champion, selection = choose_champion(y, {"bgnbd": vague, "logistic": logistic, "gbm": gbm})
    assert selection["gbm"]["gap"] == 0.0  # the best
    assert 0.0 < selection["logistic"]["gap"] <= selection["logistic"]["se"]
    assert selection["bgnbd"]["gap"] > selection["bgnbd"]["se"]
    assert champion == "logistic"
    # The per-customer log-loss behind the rule is the usual one.
    q = np.clip(gbm, 1e-12, 1 - 1e-12)
    assert selection["gbm"]["log_loss"] == pytest.approx(float(np.mean(-(y * np.log(q) + (1 - y) * np.log1p(-q)))))


def test_simplicity_order_and_empty_input() -> None:
    assert SIMPLICITY == ("bgnbd", "logistic", "gbm")
    y, p = _outcomes(200)
    # Identical predictions: every candidate ties, the simplest wins.
    assert choose_champion(y, {"gbm": p, "logistic": p, "bgnbd": p})[0] == "bgnbd"
    with pytest.raises(ModelError, match="no candidate"):
        choose_champion(y, {})


def test_per_type_rate_and_recency_of_other_activity() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE events (customer_id VARCHAR, occurred_at TIMESTAMP, event_type VARCHAR, value DOUBLE)")
    con.execute(
        "INSERT INTO events VALUES "
        "('a', '2024-01-01 00:00', 'purchase', 10), ('a', '2024-01-05 00:00', 'session', NULL), "
        "('a', '2024-01-08 12:00', 'session', NULL), ('a', '2024-01-09 00:00', 'purchase', 5), "
        "('a', '2024-01-12 00:00', 'session', NULL), "  # on the cut: not counted
        "('b', '2024-01-10 00:00', 'purchase', 7)"
    )
    f = build_window_features(con, datetime(2024, 1, 11), ["purchase"], event_types=["purchase", "session"])
    rows = {
        str(cid): dict(zip(f.names, map(float, row), strict=True))
        for cid, row in zip(f.customer_id, f.values, strict=True)
    }
    a, b = rows["a"], rows["b"]
    # a: first event 10 days before the cut; 2 sessions, 2 purchases; last session 2.5 days before the cut.
    assert a["session_events_per_day"] == pytest.approx(2 / 10)
    assert a["purchase_events_per_day"] == pytest.approx(2 / 10)
    assert a["days_since_last_session"] == pytest.approx(2.5)
    # b: one day of history (the rate's floor is one day) and no session at all.
    assert b["purchase_events_per_day"] == pytest.approx(1.0)
    assert b["session_events_per_day"] == 0.0 and math.isnan(b["days_since_last_session"])
    # The qualifying type's recency is not repeated under a second name.
    assert f.names.count("days_since_last_purchase") == 1
