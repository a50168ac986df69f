"""Talking to one memcached node as the control plane does: `version` and `stats`.

The one place outside the router that speaks memcached's text protocol: zone agents (is the
node up? its state), `up` (wait for the nodes) and `status` (health) use it. Every call has
its own deadline and returns None when the node does not answer in time. A TLS cluster's nodes
and configuration endpoint are reached over TLS (verified against the cluster's CA).
"""

from __future__ import annotations

import asyncio
import contextlib

from cachefleet.tls import stream_options

MAX_REPLY = 1 << 20  # a `stats` reply is a few KB


async def call(host: str, port: int, request: bytes, *, timeout: float = 0.5) -> bytes | None:
    """Send one request line and read its reply: up to `END` for `stats`, else one line.
    None when the node refuses, times out or answers with more than MAX_REPLY bytes."""
    multi = request.split(b" ", 1)[0].strip() == b"stats"

    async def run() -> bytes | None:
        reader, writer = await asyncio.open_connection(host, port, **stream_options(host, port))
        try:
            writer.write(request)
            await writer.drain()
            buf = b""
            while len(buf) <= MAX_REPLY:
                chunk = await reader.read(65536)
                if not chunk:
                    return None
                buf += chunk
                if not multi and buf.endswith(b"\r\n"):
                    return buf
                if buf.endswith((b"END\r\n", b"ERROR\r\n")):
                    return buf
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(run(), timeout)
    except (OSError, TimeoutError, EOFError):
        return None


def parse_stats(reply: bytes) -> dict[str, str]:
    """`STAT name value` lines into a dict (other lines are ignored)."""
    out: dict[str, str] = {}
    for line in reply.split(b"\r\n"):
        parts = line.split(b" ", 2)
        if len(parts) == 3 and parts[0] == b"STAT":
            out[parts[1].decode("ascii", "replace")] = parts[2].decode("ascii", "replace")
    return out


async def stats(host: str, port: int, *, timeout: float = 0.5) -> dict[str, str] | None:
    reply = await call(host, port, b"stats\r\n", timeout=timeout)
    if reply is None or not reply.endswith(b"END\r\n"):
        return None
    return parse_stats(reply)


async def version(host: str, port: int, *, timeout: float = 0.5) -> str | None:
    """The node's version string, None when it does not answer."""
    reply = await call(host, port, b"version\r\n", timeout=timeout)
    if reply is None or not reply.startswith(b"VERSION "):
        return None
    return reply[8:].strip().decode("ascii", "replace")
