"""The proxy's transport: client connections, backend connections, and the calls between.

The transport knows nothing of routing: what it needs from the proxy core is the small
:class:`Hooks` protocol (dispatch a request, take over an error reply or a lost call, note an
unreachable node), so it can be driven by in-memory fakes in tests.

* A :class:`ClientConn` frames requests, hands them to the router, and keeps an ordered queue
  of :class:`Call` objects so that a pipeline's replies go back in order, whatever backend
  answers first. At ``MAX_INFLIGHT`` queued calls (or when the client's socket buffer is
  full) it stops reading from the client until replies drain.
* A :class:`BackendConn` is one pipelined connection to a node with a FIFO of waiters; the
  router keeps a small pool of them per node, shared by every client, and writes each
  client's original request bytes onto them (one write per event-loop tick).
* When a backend connection is lost, requests not yet written to it are retried after the
  next layout (failover hiding); requests written whose reply never came get an "outcome
  unknown" error, except read-only ones, which are safe to send again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from cachefleet.resp import encode_command
from router.commands import Command
from router.framing import RequestFramer
from router.replies import ReplyScanner

Addr = tuple[str, int]
C = TypeVar("C", bound="Call")

MAX_INFLIGHT = 1024  # backend calls of one client (a split request counts each part)
RESUME_AT = 256
CLIENT_WRITE_HIGH = 1024 * 1024
QUERY_BUFFER_CAP = 64 * 1024 * 1024  # one client's unparsed and partly parsed request bytes
CLIENT_INFLIGHT_BYTES = 64 * 1024 * 1024  # one client's requests in flight + replies queued
PUBSUB_OUTPUT_LIMIT = 32 * 1024 * 1024  # client-output-buffer-limit pubsub, hard
MAX_CLIENTS_REPLY = b"-ERR max number of clients reached\r\n"
ASKING = b"*1\r\n$6\r\nASKING\r\n"
READONLY = b"*1\r\n$8\r\nREADONLY\r\n"
HELLO3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"


class Hooks(Protocol):
    """What connections need from the proxy core."""

    loop: asyncio.AbstractEventLoop
    #: Bytes of every client's requests in flight and replies not yet written (see
    #: :meth:`ClientConn.count`); over the budget, clients are not read from.
    inflight_bytes: int
    starving: bool  # some clients wait for room in the budget

    def over_budget(self) -> bool: ...

    def wake(self) -> None:
        """Resume the clients that wait for room in the budget, if there is room."""
        ...

    def starve(self, client: ClientConn) -> None:
        """`client` stopped reading for the global budget: resume it when there is room."""
        ...

    def client_opened(self, client: ClientConn) -> int:
        """Register a new client; returns its id, or 0 when it is refused (maxclients)."""
        ...

    def client_closed(self, client: ClientConn) -> None: ...

    def dispatch(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None: ...

    def client_error(self, client: ClientConn, kind: str, detail: str) -> None: ...

    def on_error_reply(self, call: Call, frame: bytes) -> bool:
        """A call got an error reply: True when the core took it over (redirect, retry)."""
        ...

    def on_call_lost(self, call: Call, written: bool, addr: Addr) -> None: ...

    async def connect(self, conn: BackendConn) -> None:
        """Open `conn`'s transport (``loop.create_connection``; a fake in tests)."""
        ...

    def node_unreachable(self, addr: Addr, exc: BaseException) -> None: ...

    def backend_closed(self, conn: BackendConn) -> None: ...

    def backend_protocol_error(self, conn: BackendConn, detail: str) -> None: ...


class Subscription(Protocol):
    """A client's pub/sub state (:class:`router.pubsub.PubSub`)."""

    def close(self) -> None: ...


class Waiter(Protocol):
    def on_reply(self, frame: bytes) -> None: ...

    def on_lost(self, written: bool, addr: Addr) -> None: ...


class _Discard:
    """Waiter for a reply nobody reads (connection handshake, ASKING)."""

    def on_reply(self, frame: bytes) -> None:
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

    def __init__(self, fut: asyncio.Future[bytes]) -> None:
        self.fut = fut

    def on_reply(self, frame: bytes) -> None:
        if not self.fut.done():
            self.fut.set_result(frame)

    def on_lost(self, written: bool, addr: Addr) -> None:
        if not self.fut.done():
            self.fut.set_exception(BackendLost(addr, written))


