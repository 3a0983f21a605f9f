"""Benchmark the Braze sync: client CPU per update, end-to-end rate, use of a rate limit, and the peer client.

Four measurements (each can be skipped):

1. ``client``: CPU seconds of this process (the sync client alone: batching, JSON, HTTP, answer parsing) per
   customer update pushed to a minimal sink in another process that answers ``201 {"message":"success"}`` at once.
   Goal: ≤ 13 CPU-µs per update (one process saturating Braze's 75,000 updates/s).
2. ``e2e``: N changed customers in a SQLite store, synced end to end (selection → journal → POST to the emulator
   in another process → acknowledged state), in customers/s.
3. ``limit``: the emulator limiting at 300 requests / 3 s: share of that limit the sync uses, and its failures.
   Goal: ≥ 95 %, no failures.
4. ``peer``: the ``braze-client`` package (``pip install braze-client 'tenacity>=8'`` into a throwaway venv, given
   by ``--peer-python``) pushing the same updates to the same emulator; the ratio of rates.

Defaults are small so ``make bench`` stays quick; docs/benchmarks.md used::

    python bench/sync.py --updates 1000000 --customers 1000000 --peer-updates 100000 \
        --peer-python .bench-peer/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from churnsync.config import AttributeSettings, BrazeDestination, settings_from_mapping
from churnsync.records import BatchOutcome, Change

KEY = "emulator-key"
_BODY = b'{"message":"success","attributes_processed":75}'
_RESPONSE = (b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s") % (
    len(_BODY),
    _BODY,
)


# -- the minimal sink (runs in a child process) ------------------------------------------------------------------


class _Sink(asyncio.Protocol):
    """HTTP/1.1 keep-alive: read a request by Content-Length, answer 201 at once, in one write."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower() + b"\r\n"
            start = head.find(b"content-length:") + 15
            length = int(head[start : head.find(b"\r\n", start)])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(_RESPONSE)


