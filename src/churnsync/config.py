"""Typed settings from ``churnsync.toml``; secrets only from the environment.

Every key is documented in docs/configuration.md (a test keeps the two in step). Unknown or mistyped keys
are errors that name the key and the file. Relative paths in the file resolve against the file's folder.
"""

from __future__ import annotations

import os
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnsync.errors import ConfigError

DEFAULT_CONFIG_NAME = "churnsync.toml"
CONFIG_ENV = "CHURNSYNC_CONFIG"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMapping(_Strict):
    """Which source column holds each canonical event field."""

    customer_id: str = "customer_id"
    occurred_at: str = "occurred_at"
    event_type: str = "event_type"
    value: str | None = "value"


class DataSettings(_Strict):
    """Where behaviour data comes from and how strict reading it is."""

    paths: list[str] = Field(default_factory=lambda: ["data/*.csv"], min_length=1)
    format: Literal["auto", "csv", "parquet"] = "auto"
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    rejects_path: str = "churnsync-rejects.csv"
    max_reject_share: float = Field(0.01, ge=0.0, le=1.0)


class PredictionSettings(_Strict):
    """What churn means and how far ahead to predict."""

    horizon_days: int = Field(30, ge=1, le=365)
    qualifying_events: list[str] = Field(default_factory=lambda: ["purchase"], min_length=1)
    risk_cut_points: tuple[float, float] = (0.50, 0.75)
    as_of: date | None = None

    @model_validator(mode="after")
    def _ordered_cuts(self) -> PredictionSettings:
        low, high = self.risk_cut_points
        if not 0.0 < low < high < 1.0:
            raise ValueError("risk_cut_points must be two numbers with 0 < low < high < 1")
        return self


class AttributeRule(_Strict):
    """How a published number is rounded, and how far it must move to count as a change."""

    round: int | None = Field(None, ge=0, le=12)
    abs_tolerance: float = Field(0.0, ge=0.0)


def _default_rules() -> dict[str, AttributeRule]:
    return {
        "churn_probability": AttributeRule(round=2, abs_tolerance=0.02),
        "p_alive": AttributeRule(round=2, abs_tolerance=0.02),
        "expected_purchases": AttributeRule(round=2, abs_tolerance=0.05),
    }


class AttributeSettings(_Strict):
    """Rounding and change tolerance per attribute (``expected_purchases`` covers every horizon)."""

    rules: dict[str, AttributeRule] = Field(default_factory=_default_rules)

    def rule_for(self, attribute: str) -> AttributeRule:
        """The rule for ``attribute``; ``expected_purchases_30d`` falls back to ``expected_purchases``."""
        if attribute in self.rules:
            return self.rules[attribute]
        for name, rule in self.rules.items():
            if attribute.startswith(name + "_"):
                return rule
        return AttributeRule()


class StoreSettings(_Strict):
    """Where the attribute store lives."""

    url: str = "sqlite:///churnsync.db"
    url_env: str = "CHURNSYNC_STORE_URL"

    def resolved_url(self) -> str:
        """The URL from ``url_env`` when that variable is set (it may hold a password), else ``url``."""
        return os.environ.get(self.url_env) or self.url


class BrazeDestination(_Strict):
    """One Braze workspace to push attributes to."""

    type: Literal["braze"] = "braze"
    endpoint: str = "https://rest.iad-01.braze.com"
    api_key_env: str = "BRAZE_API_KEY"
    batch_size: int = Field(75, ge=1, le=75)
    concurrency: int = Field(4, ge=1, le=64)
    bulk_header: bool = True
    update_existing_only: bool = True
    attribute_prefix: str = ""
    timeout_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    max_retry_seconds: float = Field(600.0, gt=0)
    rate_limit_requests: int = Field(3000, ge=1)
    rate_limit_window_seconds: float = Field(3.0, gt=0)
    rate_share: float = Field(1.0, gt=0, le=1)

    def api_key(self, name: str) -> str:
        """The REST API key, read from the environment variable ``api_key_env``."""
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"destination '{name}': environment variable {self.api_key_env} is not set",
                remedy=f"Export {self.api_key_env} with the workspace's REST API key (permission users.track)",
            )
        return key


