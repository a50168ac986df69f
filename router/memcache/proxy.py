"""The memcached proxy: request routing over the ring (connections: :mod:`router.memcache.conns`).

Each client request becomes one reply slot, filled when its node(s) answer and written in
request order. A key goes to the node the ring picks; a multi-key get is split by node and
merged back in key order; flush_all and stats go to every node. A node that refuses, drops
the connection or does not answer within BACKEND_TIMEOUT_S gets its requests the engine's
``SERVER_ERROR`` text, never a hang; for DOWN_HOLD_S after a timeout (REFUSED_HOLD_S after a
refused connect) its keys fail at once.
Malformed client input gets ``CLIENT_ERROR`` and closes only that client's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import structlog

from cachefleet import discovery
from cachefleet.layout import Layout
from cachefleet.memcache import parse_stats
from cachefleet.tls import stream_options
from router.memcache import copies as replicated
from router.memcache.conns import Client, NodeConn, Waiter, discard
from router.memcache.protocol import ERROR, QUIET_DROPS, TOO_LARGE, Kind, Reply, Request
from router.memcache.replies import aggregate_stats, is_error, merge_values, status_word
from router.memcache.ring import Ring

CONNECT_TIMEOUT_S = 1.0
DOWN_HOLD_S = 1.0  # after a request timed out: the node is paused or overloaded
REFUSED_HOLD_S = 0.05  # after a refused connect: one attempt per 50 ms, not one per request
MAX_MERGED_REPLY = 64 * 1024 * 1024  # bytes of one multi-get reply merged from several nodes
HELD_BUDGET = 256 * 1024 * 1024  # reply bytes all clients may be owed before reading pauses


def node_down(name: str, address: str) -> bytes:
    return f"SERVER_ERROR node {name} ({address}) is unavailable\r\n".encode()


class Proxy:
    def __init__(
        self,
        *,
        cluster: str,
        version: str,
        max_value: int,
        max_clients: int,
        worker: int = 0,
        copies: int = 1,
        allowed_sources: tuple[str, ...] = (),
    ) -> None:
        self.cluster = cluster
        self.version = version
        self.max_value = max_value
        self.copies = copies  # nodes that hold each key (memcached.copies)
        self.allowed_sources = allowed_sources  # CIDR blocks; empty: any source
        self.max_merged = MAX_MERGED_REPLY
        self.budget = HELD_BUDGET
        self.held = 0  # reply bytes received for clients and not yet written to them
        self.max_clients = max_clients
        self.worker = worker
        self.log = structlog.get_logger("router").bind(cluster=cluster, worker=worker)
        self.layout: Layout | None = None
        self.ring: Ring | None = None
        self.addresses: dict[str, tuple[str, int]] = {}
        self.conns: dict[str, NodeConn] = {}
        self.retired: set[NodeConn] = set()  # of removed nodes, closed once answered
        self.down_until: dict[str, float] = {}
        self.clients: set[Client] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.ops = 0
        self.client_errors = 0
        self.started = time.time()
        self.discovery_reply = b"SERVER_ERROR no node list yet\r\n"
        self.discovery_value: bytes | None = None

    # -- the router-wide byte budget ----------------------------------------------------------

    def hold(self, n: int) -> None:
        self.held += n

    def release(self, n: int) -> None:
        """Bytes written to a client: when that brings the router back under its budget,
        every client paused for it is read again."""
        over = self.held > self.budget
        self.held -= n
        if over and self.held <= self.budget:
            for client in list(self.clients):
                client.check_reading()

    # -- the node list ---------------------------------------------------------------------

    def apply_layout(self, layout: Layout) -> None:
        if self.layout is not None and layout.epoch <= self.layout.epoch:
            return
        addresses = {n.name: (n.host, n.port) for n in layout.nodes()}
        for name, conn in list(self.conns.items()):
            if name not in addresses:  # removed: what it was sent is still answered
                conn.retire()
                if not conn.closed:
                    self.retired.add(conn)
                del self.conns[name]
            elif addresses[name] != self.addresses.get(name):  # moved: the old one is gone
                conn.fail()
                del self.conns[name]
        self.layout = layout
        self.addresses = addresses
        self.ring = Ring(addresses) if addresses else None
        entries = discovery.entries(layout)
        self.discovery_reply = discovery.config_reply(layout.epoch, entries)
        self.discovery_value = discovery.value_block(layout.epoch, entries)
        self.log.info("node_list_applied", version=layout.epoch, nodes=len(addresses))

    def conn(self, name: str) -> NodeConn | None:
        """The node's connection, opened on first use; None while the node is held down."""
        if self.down_until.get(name, 0.0) > time.monotonic():
            return None
        conn = self.conns.get(name)
        if conn is not None and not conn.closed:
            return conn
        conn = NodeConn(name, self._timed_out)
        self.conns[name] = conn
        task = asyncio.get_running_loop().create_task(self._connect(conn, self.addresses[name]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn

    async def _connect(self, conn: NodeConn, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:  # a TLS cluster's nodes: TLS, verified against the cluster's CA and their address
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, *addr, **stream_options(*addr)),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError):  # ssl.SSLError is an OSError
            self.down_until[conn.name] = time.monotonic() + REFUSED_HOLD_S
            conn.fail()

    def _timed_out(self, name: str) -> None:
        self.down_until[name] = time.monotonic() + DOWN_HOLD_S
        self.log.warning("node_timeout", node=name, hold_s=DOWN_HOLD_S)

    async def watch(self, stop: asyncio.Event) -> None:
        """Requests a node leaves unanswered past BACKEND_TIMEOUT_S fail (bounded waits)."""
        while not stop.is_set():
            now = time.monotonic()
            for conn in [*self.conns.values(), *self.retired]:
                conn.expire(now)
            self.retired = {c for c in self.retired if not c.closed}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    def send_to(self, name: str, payload: bytes, shape: Reply, waiter: Waiter) -> None:
        conn = self.conn(name)
        if conn is None:
            waiter(None)
        else:
            conn.send(payload, shape, waiter)

    def down(self, name: str) -> bytes:
        host, port = self.addresses.get(name, ("?", 0))
        return node_down(name, f"{host}:{port}")

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, client: Client, req: Request) -> None:
        self.ops += 1
        match req.kind:
            case Kind.KEYED:
                self._keyed(client, req)
            case Kind.GET:
                self._get(client, req)
            case Kind.FLUSH:
                self._flush(client, req)
            case Kind.STATS:
                self._stats(client, req)
            case Kind.CONFIG:
                if req.tokens[1:] == [b"get", b"cluster"]:
                    client.reply(self.discovery_reply)
                else:
                    client.reply(ERROR)
            case Kind.VERSION:
                client.reply(f"VERSION {self.version}\r\n".encode())
            case Kind.VERBOSITY:
                if not req.noreply:
                    client.reply(b"OK\r\n")
            case Kind.NOOP:
                client.reply(b"MN\r\n")
            case Kind.QUIT:
                client.close_after_replies()
            case Kind.TOO_LARGE:
                client.reply(TOO_LARGE)
            case Kind.UNKNOWN:
                client.reply(ERROR)

    def _no_nodes(self, client: Client, req: Request) -> bool:
        if self.ring is not None:
            return False
        if not req.noreply:
            client.reply(b"SERVER_ERROR no node list yet\r\n")
        return True

    def _keyed(self, client: Client, req: Request) -> None:
        if self._no_nodes(client, req):
            return
        assert self.ring is not None
        if self.copies > 1:
            replicated.keyed(self, client, req)
            return
        name = self.ring.node(req.hash_key)
        if req.noreply:
            self.send_to(name, req.forward(), req.reply_shape, discard)
            return
        slot = client.slot()
        drops = QUIET_DROPS.get(req.command, frozenset()) if req.quiet else frozenset()

        def done(reply: bytes | None) -> None:
            if reply is None:
                client.fill(slot, self.down(name))
            elif drops and status_word(reply) in drops:
                client.fill(slot, b"")
            else:
                client.fill(slot, reply)

        self.send_to(name, req.forward(), req.reply_shape, done)

    def _get(self, client: Client, req: Request) -> None:
        keys = req.keys
        if (
            len(keys) == 1
            and self.copies == 1
            and self.ring is not None
            and keys[0] != discovery.MAGIC_KEY
        ):
            self._single(client, req, self.ring.node(keys[0]))  # the common case
            return
        local: dict[bytes, bytes] = {}
        if discovery.MAGIC_KEY in keys and self.discovery_value is not None:
            local[discovery.MAGIC_KEY] = self.discovery_value
            keys = [k for k in keys if k != discovery.MAGIC_KEY]
        if not keys:
            client.reply(merge_values(req.keys, [], local))
            return
        if self._no_nodes(client, req):
            return
        assert self.ring is not None
        if self.copies > 1:
            replicated.get(self, client, req, keys, local)
            return
        head = req.tokens[:2] if req.command in (b"gat", b"gats") else req.tokens[:1]
        groups: dict[str, dict[bytes, None]] = {}  # each node's keys, once each, in order
        for key in keys:
            groups.setdefault(self.ring.node(key), {})[key] = None
        repeated = sum(len(g) for g in groups.values()) < len(keys)
        if len(groups) == 1 and not local and not repeated:
            self._single(client, req, next(iter(groups)))
            return
        slot = client.slot()
        parts: dict[str, bytes | None] = {}

        def part(name: str) -> Waiter:
            def done(reply: bytes | None) -> None:
                parts[name] = reply
                if len(parts) < len(groups):
                    return
                for node, got in parts.items():
                    if got is None:
                        client.fill(slot, self.down(node))
                        return
                    if is_error(got):
                        client.fill(slot, got)
                        return
                replies = [got for got in parts.values() if got is not None]
                try:
                    merged = merge_values(req.keys, replies, local, limit=MAX_MERGED_REPLY)
                except ValueError:
                    merged = b"SERVER_ERROR the reply is larger than the proxy sends at once\r\n"
                client.fill(slot, merged)

            return done

        for name, group in groups.items():
            self.send_to(name, b" ".join([*head, *group]) + b"\r\n", Reply.VALUES, part(name))

    def _single(self, client: Client, req: Request, name: str) -> None:
        """A get whose keys are all on one node: forwarded as it came, answered as it is."""
        slot = client.slot()

        def done(reply: bytes | None) -> None:
            client.fill(slot, reply if reply is not None else self.down(name))

        self.send_to(name, req.forward(), Reply.VALUES, done)

    def _fanout(
        self, payload: bytes, shape: Reply, then: Callable[[dict[str, bytes | None]], None]
    ) -> None:
        names = list(self.addresses)
        got: dict[str, bytes | None] = {}

        def part(name: str) -> Waiter:
            def done(reply: bytes | None) -> None:
                got[name] = reply
                if len(got) == len(names):
                    then(got)

            return done

        for name in names:
            self.send_to(name, payload, shape, part(name))

    def _flush(self, client: Client, req: Request) -> None:
        if self._no_nodes(client, req):
            return
        slot = None if req.noreply else client.slot()

        def then(got: dict[str, bytes | None]) -> None:
            if slot is None:
                return
            for name, reply in got.items():
                if reply is None:
                    client.fill(slot, self.down(name))
                    return
                if reply != b"OK\r\n":
                    client.fill(slot, reply)
                    return
            client.fill(slot, b"OK\r\n")

        self._fanout(req.forward(), Reply.LINE, then)

    def _stats(self, client: Client, req: Request) -> None:
        if len(req.tokens) > 1:
            client.reply(b"SERVER_ERROR the proxy aggregates plain `stats` only\r\n")
            return
        if self._no_nodes(client, req):
            return
        slot = client.slot()

        def then(got: dict[str, bytes | None]) -> None:
            answered = [parse_stats(r) for r in got.values() if r is not None]
            own = {
                "pid": str(os.getpid()),
                "uptime": str(int(time.time() - self.started)),
                "time": str(int(time.time())),
                "version": self.version,
                "cluster_nodes": str(len(got)),
                "cluster_nodes_unreachable": str(len(got) - len(answered)),
                "discovery_version": str(self.layout.epoch if self.layout else 0),
                "proxy_connections": str(len(self.clients)),
            }
            client.fill(slot, aggregate_stats(answered, own))

        self._fanout(b"stats\r\n", Reply.STATS, then)
