"""Memcached proxy connections: a client's (framing in, replies out in request order) and a
node's (pipelined requests, replies framed by shape); both with bounded waits and buffers."""

from __future__ import annotations

import asyncio
import collections
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from cachefleet.security import source_allowed
from router.latency import LATENCY, LATENCY_BOUNDS
from router.memcache.protocol import Framer, Reply
from router.memcache.replies import ReplyFramer

if TYPE_CHECKING:
    from router.memcache.proxy import Proxy

BACKEND_TIMEOUT_S = 2.0
MAX_PENDING = 1024  # replies a client may be owed before its reading pauses
MAX_NODE_REPLY = 256 * 1024 * 1024  # one node reply; larger ones drop that node connection

Waiter = Callable[[bytes | None], None]
_now = time.monotonic


def discard(_reply: bytes | None) -> None:
    return None


class NodeConn(asyncio.Protocol):
    """One pipelined connection to one node: requests written in order, replies framed by
    their expected shapes and handed to their waiters in order (None when lost)."""

    def __init__(self, name: str, on_timeout: Callable[[str], None]) -> None:
        self.name = name
        self.on_timeout = on_timeout
        self.framer = ReplyFramer(max_reply=MAX_NODE_REPLY)
        self.waiters: collections.deque[tuple[Waiter, float]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.pending_out: list[bytes] = []
        self.closed = False
        self.retiring = False  # its node left the node list: closed once it has answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.pending_out:
            self.transport.write(b"".join(self.pending_out))
            self.pending_out = []

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.framer.feed(data)
        except ValueError:
            self.fail()
            return
        for reply in replies:
            waiter, _ = self.waiters.popleft()
            waiter(reply)
        if self.retiring and not self.waiters:
            self.fail()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail()

    def send(self, payload: bytes, shape: Reply, waiter: Waiter) -> None:
        """Queue a request; what every client sends this node in one turn of the event loop
        goes out in one write."""
        if self.closed:
            waiter(None)
            return
        self.framer.expect(shape)
        self.waiters.append((waiter, time.monotonic()))
        if not self.pending_out and self.transport is not None:
            asyncio.get_running_loop().call_soon(self._write)
        self.pending_out.append(payload)

    def _write(self) -> None:
        if self.pending_out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.pending_out))
        self.pending_out = []

    def retire(self) -> None:
        """The node left the node list: nothing new is sent; the connection closes once the
        requests already sent are answered (or time out), so none of them fails."""
        self.retiring = True
        if not self.waiters and not self.pending_out:
            self.fail()

    def fail(self) -> None:
        """The connection is done: every request still waiting is answered as lost."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter, _ in waiters:
            waiter(None)

    def expire(self, now: float) -> None:
        if self.waiters and now - self.waiters[0][1] > BACKEND_TIMEOUT_S:
            self.on_timeout(self.name)
            self.fail()


@dataclass(slots=True)
class Slot:
    data: bytes | None = None
    t0: float = 0.0  # when the packet that carried its request was read


class Client(asyncio.Protocol):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.framer = Framer(max_value=proxy.max_value)
        self.slots: collections.deque[Slot] = collections.deque()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.reading = True
        self.write_paused = False
        self.t_in = _now()  # when the last packet was read (its requests' start)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sources = self.proxy.allowed_sources
        if sources:
            peer = transport.get_extra_info("peername")
            host = peer[0] if isinstance(peer, tuple) else ""
            if not source_allowed(sources, host):  # closed without a word, as by a firewall
                self.closing = True
                self.proxy.log.info("client_refused_source", peer=host)
                self.transport.abort()
                return
        if len(self.proxy.clients) >= self.proxy.max_clients:
            self.transport.write(b"SERVER_ERROR too many open connections\r\n")
            self.transport.close()
            return
        self.proxy.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.clients.discard(self)
        self.closing = True

    def pause_writing(self) -> None:
        self.write_paused = True
        self._reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.t_in = _now()
        for req in self.framer.feed(data):
            self.proxy.dispatch(self, req)
            if self.closing:
                return
        if self.framer.error is not None:
            self.proxy.client_errors += 1
            self.reply(self.framer.error.reply)
            self.close_after_replies()
        self._reading()

    def slot(self) -> Slot:
        slot = Slot(None, self.t_in)
        self.slots.append(slot)
        return slot

    def reply(self, data: bytes) -> None:
        self.fill(self.slot(), data)

    def fill(self, slot: Slot, data: bytes) -> None:
        slot.data = data
        self.proxy.hold(len(data))  # counted until written to the client's socket
        if self.slots and self.slots[0] is slot:
            self.flush()

    def flush(self) -> None:
        """Move the replies that are ready, in order, to the output; written once per turn
        of the event loop."""
        slots = self.slots
        if slots and slots[0].data is not None:
            now = _now()
            counts = LATENCY.counts
            spent = 0.0
            while slots and slots[0].data is not None:
                slot = slots.popleft()
                data = slot.data
                assert data is not None
                if not self.out:
                    asyncio.get_running_loop().call_soon(self._write)
                self.out.append(data)
                took = now - slot.t0
                counts[bisect_left(LATENCY_BOUNDS, took)] += 1
                spent += took
            LATENCY.total += spent
        self._reading()

    def _write(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        written = sum(len(d) for d in self.out)
        self.out = []
        self.proxy.release(written)
        if self.closing and not self.slots and self.transport is not None:
            self.transport.close()

    def close_after_replies(self) -> None:
        self.closing = True
        self.flush()
        asyncio.get_running_loop().call_soon(self._write)  # closes once the replies are out

    def check_reading(self) -> None:
        self._reading()

    def _reading(self) -> None:
        """Back-pressure: stop reading a client that is owed too many replies or does not
        read what it is sent, and every client while the router holds more reply bytes than
        its budget."""
        if self.transport is None or self.transport.is_closing():
            return
        want = (
            not self.write_paused
            and len(self.slots) < MAX_PENDING
            and self.proxy.held <= self.proxy.budget
        )
        if want != self.reading:
            self.reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()
