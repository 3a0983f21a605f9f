"""Reliability figures: break things on purpose and count what was delivered, lost, duplicated and retried.

One function per scenario; each runs real components (the Braze emulator on a free port, SQLite in a temporary
folder, the PostgreSQL server on 127.0.0.1:5432, ``churnsync`` as a real subprocess where a process must die)
and returns a :class:`Row` of figures and the details the chaos tests (tests/chaos) assert on. The tests call the
same functions with the same defaults, so the table in docs/reliability.md is what they check.

- ``faults``: the emulator answers 20 % 5xx, 10 % 429, 5 % dropped connections, 2 % slower than the client's
  timeout, 2 % per-object errors and 5 % HTML error pages; 1 % of the customers carry a value Braze refuses. Syncs
  run until nothing is left to send.
- ``crashes``: ``churnsync sync`` killed with SIGKILL at 12 points (during selection, with a batch journaled but
  not sent, between Braze's acknowledgement and the commit, after a random number of acknowledged batches, at a
  random time), each followed by a rerun.
- ``sqlite_locked``: another connection holds SQLite's write lock mid-run for longer than the busy timeout.
- ``postgres_dropped``: the sync's PostgreSQL connections are terminated (``pg_terminate_backend``) mid-run.
- ``rejects_full``: the rejects file is on a full disk (``/dev/full``), then the next run.
- ``bad_input``: seeded random event files with malformed rows and files, and broken configuration files, read
  through the command line.

Usage::

    python bench/reliability.py                  # every scenario; prints the table of docs/reliability.md
    python bench/reliability.py --only crashes   # one scenario
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pyarrow as pa
import sqlalchemy as sa

from churnsync.config import AttributeSettings
from churnsync.store import ledger
from churnsync.store.store import AttributeStore
from churnsync.sync.emulator import EmulatorConfig, serve_in_thread

KEY = "reliability-emulator-key-0c5b"
KEY_ENV = "RELIABILITY_BRAZE_KEY"
PG_URL = os.environ.get("CHURNSYNC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: The faults of the issue, per /users/track request (``object``: per object).
BRAZE_FAULTS = {"5xx": 0.20, "429": 0.10, "drop": 0.05, "slow": 0.02, "object": 0.02, "html": 0.05}
COMMAND = "python bench/reliability.py"


@dataclass
class Row:
    """One scenario's figures (one row of docs/reliability.md)."""

    scenario: str
    customers: int
    faults: dict[str, int]
    delivered: int
    lost: int
    duplicated: int
    retries: int
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())


# -- shared pieces ---------------------------------------------------------------------------------------------


def customer_ids(n: int) -> list[str]:
    return [f"c{i:05d}" for i in range(n)]


def publish(store: AttributeStore, ids: list[str], *, cycle: int = 0, refused: frozenset[str] = frozenset()) -> None:
    """One prediction run: every customer gets new values (``cycle`` moves them); ``refused`` get a 300-char tier."""
    run = store.start_prediction_run(
        as_of=datetime(2026, 6, 30, tzinfo=UTC) + timedelta(days=cycle),
        horizon_days=30,
        model_version=f"reliability-{cycle}",
        details={},
    )
    table = pa.table(
        {
            "customer_id": ids,
            "churn_probability": [round((i % 89) / 100 + cycle / 1000, 4) for i in range(len(ids))],
            "churn_risk": ["x" * 300 if c in refused else ("low", "medium", "high")[i % 3] for i, c in enumerate(ids)],
            "segment": [("champion", "at_risk", "new", "hibernating")[(i + cycle) % 4] for i in range(len(ids))],
        }
    )
    store.write_predictions(run, table, AttributeSettings(rules={}))
    store.finish_prediction_run(run, status="succeeded", summary={})


def compare(profiles: dict[str, dict[str, Any]], wanted: dict[str, dict[str, Any]]) -> tuple[int, list[str]]:
    """(customers whose Braze profile is exactly what the store wants, the others)."""
    lost = [c for c, values in wanted.items() if profiles.get(c) != values]
    return len(wanted) - len(lost), lost


def non_empty(profiles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c: p for c, p in profiles.items() if p}


