"""docs/operations.md stays true: its Airflow and Dagster snippets run, as written, against a real store.

Airflow and Dagster are not installed here. Only their imports are replaced, by stand-ins whose decorators
return the function unchanged (``@task`` and ``@op`` run the body when called; ``@dag`` and ``@job`` call
what they wrap). Everything the snippets do with churnsync is real: the helper's ``run_churnsync`` runs the
pipeline on generated data, into a SQLite store, syncing to the Braze emulator on a free port.
"""

from __future__ import annotations

import csv
import re
import sys
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from churnsync.events.generator import generate_sample
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
KEY = "docs-snippet-braze-key-0123456789"


def python_blocks() -> list[str]:
    text = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def passthrough(*args: Any, **_kwargs: Any) -> Any:
    """A decorator usable bare (``@task``) or with arguments (``@task(retries=0)``) that changes nothing."""
    if len(args) == 1 and callable(args[0]):
        return args[0]
    return lambda fn: fn


def stand_ins() -> dict[str, types.ModuleType]:
    airflow = types.ModuleType("airflow")
    decorators = types.ModuleType("airflow.decorators")
    decorators.dag = passthrough  # type: ignore[attr-defined]
    decorators.task = passthrough  # type: ignore[attr-defined]
    airflow.decorators = decorators  # type: ignore[attr-defined]

    dagster = types.ModuleType("dagster")
    records: dict[str, Any] = {}

    class Definitions:
        def __init__(self, **kwargs: Any) -> None:
            records["definitions"] = kwargs

    class ScheduleDefinition:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    class OpExecutionContext:
        pass

    dagster.Definitions = Definitions  # type: ignore[attr-defined]
    dagster.ScheduleDefinition = ScheduleDefinition  # type: ignore[attr-defined]
    dagster.OpExecutionContext = OpExecutionContext  # type: ignore[attr-defined]
    dagster.op = passthrough  # type: ignore[attr-defined]
    dagster.job = passthrough  # type: ignore[attr-defined]
    return {"airflow": airflow, "airflow.decorators": decorators, "dagster": dagster}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    today = datetime.now(UTC).date()
    sample = generate_sample(tmp_path, customers=300, days=150, seed=4, start=today - timedelta(days=150))
    with sample.truth_path.open(encoding="utf-8") as f:
        ids = frozenset(row["customer_id"] for row in csv.DictReader(f))
    with serve_in_thread(EmulatorConfig(api_key=KEY, known_external_ids=ids)) as emulator:
        config = tmp_path / "churnsync.toml"
        config.write_text(
            f'[data]\npaths = ["{sample.events_path}"]\n\n[store]\nurl = "sqlite:///store.db"\n\n'
            '[model]\nkind = "bgnbd"\n\n'
            f'[destinations.braze]\nendpoint = "{emulator.url}"\n',
            encoding="utf-8",
        )
        monkeypatch.setenv("CHURNSYNC_CONFIG", str(config))
        monkeypatch.setenv("BRAZE_API_KEY", KEY)
        for name, module in stand_ins().items():
            monkeypatch.setitem(sys.modules, name, module)
        yield config


def load_helper(source: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("churnsync_task")
    exec(compile(source, "docs/operations.md: churnsync_task.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "churnsync_task", module)
    return module


def test_the_docs_have_the_three_snippets() -> None:
    helper, airflow, dagster = python_blocks()
    assert "def run_churnsync" in helper
    assert "from airflow.decorators import dag, task" in airflow
    assert "from dagster import" in dagster


def test_airflow_and_dagster_snippets_run_churnsync(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper, airflow, dagster = python_blocks()
    load_helper(helper, monkeypatch)

    # Airflow: executing the DAG file calls churnsync_daily(), whose task runs the pipeline.
    airflow_ns: dict[str, Any] = {"__name__": "churnsync_daily_dag"}
    exec(compile(airflow, "docs/operations.md: airflow", "exec"), airflow_ns)
    store = AttributeStore.open(f"sqlite:///{workspace.parent / 'store.db'}")
    try:
        (run,) = store.prediction_runs()
        (sync,) = store.sync_runs()
        assert run["status"] == "succeeded" and run["customers_scored"] == 300
        assert sync["status"] == "succeeded" and sync["accepted"] == 300
    finally:
        store.close()

    # Dagster: the definitions load, and the op runs the pipeline again (nothing changed: nothing sent).
    dagster_ns: dict[str, Any] = {"__name__": "definitions"}
    exec(compile(dagster, "docs/operations.md: dagster", "exec"), dagster_ns)
    logged: list[str] = []
    context = types.SimpleNamespace(log=types.SimpleNamespace(info=logged.append))
    op: Callable[[Any], None] = dagster_ns["churnsync_run"]
    op(context)
    assert logged and "'status': 'succeeded'" in logged[0] and "'sent': 0" in logged[0]
    assert "execution_timezone" in dagster and dagster_ns["defs"] is not None


def test_the_helper_raises_when_the_run_fails(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = load_helper(python_blocks()[0], monkeypatch)
    monkeypatch.setenv("BRAZE_API_KEY", "not-the-key-the-emulator-wants")
    with pytest.raises(RuntimeError, match=r"churnsync run failed: .*braze"):
        helper.run_churnsync(str(workspace))