class Call:
    """One client request on its way: routed, maybe redirected or retried, then replied."""

    __slots__ = (
        "args",
        "asking",
        "client",
        "command",
        "deadline",
        "dedicated",
        "head_waiter",
        "on_done",
        "parent",
        "raw",
        "readonly",
        "redirects",
        "reply",
        "size",
        "slot",
        "target",
        "version",
    )  # fmt: skip

    def __init__(
        self,
        client: ClientConn,
        args: list[bytes],
        raw: bytes | None,
        slot: int | None = None,
        readonly: bool = False,
        command: Command | None = None,
    ) -> None:
        self.client = client
        self.args = args
        self.raw = raw
        self.reply: bytes | None = None
        self.slot = slot
        self.readonly = readonly
        self.command = command
        self.redirects = 0
        self.target: Addr | None = None
        self.asking = False
        self.version = -1
        self.deadline = 0.0
        self.parent: Merge | None = None
        self.head_waiter: asyncio.Future[None] | None = None
        self.on_done: Callable[[Call], None] | None = None
        self.dedicated = False
        self.size = 0  # bytes counted against the client's in-flight limit

    @property
    def payload(self) -> bytes:
        if self.raw is None:
            self.raw = encode_command(self.args)
        return self.raw

    def on_reply(self, frame: bytes) -> None:
        if frame[0] == 0x2D and self.client.hooks.on_error_reply(self, frame):  # '-'
            return
        self.finish(frame)

    def on_lost(self, written: bool, addr: Addr) -> None:
        self.client.hooks.on_call_lost(self, written, addr)

    def finish(self, frame: bytes) -> None:
        if self.reply is not None:
            return
        self.reply = frame
        if self.parent is not None:
            self.parent.part_done(len(frame))
        else:
            self.client.count(self, len(frame))
            self.client.deliver()
        if self.on_done is not None:
            self.on_done(self)


class Merge(Call):
    """A request answered from several backend calls (split by slot, or fanned out)."""

    __slots__ = ("left", "merge", "parts")

    def __init__(self, client: ClientConn, args: list[bytes], merge: Callable[[], bytes]) -> None:
        super().__init__(client, args, None)
        self.parts: list[Call] = []
        self.left = 0
        self.merge = merge

    def add(self, part: Call) -> Call:
        part.parent = self
        self.parts.append(part)
        self.left += 1
        self.client.parts += 1
        self.client.count(self, len(part.raw) if part.raw is not None else 16 * len(part.args))
        return part

    def part_done(self, size: int) -> None:
        self.left -= 1
        self.client.parts -= 1
        self.client.count(self, size)
        if self.left == 0:
            try:
                frame = self.merge()
            except Exception as exc:  # a merge never takes the router down
                frame = b"-ERR router: cannot merge replies: " + str(exc).encode() + b"\r\n"
            self.finish(frame)


