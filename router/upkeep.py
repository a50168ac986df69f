"""Upkeep of the proxy (no request path): one-shot engine queries (command table, CLUSTER
SHARDS refresh), the request-deadline check of backend connections, and rate-limited logs
of per-client events."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from typing import Any

import hiredis

from cachefleet.resp import encode_command
from cachefleet.tls import client_context
from router.backend import Addr, BackendConn


async def query(addr: Addr, *args: bytes, timeout: float = 3.0, login: bytes | None = None) -> Any:
    """One request on a short-lived connection, its reply parsed by hiredis (after `login`,
    an AUTH request, when given)."""

    async def run() -> Any:
        tls = client_context(*addr)
        reader, writer = await asyncio.open_connection(
            *addr, ssl=tls, server_hostname=addr[0] if tls is not None else None
        )
        try:
            writer.write((login or b"") + encode_command(args))
            parser = hiredis.Reader(notEnoughData=Ellipsis)
            skip = 1 if login else 0
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError("connection closed")
                parser.feed(chunk)
                reply = parser.gets()
                while reply is not Ellipsis and skip:
                    skip -= 1
                    if isinstance(reply, hiredis.ReplyError):
                        raise ConnectionError(f"login refused: {reply}")
                    reply = parser.gets()
                if reply is not Ellipsis:
                    return reply
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


def stuck(
    conns: Iterable[BackendConn], seen: dict[int, tuple[int, float]], now: float, timeout: float
) -> list[BackendConn]:
    """Connections with requests written and no reply for `timeout` seconds. `seen` (id ->
    (replies seen, since when)) carries the progress from one check to the next."""
    out: list[BackendConn] = []
    alive: dict[int, tuple[int, float]] = {}
    for conn in conns:
        if conn.closed or not conn.written:
            continue
        replies, since = seen.get(id(conn), (-1, now))
        if replies != conn.replies:
            replies, since = conn.replies, now
        if now - since >= timeout:
            out.append(conn)
        else:
            alive[id(conn)] = (replies, since)
    seen.clear()
    seen.update(alive)
    return out


class RateLimitedLog:
    """At most `per_s` events of one kind per second; the count of dropped ones is reported
    with the next event that passes."""

    def __init__(self, log: Any, per_s: int = 10) -> None:
        self.log = log
        self.per_s = per_s
        self.window: dict[str, tuple[int, int]] = {}
        self.dropped: collections.Counter[str] = collections.Counter()

    def __call__(self, event: str, **fields: Any) -> None:
        now = int(time.monotonic())
        second, count = self.window.get(event, (now, 0))
        if second != now:
            second, count = now, 0
        if count >= self.per_s:
            self.dropped[event] += 1
            self.window[event] = (second, count)
            return
        self.window[event] = (second, count + 1)
        dropped = self.dropped.pop(event, 0)
        self.log.warning(event, **fields, **({"suppressed": dropped} if dropped else {}))
