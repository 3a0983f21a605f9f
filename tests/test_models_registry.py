"""The model registry round trip, incompatible artifacts, the quality gate, and `churnsync models`."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from churnsync.cli import app
from churnsync.config import Settings
from churnsync.errors import ModelError
from churnsync.events.generator import generate_sample
from churnsync.models.churn import ChurnModel
from churnsync.models.registry import REGISTRY_FORMAT, ModelRegistry, gate
from churnsync.pipeline import predict_and_store, train_model
from churnsync.store.store import AttributeStore

START = date(2025, 1, 1)
DAYS = 240
AS_OF = START + timedelta(days=DAYS - 1)
NOW = datetime(2025, 9, 1, tzinfo=UTC)


def test_gate_floors_and_drop() -> None:
    floors = {"min_auc": 0.6, "min_lift_quality": 0.1, "max_auc_drop": 0.02}
    assert gate({"auc": 0.8, "lift_quality": 0.5}, None, **floors).publish
    low = gate({"auc": 0.55, "lift_quality": 0.5}, None, **floors)
    assert not low.publish and "gate_min_auc" in low.reason
    flat = gate({"auc": 0.8, "lift_quality": 0.05}, None, **floors)
    assert not flat.publish and "lift quality" in flat.reason
    worse = gate({"auc": 0.8, "lift_quality": 0.5}, {"auc": 0.85}, **floors)
    assert not worse.publish and "below the model in service" in worse.reason
    assert gate({"auc": 0.84, "lift_quality": 0.5}, {"auc": 0.85}, **floors).publish
    assert not gate({"auc": float("nan"), "lift_quality": 0.5}, None, **floors).publish


def test_save_load_promote_and_refuse_incompatible(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    assert registry.in_service() is None and registry.versions() == []
    artifact = {"model": "churn", "format": 1, "state": {"gbm": "tree"}}
    meta = {"champion": "gbm", "metrics": {"gbm": {"auc": 0.8}}}
    version = registry.save(artifact, meta, now=NOW)
    record = registry.load(version)
    assert record.artifact == artifact and record.validation == {"auc": 0.8}
    assert record.curves() is None  # saved without validation curves (as before they were recorded)
    assert {"lightgbm", "numpy", "python"} <= set(record.meta["libraries"])
    registry.promote(version)
    assert registry.in_service() == version and registry.versions()[0]["in_service"]
    file = tmp_path / "models" / version / "model.json"
    saved = json.loads(file.read_text())
    saved["libraries"]["lightgbm"] = "1.0.0"
    file.write_text(json.dumps(saved))
    with pytest.raises(ModelError, match=r"LightGBM 1\.0\.0, incompatible.*churnsync train"):
        registry.load(version)
    saved["registry_format"] = REGISTRY_FORMAT + 1
    file.write_text(json.dumps(saved))
    with pytest.raises(ModelError, match="registry format"):
        registry.load(version)
    with pytest.raises(ModelError, match="no model"):
        registry.load("churn-nothing")
    with pytest.raises(ModelError, match="not a model version"):
        registry.load("../etc")


def settings_for(folder: Path, **model: object) -> Settings:
    return Settings.model_validate(
        {
            "data": {"paths": [str(folder / "events.parquet")], "rejects_path": str(folder / "rejects.csv")},
            "store": {"url": f"sqlite:///{folder / 'store.db'}"},
            "model": {"registry_path": str(folder / "models"), "n_estimators": 30, **model},
        }
    )


def test_train_gate_and_rescoring_with_the_model_in_service(tmp_path: Path) -> None:
    generate_sample(tmp_path, customers=1200, days=DAYS, seed=9, start=START, fmt="parquet")
    first = train_model(settings_for(tmp_path), now=NOW, as_of=AS_OF)
    assert first.published and first.champion in first.champion_reason
    # A floor no model can reach: saved, not published, the previous model keeps scoring.
    strict = settings_for(tmp_path, gate_min_auc=0.999)
    second = train_model(strict, now=NOW + timedelta(seconds=1), as_of=AS_OF)
    assert not second.published and "gate_min_auc" in second.reason
    registry = ModelRegistry(tmp_path / "models")
    assert registry.in_service() == first.version
    assert {v["version"] for v in registry.versions()} == {first.version, second.version}
    assert registry.load(second.version).meta["gate"]["published"] is False

    # The validation curves of the champion and every candidate are saved with the model and read back.
    record = registry.load(first.version)
    curves = record.meta["validation_curves"]
    assert set(curves) == set(record.meta["metrics"]) and record.curves() == curves[first.champion]
    for name, curve in curves.items():
        calibration, gains = curve["calibration"], curve["gains"]
        assert len(calibration["predicted"]) == len(calibration["observed"]) == len(calibration["count"]) > 1
        assert sum(calibration["count"]) == record.meta["metrics"][name]["customers"]
        assert all(0.0 <= v <= 1.0 for v in calibration["predicted"] + calibration["observed"])
        assert len(gains["gains"]) == 10 and gains["gains"][-1] == pytest.approx(1.0)
        assert gains["gains"] == sorted(gains["gains"]) and len(gains["rate"]) == len(gains["lift"]) == 10
    assert ChurnModel.from_dict(record.artifact).validation_curves_ == curves
    assert next(v for v in registry.versions() if v["version"] == first.version)["validation_curves"] == curves

    store = AttributeStore.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        report = predict_and_store(strict, store, now=NOW, as_of=AS_OF)
        current = store.current_values()
    finally:
        store.close()
    assert report.model_version == first.version and report.model_messages == []
    store = AttributeStore.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:  # a scheduled retraining that the gate refuses: the model in service keeps scoring, and the run says why
        retrained = predict_and_store(strict, store, now=NOW, as_of=AS_OF, retrain=True)
    finally:
        store.close()
    assert retrained.model_version == first.version
    assert any(f"model {first.version} keeps scoring" in m for m in retrained.model_messages)
    row = next(iter(current.values()))
    assert {"churn_probability", "churn_risk", "p_alive", "churn_driver", "segment"} <= set(row)
    assert any(k.startswith("clv_") for k in row) and any(k.startswith("expected_purchases_") for k in row)

    # The CLI: list and show.
    config = tmp_path / "churnsync.toml"
    config.write_text('[data]\npaths = ["events.parquet"]\n[model]\nregistry_path = "models"\n', encoding="utf-8")
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--config", str(config), "--json"])
    assert listed.exit_code == 0, listed.output
    assert {r["version"] for r in json.loads(listed.output)} == {first.version, second.version}
    shown = runner.invoke(app, ["models", "show", first.version, "--config", str(config)])
    assert shown.exit_code == 0 and '"champion"' in shown.output and "training_window" in shown.output
    missing = runner.invoke(app, ["models", "show", "churn-nope", "--config", str(config)])
    assert isinstance(missing.exception, ModelError) and "no model" in str(missing.exception)


def test_bgnbd_kind_and_a_gate_that_refuses_the_first_model(tmp_path: Path) -> None:
    generate_sample(tmp_path, customers=600, days=120, seed=2, start=START, fmt="parquet")
    as_of = START + timedelta(days=119)
    store = AttributeStore.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        plain = predict_and_store(settings_for(tmp_path, kind="bgnbd"), store, now=NOW, as_of=as_of)
        assert plain.model_version.startswith("bgnbd") and "churn_driver" not in next(
            iter(store.current_values().values())
        )
        refused = predict_and_store(settings_for(tmp_path, gate_min_auc=0.999), store, now=NOW, as_of=as_of)
    finally:
        store.close()
    assert refused.model_version.startswith("bgnbd")
    assert any("was not published" in m and "BG/NBD scores churn" in m for m in refused.model_messages)
