"""Backend connections: one pipelined connection to a node with a FIFO of waiters.

The core keeps a small pool of them per node, shared by every client, and writes each
client's original request bytes onto them (one write per event-loop tick). Replies are
framed by :class:`router.replies.ReplyScanner` and handed to the waiters in order. When the
connection is lost, each waiter learns whether its request had been written. What the
connection needs from the core is the small :class:`BackendHooks` protocol.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Protocol, cast

from router.replies import ReplyScanner

Addr = tuple[str, int]

ASKING = b"*1\r\n$6\r\nASKING\r\n"
READONLY = b"*1\r\n$8\r\nREADONLY\r\n"
HELLO3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"


class BackendHooks(Protocol):
    """What a backend connection needs from the proxy core."""

    loop: asyncio.AbstractEventLoop

    async def connect(self, conn: BackendConn) -> None:
        """Open `conn`'s transport (``loop.create_connection``; a fake in tests)."""
        ...

    def node_unreachable(self, addr: Addr, exc: BaseException) -> None: ...

    def backend_closed(self, conn: BackendConn) -> None: ...

    def backend_protocol_error(self, conn: BackendConn, detail: str) -> None: ...


class Waiter(Protocol):
    #: Replies this waiter still takes (a batch takes several, one after the other).
    left: int

    def on_reply(self, frame: bytes) -> None: ...

    def on_replies(self, frames: list[bytes]) -> None:
        """Several consecutive replies at once (only when ``left`` > 1)."""
        ...

    def on_lost(self, written: bool, addr: Addr) -> None: ...


class _Discard:
    """Waiter for a reply nobody reads (connection handshake, ASKING)."""

    left = 1

    def on_reply(self, frame: bytes) -> None:
        pass

    def on_replies(self, frames: list[bytes]) -> None:
        pass

    def on_lost(self, written: bool, addr: Addr) -> None:
        pass


DISCARD = _Discard()


class BackendLost(Exception):
    def __init__(self, addr: Addr, written: bool) -> None:
        super().__init__(f"connection to {addr[0]}:{addr[1]} lost")
        self.addr = addr
        self.written = written


class FutureWaiter:
    __slots__ = ("fut",)
    left = 1

    def __init__(self, fut: asyncio.Future[bytes]) -> None:
        self.fut = fut

    def on_replies(self, frames: list[bytes]) -> None:
        self.on_reply(frames[0])

    def on_reply(self, frame: bytes) -> None:
        if not self.fut.done():
            self.fut.set_result(frame)

    def on_lost(self, written: bool, addr: Addr) -> None:
        if not self.fut.done():
            self.fut.set_exception(BackendLost(addr, written))


class BackendConn(asyncio.Protocol):
    """One pipelined connection to a node: writes batched per loop tick, replies matched to
    waiters in FIFO order. With `on_push`, frames that no waiter expects (pub/sub messages)
    go there."""

    def __init__(
        self,
        hooks: BackendHooks,
        addr: Addr,
        *,
        readonly: bool = False,
        resp3: bool = False,
        on_push: Callable[[bytes], None] | None = None,
        on_close: Callable[[BackendConn], None] | None = None,
        login: bytes | None = None,
    ) -> None:
        self.hooks = hooks
        self.addr = addr
        self.readonly = readonly
        self.on_push = on_push
        self.on_close = on_close
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.out: list[bytes] = []
        self.unflushed = 0  # waiters at the tail whose request is not written yet
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.flush_scheduled = False
        self.scanner = ReplyScanner()
        self.replies = 0  # replies received so far: progress, for the request deadline
        self.pool_key: tuple[Any, int] | None = None
        if login is not None:  # AUTH as the client's user: the engine applies its ACL
            self.send(DISCARD, login)
        if resp3:
            self.send(DISCARD, HELLO3)
        if readonly:
            self.send(DISCARD, READONLY)
        self.connect_task = hooks.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(self.hooks.connect(self), timeout=2.0)
        except (OSError, TimeoutError, OverflowError) as exc:
            self.hooks.node_unreachable(self.addr, exc)
            self._fail()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.flush()

    def send(self, waiter: Waiter, data: bytes) -> None:
        """One FIFO entry: `waiter` takes ``waiter.left`` replies (a batch takes several)."""
        if self.closed:
            waiter.on_lost(False, self.addr)
            return
        self.waiters.append(waiter)
        self.out.append(data)
        self.unflushed += 1
        if self.transport is not None and not self.flush_scheduled:
            self.flush_scheduled = True
            self.hooks.loop.call_soon(self.flush)

    def send_nowait(self, data: bytes) -> None:
        """Write without a waiter: every frame back goes to `on_push` (pub/sub)."""
        if self.closed:
            return
        self.out.append(data)
        if self.transport is not None and not self.flush_scheduled:
            self.flush_scheduled = True
            self.hooks.loop.call_soon(self.flush)

    @property
    def written(self) -> int:
        """Requests written and not answered yet."""
        return len(self.waiters) - self.unflushed

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is None or self.closed or not self.out:
            return
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out = []
        self.unflushed = 0
        self.transport.write(data)

    async def request(self, *payloads: bytes) -> list[bytes]:
        """Send payloads (one request each) and wait for all their replies."""
        futs = []
        for p in payloads:
            fut: asyncio.Future[bytes] = self.hooks.loop.create_future()
            self.send(FutureWaiter(fut), p)
            futs.append(fut)
        return list(await asyncio.gather(*futs))

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.scanner.feed(data)
        except ValueError as exc:
            self.hooks.backend_protocol_error(self, str(exc))
            self.close()
            return
        waiters = self.waiters
        on_push = self.on_push
        n = len(frames)
        self.replies += n
        i = 0
        while i < n:
            frame = frames[i]
            if on_push is not None and (not waiters or frame[0] == 0x3E):  # '>'
                on_push(frame)
                i += 1
                continue
            if not waiters:
                break
            waiter = waiters[0]
            left = waiter.left
            try:
                if left == 1:
                    waiters.popleft()
                    i += 1
                    waiter.on_reply(frame)
                else:  # a batch: as many of its replies as there are, in one call
                    k = n - i if n - i < left else left
                    if k == left:
                        waiters.popleft()
                    i += k
                    waiter.on_replies(frames[i - k : i] if k != n else frames)
            except Exception as exc:  # one reply never tears down a shared connection
                self.hooks.backend_protocol_error(self, f"reply handling failed: {exc!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        else:
            self.connect_task.cancel()
            self._fail()

    def _fail(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.hooks.backend_closed(self)
        if self.on_close is not None:
            self.on_close(self)
        waiters, self.waiters = self.waiters, collections.deque()
        written = len(waiters) - self.unflushed
        self.out = []
        self.unflushed = 0
        for i, w in enumerate(waiters):
            w.on_lost(i < written, self.addr)
