"""History, retention (compaction) and export on SQLite and PostgreSQL, through the library and the CLI."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from churnsync.cli import app
from churnsync.errors import StoreError
from churnsync.store import AttributeStore
from clocks import Clock
from test_store import EXACT, acknowledge, write


def three_runs(store: AttributeStore, clock: Clock) -> list[datetime]:
    """Day 0, 10 and 20: a's risk goes low → medium → high, b's clv 1 → 2 (day 10), c appears on day 20."""
    times = [clock.now]
    write(store, {"customer_id": ["a", "b"], "churn_risk": ["low", "low"], "clv": [1.0, 1.0]}, EXACT)
    acknowledge(store)
    times.append(clock.advance(days=10))
    write(store, {"customer_id": ["a", "b"], "churn_risk": ["medium", "low"], "clv": [1.0, 2.0]}, EXACT)
    acknowledge(store)
    times.append(clock.advance(days=10))
    write(store, {"customer_id": ["a", "b", "c"], "churn_risk": ["high", "low", "low"], "clv": [1.0, 2.0, 5.0]}, EXACT)
    return times


def rows_of(table: pa.Table) -> dict[str, dict[str, object]]:
    return {r.pop("customer_id"): r for r in table.to_pylist()}


def test_export_current_and_as_of(store: AttributeStore, clock: Clock) -> None:
    day0, day10, _ = three_runs(store, clock)
    current = pa.concat_tables(store.attribute_tables())
    assert current.schema == pa.schema(
        [("customer_id", pa.string()), ("churn_risk", pa.string()), ("clv", pa.float64())]
    )
    assert rows_of(current) == {
        "a": {"churn_risk": "high", "clv": 1.0},
        "b": {"churn_risk": "low", "clv": 2.0},
        "c": {"churn_risk": "low", "clv": 5.0},
    }
    at_day10 = rows_of(pa.concat_tables(store.attribute_tables(as_of=day10 + timedelta(hours=1))))
    assert at_day10 == {"a": {"churn_risk": "medium", "clv": 1.0}, "b": {"churn_risk": "low", "clv": 2.0}}
    before = rows_of(pa.concat_tables(store.attribute_tables(as_of=day0 - timedelta(seconds=1))))
    assert before == {}
    # Chunks never split a customer and together hold everyone, in id order.
    chunks = list(store.attribute_tables(chunk_customers=1))
    assert [c.column("customer_id").to_pylist() for c in chunks] == [["a"], ["b"], ["c"]]


def test_compaction_keeps_current_state_and_as_of_after_the_boundary(store: AttributeStore, clock: Clock) -> None:
    _, day10, day20 = three_runs(store, clock)
    acknowledge(store)
    current = store.current_values()
    at = {t: rows_of(pa.concat_tables(store.attribute_tables(as_of=t))) for t in (day10, day20)}
    before = len(store.history("a"))
    clock.advance(days=5)  # now = day 25: a 12-day retention puts the boundary at day 13
    summary = store.compact_history(12)
    assert summary.boundary == day20 - timedelta(days=7)
    assert summary.history_deleted == 2  # a's and b's day-0 changes of the attributes that changed on day 10
    assert summary.acks_deleted == 2
    assert store.current_values() == current
    for t, expected in at.items():
        assert rows_of(pa.concat_tables(store.attribute_tables(as_of=t))) == expected
    history = store.history("a")
    assert len(history) == before - 1
    risk = [(e.new_value, e.valid_to) for e in history if e.attribute == "churn_risk"]
    assert risk == [("medium", day20), ("high", None)]
    assert store.compact_history(12).history_deleted == 0  # idempotent
    with pytest.raises(StoreError, match="at least 1"):
        store.compact_history(0)


def test_history_and_export_commands(store_url: str, store: AttributeStore, clock: Clock, tmp_path: Path) -> None:
    _, day10, _ = three_runs(store, clock)
    config = tmp_path / "churnsync.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\nhistory_retention_days = 400\n', encoding="utf-8")
    runner = CliRunner()
    shown = runner.invoke(app, ["history", "a", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "valid_from" in shown.output and "(current)" in shown.output and "(not sent)" in shown.output
    assert "braze" in shown.output
    out = tmp_path / "now.parquet"
    done = runner.invoke(app, ["export", "--format", "parquet", "--out", str(out), "--config", str(config)])
    assert done.exit_code == 0, done.output
    assert "Wrote 3 customers" in done.output
    assert rows_of(pq.read_table(out))["a"] == {"churn_risk": "high", "clv": 1.0}
    csv_out = tmp_path / "then.csv"
    day = f"{day10:%Y-%m-%d}"
    done = runner.invoke(app, ["export", "--format", "csv", "--as-of", day, "--out", str(csv_out), "-c", str(config)])
    assert done.exit_code == 0, done.output
    table = pacsv.read_csv(csv_out)
    assert table.column("customer_id").to_pylist() == ["a", "b"]
    assert table.column("churn_risk").to_pylist() == ["medium", "low"]
    compacted = runner.invoke(app, ["store", "compact", "--config", str(config)])
    assert compacted.exit_code == 0, compacted.output
    assert "removed 0 changes" in compacted.output


def test_unlock_command(store_url: str, store: AttributeStore, tmp_path: Path) -> None:
    config = tmp_path / "churnsync.toml"
    config.write_text(f'[store]\nurl = "{store_url}"\n', encoding="utf-8")
    runner = CliRunner()
    free = runner.invoke(app, ["store", "unlock", "--config", str(config)])
    assert free.exit_code == 0 and "not locked" in free.output
    with store.run_lock("held-by-test"):
        live = runner.invoke(app, ["store", "unlock", "--config", str(config)])
        assert live.exit_code == 1
        forced = runner.invoke(app, ["store", "unlock", "--force", "--config", str(config)])
        assert forced.exit_code == 0 and "held-by-test" in forced.output


def test_compact_without_retention_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    config = tmp_path / "churnsync.toml"
    config.write_text(f'[store]\nurl = "{sqlite_url}"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["store", "compact", "--config", str(config)])
    assert result.exit_code == 2
    assert "history_retention_days" in result.output
