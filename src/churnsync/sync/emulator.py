"""The Braze emulator: ``POST /users/track`` as Braze documents it, served on a real HTTP port.

Users point churnsync at it before they touch a real workspace; the tests and the demo use it too. It checks
what Braze checks (Bearer key, 75 objects per array, one identifier per object, attribute names and values,
``_update_existing_only``), answers the way Braze answers (201 with per-object ``errors``, 400, 401, 429 with
``X-RateLimit-*`` headers), keeps the profiles it was sent and counts what a Braze bill and a Braze support
engineer would look at: data points and contract violations.

Endpoints::

    POST /users/track                  Bearer auth, rate limited; faults injected as configured (FAULTS)
    POST /users/export/ids             Bearer auth, 250 requests/min; ≤ 50 external_ids or user_aliases per request
    GET  /_emulator/users              every profile: {external_id: {attribute: value}}
    GET  /_emulator/users/{id}         one profile (404 if unknown)
    POST /_emulator/users              {"external_ids": [...]}: pre-create known, empty profiles
    GET  /_emulator/stats              requests by status, objects, data points, violations
    POST /_emulator/reset              back to the initial state (profiles of known_external_ids, zero stats)

The request path is a short pipeline (authorize → admit under the rate limit → parse → validate → apply) so that
fault injection and ``/users/export/ids`` slot in as one more step or route.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from churnsync.errors import ChurnsyncError

__all__ = [
    "FAULTS",
    "EmulatorConfig",
    "EmulatorState",
    "RunningEmulator",
    "build_app",
    "parse_faults",
    "serve_forever",
    "serve_in_thread",
]

#: Braze's standard profile fields: a custom attribute may not use these names.
STANDARD_FIELDS = frozenset(
    {
        "country",
        "current_location",
        "date_of_first_session",
        "date_of_last_session",
        "dob",
        "email",
        "email_click_tracking_disabled",
        "email_open_tracking_disabled",
        "email_subscribe",
        "facebook",
        "first_name",
        "gender",
        "home_city",
        "image_url",
        "language",
        "last_name",
        "marked_email_as_spam_at",
        "phone",
        "push_subscribe",
        "push_tokens",
        "subscription_groups",
        "time_zone",
        "twitter",
    }
)
IDENTIFIER_KEYS = ("external_id", "user_alias", "braze_id", "email", "phone")
#: Keys with a meaning to Braze that are never attributes (besides the identifiers).
RESERVED_KEYS = frozenset({"_update_existing_only", "_merge_objects"})
MAX_KEY_LENGTH = 255
MAX_STRING_LENGTH = 255
ARRAYS = ("attributes", "events", "purchases")

# A string that holds nothing but a number: sent where a JSON number belongs, Braze coerces or drops it.
_NUMBER_STRING = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")

_NUMBER_START = frozenset("+-.0123456789")
_IDENTIFIER_SET = frozenset(IDENTIFIER_KEYS)
_NOT_ATTRIBUTES = _IDENTIFIER_SET | {"_update_existing_only"}
_FORBIDDEN_NAMES = STANDARD_FIELDS | RESERVED_KEYS

_MISSING_ID = "missing identifier: send one of external_id, user_alias, braze_id, email or phone"
_MANY_IDS = "more than one identifier: send exactly one of external_id, user_alias, braze_id, email or phone"


@dataclass(frozen=True)
class EmulatorConfig:
    """How the emulated workspace behaves. The defaults are Braze's documented ones."""

    api_key: str = "emulator-key"
    max_objects_per_array: int = 75
    #: Newer Braze contracts allow 50 objects in total per request; ``None`` = no total limit.
    max_objects_total: int | None = None
    rate_limit_requests: int = 3000
    rate_limit_window_seconds: float = 3.0
    #: Added to every answer of ``/users/track``; makes concurrent writes to one user observable.
    latency_seconds: float = 0.0
    #: ``True``: objects with ``_update_existing_only`` create unknown profiles anyway (Braze never does).
    create_unknown_users: bool = False
    #: Profiles that exist in the workspace before anything is sent (as empty profiles).
    known_external_ids: frozenset[str] = frozenset()
    #: Injected faults: the share of ``/users/track`` requests that get each (at most one per request; the
    #: request faults add up to at most 1), and for ``object`` the share of objects (see :data:`FAULTS`).
    faults: Mapping[str, float] = field(default_factory=dict)
    #: Seconds a "slow" fault holds the answer back.
    slow_seconds: float = 2.0
    #: Seed of the faults' random generator (the same seed, the same faults in the same request order).
    fault_seed: int = 0
    #: ``/users/export/ids``: Braze allows 250 requests per minute on newer workspaces, 50 ids per request.
    export_rate_limit_requests: int = 250
    export_rate_limit_window_seconds: float = 60.0
    max_export_ids: int = 50

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        bad = [k for k, p in self.faults.items() if not 0.0 <= p <= 1.0]
        share = sum(p for k, p in self.faults.items() if k in REQUEST_FAULTS and k not in bad)
        if share > 1.0 + 1e-9 and not unknown and not bad:
            raise ChurnsyncError(
                f"Braze emulator: the request faults' probabilities add up to {share:g}, more than 1",
                remedy=f"Each request gets at most one of {', '.join(REQUEST_FAULTS)}: keep their sum at most 1",
            )
        if unknown or bad:
            raise ChurnsyncError(
                f"Braze emulator: unknown faults {sorted(unknown)} or probabilities outside 0-1 for {sorted(bad)}",
                remedy=f"Use faults among {', '.join(FAULTS)} with probabilities from 0 to 1",
            )