class Settings(_Strict):
    """All of churnsync's settings."""

    data: DataSettings = Field(default_factory=DataSettings)
    prediction: PredictionSettings = Field(default_factory=PredictionSettings)
    attributes: AttributeSettings = Field(default_factory=AttributeSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    destinations: dict[str, Annotated[BrazeDestination, Field()]] = Field(default_factory=dict)


def _key_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    key = _key_path(tuple(error.get("loc", ())))
    if error.get("type") == "extra_forbidden":
        return f"unknown key '{key}'"
    return f"key '{key}': {error.get('msg', 'invalid')} (got {error.get('input')!r})"


def settings_from_mapping(raw: dict[str, Any], *, source: str = "configuration") -> Settings:
    """Validate a parsed mapping into :class:`Settings`, naming the first bad key and its source."""
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(
            f"{source}: {_describe(dict(errors[0]))}{more}",
            remedy="See docs/configuration.md for every key and its type",
        ) from None


def _resolve_relative(settings: Settings, base: Path) -> Settings:
    def rel(p: str) -> str:
        return p if Path(p).is_absolute() else str(base / p)

    data = settings.data.model_copy(
        update={
            "paths": [rel(p) for p in settings.data.paths],
            "rejects_path": rel(settings.data.rejects_path),
        }
    )
    store = settings.store
    prefix = "sqlite:///"
    if store.url.startswith(prefix) and not store.url.startswith(prefix + "/") and ":memory:" not in store.url:
        store = store.model_copy(update={"url": prefix + rel(store.url[len(prefix) :])})
    return settings.model_copy(update={"data": data, "store": store})


def find_config(explicit: Path | None = None) -> Path | None:
    """The config file to use: ``explicit``, else ``$CHURNSYNC_CONFIG``, else ``./churnsync.toml`` if present."""
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    here = Path.cwd() / DEFAULT_CONFIG_NAME
    return here if here.exists() else None


def load_settings(path: Path | None) -> Settings:
    """Read and validate ``path``; ``None`` gives the defaults (relative to the working folder)."""
    if path is None:
        return _resolve_relative(Settings(), Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found", remedy="Create one with `churnsync init`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})", remedy="Check the file's permissions") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})", remedy="Fix the syntax at that line") from None
    settings = settings_from_mapping(raw, source=str(path))
    return _resolve_relative(settings, path.resolve().parent)


STARTER_CONFIG = """\
# churnsync configuration. Every key is documented in docs/configuration.md.
# Relative paths are relative to this file's folder. Secrets never go here: only environment variable names.

[data]
# Behaviour files: CSV or Parquet, globs allowed.
paths = ["data/*.csv"]
format = "auto"                  # auto | csv | parquet (auto: by file extension)
rejects_path = "churnsync-rejects.csv"
max_reject_share = 0.01          # the run fails when more than this share of rows is rejected

[data.columns]                   # source column for each canonical field
customer_id = "customer_id"
occurred_at = "occurred_at"
event_type = "event_type"
value = "value"

[prediction]
horizon_days = 30                # churn = no qualifying event within this many days
qualifying_events = ["purchase"]
risk_cut_points = [0.50, 0.75]   # low < 0.50 <= medium < 0.75 <= high, as Braze's categories
# as_of = 2026-01-31             # ignore events after this date (backtests)

[attributes.rules.churn_probability]
round = 2
abs_tolerance = 0.02             # a move smaller than this is not a change (and is not billed)

[store]
url = "sqlite:///churnsync.db"   # or postgresql+psycopg://user@host/db
url_env = "CHURNSYNC_STORE_URL"  # when this variable is set, it wins (keeps passwords out of the file)

[destinations.braze]
endpoint = "https://rest.iad-01.braze.com"   # your instance's REST endpoint
api_key_env = "BRAZE_API_KEY"                # the variable holding the REST API key
batch_size = 75                              # 50 on newer Braze contracts
concurrency = 4
"""