class BackendConn(asyncio.Protocol):
    """One pipelined connection to a node: writes batched per loop tick, replies matched to
    waiters in FIFO order. With `on_push`, frames that no waiter expects (pub/sub messages)
    go there."""

    def __init__(
        self,
        hooks: Hooks,
        addr: Addr,
        *,
        readonly: bool = False,
        resp3: bool = False,
        on_push: Callable[[bytes], None] | None = None,
        on_close: Callable[[BackendConn], None] | None = None,
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
        self.replies += len(frames)
        for frame in frames:
            if self.on_push is not None and (not waiters or frame[0] == 0x3E):  # '>'
                self.on_push(frame)
            elif waiters:
                waiter = waiters.popleft()
                try:
                    waiter.on_reply(frame)
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


class ClientConn(asyncio.Protocol):
    """One client: request framing in, ordered replies out, back-pressure both ways."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.id = 0
        self.framer = RequestFramer(max_query=QUERY_BUFFER_CAP)
        self.queue: collections.deque[Call] = collections.deque()
        self.parts = 0  # backend calls of split requests beyond their one queue entry
        self.inflight_bytes = 0
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.transport: asyncio.Transport | None = None
        self.flush_scheduled = False
        self.closing = False
        self.closed = False
        self.reading_paused = False
        self.writing_paused = False
        self.protocol = 2
        self.name: bytes | None = None
        # A serial operation (EXEC, a blocking command, WATCH, pub/sub entry ...) holds later
        # requests here until it is done, as the engine would.
        self.held: collections.deque[tuple[list[bytes], bytes | None]] | None = None
        self.tx: list[tuple[list[bytes], bytes | None]] | None = None
        self.tx_dirty = False
        self.watch: tuple[int, BackendConn] | None = None
        self.dedicated: dict[Addr, BackendConn] = {}
        self.pubsub: Subscription | None = None
        self.peer = ""
        self.local = ""
        self.lib: tuple[bytes, bytes] = (b"", b"")  # CLIENT SETINFO LIB-NAME / LIB-VER
        self.connected_at = time.monotonic()

    @property
    def resp3(self) -> bool:
        return self.protocol == 3

    # -- asyncio callbacks ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        local = transport.get_extra_info("sockname")
        self.local = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else str(local)
        self.id = self.hooks.client_opened(self)
        if not self.id:
            self.closing = self.closed = True
            self.transport.write(MAX_CLIENTS_REPLY)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        requests, error = self.framer.feed(data)
        for args, raw in requests:
            if self.closing:
                return
            if self.held is not None:
                self.held.append((args, raw))
            else:
                self.hooks.dispatch(self, args, raw)
        if error is not None:
            self.hooks.client_error(self, "protocol_error", error.message)
            self.reply_now(error.reply)
            self.close_after_replies()
            return
        self.check_pressure()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.closing = True
        if self.id:
            self.hooks.client_closed(self)
        self.hooks.inflight_bytes -= self.inflight_bytes
        self.inflight_bytes = 0
        self.drop_state()
        for conn in list(self.dedicated.values()):
            conn.close()
        self.dedicated.clear()
        # Serial operations waiting for their turn must not wait forever.
        for call in self.queue:
            if call.head_waiter is not None and not call.head_waiter.done():
                call.head_waiter.cancel()
        self.queue.clear()
        self.held = None

    def drop_watch(self) -> None:
        """Forget the client's WATCH (UNWATCH, DISCARD, EXEC): its connection is closed."""
        if self.watch is not None:
            self.watch[1].close()
            self.watch = None

    def drop_state(self) -> None:
        """Forget the client's WATCH and subscriptions (RESET, disconnect)."""
        self.drop_watch()
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.check_pressure()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.check_pressure()

    # -- replies --------------------------------------------------------------------------

    def check_pressure(self) -> None:
        if self.transport is None or self.closed:
            return
        calls = len(self.queue) + self.parts + (len(self.held) if self.held is not None else 0)
        starved = self.hooks.over_budget()
        busy = (
            calls >= MAX_INFLIGHT
            or self.inflight_bytes > CLIENT_INFLIGHT_BYTES
            or self.writing_paused
            or starved
        )
        if busy and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
            if starved:
                self.hooks.starve(self)
        elif (
            self.reading_paused
            and not busy
            and calls <= RESUME_AT
            and self.inflight_bytes <= CLIENT_INFLIGHT_BYTES // 2
            and not self.closing
        ):
            self.reading_paused = False
            self.transport.resume_reading()

    def count(self, call: Call, size: int) -> None:
        """`size` more bytes held for `call` (its request, then its reply) until it is
        written back to the client."""
        if not self.closed:
            call.size += size
            self.inflight_bytes += size
            self.hooks.inflight_bytes += size

    def add(self, call: C) -> C:
        if call.raw is not None:
            self.count(call, len(call.raw))
        self.queue.append(call)
        return call

    def reply_now(self, frame: bytes) -> None:
        """A reply known at once, queued behind earlier ones."""
        call = Call(self, [], None)
        call.reply = frame
        self.queue.append(call)
        self.count(call, len(frame))
        self.deliver()

    def deliver(self) -> None:
        q = self.queue
        if self.closed:
            q.clear()
            return
        out = self.out
        freed = 0
        while q and q[0].reply is not None:
            call = q.popleft()
            reply = call.reply
            assert reply is not None
            out.append(reply)
            self.out_bytes += len(reply)
            freed += call.size
        if freed:
            self.inflight_bytes -= freed
            self.hooks.inflight_bytes -= freed
            if self.hooks.starving:
                self.hooks.wake()
        if q and q[0].head_waiter is not None and not q[0].head_waiter.done():
            q[0].head_waiter.set_result(None)
        if out and not self.flush_scheduled:
            self.flush_scheduled = True
            self.hooks.loop.call_soon(self.flush)
        elif self.reading_paused:
            self.check_pressure()

    def push(self, frame: bytes) -> None:
        """A frame outside the request/reply order (pub/sub messages). A subscriber that does
        not read is disconnected at PUBSUB_OUTPUT_LIMIT bytes, as the engine does."""
        if self.closed or self.transport is None:
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_bytes + self.transport.get_write_buffer_size() > PUBSUB_OUTPUT_LIMIT:
            self.hooks.client_error(
                self, "pubsub_output_limit", f"over {PUBSUB_OUTPUT_LIMIT} bytes"
            )
            self.out, self.out_bytes = [], 0
            self.closing = True
            self.transport.abort()
            return
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.hooks.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is None or self.closed:
            return
        if self.out:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out, self.out_bytes = [], 0
            self.transport.write(data)
        if self.closing and not self.queue:
            self.transport.close()
            return
        if self.reading_paused:
            self.check_pressure()

    def close_after_replies(self) -> None:
        self.closing = True
        self.held = None
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.queue and not self.flush_scheduled:
            self.flush_scheduled = True
            self.hooks.loop.call_soon(self.flush)

    async def wait_head(self, call: Call) -> None:
        """Until every reply queued before `call` went out (ordering for serial operations)."""
        if self.queue and self.queue[0] is not call and call in self.queue:
            call.head_waiter = self.hooks.loop.create_future()
            await call.head_waiter
