"""The Braze emulator over real HTTP on a free loopback port: the contract of docs' Braze spec, answer by answer."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from churnsync.errors import ChurnsyncError
from churnsync.sync.emulator import EmulatorConfig, EmulatorState, RunningEmulator, build_app, serve_in_thread

KEY = "emulator-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Clock:
    """A settable wall clock shared by the emulator's rate limiter and the test."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_in_thread(EmulatorConfig(known_external_ids=frozenset({"known"}))) as running:
        yield running


@pytest.fixture
def client(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    emulator.state.reset()
    with httpx.Client(base_url=emulator.url, timeout=10) as c:
        yield c


def track(client: httpx.Client, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/users/track", json=body, headers=AUTH if headers is None else headers)


def test_auth_needs_the_exact_bearer_key(client: httpx.Client) -> None:
    body = {"attributes": [{"external_id": "a", "x": 1}]}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f'Bearer "{KEY}"'},
        {"Authorization": KEY},
    ):
        response = track(client, body, headers)
        assert response.status_code == 401
        assert response.json()["message"] == "Invalid API key"
        assert KEY not in response.text
        assert "X-RateLimit-Limit" in response.headers
    assert track(client, body).status_code == 201
    assert client.get("/_emulator/stats").json()["requests"] == {"201": 1, "401": 4}


def test_success_applies_attributes_and_counts_data_points(client: httpx.Client) -> None:
    response = track(
        client,
        {
            "attributes": [
                {"external_id": "a", "churn_probability": 0.82, "churn_risk": "high", "tags": ["x", "y", "x"]},
                {"external_id": "b", "_update_existing_only": False, "clv_365d": 412.5, "vip": True},
            ]
        },
    )
    assert response.status_code == 201
    assert response.json() == {"message": "success", "attributes_processed": 2}
    assert client.get("/_emulator/users/a").json() == {
        "churn_probability": 0.82,
        "churn_risk": "high",
        "tags": ["x", "y"],
    }
    assert client.get("/_emulator/users").json()["b"] == {"clv_365d": 412.5, "vip": True}
    # null deletes, and still costs a data point; add/remove edit an array
    track(client, {"attributes": [{"external_id": "a", "churn_risk": None, "tags": {"add": ["z"], "remove": ["x"]}}]})
    assert client.get("/_emulator/users/a").json() == {"churn_probability": 0.82, "tags": ["y", "z"]}
    stats = client.get("/_emulator/stats").json()
    assert stats["data_points"] == 3 + 2 + 2  # identifiers and _update_existing_only are never data points
    assert stats["objects"] == {"received": 3, "applied": 3, "failed": 0, "skipped_unknown": 0}
    assert client.get("/_emulator/users/nobody").status_code == 404


def test_per_object_errors_name_their_index_and_the_rest_applies(client: httpx.Client) -> None:
    objects: list[Any] = [
        {"external_id": "ok1", "score": 1},
        {"score": 2},  # no identifier
        {"external_id": "x", "braze_id": "y", "score": 3},  # two identifiers
        {"external_id": "d", "$score": 4},
        {"external_id": "e", "first_name": "Ann"},  # a standard profile field
        {"external_id": "f", "_merge_objects": True},
        {"external_id": "g", "note": "x" * 256},
        {"external_id": "h", "k" * 256: 1},
        {"external_id": "i", "nested": {"a": 1}},
        {"external_id": "j", "tags": ["a", 1]},
        {"external_id": "k", "_update_existing_only": "yes"},
        "not an object",
        {"external_id": "", "score": 5},
        {"external_id": "ok2", "Score": 6, "score": 7},  # keys are case-sensitive: two attributes
    ]
    response = track(client, {"attributes": objects})
    assert response.status_code == 201
    body = response.json()
    assert body["message"] == "success"
    assert [e["index"] for e in body["errors"]] == list(range(1, 13))
    assert {e["input_array"] for e in body["errors"]} == {"attributes"}
    types = [e["type"] for e in body["errors"]]
    assert "missing identifier" in types[0]
    assert "more than one identifier" in types[1]
    assert "'$score'" in types[2]
    assert "standard profile field" in types[3]
    assert "reserved" in types[4]
    assert "longer than 255" in types[5] and "longer than 255" in types[6]
    assert client.get("/_emulator/users").json() == {"known": {}, "ok1": {"score": 1}, "ok2": {"Score": 6, "score": 7}}
    assert client.get("/_emulator/stats").json()["objects"]["failed"] == 12


