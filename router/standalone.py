"""The endpoints of a cluster-mode-disabled group: a primary endpoint and a reader endpoint.

Each is a byte-for-byte TCP hop, one backend connection per client connection, no request
parsing: the engine itself speaks to the client (so SELECT, MULTI, Lua, pub/sub and blocking
commands all work as on a single node). What the hop decides is only where a new connection
goes, from the layout the router follows on the bus:

* primary endpoint: the layout's primary. When a new layout names another primary, every
  connection to the old one is closed, so no client keeps writing to a demoted node; a client
  that connects while no primary is known waits (up to ``router.failover_wait_ms``).
* reader endpoint: the healthy replicas in turn (those in the router's zone first when it
  has one), the primary when no replica is healthy. Health is probed here (PING + INFO
  replication every probe interval): answering, a replica, link to its primary up.

Security stays the engines' own: a client's AUTH (or HELLO ... AUTH) reaches the node, which
answers NOAUTH, WRONGPASS or NOPERM itself, with its users, access strings and blocked
commands. With ``security.tls`` the hop still only moves bytes, to the node's TLS port: the
client's handshake is with the node, whose certificate carries 127.0.0.1 (the endpoints'
address) as well as its zone address, so the client verifies it as it would the endpoint's
(pass-through: no second handshake, no decryption here; the health probes speak TLS to the
nodes as the control plane's user). ``security.allowed_sources``: a connection from any other
source is reset as soon as it is accepted.

Layouts come from the bus and, as a fast path, from ``layout.json`` in the cluster's state
dir (written by the same call that publishes the layout, read as soon as its mtime changes):
on a busy machine the bus delivers a new layout 100-150 ms after it was published, about a
tenth of a failover. Both are validated against the plan; an older epoch never wins.

Forwarding is zero-copy: each direction of a hop is ``splice`` from the source socket into a
pipe and from the pipe into the destination socket, the bytes never entering this process,
driven by the loop's reader/writer callbacks; while a destination cannot take more, its
source is not read. ``CACHEFLEET_FORWARD=copy`` selects the earlier protocol-to-protocol
copy (uvloop when present) instead, for comparison (``bench/cmd_failover.py
--compare-forwarding``: at ``-P 16`` splice was ahead in 4 of 5 alternated rounds, best
323k against 292k ops/s; at ``-P 1`` even).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import structlog

from cachefleet import bus
from cachefleet.credentials import Credentials
from cachefleet.layout import Layout, LayoutError, LayoutNode
from cachefleet.nodes import NodeLink, Role
from cachefleet.plan import Plan, PlanFile
from cachefleet.security import source_allowed
from cachefleet.state import ClusterDir
from router.server import listen_socket, raise_nofile_limit, state_link

Addr = tuple[str, int]
HEALTH_INTERVAL_S = 0.25
HEALTH_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 2.0
HIGH_WATER = 1 << 20
LAYOUT_FILE_CHECK_S = 0.01
#: How a hop moves bytes: "splice" (zero-copy, socket -> pipe -> socket in the kernel) or
#: "copy" (asyncio protocols).
FORWARD = os.environ.get("CACHEFLEET_FORWARD", "splice")
PIPE_SIZE = 1 << 20
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_splice = os.splice
ACCEPT_BATCH = 64


def pick_reader(
    replicas: Sequence[LayoutNode],
    healthy: set[str],
    primary: LayoutNode | None,
    turn: int,
    zone: str | None = None,
) -> LayoutNode | None:
    """Where the reader endpoint sends connection number `turn`: the healthy replicas in
    turn (the router's zone first when it has healthy replicas there), else the primary."""
    up = [r for r in replicas if r.name in healthy]
    local = [r for r in up if zone is not None and r.zone == zone]
    pool = local or up
    if pool:
        return pool[turn % len(pool)]
    return primary


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


class _ClientHalf(_Half):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if not self.hop.endpoint.admits(peer[0] if isinstance(peer, tuple) else ""):
            self.hop.closed = True
            cast(asyncio.Transport, transport).abort()
            return
        self.hop.start(self)


class Hop:
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

    async def _connect(self) -> None:
        ep = self.endpoint
        try:
            node = await ep.choose()
            if node is None or self.closed:
                self.close()
                return
            self.target = node.name
            loop = asyncio.get_running_loop()
            _, backend = await asyncio.wait_for(
                loop.create_connection(lambda: _Half(self), node.host, node.port),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError):
            ep.router.note_unreachable(self.target)
            self.close()
            return
        if self.closed or not ep.still_valid(self.target):
            if backend.transport is not None:
                backend.transport.close()
            self.close()
            return
        client = self.client
        assert client is not None and client.transport is not None
        self.backend = backend
        backend.peer, client.peer = client, backend
        assert backend.transport is not None
        for chunk in client.pending:
            backend.transport.write(chunk)
        client.pending.clear()
        client.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.hops.discard(self)
        for half in (self.client, self.backend):
            if half is not None and half.transport is not None:
                half.transport.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()


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


class SpliceHop:
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

    async def _connect(self) -> None:
        ep = self.endpoint
        loop = asyncio.get_running_loop()
        try:
            node = await ep.choose()
            if node is None or self.closed:
                self.close()
                return
            self.target = node.name
            backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.backend = backend
            backend.setblocking(False)
            backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(loop.sock_connect(backend, (node.host, node.port)),
                                   CONNECT_TIMEOUT_S)  # fmt: skip
        except (OSError, TimeoutError):
            ep.router.note_unreachable(self.target)
            self.close()
            return
        if self.closed or not ep.still_valid(self.target):
            self.close()
            return
        c, b = self.client.fileno(), backend.fileno()
        self.pumps = [_Pump(self, c, b), _Pump(self, b, c)]
        for pump in self.pumps:
            pump.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.hops.discard(self)
        for pump in self.pumps:
            pump.close()
        for sock in (self.client, self.backend):
            if sock is not None:
                sock.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()


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


class Endpoint:
    """One listening port and its hops: `primary` or `reader`."""

    def __init__(self, router: StandaloneRouter, kind: str) -> None:
        self.router = router
        self.kind = kind
        self.hops: set[Hop | SpliceHop] = set()
        self.turn = 0

    def admits(self, host: str) -> bool:
        """Whether a client from `host` may connect (``security.allowed_sources``)."""
        sources = self.router.allowed_sources
        if not sources or source_allowed(sources, host):
            return True
        self.router.refused_sources += 1
        self.router.log.info("client_refused_source", peer=host, endpoint=self.kind)
        return False

    def protocol(self) -> _ClientHalf:
        return _ClientHalf(Hop(self))

    async def choose(self) -> LayoutNode | None:
        r = self.router
        if self.kind == "reader":
            self.turn += 1
            return pick_reader(r.replicas, r.healthy, r.primary, self.turn, r.zone)
        deadline = time.monotonic() + r.failover_wait_s
        while r.primary is None and time.monotonic() < deadline and not r.stop.is_set():
            r.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.changed.wait(), deadline - time.monotonic())
        return r.primary

    def still_valid(self, target: str | None) -> bool:
        """A primary-endpoint hop only while its node is still the primary."""
        if self.kind != "primary":
            return True
        return self.router.primary is not None and self.router.primary.name == target

    def drop_gone(self, members: set[str]) -> int:
        """Close every hop to a node that is no longer a member; how many were closed."""
        gone = [h for h in self.hops if h.target is not None and h.target not in members]
        for hop in gone:
            hop.close()
        return len(gone)

    def drop(self, keep: str | None) -> int:
        """Close every hop that does not go to `keep`; how many were closed."""
        gone = [h for h in self.hops if h.target != keep]
        for hop in gone:
            hop.close()
        return len(gone)