def destination(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint": endpoint, "api_key_env": KEY_ENV, **extra}


def write_config(path: Path, store_url: str, braze: dict[str, Any], extra: str = "") -> Path:
    lines = ["[store]", f"url = {json.dumps(store_url)}", "[destinations.braze]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in braze.items()]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a churnsync subprocess: the key, no inherited churnsync settings or test hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHURNSYNC_", "BRAZE_"))}
    env.update({KEY_ENV: KEY, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}, **extra)
    return env


def churnsync(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m churnsync ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "churnsync", *args],
        capture_output=True,
        text=True,
        env=env or child_env(),
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cli(*args: str) -> tuple[int, str, str]:
    """``churnsync ARGS`` in this process through the real entry point: (exit code, stdout, stderr)."""
    from churnsync.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["churnsync", *args]
    code: int = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def one_line_error(code: int, stdout: str, stderr: str) -> str:
    """The single ``error: ...`` line of a failed command; raises AssertionError for anything else."""
    assert code != 0, f"expected a failure, got exit 0: {stdout}"
    assert "Traceback" not in stdout + stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def sync_runs(url: str) -> list[dict[str, Any]]:
    with AttributeStore.open(url) as store:
        return store.sync_runs(limit=1000)


def scalar(url: str, sql: str, **params: Any) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar() or 0)
    except sa.exc.OperationalError:
        return 0  # the table does not exist yet (the child process is still migrating)
    finally:
        engine.dispose()


def wait_for_acks(url: str, after_run: int, count: int, process: subprocess.Popen[Any] | None, limit: float) -> bool:
    """Wait until sync runs newer than ``after_run`` acknowledged ``count`` batches; False if it ended first."""
    deadline = time.monotonic() + limit
    sql = "SELECT count(*) FROM sync_journal WHERE status = 'acknowledged' AND sync_run_id > :after"
    while scalar(url, sql, after=after_run) < count:
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def last_sync_run(url: str) -> int:
    return scalar(url, "SELECT coalesce(max(id), 0) FROM sync_runs")


# -- 1. faults from Braze --------------------------------------------------------------------------------------


def braze_faults(workdir: Path, *, customers: int = 3000, seed: int = 9, max_runs: int = 10) -> Row:
    """Sync through the issue's fault mix until nothing is left; every valid change must be in Braze exactly."""
    from churnsync.config import settings_from_mapping
    from churnsync.pipeline import sync_destination

    ids = customer_ids(customers)
    refused = frozenset(ids[7::100])  # 1 %: a 300-character string, which Braze's rules refuse
    url = f"sqlite:///{workdir / 'faults.db'}"
    config = EmulatorConfig(
        api_key=KEY,
        faults=BRAZE_FAULTS,
        slow_seconds=0.6,
        fault_seed=seed,
        rate_limit_window_seconds=1.0,
        known_external_ids=frozenset(ids),
    )
    braze = {
        "batch_size": 50,
        "concurrency": 4,
        "max_attempts": 8,
        "max_retry_seconds": 120.0,
        "timeout_seconds": 0.3,
        "rate_limit_window_seconds": 1.0,
        # Five runs in a row: the emulator's per-object errors are random, Braze's real ones are not.
        "quarantine_after_runs": 5,
    }
    runs: list[dict[str, Any]] = []
    with AttributeStore.open(url) as store, serve_in_thread(config) as emulator:
        publish(store, ids, refused=refused)
        settings = settings_from_mapping(
            {"store": {"url": url}, "destinations": {"braze": destination(emulator.url, **braze)}}
        )
        for _ in range(max_runs):
            started = time.monotonic()
            report = sync_destination(settings, store, "braze", prediction_run_id=None, api_key=KEY)
            c = report.counts
            runs.append(
                {
                    "status": report.status,
                    "selected": c.selected,
                    "sent": c.sent,
                    "accepted": c.accepted,
                    "failed": c.failed,
                    "requests": c.requests,
                    "retries": c.retries,
                    "rate_limited": c.rate_limited,
                    "seconds": time.monotonic() - started,
                    "reasons": sorted({f.reason for f in c.failures}),
                    **report.details,
                }
            )
            if c.selected == 0:
                break
        stats = emulator.state.stats()
        profiles = emulator.state.profiles()
        acknowledged = store.acknowledged_state("braze")
        wanted = {c: v for c, v in store.current_values().items() if c not in refused}
        failures = ledger.failures(store, "braze")
    attempts = scalar(url, "SELECT coalesce(max(attempts), 0) FROM sync_batches")
    delivered, lost = compare(profiles, wanted)
    duplicated = stats["objects"]["applied"] - len(wanted)
    return Row(
        scenario="faults",
        customers=len(wanted),  # the valid customers: the others are refused by Braze's rules, by design
        faults=dict(stats["faults"]),
        delivered=delivered,
        lost=len(lost),
        duplicated=duplicated,
        retries=sum(r["retries"] for r in runs),
        note=f"{customers} customers, {len(runs)} runs; {len(refused)} invalid customers quarantined, never sent",
        details={
            "runs": runs,
            "lost_ids": lost[:10],
            "acknowledged_equals_braze": acknowledged == non_empty(profiles),
            "quarantined": {r["customer_id"]: r["reason"] for r in failures if r["quarantined_at"]},
            "refused": sorted(refused),
            "max_attempts_per_batch": attempts,
            "max_attempts": braze["max_attempts"],
            "max_retry_seconds": braze["max_retry_seconds"],
            "emulator": stats,
        },
    )