#: The faults the emulator can inject, and what each does to one request.
FAULTS = {
    "429": "answer 429 with the rate-limit headers, apply nothing",
    "5xx": "answer 500 or 503 (JSON), apply nothing",
    "html": "answer 502 with an HTML error page (a proxy's), apply nothing",
    "slow": "hold the answer back slow_seconds (a client timeout may fire; the request is still applied)",
    "drop": "apply the request, then drop the connection before the body of the answer",
    "object": "per object: refuse it with a per-object error in a 201",
}


#: The faults drawn once per request, as disjoint shares: the configured probability is the realised share.
REQUEST_FAULTS = ("429", "5xx", "html", "slow", "drop")


def parse_faults(text: str) -> dict[str, float]:
    """``"429=0.05,5xx=0.02,drop=0.01"`` as a mapping (the emulator's ``--faults`` option)."""
    faults: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        try:
            faults[name.strip()] = float(value)
        except ValueError:
            raise ChurnsyncError(
                f"Braze emulator: fault {part!r} is not NAME=PROBABILITY",
                remedy="Write faults as 429=0.05,5xx=0.02,drop=0.01,slow=0.01,object=0.001,html=0.01",
            ) from None
    return faults


@dataclass
class _Stats:
    requests: Counter[int] = field(default_factory=Counter)
    objects_received: int = 0
    objects_applied: int = 0
    objects_failed: int = 0
    skipped_unknown: int = 0
    events_applied: int = 0
    purchases_applied: int = 0
    data_points: int = 0
    numbers_as_strings: int = 0
    over_limit_batches: int = 0
    concurrent_user_writes: int = 0
    duplicate_users_in_request: int = 0
    max_requests_in_flight: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    export_requests: int = 0

    def as_json(self, profiles: int) -> dict[str, Any]:
        return {
            "requests": {str(status): n for status, n in sorted(self.requests.items())},
            "requests_total": sum(self.requests.values()),
            "objects": {
                "received": self.objects_received,
                "applied": self.objects_applied,
                "failed": self.objects_failed,
                "skipped_unknown": self.skipped_unknown,
            },
            "events_applied": self.events_applied,
            "purchases_applied": self.purchases_applied,
            "data_points": self.data_points,
            "violations": {
                "numbers_as_strings": self.numbers_as_strings,
                "over_limit_batches": self.over_limit_batches,
                "concurrent_user_writes": self.concurrent_user_writes,
                "duplicate_users_in_request": self.duplicate_users_in_request,
            },
            "max_requests_in_flight": self.max_requests_in_flight,
            "faults": dict(sorted(self.faults.items())),
            "export_requests": self.export_requests,
            "profiles": profiles,
        }


