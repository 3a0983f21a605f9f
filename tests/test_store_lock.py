"""The store's run lock on real SQLite and PostgreSQL: one holder at a time, a named holder, stale locks cleared."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from churnsync.errors import StoreError, StoreLockedError
from churnsync.store import AttributeStore

HOLD = """
import sys, time
from churnsync.store import AttributeStore
store = AttributeStore.open(sys.argv[1])
with store.run_lock("child-run"):
    print("locked", flush=True)
    sys.stdin.readline()
store.close()
"""


def test_a_second_store_cannot_take_a_held_lock(store_url: str) -> None:
    with AttributeStore.open(store_url) as first, AttributeStore.open(store_url) as second:
        assert first.lock_holder() is None
        with first.run_lock("run 1"):
            holder = second.lock_holder()
            assert holder is not None
            assert holder["owner"] == "run 1" and holder["pid"] == os.getpid() and holder["stale"] is False
            locked = pytest.raises(StoreLockedError, match=r"locked by run 'run 1' \(host .*, pid \d+, since ")
            with locked as caught, second.run_lock("run 2"):
                pytest.fail("both held the lock")
            assert isinstance(caught.value, StoreError)
            assert "churnsync store unlock" in str(caught.value) and "\n" not in str(caught.value)
            assert second.clear_lock() is False  # the holder is alive: not stale
        assert second.lock_holder() is None
        with second.run_lock("run 2"):  # free again once released
            assert first.lock_holder() is not None
        with pytest.raises(RuntimeError), first.run_lock("run 3"):
            raise RuntimeError("a failing run releases the lock")
        assert first.lock_holder() is None


def test_threads_with_their_own_stores_never_overlap(store_url: str) -> None:
    AttributeStore.open(store_url).close()
    inside = 0
    overlaps = 0
    held = 0
    mutex = threading.Lock()

    def attempt(name: str) -> None:
        nonlocal inside, overlaps, held
        with AttributeStore.open(store_url) as store:
            for _ in range(5):
                try:
                    with store.run_lock(name):
                        with mutex:
                            inside += 1
                            overlaps += inside > 1
                            held += 1
                        time.sleep(0.01)
                        with mutex:
                            inside -= 1
                except StoreLockedError:
                    pass

    threads = [threading.Thread(target=attempt, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == 0 and held >= 1


def _hold_in_child(store_url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, store_url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def _kill(child: subprocess.Popen[str]) -> None:
    """End the child without letting it release anything (as a crash would), and close its pipes."""
    child.kill()
    child.communicate()


def test_another_process_holds_it_then_dies_and_the_stale_lock_is_cleared(store_url: str) -> None:
    AttributeStore.open(store_url).close()
    child = _hold_in_child(store_url)
    with AttributeStore.open(store_url) as store:
        try:
            locked = pytest.raises(StoreLockedError, match=rf"run 'child-run' \(host .*, pid {child.pid},")
            with locked, store.run_lock("parent"):
                pass
        finally:
            _kill(child)  # dies holding it: no release
        holder = _when_stale(store)
        assert holder is not None and holder["pid"] == child.pid and holder["stale"] is True
        with store.run_lock("next"):  # a dead holder's lock is taken over
            holder = store.lock_holder()
            assert holder is not None and holder["owner"] == "next"
        assert store.lock_holder() is None
        _plant_lock_row(store_url, child.pid)  # the dead child's row again, to clear it by hand this time
        assert store.clear_lock() is True
        assert store.lock_holder() is None
        assert store.clear_lock() is False  # nothing left
        with store.run_lock("parent"):
            pass


def _when_stale(store: AttributeStore) -> dict[str, object] | None:
    """The holder once it shows as stale: PostgreSQL ends a dead client's session (and its lock) a moment later."""
    deadline = time.monotonic() + 20
    while True:
        holder = store.lock_holder()
        if holder is None or holder["stale"] or time.monotonic() > deadline:
            return holder
        time.sleep(0.1)


def _plant_lock_row(url: str, pid: int, host: str | None = None) -> None:
    import socket

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO store_lock (name, owner, host, pid, token, acquired_at) "
                "VALUES ('run', 'planted', :host, :pid, 'x', :at)"
            ),
            {"host": host or socket.gethostname(), "pid": pid, "at": datetime(2026, 1, 1, tzinfo=UTC)},
        )
    engine.dispose()


def test_force_clears_a_live_lock(store_url: str) -> None:
    AttributeStore.open(store_url).close()
    child = _hold_in_child(store_url)
    try:
        with AttributeStore.open(store_url) as store:
            assert store.clear_lock() is False
            assert store.clear_lock(force=True) is True
            assert store.lock_holder() is None
            with store.run_lock("after force"):
                pass
    finally:
        _kill(child)


def test_a_lock_row_from_another_host_is_not_stale_on_sqlite(sqlite_url: str) -> None:
    AttributeStore.open(sqlite_url).close()
    _plant_lock_row(sqlite_url, 1, host="other-host.example")
    with AttributeStore.open(sqlite_url) as store:
        with pytest.raises(StoreLockedError, match=r"host other-host\.example"), store.run_lock("here"):
            pass
        assert store.clear_lock() is False
        assert store.clear_lock(force=True) is True