def test_email_wins_over_phone_and_other_identifiers_keep_their_own_profiles(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    response = track(
        client,
        {
            "attributes": [
                {"email": "Ann@Example.com", "phone": "+15551234", "score": 1},
                {"user_alias": {"alias_name": "n", "alias_label": "crm"}, "score": 2},  # update-only by default
                {"user_alias": {"alias_name": "m", "alias_label": "crm"}, "_update_existing_only": False, "s": 3},
            ]
        },
    )
    assert response.json() == {"message": "success", "attributes_processed": 3}  # the skipped one too
    assert emulator.state.other_profiles() == {"email:ann@example.com": {"score": 1}, "user_alias:crm:m": {"s": 3}}
    assert emulator.state.stats()["objects"]["skipped_unknown"] == 1


def test_update_existing_only_never_creates_unknown_profiles(client: httpx.Client) -> None:
    ids = ["known", "precreated", "new", "created"]
    assert client.post("/_emulator/users", json={"external_ids": ["precreated"]}).json() == {"created": 1}
    track(client, {"attributes": [{"external_id": "created", "a": 0}]})  # no flag: creates
    response = track(client, {"attributes": [{"external_id": i, "_update_existing_only": True, "a": 1} for i in ids]})
    assert response.status_code == 201
    users = client.get("/_emulator/users").json()
    assert users == {"known": {"a": 1}, "precreated": {"a": 1}, "created": {"a": 1}}
    stats = client.get("/_emulator/stats").json()
    assert stats["objects"]["skipped_unknown"] == 1
    assert stats["data_points"] == 1 + 3  # the skipped object wrote nothing
    assert client.post("/_emulator/users", json={"ids": 1}).status_code == 400


def test_create_unknown_users_mode_creates_them() -> None:
    with serve_in_thread(EmulatorConfig(create_unknown_users=True)) as running:
        httpx.post(
            running.url + "/users/track",
            json={"attributes": [{"external_id": "n", "_update_existing_only": True, "a": 1}]},
            headers=AUTH,
        )
        assert running.state.get_profile("n") == {"a": 1}


def test_contract_violations_are_counted(client: httpx.Client) -> None:
    track(
        client,
        {
            "attributes": [
                {"external_id": "a", "churn_probability": "0.82", "clv": " 12 ", "name": "12 Main St"},
                {"external_id": "a", "churn_risk": "high"},  # the same user twice in one request
            ]
        },
    )
    violations = client.get("/_emulator/stats").json()["violations"]
    assert violations == {
        "numbers_as_strings": 2,
        "over_limit_batches": 0,
        "concurrent_user_writes": 0,
        "duplicate_users_in_request": 1,
    }


def test_concurrent_writes_to_one_user_are_detected() -> None:
    with serve_in_thread(EmulatorConfig(latency_seconds=0.3)) as running:

        def send(ids: list[str]) -> None:
            body = {"attributes": [{"external_id": i, "a": 1} for i in ids]}
            assert httpx.post(running.url + "/users/track", json=body, headers=AUTH).status_code == 201

        threads = [threading.Thread(target=send, args=(ids,)) for ids in (["u1", "u2"], ["u2", "u3"], ["u4"])]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - started >= 0.3  # latency delays every answer
        stats = running.state.stats()
        assert stats["violations"]["concurrent_user_writes"] == 1
        assert stats["max_requests_in_flight"] == 3


def test_more_than_75_objects_is_refused_whole(client: httpx.Client) -> None:
    too_many = {"attributes": [{"external_id": f"u{i}", "a": i} for i in range(76)]}
    response = track(client, too_many)
    assert response.status_code == 400
    assert response.json()["message"] == "Max Input Length Exceeded"
    assert client.get("/_emulator/users").json() == {"known": {}}
    assert track(client, {"attributes": too_many["attributes"][:75]}).json()["attributes_processed"] == 75
    assert client.get("/_emulator/stats").json()["violations"]["over_limit_batches"] == 1


def test_newer_contracts_limit_objects_in_total() -> None:
    with serve_in_thread(EmulatorConfig(max_objects_total=50)) as running:
        body: dict[str, list[dict[str, Any]]] = {
            "attributes": [{"external_id": f"u{i}", "a": i} for i in range(30)],
            "events": [{"external_id": f"u{i}", "name": "e", "time": "2026-01-01T00:00:00Z"} for i in range(21)],
        }
        response = httpx.post(running.url + "/users/track", json=body, headers=AUTH)
        assert response.status_code == 400
        assert response.json()["message"] == "Max Input Length Exceeded"
        body["events"] = body["events"][:20]
        response = httpx.post(running.url + "/users/track", json=body, headers=AUTH)
        assert response.status_code == 201
        assert running.state.stats()["events_applied"] == 20


def test_bad_bodies_are_400(client: httpx.Client) -> None:
    for content in (b"not json", b"[1, 2]", b'{"attributes": {"external_id": "a"}}', b"{}"):
        response = client.post("/users/track", content=content, headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code == 400, content
        assert "message" in response.json()


def test_rate_limit_headers_and_429_without_state_change() -> None:
    clock = Clock(1_800_000_001.5)  # inside the window [1_800_000_000, 1_800_000_003)
    state = EmulatorState(clock=clock)
    config = EmulatorConfig(rate_limit_requests=3, rate_limit_window_seconds=3.0)
    with serve_in_thread(config, state=state) as running, httpx.Client(base_url=running.url) as c:
        remaining = []
        for i in range(3):
            response = track(c, {"attributes": [{"external_id": f"u{i}", "a": 1}]})
            assert response.status_code == 201
            assert response.headers["X-RateLimit-Limit"] == "3"
            assert response.headers["X-RateLimit-Reset"] == "1800000003"
            remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert remaining == [2, 1, 0]
        refused = track(c, {"attributes": [{"external_id": "late", "a": 1}]})
        assert refused.status_code == 429
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert refused.headers["X-RateLimit-Reset"] == "1800000003"
        assert state.get_profile("late") is None
        clock.t = 1_800_000_003.0  # the next window
        again = track(c, {"attributes": [{"external_id": "late", "a": 1}]})
        assert again.status_code == 201
        assert again.headers["X-RateLimit-Reset"] == "1800000006"
        assert state.get_profile("late") == {"a": 1}
        assert state.stats()["requests"] == {"201": 4, "429": 1}


def test_reset_restores_the_initial_state(client: httpx.Client) -> None:
    track(client, {"attributes": [{"external_id": "a", "x": 1}]})
    assert client.post("/_emulator/reset").status_code == 200
    assert client.get("/_emulator/users").json() == {"known": {}}
    stats = client.get("/_emulator/stats").json()
    assert stats["requests_total"] == 0 and stats["data_points"] == 0


def test_build_app_serves_any_asgi_server_and_a_busy_port_is_a_clear_error() -> None:
    app = build_app(EmulatorConfig())
    assert isinstance(app.state.emulator, EmulatorState)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ChurnsyncError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_in_thread(EmulatorConfig(), port=port)


def test_responses_come_without_delayed_ack_stalls(client: httpx.Client) -> None:
    # Headers and body go out in two writes: without TCP_NODELAY each answer waits ~40 ms for an ACK.
    body = {"attributes": [{"external_id": "a", "x": 1}]}
    track(client, body)
    durations = []
    for _ in range(21):
        started = time.perf_counter()
        track(client, body)
        durations.append(time.perf_counter() - started)
    assert sorted(durations)[10] < 0.03  # the median: robust to a busy machine, far below a 40 ms stall
