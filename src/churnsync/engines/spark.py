"""The Spark engine (``engine = "spark"``): the heavy stages of a run on Apache Spark, with the same definitions.

What runs where (docs/scaling.md):

1. **Read** (Spark): ``data.paths`` (CSV or Parquet, globs, any URI Spark reads) or ``spark.tables`` (catalog
   tables), mapped by ``[data.columns]`` and validated with the reader's rules and reject reasons; rows after the
   cut are left out, exact duplicates kept once. The rejected rows (up to :data:`MAX_REJECT_ROWS`) are written to
   ``data.rejects_path``; the run fails above ``data.max_reject_share``.
2. **Features at the cut** (Spark): the queries of :mod:`churnsync.features` written once in DuckDB's dialect,
   transpiled by :func:`churnsync.engines.sql.to_spark_sql`.
3. **Training** (driver): a hash sample of at most ``spark.training_sample_customers`` customers, all their events
   before the cut, pulled to the driver into DuckDB; the existing trainer fits and gates the churn model there.
4. **Global fits** (driver, on aggregates): BG/NBD on the distinct (x, t_x, T) rows of the whole base with their
   counts as weights (the same maximum-likelihood fit as on one row per customer); Gamma-Gamma on the
   sampled customers' (x, m) rows.
5. **Scoring** (Spark): the fitted models are broadcast and every partition is scored by ``mapInArrow`` with
   the very functions the DuckDB engine uses (:func:`score_feature_batch`). Results are staged as Parquet.
6. **Landing** (driver): the staged predictions are read back, segments are assigned (they rank the whole base),
   and the pipeline writes them to the store through its bulk path (PostgreSQL ``COPY``, SQLite batched inserts).

Nothing here imports PySpark at module import: :func:`require_pyspark` fails with one line when it is missing.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from churnsync.config import DataSettings, Settings, SparkSettings
from churnsync.errors import ChurnsyncError, ConfigError, DataError, MissingColumnError, TooManyRejectsError

if TYPE_CHECKING:
    import duckdb
    from pyspark.sql import DataFrame, SparkSession

    from churnsync.events.reader import LoadResult
    from churnsync.models.churn import ChurnModel
    from churnsync.models.scoring import Prediction

__all__ = [
    "MAX_REJECT_ROWS",
    "SESSION_CONF",
    "predict_on_spark",
    "read_events",
    "require_pyspark",
    "sample_on_spark",
    "score_feature_batch",
    "spark_features",
    "spark_session",
    "training_connection",
]

#: Conf every churnsync session gets (user conf from ``spark.conf`` is applied first; the time zone always wins).
SESSION_CONF = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}
#: Day arithmetic and timestamp parsing assume UTC, as DuckDB's session does.
_UTC = {"spark.sql.session.timeZone": "UTC"}
#: Rejected rows written to ``data.rejects_path`` at most (all are counted).
MAX_REJECT_ROWS = 100_000
_HASH_BUCKETS = 1_000_003
_BTYD_UNIT_DAYS = 7.0
_RFM_COLUMNS = ("frequency", "recency", "T", "monetary_value", "first_at", "last_at")
_REJECTS_HEADER = ["source_file", "source_line", "reason", "customer_id", "occurred_at", "event_type", "value"]


def require_pyspark() -> None:
    """Raise a one-line :class:`ConfigError` when PySpark or sqlglot (the ``spark`` extra) is missing."""
    try:
        import pyspark  # noqa: F401
        import sqlglot  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f'engine = "spark" needs the optional dependency {exc.name or "pyspark"}, which is not installed',
            remedy='Install it with: pip install "churnsync[spark]" (and Java 17+), or set engine = "duckdb"',
        ) from None


def _spark_error(exc: BaseException) -> DataError:
    """A Spark/JVM exception as one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return DataError(f"spark: {lines[0] if lines else type(exc).__name__}", remedy="See the Spark driver log")


