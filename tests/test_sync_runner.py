"""One sync run around the client: dry run, data-point budget, quarantine, and several destinations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from churnsync.cli import app
from churnsync.config import AttributeSettings, Settings, settings_from_mapping
from churnsync.pipeline import sync_destination
from churnsync.store import ledger
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread
from churnsync.sync.runner import BudgetExceededError, write_dry_run

NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)
IDS = [f"c{i:03d}" for i in range(30)]


def publish(store: AttributeStore, columns: dict[str, list[Any]]) -> None:
    run = store.start_prediction_run(as_of=NOW, horizon_days=30, model_version="test", details={})
    store.write_predictions(run, pa.table(columns), AttributeSettings(rules={}))
    store.finish_prediction_run(run, status="succeeded", summary={})


def base_columns(ids: list[str] = IDS) -> dict[str, list[Any]]:
    return {
        "customer_id": ids,
        "churn_probability": [i / 100 for i in range(len(ids))],
        "churn_risk": [("low", "medium", "high")[i % 3] for i in range(len(ids))],
        "clv_365d": [float(i * 10) for i in range(len(ids))],
    }


def settings(url: str, destinations: dict[str, dict[str, Any]]) -> Settings:
    return settings_from_mapping({"store": {"url": url}, "destinations": destinations})


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with serve_in_thread(EmulatorConfig(known_external_ids=frozenset(IDS))) as emu:
        yield emu


@pytest.fixture
def store(store_url: str) -> Iterator[AttributeStore]:
    """On SQLite and on the real PostgreSQL (the ledger's SQL runs on both)."""
    with AttributeStore.open(store_url) as store:
        publish(store, base_columns())
        yield store


def sync(store: AttributeStore, config: Settings, name: str = "braze") -> Any:
    return sync_destination(config, store, name, prediction_run_id=None, api_key="emulator-key")


# -- dry run --------------------------------------------------------------------------------------------------


def test_dry_run_writes_exact_payloads_and_sends_nothing(
    store: AttributeStore, emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = settings(store.url, {"braze": {"endpoint": emulator.url, "batch_size": 7, "attribute_prefix": "cs_"}})
    out = tmp_path / "payloads.ndjson"
    summary = write_dry_run(store, "braze", config.destinations["braze"], out, now=NOW)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == summary.requests == 5  # 30 customers in requests of 7
    objects = [obj for body in lines for obj in body["attributes"]]
    assert [o["external_id"] for o in objects] == IDS
    assert objects[4] == {
        "external_id": "c004",
        "_update_existing_only": True,
        "cs_churn_probability": 0.04,
        "cs_churn_risk": "medium",
        "cs_clv_365d": 40.0,
    }
    assert summary.customers == 30
    # c000 has churn_probability 0.0 and clv 0.0: numbers, sent as numbers; every attribute costs a point.
    assert summary.data_points_by_attribute == {"cs_churn_probability": 30, "cs_churn_risk": 30, "cs_clv_365d": 30}
    assert summary.data_points == 90
    assert emulator.state.stats()["requests_total"] == 0
    assert store.acknowledged_state("braze") == {}
    assert store.sync_runs() == []


def test_dry_run_from_the_command_line(store: AttributeStore, emulator: RunningEmulator, tmp_path: Path) -> None:
    config = tmp_path / "churnsync.toml"
    config.write_text(
        f'[store]\nurl = "{store.url}"\n[destinations.braze]\nendpoint = "{emulator.url}"\n', encoding="utf-8"
    )
    out = tmp_path / "dry.ndjson"
    result = CliRunner().invoke(app, ["sync", "--config", str(config), "--dry-run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert '"data_points": 90' in result.output
    assert len(out.read_text().splitlines()) == 1
    assert emulator.state.stats()["requests_total"] == 0


def test_dry_run_summary_is_recorded_without_payloads_or_sync_state(
    store: AttributeStore, emulator: RunningEmulator, tmp_path: Path
) -> None:
    config = settings(store.url, {"braze": {"endpoint": emulator.url, "batch_size": 7, "attribute_prefix": "cs_"}})
    assert ledger.dry_runs(store) == []
    first = tmp_path / "first.ndjson"
    write_dry_run(store, "braze", config.destinations["braze"], first, now=NOW)
    write_dry_run(store, "braze", config.destinations["braze"], tmp_path / "second.ndjson", now=NOW)
    runs = ledger.dry_runs(store)
    assert [r["path"] for r in runs] == [str((tmp_path / "second.ndjson").resolve()), str(first.resolve())]
    newest = runs[0]
    assert newest["destination"] == "braze" and newest["created_at"] == NOW
    assert (newest["customers"], newest["requests"], newest["data_points"]) == (30, 5, 90)
    assert newest["data_points_by_attribute"] == {"cs_churn_probability": 30, "cs_churn_risk": 30, "cs_clv_365d": 30}
    assert "external_id" not in json.dumps(newest, default=str)  # the summary, never the payloads
    assert store.sync_runs() == [] and store.acknowledged_state("braze") == {}
    assert ledger.dry_runs(store, limit=1) == runs[:1]


# -- budget ---------------------------------------------------------------------------------------------------


def test_budget_sends_risk_tier_changes_first(store: AttributeStore, emulator: RunningEmulator) -> None:
    # Second run: 10 customers change tier, 20 others change only their score.
    columns = base_columns()
    first = settings(store.url, {"braze": {"endpoint": emulator.url}})
    assert sync(store, first).status == "succeeded"
    columns["churn_probability"] = [p + 0.5 for p in columns["churn_probability"]]
    columns["churn_risk"] = [("high" if i < 10 else r) for i, r in enumerate(columns["churn_risk"])]
    changed_tier = [
        c for i, c in enumerate(IDS) if i < 10 and columns["churn_risk"][i] != base_columns()["churn_risk"][i]
    ]
    publish(store, columns)
    config = settings(store.url, {"braze": {"endpoint": emulator.url, "max_data_points_per_run": 20}})
    report = sync(store, config)
    assert report.counts.data_points <= 20
    acked = store.acknowledged_state("braze")
    # Every tier change made it (2 points each), then score-only changes filled what was left.
    assert all(acked[c]["churn_risk"] == "high" for c in changed_tier)
    assert report.details["skipped_budget_customers"] == 30 - report.counts.accepted
    assert report.details["budget"] == 20
    # The next run sends the rest.
    rest = sync(store, settings(store.url, {"braze": {"endpoint": emulator.url}}))
    assert rest.counts.accepted == report.details["skipped_budget_customers"]


def test_budget_stop_refuses_before_sending(store: AttributeStore, emulator: RunningEmulator) -> None:
    config = settings(
        store.url, {"braze": {"endpoint": emulator.url, "max_data_points_per_run": 50, "budget_policy": "stop"}}
    )
    with pytest.raises(BudgetExceededError, match=r"90 data points, over the budget of 50.*nothing was sent"):
        sync(store, config)
    assert emulator.state.stats()["requests_total"] == 0
    assert store.sync_runs()[0]["status"] == "failed"


def test_monthly_budget_counts_what_was_acknowledged_this_month(
    store: AttributeStore, emulator: RunningEmulator
) -> None:
    config = settings(store.url, {"braze": {"endpoint": emulator.url, "max_data_points_per_month": 60}})
    first = sync(store, config)
    assert first.counts.data_points == 60
    assert ledger.data_points_since(store, "braze", ledger.month_start(datetime.now(UTC))) == 60
    second = sync(store, config)
    assert second.counts.sent == 0
    assert second.details["budget"] == 0
    assert second.details["skipped_budget_customers"] == 10


# -- quarantine -----------------------------------------------------------------------------------------------


def test_poison_object_is_quarantined_skipped_then_retried_when_it_changes(
    store: AttributeStore, emulator: RunningEmulator
) -> None:
    columns = base_columns()
    columns["churn_risk"][3] = "x" * 300  # Braze refuses strings over 255 characters
    publish(store, columns)
    config = settings(store.url, {"braze": {"endpoint": emulator.url, "quarantine_after_runs": 3}})
    for run in range(1, 4):
        report = sync(store, config)
        assert report.counts.failed == 1
        (row,) = ledger.failures(store, "braze")
        assert row["customer_id"] == "c003" and row["consecutive_runs"] == run
        assert "longer than 255" in row["reason"]
    assert report.details["newly_quarantined"] == 1
    assert ledger.quarantined(store, "braze").keys() == {"c003"}
    skipped = sync(store, config)
    assert skipped.counts.sent == 0 and skipped.details["skipped_quarantined"] == 1
    # The value changes: the object is tried again, accepted, and leaves the list.
    columns["churn_risk"][3] = "high"
    publish(store, columns)
    fixed = sync(store, config)
    assert fixed.counts.accepted == 1 and fixed.counts.failed == 0
    assert ledger.failures(store, "braze") == []


def test_failures_and_release_from_the_command_line(
    store: AttributeStore, emulator: RunningEmulator, tmp_path: Path
) -> None:
    columns = base_columns()
    columns["churn_risk"][3] = "x" * 300
    publish(store, columns)
    config = settings(store.url, {"braze": {"endpoint": emulator.url, "quarantine_after_runs": 1}})
    sync(store, config)
    path = tmp_path / "churnsync.toml"
    path.write_text(f'[store]\nurl = "{store.url}"\n', encoding="utf-8")
    listed = CliRunner().invoke(app, ["sync", "failures", "--config", str(path), "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["customer_id"] == "c003" and row["quarantined_at"]
    released = CliRunner().invoke(app, ["sync", "release", "c003", "--config", str(path)])
    assert released.exit_code == 0, released.output
    assert ledger.quarantined(store, "braze") == {}
    again = sync(store, config)
    # Released: tried again although its value did not change (and refused again, before sending: issue 9).
    assert again.counts.selected == 1 and again.details["skipped_quarantined"] == 0
    assert again.counts.failed == 1 and again.counts.sent == 0


# -- several destinations -------------------------------------------------------------------------------------


def test_two_destinations_with_different_mappings(store: AttributeStore, emulator: RunningEmulator) -> None:
    with serve_in_thread(EmulatorConfig(create_unknown_users=True)) as second:
        config = settings(
            store.url,
            {
                "marketing": {
                    "endpoint": emulator.url,
                    "attributes_exclude": ["clv_365d"],
                    "attribute_rename": {"churn_risk": "risk_tier"},
                    "attribute_prefix": "cs_",
                },
                "eu": {
                    "endpoint": second.url,
                    "identifier": "user_alias",
                    "alias_label": "crm_id",
                    "attributes_include": ["clv_365d"],
                    "customer_id_prefixes": ["c01"],
                },
            },
        )
        assert sync(store, config, "marketing").status == "succeeded"
        assert sync(store, config, "eu").status == "succeeded"
        assert emulator.state.get_profile("c004") == {"cs_churn_probability": 0.04, "cs_risk_tier": "medium"}
        aliases = second.state.other_profiles()
        assert set(aliases) == {f"user_alias:crm_id:c01{i}" for i in range(10)}
        assert aliases["user_alias:crm_id:c012"] == {"clv_365d": 120.0}
        assert second.state.profiles() == {}
        # Each destination acknowledged only what it was sent; nothing is left to send to either.
        assert store.acknowledged_state("eu")["c012"] == {"clv_365d": 120.0}
        assert sync(store, config, "marketing").counts.sent == 0
        assert sync(store, config, "eu").counts.sent == 0
