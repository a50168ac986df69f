"""Which requests the console answers (pure).

Every request must name a loopback host in ``Host`` (or one the mount was given), so a page of
another site that a DNS name points at this port (DNS rebinding) reads nothing. An action is a
``POST`` of JSON whose ``Origin``, when the browser sends one, is this very origin: another
site's page cannot make a browser act (a form cannot send JSON, and a script of another origin
that tries needs a CORS preflight the console never grants).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

JSON_TYPES = ("application/json",)


def host_name(host: str) -> str:
    """The name part of a ``Host`` header: ``127.0.0.1:9000`` -> ``127.0.0.1``,
    ``[::1]:9000`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def refusal(method: str, headers: Mapping[str, str], hosts: frozenset[str] = frozenset()) -> str:
    """Why a request is refused ("" when it is not): a ``Host`` that is neither a loopback
    address nor one of `hosts`; for an action (not GET/HEAD), an ``Origin`` other than this
    origin, a cross-site ``Sec-Fetch-Site``, or a body that is not JSON (a form of another
    site could send it without asking first)."""
    host = headers.get("Host", "")
    name = host_name(host)
    if not (is_loopback(name) or name in hosts):
        return f"host {host!r} is not served here"
    if method in ("GET", "HEAD"):
        return ""
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.strip().lower():
            return f"cross-origin request from {origin!r} refused"
    elif headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return "cross-site request refused"
    ctype = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if ctype not in JSON_TYPES:
        return "an action is a POST of application/json"
    return ""
