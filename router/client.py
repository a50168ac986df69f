"""Client connections and the calls they wait for.

* A :class:`ClientConn` frames requests, hands them to the core (``dispatch``), and keeps an
  ordered queue of :class:`Call` objects so that a pipeline's replies go back in order,
  whatever backend answers first. It stops reading from the client at ``MAX_INFLIGHT``
  backend calls, at ``CLIENT_INFLIGHT_BYTES`` of requests and replies in flight, when the
  router's global byte budget is used up, or when the client's socket buffer is full, until
  replies drain.
* A :class:`Call` is one request on its way to a node: routed, maybe redirected or retried,
  then replied; a :class:`Merge` is a request answered from several calls.

What they need from the core is the small :class:`ClientHooks` protocol (dispatch a request,
take over an error reply or a lost call, count bytes), so they run on in-memory fakes in tests.
"""

from __future__ import annotations

import asyncio
import collections
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Protocol, TypeVar, cast

from cachefleet.resp import encode_command
from router.backend import Addr, BackendConn, BackendHooks
from router.commands import Command
from router.framing import CanonicalSplitter, Request, RequestFramer
from router.latency import LATENCY, LATENCY_BOUNDS

C = TypeVar("C", bound="Call")

MAX_INFLIGHT = 1024  # backend calls of one client (a split request counts each part)
RESUME_AT = 256
CLIENT_WRITE_HIGH = 1024 * 1024
QUERY_BUFFER_CAP = 64 * 1024 * 1024  # one client's unparsed and partly parsed request bytes
CLIENT_INFLIGHT_BYTES = 64 * 1024 * 1024  # one client's requests in flight + replies queued
PUBSUB_OUTPUT_LIMIT = 32 * 1024 * 1024  # client-output-buffer-limit pubsub, hard
MAX_CLIENTS_REPLY = b"-ERR max number of clients reached\r\n"

#: One per process: clients' packets are framed one at a time.
SPLITTER = CanonicalSplitter()

_now = time.monotonic


