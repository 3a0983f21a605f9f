"""Typed settings from ``churnsync.toml``; secrets only from the environment.

Every key is documented in docs/configuration.md (a test keeps the two in step). Unknown or mistyped keys
are errors that name the key and the file. Relative paths in the file resolve against the file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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

    paths: list[str] = Field(default_factory=lambda: ["data/events*.csv"], min_length=1)
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
    clv_horizon_days: int = Field(365, ge=1, le=3650)
    annual_discount_rate: float = Field(0.10, ge=0.0, lt=10.0)
    # -- issue 3: the scored population (customers active in the last M days; none = every customer)
    active_within_days: int | None = Field(None, ge=1, le=3650)
    active_events: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered_cuts(self) -> PredictionSettings:
        low, high = self.risk_cut_points
        if not 0.0 < low < high < 1.0:
            raise ValueError("risk_cut_points must be two numbers with 0 < low < high < 1")
        return self


#: The name of the single prediction that ``[prediction]`` defines when there is no ``[predictions.<name>]``.
DEFAULT_PREDICTION = "default"
_PREDICTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SUFFIX = re.compile(r"^(_[a-z0-9_]{1,40})?$")
#: The attributes one prediction publishes, before its suffix (``{N}``/``{H}``: its horizons).
PUBLISHED_ATTRIBUTES = (
    "churn_probability",
    "churn_risk",
    "expected_purchases_{N}d",
    "p_alive",
    "clv_{H}d",
    "next_purchase_date",
    "churn_driver",
    "segment",
)


class NamedPrediction(_Strict):
    """One of several predictions side by side (``[predictions.<name>]``); unset keys come from ``[prediction]``."""

    horizon_days: int | None = Field(None, ge=1, le=365)
    qualifying_events: list[str] | None = Field(None, min_length=1)
    risk_cut_points: tuple[float, float] | None = None
    clv_horizon_days: int | None = Field(None, ge=1, le=3650)
    annual_discount_rate: float | None = Field(None, ge=0.0, lt=10.0)
    active_within_days: int | None = Field(None, ge=1, le=3650)
    active_events: list[str] | None = None
    attribute_suffix: str | None = None

    @field_validator("risk_cut_points")
    @classmethod
    def _ordered_cuts(cls, cuts: tuple[float, float] | None) -> tuple[float, float] | None:
        if cuts is not None and not 0.0 < cuts[0] < cuts[1] < 1.0:
            raise ValueError("must be two numbers with 0 < low < high < 1")
        return cuts


class PredictionSpec(BaseModel):
    """One effective prediction: its name, its definition (``[prediction]`` overlaid by its own keys) and the
    suffix of the attributes it publishes (``""`` for the single ``[prediction]``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    settings: PredictionSettings
    attribute_suffix: str = ""

    def published(self, *, next_purchase_date: bool = True) -> list[str]:
        """The attribute names this prediction may publish, suffix included."""
        out = []
        for template in PUBLISHED_ATTRIBUTES:
            if template == "next_purchase_date" and not next_purchase_date:
                continue
            base = template.format(N=self.settings.horizon_days, H=self.settings.clv_horizon_days)
            out.append(base + self.attribute_suffix)
        return out


class AttributeRule(_Strict):
    """How a published value is rounded, and how far it must move to count as a change (docs/configuration.md)."""

    round: int | None = Field(None, ge=0, le=12)
    abs_tolerance: float = Field(0.0, ge=0.0)
    # -- issue 4: relative tolerance, day granularity for times, coupling to other attributes
    rel_tolerance: float = Field(0.0, ge=0.0)
    granularity: Literal["day"] | None = None
    unless_changed: list[str] = Field(default_factory=list)


def _default_rules() -> dict[str, AttributeRule]:
    return {
        "churn_probability": AttributeRule(round=2, abs_tolerance=0.02, unless_changed=["churn_risk"]),
        "p_alive": AttributeRule(round=2, abs_tolerance=0.02),
        "expected_purchases": AttributeRule(round=2, abs_tolerance=0.05),
        # issue 3: CLV drifts a little every day; a move under 5 % is not worth a data point
        "clv": AttributeRule(round=2, rel_tolerance=0.05),
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
    history_retention_days: int | None = Field(None, ge=1)

    def resolved_url(self) -> str:
        """The URL from ``url_env`` when that variable is set (it may hold a password), else ``url``."""
        return os.environ.get(self.url_env) or self.url


class BrazeDestination(_Strict):
    """One Braze workspace to push attributes to."""

    type: Literal["braze"] = "braze"
    endpoint: str = "https://rest.iad-01.braze.com"
    # -- issue 9: plain http beyond localhost only when asked for (the key would cross the network unencrypted)
    allow_insecure_http: bool = False
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
    # -- issue 4: customers no longer scored (keep or null out), and the age after which predictions are nulled
    mode: Literal["upsert", "mirror"] = "upsert"
    ttl_days: int | None = Field(None, ge=1)
    # -- issue 5: mapping, identifier, filter, budget, quarantine (see docs/configuration.md)
    identifier: Literal["external_id", "user_alias", "email"] = "external_id"
    alias_label: str = Field("churnsync", min_length=1)
    attributes_include: list[str] = Field(default_factory=list)
    attributes_exclude: list[str] = Field(default_factory=list)
    attribute_rename: dict[str, str] = Field(default_factory=dict)
    customer_id_prefixes: list[str] = Field(default_factory=list)
    max_data_points_per_run: int | None = Field(None, ge=0)
    max_data_points_per_month: int | None = Field(None, ge=0)
    budget_policy: Literal["prioritise", "stop"] = "prioritise"
    priority_attributes: list[str] = Field(default_factory=lambda: ["churn_risk"])
    quarantine_after_runs: int = Field(3, ge=1)

    def api_key(self, name: str) -> str:
        """The REST API key, read from the environment variable ``api_key_env``."""
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"destination '{name}': environment variable {self.api_key_env} is not set",
                remedy=f"Export {self.api_key_env} with the workspace's REST API key (permission users.track)",
            )
        return key


class ScheduleSettings(_Strict):
    """When ``churnsync schedule`` runs the pipeline (see docs/operations.md)."""

    cadence: Literal["daily", "weekly", "cron"] = "daily"
    at: str = Field("06:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = "monday"
    cron: str | None = None
    timezone: str = "UTC"
    retrain_every_days: int = Field(14, ge=1, le=366)
    catch_up: bool = True
    state_path: str = "churnsync-schedule.json"

    @model_validator(mode="after")
    def _known_zone_and_cron(self) -> ScheduleSettings:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r} (use an IANA name such as Europe/Berlin)") from None
        if self.cadence == "cron" and not (self.cron or "").strip():
            raise ValueError("cadence 'cron' needs a cron expression in schedule.cron")
        return self


class ObservabilitySettings(_Strict):
    """Logs, metrics and alerts of unattended runs (see docs/operations.md)."""

    log_json: bool = False
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_textfile: str | None = None
    webhook_url_env: str = "CHURNSYNC_WEBHOOK_URL"
    alert_failed_share: float = Field(0.01, ge=0.0, le=1.0)


# -- issue 3 part B: the machine-learned churn model, its registry and its quality gate
class SegmentRule(_Strict):
    """One predictive segment: a customer is in the first rule (in order) whose every given bound holds."""

    name: str = Field(min_length=1)
    min_churn: float | None = Field(None, ge=0.0, le=1.0)
    max_churn: float | None = Field(None, ge=0.0, le=1.0)
    min_value_quantile: float | None = Field(None, ge=0.0, le=1.0)
    max_value_quantile: float | None = Field(None, ge=0.0, le=1.0)
    max_tenure_days: float | None = Field(None, ge=0.0)


def _default_segments() -> list[SegmentRule]:
    return [
        SegmentRule(name="new", max_tenure_days=30),
        SegmentRule(name="champion", max_churn=0.5, min_value_quantile=0.5),
        SegmentRule(name="at_risk_high_value", min_churn=0.5, min_value_quantile=0.5),
        SegmentRule(name="promising", max_churn=0.5),
        SegmentRule(name="hibernating", min_churn=0.75),
        SegmentRule(name="at_risk", min_churn=0.0),
    ]


class ModelSettings(_Strict):
    """How churn is scored: the learned model (trained on stacked cuts) or BG/NBD alone; registry and gate."""

    kind: Literal["ml", "bgnbd"] = "ml"
    registry_path: str = "churnsync-models"
    training_cuts: int = Field(4, ge=3, le=52)
    cut_spacing_days: int | None = Field(None, ge=1, le=365)
    label_days: int | None = Field(None, ge=1, le=365)
    max_training_rows: int = Field(200_000, ge=1000)
    n_estimators: int = Field(100, ge=1, le=5000)
    num_threads: int = Field(1, ge=1, le=256)
    exact_drivers: bool = False
    publish_next_purchase_date: bool = False
    gate_min_auc: float = Field(0.60, ge=0.0, le=1.0)
    gate_min_lift_quality: float = Field(0.10, ge=-1.0, le=1.0)
    gate_max_auc_drop: float = Field(0.02, ge=0.0, le=1.0)
    segments: list[SegmentRule] = Field(default_factory=_default_segments)


# -- issue 8: the engine that reads events, builds features and scores (DuckDB on one machine, or Spark)
class SparkSettings(_Strict):
    """How churnsync runs on Apache Spark when ``engine = "spark"`` (see docs/scaling.md)."""

    master: str | None = None
    app_name: str = Field("churnsync", min_length=1)
    conf: dict[str, str] = Field(default_factory=dict)
    tables: list[str] = Field(default_factory=list)
    training_sample_customers: int = Field(1_000_000, ge=1000)
    staging_path: str | None = None
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "ERROR"


class Settings(_Strict):
    """All of churnsync's settings."""

    engine: Literal["duckdb", "spark"] = "duckdb"
    spark: SparkSettings = Field(default_factory=SparkSettings)

    data: DataSettings = Field(default_factory=DataSettings)
    prediction: PredictionSettings = Field(default_factory=PredictionSettings)
    attributes: AttributeSettings = Field(default_factory=AttributeSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    destinations: dict[str, Annotated[BrazeDestination, Field()]] = Field(default_factory=dict)
    model: ModelSettings = Field(default_factory=ModelSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    # -- issue 3: several predictions side by side, each publishing its own attributes
    predictions: dict[str, NamedPrediction] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _predictions_are_distinct(self) -> Settings:
        self.prediction_specs()  # names, merged definitions and attribute collisions are checked here
        return self

    def prediction_specs(self) -> list[PredictionSpec]:
        """The predictions to make: each ``[predictions.<name>]`` over ``[prediction]``, or ``[prediction]`` alone.

        Raises ``ValueError`` naming the key for a bad name, suffix or merged definition, and naming both
        predictions when two would publish the same attribute.
        """
        if not self.predictions:
            return [PredictionSpec(name=DEFAULT_PREDICTION, settings=self.prediction)]
        base = self.prediction.model_dump(exclude_unset=True, exclude={"as_of"})
        specs: list[PredictionSpec] = []
        owner: dict[str, str] = {}
        for name, named in self.predictions.items():
            if not _PREDICTION_NAME.match(name):
                raise ValueError(
                    f"predictions.{name}: a prediction name is 1-40 characters of a-z, 0-9 and _, starting with a "
                    "letter (it becomes part of attribute names and model versions)"
                )
            own = named.model_dump(exclude_unset=True, exclude={"attribute_suffix"})
            try:
                merged = PredictionSettings.model_validate({**base, **own, "as_of": self.prediction.as_of})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first.get("loc", ()))
                msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
                raise ValueError(f"predictions.{name}{'.' + where if where else ''}: {msg}") from None
            suffix = f"_{name}" if named.attribute_suffix is None else named.attribute_suffix
            if not _SUFFIX.match(suffix):
                raise ValueError(
                    f"predictions.{name}.attribute_suffix: {suffix!r} must be empty or start with _ followed by "
                    "a-z, 0-9 and _"
                )
            spec = PredictionSpec(name=name, settings=merged, attribute_suffix=suffix)
            for attribute in spec.published():
                if attribute in owner:
                    raise ValueError(
                        f"predictions.{owner[attribute]} and predictions.{name} would both publish the attribute "
                        f"'{attribute}'; give one of them another attribute_suffix"
                    )
                owner[attribute] = name
            specs.append(spec)
        return specs

    def prediction_names(self) -> list[str]:
        """The names of the configured predictions, in file order."""
        return [spec.name for spec in self.prediction_specs()]

    def select_predictions(self, names: Sequence[str] | None) -> list[PredictionSpec]:
        """The predictions named by ``--prediction`` (all when ``names`` is empty); an unknown name is a ConfigError."""
        specs = self.prediction_specs()
        if not names:
            return specs
        known = {spec.name: spec for spec in specs}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"--prediction: no prediction named {', '.join(repr(n) for n in unknown)} "
                f"(configured: {', '.join(known)})",
                remedy="Use a name of a [predictions.<name>] table, or 'default' for the single [prediction]",
            )
        return [known[n] for n in dict.fromkeys(names)]

    def for_prediction(self, spec: PredictionSpec) -> Settings:
        """These settings with ``[prediction]`` replaced by ``spec``'s definition (what one prediction's run reads)."""
        return self.model_copy(update={"prediction": spec.settings})


def _key_path(loc: tuple[int | str, ...]) -> str:
    text = ".".join(str(part) for part in loc) or "(top level)"
    # A key is the user's text: control characters would break the one-line message (escape them, as repr does).
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _describe(error: dict[str, Any]) -> str:
    key = _key_path(tuple(error.get("loc", ())))
    if error.get("type") == "extra_forbidden":
        return f"unknown key '{key}'"
    if error.get("type") == "value_error" and not error.get("loc"):
        # A check across sections (e.g. two predictions publishing the same attribute) names its keys itself.
        return str(error.get("msg", "invalid")).removeprefix("Value error, ")
    msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"key '{key}': {msg} (got {error.get('input')!r})"


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


def _is_uri(path: str) -> bool:
    scheme, sep, _ = path.partition(":")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


def _resolve_relative(settings: Settings, base: Path) -> Settings:
    def rel(p: str) -> str:
        # URIs (s3://, hdfs://, dbfs:/ ...) are for the Spark engine and are never relative to the file.
        return p if Path(p).is_absolute() or _is_uri(p) else str(base / p)

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
    schedule = settings.schedule.model_copy(update={"state_path": rel(settings.schedule.state_path)})
    settings = settings.model_copy(
        update={"model": settings.model.model_copy(update={"registry_path": rel(settings.model.registry_path)})}
    )
    if settings.spark.staging_path:
        spark = settings.spark.model_copy(update={"staging_path": rel(settings.spark.staging_path)})
        settings = settings.model_copy(update={"spark": spark})
    observe = settings.observability
    if observe.metrics_textfile:
        observe = observe.model_copy(update={"metrics_textfile": rel(observe.metrics_textfile)})
    return settings.model_copy(update={"data": data, "store": store, "schedule": schedule, "observability": observe})


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
paths = ["data/events*.csv"]     # `churnsync generate --out data` writes data/events.csv
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
# active_within_days = 90        # score only customers with an event in the last 90 days

# Several predictions side by side: each [predictions.<name>] takes the keys above it does not set, has its own
# model and publishes its own attributes (suffix _<name>: churn_probability_session_7d, ...).
# [predictions.purchase_30d]
# attribute_suffix = ""          # the plain names
# [predictions.session_7d]
# horizon_days = 7
# qualifying_events = ["session"]

[attributes.rules.churn_probability]
round = 2
abs_tolerance = 0.02             # a move smaller than this is not a change (and is not billed)
unless_changed = ["churn_risk"]  # ...unless the risk tier changed in the same run

[store]
url = "sqlite:///churnsync.db"   # or postgresql+psycopg://user@host/db
url_env = "CHURNSYNC_STORE_URL"  # when this variable is set, it wins (keeps passwords out of the file)

[destinations.braze]
endpoint = "https://rest.iad-01.braze.com"   # your instance's REST endpoint
api_key_env = "BRAZE_API_KEY"                # the variable holding the REST API key
batch_size = 75                              # 50 on newer Braze contracts
concurrency = 4
"""
