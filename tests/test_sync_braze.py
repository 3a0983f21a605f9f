"""The Braze sync client against the real emulator on a free port, and against odd servers (MockTransport,
a raw loopback socket server) for the answers the emulator does not give."""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from churnsync.config import BrazeDestination
from churnsync.errors import ConfigError, DestinationAuthError
from churnsync.records import BatchOutcome, Change, SyncCounts
from churnsync.sync.braze import build_payload, push_changes, push_changes_async, track_url
from churnsync.sync.emulator import EmulatorConfig, EmulatorState, RunningEmulator, serve_in_thread

KEY = "emulator-key"
SECRET = "s3cr3t-rest-key-000"


class FakeTime:
    """Wall clock + sleep for the client (and the emulator's rate window): waits take no real time."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


class Recorder:
    """An ``on_batch`` that keeps every outcome."""

    def __init__(self) -> None:
        self.outcomes: list[BatchOutcome] = []

    def __call__(self, outcome: BatchOutcome) -> None:
        self.outcomes.append(outcome)

    @property
    def accepted(self) -> dict[str, dict[str, Any]]:
        return {c.customer_id: dict(c.values) for o in self.outcomes for c in o.accepted}

    @property
    def failed(self) -> dict[str, str]:
        return {f.customer_id: f.reason for o in self.outcomes for f in o.failed}


def changes(n: int, start: int = 0) -> list[Change]:
    return [
        Change(f"c{i}", {"churn_probability": round(i / (n + start + 1), 4), "churn_risk": "high", "clv_365d": i})
        for i in range(start, start + n)
    ]


def push(
    chunks: Any,
    endpoint: str,
    *,
    recorder: Recorder | None = None,
    api_key: str = KEY,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: FakeTime | None = None,
    **settings: Any,
) -> SyncCounts:
    clock = clock or FakeTime()
    return push_changes(
        chunks,
        name="braze",
        destination=BrazeDestination(endpoint=endpoint, **settings),
        api_key=api_key,
        on_batch=recorder if recorder is not None else Recorder(),
        transport=transport,
        sleep=clock.sleep,
        now=clock,
        rng=random.Random(7),
    )


Handler = Callable[[httpx.Request], httpx.Response]


def mock(handler: Handler) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(201, json={"message": "success", "attributes_processed": len(sent(request))})


def sent(request: httpx.Request) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = json.loads(request.content)["attributes"]
    return objects


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with serve_in_thread(EmulatorConfig(create_unknown_users=True)) as running:
        yield running


@pytest.fixture
def emu(emulator: RunningEmulator) -> RunningEmulator:
    emulator.state.reset()
    return emulator


# -- payload --------------------------------------------------------------------------------------------------


def test_payload_shape_types_prefix_and_flag() -> None:
    batch = [
        Change("c1", {"churn_probability": 0.82, "orders": 3, "churn_risk": "high", "vip": True, "gone": None}),
        Change("c2", {"churn_risk": "low"}),
    ]
    payload = build_payload(batch, BrazeDestination(attribute_prefix="cs_"))
    assert payload == {
        "attributes": [
            {
                "external_id": "c1",
                "_update_existing_only": True,
                "cs_churn_probability": 0.82,
                "cs_orders": 3,
                "cs_churn_risk": "high",
                "cs_vip": True,
                "cs_gone": None,
            },
            {"external_id": "c2", "_update_existing_only": True, "cs_churn_risk": "low"},
        ]
    }
    plain = build_payload(batch[1:], BrazeDestination(update_existing_only=False))
    assert plain == {"attributes": [{"external_id": "c2", "churn_risk": "low"}]}


def test_requests_carry_headers_and_json_numbers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(request)

    batch = [Change("c1", {"churn_probability": 0.82, "orders": 3, "gone": None})]
    push([batch], "https://rest.iad-01.braze.com/", transport=mock(handler), api_key=SECRET)
    push([batch], "https://rest.iad-01.braze.com", transport=mock(handler), api_key=SECRET, bulk_header=False)
    first, second = seen
    assert str(first.url) == "https://rest.iad-01.braze.com/users/track"
    assert first.method == "POST"
    assert first.headers["Authorization"] == f"Bearer {SECRET}"
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["X-Braze-Bulk"] == "true"
    assert "X-Braze-Bulk" not in second.headers
    assert SECRET not in first.content.decode() and SECRET not in str(first.url)
    assert b'"churn_probability":0.82' in first.content and b'"gone":null' in first.content
    assert sent(first) == [
        {"external_id": "c1", "_update_existing_only": True, "churn_probability": 0.82, "orders": 3, "gone": None}
    ]


def test_plain_http_only_on_this_machine() -> None:
    assert track_url("http://localhost:8787", "b") == "http://localhost:8787/users/track"
    assert track_url("http://[::1]:8787/", "b") == "http://[::1]:8787/users/track"
    assert track_url("https://rest.fra-01.braze.eu", "b") == "https://rest.fra-01.braze.eu/users/track"
    for endpoint in ("http://rest.iad-01.braze.com", "ftp://x", "rest.iad-01.braze.com"):
        with pytest.raises(ConfigError, match="destination 'b'"):
            track_url(endpoint, "b")
    with pytest.raises(ConfigError, match="plain http"):
        push([changes(1)], "http://10.0.0.5:8787", transport=mock(ok))


# -- against the emulator -------------------------------------------------------------------------------------


def test_batches_of_75_reach_the_emulator_exactly(emu: RunningEmulator) -> None:
    recorder = Recorder()
    everything = changes(200)
    chunks = [everything[:7], everything[7:157], everything[157:]]
    counts = push(chunks, emu.url, recorder=recorder, concurrency=3)
    assert sorted(len(o.accepted) for o in recorder.outcomes) == [50, 75, 75]
    assert sorted(o.seq for o in recorder.outcomes) == [0, 1, 2]
    assert all(o.http_status == 201 and o.attempts == 1 and not o.failed for o in recorder.outcomes)
    assert (counts.selected, counts.sent, counts.accepted, counts.failed) == (200, 200, 200, 0)
    assert counts.requests == 3 and counts.retries == 0
    assert counts.data_points == 600 == sum(o.data_points for o in recorder.outcomes)
    profiles = emu.state.profiles()
    assert profiles == {c.customer_id: dict(c.values) for c in everything}
    assert recorder.accepted == profiles
    stats = emu.state.stats()
    assert stats["data_points"] == 600
    assert stats["violations"] == {
        "numbers_as_strings": 0,
        "over_limit_batches": 0,
        "concurrent_user_writes": 0,
        "duplicate_users_in_request": 0,
    }


def test_prefix_and_update_existing_only_as_braze_sees_them(emulator: RunningEmulator) -> None:
    state = EmulatorState(known_external_ids=frozenset({"c0", "c1"}))
    with serve_in_thread(EmulatorConfig(), state=state) as running:
        recorder = Recorder()
        counts = push([changes(3)], running.url, recorder=recorder, attribute_prefix="cs_")
        assert counts.accepted == 3  # Braze accepts the object; it just does not create the profile
        assert set(state.profiles()) == {"c0", "c1"}
        assert state.get_profile("c1") == {"cs_churn_probability": 0.25, "cs_churn_risk": "high", "cs_clv_365d": 1}
        assert state.stats()["objects"]["skipped_unknown"] == 1
        assert recorder.accepted["c1"] == {"churn_probability": 0.25, "churn_risk": "high", "clv_365d": 1}


def test_per_object_errors_fail_exactly_their_customers(emu: RunningEmulator) -> None:
    batch = changes(10)
    batch[3] = Change("c3", {"first_name": "Ann"})
    batch[8] = Change("c8", {"note": "x" * 300})
    recorder = Recorder()
    counts = push([batch], emu.url, recorder=recorder)
    assert set(recorder.failed) == {"c3", "c8"}
    assert "standard profile field" in recorder.failed["c3"]
    assert "longer than 255" in recorder.failed["c8"]
    assert set(recorder.accepted) == {f"c{i}" for i in range(10)} - {"c3", "c8"}
    assert (counts.sent, counts.accepted, counts.failed) == (10, 8, 2)
    assert [f.customer_id for f in counts.failures] == ["c3", "c8"]
    assert counts.data_points == 8 * 3


def test_a_smaller_server_limit_is_met_by_splitting() -> None:
    with serve_in_thread(EmulatorConfig(max_objects_total=50, create_unknown_users=True)) as running:
        recorder = Recorder()
        counts = push([changes(75)], running.url, recorder=recorder)
        assert counts.accepted == 75 and counts.failed == 0
        assert counts.requests == 3  # 75 refused, then 37 and 38
        (outcome,) = recorder.outcomes
        assert outcome.http_status == 400 and outcome.attempts == 3
        assert len(running.state.profiles()) == 75


def test_wrong_key_stops_the_run_naming_the_setting(emu: RunningEmulator) -> None:
    recorder = Recorder()
    with pytest.raises(DestinationAuthError) as caught:
        push([changes(300)], emu.url, recorder=recorder, api_key=SECRET, api_key_env="MY_BRAZE_KEY")
    message = str(caught.value)
    assert "destination 'braze'" in message and "401" in message and "$MY_BRAZE_KEY" in message
    assert "instance" in message
    assert SECRET not in message
    assert caught.value.status == 401 and caught.value.exit_code == 2
    assert recorder.outcomes == []
    assert emu.state.profiles() == {}


def test_wrong_endpoint_is_404(emu: RunningEmulator) -> None:
    with pytest.raises(DestinationAuthError, match=r"404.*endpoint"):
        push([changes(5)], emu.url + "/api", recorder=Recorder())


@pytest.mark.parametrize(("status", "hint"), [(401, "key"), (403, "users.track"), (404, "endpoint")])
def test_auth_failure_mid_run_keeps_acknowledged_batches_only(status: int, hint: str) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return ok(request) if calls <= 2 else httpx.Response(status, json={"message": "nope"})

    recorder = Recorder()
    pulled = 0

    def chunks() -> Iterator[list[Change]]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield changes(75, start=i * 75)

    with pytest.raises(DestinationAuthError, match=hint):
        push(chunks(), "https://rest.iad-01.braze.com", recorder=recorder, transport=mock(handler), concurrency=1)
    assert [o.seq for o in recorder.outcomes] == [0, 1]
    assert calls == 3
    assert pulled < 10  # stopped at once: the rest was never read, let alone sent


def test_429_pauses_until_reset_and_uses_no_attempt() -> None:
    clock = FakeTime(1_800_000_001.0)
    state = EmulatorState(clock=clock)
    config = EmulatorConfig(rate_limit_requests=2, rate_limit_window_seconds=3.0, create_unknown_users=True)
    with serve_in_thread(config, state=state) as running:
        recorder = Recorder()
        counts = push([changes(8 * 75)], running.url, recorder=recorder, clock=clock, concurrency=4, max_attempts=1)
    assert counts.accepted == 600 and counts.failed == 0
    assert counts.rate_limited >= 1
    assert counts.requests == 8 + counts.rate_limited
    # No request went to the emulator before the window it was refused in had reset.
    assert state.stats()["requests"]["201"] == 8
    assert len(state.profiles()) == 600
    # 8 requests at 2 per 3-s window take 4 windows ([0,3) … [9,12) after 1.8e9): the last pair cannot go before 9 s.
    assert clock.t >= 1_800_000_000.0 + 3 * 3


def test_client_follows_ratelimit_headers_without_429s() -> None:
    clock = FakeTime(1_800_000_000.0)
    state = EmulatorState(clock=clock)
    config = EmulatorConfig(rate_limit_requests=3, rate_limit_window_seconds=3.0, create_unknown_users=True)
    with serve_in_thread(config, state=state) as running:
        counts = push([changes(10 * 75)], running.url, clock=clock, concurrency=1)
    assert counts.accepted == 750
    assert counts.rate_limited == 0
    assert "429" not in state.stats()["requests"]


def test_retry_after_is_honoured() -> None:
    clock = FakeTime(1_800_000_000.0)
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            headers = {"Retry-After": "7", "X-RateLimit-Reset": str(int(clock.t) + 1)}
            return httpx.Response(429, json={"message": "slow down"}, headers=headers)
        return ok(request)

    counts = push([changes(3)], "https://x.braze.com", transport=mock(handler), clock=clock)
    assert counts.accepted == 3 and counts.rate_limited == 1 and counts.retries == 1
    assert 7.0 <= sum(clock.sleeps) <= 7.0 + 0.3


def test_rate_limited_for_longer_than_the_budget_fails_the_batch() -> None:
    clock = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"X-RateLimit-Reset": str(int(clock.t) + 3600)})

    recorder = Recorder()
    counts = push(
        [changes(2)],
        "https://x.braze.com",
        recorder=recorder,
        transport=mock(handler),
        clock=clock,
        max_retry_seconds=60,
    )
    assert recorder.failed == {"c0": "rate_limited", "c1": "rate_limited"}
    assert counts.rate_limited == 1 and counts.requests == 1
    assert clock.t < 1_800_000_000.0 + 60  # it did not sit out the hour


def test_5xx_is_retried_with_backoff_then_succeeds() -> None:
    statuses = iter([503, 500])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(statuses, 201)
        return ok(request) if status == 201 else httpx.Response(status, text="<html>oops</html>")

    clock = FakeTime()
    recorder = Recorder()
    counts = push([changes(5)], "https://x.braze.com", recorder=recorder, transport=mock(handler), clock=clock)
    assert counts.accepted == 5 and counts.retries == 2 and counts.requests == 3
    (outcome,) = recorder.outcomes
    assert outcome.attempts == 3 and outcome.http_status == 201
    first, second = clock.sleeps
    assert 0 <= first <= 0.5 and 0 <= second <= 1.0  # exponential ceilings, full jitter below them


def test_retry_budget_exhausted_records_failures_and_the_run_goes_on() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if sent(request)[0]["external_id"] == "c0":
            return httpx.Response(503)
        return ok(request)

    recorder = Recorder()
    counts = push([changes(150)], "https://x.braze.com", recorder=recorder, transport=mock(handler), max_attempts=3)
    assert counts.failed == 75 and counts.accepted == 75
    assert set(recorder.failed.values()) == {"http_503"}
    failed_batch = next(o for o in recorder.outcomes if o.failed)
    assert failed_batch.attempts == 3 and failed_batch.http_status == 503


def test_timeouts_are_retried_within_max_retry_seconds() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    clock = FakeTime()
    recorder = Recorder()
    counts = push(
        [changes(2)],
        "https://x.braze.com",
        recorder=recorder,
        transport=mock(handler),
        clock=clock,
        max_attempts=100,
        max_retry_seconds=20,
    )
    assert set(recorder.failed.values()) == {"timeout"}
    assert 2 < counts.requests < 100
    assert sum(clock.sleeps) <= 20


class DroppingServer:
    """A raw loopback HTTP server that drops the first ``drops`` connections mid-request, then answers 201."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn, self.connections <= self.drops), daemon=True).start()

    def _handle(self, conn: socket.socket, drop: bool) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                if drop:
                    return  # close without an answer: a dropped connection
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                count = len(json.loads(body)["attributes"])
                answer = json.dumps({"message": "success", "attributes_processed": count}).encode()
                conn.sendall(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                    + b"Content-Length: %d\r\n\r\n" % len(answer)
                    + answer
                )

    def close(self) -> None:
        self.sock.close()