@contextlib.contextmanager
def spark_session(settings: SparkSettings) -> Iterator[SparkSession]:
    """A Spark session for one run: the active one when there is one (a notebook's, a test's shared session) or
    one on a running context (a platform's), both left running; else a new one built from ``settings`` (under
    spark-submit it takes the master and conf given there) and stopped at the end."""
    require_pyspark()
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    # Python workers must be this interpreter, or they start one without churnsync's dependencies.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # PySpark warns about pandas 3 on every Arrow conversion; churnsync converts through Arrow, not pandas.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in {**SESSION_CONF, **settings.conf, **_UTC}.items():
            with contextlib.suppress(Exception):  # static conf of a running session cannot change: keep it
                active.conf.set(key, value)
        yield active
        return
    builder = SparkSession.builder.appName(settings.app_name)
    if settings.master:
        builder = builder.master(settings.master)
    conf = {**SESSION_CONF, "spark.log.level": settings.log_level}
    if settings.master and settings.master.startswith("local"):
        # 200 shuffle partitions (Spark's default, sized for clusters) cost minutes of task overhead on a few cores.
        conf["spark.sql.shuffle.partitions"] = str(2 * (os.cpu_count() or 2))
    for key, value in {**conf, **settings.conf, **_UTC}.items():
        builder = builder.config(key, value)
    # A context someone else started (a platform's, e.g. a Databricks job's) is joined, and never stopped here.
    owned = SparkContext._active_spark_context is None
    try:
        spark = builder.getOrCreate()
        if owned:
            spark.sparkContext.setLogLevel(settings.log_level)
    except Exception as exc:
        raise ConfigError(
            f"spark: cannot start a session ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})",
            remedy="Check spark.master and spark.conf, and that Java 17+ is installed (JAVA_HOME)",
        ) from None
    try:
        yield spark
    finally:
        if owned:
            spark.stop()


# -- reading ---------------------------------------------------------------------------------------------------


