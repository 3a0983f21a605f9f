"""The Spark engine's pieces that need no Spark: transpiling the feature SQL, the config keys, the optional extra."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from churnsync.config import load_settings, settings_from_mapping
from churnsync.engines.sql import inline_parameters, to_spark_sql
from churnsync.errors import ConfigError, DataError
from churnsync.events.generator import generate_sample
from churnsync.features.rfm import rfm_query
from churnsync.features.windows import window_features_query


def test_parameters_are_inlined_as_typed_literals_and_mean_the_same_in_duckdb() -> None:
    sql = "SELECT ? AS n, ? AS x, ? AS s, ? AS t, '?' AS q, ? AS missing"
    params = [3, 1.5, "it's", datetime(2024, 1, 2, 3, 4, 5, 678), None]
    text = inline_parameters(sql, params)
    assert "'?' AS q" in text
    con = duckdb.connect()
    assert con.sql(text).fetchall() == con.execute(sql, params).fetchall()
    types = dict(zip([d[0] for d in con.sql(text).description], [str(t) for t in con.sql(text).types], strict=True))
    assert types["x"] == "DOUBLE" and types["t"] == "TIMESTAMP"


def test_placeholder_count_must_match() -> None:
    with pytest.raises(DataError, match="more placeholders"):
        inline_parameters("SELECT ?, ?", [1])
    with pytest.raises(DataError, match="1 placeholders for 2"):
        inline_parameters("SELECT ?", [1, 2])


def test_transpiled_features_keep_fractions_of_seconds_double_division_and_drop_the_sort() -> None:
    sql, params, _ = window_features_query(datetime(2024, 1, 15), ["purchase"], event_types=["purchase"])
    spark = to_spark_sql(sql, params)
    # epoch() keeps microseconds: UNIX_TIMESTAMP would truncate them
    assert "UNIX_MICROS(occurred_at) / CAST(1000000.0 AS DOUBLE)" in spark
    assert "UNIX_TIMESTAMP" not in spark
    # 7.0 would be a DECIMAL in Spark (BIGINT / DECIMAL keeps 6 decimals)
    assert "/ CAST(7.0 AS DOUBLE)" in spark
    assert "DATEDIFF" not in spark.upper()
    assert not spark.rstrip().upper().endswith("NULLS LAST")  # the final ORDER BY is gone
    rfm_sql, rfm_params = rfm_query(datetime(2024, 1, 15), ["purchase"], time_unit_days=7.0)
    assert "ORDER BY" not in to_spark_sql(rfm_sql, rfm_params)


def test_engine_keys_are_checked(tmp_path: Path) -> None:
    settings = settings_from_mapping({"engine": "spark", "spark": {"master": "local[2]", "conf": {"a.b": "1"}}})
    assert settings.engine == "spark" and settings.spark.master == "local[2]"
    assert settings_from_mapping({}).engine == "duckdb"
    with pytest.raises(ConfigError, match="key 'engine'"):
        settings_from_mapping({"engine": "polars"})
    with pytest.raises(ConfigError, match=r"unknown key 'spark\.executors'"):
        settings_from_mapping({"spark": {"executors": 3}})
    with pytest.raises(ConfigError, match=r"spark\.training_sample_customers"):
        settings_from_mapping({"spark": {"training_sample_customers": 10}})
    config = tmp_path / "churnsync.toml"
    config.write_text(
        'engine = "spark"\n[data]\npaths = ["s3://lake/events/*.parquet", "rel/*.csv"]\n'
        '[spark]\nstaging_path = "staging"\n',
        encoding="utf-8",
    )
    loaded = load_settings(config)
    assert loaded.data.paths == ["s3://lake/events/*.parquet", str(tmp_path / "rel/*.csv")]
    assert loaded.spark.staging_path == str(tmp_path / "staging")


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "CHURNSYNC_"))}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    result = generate_sample(folder / "data", customers=200, days=200, seed=5)
    (folder / "churnsync.toml").write_text(
        f'[data]\npaths = ["{result.events_path}"]\n[model]\nkind = "bgnbd"\n[store]\nurl = "sqlite:///store.db"\n',
        encoding="utf-8",
    )
    return folder


def test_a_duckdb_run_never_imports_pyspark(tiny: Path) -> None:
    code = (
        "import sys\n"
        "sys.argv = ['churnsync', 'run', '--no-sync', '--as-of', '2025-07-01']\n"
        "from churnsync.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j', 'sqlglot'))\n"
        "assert 'duckdb' in sys.modules\n"
        "print('HEAVY', heavy)\n"
    )
    result = _run_python(code, tiny)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


def test_spark_engine_without_pyspark_is_one_line_config_error(tiny: Path) -> None:
    config = (tiny / "churnsync.toml").read_text(encoding="utf-8")
    (tiny / "spark.toml").write_text('engine = "spark"\n' + config, encoding="utf-8")
    code = (
        "import sys\n"
        "sys.modules['pyspark'] = None  # as if the extra were not installed\n"
        "sys.argv = ['churnsync', 'run', '--no-sync', '--config', 'spark.toml', '--as-of', '2025-07-01']\n"
        "from churnsync.cli import main\n"
        "main()\n"
    )
    result = _run_python(code, tiny)
    assert result.returncode == ConfigError.exit_code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert 'engine = "spark" needs the optional dependency pyspark' in lines[0]
    assert 'pip install "churnsync[spark]"' in lines[0]
