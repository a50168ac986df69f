"""The proxy core: route table, backend pools, sending, redirects, failover waiting and the
per-client ordering of serial operations.

Replies are classified once (:func:`router.replies.classify`) into redirect values; a redirect
is followed only to a node of the cluster's layout (a reply is data a script can forge). A
request whose node is unreachable waits (up to ``failover_wait_ms``) for a layout that routes
it elsewhere; a request written to a node that was lost before it answered gets "outcome
unknown", never a blind retry, unless it is read-only.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import structlog

from cachefleet.layout import Layout
from cachefleet.resp import Err, encode
from cachefleet.security import source_allowed
from cachefleet.slots import SLOTS, key_slot
from cachefleet.tls import client_context
from router import replies, routes, upkeep
from router.auth import Authenticator
from router.backend import ASKING, DISCARD, BackendConn, BackendLost
from router.client import Batch, Call, ClientConn, Item, Merge
from router.commands import Command, fast_paths, parse_command_table
from router.framing import Request

POOL_SIZE = 2
MAX_REDIRECTS = 5
MAX_ATTEMPTS = 8
DOWN_FOR_S = 1.0
#: Commands whose error replies may be the script's own (redis.error_reply).
SCRIPTS = frozenset({b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"})
INFLIGHT_BUDGET = 512 * 1024 * 1024  # bytes of all clients' requests and replies in flight
MAX_CLIENTS = 10_000
#: A pooled connection with requests written and no reply for this long is closed (its
#: written writes answered "outcome unknown", its reads sent again): a paused node must not
#: hold requests past a failover, nor acknowledge them after it.
REQUEST_TIMEOUT_S = 10.0
DEMOTED_GRACE_S = 1.0

Addr = routes.Addr


def err(text: str) -> bytes:
    return encode(Err(text))


def outcome_unknown(addr: Addr) -> bytes:
    return err(
        f"ERR router: outcome unknown (connection to {addr[0]}:{addr[1]} lost after the "
        "request was sent)"
    )


class Core:
    """Everything the features need to send a request and get its reply, in order; the
    :class:`router.client.ClientHooks` of every connection. ``dispatch`` is the server's."""

    def __init__(
        self,
        *,
        cluster: str,
        read_from: str = "primary",
        zone: str | None = None,
        failover_wait_s: float = 3.0,
        worker: int = 0,
        max_clients: int = MAX_CLIENTS,
        inflight_budget: int = INFLIGHT_BUDGET,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.log = structlog.get_logger("router").bind(cluster=cluster, worker=worker)
        self.client_log = upkeep.RateLimitedLog(self.log)
        self.read_from = read_from
        self.zone = zone
        self.failover_wait_s = failover_wait_s
        # layout (bus) and routes (bus layout, patched by MOVED and CLUSTER SHARDS refreshes)
        self.layout: Layout | None = None
        self.members: frozenset[Addr] = frozenset()  # the layout's nodes: trusted redirects
        self.zone_of: dict[Addr, str] = {}
        self.layout_ready = asyncio.Event()
        self.table: routes.Table = [None] * SLOTS
        self.primary_list: list[tuple[int, Addr]] = []
        self.version = 0
        self.changed: asyncio.Future[None] = self.loop.create_future()
        self.down: dict[Addr, float] = {}
        self.refresh_task: asyncio.Task[None] | None = None
        self.refresh_again: Addr | None = None
        self.rr = itertools.count()
        # engine command table
        self.commands: dict[bytes, Command] | None = None
        self.fast: dict[bytes, tuple[int, bool, Command]] = {}
        self.commands_ready = asyncio.Event()
        # connections
        self.pools: dict[tuple[Addr, bool, bool, str | None], list[BackendConn | None]] = {}
        self.auth: Authenticator | None = None  # None: clients need no AUTH
        self.allowed_sources: tuple[str, ...] = ()  # CIDR blocks; empty: any source
        self.clients: set[ClientConn] = set()
        self.client_ids = itertools.count(1)
        self.max_clients = max_clients
        self.inflight_budget = inflight_budget
        self.inflight_bytes = 0
        self.starving = False
        self.starved: set[ClientConn] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.ops = 0
        self.errors = 0

    def dispatch(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
        raise NotImplementedError  # the server's dispatch table

    def dispatch_many(self, client: ClientConn, requests: list[Request]) -> None:
        """The hot path of a pipeline. A run of simple requests (GET, SET, HSET ...: one key
        at a fixed index) is grouped by backend connection, each group written as one
        :class:`Batch`; a run that spans nodes is one :class:`Merge` of its groups, answered
        in request order. Anything else, or any client in a special state (MULTI,
        subscribed, an operation holding later requests), goes through ``dispatch`` one by
        one, in its place."""
        fast = self.fast
        table = self.table
        crc = binascii.crc_hqx
        groups: dict[BackendConn, list[Item]] = {}
        order: list[tuple[BackendConn, int]] = []  # each request of the run: its group, index
        targets: dict[int, BackendConn | None] = {}  # route (id, read-only) -> connection
        last_route: routes.ShardRoute | None = None
        last_ro = False
        last_target: BackendConn | None = None
        last_group: list[Item] | None = None
        # A client's state changes only through ``dispatch``: read it again after each call.
        plain = client.held is None and client.tx is None and client.pubsub is None
        for args, raw in requests:
            if not plain:
                if client.closing:
                    return
                if client.held is not None:
                    client.held.append((args, raw))
                    continue
                self.dispatch(client, args, raw)
                plain = client.held is None and client.tx is None and client.pubsub is None
                continue
            entry = fast.get(args[0])
            if entry is not None and raw is not None and len(args) > entry[0]:
                key = args[entry[0]]
                slot = key_slot(key) if 0x7B in key else crc(key, 0) & 0x3FFF  # '{': a tag
                route = table[slot]
                if route is not None:
                    ro = entry[1]
                    if route is last_route and ro == last_ro:  # the common case: same shard
                        target, group = last_target, last_group
                    else:
                        rkey = id(route) * 2 + ro
                        if rkey in targets:
                            target = targets[rkey]
                        else:
                            target = targets[rkey] = self.batch_target(client, route, ro)
                        if target is None:
                            group = None
                        else:
                            group = groups.get(target)
                            if group is None:
                                group = groups[target] = []
                        last_route, last_ro, last_target, last_group = route, ro, target, group
                    if target is not None and group is not None:
                        order.append((target, len(group)))
                        group.append((args, raw, slot, ro, entry[2]))
                        continue
            if order:
                self._send_run(client, groups, order)
                groups, order, targets = {}, [], {}
            last_route = None
            self.dispatch(client, args, raw)
            if client.closing:
                return
            plain = client.held is None and client.tx is None and client.pubsub is None
        if order:
            self._send_run(client, groups, order)

    def batch_target(
        self, client: ClientConn, route: routes.ShardRoute, readonly: bool
    ) -> BackendConn | None:
        """The pooled connection a simple request for `route` goes to, as :meth:`send` would
        choose it; None when it needs more than that (its node is down)."""
        if readonly and self.read_from != "primary":
            addr, ro = routes.pick(
                route, readonly=True, read_from=self.read_from, zone=self.zone, salt=client.id
            )
        else:
            addr, ro = route.primary, False
        if addr is None or self.is_down(addr):
            return None
        return self.pooled(addr, ro, client.protocol == 3, client.id, client.user)

    def _send_run(
        self,
        client: ClientConn,
        groups: dict[BackendConn, list[Item]],
        order: list[tuple[BackendConn, int]],
    ) -> None:
        self.ops += len(order)
        if len(groups) == 1:
            ((conn, items),) = groups.items()
            client.add(self._part(client, items)).send_to(conn)
            return
        parts: dict[BackendConn, Call] = {}
        sources: list[tuple[Call, int]] = []

        def merge() -> bytes:
            return b"".join([call.frame(i) for call, i in sources])

        parent = client.add(Merge(client, [], merge))
        parent.requests = len(order)
        for conn, items in groups.items():
            parts[conn] = parent.add(self._part(client, items))
        sources = [(parts[conn], i) for conn, i in order]
        for conn, part in parts.items():
            part.send_to(conn)

    def _part(self, client: ClientConn, items: list[Item]) -> Call:
        call = Call(client, *items[0]) if len(items) == 1 else Batch(client, items)
        call.version = self.version
        return call

    # -- layout and routes ---------------------------------------------------------------------

    def apply_layout(self, layout: Layout) -> bool:
        if self.layout is not None and layout.epoch < self.layout.epoch:
            self.log.info("layout_ignored_stale", epoch=layout.epoch, current=self.layout.epoch)
            return False
        if self.layout is not None and layout == self.layout:
            return False
        self.layout = layout
        self.zone_of = {(n.host, n.port): n.zone for n in layout.nodes()}
        self.members = frozenset(self.zone_of)
        self.set_table(routes.from_layout(layout), source="bus", epoch=layout.epoch)
        self.close_stale()
        self.layout_ready.set()
        return True

    def set_table(self, table: routes.Table, *, source: str, epoch: int | None = None) -> None:
        self.table = table
        self.primary_list = routes.primaries(table)
        self.version += 1
        self.down.clear()
        changed, self.changed = self.changed, self.loop.create_future()
        changed.set_result(None)
        self.log.info(
            "layout_applied", source=source, epoch=epoch, primaries=len(self.primary_list)
        )
        for client in [c for c in self.clients if c.pubsub is not None]:
            if client.pubsub is not None:
                client.pubsub.layout_changed()

    def close_stale(self) -> None:
        """Pooled connections to nodes that left the layout are closed (their calls are
        retried or answered as for any lost connection). Primary connections to nodes that
        are no longer primaries are closed too, once idle, or if a node with requests
        written gives no reply within DEMOTED_GRACE_S: a paused old primary must not ack
        writes after the failover, while one that was demoted gracefully answers its last
        requests (MOVED, followed) first."""
        primaries = {addr for _, addr in self.primary_list}
        for key, conns in list(self.pools.items()):
            addr, readonly, _, _ = key
            if addr in self.members and (readonly or addr in primaries):
                continue
            self.pools.pop(key, None)
            for conn in conns:
                if conn is None:
                    continue
                if addr not in self.members or not conn.written:
                    conn.close()
                else:
                    self.loop.call_later(DEMOTED_GRACE_S, self._close_if_stuck, conn, conn.replies)

    def _close_if_stuck(self, conn: BackendConn, replies: int) -> None:
        if conn.closed:
            return
        if conn.replies == replies or not conn.written:
            conn.close()
        else:
            self.loop.call_later(DEMOTED_GRACE_S, self._close_if_stuck, conn, conn.replies)

    async def watch_requests(self, stop: asyncio.Event, timeout: float = REQUEST_TIMEOUT_S) -> None:
        """Close pooled connections that made no progress on written requests for
        `timeout` seconds."""
        seen: dict[int, tuple[int, float]] = {}
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, timeout / 4))
            self.sweep(seen, timeout)

    def sweep(self, seen: dict[int, tuple[int, float]], timeout: float) -> None:
        conns = [c for conns in self.pools.values() for c in conns if c is not None]
        for conn in upkeep.stuck(conns, seen, time.monotonic(), timeout):
            self.client_log(
                "backend_request_timeout",
                node=f"{conn.addr[0]}:{conn.addr[1]}",
                waiting=conn.written,
                timeout_s=timeout,
            )
            conn.close()

    def trusted(self, redirect: replies.Moved | replies.Ask) -> bool:
        """A redirect is followed only to a node of the cluster's layout."""
        return redirect.addr in self.members

    def note_moved(self, moved: replies.Moved) -> None:
        route = self.table[moved.slot]
        if route is None or route.primary != moved.addr:
            self.table[moved.slot] = routes.ShardRoute(primary=moved.addr)
            self.request_refresh(moved.addr)

    def request_refresh(self, addr: Addr) -> None:
        """Coalesced: one CLUSTER SHARDS refresh at a time, one more queued at most."""
        if self.refresh_task is not None and not self.refresh_task.done():
            self.refresh_again = addr
            return
        self.refresh_task = self.spawn(self._refresh(addr), "router.refresh")

    async def _refresh(self, addr: Addr) -> None:
        while True:
            try:
                reply = await self.query(addr, b"CLUSTER", b"SHARDS")
                if isinstance(reply, list) and reply:
                    table = routes.from_cluster_shards(reply, self.zone_of)
                    if routes.within(table, self.members):
                        self.set_table(table, source="cluster-shards")
                    else:
                        self.log.warning("refresh_ignored_strangers", node=f"{addr[0]}:{addr[1]}")
            except (OSError, TimeoutError, BackendLost, hiredis.ProtocolError) as exc:
                self.log.info("refresh_failed", node=f"{addr[0]}:{addr[1]}", error=str(exc))
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                self.log.warning("refresh_invalid", node=f"{addr[0]}:{addr[1]}", error=str(exc))
            if self.refresh_again is None:
                return
            addr, self.refresh_again = self.refresh_again, None

    def any_primary(self) -> Addr | None:
        plist = self.primary_list
        if not plist:
            return None
        start = next(self.rr)
        for i in range(len(plist)):
            addr = plist[(start + i) % len(plist)][1]
            if not self.is_down(addr):
                return addr
        return None

    def node_unreachable(self, addr: Addr, exc: BaseException) -> None:
        self.down[addr] = time.monotonic()
        self.client_log("node_unreachable", node=f"{addr[0]}:{addr[1]}", error=str(exc) or "")

    def is_down(self, addr: Addr) -> bool:
        since = self.down.get(addr)
        return since is not None and time.monotonic() - since < DOWN_FOR_S

    # -- engine queries ------------------------------------------------------------------------

    async def query(self, addr: Addr, *args: bytes, timeout: float = 3.0) -> Any:
        """One request on a short-lived connection (layout refresh, command table)."""
        login = self.auth.upkeep_login() if self.auth is not None else None
        return await upkeep.query(addr, *args, timeout=timeout, login=login)

    async def load_commands(self, stop: asyncio.Event) -> None:
        while self.commands is None and not stop.is_set():
            for _, addr in list(self.primary_list):
                try:
                    reply = await self.query(addr, b"COMMAND", timeout=5.0)
                except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
                    self.log.info("command_table_failed", error=str(exc))
                    continue
                if isinstance(reply, list) and reply:
                    self.commands = parse_command_table(reply)
                    self.fast = fast_paths(self.commands)
                    self.commands_ready.set()
                    self.log.info("command_table_loaded", commands=len(self.commands))
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.changed), 0.5)

    # -- connections (transport hooks) --------------------------------------------------------

    async def connect(self, conn: BackendConn) -> None:
        tls = client_context(*conn.addr)  # a TLS cluster's node
        await self.loop.create_connection(
            lambda: conn,
            *conn.addr,
            ssl=tls,
            server_hostname=conn.addr[0] if tls is not None else None,
        )

    def client_opened(self, client: ClientConn) -> int:
        sources = self.allowed_sources
        if sources and not source_allowed(sources, client.peer.rsplit(":", 1)[0]):
            self.client_log("client_refused_source", peer=client.peer)
            return -1
        if len(self.clients) >= self.max_clients:
            self.client_log("client_refused_maxclients", peer=client.peer, limit=self.max_clients)
            return 0
        self.clients.add(client)
        return next(self.client_ids)

    def client_closed(self, client: ClientConn) -> None:
        self.clients.discard(client)
        self.starved.discard(client)

    def over_budget(self) -> bool:
        return self.inflight_bytes > self.inflight_budget

    def starve(self, client: ClientConn) -> None:
        if not self.starved:
            self.client_log("inflight_budget_reached", bytes=self.inflight_bytes)
        self.starved.add(client)
        self.starving = True

    def wake(self) -> None:
        if self.inflight_bytes > self.inflight_budget // 2:
            return
        starved, self.starved, self.starving = self.starved, set(), False
        for client in starved:
            client.check_pressure()

    def client_error(self, client: ClientConn, kind: str, detail: str) -> None:
        self.errors += 1
        self.client_log(f"client_{kind}", client=client.id, peer=client.peer, error=detail)

    def backend_protocol_error(self, conn: BackendConn, detail: str) -> None:
        self.log.warning(
            "backend_protocol_error", node=f"{conn.addr[0]}:{conn.addr[1]}", error=detail
        )

    def backend_closed(self, conn: BackendConn) -> None:
        if conn.pool_key is not None:
            key, i = conn.pool_key
            conns = self.pools.get(key)
            if conns is not None and conns[i] is conn:
                conns[i] = None

    def pooled(
        self, addr: Addr, readonly: bool, resp3: bool, salt: int, user: str | None = None
    ) -> BackendConn:
        """A shared connection to `addr`; with AUTH on, one pool per user, each connection
        logged in as that user."""
        key = (addr, readonly, resp3, user)
        conns = self.pools.get(key)
        if conns is None:
            conns = self.pools[key] = [None] * POOL_SIZE
        i = salt % POOL_SIZE  # one client -> one connection per node: its order is kept
        conn = conns[i]
        if conn is None or conn.closed:
            login = self.auth.login(user) if self.auth is not None else None
            conn = conns[i] = BackendConn(self, addr, readonly=readonly, resp3=resp3, login=login)
            conn.pool_key = (key, i)
        return conn

    def dedicated(self, client: ClientConn, addr: Addr) -> BackendConn:
        conn = client.dedicated.get(addr)
        if conn is None or conn.closed:

            def forget(c: BackendConn) -> None:
                if client.dedicated.get(addr) is c:
                    del client.dedicated[addr]

            login = self.auth.login(client.user) if self.auth is not None else None
            conn = client.dedicated[addr] = BackendConn(
                self, addr, resp3=client.resp3, on_close=forget, login=login
            )
        return conn

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- sending, redirects, failover hiding -----------------------------------------------------

    def route(self, call: Call) -> tuple[Addr | None, bool]:
        if call.target is not None:
            return call.target, False
        if call.slot is None:
            return self.any_primary(), False
        route = self.table[call.slot]
        if route is None:
            return None, False
        if call.readonly and self.read_from != "primary" and not call.dedicated:
            return routes.pick(
                route,
                readonly=True,
                read_from=self.read_from,
                zone=self.zone,
                salt=call.client.id,
            )
        return route.primary, False

    def send(self, call: Call) -> None:
        addr, readonly = self.route(call)
        if addr is None or self.is_down(addr):
            call.target = None
            self.wait_for_layout(call)
            return
        client = call.client
        if call.dedicated:
            conn = self.dedicated(client, addr)
        else:
            conn = self.pooled(addr, readonly, client.protocol == 3, client.id, client.user)
        call.version = self.version
        if call.asking:
            conn.send(DISCARD, ASKING)
        conn.send(call, call.payload)

    def on_error_reply(self, call: Call, frame: bytes) -> bool:
        """Follow MOVED/ASK within the cluster, retry TRYAGAIN/CLUSTERDOWN (bounded); False:
        relay the reply as it is. A script's reply is its own (it may return any error after
        writing), so a script is never sent again here: the client gets the error."""
        redirect = replies.classify(frame)
        if redirect is None or call.redirects >= MAX_ATTEMPTS:
            return False
        if call.command is not None and call.command.name in SCRIPTS:
            return False
        if isinstance(redirect, replies.Moved | replies.Ask):
            if call.redirects >= MAX_REDIRECTS or not self.trusted(redirect):
                return False
            call.redirects += 1
            if isinstance(redirect, replies.Moved):
                self.note_moved(redirect)
            call.target, call.asking = redirect.addr, isinstance(redirect, replies.Ask)
            self.send(call)
            return True
        call.redirects += 1
        call.target, call.asking = None, False
        self.loop.call_later(0.02 * call.redirects, self._resend, call)
        return True

    def _resend(self, call: Call) -> None:
        if not call.client.closed:
            self.send(call)

    def on_call_lost(self, call: Call, written: bool, addr: Addr) -> None:
        if written and not call.readonly:
            call.finish(outcome_unknown(addr))
            return
        call.target, call.asking = None, False
        self.wait_for_layout(call)

    def wait_for_layout(self, call: Call) -> None:
        """The call's node is unreachable: wait (up to failover_wait_ms) for a layout that
        routes it elsewhere, then send it there."""
        if call.client.closed:
            return
        now = time.monotonic()
        if not call.deadline:
            call.deadline = now + self.failover_wait_s
        self.spawn(self._wait_and_send(call), "router.failover_wait")

    async def _wait_and_send(self, call: Call) -> None:
        seen = call.version
        while True:
            left = call.deadline - time.monotonic()
            if left <= 0:
                where = f"slot {call.slot}" if call.slot is not None else "a primary"
                call.finish(
                    err(
                        f"CLUSTERDOWN router: no reachable node for {where} within "
                        f"{int(self.failover_wait_s * 1000)} ms"
                    )
                )
                return
            if self.version == seen:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.changed), min(left, 0.25))
            seen = self.version
            if call.client.closed:
                return
            addr, _ = self.route(call)
            if addr is not None and not self.is_down(addr):
                self.send(call)
                return

    async def run_call(self, call: Call) -> bytes:
        """Send `call` and wait for its (final) reply; for serial operations."""
        fut: asyncio.Future[None] = self.loop.create_future()

        def done(_: Call) -> None:
            if not fut.done():
                fut.set_result(None)

        call.on_done = done
        self.send(call)
        await fut
        assert call.reply is not None
        return call.reply

    # -- per-client ordering ----------------------------------------------------------------------

    def serial(self, client: ClientConn, operation: Callable[[], Awaitable[None]]) -> None:
        """Run `operation` with the client's later requests held until it is done."""
        if client.held is None:
            client.held = collections.deque()

        async def run() -> None:
            try:
                await operation()
            except asyncio.CancelledError:
                pass  # the client went away while the operation waited for its turn
            except Exception:  # a bad request never takes the router down
                self.log.exception("serial_operation_failed", client=client.id)
            finally:
                self.release(client)

        self.spawn(run(), f"router.client[{client.id}].serial")

    def release(self, client: ClientConn) -> None:
        held, client.held = client.held, None
        while held:
            if client.closing:
                return
            if client.held is not None:
                client.held.extend(held)
                break
            args, raw = held.popleft()
            self.dispatch(client, args, raw)
        client.check_pressure()