def test_dropped_connections_are_retried() -> None:
    server = DroppingServer(drops=2)
    try:
        recorder = Recorder()
        counts = push([changes(10)], server.url, recorder=recorder)
    finally:
        server.close()
    assert counts.accepted == 10 and counts.retries == 2 and counts.requests == 3
    assert recorder.outcomes[0].attempts == 3


def test_400_split_isolates_the_bad_object() -> None:
    requests: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        objects = sent(request)
        requests.append(len(objects))
        if any(o["external_id"] == "c41" for o in objects):
            return httpx.Response(400, json={"message": "Invalid attribute", "errors": ["bad value"]})
        return ok(request)

    recorder = Recorder()
    counts = push([changes(75)], "https://x.braze.com", recorder=recorder, transport=mock(handler))
    assert recorder.failed == {"c41": "Invalid attribute (bad value)"}
    assert len(recorder.accepted) == 74
    assert requests[0] == 75 and requests.count(1) >= 1
    assert counts.requests == len(requests) <= 2 * math.ceil(math.log2(75)) + 1
    (outcome,) = recorder.outcomes
    assert outcome.http_status == 400 and outcome.attempts == len(requests)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(200, text="<html>gateway</html>"), "bad_response: HTTP 200 with a body that is not JSON"),
        (httpx.Response(201, json={"message": "queued2"}), "bad_response: HTTP 201 with message 'queued2'"),
        (httpx.Response(201, json=["success"]), "bad_response: HTTP 201 with a JSON list"),
    ],
)
def test_a_2xx_that_is_not_success_is_retried_then_failed(answer: httpx.Response, reason: str) -> None:
    recorder = Recorder()
    counts = push(
        [changes(3)], "https://x.braze.com", recorder=recorder, transport=mock(lambda r: answer), max_attempts=2
    )
    assert counts.accepted == 0 and counts.failed == 3 and counts.requests == 2
    assert all(r.startswith(reason) for r in recorder.failed.values())


