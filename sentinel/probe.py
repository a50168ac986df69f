"""Probing one engine node: PING + INFO replication, pipelined, each probe with its own deadline.

A raw connection (hiredis parser) from the sentinel's zone address, kept open between probes
and dropped on any error or timeout, so a hung node costs one timed-out probe, never a stuck
task, and a busy event loop cannot make a probe wait for a reply it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import hiredis

from router.resp import encode_command


@dataclass(frozen=True)
class ProbeReply:
    role: str  # "master" | "slave"
    offset: int
    link_up: bool
    link_down_s: float
    master_addr: tuple[str, int] | None


def parse_info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def reply_from_info(info: dict[str, str]) -> ProbeReply:
    role = info.get("role", "")
    if role == "master":
        return ProbeReply("master", int(info.get("master_repl_offset", 0) or 0), True, 0.0, None)
    link_up = info.get("master_link_status") == "up"
    down_s = float(info.get("master_link_down_since_seconds", 0) or 0) if not link_up else 0.0
    if down_s < 0:  # the engine reports -1 when the link never came up
        down_s = float("inf")
    host, port = info.get("master_host"), info.get("master_port")
    addr = (host, int(port)) if host and port and port.isdigit() else None
    offset = int(info.get("slave_repl_offset", info.get("master_repl_offset", 0)) or 0)
    return ProbeReply("slave", offset, link_up, down_s, addr)


class NodeProber:
    def __init__(self, *, host: str, port: int, source: str | None = None) -> None:
        self.host, self.port, self.source = host, port, source
        self._lock = asyncio.Lock()  # one request in flight per connection
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def probe(self, timeout: float) -> ProbeReply | None:
        try:
            return await asyncio.wait_for(self._probe(), timeout)
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            hiredis.ProtocolError,
            ValueError,
        ):
            await self.close()
            return None

    async def call(self, *args: Any, timeout: float = 2.0) -> Any:
        """One command (used by the failover executor). A connection kept from before may be
        dead (the node restarted since): when it fails at once, the command is sent once
        more on a fresh connection — it never reached the node."""
        for attempt in range(2):
            reused = self._writer is not None
            try:
                return await asyncio.wait_for(self._request([args]), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if not reused or attempt:
                    return None
            except (OSError, TimeoutError, hiredis.ProtocolError):
                await self.close()
                return None
        return None

    async def _probe(self) -> ProbeReply | None:
        pong, info = await self._request([("PING",), ("INFO", "replication")])
        # Like Sentinel, -LOADING and -MASTERDOWN still count as a valid (alive) reply.
        if isinstance(pong, hiredis.ReplyError) and not str(pong).startswith(
            ("LOADING", "MASTERDOWN")
        ):
            return None
        if isinstance(info, hiredis.ReplyError):
            return ProbeReply("unknown", 0, False, float("inf"), None)
        return reply_from_info(parse_info(info.decode() if isinstance(info, bytes) else str(info)))

    async def _request(self, commands: list[tuple[Any, ...]]) -> Any:
        async with self._lock:
            return await self._request_locked(commands)

    async def _request_locked(self, commands: list[tuple[Any, ...]]) -> Any:
        if self._writer is None or self._writer.is_closing():
            local = (self.source, 0) if self.source else None
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, local_addr=local
            )
        assert self._reader is not None
        parser = hiredis.Reader(notEnoughData=Ellipsis)
        self._writer.write(b"".join(encode_command(list(c)) for c in commands))
        await self._writer.drain()
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = parser.gets()
            if reply is Ellipsis:
                chunk = await self._reader.read(65536)
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", None)
                parser.feed(chunk)
                continue
            replies.append(reply)
        return replies if len(commands) > 1 else replies[0]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None
