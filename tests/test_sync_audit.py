"""Drift audit: sampled profiles read back through /users/export/ids, compared with the acknowledged state."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from churnsync.cli import app
from churnsync.config import AttributeSettings, settings_from_mapping
from churnsync.pipeline import sync_destination
from churnsync.store.store import AttributeStore
from churnsync.sync.audit import audit_destination
from churnsync.sync.emulator import EmulatorConfig, RunningEmulator, serve_in_thread

IDS = [f"c{i:03d}" for i in range(120)]
KEY = {"Authorization": "Bearer emulator-key"}


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    config = EmulatorConfig(known_external_ids=frozenset(IDS), export_rate_limit_window_seconds=1.0)
    with serve_in_thread(config) as emu:
        yield emu


@pytest.fixture
def store(tmp_path: Path, emulator: RunningEmulator) -> Iterator[AttributeStore]:
    with AttributeStore.open(f"sqlite:///{tmp_path / 'store.db'}") as store:
        run = store.start_prediction_run(
            as_of=datetime(2026, 6, 30, tzinfo=UTC), horizon_days=30, model_version="t", details={}
        )
        table = pa.table({"customer_id": IDS, "p": [i / 1000 for i in range(len(IDS))], "tier": ["low"] * len(IDS)})
        store.write_predictions(run, table, AttributeSettings(rules={}))
        store.finish_prediction_run(run, status="succeeded", summary={})
        config = settings_from_mapping(
            {"store": {"url": store.url}, "destinations": {"braze": {"endpoint": emulator.url}}}
        )
        assert (
            sync_destination(config, store, "braze", prediction_run_id=None, api_key="emulator-key").status
            == "succeeded"
        )
        yield store


def test_export_ids_answers_as_braze_documents(emulator: RunningEmulator) -> None:
    emulator.state.add_known(["x"])
    with httpx.Client() as client:
        body = {"external_ids": ["x", "nobody"], "fields_to_export": ["custom_attributes"]}
        answer = client.post(f"{emulator.url}/users/export/ids", json=body, headers=KEY)
        assert answer.status_code == 201
        assert answer.json() == {
            "message": "success",
            "users": [{"external_id": "x", "custom_attributes": {}}],
            "invalid_user_ids": ["nobody"],
        }
        too_many = client.post(f"{emulator.url}/users/export/ids", json={"external_ids": IDS[:51]}, headers=KEY)
        assert too_many.status_code == 400
        assert client.post(f"{emulator.url}/users/export/ids", json={}, headers={}).status_code == 401


def test_export_ids_is_limited_to_its_own_rate() -> None:
    config = EmulatorConfig(export_rate_limit_requests=2, export_rate_limit_window_seconds=60.0)
    with serve_in_thread(config) as emu, httpx.Client() as client:
        statuses = [client.post(f"{emu.url}/users/export/ids", json={}, headers=KEY).status_code for _ in range(3)]
    assert statuses == [201, 201, 429]


def test_audit_reports_where_braze_differs(store: AttributeStore, emulator: RunningEmulator) -> None:
    # Someone else's tool overwrites one attribute and deletes another in Braze.
    with httpx.Client() as client:
        body = {"attributes": [{"external_id": "c007", "p": 0.9}, {"external_id": "c011", "tier": None}]}
        assert client.post(f"{emulator.url}/users/track", json=body, headers=KEY).status_code == 201
    config = settings_from_mapping({"destinations": {"braze": {"endpoint": emulator.url}}})
    started = time.monotonic()
    report = audit_destination(
        store, "braze", config.destinations["braze"], api_key="emulator-key", sample=500, requests_per_minute=240
    )
    elapsed = time.monotonic() - started
    assert report.sampled == len(IDS) and report.requests == 3  # 120 ids, 50 per request
    assert elapsed >= 2 * 60 / 240  # paced: three requests take two intervals
    assert {(d.customer_id, d.attribute, d.acknowledged, d.braze) for d in report.differences} == {
        ("c007", "p", 0.007, 0.9),
        ("c011", "tier", "low", None),
    }
    assert report.matching == len(IDS) - 2


def test_audit_from_the_command_line(store: AttributeStore, emulator: RunningEmulator, tmp_path: Path) -> None:
    path = tmp_path / "churnsync.toml"
    path.write_text(
        f'[store]\nurl = "{store.url}"\n[destinations.braze]\nendpoint = "{emulator.url}"\napi_key_env = "AUDIT_KEY"\n',
        encoding="utf-8",
    )
    args = ["sync", "audit", "--sample", "40", "--per-minute", "6000", "--config", str(path), "--json"]
    clean = CliRunner().invoke(app, args, env={"AUDIT_KEY": "emulator-key"})
    assert clean.exit_code == 0, clean.output
    (report,) = json.loads(clean.output)
    assert report["sampled"] == 40 and report["matching"] == 40
    emulator.state.reset()  # Braze lost every attribute (the profiles stay, empty)
    drifted = CliRunner().invoke(app, args, env={"AUDIT_KEY": "emulator-key"})
    assert drifted.exit_code == 1
    assert len(json.loads(drifted.output)[0]["differences"]) == 80
