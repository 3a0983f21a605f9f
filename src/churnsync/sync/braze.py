"""Push changed attributes to Braze's ``POST /users/track``: exact under failure, as fast as the rate limit allows.

One :func:`push_changes_async` call is one sync run for one destination::

    chunks ──(lazy)──> batches of batch_size ──queue──> N workers ── httpx transport (keep-alive pool: aiohttp's
                                                                   connector, C-parsed HTTP/1.1)
                                                            │
                                   rate limiter (share of the workspace limit, follows X-RateLimit-*)
                                                            │
                               on_batch(BatchOutcome) once per batch, after its final answer

How each answer is handled (the contract in the Braze spec):

- 2xx ``success``: every object accepted, except those named by ``errors[]`` (``input_array``, ``index``).
  An ``errors`` entry that names no object (a plain string, say) fails the whole batch with its text.
  ``202 queued`` counts as accepted.
- 2xx with another ``message``, or a body that is not JSON: treated as a transient failure (retried like a
  5xx, because it is most likely a proxy or gateway answering for Braze and the write is idempotent), and
  failed with reason ``bad_response: …`` once the retry budget is spent. Never marked accepted.
- 400 / 413: nothing applied. The batch is split in halves, recursively, until the bad objects stand alone;
  a single object still refused fails with Braze's message.
- 401 / 403 / 404: :class:`DestinationAuthError` at once; the other workers are cancelled and unsent
  batches are not reported.
- 429: every worker pauses until ``X-RateLimit-Reset`` (or ``Retry-After``, whichever is later) plus
  jitter, then the request is repeated. 429s use no attempt, only time: past ``max_retry_seconds`` the
  batch fails with reason ``rate_limited``.
- 5xx, 408, timeouts, dropped connections: exponential backoff with full jitter, up to ``max_attempts``
  requests and ``max_retry_seconds``; then the batch fails with reason ``http_503``, ``timeout``, …
- any other status: the batch fails with reason ``http_<status>: <message>`` (retrying cannot help).

The API key only ever travels in the ``Authorization`` header: it is in no message and no log line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import email.utils
import importlib.metadata
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from churnsync.config import BrazeDestination
from churnsync.errors import ConfigError, DestinationAuthError
from churnsync.records import BatchOutcome, Change, ObjectFailure, SyncCounts

__all__ = ["batches", "build_payload", "encode_payload", "push_changes", "push_changes_async", "track_url"]

log = logging.getLogger(__name__)

#: First backoff ceiling; each transient failure doubles it, up to BACKOFF_CAP_SECONDS (full jitter below it).
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
#: Workers resume after a 429 pause spread over this share of the rate window, so they do not all hit at once.
JITTER_SHARE = 0.1
#: A window that is merely used up (no 429) reopens for everyone at once: a small spread is enough, and a large
#: one leaves the limit unused (0.1 of the window cost ~5 % of the limit in bench/sync.py).
CAPACITY_JITTER_SHARE = 0.01
#: Hosts where plain http is acceptable: the key never leaves the machine.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_REASON_LENGTH = 300

Sleep = Callable[[float], Awaitable[None]]
#: Called once per batch before its first request: (seq, the changes sent, the exact body).
OnSend = Callable[[int, list[Change], bytes], None]
Clock = Callable[[], float]


# -- payload -------------------------------------------------------------------------------------------------


def track_url(endpoint: str, name: str, *, allow_http: bool = False) -> str:
    """``{endpoint}/users/track``, refusing plain http anywhere but on this machine unless ``allow_http``."""
    try:
        url = httpx.URL(endpoint.strip())
    except httpx.InvalidURL as exc:
        raise ConfigError(
            f"destination '{name}': endpoint {endpoint!r} is not a URL ({exc})",
            remedy="Set endpoint to your instance's REST endpoint, e.g. https://rest.iad-01.braze.com",
        ) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(
            f"destination '{name}': endpoint {endpoint!r} is not an http(s) URL",
            remedy="Set endpoint to your instance's REST endpoint, e.g. https://rest.iad-01.braze.com",
        )
    if url.scheme == "http" and url.host not in LOOPBACK_HOSTS and not allow_http:
        raise ConfigError(
            f"destination '{name}': endpoint {endpoint!r} uses plain http, which would send the API key unencrypted",
            remedy="Use the https:// endpoint (plain http is allowed for localhost, e.g. the emulator, or with "
            "allow_insecure_http = true)",
        )
    return str(url).rstrip("/") + "/users/track"


def build_payload(changes: Sequence[Change], destination: BrazeDestination) -> dict[str, Any]:
    """The ``/users/track`` body for ``changes``: one attributes object per customer, names prefixed.

    >>> build_payload([Change("c1", {"churn_risk": "high"})], BrazeDestination(attribute_prefix="cs_"))
    {'attributes': [{'external_id': 'c1', '_update_existing_only': True, 'cs_churn_risk': 'high'}]}
    """
    return {"attributes": _objects(changes, destination)}


def _objects(changes: Sequence[Change], destination: BrazeDestination) -> list[dict[str, Any]]:
    """One attributes object per Change: identifier, update flag, then the attributes under their sent names."""
    prefix = destination.attribute_prefix
    rename = destination.attribute_rename
    base: dict[str, Any] = {"_update_existing_only": True} if destination.update_existing_only else {}
    identifier = destination.identifier
    label = destination.alias_label
    objects = []
    for change in changes:
        if identifier == "external_id":
            obj = {"external_id": change.customer_id, **base}
        elif identifier == "user_alias":
            obj = {"user_alias": {"alias_name": change.customer_id, "alias_label": label}, **base}
        else:
            obj = {"email": change.customer_id, **base}
        if rename:
            obj.update({prefix + rename.get(name, name): value for name, value in change.values.items()})
        elif prefix:
            obj.update({prefix + name: value for name, value in change.values.items()})
        else:
            obj.update(change.values)
        objects.append(obj)
    return objects


def _json_default(value: Any) -> Any:
    """JSON for values that are not JSON-native: numbers stay numbers (numpy, Decimal), times become ISO UTC."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    if type(value).__name__ in ("bool_", "bool"):  # numpy booleans
        return bool(value)
    if hasattr(value, "__index__"):  # numpy integers
        return int(value.__index__())
    if isinstance(value, decimal.Decimal) or hasattr(value, "__float__"):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    raise TypeError(f"values of type {type(value).__name__} cannot be sent to Braze")