# -- 2. crashes ------------------------------------------------------------------------------------------------

#: Where the 12 kills land: test hooks at named points, and kills from outside after acknowledgements or a time.
CRASH_PLAN = ("select", "intended", "ack", "acks", "time", "select", "intended", "ack", "acks", "ack", "acks", "time")


def crash_points(seed: int, plan: tuple[str, ...], customers: int, batches: int) -> list[tuple[str, float]]:
    rng = random.Random(seed)
    points: list[tuple[str, float]] = []
    for kind in plan:
        if kind == "select":
            points.append((kind, rng.randrange(customers // 4, customers)))
        elif kind in ("intended", "ack"):
            points.append((kind, rng.randrange(1, batches - 1)))
        elif kind == "acks":
            points.append((kind, rng.randrange(1, batches - 8)))
        else:
            points.append((kind, round(rng.uniform(1.0, 3.0), 2)))
    return points


def crashes(
    workdir: Path, *, customers: int = 800, seed: int = 5, plan: tuple[str, ...] = CRASH_PLAN, batch_size: int = 20
) -> Row:
    """Kill ``churnsync sync`` with SIGKILL at each point of ``plan``, rerun, and check Braze against the store."""
    from churnsync.sync.runner import CRASH_AT_ENV

    concurrency = 4
    ids = customer_ids(customers)
    url = f"sqlite:///{workdir / 'crashes.db'}"
    batches = -(-customers // batch_size)
    points = crash_points(seed, plan, customers, batches)
    emulator_config = EmulatorConfig(api_key=KEY, latency_seconds=0.02, known_external_ids=frozenset(ids))
    cycles: list[dict[str, Any]] = []
    with serve_in_thread(emulator_config) as emulator:
        braze = destination(emulator.url, batch_size=batch_size, concurrency=concurrency, max_attempts=3)
        config = write_config(workdir / "crashes.toml", url, braze)
        command = [sys.executable, "-m", "churnsync", "sync", "--config", str(config), "--json"]
        for cycle, (kind, at) in enumerate(points):
            with AttributeStore.open(url) as store:
                publish(store, ids, cycle=cycle)
            received_before = emulator.state.stats()["objects"]["received"]
            before_run = last_sync_run(url)
            hook = {CRASH_AT_ENV: f"{kind}:{int(at)}"} if kind in ("select", "intended", "ack") else {}
            process = subprocess.Popen(
                command, env=child_env(**hook), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            if kind == "acks":
                if wait_for_acks(url, before_run, int(at), process, limit=60):
                    process.send_signal(signal.SIGKILL)
            elif kind == "time":
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=at)
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
            _, stderr = process.communicate(timeout=120)
            killed = process.returncode == -signal.SIGKILL
            killed_run = last_sync_run(url)
            in_flight = scalar(
                url, "SELECT count(*) FROM sync_journal WHERE status = 'intended' AND sync_run_id = :r", r=killed_run
            )
            in_flight_objects = scalar(
                url,
                "SELECT coalesce(sum(objects), 0) FROM sync_journal WHERE status = 'intended' AND sync_run_id = :r",
                r=killed_run,
            )
            # The rerun goes through the same entry point in this process (it need not die: a new process per rerun
            # would only double the time of the scenario).
            with environment(**{KEY_ENV: KEY}):
                rerun_exit, rerun_stdout, rerun_stderr = cli(*command[3:])
            report = json.loads(rerun_stdout)[0] if rerun_exit == 0 else {}
            received = emulator.state.stats()["objects"]["received"] - received_before
            with AttributeStore.open(url) as store:
                acknowledged = store.acknowledged_state("braze")
                wanted = store.current_values()
                pending = sum(len(chunk) for chunk in store.select_changes("braze"))
                history = {r["id"]: r for r in store.sync_runs(limit=50)}
            profiles = emulator.state.profiles()
            delivered, lost = compare(profiles, wanted)
            interrupted = history.get(killed_run) if killed_run > before_run else None
            cycles.append(
                {
                    "kind": kind,
                    "at": at,
                    "killed": killed,
                    "child_stderr": stderr[-500:] if not killed else "",
                    "killed_run": killed_run if killed_run > before_run else None,
                    "killed_run_status": interrupted["status"] if interrupted else None,
                    "killed_run_error": (interrupted["error"] or "") if interrupted else None,
                    "batches_in_flight": in_flight,
                    "objects_in_flight": in_flight_objects,
                    "rerun_exit": rerun_exit,
                    "rerun_stderr": rerun_stderr[-500:],
                    "report": report,
                    "duplicated": received - customers,
                    "delivered": delivered,
                    "lost": len(lost),
                    "pending": pending,
                    "acknowledged_equals_braze": acknowledged == non_empty(profiles),
                }
            )
    return Row(
        scenario="crashes",
        customers=customers * len(cycles),
        faults={"SIGKILL": sum(c["killed"] for c in cycles)},
        # Every customer changed before each cycle: customers × cycles updates had to arrive.
        delivered=sum(c["delivered"] for c in cycles),
        lost=sum(c["lost"] for c in cycles),
        duplicated=sum(c["duplicated"] for c in cycles),
        retries=0,
        note=(
            f"{customers} customers, all changed before each of {len(cycles)} kill points, each followed by a "
            "rerun; at most "
            f"{max(c['duplicated'] for c in cycles)} duplicates after one crash (≤ {concurrency} batches of "
            f"{batch_size} in flight)"
        ),
        details={"cycles": cycles, "concurrency": concurrency, "batch_size": batch_size, "customers": customers},
    )


# -- 3. store faults -------------------------------------------------------------------------------------------


def _hold_sqlite_lock(path: Path, url: str, after: int, hold: float, held: threading.Event) -> threading.Thread:
    def run() -> None:
        wait_for_acks(url, 0, after, None, limit=60)
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")  # another process's write transaction: the store's writes must wait
            held.set()
            time.sleep(hold)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    thread = threading.Thread(target=run, name="sqlite-lock-holder", daemon=True)
    thread.start()
    return thread


_PATCHED_SYNC = (
    "import sys; import churnsync.store.store as s; s.SQLITE_BUSY_TIMEOUT_MS = int(sys.argv.pop(1)); "
    "from churnsync.cli import main; sys.argv[0] = 'churnsync'; main()"
)


def sqlite_locked(workdir: Path, *, customers: int = 1500, busy_timeout_ms: int = 300, hold: float = 2.0) -> Row:
    """Another connection holds SQLite's write lock mid-run past the busy timeout; then the next run.

    The store waits ``SQLITE_BUSY_TIMEOUT_MS`` (30 s) for a lock; the locked run lowers it to ``busy_timeout_ms``
    (in its own process, which otherwise is ``churnsync sync``) so that the lock outlasts it without a 30 s wait.
    """
    ids = customer_ids(customers)
    path = workdir / "locked.db"
    url = f"sqlite:///{path}"
    with AttributeStore.open(url) as store:
        publish(store, ids)
    emulator_config = EmulatorConfig(api_key=KEY, latency_seconds=0.02, known_external_ids=frozenset(ids))
    with serve_in_thread(emulator_config) as emulator:
        config = write_config(workdir / "locked.toml", url, destination(emulator.url, batch_size=20, concurrency=4))
        held = threading.Event()
        holder = _hold_sqlite_lock(path, url, after=5, hold=hold, held=held)
        locked = subprocess.run(
            [sys.executable, "-c", _PATCHED_SYNC, str(busy_timeout_ms), "sync", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=120,
            check=False,
        )
        holder.join(timeout=60)
        first = (locked.returncode, locked.stdout, locked.stderr)
        after = after_store_fault(url, config, emulator, first)
    second = after.details["second"]
    after.details["report"] = json.loads(second[1])[0] if second[0] == 0 else {}
    return Row(
        scenario="sqlite_locked",
        customers=customers,
        faults={"write lock held past the busy timeout": int(held.is_set())},
        delivered=after.delivered,
        lost=after.lost,
        duplicated=after.received - customers,
        retries=0,
        note="the locked run fails with one line; the next run resends what was in doubt",
        details=after.details,
    )


@dataclass
class AfterFault:
    """What the run after a store fault left: the emulator against the store, and the runs' statuses."""

    delivered: int
    lost: int
    received: int
    details: dict[str, Any]


def after_store_fault(url: str, config: Path, emulator: Any, first: tuple[Any, ...]) -> AfterFault:
    """Run the next sync after a store fault (``first``: the faulty run's exit, stdout, stderr) and check it.

    Both store-fault scenarios end the same way: the runs recorded so far, one more ``churnsync sync``, then what
    the emulator received and holds against what the store wants and says was acknowledged.
    """
    after_first = sync_runs(url)
    second = churnsync("sync", "--config", str(config), "--json")
    received = emulator.state.stats()["objects"]["received"]
    with AttributeStore.open(url) as store:
        wanted = store.current_values()
        acknowledged = store.acknowledged_state("braze")
    history = sync_runs(url)
    profiles = emulator.state.profiles()
    delivered, lost = compare(profiles, wanted)
    return AfterFault(
        delivered=delivered,
        lost=len(lost),
        received=received,
        details={
            "first": first,
            "second": (second.returncode, second.stdout, second.stderr),
            "statuses_after_first": [r["status"] for r in after_first],
            "history": [(r["id"], r["status"], r["error"]) for r in history],
            "acknowledged_equals_braze": acknowledged == non_empty(profiles),
        },
    )


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the PostgreSQL server (dropped afterwards); yields its URL."""
    admin = sa.create_engine(PG_URL)
    schema = f"rel_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def postgres_dropped(workdir: Path, url: str, *, customers: int = 1500, storm: float = 1.0) -> Row:
    """Terminate the sync process's PostgreSQL connections mid-run for ``storm`` seconds; then the next run."""
    ids = customer_ids(customers)
    app_name = f"churnsync_chaos_{uuid.uuid4().hex[:8]}"
    store_url = f"{url}&application_name={app_name}"
    with AttributeStore.open(url) as store:
        publish(store, ids)
    emulator_config = EmulatorConfig(api_key=KEY, latency_seconds=0.05, known_external_ids=frozenset(ids))
    terminated = 0
    with serve_in_thread(emulator_config) as emulator:
        config = write_config(workdir / "pg.toml", store_url, destination(emulator.url, batch_size=10, concurrency=4))
        command = [sys.executable, "-m", "churnsync", "sync", "--config", str(config), "--json"]
        process = subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        admin = sa.create_engine(PG_URL)
        try:
            wait_for_acks(url, 0, 5, process, limit=60)
            end = time.monotonic() + storm
            while time.monotonic() < end and process.poll() is None:
                with admin.begin() as conn:
                    terminated += int(
                        conn.execute(
                            sa.text(
                                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE application_name = :app AND pid <> pg_backend_pid()"
                            ),
                            {"app": app_name},
                        ).scalar_one()
                    )
                time.sleep(0.03)
        finally:
            admin.dispose()
        stdout, stderr = process.communicate(timeout=120)
        first = (process.returncode, stdout, stderr)
        after = after_store_fault(url, config, emulator, first)
    return Row(
        scenario="postgres_dropped",
        customers=customers,
        faults={"connections terminated": terminated},
        delivered=after.delivered,
        lost=after.lost,
        duplicated=after.received - customers,
        retries=0,
        note=f"first run exit {first[0]}; the next run completes",
        details=after.details,
    )


def rejects_full(workdir: Path, *, customers: int = 300) -> Row:
    """``churnsync run`` with the rejects file on a full disk (``/dev/full``), then with a writable one."""
    from churnsync.events.generator import generate_sample

    today = datetime.now(UTC).date()
    sample = generate_sample(workdir / "data", customers=customers, days=150, seed=3, start=today - timedelta(days=150))
    events = workdir / "events.csv"
    bad = ["c_bad,not-a-time,purchase,1", "c_bad2,2026-01-01T00:00:00Z,purchase,-3"]
    events.write_text(sample.events_path.read_text(encoding="utf-8") + "\n".join(bad) + "\n", encoding="utf-8")
    ids = [line.split(",", 1)[0] for line in sample.truth_path.read_text(encoding="utf-8").splitlines()[1:]]
    url = f"sqlite:///{workdir / 'full.db'}"
    emulator_config = EmulatorConfig(api_key=KEY, known_external_ids=frozenset(ids))
    with serve_in_thread(emulator_config) as emulator:

        def config(rejects: str) -> Path:
            data = f'[data]\npaths = ["{events}"]\nrejects_path = "{rejects}"\n[model]\nkind = "bgnbd"\n'
            return write_config(workdir / "full.toml", url, destination(emulator.url), extra=data)

        first = churnsync("run", "--config", str(config("/dev/full")))
        with AttributeStore.open(url) as store:
            after_first = [r["status"] for r in store.prediction_runs(limit=100)]
            synced_after_first = [r["status"] for r in store.sync_runs(limit=100)]
        second = churnsync("run", "--config", str(config(str(workdir / "rejects.csv"))))
        with AttributeStore.open(url) as store:
            wanted = store.current_values()
            after_second = [r["status"] for r in store.prediction_runs(limit=100)]
        profiles = emulator.state.profiles()
        received = emulator.state.stats()["objects"]["received"]
    delivered, lost = compare(profiles, wanted)
    rejects = workdir / "rejects.csv"
    return Row(
        scenario="rejects_full",
        customers=len(wanted),
        faults={"ENOSPC on the rejects file": int(first.returncode != 0)},
        delivered=delivered,
        lost=len(lost),
        duplicated=received - len(wanted),
        retries=0,
        note="the first run fails with one line and records nothing as succeeded; the next run completes",
        details={
            "first": (first.returncode, first.stdout, first.stderr),
            "second": (second.returncode, second.stdout[-2000:], second.stderr),
            "prediction_runs_after_first": after_first,
            "sync_runs_after_first": synced_after_first,
            "prediction_runs_after_second": after_second,
            "rejects": rejects.read_text(encoding="utf-8") if rejects.exists() else "",
        },
    )


# -- 4. bad input ----------------------------------------------------------------------------------------------

HEADER = "customer_id,occurred_at,event_type,value"
#: Row faults: each makes one malformed row (the good rows around it must still load).
BAD_ROWS: dict[str, Callable[[random.Random], str]] = {
    "empty customer id": lambda r: f",2026-01-0{r.randint(1, 9)}T00:00:00Z,purchase,1",
    "NUL in customer id": lambda r: f"c\x00{r.randint(0, 99)},2026-01-01T00:00:00Z,purchase,1",
    "customer id of 300 characters": lambda r: "c" * 300 + ",2026-01-01T00:00:00Z,purchase,1",
    "time that is not a time": lambda r: (
        f"c_bad{r.randint(0, 9)},{r.choice(['yesterday', '2026-13-40', 'NaN', '1e9'])},purchase,1"
    ),
    "time in the future": lambda r: "c_bad,2999-01-01T00:00:00Z,purchase,1",
    "empty event type": lambda r: "c_bad,2026-01-01T00:00:00Z,,1",
    "value that is not a number": lambda r: (
        f"c_bad,2026-01-01T00:00:00Z,purchase,{r.choice(['abc', 'NaN', 'inf', '1e400', '--1'])}"
    ),
    "negative value": lambda r: f"c_bad,2026-01-01T00:00:00Z,purchase,-{r.randint(1, 99)}",
    "huge value field": lambda r: "c_bad,2026-01-01T00:00:00Z,purchase," + "9" * r.randint(400, 5000),
}
#: File faults: the file as a whole is refused with one clear line (no row of it is used).
BAD_FILES: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "empty file": lambda r, good: b"",
    "no header": lambda r, good: good.split(b"\n", 1)[1],
    "missing column": lambda r, good: good.replace(b",event_type", b"", 1),
    "invalid UTF-8": lambda r, good: good + b"c\xff\xfe,2026-01-01T00:00:00Z,purchase,1\n",
    "UTF-16": lambda r, good: good.decode().encode("utf-16"),
    "a row with extra fields": lambda r, good: good + b"c1,2026-01-01,purchase,1,extra,more,and,more\n",
    "unterminated quote": lambda r, good: good + b'"c1,2026-01-01,purchase,1\n',
    "line over 2 MB": lambda r, good: good + b"c1,2026-01-01,purchase," + b"9" * 2_100_000 + b"\n",
}


def good_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Valid rows in mixed time zones and formats; (customer id, the row)."""
    zones = ["Z", "+00:00", "+05:30", "-08:00", ""]
    rows = []
    for i in range(n):
        cid = f"g{rng.randint(0, 10_000):05d}_{i}"
        day = rng.randint(1, 28)
        stamp = f"2026-02-{day:02d}T{rng.randint(0, 23):02d}:00:00{rng.choice(zones)}"
        if rng.random() < 0.2:
            stamp = f"2026-02-{day:02d}"
        value = rng.choice(["", "0", "12.5", "3"])
        rows.append((cid, f"{cid},{stamp},{rng.choice(['purchase', 'session', 'PURCHASE ', 'email_open'])},{value}"))
    return rows


def event_file(rng: random.Random) -> tuple[bytes, set[str], list[str], str | None]:
    """(file bytes, good customer ids, bad row kinds, file fault or None)."""
    good = good_rows(rng, rng.randint(1, 30))
    kinds = [rng.choice(list(BAD_ROWS)) for _ in range(rng.randint(0, 8))]
    lines = [row for _, row in good] + [BAD_ROWS[k](rng) for k in kinds]
    lines += [good[0][1]] * rng.randint(0, 2)  # duplicate events
    rng.shuffle(lines)
    body = ("\n".join([HEADER, *lines]) + "\n").encode()
    fault = rng.choice(list(BAD_FILES)) if rng.random() < 0.25 else None
    if fault is not None:
        body = BAD_FILES[fault](rng, body)
    return body, {cid for cid, _ in good}, kinds, fault


def read_events(path: Path, rejects: Path) -> tuple[set[str] | None, str | None]:
    """Load one file as a run does: (customer ids loaded, None) or (None, the one-line error)."""
    import duckdb

    from churnsync.config import DataSettings
    from churnsync.errors import ChurnsyncError
    from churnsync.events.reader import load_events

    con = duckdb.connect()
    try:
        load_events(
            con,
            DataSettings(paths=[str(path)], rejects_path=str(rejects), max_reject_share=1.0),
            now=datetime(2026, 6, 30, tzinfo=UTC),
        )
        return {str(row[0]) for row in con.execute("SELECT DISTINCT customer_id FROM events").fetchall()}, None
    except ChurnsyncError as exc:
        return None, str(exc)
    finally:
        con.close()


CONFIG_FAULTS: dict[str, str] = {
    "not TOML": "[store\nurl = 1\n",
    "unknown key": "[prediction]\nhorizon = 30\n",
    "wrong type": '[destinations.braze]\nbatch_size = "many"\n',
    "out of range": "[destinations.braze]\nbatch_size = 500\n",
    "plain http beyond localhost": '[destinations.braze]\nendpoint = "http://braze.example.com"\n',
    "bad time zone": '[schedule]\ntimezone = "Mars/Olympus"\n',
    "NUL byte": '[store]\nurl = "\x00"\n',
}


def bad_input(workdir: Path, *, files: int = 120, seed: int = 17) -> Row:
    """Seeded random event files through the reader, and broken configurations through the command line."""
    rng = random.Random(seed)
    counts = {"files": 0, "bad rows": 0, "bad files": 0, "good rows": 0, "good rows loaded": 0, "errors": 0}
    problems: list[str] = []
    for i in range(files):
        body, good, kinds, fault = event_file(rng)
        path = workdir / f"events_{i}.csv"
        path.write_bytes(body)
        loaded, error = read_events(path, workdir / f"rejects_{i}.csv")
        counts["files"] += 1
        counts["bad rows"] += len(kinds)
        counts["bad files"] += fault is not None
        if fault is None:
            counts["good rows"] += len(good)
        if error is not None:
            counts["errors"] += 1
            if "\n" in error or fault is None:
                problems.append(f"file {i} ({kinds}, {fault}): {error}")
        elif loaded is not None and fault is None:
            counts["good rows loaded"] += len(good & loaded)
            if not good <= loaded:
                problems.append(f"file {i}: good rows lost: {sorted(good - loaded)[:3]}")
    configs = 0
    for name, text in CONFIG_FAULTS.items():
        path = workdir / f"config_{configs}.toml"
        path.write_text(text, encoding="utf-8")
        configs += 1
        code, out, err = cli("sync", "--config", str(path), "--dry-run", "--out", str(workdir / "dry.ndjson"))
        try:
            one_line_error(code, out, err)
        except AssertionError as exc:
            problems.append(f"config '{name}': {exc}")
    return Row(
        scenario="bad_input",
        customers=counts["good rows"],
        faults={"bad rows": counts["bad rows"], "bad files": counts["bad files"], "bad configs": configs},
        delivered=counts["good rows loaded"],
        lost=counts["good rows"] - counts["good rows loaded"],
        duplicated=0,
        retries=0,
        note=f"{counts['files']} event files (seed {seed}), {configs} configurations; every refusal one line",
        details={"counts": counts, "problems": problems},
    )


# -- the table -------------------------------------------------------------------------------------------------

SCENARIOS = ("faults", "crashes", "sqlite_locked", "postgres_dropped", "rejects_full", "bad_input")


def run_scenario(name: str, workdir: Path) -> Row:
    folder = workdir.resolve() / name
    folder.mkdir(parents=True, exist_ok=True)
    if name == "faults":
        return braze_faults(folder)
    if name == "crashes":
        return crashes(folder)
    if name == "sqlite_locked":
        return sqlite_locked(folder)
    if name == "postgres_dropped":
        with postgres_schema() as url:
            return postgres_dropped(folder, url)
    if name == "rejects_full":
        return rejects_full(folder)
    return bad_input(folder)


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the churnsync subprocesses)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="Run only this scenario (repeatable).")
    parser.add_argument("--json", action="store_true", help="Print the rows as JSON (with details) instead.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or SCENARIOS:
            started, cpu = time.monotonic(), _cpu()
            row = run_scenario(name, Path(tmp))
            row.details["wall_seconds"] = round(time.monotonic() - started, 1)
            row.details["cpu_seconds"] = round(_cpu() - cpu, 1)
            rows.append(row)
            print(f"{name}: done in {row.details['wall_seconds']} s", file=sys.stderr)
    if args.json:
        print(json.dumps([row.__dict__ for row in rows], default=str, indent=2))
        return
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}")
    print(
        "| scenario | updates due | faults injected | delivered | lost | duplicated | retries | wall s | CPU s "
        "| command |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        faults = ", ".join(f"{k} {v}" for k, v in row.faults.items()) + f" (total {row.faults_injected})"
        print(
            f"| {row.scenario} | {row.customers:,} | {faults} | {row.delivered:,} | {row.lost} | {row.duplicated} | "
            f"{row.retries} | {row.details['wall_seconds']} | {row.details['cpu_seconds']} | "
            f"`{COMMAND} --only {row.scenario}` |"
        )
    for row in rows:
        print(f"- {row.scenario}: {row.note}")
    if any(row.lost for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