@dataclass(frozen=True)
class _Item:
    """One validated object of a request: who it is for and what it writes."""

    array: str
    key: str  # the profile key: the external_id, or "<kind>:<value>" for the other identifiers
    by_external_id: bool
    update_only: bool
    attributes: dict[str, Any]
    numbers_as_strings: int


@dataclass(frozen=True)
class _Admission:
    allowed: bool
    limit: int
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class EmulatorState:
    """Profiles, stats and the rate-limit window of one emulated workspace. Thread-safe.

    The server thread writes it; tests and the CLI read it from other threads through the methods below,
    which return copies.
    """

    def __init__(
        self, *, known_external_ids: frozenset[str] = frozenset(), clock: Callable[[], float] = time.time
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._initial_ids = known_external_ids
        self._profiles: dict[str, dict[str, Any]] = {}
        self._other_profiles: dict[str, dict[str, Any]] = {}
        self._stats = _Stats()
        self._in_flight: Counter[str] = Counter()
        self._requests_in_flight = 0
        self._window_start = -math.inf
        self._window_used = 0
        self._export_window = (-math.inf, 0)
        self.reset()

    # -- inspection (any thread) -------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the initial state: the known ids as empty profiles, zero stats, a fresh rate window."""
        with self._lock:
            self._profiles = {external_id: {} for external_id in self._initial_ids}
            self._other_profiles = {}
            self._stats = _Stats()
            self._window_start = -math.inf
            self._window_used = 0
            self._export_window = (-math.inf, 0)

    def get_profile(self, external_id: str) -> dict[str, Any] | None:
        """A copy of one profile's attributes, ``None`` when the workspace does not know the id."""
        with self._lock:
            profile = self._profiles.get(external_id)
            return None if profile is None else copy.deepcopy(profile)

    def profiles(self) -> dict[str, dict[str, Any]]:
        """A copy of every profile identified by external_id: ``{external_id: {attribute: value}}``."""
        with self._lock:
            return copy.deepcopy(self._profiles)

    def other_profiles(self) -> dict[str, dict[str, Any]]:
        """Profiles addressed by user_alias, braze_id, email or phone, keyed ``"<kind>:<value>"``."""
        with self._lock:
            return copy.deepcopy(self._other_profiles)

    def add_known(self, external_ids: list[str]) -> int:
        """Create empty profiles for ``external_ids`` that do not exist yet; return how many were created."""
        with self._lock:
            created = 0
            for external_id in external_ids:
                if external_id not in self._profiles:
                    self._profiles[external_id] = {}
                    created += 1
            return created

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the counters (what ``GET /_emulator/stats`` shows)."""
        with self._lock:
            return self._stats.as_json(len(self._profiles) + len(self._other_profiles))

    # -- the request path (server thread) ------------------------------------------------------------------

    def count_response(self, status: int) -> None:
        with self._lock:
            self._stats.requests[status] += 1

    def count_export(self) -> None:
        with self._lock:
            self._stats.export_requests += 1

    def count_fault(self, fault: str, n: int = 1) -> None:
        with self._lock:
            self._stats.faults[fault] += n

    def count_over_limit(self) -> None:
        with self._lock:
            self._stats.over_limit_batches += 1

    def admit(self, limit: int, window: float) -> _Admission:
        """Count one request against the fixed window it falls in; refuse it when the window is used up."""
        with self._lock:
            now = self._clock()
            start = math.floor(now / window) * window
            if start != self._window_start:
                self._window_start = start
                self._window_used = 0
            # Braze's reset is whole epoch seconds; rounding up never invites a request too early.
            reset = math.ceil(start + window)
            if self._window_used >= limit:
                return _Admission(False, limit, 0, reset)
            self._window_used += 1
            return _Admission(True, limit, limit - self._window_used, reset)

    def admit_export(self, limit: int, window: float) -> _Admission:
        """:meth:`admit` for ``/users/export/ids``, which has its own limit."""
        with self._lock:
            start = math.floor(self._clock() / window) * window
            used = self._export_window[1] if self._export_window[0] == start else 0
            reset = math.ceil(start + window)
            if used >= limit:
                return _Admission(False, limit, 0, reset)
            self._export_window = (start, used + 1)
            return _Admission(True, limit, limit - used - 1, reset)

    def export(
        self, external_ids: list[str], aliases: list[tuple[str, str]], email: str | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Profiles as ``/users/export/ids`` shows them (custom attributes only), and the unknown ids."""
        users: list[dict[str, Any]] = []
        invalid: list[str] = []
        with self._lock:
            for external_id in external_ids:
                profile = self._profiles.get(external_id)
                if profile is None:
                    invalid.append(external_id)
                else:
                    users.append({"external_id": external_id, "custom_attributes": copy.deepcopy(profile)})
            for name, label in aliases:
                profile = self._other_profiles.get(f"user_alias:{label}:{name}")
                if profile is None:
                    invalid.append(name)
                else:
                    alias = {"alias_name": name, "alias_label": label}
                    users.append({"user_aliases": [alias], "custom_attributes": copy.deepcopy(profile)})
            if email is not None:
                profile = self._other_profiles.get(f"email:{email.lower()}")
                if profile is None:
                    invalid.append(email)
                else:
                    users.append({"email": email, "custom_attributes": copy.deepcopy(profile)})
        return users, invalid

    def current_window(self, limit: int, window: float) -> _Admission:
        """The rate-limit headers without counting a request (for answers that precede admission)."""
        with self._lock:
            now = self._clock()
            start = math.floor(now / window) * window
            used = self._window_used if start == self._window_start else 0
            return _Admission(used < limit, limit, max(limit - used, 0), math.ceil(start + window))

    def enter(self) -> None:
        """A ``/users/track`` request started (for the most-requests-in-flight figure)."""
        with self._lock:
            self._requests_in_flight += 1
            self._stats.max_requests_in_flight = max(self._stats.max_requests_in_flight, self._requests_in_flight)

    def leave(self) -> None:
        with self._lock:
            self._requests_in_flight -= 1

    def begin(self, keys: list[str]) -> None:
        """Mark a request's users in flight, counting users already being written by another request."""
        with self._lock:
            for key in keys:
                if self._in_flight[key]:
                    self._stats.concurrent_user_writes += 1
                self._in_flight[key] += 1

    def end(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                self._in_flight[key] -= 1
                if not self._in_flight[key]:
                    del self._in_flight[key]

    def apply(self, items: list[_Item], failed: int, duplicates: int, create_unknown: bool) -> tuple[int, int]:
        """Write validated objects to the profiles; return (attribute objects, data points) applied."""
        with self._lock:
            stats = self._stats
            stats.objects_received += len(items) + failed
            stats.objects_failed += failed
            stats.duplicate_users_in_request += duplicates
            attributes_applied = 0
            data_points = 0
            for item in items:
                stats.numbers_as_strings += item.numbers_as_strings
                table = self._profiles if item.by_external_id else self._other_profiles
                profile = table.get(item.key)
                if profile is None:
                    if item.update_only and not create_unknown:
                        stats.skipped_unknown += 1
                        continue
                    profile = table[item.key] = {}
                stats.objects_applied += 1
                if item.array == "events":
                    stats.events_applied += 1
                elif item.array == "purchases":
                    stats.purchases_applied += 1
                else:
                    attributes_applied += 1
                    data_points += len(item.attributes)
                    _write(profile, item.attributes)
            stats.data_points += data_points
            return attributes_applied, data_points


def _write(profile: dict[str, Any], attributes: dict[str, Any]) -> None:
    for name, value in attributes.items():
        if value is None:
            profile.pop(name, None)
        elif isinstance(value, dict):
            current = profile.get(name)
            values = list(current) if isinstance(current, list) else []
            for added in value.get("add", []):
                if added not in values:
                    values.append(added)
            removed = set(value.get("remove", []))
            profile[name] = [v for v in values if v not in removed]
        elif isinstance(value, list):
            profile[name] = list(dict.fromkeys(value))  # Braze keeps an array's values unique
        else:
            profile[name] = value


# -- validation (pure) ---------------------------------------------------------------------------------------


class _Invalid(Exception):
    """One object breaks the contract; its message is the ``type`` of the per-object error."""


def _short(name: str) -> str:
    return name if len(name) <= 40 else name[:40] + "…"


def _identify(obj: dict[str, Any]) -> tuple[str, bool]:
    """The profile key an object addresses, and whether it is an external_id."""
    present = obj.keys() & _IDENTIFIER_SET
    if len(present) == 2 and present == {"email", "phone"}:
        present = {"email"}  # the contract: with both, email identifies the user
    if len(present) != 1:
        raise _Invalid(_MANY_IDS if present else _MISSING_ID)
    (kind,) = present
    value = obj[kind]
    if kind == "user_alias":
        if not (
            isinstance(value, dict)
            and isinstance(value.get("alias_name"), str)
            and isinstance(value.get("alias_label"), str)
            and value["alias_name"]
            and value["alias_label"]
        ):
            raise _Invalid("'user_alias' must be an object with non-empty alias_name and alias_label")
        return f"user_alias:{value['alias_label']}:{value['alias_name']}", False
    if type(value) is not str or not value:
        raise _Invalid(f"'{kind}' must be a non-empty string")
    if len(value) > MAX_STRING_LENGTH:
        raise _Invalid(f"'{kind}' is longer than {MAX_STRING_LENGTH} characters")
    if kind == "external_id":
        return value, True
    return f"{kind}:{value.lower() if kind == 'email' else value}", False


def _check_name(name: str) -> None:
    if not name:
        raise _Invalid("invalid attribute name '': names must not be empty")
    if len(name) > MAX_KEY_LENGTH:
        raise _Invalid(f"invalid attribute name '{_short(name)}': longer than {MAX_KEY_LENGTH} characters")
    if name[0] == "$":
        raise _Invalid(f"invalid attribute name '{_short(name)}': names must not start with '$'")
    if name in STANDARD_FIELDS:
        raise _Invalid(f"invalid attribute name '{name}': a standard profile field, not a custom attribute")
    if name in RESERVED_KEYS:
        raise _Invalid(f"invalid attribute name '{name}': reserved by Braze")


def _check_strings(name: str, values: Any) -> None:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _Invalid(f"invalid value for '{_short(name)}': arrays must hold strings only")
    if any(len(v) > MAX_STRING_LENGTH for v in values):
        raise _Invalid(f"invalid value for '{_short(name)}': an array value is longer than {MAX_STRING_LENGTH}")


def _check_value(name: str, value: Any) -> int:
    """Raise :class:`_Invalid` for a value Braze refuses; return 1 for a number sent as a string, else 0."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise _Invalid(f"invalid value for '{_short(name)}': not a finite number")
        return 0
    if kind is int or kind is bool or value is None:
        return 0
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:
            raise _Invalid(f"invalid value for '{_short(name)}': longer than {MAX_STRING_LENGTH} characters")
        # The regex only runs on strings that could be numbers at all (cheap first-character test).
        if value and value.lstrip()[:1] in _NUMBER_START and _NUMBER_STRING.fullmatch(value.strip()):
            return 1
        return 0
    if kind is list:
        _check_strings(name, value)
        return 0
    if kind is dict and value and value.keys() <= {"add", "remove"}:
        for part in value.values():
            _check_strings(name, part)
        return 0
    raise _Invalid(
        f"invalid value for '{_short(name)}': expected a number, string, boolean, null, "
        "array of strings or {add/remove}"
    )


def _parse_object(array: str, obj: Any) -> _Item:
    if type(obj) is not dict:
        raise _Invalid("object is not a JSON object")
    key, by_external_id = _identify(obj)
    flag = obj.get("_update_existing_only")
    if flag is not None and type(flag) is not bool:
        raise _Invalid("'_update_existing_only' must be true or false")
    # With a user_alias Braze only updates unless told otherwise; with other identifiers it creates.
    update_only = flag if flag is not None else "user_alias" in obj
    if array == "events":
        if not isinstance(obj.get("name"), str) or not isinstance(obj.get("time"), str):
            raise _Invalid("an event needs a string 'name' and an ISO 8601 'time'")
        return _Item(array, key, by_external_id, update_only, {}, 0)
    if array == "purchases":
        needed = ("product_id", "currency", "time")
        price = obj.get("price")
        if not all(isinstance(obj.get(k), str) for k in needed) or type(price) not in (int, float):
            raise _Invalid("a purchase needs string 'product_id', 'currency', 'time' and a numeric 'price'")
        return _Item(array, key, by_external_id, update_only, {}, 0)
    attributes: dict[str, Any] = {}
    numbers_as_strings = 0
    for name, value in obj.items():
        if name in _NOT_ATTRIBUTES:
            continue  # identifiers (already checked) and the update flag
        if name in _FORBIDDEN_NAMES or not name or name[0] == "$" or len(name) > MAX_KEY_LENGTH:
            _check_name(name)
        numbers_as_strings += _check_value(name, value)
        attributes[name] = value
    return _Item(array, key, by_external_id, update_only, attributes, numbers_as_strings)


class _BadRequest(Exception):
    def __init__(self, message: str, errors: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


def _parse_body(raw: bytes) -> dict[str, list[Any]]:
    """The request's arrays; :class:`_BadRequest` for what Braze refuses as a whole."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("Invalid JSON", ["the request body is not valid JSON"]) from None
    if not isinstance(body, dict):
        raise _BadRequest("Invalid JSON", ["the request body must be a JSON object"])
    arrays: dict[str, list[Any]] = {}
    for name in ARRAYS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, list):
            raise _BadRequest("Invalid JSON", [f"'{name}' must be an array"])
        arrays[name] = value
    if not any(arrays.values()):
        raise _BadRequest("Missing input", ["send at least one object in attributes, events or purchases"])
    return arrays


def _over_limit(arrays: dict[str, list[Any]], config: EmulatorConfig) -> list[str]:
    errors = [
        f"'{name}' has {len(objs)} objects; at most {config.max_objects_per_array} per request"
        for name, objs in arrays.items()
        if len(objs) > config.max_objects_per_array
    ]
    total = sum(len(objs) for objs in arrays.values())
    if config.max_objects_total is not None and total > config.max_objects_total:
        errors.append(f"{total} objects in all; at most {config.max_objects_total} per request")
    return errors


# -- the app -------------------------------------------------------------------------------------------------

_HTML_ERROR = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


class _DroppedConnection(Exception):
    """Raised after the status line so that the server closes the connection mid-answer (a "drop" fault)."""


def _not_a_drop(record: logging.LogRecord) -> bool:
    """Keep uvicorn's log free of the tracebacks of connections dropped on purpose."""
    return not (record.exc_info and isinstance(record.exc_info[1], _DroppedConnection))


logging.getLogger("uvicorn.error").addFilter(_not_a_drop)


class _Dropped(Response):
    """An answer that starts and never finishes: the client sees the connection close (after the write)."""

    def __init__(self) -> None:
        super().__init__(status_code=201)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"100")]})
        raise _DroppedConnection("dropped by the emulator's fault injection")


