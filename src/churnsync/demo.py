"""The demo: sample data, the built-in Braze emulator, two runs a week apart, and a check of what was sent.

Everything runs on the embedded defaults (SQLite store, generated data, emulator on a free port); the demo writes a
real ``churnsync.toml`` and goes through the same code as ``churnsync run``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from churnsync.config import load_settings
from churnsync.pipeline import RunReport, predict_and_store, sync_destination, utcnow
from churnsync.records import Value

DESTINATION = "braze_emulator"
KEY_ENV = "CHURNSYNC_DEMO_BRAZE_KEY"


@dataclass
class DemoResult:
    """What the demo did and what it verified."""

    folder: Path
    config_path: Path
    store_url: str
    emulator_url: str
    events_path: Path
    customers: int
    events: int
    first: RunReport
    second: RunReport
    changed_before_second_sync: int
    second_sync_updated: int
    second_sync_only_changed: bool
    profiles_checked: int
    profile_mismatches: int
    emulator_stats: dict[str, Any]

    @property
    def verified(self) -> bool:
        """The demo's promises: Braze equals the store, and the second sync sent only (and fewer) changes."""
        first_sent = self.first.syncs[0].counts.sent
        second_sent = self.second.syncs[0].counts.sent
        return (
            self.profile_mismatches == 0
            and self.second_sync_only_changed
            and second_sent < first_sent
            and second_sent == self.changed_before_second_sync
        )


def _config_text(events_glob: str, endpoint: str) -> str:
    return f"""\
# Written by `churnsync demo`. Run `churnsync --config {{this file}} runs` to see its run history.
[data]
paths = ["{events_glob}"]
rejects_path = "rejects.csv"

[prediction]
horizon_days = 30
qualifying_events = ["purchase"]

[store]
url = "sqlite:///churnsync.db"

[destinations.{DESTINATION}]
endpoint = "{endpoint}"
api_key_env = "{KEY_ENV}"
batch_size = 75
concurrency = 4
"""


def _comparable(values: dict[str, Value]) -> dict[str, Value]:
    # Braze deletes an attribute sent as null, so "null" and "absent" are the same profile.
    return {k: v for k, v in values.items() if v is not None}


def run_demo(
    folder: Path,
    *,
    customers: int = 20_000,
    days: int = 365,
    seed: int = 7,
    now: datetime | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Generate data, start the emulator, run twice a week apart, and verify the emulator against the store."""
    import duckdb
    import httpx

    from churnsync.events.generator import generate_sample
    from churnsync.store.store import AttributeStore
    from churnsync.sync.emulator import EmulatorConfig, serve_in_thread

    say = on_stage or (lambda _stage: None)
    now = now or utcnow()
    folder.mkdir(parents=True, exist_ok=True)
    # The data ends yesterday, so the second run scores "today" and nothing is in the future.
    end = now.date()
    start = end - timedelta(days=days)
    say(f"generating {customers:,} customers over {days} days")
    sample = generate_sample(folder / "data", customers=customers, days=days, seed=seed, start=start)
    with duckdb.connect() as con:
        rows = con.execute("SELECT customer_id FROM read_csv(?, all_varchar=true)", [str(sample.truth_path)]).fetchall()
    ids = [str(row[0]) for row in rows]

    api_key = secrets.token_urlsafe(24)
    with serve_in_thread(EmulatorConfig(api_key=api_key, known_external_ids=frozenset(ids))) as emulator:
        config_path = folder / "churnsync.toml"
        config_path.write_text(_config_text("data/events.*", emulator.url), encoding="utf-8")
        previous = os.environ.get(KEY_ENV)
        os.environ[KEY_ENV] = api_key
        try:
            settings = load_settings(config_path)
            store_url = settings.store.resolved_url()
            store = AttributeStore.open(store_url)
            try:
                first_as_of: date = end - timedelta(days=8)
                second_as_of: date = end - timedelta(days=1)
                say(f"run 1: scoring as of {first_as_of}")
                first = predict_and_store(settings, store, now=now, as_of=first_as_of)
                say("run 1: syncing to the emulator")
                first.syncs.append(
                    sync_destination(settings, store, DESTINATION, prediction_run_id=first.prediction_run_id)
                )

                acknowledged_before = store.acknowledged_state(DESTINATION)
                say(f"run 2: scoring as of {second_as_of}, one more week of data")
                second = predict_and_store(settings, store, now=now, as_of=second_as_of)
                current = store.current_values()
                changed = {
                    cid
                    for cid, values in current.items()
                    if _comparable(values) != _comparable(acknowledged_before.get(cid, {}))
                }
                say("run 2: syncing only what changed")
                second.syncs.append(
                    sync_destination(settings, store, DESTINATION, prediction_run_id=second.prediction_run_id)
                )
                acknowledged_after = store.acknowledged_state(DESTINATION)
            finally:
                store.close()
        finally:
            if previous is None:
                os.environ.pop(KEY_ENV, None)
            else:
                os.environ[KEY_ENV] = previous

        updated = {
            cid
            for cid, values in acknowledged_after.items()
            if _comparable(values) != _comparable(acknowledged_before.get(cid, {}))
        }
        say("checking the emulator's profiles against the store")
        with httpx.Client(base_url=emulator.url, timeout=30) as client:
            profiles: dict[str, dict[str, Value]] = client.get("/_emulator/users").json()
            stats: dict[str, Any] = client.get("/_emulator/stats").json()
        mismatches = sum(
            1
            for cid in set(profiles) | set(acknowledged_after)
            if _comparable(profiles.get(cid, {})) != _comparable(acknowledged_after.get(cid, {}))
        )
        return DemoResult(
            folder=folder,
            config_path=config_path,
            store_url=store_url,
            emulator_url=emulator.url,
            events_path=sample.events_path,
            customers=sample.customers,
            events=sample.events,
            first=first,
            second=second,
            changed_before_second_sync=len(changed),
            second_sync_updated=len(updated),
            second_sync_only_changed=updated <= changed,
            profiles_checked=len(set(profiles) | set(acknowledged_after)),
            profile_mismatches=mismatches,
            emulator_stats=stats,
        )
