"""Drift audit: read sampled profiles back through Braze's ``/users/export/ids`` and compare with what it acknowledged.

Braze's export endpoint takes 50 ids per request and 250 requests per minute (newer workspaces), so an audit
samples (``--sample 500`` = 10 requests) rather than diffs everything. Requests are paced to stay inside that
limit (``export_requests_per_minute``), and a 429 waits until ``X-RateLimit-Reset``.

A difference is one (customer, attribute) where Braze's value is not the acknowledged one (a missing profile
or attribute shows as ``None``). Acknowledged deletions (null) match a missing attribute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from churnsync.config import BrazeDestination
from churnsync.errors import DestinationAuthError, SyncError
from churnsync.records import Value
from churnsync.store import ledger
from churnsync.store.store import AttributeStore

__all__ = ["AuditReport", "Difference", "audit_destination"]

EXPORT_IDS_PER_REQUEST = 50
EXPORT_REQUESTS_PER_MINUTE = 250
_MISSING = object()


@dataclass(frozen=True)
class Difference:
    """One attribute of one customer where Braze disagrees with the acknowledged state."""

    customer_id: str
    attribute: str
    acknowledged: Value
    braze: Any


@dataclass
class AuditReport:
    """What an audit compared and found."""

    destination: str
    sampled: int = 0
    requests: int = 0
    missing_profiles: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def matching(self) -> int:
        """Sampled customers whose every acknowledged attribute matches."""
        differing = {d.customer_id for d in self.differences}
        return self.sampled - len(differing | set(self.missing_profiles))


def _same(acknowledged: Value, braze: Any) -> bool:
    if braze is _MISSING:
        return acknowledged is None
    if isinstance(acknowledged, float) and isinstance(braze, int | float) and not isinstance(braze, bool):
        return math.isclose(acknowledged, float(braze), rel_tol=1e-12, abs_tol=1e-12)
    return bool(acknowledged == braze)


def audit_destination(
    store: AttributeStore,
    name: str,
    destination: BrazeDestination,
    *,
    api_key: str,
    sample: int = 500,
    seed: int = 0,
    requests_per_minute: int = EXPORT_REQUESTS_PER_MINUTE,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> AuditReport:
    """Compare ``sample`` random acknowledged customers with their Braze profiles."""
    # Braze exports one email_address per request, 50 external ids or aliases.
    per_request = 1 if destination.identifier == "email" else EXPORT_IDS_PER_REQUEST
    state = ledger.sample_acknowledged(store, name, sample, seed)
    prefix, rename = destination.attribute_prefix, destination.attribute_rename
    report = AuditReport(destination=name, sampled=len(state))
    from churnsync.sync.braze import track_url

    # The same guard as the sync: never the key over plain http beyond localhost unless explicitly allowed.
    url = track_url(destination.endpoint, name, allow_http=destination.allow_insecure_http).removesuffix("/track")
    url += "/export/ids"
    interval = 60.0 / requests_per_minute
    ids = list(state)
    next_at = clock()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    with httpx.Client(headers=headers, timeout=destination.timeout_seconds, transport=transport) as client:
        for start in range(0, len(ids), per_request):
            part = ids[start : start + per_request]
            body: dict[str, Any] = {"fields_to_export": ["external_id", "user_aliases", "email", "custom_attributes"]}
            if destination.identifier == "external_id":
                body["external_ids"] = part
            elif destination.identifier == "user_alias":
                body["user_aliases"] = [{"alias_name": c, "alias_label": destination.alias_label} for c in part]
            else:
                body["email_address"] = part[0]
            _pace(sleep, clock, next_at)
            profiles = _export(client, url, body, name, report)
            next_at = clock() + interval
            for customer_id in part:
                profile = profiles.get(customer_id)
                if profile is None:
                    report.missing_profiles.append(customer_id)
                    continue
                for attribute, value in state[customer_id].items():
                    sent_name = prefix + rename.get(attribute, attribute)
                    braze = profile.get(sent_name, _MISSING)
                    if not _same(value, braze):
                        shown = None if braze is _MISSING else braze
                        report.differences.append(Difference(customer_id, attribute, value, shown))
    return report


def _pace(sleep: Callable[[float], None], clock: Callable[[], float], at: float) -> None:
    wait = at - clock()
    if wait > 0:
        sleep(wait)


def _export(
    client: httpx.Client,
    url: str,
    body: dict[str, Any],
    name: str,
    report: AuditReport,
) -> dict[str, dict[str, Any]]:
    """One export request (waiting out 429s): custom attributes per customer id as sent."""
    for _attempt in range(20):
        report.requests += 1
        try:
            response = client.post(url, json=body)
        except httpx.TransportError as exc:
            raise SyncError(
                f"destination '{name}': the drift audit could not reach {url} ({type(exc).__name__})",
                remedy="Check the endpoint and the network, then run the audit again",
            ) from None
        if response.status_code == 429:
            reset = float(response.headers.get("x-ratelimit-reset", "0") or 0)
            time.sleep(min(max(reset - time.time(), 0.0), 60.0) + 0.05)
            continue
        if response.status_code in (401, 403, 404):
            raise DestinationAuthError(
                f"destination '{name}': Braze answered {response.status_code} at {url}",
                remedy="The audit needs a key with the users.export.ids permission on this workspace's endpoint",
                status=response.status_code,
                destination=name,
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not (response.is_success and isinstance(answer, dict) and answer.get("message") == "success"):
            raise SyncError(
                f"destination '{name}': /users/export/ids answered {response.status_code} ({response.text[:200]!r})",
                remedy="Run the audit again later",
            )
        profiles: dict[str, dict[str, Any]] = {}
        for user in answer.get("users") or []:
            attributes = user.get("custom_attributes") or {}
            if "external_id" in user:
                profiles[str(user["external_id"])] = attributes
            for alias in user.get("user_aliases") or []:
                profiles[str(alias.get("alias_name"))] = attributes
            if "email" in user:
                profiles[str(user["email"])] = attributes
        return profiles
    raise SyncError(f"destination '{name}': /users/export/ids kept answering 429", remedy="Run the audit again later")