class ClientHooks(BackendHooks, Protocol):
    """What client connections and calls need from the proxy core."""

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
        """Register a new client; returns its id, or 0 when it is refused (maxclients), -1
        when its source address is not allowed (closed without a word, as by a firewall)."""
        ...

    def client_closed(self, client: ClientConn) -> None: ...

    def dispatch(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None: ...

    def dispatch_many(self, client: ClientConn, requests: list[Request]) -> None:
        """A packet's requests, in order (same-node runs of simple ones go out as batches)."""
        ...

    def client_error(self, client: ClientConn, kind: str, detail: str) -> None: ...

    def on_error_reply(self, call: Call, frame: bytes) -> bool:
        """A call got an error reply: True when the core took it over (redirect, retry)."""
        ...

    def on_call_lost(self, call: Call, written: bool, addr: Addr) -> None: ...


class Subscription(Protocol):
    """A client's pub/sub state (:class:`router.pubsub.PubSub`)."""

    def close(self) -> None: ...

    def layout_changed(self) -> None:
        """The routes changed: move subscriptions off nodes that no longer serve them."""
        ...


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
        "t0",
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
        self.t0 = client.t_in  # when the packet that carried it was read

    @property
    def payload(self) -> bytes:
        if self.raw is None:
            self.raw = encode_command(self.args)
        return self.raw

    left = 1  # replies it takes from its connection (a batch takes several)
    requests = 1  # client requests it answers (the request-duration histogram's weight)

    def on_replies(self, frames: list[bytes]) -> None:
        self.on_reply(frames[0])

    def on_reply(self, frame: bytes) -> None:
        if frame[0] == 0x2D and self.client.hooks.on_error_reply(self, frame):  # '-'
            return
        self.finish(frame)

    def on_lost(self, written: bool, addr: Addr) -> None:
        self.client.hooks.on_call_lost(self, written, addr)

    def frame(self, i: int) -> bytes:
        """The reply to this call's `i`-th request (a call carries one)."""
        return self.reply or b""

    def send_to(self, conn: BackendConn) -> None:
        conn.send(self, self.payload)

    def finish(self, frame: bytes) -> None:
        if self.reply is not None:
            return
        self.reply = frame
        if self.parent is not None:
            self.parent.part_done(len(frame))
        else:
            client = self.client
            if not client.closed:  # ClientConn.count, inlined: the hot path
                n = len(frame)
                self.size += n
                client.inflight_bytes += n
                client.hooks.inflight_bytes += n
            client.deliver()
        if self.on_done is not None:
            self.on_done(self)


def _merged() -> bytes:
    return b""


class Merge(Call):
    """A request answered from several backend calls (split by slot, or fanned out)."""

    __slots__ = ("left", "merge", "parts", "requests")

    def __init__(self, client: ClientConn, args: list[bytes], merge: Callable[[], bytes]) -> None:
        super().__init__(client, args, None)
        self.parts: list[Call] = []
        self.requests = 1
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
            # The merge function refers to the parts, and they to this merge: without this
            # cut, every split or scattered request would be garbage only the cyclic
            # collector frees, and its pauses were most of the router's p99.
            self.merge = _merged
            self.parts = []
            self.finish(frame)


#: A request of a batch: its arguments, bytes, slot, and whether it is read-only.
Item = tuple[list[bytes], bytes, int, bool, Command]


class Batch(Call):
    """Requests of one client for one node, written as one payload. In a pipeline, their
    replies, in order, are one entry of the client's queue; as a part of a :class:`Merge`
    (an MGET split by node), each reply is the merge's (:meth:`frame`). The common case costs
    one append per reply. An error reply (which may be a redirect to follow) or a lost
    connection puts one call per request in its place, each then followed, retried or
    answered as any call is."""

    __slots__ = ("frames", "items", "left", "lost", "requests", "subcalls")

    def __init__(self, client: ClientConn, items: list[Item]) -> None:
        super().__init__(client, [], b"".join([item[1] for item in items]))
        self.items = items
        self.left = len(items)
        self.frames: list[bytes] = []
        self.subcalls: list[Call] = []
        self.lost = False
        self.requests = len(items)
        client.parts += len(items) - 1  # each request counts against the in-flight limit

    def frame(self, i: int) -> bytes:
        if self.subcalls:
            return self.subcalls[i].reply or b""
        return self.frames[i]

    def on_reply(self, frame: bytes) -> None:
        self.on_replies([frame])

    def on_replies(self, frames: list[bytes]) -> None:
        got = self.frames
        got.extend(frames)
        self.left -= len(frames)
        if self.left == 0:
            for f in got:
                if f[0] == 0x2D:  # '-'
                    self.unbatch(None)
                    return
            self.client.parts -= len(got) - 1
            self.finish(b"".join(got))

    def on_lost(self, written: bool, addr: Addr) -> None:
        if not self.lost:  # once per batch, though each of its requests was a waiter
            self.lost = True
            self.unbatch((written, addr))

    def unbatch(self, lost: tuple[bool, Addr] | None) -> None:
        client = self.client
        client.parts -= len(self.items) - 1
        if client.closed:
            return
        parts = self.subcalls = [Call(client, *item) for item in self.items]
        for part in parts:
            part.version = self.version
        if self.parent is not None:
            for part in parts:
                self.parent.add(part)
        else:
            queue = client.queue
            try:
                at = queue.index(self)
            except ValueError:
                return
            del queue[at]
            client.uncount(self)
            for i, part in enumerate(parts):
                queue.insert(at + i, part)
                client.count(part, len(part.raw) if part.raw is not None else 0)
        frames, self.frames = self.frames, []
        for i, part in enumerate(parts):
            if i < len(frames):
                part.on_reply(frames[i])
            elif lost is not None:
                part.on_lost(*lost)
        if self.parent is not None:
            self.finish(b"")  # its parts answer for it now


class ClientConn(asyncio.Protocol):
    """One client: request framing in, ordered replies out, back-pressure both ways."""

    def __init__(self, hooks: ClientHooks, *, max_query: int = QUERY_BUFFER_CAP) -> None:
        self.hooks = hooks
        self.id = 0
        self.framer = RequestFramer(max_query=max_query)
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
        self.t_in = _now()  # when the last packet was read (its requests' start)
        self.protocol = 2
        self.name: bytes | None = None
        self.user: str | None = None  # None: not authenticated (or the router needs no AUTH)
        # A serial operation (EXEC, a blocking command, WATCH, pub/sub entry ...) holds later
        # requests here until it is done, as the engine would.
        self.held: collections.deque[tuple[list[bytes], bytes | None]] | None = None
        self.tx: list[tuple[list[bytes], bytes | None]] | None = None
        self.tx_dirty = False
        self.tx_bytes = 0  # bytes of the requests queued in MULTI
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
        if self.id <= 0:  # refused: 0 maxclients (said so), -1 a source not allowed (closed)
            self.closing = self.closed = True
            if self.id == 0:
                self.transport.write(MAX_CLIENTS_REPLY)
            self.id = 0
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.t_in = _now()
        if self.framer.idle:
            # Whole canonical requests at the start of the packet are framed in C; whatever
            # follows them goes through the framer.
            requests, used = SPLITTER.split(data)
            if requests:
                self.hooks.dispatch_many(self, requests)
                if used == len(data) or self.closing:
                    self.check_pressure()
                    return
                data = data[used:]
        requests, error = self.framer.feed(data)
        if requests:
            self.hooks.dispatch_many(self, requests)
        if self.closing:
            return
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
        if self.hooks.starving:
            self.hooks.wake()
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

    def uncount(self, call: Call) -> None:
        """Release the bytes held for `call`, which leaves the queue unanswered."""
        if not self.closed:
            self.inflight_bytes -= call.size
            self.hooks.inflight_bytes -= call.size
        call.size = 0

    def add(self, call: C) -> C:
        raw = call.raw
        if raw is not None and not self.closed:  # count(), inlined: the hot path
            n = len(raw)
            call.size += n
            self.inflight_bytes += n
            self.hooks.inflight_bytes += n
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
        if q and q[0].reply is not None:
            now = _now()
            counts = LATENCY.counts
            spent = 0.0
            while q and q[0].reply is not None:
                call = q.popleft()
                reply = call.reply
                assert reply is not None
                out.append(reply)
                self.out_bytes += len(reply)
                freed += call.size
                took = now - call.t0
                n = call.requests
                counts[bisect_left(LATENCY_BOUNDS, took)] += n
                spent += took * n
            LATENCY.total += spent
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