class StandaloneRouter:
    def __init__(
        self,
        *,
        plan: Plan,
        worker: int = 0,
        zone: str | None = None,
        admin: Credentials | None = None,
        plan_path: Path | None = None,
    ) -> None:
        settings = plan.topology.router
        self.plan = plan
        # `apply` writes plan.json before it publishes a layout naming new members
        self.plan_file = PlanFile(plan_path, plan) if plan_path is not None else None
        self.admin = admin
        self.worker = worker
        self.id = f"router-{worker}"
        self.zone = zone or settings.zone
        self.failover_wait_s = settings.failover_wait_ms / 1000
        self.log = structlog.get_logger("router").bind(cluster=plan.name, worker=worker)
        self.layout: Layout | None = None
        self.primary: LayoutNode | None = None
        self.replicas: tuple[LayoutNode, ...] = ()
        self.healthy: set[str] = set()
        self.changed = asyncio.Event()
        self.stop = asyncio.Event()
        self.writer = Endpoint(self, "primary")
        self.reader = Endpoint(self, "reader")
        # health probes speak as the control plane's user: they work with AUTH on as well
        self.links = {n.name: NodeLink(host=n.host, port=n.port, auth=admin) for n in plan.nodes}
        self.layouts_refused = 0
        self.connections_total = 0
        # CIDR blocks the endpoints admit clients from (empty: any source)
        self.allowed_sources = plan.topology.security.allowed_sources
        self.refused_sources = 0

    def on_bus_message(self, topic: str, payload: bytes) -> None:
        data = bus.decode(payload)
        if data is None or not topic.endswith("/layout"):
            return
        try:  # only this group's nodes at their planned addresses
            layout = self.validate(data)
        except LayoutError as exc:
            self.layouts_refused += 1
            self.log.warning("layout_refused", error=str(exc), refused=self.layouts_refused)
            return
        self.apply_layout(layout)

    def validate(self, data: Any) -> Layout:
        try:
            return Layout.from_dict(data, self.plan)
        except LayoutError:
            if self.plan_file is None or not self.plan_file.refresh():
                raise
            self.plan = self.plan_file.plan
            return Layout.from_dict(data, self.plan)

    def link(self, node: LayoutNode) -> NodeLink:
        """The health probe's link to a member (members `apply` adds get one when first seen)."""
        link = self.links.get(node.name)
        if link is None:
            link = NodeLink(host=node.host, port=node.port, auth=self.admin)
            self.links[node.name] = link
        return link

    def apply_layout(self, layout: Layout) -> None:
        if self.layout is not None and (layout.epoch < self.layout.epoch or layout == self.layout):
            return  # older, or the same one from the other source
        self.layout = layout
        shard = layout.shards[0] if layout.shards else None
        old = self.primary
        self.primary = shard.primary if shard else None
        self.replicas = shard.replicas if shard else ()
        new_name = self.primary.name if self.primary else None
        if old is not None and old.name != new_name:
            # the old primary is demoted (or being): no client may keep writing to it
            closed = self.writer.drop(new_name)
            self.log.info("primary_changed", old=old.name, new=new_name, closed=closed)
        members = {n.name for n in shard.nodes} if shard else set()
        self.reader.drop_gone(members)  # members `apply` removed: their nodes stop
        self.healthy &= members
        self.log.info("layout_applied", epoch=layout.epoch, primary=new_name)
        self.changed.set()

    async def follow_layout_file(self, path: Path) -> None:
        """The fast path: apply ``layout.json`` whenever it changes (validated like a bus
        message; a file mid-replace or damaged is skipped until the next change)."""
        seen: int | None = None
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), LAYOUT_FILE_CHECK_S)
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            if mtime == seen:
                continue
            seen = mtime
            try:
                layout = self.validate(json.loads(path.read_bytes()))
            except (OSError, ValueError, LayoutError):
                continue
            self.apply_layout(layout)

    def note_unreachable(self, name: str | None) -> None:
        if name is not None:
            self.healthy.discard(name)

    async def health_loop(self) -> None:
        """Which replicas the reader endpoint may use: answering, a replica, link up."""

        async def check(node: LayoutNode) -> tuple[str, bool]:
            rep = await self.link(node).probe(HEALTH_TIMEOUT_S)
            ok = rep is not None and rep.role is Role.REPLICA and rep.link_up
            return node.name, ok

        while not self.stop.is_set():
            results = await asyncio.gather(*(check(n) for n in self.replicas))
            self.healthy = {name for name, ok in results if ok}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), HEALTH_INTERVAL_S)

    def state(self, ops_per_sec: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": f"{self.plan.router_host}:{self.plan.router_port}",
            "reader_address": f"{self.plan.router_host}:{self.plan.reader_port}",
            "pid": os.getpid(),
            "worker": self.worker,
            "connections": len(self.writer.hops) + len(self.reader.hops),
            "ops_per_sec": round(ops_per_sec, 1),
            "epoch": self.layout.epoch if self.layout else 0,
            "primary": self.primary.name if self.primary else None,
            "healthy_replicas": sorted(self.healthy),
        }

    async def publish_state(self, link: bus.BusLink) -> None:
        topic = bus.topic(self.plan.name, "routers", self.id, "state")
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            # a byte hop does not count requests: connections are what it knows
            link.publish(topic, bus.encode(self.state(0.0)), retain=True)


