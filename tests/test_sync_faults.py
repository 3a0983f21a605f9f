"""The emulator's injected faults, and the client delivering everything exactly through them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from churnsync.config import AttributeSettings, Settings, settings_from_mapping
from churnsync.errors import ChurnsyncError
from churnsync.pipeline import sync_destination
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, parse_faults, serve_in_thread

IDS = [f"c{i:04d}" for i in range(600)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AttributeStore]:
    with AttributeStore.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        run = store.start_prediction_run(
            as_of=datetime(2026, 6, 30, tzinfo=UTC), horizon_days=30, model_version="t", details={}
        )
        table = pa.table(
            {
                "customer_id": IDS,
                "churn_probability": [(i % 100) / 100 for i in range(len(IDS))],
                "churn_risk": [("low", "medium", "high")[i % 3] for i in range(len(IDS))],
            }
        )
        store.write_predictions(run, table, AttributeSettings(rules={}))
        store.finish_prediction_run(run, status="succeeded", summary={})
        yield store


def settings(url: str, endpoint: str, **extra: Any) -> Settings:
    destination = {"endpoint": endpoint, "batch_size": 25, "concurrency": 4, "max_attempts": 30, **extra}
    return settings_from_mapping({"store": {"url": url}, "destinations": {"braze": destination}})


def test_parse_faults() -> None:
    assert parse_faults("429=0.05, 5xx=0.02,drop=0.01") == {"429": 0.05, "5xx": 0.02, "drop": 0.01}
    with pytest.raises(ChurnsyncError, match="NAME=PROBABILITY"):
        parse_faults("429")
    with pytest.raises(ChurnsyncError, match="unknown faults"):
        EmulatorConfig(faults={"meteor": 0.1})


def test_every_fault_kind_is_served_as_described() -> None:
    kinds = ("429", "5xx", "html", "drop")
    for kind in kinds:
        config = EmulatorConfig(faults={kind: 1.0}, known_external_ids=frozenset({"a"}))
        with serve_in_thread(config) as emu, httpx.Client() as client:
            body = {"attributes": [{"external_id": "a", "x": 1}]}
            headers = {"Authorization": "Bearer emulator-key"}
            if kind == "drop":
                with pytest.raises(httpx.RemoteProtocolError):
                    client.post(f"{emu.url}/users/track", json=body, headers=headers)
                assert emu.state.get_profile("a") == {"x": 1}  # applied, though the answer was lost
            else:
                response = client.post(f"{emu.url}/users/track", json=body, headers=headers)
                assert response.status_code in {"429": (429,), "5xx": (500, 503), "html": (502,)}[kind]
                if kind == "html":
                    assert response.text.startswith("<html>")
                assert emu.state.get_profile("a") == {}
            assert emu.state.stats()["faults"] == {kind: 1}


def test_client_delivers_everything_exactly_through_a_mix_of_faults(store: AttributeStore) -> None:
    faults = {"429": 0.04, "5xx": 0.06, "html": 0.06, "drop": 0.06, "slow": 0.06}
    config = EmulatorConfig(
        faults=faults, slow_seconds=0.5, fault_seed=7, rate_limit_window_seconds=1.0, known_external_ids=frozenset(IDS)
    )
    with serve_in_thread(config) as emu:
        report = sync_destination(
            settings(store.url, emu.url, timeout_seconds=0.25, batch_size=10),
            store,
            "braze",
            prediction_run_id=None,
            api_key="emulator-key",
        )
        stats = emu.state.stats()
        profiles = emu.state.profiles()
    assert report.status == "succeeded", report.counts.failures[:3]
    assert report.counts.accepted == len(IDS)
    assert set(stats["faults"]) == set(faults)  # every kind happened
    assert report.counts.retries >= sum(stats["faults"].values()) - stats["faults"].get("slow", 0)
    assert profiles == store.acknowledged_state("braze")
    assert stats["violations"]["concurrent_user_writes"] == 0


def test_per_object_errors_fail_exactly_those_objects_and_the_next_runs_deliver_them(store: AttributeStore) -> None:
    config = EmulatorConfig(faults={"object": 0.05}, fault_seed=3, known_external_ids=frozenset(IDS))
    with serve_in_thread(config) as emu:
        cfg = settings(store.url, emu.url)
        first = sync_destination(cfg, store, "braze", prediction_run_id=None, api_key="emulator-key")
        refused = emu.state.stats()["faults"]["object"]
        assert first.counts.failed == refused > 0
        failed_ids = {f.customer_id for f in first.counts.failures}
        assert all(emu.state.get_profile(c) == {} for c in failed_ids)
        for _ in range(5):
            if sync_destination(cfg, store, "braze", prediction_run_id=None, api_key="emulator-key").counts.sent == 0:
                break
        assert emu.state.profiles() == store.acknowledged_state("braze")
        assert len(store.acknowledged_state("braze")) == len(IDS)