def build_app(config: EmulatorConfig, state: EmulatorState | None = None) -> Starlette:
    """The emulator as an ASGI app (serve it with uvicorn, or use :func:`serve_in_thread`)."""
    if state is None:
        state = EmulatorState(known_external_ids=config.known_external_ids)
    expected_auth = f"Bearer {config.api_key}"
    rng = random.Random(config.fault_seed)  # used on the server's event loop only
    faults = config.faults

    def roll(fault: str) -> bool:
        p = faults.get(fault, 0.0)
        if p > 0.0 and rng.random() < p:
            state.count_fault(fault)
            return True
        return False

    request_faults = [(name, faults[name]) for name in REQUEST_FAULTS if faults.get(name, 0.0) > 0.0]

    def draw() -> str | None:
        """At most one request fault, from one draw over disjoint shares (20 % 5xx means 20 % of requests)."""
        if not request_faults:
            return None
        u = rng.random()
        for name, p in request_faults:
            if u < p:
                state.count_fault(name)
                return name
            u -= p
        return None

    async def answer(status: int, body: dict[str, Any], headers: dict[str, str]) -> Response:
        if config.latency_seconds > 0:
            await asyncio.sleep(config.latency_seconds)
        state.count_response(status)
        return JSONResponse(body, status_code=status, headers=headers)

    async def track(request: Request) -> Response:
        state.enter()
        try:
            return await handle_track(request)
        except ClientDisconnect:
            # The client gave up (its timeout) before its body arrived: nothing was applied, nobody to answer.
            return Response(status_code=499)
        finally:
            state.leave()

    async def handle_track(request: Request) -> Response:
        if request.headers.get("authorization") != expected_auth:
            window = state.current_window(config.rate_limit_requests, config.rate_limit_window_seconds)
            return await answer(401, {"message": "Invalid API key"}, window.headers())
        admission = state.admit(config.rate_limit_requests, config.rate_limit_window_seconds)
        headers = admission.headers()
        if not admission.allowed:
            return await answer(429, {"message": "API rate limit exceeded"}, headers)
        fault = draw()
        if fault == "429":
            return await answer(429, {"message": "API rate limit exceeded"}, {**headers, "X-RateLimit-Remaining": "0"})
        if fault == "5xx":
            status = rng.choice((500, 503))
            return await answer(status, {"message": "Internal Server Error"}, headers)
        if fault == "html":
            state.count_response(502)
            return HTMLResponse(_HTML_ERROR, status_code=502)
        if fault == "slow":
            await asyncio.sleep(config.slow_seconds)
        try:
            arrays = _parse_body(await request.body())
        except _BadRequest as bad:
            return await answer(400, {"message": bad.message, "errors": bad.errors}, headers)
        over = _over_limit(arrays, config)
        if over:
            state.count_over_limit()
            return await answer(400, {"message": "Max Input Length Exceeded", "errors": over}, headers)

        items: list[_Item] = []
        errors: list[dict[str, Any]] = []
        duplicates = 0
        writers: list[str] = []
        for name, objects in arrays.items():
            seen: set[str] = set()
            for index, obj in enumerate(objects):
                try:
                    if faults and roll("object"):
                        raise _Invalid("simulated: Braze could not process this object")
                    item = _parse_object(name, obj)
                except _Invalid as invalid:
                    errors.append({"type": str(invalid), "input_array": name, "index": index})
                    continue
                items.append(item)
                if item.key in seen:
                    duplicates += 1
                seen.add(item.key)
            if name == "attributes":
                writers = list(seen)

        state.begin(writers)
        try:
            if config.latency_seconds > 0:
                await asyncio.sleep(config.latency_seconds)
            state.apply(items, len(errors), duplicates, config.create_unknown_users)
        finally:
            state.end(writers)
        body: dict[str, Any] = {"message": "success"}
        if errors:
            body["errors"] = errors
        else:
            # Braze counts what it queued: objects it will skip as unknown users are in the count.
            body["attributes_processed"] = sum(1 for item in items if item.array == "attributes")
        if fault == "drop":
            return _Dropped()
        state.count_response(201)
        return JSONResponse(body, status_code=201, headers=headers)

    async def export_ids(request: Request) -> Response:
        state.count_export()
        if request.headers.get("authorization") != expected_auth:
            return JSONResponse({"message": "Invalid API key"}, status_code=401)
        admission = state.admit_export(config.export_rate_limit_requests, config.export_rate_limit_window_seconds)
        if not admission.allowed:
            return JSONResponse({"message": "API rate limit exceeded"}, status_code=429, headers=admission.headers())
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"message": "Invalid JSON"}, status_code=400, headers=admission.headers())
        ids = body.get("external_ids") or []
        aliases = body.get("user_aliases") or []
        email = body.get("email_address")
        if (
            not isinstance(ids, list)
            or not all(isinstance(i, str) for i in ids)
            or not isinstance(aliases, list)
            or not all(isinstance(a, dict) and {"alias_name", "alias_label"} <= a.keys() for a in aliases)
            or (email is not None and not isinstance(email, str))
        ):
            return JSONResponse(
                {"message": "external_ids must be strings; user_aliases objects with alias_name and alias_label"},
                status_code=400,
                headers=admission.headers(),
            )
        if len(ids) > config.max_export_ids or len(aliases) > config.max_export_ids:
            return JSONResponse(
                {"message": f"at most {config.max_export_ids} external_ids or user_aliases per request"},
                status_code=400,
                headers=admission.headers(),
            )
        users, invalid = state.export(ids, [(a["alias_name"], a["alias_label"]) for a in aliases], email)
        answer: dict[str, Any] = {"message": "success", "users": users}
        if invalid:
            answer["invalid_user_ids"] = invalid
        return JSONResponse(answer, status_code=201, headers=admission.headers())

    async def list_users(request: Request) -> Response:
        return JSONResponse(state.profiles())

    async def get_user(request: Request) -> Response:
        external_id = request.path_params["external_id"]
        profile = state.get_profile(external_id)
        if profile is None:
            return JSONResponse({"message": f"no profile with external_id '{external_id}'"}, status_code=404)
        return JSONResponse(profile)

    async def add_users(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        ids = body.get("external_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            return JSONResponse({"message": 'send {"external_ids": ["id", ...]}'}, status_code=400)
        return JSONResponse({"created": state.add_known(ids)}, status_code=201)

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"message": "reset"})

    app = Starlette(
        routes=[
            Route("/users/track", track, methods=["POST"]),
            Route("/users/export/ids", export_ids, methods=["POST"]),
            Route("/_emulator/users", list_users, methods=["GET"]),
            Route("/_emulator/users", add_users, methods=["POST"]),
            Route("/_emulator/users/{external_id:path}", get_user, methods=["GET"]),
            Route("/_emulator/stats", stats, methods=["GET"]),
            Route("/_emulator/reset", reset, methods=["POST"]),
        ]
    )
    app.state.emulator = state
    return app


