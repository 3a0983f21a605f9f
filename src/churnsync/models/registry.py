"""The model registry: every trained churn model saved as JSON in a folder, one sub-folder per version, plus a
pointer to the model in service; and the quality gate that decides whether a new model may serve.

Layout::

    <model.registry_path>/
        service.json                    {"predictions": {name: {"version": ..., "since": ...}}}: the model
                                        that scores each prediction
        churn-20260101T060000-1a2b3c4d/ a model of the single [prediction] (named "default")
            model.json                  metadata (prediction name, features, training window, metrics,
                                        validation curves, library versions, gate decision) and the artifact
                                        (LightGBM as text, numbers as JSON)
        churn-session_7d-20260101T060000-5e6f7a8b/
            model.json                  a model of [predictions.session_7d]

Models are keyed by prediction name (``prediction_name`` in their metadata). A registry written before there were
several predictions (a ``service.json`` of ``{"version": ..., "since": ...}``, models without
``prediction_name``) reads as the models of the default prediction.

Artifacts are JSON, never pickles, so loading one runs no code. Loading refuses an artifact written with
another registry format or LightGBM major version, with a message that says to retrain.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from churnsync.config import DEFAULT_PREDICTION  # a model saved before several predictions belongs to this one
from churnsync.errors import ModelError

__all__ = [
    "DEFAULT_PREDICTION",
    "REGISTRY_FORMAT",
    "GateDecision",
    "ModelRecord",
    "ModelRegistry",
    "gate",
    "library_versions",
    "prediction_of",
]

REGISTRY_FORMAT = 1
_SERVICE = "service.json"


def prediction_of(meta: dict[str, Any]) -> str:
    """The name of the prediction a saved model belongs to."""
    return str(meta.get("prediction_name") or DEFAULT_PREDICTION)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model depends on (and Python's)."""
    out = {"python": platform.python_version()}
    for name in ("churnsync", "lightgbm", "scikit-learn", "numpy", "scipy", "duckdb"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _major(version: str) -> str:
    return version.split(".", 1)[0]


@dataclass(frozen=True)
class GateDecision:
    """Whether a newly trained model may serve, and why."""

    publish: bool
    reason: str


def gate(
    candidate: dict[str, float],
    in_service: dict[str, float] | None,
    *,
    min_auc: float,
    min_lift_quality: float,
    max_auc_drop: float,
) -> GateDecision:
    """Decide from validation metrics (``auc``, ``lift_quality``) whether a new model replaces the one in service.

    Refused when its AUC or lift quality is below the floors, or its AUC is more than ``max_auc_drop`` below
    the model in service.
    """
    auc = float(candidate.get("auc", float("nan")))
    lift = float(candidate.get("lift_quality", float("nan")))
    if not auc >= min_auc:
        return GateDecision(False, f"validation AUC {auc:.3f} is below the floor model.gate_min_auc = {min_auc:.3f}")
    if not lift >= min_lift_quality:
        return GateDecision(
            False,
            f"validation lift quality {lift:.1%} is below the floor "
            f"model.gate_min_lift_quality = {min_lift_quality:.1%}",
        )
    if in_service is not None:
        served = float(in_service.get("auc", float("nan")))
        if served == served and auc < served - max_auc_drop:
            return GateDecision(
                False,
                f"validation AUC {auc:.3f} is more than {max_auc_drop:.3f} below the model in service ({served:.3f})",
            )
        return GateDecision(True, f"validation AUC {auc:.3f} (in service: {served:.3f}), lift quality {lift:.1%}")
    return GateDecision(True, f"validation AUC {auc:.3f}, lift quality {lift:.1%}; no model was in service")


@dataclass(frozen=True)
class ModelRecord:
    """One saved model: its version id, metadata and artifact."""

    version: str
    meta: dict[str, Any]
    artifact: dict[str, Any]

    @property
    def validation(self) -> dict[str, float]:
        """The champion's validation metrics."""
        metrics: dict[str, float] = self.meta.get("metrics", {}).get(self.meta.get("champion", ""), {})
        return metrics

    def curves(self, candidate: str | None = None) -> dict[str, Any] | None:
        """A candidate's (default: the champion's) validation curves, ``{"calibration": {"predicted", "observed",
        "count"}, "gains": {"rate", "gains", "lift"}}``; None for a model saved before they were recorded."""
        recorded = self.meta.get("validation_curves")
        if not isinstance(recorded, dict):
            return None
        value = recorded.get(candidate if candidate is not None else self.meta.get("champion", ""))
        return value if isinstance(value, dict) and value else None


class ModelRegistry:
    """A folder of saved models (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _dir(self, version: str) -> Path:
        if not version or "/" in version or "\\" in version or version.startswith("."):
            raise ModelError(
                f"model registry: {version!r} is not a model version", remedy="See `churnsync models list`"
            )
        return self.path / version

    def save(self, artifact: dict[str, Any], meta: dict[str, Any], *, now: datetime | None = None) -> str:
        """Write a new version and return its id (the in-service pointer is not touched: see :meth:`promote`)."""
        created = (now or datetime.now(UTC)).astimezone(UTC)
        body = json.dumps(artifact, sort_keys=True)
        name = prediction_of(meta)
        named = "" if name == DEFAULT_PREDICTION else f"{name}-"
        version = f"churn-{named}{created:%Y%m%dT%H%M%S}-{hashlib.sha256(body.encode()).hexdigest()[:8]}"
        record = {
            "registry_format": REGISTRY_FORMAT,
            "version": version,
            "created_at": created.isoformat(),
            "libraries": library_versions(),
            **meta,
            "prediction_name": name,
            "artifact": artifact,
        }
        folder = self._dir(version)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / "model.json.tmp"
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True, allow_nan=True), encoding="utf-8")
            os.replace(tmp, folder / "model.json")
        except OSError as exc:
            raise ModelError(
                f"model registry: cannot write {folder} ({exc})", remedy="Check model.registry_path and its permissions"
            ) from None
        return version

    def update_meta(self, version: str, **changes: Any) -> None:
        """Merge ``changes`` into a saved version's metadata (e.g. the gate decision)."""
        file = self._dir(version) / "model.json"
        record = json.loads(file.read_text(encoding="utf-8"))
        record.update(changes)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, allow_nan=True), encoding="utf-8")
        os.replace(tmp, file)

    def promote(self, version: str, *, now: datetime | None = None) -> None:
        """Make ``version`` the model in service for its prediction (the other predictions' models stay)."""
        name = prediction_of(self.load(version).meta)
        pointers = self._pointers()
        pointers[name] = {"version": version, "since": (now or datetime.now(UTC)).astimezone(UTC).isoformat()}
        tmp = self.path / (_SERVICE + ".tmp")
        tmp.write_text(json.dumps({"predictions": pointers}, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path / _SERVICE)

    def _pointers(self) -> dict[str, dict[str, str]]:
        """The in-service pointer of every prediction; the one-model format of older registries is the default's."""
        file = self.path / _SERVICE
        if not file.exists():
            return {}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            if "predictions" in data:
                return {str(k): {"version": str(v["version"]), **v} for k, v in data["predictions"].items()}
            return {DEFAULT_PREDICTION: {"version": str(data["version"]), "since": str(data.get("since", ""))}}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(
                f"model registry: {file} is unreadable ({exc})",
                remedy="Delete it and promote a model with `churnsync train`",
            ) from None

    def in_service(self, prediction: str = DEFAULT_PREDICTION) -> str | None:
        """The version that scores ``prediction``, or None."""
        pointer = self._pointers().get(prediction)
        return pointer["version"] if pointer else None

    def versions(self, prediction: str | None = None) -> list[dict[str, Any]]:
        """Metadata of every saved version (artifact left out; of one prediction when given), newest first.

        Each row carries ``prediction_name`` and ``in_service`` (whether it scores its prediction now).
        """
        if not self.path.is_dir():
            return []
        service = {p["version"] for p in self._pointers().values()}
        out = []
        for file in sorted(self.path.glob("*/model.json"), reverse=True):
            try:
                record = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            record.pop("artifact", None)
            record["prediction_name"] = prediction_of(record)
            if prediction is not None and record["prediction_name"] != prediction:
                continue
            record["in_service"] = record.get("version") in service
            out.append(record)
        out.sort(key=lambda r: str(r.get("created_at", "")), reverse=True)
        return out

    def load(self, version: str) -> ModelRecord:
        """Read a version, refusing one written by an incompatible registry format or LightGBM version."""
        file = self._dir(version) / "model.json"
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(
                f"model registry: no model {version!r} in {self.path}", remedy="See `churnsync models list`"
            ) from None
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"model registry: {file} is unreadable ({exc})", remedy="Retrain with `churnsync train`"
            ) from None
        fmt = record.get("registry_format")
        if fmt != REGISTRY_FORMAT:
            raise ModelError(
                f"model registry: {version} was saved in registry format {fmt!r}; this churnsync reads format "
                f"{REGISTRY_FORMAT}",
                remedy="Retrain with `churnsync train`",
            )
        saved = str(record.get("libraries", {}).get("lightgbm", "absent"))
        here = library_versions()["lightgbm"]
        if record.get("artifact", {}).get("state", {}).get("gbm") and _major(saved) != _major(here):
            raise ModelError(
                f"model registry: {version} was trained with LightGBM {saved}, incompatible with the installed {here}",
                remedy="Retrain with `churnsync train`, or install LightGBM " + _major(saved) + ".x",
            )
        artifact = record.pop("artifact", None)
        record["prediction_name"] = prediction_of(record)
        if not isinstance(artifact, dict):
            raise ModelError(f"model registry: {version} has no artifact", remedy="Retrain with `churnsync train`")
        return ModelRecord(version=version, meta=record, artifact=artifact)