def serve_sink() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Sink, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def _child(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start a child process that prints its URL or port on its first line (stdout or stderr)."""
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    return process, line


def start_sink() -> tuple[subprocess.Popen[str], str]:
    process, port = _child([__file__, "_sink"])
    return process, f"http://127.0.0.1:{int(port)}"


def start_emulator(*extra: str) -> tuple[subprocess.Popen[str], str]:
    process, line = _child(["-m", "churnsync", "emulator", "--port", "0", "--create-unknown", *extra])
    url = line.split(" on ", 1)[1].split(" ", 1)[0]
    return process, url


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=10)


# -- measurements --------------------------------------------------------------------------------------------------


def changes(n: int, chunk: int = 5000) -> Iterator[list[Change]]:
    """n updates of 3 attributes (two numbers and a tier), as the store yields them."""
    tiers = ("low", "medium", "high")
    for start in range(0, n, chunk):
        yield [
            Change(f"c{i:09d}", {"churn_probability": (i % 100) / 100, "churn_risk": tiers[i % 3], "clv_365d": i * 0.5})
            for i in range(start, min(start + chunk, n))
        ]


def bench_client(updates: int, concurrency: int, engine: str = "aiohttp") -> dict[str, float]:
    """Client CPU per update. ``engine="h11"`` runs the same client on httpx's default transport, for reference."""
    import httpx

    from churnsync.sync.braze import push_changes

    transport = None
    if engine == "h11":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        transport = httpx.AsyncHTTPTransport(limits=limits)
    sink, url = start_sink()
    try:
        destination = BrazeDestination(endpoint=url, concurrency=concurrency)
        data = list(changes(updates))  # built before the clock starts: the store's selection is measured in e2e
        acknowledged = 0

        def on_batch(outcome: BatchOutcome) -> None:
            nonlocal acknowledged
            acknowledged += len(outcome.accepted)

        cpu, wall = time.process_time(), time.perf_counter()
        counts = push_changes(
            data, name="bench", destination=destination, api_key=KEY, on_batch=on_batch, transport=transport
        )
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        stop(sink)
    assert acknowledged == updates == counts.accepted, (acknowledged, counts.accepted, counts.failed)
    return {
        "updates": updates,
        "cpu_us_per_update": cpu / updates * 1e6,
        "updates_per_s": updates / wall,
        "requests": counts.requests,
    }


def _seed_store(url: str, customers: int) -> None:
    import numpy as np
    import pyarrow as pa

    from churnsync.store.store import AttributeStore

    rng = np.random.default_rng(1)
    with AttributeStore.open(url) as store:
        run = store.start_prediction_run(as_of=datetime.now(UTC), horizon_days=30, model_version="bench", details={})
        table = pa.table(
            {
                "customer_id": [f"c{i:09d}" for i in range(customers)],
                "churn_probability": np.round(rng.random(customers), 2),
                "churn_risk": np.array(["low", "medium", "high"], dtype=object)[rng.integers(0, 3, customers)],
                "clv_365d": np.round(rng.gamma(2.0, 100.0, customers), 2),
            }
        )
        store.write_predictions(run, table, AttributeSettings(rules={}))
        store.finish_prediction_run(run, status="succeeded", summary={})


def bench_e2e(customers: int, concurrency: int, folder: Path) -> dict[str, float]:
    from churnsync.pipeline import sync_destination
    from churnsync.store.store import AttributeStore

    url = f"sqlite:///{folder / 'e2e.db'}"
    _seed_store(url, customers)
    emulator, endpoint = start_emulator()
    try:
        settings = settings_from_mapping(
            {"store": {"url": url}, "destinations": {"braze": {"endpoint": endpoint, "concurrency": concurrency}}}
        )
        with AttributeStore.open(url) as store:
            cpu, wall = time.process_time(), time.perf_counter()
            report = sync_destination(settings, store, "braze", prediction_run_id=None, api_key=KEY)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        stop(emulator)
    assert report.status == "succeeded" and report.counts.accepted == customers, (report.status, report.details)
    return {
        "customers": customers,
        "seconds": wall,
        "customers_per_s": customers / wall,
        "client_cpu_us_per_customer": cpu / customers * 1e6,
    }


def bench_limit(seconds: float, concurrency: int, limit: int = 300) -> dict[str, float]:
    """Push more than the limit admits for ``seconds`` (whole windows); count requests accepted inside them."""
    from churnsync.sync.braze import push_changes

    window = 3.0
    windows = max(1, round(seconds / window))
    emulator, endpoint = start_emulator("--rate-limit", str(limit), "--rate-window", str(window))
    try:
        destination = BrazeDestination(
            endpoint=endpoint, concurrency=concurrency, rate_limit_requests=limit, rate_limit_window_seconds=window
        )
        time.sleep(window - time.time() % window)  # start at a window boundary (the emulator's windows are aligned)
        end = time.time() + windows * window
        accepted_in_time = 0

        def timed(chunks: Iterator[list[Change]]) -> Iterator[list[Change]]:
            for chunk in chunks:
                if time.time() >= end:
                    return
                yield chunk

        def on_batch(outcome: BatchOutcome) -> None:
            nonlocal accepted_in_time
            if time.time() < end and outcome.accepted:
                accepted_in_time += 1

        # Twice what the windows admit, in small chunks so that the producer stops soon after the end.
        counts = push_changes(
            timed(changes(int(2 * windows * limit * 75), chunk=75)),
            name="bench",
            destination=destination,
            api_key=KEY,
            on_batch=on_batch,
        )
        with httpx.Client() as client:
            stats = client.get(f"{endpoint}/_emulator/stats").json()
    finally:
        stop(emulator)
    return {
        "windows": windows,
        "limit_per_3s": limit,
        "requests_accepted_in_windows": accepted_in_time,
        "allowed": windows * limit,
        "used_share_of_limit": accepted_in_time / (windows * limit),
        "requests_429": stats["requests"].get("429", 0),
        "failed": counts.failed,
    }


def bench_peer(updates: int, peer_python: str, concurrency: int) -> dict[str, float]:
    """braze-client (sequential, requests-based) vs churnsync, same updates, same emulator, same run."""
    from churnsync.sync.braze import push_changes

    emulator, endpoint = start_emulator()
    script = f"""
import time
from braze.client import BrazeClient
client = BrazeClient(api_key={KEY!r}, api_url={endpoint!r})
tiers = ("low", "medium", "high")
start, cpu = time.perf_counter(), time.process_time()
for s in range(0, {updates}, 75):
    attrs = [{{"external_id": f"p{{i:09d}}", "churn_probability": (i % 100) / 100, "churn_risk": tiers[i % 3],
              "clv_365d": i * 0.5}} for i in range(s, min(s + 75, {updates}))]
    r = client.user_track(attributes=attrs)
    assert r["success"], r
print(time.perf_counter() - start, time.process_time() - cpu)
"""
    try:
        peer = subprocess.run([peer_python, "-c", script], capture_output=True, text=True, check=True)
        peer_seconds, peer_cpu = map(float, peer.stdout.strip().splitlines()[-1].split())
        destination = BrazeDestination(endpoint=endpoint, concurrency=concurrency)
        # Warm up (imports, first connection), as the peer's process did before its clock started.
        push_changes(changes(750), name="bench", destination=destination, api_key=KEY, on_batch=lambda _o: None)
        wall, cpu = time.perf_counter(), time.process_time()
        push_changes(changes(updates), name="bench", destination=destination, api_key=KEY, on_batch=lambda _o: None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        stop(emulator)
    return {
        "updates": updates,
        "peer_updates_per_s": updates / peer_seconds,
        "churnsync_updates_per_s": updates / wall,
        "speed_ratio": peer_seconds / wall,
        "peer_cpu_us_per_update": peer_cpu / updates * 1e6,
        "churnsync_cpu_us_per_update": cpu / updates * 1e6,
    }


def main() -> None:
    if sys.argv[1:] == ["_sink"]:
        serve_sink()
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=100_000, help="updates pushed to the sink (client CPU)")
    parser.add_argument("--customers", type=int, default=50_000, help="changed customers synced end to end")
    parser.add_argument("--limit-seconds", type=float, default=9.0, help="duration of the rate-limit measurement")
    parser.add_argument("--limit-requests", type=int, default=300, help="the emulator's limit per 3 s window")
    parser.add_argument("--peer-updates", type=int, default=20_000, help="updates pushed by the peer and by us")
    parser.add_argument("--peer-python", help="python of a venv with braze-client and tenacity>=8 (else: skipped)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument(
        "--only",
        choices=["client", "client-h11", "e2e", "limit", "peer"],
        action="append",
        help="run only these (repeatable); client-h11 is the same client on httpx's default transport",
    )
    args = parser.parse_args()
    only = set(args.only or ["client", "client-h11", "e2e", "limit", "peer"])
    results: dict[str, object] = {}
    if "client" in only:
        results["client"] = bench_client(args.updates, args.concurrency)
        print("client:", json.dumps(results["client"]), flush=True)
    if "client-h11" in only:
        results["client-h11"] = bench_client(args.updates, args.concurrency, engine="h11")
        print("client-h11:", json.dumps(results["client-h11"]), flush=True)
    if "e2e" in only:
        with tempfile.TemporaryDirectory() as folder:
            results["e2e"] = bench_e2e(args.customers, args.concurrency, Path(folder))
        print("e2e:", json.dumps(results["e2e"]), flush=True)
    if "limit" in only:
        results["limit"] = bench_limit(args.limit_seconds, args.concurrency, args.limit_requests)
        print("limit:", json.dumps(results["limit"]), flush=True)
    if "peer" in only:
        if args.peer_python and os.path.exists(args.peer_python):
            results["peer"] = bench_peer(args.peer_updates, args.peer_python, args.concurrency)
            print("peer:", json.dumps(results["peer"]), flush=True)
        else:
            print("peer: skipped (pass --peer-python, a venv with braze-client and tenacity>=8)", flush=True)


if __name__ == "__main__":
    main()