def test_202_queued_counts_as_accepted() -> None:
    answer = httpx.Response(202, json={"message": "queued"})
    counts = push([changes(3)], "https://x.braze.com", transport=mock(lambda r: answer))
    assert counts.accepted == 3


@pytest.mark.parametrize(
    "errors",
    [
        ["something went wrong"],
        "something went wrong",
        [{"type": "x", "input_array": "attributes", "index": 99}],
        [{"type": "x", "input_array": "events", "index": 0}],
        [{"type": "x", "index": "0"}],
    ],
)
def test_errors_that_name_no_object_fail_the_whole_batch_without_retry(errors: Any) -> None:
    answer = httpx.Response(201, json={"message": "success", "errors": errors})
    recorder = Recorder()
    counts = push([changes(3)], "https://x.braze.com", recorder=recorder, transport=mock(lambda r: answer))
    assert counts.failed == 3 and counts.accepted == 0 and counts.requests == 1
    assert all(reason for reason in recorder.failed.values())


def test_values_json_cannot_carry_fail_alone() -> None:
    batch = [Change("c0", {"p": 0.5}), Change("c1", {"p": float("nan")}), Change("c2", {"p": 0.7})]
    seen: list[list[dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(sent(request))
        return ok(request)

    recorder = Recorder()
    counts = push([batch], "https://x.braze.com", recorder=recorder, transport=mock(handler))
    assert [o["external_id"] for o in seen[0]] == ["c0", "c2"]
    assert recorder.failed["c1"].startswith("invalid_value")
    assert (counts.selected, counts.sent, counts.accepted, counts.failed) == (3, 2, 2, 1)


def test_one_object_per_customer_per_request() -> None:
    seen: list[list[dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(sent(request))
        return ok(request)

    batch = [Change("c0", {"a": 1}), Change("c1", {"a": 2}), Change("c0", {"b": 3})]
    counts = push([batch], "https://x.braze.com", transport=mock(handler))
    assert seen == [
        [
            {"external_id": "c0", "_update_existing_only": True, "a": 1, "b": 3},
            {"external_id": "c1", "_update_existing_only": True, "a": 2},
        ]
    ]
    assert counts.selected == 2 and counts.accepted == 2


def test_chunks_are_read_lazily_and_workers_run_concurrently() -> None:
    pulled = 0
    pulled_at_first_outcome: list[int] = []
    in_flight = 0
    most_in_flight = 0

    def chunks() -> Iterator[list[Change]]:
        nonlocal pulled
        for i in range(200):
            pulled += 1
            yield changes(75, start=i * 75)

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return ok(request)

    def on_batch(outcome: BatchOutcome) -> None:
        if not pulled_at_first_outcome:
            pulled_at_first_outcome.append(pulled)

    counts = asyncio.run(
        push_changes_async(
            chunks(),
            name="braze",
            destination=BrazeDestination(concurrency=4),
            api_key=KEY,
            on_batch=on_batch,
            transport=httpx.MockTransport(handler),
        )
    )
    assert counts.accepted == 200 * 75
    assert pulled_at_first_outcome[0] <= 10  # a few batches ahead of the workers, not the whole input
    assert most_in_flight == 4


def test_parallel_requests_never_share_a_customer() -> None:
    config = EmulatorConfig(latency_seconds=0.05, create_unknown_users=True)
    with serve_in_thread(config) as running:
        counts = push([changes(8 * 75)], running.url, concurrency=4)
        stats = running.state.stats()
    assert counts.accepted == 600
    assert stats["max_requests_in_flight"] == 4
    assert stats["violations"]["concurrent_user_writes"] == 0
    assert stats["violations"]["duplicate_users_in_request"] == 0


def test_non_native_values_are_sent_as_json_numbers_and_iso_times() -> None:
    import datetime as dt
    import decimal

    seen: list[list[dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(sent(request))
        return ok(request)

    values: dict[str, Any] = {
        "d": decimal.Decimal("0.25"),
        "t": dt.datetime(2026, 6, 30, 12, 0, tzinfo=dt.UTC),
        "o": object(),
    }
    batch = [Change("c0", {k: v for k, v in values.items() if k != "o"}), Change("c1", {"o": values["o"]})]
    recorder = Recorder()
    push([batch], "https://x.braze.com", recorder=recorder, transport=mock(handler))
    assert seen == [[{"external_id": "c0", "_update_existing_only": True, "d": 0.25, "t": "2026-06-30T12:00:00Z"}]]
    assert recorder.failed == {"c1": "invalid_value: values of type object cannot be sent to Braze"}
