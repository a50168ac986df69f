"""The primary and reader endpoints' hops (:mod:`router.standalone`): one backend connection
per client connection, bytes moved unparsed.

Forwarding is zero-copy: each direction of a hop is ``splice`` from the source socket into a
pipe and from the pipe into the destination socket, the bytes never entering this process,
driven by the loop's reader/writer callbacks; while a destination cannot take more, its
source is not read. ``CACHEFLEET_FORWARD=copy`` selects the earlier protocol-to-protocol
copy (uvloop when present) instead, for comparison (``bench/cmd_failover.py
--compare-forwarding`` on a quiet machine: the two even, 0.63x of the node directly at
``-P 16``; splice stays the default because the bytes never enter this process).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
from typing import TYPE_CHECKING, cast

from cachefleet.layout import LayoutNode

if TYPE_CHECKING:
    from router.standalone import Endpoint

CONNECT_TIMEOUT_S = 2.0
HIGH_WATER = 1 << 20
PIPE_SIZE = 1 << 20
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_splice = os.splice
ACCEPT_BATCH = 64


class _Half(asyncio.Protocol):
    """One side of a hop: what it receives goes to its peer's transport."""

    def __init__(self, hop: Hop) -> None:
        self.hop = hop
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: list[bytes] = []  # received before the peer is connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, but have its methods)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.hop.close()


class ClientHalf(_Half):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if not self.hop.endpoint.admits(peer[0] if isinstance(peer, tuple) else ""):
            self.hop.closed = True
            cast(asyncio.Transport, transport).abort()
            return
        self.hop.start(self)


class Joint:
    """What both ways of forwarding share: choose the node, open the backend within
    CONNECT_TIMEOUT_S (a node that cannot be reached is noted), give up if the layout moved
    on meanwhile, then join the two sides; and closing once."""

    endpoint: Endpoint
    target: str | None
    closed: bool
    task: asyncio.Task[None] | None

    async def _connect(self) -> None:
        ep = self.endpoint
        try:
            node = await ep.choose()
            if node is None or self.closed:
                self.close()
                return
            self.target = node.name
            await asyncio.wait_for(self._open(node), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            ep.router.note_unreachable(self.target)
            self.close()
            return
        if self.closed or not ep.still_valid(self.target):
            self.close()
            return
        self._join()

    async def _open(self, node: LayoutNode) -> None:
        """Connect the backend side to `node`."""
        raise NotImplementedError

    def _join(self) -> None:
        """Both sides are connected: start forwarding."""
        raise NotImplementedError

    def _release(self) -> None:
        """Close both sides."""
        raise NotImplementedError

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.hops.discard(self)
        self._release()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Hop(Joint):
    """One client connection and its backend connection."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.client: _Half | None = None
        self.backend: _Half | None = None
        self.target: str | None = None  # node name
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def start(self, client: _Half) -> None:
        self.client = client
        self.endpoint.hops.add(self)
        if client.transport is not None:
            client.transport.pause_reading()  # until the backend is connected
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _open(self, node: LayoutNode) -> None:
        loop = asyncio.get_running_loop()
        _, self.backend = await loop.create_connection(lambda: _Half(self), node.host, node.port)

    def _join(self) -> None:
        client, backend = self.client, self.backend
        assert client is not None and client.transport is not None
        assert backend is not None and backend.transport is not None
        backend.peer, client.peer = client, backend
        for chunk in client.pending:
            backend.transport.write(chunk)
        client.pending.clear()
        client.transport.resume_reading()

    def _release(self) -> None:
        for half in (self.client, self.backend):
            if half is not None and half.transport is not None:
                half.transport.close()


class _Pump:
    """One direction of a spliced hop: bytes go socket -> pipe -> socket inside the kernel
    (``splice``), driven by the loop's reader/writer callbacks; while the destination cannot
    take more, the source is not read (flow control)."""

    def __init__(self, hop: SpliceHop, src: int, dst: int) -> None:
        self.hop, self.src, self.dst = hop, src, dst
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0  # bytes in the pipe
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.loop.add_reader(self.src, self.readable)

    def readable(self) -> None:
        try:
            n = _splice(self.src, self.pipe_w, PIPE_SIZE, None, None, SPLICE_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self.hop.close()
            return
        if n == 0:  # the peer closed
            self.hop.close()
            return
        if not self.pending:  # the usual case: all of it goes on at once
            try:
                n -= _splice(self.pipe_r, self.dst, n, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                pass
            except OSError:
                self.hop.close()
                return
            if not n:
                return
        self.pending += n
        if not self.drain():
            self.loop.remove_reader(self.src)
            self.loop.add_writer(self.dst, self.writable)

    def drain(self) -> bool:
        """Move the pipe's bytes on; False while the destination cannot take them all."""
        while self.pending:
            try:
                n = _splice(self.pipe_r, self.dst, self.pending, None, None, SPLICE_FLAGS)
            except BlockingIOError:
                return False
            except OSError:
                self.hop.close()
                return True
            self.pending -= n
        return True

    def writable(self) -> None:
        if self.drain() and not self.hop.closed:
            self.loop.remove_writer(self.dst)
            self.loop.add_reader(self.src, self.readable)

    def close(self) -> None:
        self.loop.remove_reader(self.src)
        self.loop.remove_writer(self.dst)
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class SpliceHop(Joint):
    """A client socket and its backend socket joined by two pumps (zero-copy)."""

    def __init__(self, endpoint: Endpoint, client: socket.socket) -> None:
        self.endpoint = endpoint
        self.client = client
        self.backend: socket.socket | None = None
        self.target: str | None = None
        self.closed = False
        self.pumps: list[_Pump] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.endpoint.hops.add(self)
        self.task = asyncio.get_running_loop().create_task(self._connect())

    async def _open(self, node: LayoutNode) -> None:
        backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.backend = backend
        backend.setblocking(False)
        backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(backend, (node.host, node.port))

    def _join(self) -> None:
        assert self.backend is not None
        c, b = self.client.fileno(), self.backend.fileno()
        self.pumps = [_Pump(self, c, b), _Pump(self, b, c)]
        for pump in self.pumps:
            pump.start()

    def _release(self) -> None:
        for pump in self.pumps:
            pump.close()
        for sock in (self.client, self.backend):
            if sock is not None:
                sock.close()


def refuse(conn: socket.socket) -> None:
    """Close a connection from a source allowed_sources does not admit with a reset, without
    a word (as a packet filter would)."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def serve_spliced(endpoint: Endpoint, lsock: socket.socket) -> None:
    """Accept on `lsock` with the loop's reader callback; every connection becomes a
    SpliceHop."""

    def accept() -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not endpoint.admits(peer[0]):
                refuse(conn)
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            SpliceHop(endpoint, conn).start()

    asyncio.get_running_loop().add_reader(lsock.fileno(), accept)