def _encode(objects: list[dict[str, Any]]) -> bytes:
    return json.dumps({"attributes": objects}, separators=(",", ":"), allow_nan=False, default=_json_default).encode()


# -- rate limiting -------------------------------------------------------------------------------------------


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _reset_time(value: str | None, now: float) -> float | None:
    """``X-RateLimit-Reset`` as an epoch time; small values are read as seconds from now (some proxies)."""
    number = _number(value)
    if number is None:
        return None
    return number if number > 1e9 else now + max(number, 0.0)


def _retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) as an epoch time."""
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return now + max(seconds, 0.0)
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class RateLimiter:
    """Admits requests to stay within this run's share of the workspace limit, and follows Braze's headers.

    Two gates: a local window (``requests * share`` per ``window`` seconds) and what Braze last said
    (``X-RateLimit-Remaining`` until ``X-RateLimit-Reset``, which other tools on the workspace also draw
    from). A 429 closes both until its reset for every worker.
    """

    def __init__(
        self, *, requests: int, window: float, share: float, now: Clock, sleep: Sleep, rng: random.Random
    ) -> None:
        self._configured = max(1, math.floor(requests * share))
        self._cap = self._configured
        self._share = share
        self._window = window
        self._now = now
        self._sleep = sleep
        self._rng = rng
        self._window_end = -math.inf
        self._used = 0
        self._server_reset: float | None = None
        self._server_remaining = 0
        self._paused_until = -math.inf

    @property
    def capacity(self) -> int:
        """Requests this run may make per window (after what the server's ``X-RateLimit-Limit`` said)."""
        return self._cap

    def _jitter(self, share: float = JITTER_SHARE) -> float:
        return self._rng.uniform(0.0, self._window * share)

    async def acquire(self, deadline: float) -> bool:
        """Wait for a request slot; ``False`` (without waiting) when the wait would end after ``deadline``."""
        while True:
            t = self._now()
            share = JITTER_SHARE
            if self._paused_until > t:
                wait = self._paused_until - t
            else:
                share = CAPACITY_JITTER_SHARE
                if t >= self._window_end:
                    self._window_end = t + self._window
                    self._used = 0
                if self._server_reset is not None and t >= self._server_reset:
                    self._server_reset = None
                if self._used < self._cap and (self._server_reset is None or self._server_remaining > 0):
                    self._used += 1
                    if self._server_reset is not None:
                        self._server_remaining -= 1
                    return True
                if self._used >= self._cap:
                    wait = self._window_end - t
                else:
                    assert self._server_reset is not None
                    wait = self._server_reset - t
            wait = max(wait, 0.0) + self._jitter(share)
            if t + wait > deadline:
                return False
            await self._sleep(wait)

    def observe(self, headers: httpx.Headers) -> None:
        """Follow ``X-RateLimit-Limit/Remaining/Reset`` from any answer."""
        now = self._now()
        limit = _number(headers.get("x-ratelimit-limit"))
        if limit is not None and limit >= 1:
            self._cap = max(1, min(self._configured, math.floor(limit * self._share)))
        remaining = _number(headers.get("x-ratelimit-remaining"))
        reset = _reset_time(headers.get("x-ratelimit-reset"), now)
        if remaining is None or reset is None or reset <= now:
            return
        if self._server_reset is None or reset > self._server_reset + 0.5:
            # A new server window; answers from an older one (reordered by concurrency) are ignored below.
            self._server_reset = reset
            self._server_remaining = int(remaining)
        elif abs(reset - self._server_reset) <= 0.5:
            self._server_remaining = min(self._server_remaining, int(remaining))

    def pause(self, until: float) -> None:
        """Hold every worker until ``until`` (epoch seconds): after a 429."""
        self._paused_until = max(self._paused_until, until)


# -- one run -------------------------------------------------------------------------------------------------


@dataclass
class _Answer:
    """The final word on one payload: accepted (minus ``failed``), refused as a whole, or a bad request."""

    status: int
    kind: str  # "ok" | "failed" | "bad_request"
    reason: str = ""
    failed: dict[int, str] = field(default_factory=dict)


@dataclass
class _Settled:
    """What one batch came to so far, across its retries and split halves."""

    accepted: list[Change] = field(default_factory=list)
    failed: list[ObjectFailure] = field(default_factory=list)
    requests: int = 0


def _message(response: httpx.Response) -> str:
    """Braze's ``message`` (with any ``errors``) from a refusal, or the start of the body."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = str(body.get("message") or f"HTTP {response.status_code}")
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            details = [
                e if isinstance(e, str) else str(e.get("type", e)) if isinstance(e, dict) else str(e) for e in errors
            ]
            text = f"{text} ({'; '.join(details)})"
        return text[:_REASON_LENGTH]
    text = " ".join(response.text.split())[:_REASON_LENGTH]
    return text or f"HTTP {response.status_code}"


def _read_success(response: httpx.Response, count: int) -> _Answer | str:
    """Per-object outcome of a 2xx, or a transient ``bad_response`` reason when it is not a success."""
    status = response.status_code
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"bad_response: HTTP {status} with a body that is not JSON"
    if not isinstance(body, dict):
        return f"bad_response: HTTP {status} with a JSON {type(body).__name__}, not an object"
    message = body.get("message")
    if status == 202 and message == "queued":
        return _Answer(status, "ok")
    if message != "success":
        return f"bad_response: HTTP {status} with message {str(message)[:100]!r}, not 'success'"
    errors = body.get("errors")
    if not errors:
        return _Answer(status, "ok")
    if not isinstance(errors, list):
        return _Answer(status, "failed", reason=str(errors)[:_REASON_LENGTH])
    failed: dict[int, str] = {}
    unplaced: list[str] = []
    for error in errors:
        index = error.get("index") if isinstance(error, dict) else None
        if (
            isinstance(error, dict)
            and error.get("input_array", "attributes") == "attributes"
            and type(index) is int
            and 0 <= index < count
        ):
            failed[index] = str(error.get("type") or "refused by Braze")[:_REASON_LENGTH]
        else:
            unplaced.append(error if isinstance(error, str) else json.dumps(error, default=str))
    if unplaced:
        # An error we cannot pin on one object: nothing of this batch may be taken as accepted.
        return _Answer(status, "failed", reason="; ".join(unplaced)[:_REASON_LENGTH])
    return _Answer(status, "ok", failed=failed)


def _transport_problem(exc: BaseException) -> str:
    """``timeout`` or ``connection_error: <kind>`` for a request that got no HTTP answer.

    The aiohttp transport maps its errors to httpx's loosely (a dropped connection arrives as ``ConnectTimeout``):
    the original error, kept as the cause, decides.
    """
    cause = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ is not None else exc
    if isinstance(cause, TimeoutError | httpx.TimeoutException):  # aiohttp's ServerTimeoutError is a TimeoutError
        return "timeout"
    return f"connection_error: {type(cause).__name__}"


def _unique(batch: list[Change]) -> list[Change]:
    """The batch with one Change per customer (later values win): one object per user per request."""
    if len({c.customer_id for c in batch}) == len(batch):
        return batch
    merged: dict[str, dict[str, Any]] = {}
    for change in batch:
        merged.setdefault(change.customer_id, {}).update(change.values)
    return [Change(customer_id, values) for customer_id, values in merged.items()]


def _batches(chunks: Iterable[list[Change]], size: int) -> Iterator[list[Change]]:
    """Re-cut ``chunks`` into lists of ``size`` (the last may be shorter), pulling chunks only as needed."""
    pending: list[Change] = []
    for chunk in chunks:
        start = 0
        if pending:
            start = size - len(pending)
            pending.extend(chunk[:start])
            if len(pending) < size:
                continue
            yield pending
            pending = []
        while start + size <= len(chunk):
            yield list(chunk[start : start + size])
            start += size
        pending = list(chunk[start:])
    if pending:
        yield pending


class _Run:
    """The state of one sync run: client, limiter, counters."""

    def __init__(
        self,
        *,
        name: str,
        destination: BrazeDestination,
        transport: httpx.AsyncBaseTransport,
        headers: httpx.Headers,
        timeout: dict[str, float | None],
        url: httpx.URL,
        on_batch: Callable[[BatchOutcome], None],
        on_send: OnSend | None,
        sleep: Sleep,
        now: Clock,
        rng: random.Random,
    ) -> None:
        self.name = name
        self.destination = destination
        self.transport = transport
        self.headers = headers
        self.timeout = timeout
        self.url = url
        self.on_batch = on_batch
        self.on_send = on_send
        self.sleep = sleep
        self.now = now
        self.rng = rng
        self.counts = SyncCounts()
        self.limiter = RateLimiter(
            requests=destination.rate_limit_requests,
            window=destination.rate_limit_window_seconds,
            share=destination.rate_share,
            now=now,
            sleep=sleep,
            rng=rng,
        )

    # Each batch: encode, send, settle; then report.
    async def deliver(self, seq: int, batch: list[Change]) -> None:
        changes = _unique(batch)
        self.counts.selected += len(changes)
        deadline = self.now() + self.destination.max_retry_seconds
        objects = _objects(changes, self.destination)
        settled = _Settled()
        body, changes, objects = self._encodable(changes, objects, settled)
        status = 0
        if changes:
            if self.on_send is not None:  # the journal's "intended" row, committed before the first byte is sent
                self.on_send(seq, changes, body)
            self.counts.sent += len(changes)
            status = await self._settle(changes, objects, body, deadline, settled)
        outcome = BatchOutcome(
            seq=seq,
            accepted=settled.accepted,
            failed=settled.failed,
            http_status=status,
            attempts=settled.requests,
        )
        self.counts.accepted += len(outcome.accepted)
        self.counts.failed += len(outcome.failed)
        self.counts.data_points += outcome.data_points
        self.counts.failures.extend(outcome.failed)
        self.on_batch(outcome)

    def _encodable(
        self, changes: list[Change], objects: list[dict[str, Any]], settled: _Settled
    ) -> tuple[bytes, list[Change], list[dict[str, Any]]]:
        """The encoded body; objects with values JSON cannot carry (NaN, unknown types) fail here, alone."""
        try:
            return _encode(objects), changes, objects
        except (ValueError, TypeError):
            pass
        keep_changes, keep_objects = [], []
        for change, obj in zip(changes, objects, strict=True):
            try:
                _encode([obj])
            except ValueError:
                reason = "invalid_value: a number that is NaN or infinite (JSON cannot carry it)"
                settled.failed.append(ObjectFailure(change.customer_id, reason))
                continue
            except TypeError as exc:
                settled.failed.append(ObjectFailure(change.customer_id, f"invalid_value: {exc}"))
                continue
            keep_changes.append(change)
            keep_objects.append(obj)
        return _encode(keep_objects), keep_changes, keep_objects

    async def _settle(
        self,
        changes: list[Change],
        objects: list[dict[str, Any]],
        body: bytes,
        deadline: float,
        settled: _Settled,
    ) -> int:
        """Send one payload to its final answer, splitting on 400; return the deciding HTTP status."""
        answer = await self._exchange(body, len(objects), deadline, settled)
        if answer.kind == "ok" and not answer.failed:
            settled.accepted.extend(changes)
        elif answer.kind == "ok":
            for index, change in enumerate(changes):
                reason = answer.failed.get(index)
                if reason is None:
                    settled.accepted.append(change)
                else:
                    settled.failed.append(ObjectFailure(change.customer_id, reason))
        elif answer.kind == "failed" or len(changes) == 1:
            settled.failed.extend(ObjectFailure(c.customer_id, answer.reason) for c in changes)
        else:
            # 400: Braze applied nothing. Halve until the objects it refuses are alone.
            mid = len(changes) // 2
            for part in (slice(None, mid), slice(mid, None)):
                await self._settle(changes[part], objects[part], _encode(objects[part]), deadline, settled)
        return answer.status

    async def _exchange(self, body: bytes, count: int, deadline: float, settled: _Settled) -> _Answer:
        """POST one body until it has a final answer: 429s wait, transient failures back off."""
        failures = 0
        while True:
            if not await self.limiter.acquire(deadline):
                return _Answer(429, "failed", reason="rate_limited")
            self.counts.requests += 1
            settled.requests += 1
            status = 0
            try:
                response = await self._post(body)
            except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
                problem = _transport_problem(exc)
            else:
                status = response.status_code
                self.limiter.observe(response.headers)
                if 200 <= status < 300:
                    read = _read_success(response, count)
                    if isinstance(read, _Answer):
                        return read
                    problem = read
                elif status == 429:
                    self._pause_after_429(response)
                    self.counts.rate_limited += 1
                    self.counts.retries += 1
                    continue
                elif status in (401, 403, 404):
                    raise self._auth_error(status)
                elif status in (400, 413):
                    return _Answer(status, "bad_request", reason=_message(response))
                elif status >= 500 or status == 408:
                    problem = f"http_{status}"
                else:
                    return _Answer(status, "failed", reason=f"http_{status}: {_message(response)}")
            failures += 1
            delay = self.rng.uniform(0.0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (failures - 1)))
            if failures >= self.destination.max_attempts or self.now() + delay > deadline:
                log.warning("destination %s: giving up on a batch after %d attempts (%s)", self.name, failures, problem)
                return _Answer(status, "failed", reason=problem)
            log.info("destination %s: %s, retrying in %.2f s", self.name, problem, delay)
            self.counts.retries += 1
            await self.sleep(delay)

    async def _post(self, body: bytes) -> httpx.Response:
        """One POST straight on the transport, its body read.

        httpx's client layer (request merging, cookie jar, auth and redirect hooks) cost about a third of the CPU
        per request here and does nothing for this one fixed request: the transport is httpx's public API below it.
        """
        request = httpx.Request(
            "POST", self.url, headers=self.headers, content=body, extensions={"timeout": self.timeout}
        )
        response = await self.transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _pause_after_429(self, response: httpx.Response) -> None:
        now = self.now()
        until = _reset_time(response.headers.get("x-ratelimit-reset"), now)
        if until is None:
            until = now + self.destination.rate_limit_window_seconds
        retry_after = _retry_after(response.headers.get("retry-after"), now)
        if retry_after is not None:
            until = max(until, retry_after)
        log.info("destination %s: rate limited (429), pausing %.2f s", self.name, until - now)
        self.limiter.pause(until)

    def _auth_error(self, status: int) -> DestinationAuthError:
        where = f"destination '{self.name}': Braze answered {status} at {self.url}"
        env = self.destination.api_key_env
        if status == 401:
            message = f"{where} (the REST API key was not accepted)"
            remedy = (
                f"Check the key in ${env}, and that endpoint is the instance of the key's workspace "
                "(a key used on another instance also gives 401)"
            )
        elif status == 403:
            message = f"{where} (the REST API key lacks the users.track permission)"
            remedy = "Give the key the users.track permission in Braze (Settings → APIs and Identifiers)"
        else:
            message = f"{where} (no such endpoint)"
            remedy = "Set endpoint to your instance's REST endpoint, e.g. https://rest.iad-01.braze.com, without a path"
        return DestinationAuthError(message, remedy=remedy, status=status, destination=self.name)


def _version() -> str:
    try:
        return importlib.metadata.version("churnsync")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "dev"


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error in a task group's failure (cancellations of the other workers are noise)."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


async def push_changes_async(
    chunks: Iterable[list[Change]],
    *,
    name: str,
    destination: BrazeDestination,
    api_key: str,
    on_batch: Callable[[BatchOutcome], None],
    on_send: OnSend | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
    now: Clock = time.time,
    rng: random.Random | None = None,
) -> SyncCounts:
    """Send every Change in ``chunks`` to Braze; report each batch to ``on_batch`` after its final answer.

    ``chunks`` is read lazily (memory stays flat however many customers change); each customer must appear
    once in it. ``on_send`` (optional) runs before a batch's first request, with the exact body: the sync
    journals its intent there. ``on_batch`` runs on the event loop thread, one batch at a time: the caller records
    acknowledged state there. ``now`` must be wall-clock epoch seconds (it is compared with
    ``X-RateLimit-Reset``). Raises :class:`DestinationAuthError` on 401/403/404 (batches reported before
    stay reported) and :class:`ConfigError` for an endpoint that would expose the key.
    """
    url = track_url(destination.endpoint, name, allow_http=destination.allow_insecure_http)
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"churnsync/{_version()}",
    }
    if destination.bulk_header:
        headers["X-Braze-Bulk"] = "true"
    concurrency = destination.concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport is None:
        # httpx's API on aiohttp's keep-alive pool: its C HTTP parser costs about half the CPU per request of
        # httpx's default (pure-Python h11 over anyio), which decides whether one process can feed Braze's ceiling
        # (bench/sync.py). TLS verification stays on: there is no setting to turn it off.
        transport = AiohttpTransport(verify=True, limits=limits, trust_env=False)
    async with transport:
        run = _Run(
            name=name,
            destination=destination,
            transport=transport,
            headers=httpx.Headers(headers),
            timeout=httpx.Timeout(destination.timeout_seconds).as_dict(),
            url=httpx.URL(url),  # parsed once, not per request
            on_batch=on_batch,
            on_send=on_send,
            sleep=sleep,
            now=now,
            rng=rng if rng is not None else random.Random(),
        )
        # A short queue keeps only a few batches in memory ahead of the workers.
        queue: asyncio.Queue[tuple[int, list[Change]] | None] = asyncio.Queue(maxsize=concurrency)

        async def produce() -> None:
            for seq, batch in enumerate(_batches(chunks, destination.batch_size)):
                await queue.put((seq, batch))
            for _ in range(concurrency):
                await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                await run.deliver(*item)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(produce())
                for _ in range(concurrency):
                    group.create_task(work())
        except BaseExceptionGroup as failure:
            raise _first_error(failure) from None
    return run.counts


def push_changes(
    chunks: Iterable[list[Change]],
    *,
    name: str,
    destination: BrazeDestination,
    api_key: str,
    on_batch: Callable[[BatchOutcome], None],
    on_send: OnSend | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
    now: Clock = time.time,
    rng: random.Random | None = None,
) -> SyncCounts:
    """:func:`push_changes_async` for synchronous callers (runs its own event loop)."""
    return asyncio.run(
        push_changes_async(
            chunks,
            name=name,
            destination=destination,
            api_key=api_key,
            on_batch=on_batch,
            on_send=on_send,
            transport=transport,
            sleep=sleep,
            now=now,
            rng=rng,
        )
    )


def encode_payload(changes: Sequence[Change], destination: BrazeDestination) -> bytes:
    """The exact ``/users/track`` body :func:`push_changes` sends for ``changes`` (dry runs write it out)."""
    return _encode(_objects(changes, destination))


def batches(chunks: Iterable[list[Change]], size: int) -> Iterator[list[Change]]:
    """``chunks`` re-cut into requests of ``size`` customers, as :func:`push_changes` cuts them."""
    return _batches(chunks, size)