# -- serving -------------------------------------------------------------------------------------------------


def _uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    # No logging set-up of our own (the caller owns logging); keep-alive long enough for a sync's pool.
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
    )


class RunningEmulator:
    """An emulator serving on a background thread; use as a context manager or call :meth:`stop`."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str, state: EmulatorState) -> None:
        self._server = server
        self._thread = thread
        self.url = url
        self.state = state

    def stop(self) -> None:
        """Shut the server down and wait for its thread (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def _bound_socket(host: str, port: int) -> Iterator[socket.socket]:
    """A listening-ready socket bound here, so that a busy port is our error and not uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without it every
    # response (headers and body are two writes) stalls ~40 ms on the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections made from here on wait in the backlog until the server runs
    except OSError as exc:
        sock.close()
        raise ChurnsyncError(
            f"Braze emulator: cannot listen on {host}:{port} ({exc.strerror or exc})",
            remedy="Choose another port, or 0 for any free one",
        ) from None
    try:
        yield sock
    except BaseException:
        sock.close()
        raise


def serve_in_thread(
    config: EmulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    state: EmulatorState | None = None,
) -> RunningEmulator:
    """Start the emulator on a background thread and return once it accepts connections.

    ``port=0`` takes a free port; the chosen one is in ``RunningEmulator.url``.
    """
    state = state if state is not None else EmulatorState(known_external_ids=config.known_external_ids)
    app = build_app(config, state)
    with _bound_socket(host, port) as sock:
        server = uvicorn.Server(_uvicorn_config(app, host, port))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="braze-emulator", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise ChurnsyncError(
                    f"Braze emulator: the server on {host}:{port} did not start within 10 s",
                    remedy="Check that the host address is one of this machine's",
                )
            time.sleep(0.005)
        url = _url(host, sock)
    return RunningEmulator(server, thread, url, state)


def _url(host: str, sock: socket.socket) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}"


def serve_forever(
    config: EmulatorConfig, *, host: str, port: int, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve the emulator in the foreground until SIGINT/SIGTERM (``churnsync emulator --port P``).

    ``on_ready`` receives the URL once the port is bound (``port=0`` picks a free one), e.g. to print it.
    """
    app = build_app(config)
    with _bound_socket(host, port) as sock:
        if on_ready is not None:
            on_ready(_url(host, sock))
        uvicorn.Server(_uvicorn_config(app, host, port)).run(sockets=[sock])