def _format_of(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    name = path.lower().rstrip("/")
    if name.endswith((".parquet", ".pq")) or "parquet" in name.rsplit("/", 1)[-1]:
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    raise DataError(
        f"data.paths: cannot tell the format of {path} from its name",
        remedy='Set data.format = "csv" or "parquet"',
    )


def _sources(spark: SparkSession, data: DataSettings, tables: Sequence[str]) -> list[tuple[str, DataFrame]]:
    """One DataFrame per table or per format of ``data.paths``, each with a ``_source`` column."""
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    out: list[tuple[str, DataFrame]] = []
    try:
        if tables:
            for table in tables:
                out.append((table, spark.table(table).withColumn("_source", F.lit(table))))
            return out
        by_format: dict[str, list[str]] = {}
        for path in data.paths:
            by_format.setdefault(_format_of(path, data.format), []).append(path)
        for fmt, paths in sorted(by_format.items()):
            if fmt == "csv":
                reader = spark.read.options(header=True, sep=data.csv_delimiter, inferSchema=False, mode="PERMISSIVE")
                frame = reader.csv(paths)
            else:
                frame = spark.read.parquet(*paths)
            out.append((", ".join(paths), frame.withColumn("_source", F.col("_metadata.file_path"))))
    except PySparkException as exc:
        raise DataError(
            f"data: cannot read {', '.join(tables or data.paths)} ({str(exc).strip().splitlines()[0]})",
            remedy="Check data.paths (or spark.tables) and data.format",
        ) from None
    return out


def _canonical(frame: DataFrame, data: DataSettings, source: str, now: datetime) -> DataFrame:
    """The four canonical columns with the reader's normalisation, and ``reason`` (NULL for a valid row)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from churnsync.events.reader import MAX_CUSTOMER_ID_LENGTH

    mapping = data.columns
    wanted = [mapping.customer_id, mapping.occurred_at, mapping.event_type]
    if mapping.value is not None:
        wanted.append(mapping.value)
    fields = {f.name: f.dataType for f in frame.schema.fields}
    for column in wanted:
        if column not in fields:
            raise MissingColumnError(column, source, available=[c for c in frame.columns if c != "_source"])

    def text(name: str) -> Any:
        return F.col(f"`{name}`").cast("string")

    ts_type = fields[mapping.occurred_at]
    if isinstance(ts_type, T.StringType):
        raw = F.trim(F.col(f"`{mapping.occurred_at}`"))
        occurred = F.expr(f"try_cast(trim(`{mapping.occurred_at}`) AS TIMESTAMP)")
        occurred = F.when(raw == "", F.lit(None)).otherwise(occurred)
    else:
        occurred = F.col(f"`{mapping.occurred_at}`").cast("timestamp")
    if mapping.value is None:
        value = F.lit(None).cast("double")
        bad_value = F.lit(False)
    elif isinstance(fields[mapping.value], T.NumericType):
        value = F.col(f"`{mapping.value}`").cast("double")
        bad_value = F.lit(False)
    else:
        raw_value = F.trim(text(mapping.value))
        value = F.expr(f"try_cast(trim(CAST(`{mapping.value}` AS STRING)) AS DOUBLE)")
        bad_value = raw_value.isNotNull() & (raw_value != "") & value.isNull()
    customer = F.trim(text(mapping.customer_id))
    event_type = F.lower(F.trim(text(mapping.event_type)))
    finite = ~(F.isnan(value) | (F.abs(value) == float("inf")))
    now_utc = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    reason = (
        F.when(customer.isNull() | (customer == ""), "empty_customer_id")
        .when((F.length(customer) > MAX_CUSTOMER_ID_LENGTH) | customer.contains("\x00"), "bad_customer_id")
        .when(occurred.isNull(), "bad_timestamp")
        .when(occurred > F.lit(now_utc.isoformat(sep=" ")).cast("timestamp"), "future_timestamp")
        .when(event_type.isNull() | (event_type == ""), "empty_event_type")
        .when(bad_value | (value.isNotNull() & ~finite), "bad_value")
        .when(value < 0, "negative_value")
    )
    return frame.select(
        customer.alias("customer_id"),
        occurred.alias("occurred_at"),
        event_type.alias("event_type"),
        value.alias("value"),
        reason.alias("reason"),
        F.col("_source"),
        text(mapping.occurred_at).alias("_raw_occurred_at"),
        (text(mapping.value) if mapping.value is not None else F.lit(None).cast("string")).alias("_raw_value"),
    )


def read_events(
    spark: SparkSession,
    data: DataSettings,
    *,
    tables: Sequence[str] = (),
    now: datetime,
    cut: datetime,
) -> tuple[DataFrame, LoadResult]:
    """The canonical events strictly before ``cut`` as a (persisted) DataFrame, and what the load did.

    Same buckets as :func:`churnsync.events.reader.load_events`:
    ``rows_read == rows_rejected + rows_after_as_of + duplicates + rows_loaded``.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from churnsync.events.reader import LoadResult

    cut_naive = cut.astimezone(UTC).replace(tzinfo=None) if cut.tzinfo else cut
    sources = _sources(spark, data, tables)
    frames = [_canonical(frame, data, source, now) for source, frame in sources]
    rows = frames[0]
    for frame in frames[1:]:
        rows = rows.unionByName(frame)
    cut_lit = F.lit(cut_naive.isoformat(sep=" ")).cast("timestamp")
    rows = rows.withColumn("_after", F.col("reason").isNull() & (F.col("occurred_at") >= cut_lit))
    counts = rows.groupBy("reason", "_after").count().collect()
    rows_read = sum(int(r["count"]) for r in counts)
    reasons = {str(r["reason"]): int(r["count"]) for r in counts if r["reason"] is not None}
    rejected = sum(reasons.values())
    after = sum(int(r["count"]) for r in counts if r["reason"] is None and r["_after"])
    valid = rows.filter(F.col("reason").isNull() & ~F.col("_after"))
    events = valid.select("customer_id", "occurred_at", "event_type", "value").dropDuplicates()
    events = events.persist(StorageLevel.MEMORY_AND_DISK)
    loaded = events.count()
    rejects_path = Path(data.rejects_path)
    if rejected:
        _write_rejects(rows.filter(F.col("reason").isNotNull()), rejects_path)
    elif rejects_path.exists():
        rejects_path.unlink()
    if rows_read and rejected > data.max_reject_share * rows_read:
        events.unpersist()
        raise TooManyRejectsError(rejected, rows_read, data.max_reject_share, str(rejects_path))
    result = LoadResult(
        files=sorted({f for _, frame in sources for f in frame.inputFiles()}),
        rows_read=rows_read,
        rows_loaded=loaded,
        rows_rejected=rejected,
        rows_after_as_of=after,
        rejects_path=rejects_path if rejected else None,
        reject_reasons=reasons,
        duplicates=rows_read - rejected - after - loaded,
    )
    return events, result


def _write_rejects(rejects: DataFrame, path: Path) -> None:
    """The first :data:`MAX_REJECT_ROWS` rejected rows as the reader's rejects CSV (no line numbers on Spark)."""
    import pyarrow.csv as pacsv
    from pyspark.sql import functions as F

    table = rejects.limit(MAX_REJECT_ROWS).select(
        F.col("_source").alias("source_file"),
        F.lit(None).cast("string").alias("source_line"),
        "reason",
        "customer_id",
        F.col("_raw_occurred_at").alias("occurred_at"),
        "event_type",
        F.col("_raw_value").alias("value"),
    )
    arrow = table.toArrow().select(_REJECTS_HEADER)
    path.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(arrow, path)


# -- features ---------------------------------------------------------------------------------------------------


def spark_features(
    spark: SparkSession,
    cut: datetime,
    qualifying_events: Sequence[str],
    *,
    event_types: Sequence[str] | None,
    windows: Sequence[int],
) -> tuple[DataFrame, list[str]]:
    """Per customer at ``cut``, from the temporary view ``events``: the RFM columns (in weeks, prefixed ``rfm_``)
    and, when ``event_types`` is given, the window features; with the window feature names in order."""
    from pyspark.sql import functions as F

    from churnsync.engines.sql import to_spark_sql
    from churnsync.features.rfm import rfm_query
    from churnsync.features.windows import window_features_query

    sql, params = rfm_query(cut, qualifying_events, time_unit_days=_BTYD_UNIT_DAYS)
    rfm = spark.sql(to_spark_sql(sql, params))
    rfm = rfm.select("customer_id", *[F.col(c).alias(f"rfm_{c}") for c in _RFM_COLUMNS])
    if event_types is None:
        return rfm, []
    wsql, wparams, names = window_features_query(cut, qualifying_events, event_types=event_types, windows=windows)
    features = spark.sql(to_spark_sql(wsql, wparams))
    return features.join(rfm, "customer_id"), names


# -- training sample --------------------------------------------------------------------------------------------


def _sample_filter(share: float) -> Any:
    """A fixed hash sample of customers (the same customers for the same share)."""
    from pyspark.sql import functions as F

    bucket = F.pmod(F.xxhash64("customer_id"), F.lit(_HASH_BUCKETS))
    return bucket < F.lit(math.ceil(share * _HASH_BUCKETS))


def training_connection(
    events: DataFrame, cut: datetime, sample_customers: int
) -> tuple[duckdb.DuckDBPyConnection, float]:
    """A DuckDB connection whose table ``events`` holds every event before ``cut`` of a hash sample of at most
    about ``sample_customers`` customers (pulled to the driver), and the share of customers sampled."""
    import duckdb
    import pyarrow.compute as pc
    from pyspark.sql import functions as F

    cut_naive = cut.astimezone(UTC).replace(tzinfo=None) if cut.tzinfo else cut
    before = events.filter(F.col("occurred_at") < F.lit(cut_naive.isoformat(sep=" ")).cast("timestamp"))
    customers = before.select("customer_id").distinct().count()
    share = 1.0 if customers <= sample_customers else sample_customers / customers
    sample = before if share >= 1.0 else before.filter(_sample_filter(share))
    table = sample.toArrow()
    at = table.schema.get_field_index("occurred_at")
    table = table.set_column(at, "occurred_at", pc.cast(table.column(at), pa.timestamp("us")))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("_churnsync_sample", table)
    con.execute(
        "CREATE TABLE events AS SELECT customer_id, occurred_at, event_type, CAST(value AS DOUBLE) AS value "
        "FROM _churnsync_sample"
    )
    con.unregister("_churnsync_sample")
    return con, share


# -- scoring ----------------------------------------------------------------------------------------------------


@dataclass
class _Models:
    """What every partition needs to score: the models fitted once on the driver, and the run's settings."""

    payload: dict[str, Any]

    def __post_init__(self) -> None:
        from churnsync.models.bgnbd import BetaGeoModel
        from churnsync.models.churn import ChurnModel
        from churnsync.models.gamma_gamma import GammaGammaModel

        p = self.payload
        self.btyd = BetaGeoModel.from_dict(p["btyd"])
        self.spend = GammaGammaModel.from_dict(p["spend"]) if p["spend"] is not None else None
        self.churn: ChurnModel | None = ChurnModel.from_dict(p["churn"]) if p["churn"] is not None else None
        self.cut = datetime.fromisoformat(p["cut"])


_MODELS: dict[str, _Models] = {}


def _column(batch: pa.RecordBatch, name: str, dtype: Any) -> np.ndarray:
    return np.asarray(batch.column(batch.schema.get_field_index(name)).to_numpy(zero_copy_only=False), dtype=dtype)


def score_feature_batch(payload: dict[str, Any], batch: pa.RecordBatch) -> pa.Table:
    """Score one batch of feature rows (a Spark partition's, or the whole base's) with the functions the DuckDB
    engine uses. Columns: the attributes of :func:`churnsync.models.scoring.predict_attributes` except
    ``segment``, plus ``_value_score`` and ``_tenure`` (what segments rank, assigned over the whole base)."""
    import pyarrow.compute as pc

    from churnsync.features.rfm import RFMFrame
    from churnsync.features.windows import FeatureFrame
    from churnsync.models.churn import assemble_cut_frame
    from churnsync.models.scoring import _risk_tiers, score_customers
    from churnsync.models.value import value_attributes

    models = _MODELS.get(payload["key"])
    if models is None:  # once per run in each (reused) Python worker
        _MODELS.clear()
        models = _MODELS[payload["key"]] = _Models(payload)
    ids = _column(batch, "customer_id", object)

    def stamp(name: str) -> np.ndarray:
        column = batch.column(batch.schema.get_field_index(name))
        return np.asarray(pc.cast(column, pa.timestamp("us")).to_numpy(zero_copy_only=False), dtype="datetime64[us]")

    rfm = RFMFrame(
        customer_id=ids,
        frequency=_column(batch, "rfm_frequency", np.int64),
        recency=_column(batch, "rfm_recency", np.float64),
        T=_column(batch, "rfm_T", np.float64),
        monetary_value=_column(batch, "rfm_monetary_value", np.float64),
        first_at=stamp("rfm_first_at"),
        last_at=stamp("rfm_last_at"),
        cut=models.cut,
        time_unit_days=_BTYD_UNIT_DAYS,
    )
    p = models.payload
    table = score_customers(
        rfm,
        models.btyd,
        horizon_days=p["horizon_days"],
        risk_cut_points=tuple(p["risk_cut_points"]),
        time_unit_days=_BTYD_UNIT_DAYS,
    )
    driver = None
    if models.churn is not None:
        names = list(p["feature_names"])
        values = np.column_stack([_column(batch, n, np.float64) for n in names]) if names else np.empty((len(ids), 0))
        feats = FeatureFrame(customer_id=ids, names=tuple(names), values=values, cut=models.cut)
        frame = assemble_cut_frame(feats, rfm, models.btyd, label_days=models.churn.label_days)
        scores = models.churn.predict_frame(frame, level_target=p["level_target"])
        churn = scores.churn_probability
        table = table.set_column(1, "churn_probability", pa.array(churn, type=pa.float64()))
        table = table.set_column(2, "churn_risk", _risk_tiers(churn, tuple(p["risk_cut_points"])))
        tenure = frame.X[:, frame.names.index(f"{models.churn.qualifying_label}_tenure_days")]
        driver = scores.churn_driver
    else:
        tenure = rfm.T * rfm.time_unit_days
    if models.spend is not None:
        value = value_attributes(
            rfm,
            models.btyd,
            models.spend,
            clv_horizon_days=p["clv_horizon_days"],
            annual_discount_rate=p["annual_discount_rate"],
            time_unit_days=_BTYD_UNIT_DAYS,
            cut=models.cut,
        )
        for name in value.column_names[1:]:
            if name != "next_purchase_date" or p["publish_next_purchase_date"]:
                table = table.append_column(name, value.column(name))
        value_score = value.column(1)
    else:
        value_score = table.column(3)
    if driver is not None:
        table = table.append_column("churn_driver", pa.array(driver.astype(str), type=pa.string()))
    table = table.append_column("_value_score", pc.cast(value_score, pa.float64()))
    table = table.append_column("_tenure", pa.array(np.asarray(tenure, dtype=np.float64), type=pa.float64()))
    if "_active" in batch.schema.names:  # in the scored population (prediction.active_within_days)
        table = table.append_column("_active", batch.column(batch.schema.get_field_index("_active")))
    return table


def _score_partition(payload: dict[str, Any], batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    schema = pa.schema(payload["schema"])
    for batch in batches:
        if batch.num_rows:
            yield from score_feature_batch(payload, batch).cast(schema).to_batches()


def _output_schema(
    horizon_days: int, clv_horizon_days: int | None, next_purchase: bool, driver: bool
) -> list[tuple[str, pa.DataType]]:
    columns: list[tuple[str, pa.DataType]] = [
        ("customer_id", pa.string()),
        ("churn_probability", pa.float64()),
        ("churn_risk", pa.string()),
        (f"expected_purchases_{horizon_days}d", pa.float64()),
        ("p_alive", pa.float64()),
    ]
    if clv_horizon_days is not None:
        columns.append((f"clv_{clv_horizon_days}d", pa.float64()))
        if next_purchase:
            columns.append(("next_purchase_date", pa.string()))
    if driver:
        columns.append(("churn_driver", pa.string()))
    return [*columns, ("_value_score", pa.float64()), ("_tenure", pa.float64())]


def _ddl(schema: list[tuple[str, pa.DataType]]) -> str:
    kinds = {pa.string(): "string", pa.float64(): "double", pa.bool_(): "boolean"}
    return ", ".join(f"`{name}` {kinds[dtype]}" for name, dtype in schema)


def _read_staged(uri: str) -> pa.Table:
    import pyarrow.dataset as ds

    return ds.dataset(uri, format="parquet").to_table()


def _remove_staged(uri: str) -> None:
    import pyarrow.fs as pafs

    with contextlib.suppress(OSError, pa.ArrowException):
        fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else Path(uri).resolve().as_uri())
        fs.delete_dir(path)


def _service(
    settings: Settings,
    name: str,
    sample: _Sample,
    cut: datetime,
    *,
    now: datetime,
    retrain: bool,
    messages: list[str],
) -> tuple[str, ChurnModel] | None:
    """The churn model that scores prediction ``name``, trained first on the driver-side sample when needed, with
    the same rules and messages as :func:`churnsync.models.scoring.predict_attributes`."""
    from churnsync.models.scoring import _service_model, churn_model_for

    if settings.model.kind != "ml":
        return None
    if not retrain and (service := _service_model(settings, name)) is not None:
        return service  # no need to pull the training sample from Spark
    return churn_model_for(
        sample.connection(),
        cut.replace(tzinfo=None),
        settings,
        now=now,
        retrain=retrain,
        prediction_name=name,
        messages=messages,
    )


class _Sample:
    """The training sample, pulled from Spark on first use and shared by every prediction of the run."""

    def __init__(self, events: DataFrame, cut: datetime, customers: int) -> None:
        self._events, self._cut, self._customers = events, cut, customers
        self._con: duckdb.DuckDBPyConnection | None = None
        self.share: float | None = None

    def connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con, self.share = training_connection(self._events, self._cut, self._customers)
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()


def predict_on_spark(
    settings: Settings,
    jobs: Sequence[tuple[Settings, str]],
    cut: datetime,
    *,
    now: datetime,
    retrain: bool = False,
) -> tuple[LoadResult, list[Prediction]]:
    """Read the events once, then for every ``(settings of one prediction, its name)`` of ``jobs`` build the
    features, train when needed and score every customer at ``cut`` on Spark (module docstring).

    Returns what the load did and one :class:`~churnsync.models.scoring.Prediction` per job, as
    :func:`churnsync.models.scoring.predict_attributes` makes them.
    """
    require_pyspark()
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    with spark_session(settings.spark) as spark:
        try:
            events, load = read_events(spark, settings.data, tables=settings.spark.tables, now=now, cut=cut)
            sample = _Sample(events, cut, settings.spark.training_sample_customers)
            try:
                if load.rows_loaded == 0:
                    naive_cut = cut.astimezone(UTC).replace(tzinfo=None) if cut.tzinfo else cut
                    raise DataError(
                        f"no events on or before {(naive_cut - timedelta(days=1)).date().isoformat()} in "
                        f"{', '.join(settings.spark.tables or settings.data.paths)}",
                        remedy="Check data.paths (or spark.tables) and --as-of",
                    )
                # The feature queries read the table `events`.
                events.createOrReplaceTempView("events")
                results = [
                    _predict(spark, scoped, name, sample, cut, now=now, retrain=retrain) for scoped, name in jobs
                ]
            finally:
                sample.close()
                events.unpersist()
            return load, results
        except ChurnsyncError:
            raise
        except (PySparkException, Py4JError) as exc:
            raise _spark_error(exc) from None


def sample_on_spark(settings: Settings, cut: datetime, *, now: datetime) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the events before ``cut`` of the training sample (``churnsync train`` and
    ``churnsync evaluate`` with ``engine = "spark"``)."""
    require_pyspark()
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    with spark_session(settings.spark) as spark:
        try:
            events, load = read_events(spark, settings.data, tables=settings.spark.tables, now=now, cut=cut)
            try:
                if load.rows_loaded == 0:
                    raise DataError(
                        f"no events before {cut:%Y-%m-%d} in {', '.join(settings.spark.tables or settings.data.paths)}",
                        remedy="Check data.paths (or spark.tables) and --as-of",
                    )
                con, _ = training_connection(events, cut, settings.spark.training_sample_customers)
            finally:
                events.unpersist()
            return con
        except ChurnsyncError:
            raise
        except (PySparkException, Py4JError) as exc:
            raise _spark_error(exc) from None


def _population(spark: SparkSession, cut: datetime, settings: Settings) -> DataFrame | None:
    """The customers of the scored population (``prediction.active_within_days``), None when everyone is."""
    from pyspark.sql import functions as F

    prediction = settings.prediction
    within = getattr(prediction, "active_within_days", None)
    if within is None:
        return None
    end = cut.astimezone(UTC).replace(tzinfo=None) if cut.tzinfo else cut
    start = end - timedelta(days=int(within))
    rows = spark.table("events").filter(
        (F.col("occurred_at") >= F.lit(start.isoformat(sep=" ")).cast("timestamp"))
        & (F.col("occurred_at") < F.lit(end.isoformat(sep=" ")).cast("timestamp"))
    )
    types = sorted({t.strip().lower() for t in getattr(prediction, "active_events", [])})
    if types:
        rows = rows.filter(F.col("event_type").isin(types))
    return rows.select("customer_id").distinct().withColumn("_active", F.lit(True))


def _predict(
    spark: SparkSession,
    settings: Settings,
    name: str,
    sample: _Sample,
    cut: datetime,
    *,
    now: datetime,
    retrain: bool,
) -> Prediction:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from churnsync.features.rfm import RFMFrame
    from churnsync.models.bgnbd import BetaGeoModel
    from churnsync.models.gamma_gamma import GammaGammaModel

    prediction = settings.prediction
    messages: list[str] = []
    details: dict[str, Any] = {"engine": "spark", "spark_master": spark.sparkContext.master}
    service = _service(settings, name, sample, cut, now=now, retrain=retrain, messages=messages)
    if sample.share is not None:
        details["training_sample_share"] = sample.share
    churn = service[1] if service else None
    quals = churn.qualifying_events if churn else prediction.qualifying_events
    features, names = spark_features(
        spark,
        cut,
        quals,
        event_types=churn._state()["event_types"] if churn else None,
        windows=churn.windows if churn else (),
    )
    population = _population(spark, cut, settings)
    if population is not None:
        features = features.join(population, "customer_id", "left").fillna(False, subset=["_active"])
    features = features.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        customers = features.count()
        if customers == 0:
            raise DataError(
                f"no customer has a qualifying event ({', '.join(prediction.qualifying_events)}) before "
                f"{cut:%Y-%m-%d %H:%M}",
                remedy="Check prediction.qualifying_events against the event types in the data, and the cut date",
            )
        # BG/NBD on the whole base: one row per distinct (x, t_x, T) with its count is the same likelihood.
        rows = features.groupBy("rfm_frequency", "rfm_recency", "rfm_T").count().toArrow()
        x = np.asarray(rows.column("rfm_frequency").to_numpy(), dtype=np.int64)
        t_x = np.asarray(rows.column("rfm_recency").to_numpy(), dtype=np.float64)
        age = np.asarray(rows.column("rfm_T").to_numpy(), dtype=np.float64)
        weights = np.asarray(rows.column("count").to_numpy(), dtype=np.float64)
        btyd = BetaGeoModel(time_unit_days=_BTYD_UNIT_DAYS).fit(x, t_x, age, weights=weights)
        level_target = None
        if churn is not None and churn._state()["level_anchor"] == "btyd_aggregate":
            distinct = RFMFrame(
                customer_id=np.arange(len(x)).astype(object),
                frequency=x,
                recency=t_x,
                T=age,
                monetary_value=np.zeros(len(x)),
                first_at=np.zeros(len(x), dtype="datetime64[us]"),
                last_at=np.zeros(len(x), dtype="datetime64[us]"),
                cut=cut,
                time_unit_days=_BTYD_UNIT_DAYS,
            )
            level_target = churn.level_target(distinct, btyd, weights)
        # Gamma-Gamma on the (x, m) rows of a hash sample of customers, the training sample's size.
        share = min(1.0, settings.spark.training_sample_customers / customers)
        spend_rows = features if share >= 1.0 else features.filter(_sample_filter(share))
        spend_rows = spend_rows.groupBy("rfm_frequency", "rfm_monetary_value").count().toArrow()
        spend: GammaGammaModel | None
        try:
            spend = GammaGammaModel().fit(
                np.asarray(spend_rows.column("rfm_frequency").to_numpy(), dtype=np.float64),
                np.asarray(spend_rows.column("rfm_monetary_value").to_numpy(), dtype=np.float64),
                weights=np.asarray(spend_rows.column("count").to_numpy(), dtype=np.float64),
            )
        except ChurnsyncError:
            spend = None
            messages.append("no CLV: the spend model cannot be fitted on these data (segments use expected purchases)")
        naive_cut = cut.astimezone(UTC).replace(tzinfo=None) if cut.tzinfo else cut
        schema = _output_schema(
            prediction.horizon_days,
            prediction.clv_horizon_days if spend is not None else None,
            settings.model.publish_next_purchase_date,
            churn is not None,
        )
        if population is not None:
            schema.append(("_active", pa.bool_()))
        payload = {
            "key": uuid.uuid4().hex,
            "btyd": btyd.to_dict(),
            "spend": spend.to_dict() if spend is not None else None,
            "churn": churn.to_dict() if churn is not None else None,
            "cut": naive_cut.isoformat(),
            "feature_names": names,
            "level_target": level_target,
            "horizon_days": prediction.horizon_days,
            "risk_cut_points": list(prediction.risk_cut_points),
            "clv_horizon_days": prediction.clv_horizon_days,
            "annual_discount_rate": prediction.annual_discount_rate,
            "publish_next_purchase_date": settings.model.publish_next_purchase_date,
            "schema": schema,
        }
        broadcast = spark.sparkContext.broadcast(payload)

        def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            return _score_partition(broadcast.value, batches)

        columns = ["customer_id", *names, *[f"rfm_{c}" for c in _RFM_COLUMNS]]
        if population is not None:
            columns.append("_active")
        scored = features.select(*[F.col(f"`{c}`") for c in columns]).mapInArrow(score, _ddl(schema))
        staging_root = settings.spark.staging_path or tempfile.mkdtemp(prefix="churnsync-spark-")
        staged = f"{staging_root.rstrip('/')}/predictions-{uuid.uuid4().hex[:12]}"
        try:
            scored.write.mode("overwrite").parquet(staged)
            table = _read_staged(staged)
        finally:
            broadcast.unpersist()
            _remove_staged(staged)
            if not settings.spark.staging_path:
                shutil.rmtree(staging_root, ignore_errors=True)
    finally:
        features.unpersist()
    return _finish(table, settings, btyd, service, messages, details, now)


def _finish(
    table: pa.Table,
    settings: Settings,
    btyd: Any,
    service: tuple[str, ChurnModel] | None,
    messages: list[str],
    details: dict[str, Any],
    now: datetime,
) -> Prediction:
    """On the driver, as :func:`churnsync.models.scoring.predict_attributes` ends: segments rank the whole base
    (the scored population only, when there is one), and customers outside the population get nulls."""
    from churnsync.models.scoring import Prediction, add_segments, model_version

    prediction = settings.prediction
    table = table.sort_by("customer_id")

    def numbers(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    value_score, tenure, churn_now = numbers("_value_score"), numbers("_tenure"), numbers("churn_probability")
    mask = None
    if "_active" in table.column_names:
        mask = np.asarray(table.column("_active").to_numpy(zero_copy_only=False), dtype=bool)
    table = table.drop_columns([c for c in ("_value_score", "_tenure", "_active") if c in table.column_names])
    table = add_segments(table, churn_now, value_score, tenure, mask, settings, details)
    if service is None:
        version = model_version(btyd, prediction)
        details["model"] = btyd.to_dict()
    else:
        version = service[0]
        details["model"] = {"churn": version, "champion": service[1].champion_, "btyd": btyd.to_dict()}
        details["champion_reason"] = service[1].reason_
    params = btyd.params_
    details["messages"] = messages
    details["scored_at"] = now.isoformat()
    return Prediction(
        table=table,
        model_version=version,
        model_params={"r": params.r, "alpha": params.alpha, "a": params.a, "b": params.b},
        details=details,
        messages=messages,
    )