async def run_standalone_router(
    plan: Plan,
    *,
    worker: int = 0,
    reuse_port: bool = False,
    zone: str | None = None,
    plan_path: Path | None = None,
) -> None:
    raise_nofile_limit()
    admin = None
    if plan_path is not None:
        root = plan_path.parent
        admin = ClusterDir(root.parent, root.name).admin()
    router = StandaloneRouter(plan=plan, worker=worker, zone=zone, admin=admin, plan_path=plan_path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, router.stop.set)
    assert plan.reader_port is not None
    servers = []
    listening = []
    for endpoint, port in ((router.writer, plan.router_port), (router.reader, plan.reader_port)):
        sock = listen_socket(plan.router_host, port, reuse_port=reuse_port)
        if FORWARD == "splice":
            serve_spliced(endpoint, sock)
            listening.append(sock)
        else:
            servers.append(await loop.create_server(endpoint.protocol, sock=sock))
    link, state_topic = state_link(plan, worker, router.id, router.on_bus_message, router.log)
    router.log.info(
        "router_started",
        primary_endpoint=f"{plan.router_host}:{plan.router_port}",
        reader_endpoint=f"{plan.router_host}:{plan.reader_port}",
        zone=router.zone,
        worker=worker,
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(link.run(router.stop, final=[(state_topic, b"offline")]), name="router.bus")
        tg.create_task(router.health_loop(), name="router.health")
        if plan_path is not None:
            layout_file = plan_path.with_name("layout.json")
            tg.create_task(router.follow_layout_file(layout_file), name="router.layout_file")
        tg.create_task(router.publish_state(link), name="router.state")
        await router.stop.wait()
        for server in servers:
            server.close()
        for sock in listening:
            loop.remove_reader(sock.fileno())
            sock.close()
        router.writer.drop(None)
        router.reader.drop(None)
        router.changed.set()
    for node_link in router.links.values():
        await node_link.close()
    router.log.info("router_stopped", last_epoch=router.layout.epoch if router.layout else None)
