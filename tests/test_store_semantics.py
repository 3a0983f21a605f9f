"""Per-attribute change semantics and the selection policies (mirror, TTL), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from churnsync.config import AttributeRule, AttributeSettings, Settings
from churnsync.errors import StoreError
from churnsync.records import BatchOutcome, Value
from churnsync.store import AttributeStore
from clocks import Clock
from test_store import acknowledge, write

COUPLED = AttributeSettings(
    rules={"churn_probability": AttributeRule(round=2, abs_tolerance=0.02, unless_changed=["churn_risk"])}
)


def changes(store: AttributeStore, destination: str = "braze", **policy: object) -> dict[str, dict[str, Value]]:
    return {c.customer_id: dict(c.values) for chunk in store.select_changes(destination, **policy) for c in chunk}  # type: ignore[arg-type]


def test_the_default_rules_couple_probability_to_the_risk_tier() -> None:
    rule = Settings().attributes.rule_for("churn_probability")
    assert rule.unless_changed == ["churn_risk"] and rule.abs_tolerance == 0.02


def test_a_small_move_is_a_change_when_the_risk_tier_changed(store: AttributeStore) -> None:
    write(store, {"customer_id": ["a", "b"], "churn_probability": [0.49, 0.30], "churn_risk": ["low", "low"]}, COUPLED)
    acknowledge(store)
    # a: 0.49 -> 0.50 (within 0.02) but low -> medium: both change. b: 0.30 -> 0.31, tier the same: nothing.
    _, summary = write(
        store, {"customer_id": ["a", "b"], "churn_probability": [0.50, 0.31], "churn_risk": ["medium", "low"]}, COUPLED
    )
    assert summary.values_changed == 2 and summary.customers_changed == 1
    assert changes(store) == {"a": {"churn_probability": 0.5, "churn_risk": "medium"}}
    assert store.current_values("b") == {"b": {"churn_probability": 0.30, "churn_risk": "low"}}
    history = {(e.attribute, e.new_value) for e in store.history("a")}
    assert ("churn_probability", 0.5) in history and ("churn_risk", "medium") in history
    # A tier change with an unmoved probability sends the tier only.
    acknowledge(store)
    _, summary = write(store, {"customer_id": ["a"], "churn_probability": [0.50], "churn_risk": ["high"]}, COUPLED)
    assert summary.values_changed == 1
    assert changes(store) == {"a": {"churn_risk": "high"}}


def test_relative_tolerance(store: AttributeStore) -> None:
    rules = AttributeSettings(rules={"clv": AttributeRule(round=2, rel_tolerance=0.05)})
    write(store, {"customer_id": ["big", "small"], "clv": [1000.0, 10.0]}, rules)
    acknowledge(store)
    # 1000 -> 1040 is 4 % (no change); 10 -> 10.6 is 6 % (a change).
    _, summary = write(store, {"customer_id": ["big", "small"], "clv": [1040.0, 10.6]}, rules)
    assert summary.values_changed == 1
    assert changes(store) == {"small": {"clv": 10.6}}
    # Both tolerances: a move must reach both. 1000 -> 1060 is 6 % and 60 >= 50: a change; 10.6 -> 11.5 is 8 % < 50.
    both = AttributeSettings(rules={"clv": AttributeRule(round=2, rel_tolerance=0.05, abs_tolerance=50)})
    acknowledge(store)
    _, summary = write(store, {"customer_id": ["big", "small"], "clv": [1060.0, 11.5]}, both)
    assert summary.values_changed == 1
    assert changes(store) == {"big": {"clv": 1060.0}}


def test_day_granularity_for_timestamps(store: AttributeStore) -> None:
    rules = AttributeSettings(rules={"next_purchase_at": AttributeRule(granularity="day")})
    stamp = pa.array([datetime(2026, 7, 1, 8, 0, tzinfo=UTC)], pa.timestamp("s", tz="UTC"))
    write(store, {"customer_id": ["a"], "next_purchase_at": stamp}, rules)
    acknowledge(store)
    later_same_day = pa.array([datetime(2026, 7, 1, 21, 30, tzinfo=UTC)], pa.timestamp("s", tz="UTC"))
    _, summary = write(store, {"customer_id": ["a"], "next_purchase_at": later_same_day}, rules)
    assert summary.values_changed == 0 and changes(store) == {}
    next_day = pa.array([datetime(2026, 7, 2, 1, 0, tzinfo=UTC)], pa.timestamp("s", tz="UTC"))
    _, summary = write(store, {"customer_id": ["a"], "next_purchase_at": next_day}, rules)
    assert summary.values_changed == 1
    assert changes(store) == {"a": {"next_purchase_at": "2026-07-02T01:00:00Z"}}
    # Without the rule, any second counts.
    _, summary = write(store, {"customer_id": ["a"], "next_purchase_at": later_same_day}, AttributeSettings(rules={}))
    assert summary.values_changed == 1


def test_mirror_nulls_out_customers_no_longer_scored_once(store: AttributeStore) -> None:
    write(store, {"customer_id": ["a", "b", "c"], "churn_probability": [0.1, 0.2, 0.3], "churn_risk": ["low"] * 3})
    acknowledge(store)
    write(store, {"customer_id": ["a", "c"], "churn_probability": [0.1, 0.3], "churn_risk": ["low", "low"]})
    assert changes(store) == {}  # upsert (the default) keeps b as it is
    assert changes(store, mode="upsert") == {}
    assert changes(store, mode="mirror") == {"b": {"churn_probability": None, "churn_risk": None}}
    assert store.current_values("b") == {"b": {"churn_probability": 0.2, "churn_risk": "low"}}  # state untouched
    # Once the nulls are acknowledged, nothing more is sent; re-scoring b sends its values again.
    sync = store.start_sync_run("braze", prediction_run_id=None)
    selected = [c for chunk in store.select_changes("braze", mode="mirror") for c in chunk]
    store.record_batch(sync, "braze", BatchOutcome(seq=0, accepted=selected, failed=[], http_status=201, attempts=1))
    assert changes(store, mode="mirror") == {}
    assert store.acknowledged_state("braze")["b"] == {"churn_probability": None, "churn_risk": None}
    write(store, {"customer_id": ["a", "b", "c"], "churn_probability": [0.1, 0.2, 0.3], "churn_risk": ["low"] * 3})
    assert changes(store, mode="mirror") == {"b": {"churn_probability": 0.2, "churn_risk": "low"}}


def test_a_failed_or_running_run_does_not_make_customers_unscored(store: AttributeStore) -> None:
    write(store, {"customer_id": ["a", "b"], "churn_risk": ["low", "high"]})
    acknowledge(store)
    run = store.start_prediction_run(
        as_of=datetime(2026, 6, 2, tzinfo=UTC), horizon_days=30, model_version="m", details={}
    )
    store.write_predictions(run, pa.table({"customer_id": ["a"], "churn_risk": ["low"]}), AttributeSettings(rules={}))
    assert changes(store, mode="mirror") == {}  # still running: the latest succeeded run scored b
    store.finish_prediction_run(run, status="failed", summary={})
    assert changes(store, mode="mirror") == {}


def test_predictions_older_than_the_ttl_are_nulled_out(store: AttributeStore, clock: Clock) -> None:
    write(store, {"customer_id": ["old", "kept"], "churn_risk": ["low", "high"]})
    acknowledge(store)
    clock.advance(days=10)
    write(store, {"customer_id": ["kept"], "churn_risk": ["high"]})  # kept is re-scored (no change), old is not
    assert changes(store, ttl=timedelta(days=7)) == {"old": {"churn_risk": None}}
    assert changes(store, ttl=timedelta(days=30)) == {}
    past = clock.now - timedelta(days=9)
    assert changes(store, ttl=timedelta(days=7), now=past) == {}
    clock.advance(days=10)
    assert changes(store, ttl=timedelta(days=7)) == {"kept": {"churn_risk": None}, "old": {"churn_risk": None}}
    with pytest.raises(StoreError, match="mode"):
        changes(store, mode="delete")
    with pytest.raises(StoreError, match="ttl"):
        changes(store, ttl=timedelta(0))
