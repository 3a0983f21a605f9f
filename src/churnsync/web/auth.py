"""Who may see the dashboard: anyone on this machine when it listens on loopback, else only token holders.

The token comes from the environment (``CHURNSYNC_DASHBOARD_TOKEN``), never from a file or the command line
(both end up in shell histories and process lists). A request carries it as ``Authorization: Bearer …``,
as ``X-Churnsync-Token``, or as the cookie that ``/login`` sets; everything else gets 401 (HTML requests
are sent to the login form).
"""

from __future__ import annotations

import hmac
import ipaddress
import socket

from churnsync.errors import ConfigError

TOKEN_ENV = "CHURNSYNC_DASHBOARD_TOKEN"
COOKIE = "churnsync_dashboard"
#: A token shorter than this is too easy to guess for a page reachable from the network.
MIN_TOKEN_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def required_token(host: str, token: str | None) -> str | None:
    """The token the app must check when bound to ``host`` (None on loopback without a token).

    Bound beyond loopback without a good token, it refuses: the dashboard shows every customer's predictions.
    """
    token = (token or "").strip() or None
    if is_loopback(host):
        return token
    if token is None:
        raise ConfigError(
            f"the dashboard would listen on {host} without a token",
            remedy=f"Export {TOKEN_ENV} with a long random value (`openssl rand -hex 24`), or use --host 127.0.0.1",
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{TOKEN_ENV} has {len(token)} characters, fewer than {MIN_TOKEN_LENGTH}",
            remedy="Use a long random value, e.g. `openssl rand -hex 24`",
        )
    return token


def token_matches(expected: str, given: str | None) -> bool:
    """Compare in constant time, so the answer's timing gives nothing away."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def allowed_hosts(host: str) -> list[str] | None:
    """Host headers to accept: on loopback only loopback names (a DNS-rebound page cannot read the dashboard)."""
    if not is_loopback(host):
        return None  # reachable under names we cannot know; the token guards it
    return sorted({"localhost", "127.0.0.1", "::1", "[::1]", host})
