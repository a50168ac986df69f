"""The router process: slot-aware RESP proxy and configuration endpoint.

* **Configuration endpoint**: ``CLUSTER SLOTS|SHARDS|NODES|INFO`` from the live layout on the
  bus, so a cluster-aware client bootstraps here and then talks to the nodes directly.
* **Proxy** for every other client: each request is routed by the engine's own command table
  (:mod:`router.commands`) to the node serving its slot, over a small pool of pipelined
  connections per node shared by all clients (:mod:`router.proxy`); multi-key requests are
  split by slot and merged, keyless all-shard requests fanned out, MULTI blocks, WATCH and
  blocking commands pinned to a dedicated connection, pub/sub relayed; MOVED/ASK are followed
  here and a primary's death is hidden from requests that were not yet written to it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import structlog

from cachefleet import bus
from cachefleet.layout import Layout
from cachefleet.plan import Plan
from cachefleet.resp import OK, Err, Simple, Verbatim, encode, encode_command
from cachefleet.slots import SLOTS
from router import replies, routes
from router.commands import (
    LOCAL as LOCAL_COMMANDS,
)
from router.commands import (
    Action,
    Command,
    fast_paths,
    key_positions,
    key_slot,
    lookup,
    parse_command_table,
    plan,
    slot_of,
    split,
)
from router.proxy import (
    ASKING,
    BackendConn,
    BackendLost,
    Call,
    ClientConn,
    Merge,
)

CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
POOL_SIZE = 2
MAX_REDIRECTS = 5
MAX_ATTEMPTS = 8
DOWN_FOR_S = 1.0
MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"
#: Commands that would turn a shared backend connection into something else.
SHARED_CONNECTION_UNSAFE = frozenset({b"MONITOR", b"SYNC", b"PSYNC", b"REPLCONF"})
PUBSUB_ALLOWED = frozenset(
    {b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SSUBSCRIBE",
     b"SUNSUBSCRIBE", b"PING", b"QUIT", b"RESET"}
)  # fmt: skip
_SUB_KINDS = frozenset(
    {b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe",
     b"sunsubscribe"}
)  # fmt: skip


def _err(text: str) -> bytes:
    return encode(Err(text))


class RateLimitedLog:
    """At most `per_s` events of one kind per second; the count of dropped ones is reported
    with the next event that passes."""

    def __init__(self, log: Any, per_s: int = 10) -> None:
        self.log = log
        self.per_s = per_s
        self.window: dict[str, tuple[int, int]] = {}
        self.dropped: collections.Counter[str] = collections.Counter()

    def __call__(self, event: str, **fields: Any) -> None:
        now = int(time.monotonic())
        second, count = self.window.get(event, (now, 0))
        if second != now:
            second, count = now, 0
        if count >= self.per_s:
            self.dropped[event] += 1
            self.window[event] = (second, count)
            return
        self.window[event] = (second, count + 1)
        dropped = self.dropped.pop(event, 0)
        self.log.warning(event, **fields, **({"suppressed": dropped} if dropped else {}))


class PubSub:
    """A subscribed client: one connection for classic channels/patterns (the engine
    broadcasts those over the cluster) and one per node for sharded channels; every frame
    they send is relayed to the client as it comes."""

    def __init__(self, router: Router, client: ClientConn) -> None:
        self.router = router
        self.client = client
        self.classic: BackendConn | None = None
        self.sharded: dict[routes.Addr, BackendConn] = {}
        self.counts: dict[int, int] = {}
        self.closed = False

    def _conn(self, addr: routes.Addr) -> BackendConn:
        conn: BackendConn | None = None

        def relay(frame: bytes) -> None:
            self.client.push(frame)
            if conn is not None:
                self.track(conn, frame)

        conn = BackendConn(
            self.router, addr, resp3=self.client.resp3, on_push=relay, on_close=self._lost
        )
        return conn

    def classic_conn(self) -> BackendConn | None:
        if self.classic is None or self.classic.closed:
            addr = self.router.any_primary()
            if addr is None:
                return None
            self.classic = self._conn(addr)
        return self.classic

    def sharded_conn(self, addr: routes.Addr) -> BackendConn:
        conn = self.sharded.get(addr)
        if conn is None or conn.closed:
            conn = self.sharded[addr] = self._conn(addr)
        return conn

    def track(self, conn: BackendConn, frame: bytes) -> None:
        if frame[:1] not in (b"*", b">"):
            return
        try:
            value = replies.parse(frame)
        except (hiredis.ProtocolError, ValueError):
            return
        if not isinstance(value, list) or len(value) != 3 or not isinstance(value[2], int):
            return
        kind = bytes(value[0]).lower() if isinstance(value[0], bytes) else b""
        if kind in _SUB_KINDS:
            self.counts[id(conn)] = value[2]
            if kind.startswith((b"un", b"pun", b"sun")) and all(
                c == 0 for c in self.counts.values()
            ):
                self.close()
                if self.client.pubsub is self:
                    self.client.pubsub = None

    def _lost(self, conn: BackendConn) -> None:
        if not self.closed:
            # The subscriptions are gone with the node: the client must resubscribe.
            self.router.client_error(self.client, "pubsub_connection_lost", str(conn.addr))
            self.client.close_after_replies()

    def close(self) -> None:
        self.closed = True
        for conn in [self.classic, *self.sharded.values()]:
            if conn is not None:
                conn.close()
        self.classic = None
        self.sharded.clear()


class Router:
    def __init__(self, *, plan: Plan, worker: int = 0) -> None:
        self.plan = plan
        self.worker = worker
        self.id = f"router-{worker}"
        self.log = structlog.get_logger("router").bind(cluster=plan.name, worker=worker)
        self.client_log = RateLimitedLog(self.log)
        self.loop = asyncio.get_running_loop()
        settings = plan.topology.router
        self.read_from = settings.read_from
        self.zone: str | None = getattr(settings, "zone", None) or os.environ.get(
            "CACHEFLEET_ROUTER_ZONE"
        )
        self.failover_wait_s = settings.failover_wait_ms / 1000
        # layout (bus) and routes (bus layout, patched by MOVED and CLUSTER SHARDS refreshes)
        self.layout: Layout | None = None
        self.slot_table: list[Any] = [None] * SLOTS  # bus layout: slot -> LayoutShard
        self.layout_ready = asyncio.Event()
        self.table: routes.Table = [None] * SLOTS
        self.primary_list: list[tuple[int, routes.Addr]] = []
        self.version = 0
        self.changed: asyncio.Future[None] = self.loop.create_future()
        self.down: dict[routes.Addr, float] = {}
        self.zone_of: dict[routes.Addr, str] = {}
        self.refresh_task: asyncio.Task[None] | None = None
        self.refresh_again: routes.Addr | None = None
        self.rr = itertools.count()
        # engine command table
        self.commands: dict[bytes, Command] | None = None
        self.fast: dict[bytes, tuple[int, bool, Command]] = {}
        self.commands_ready = asyncio.Event()
        # connections
        self.pools: dict[tuple[routes.Addr, bool, bool], list[BackendConn | None]] = {}
        self.clients: set[ClientConn] = set()
        self.client_ids = itertools.count(1)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.ops = 0
        self.errors = 0

    # -- layout and routes ---------------------------------------------------------------------

    def apply_layout(self, layout: Layout) -> bool:
        if self.layout is not None and layout.epoch < self.layout.epoch:
            self.log.info("layout_ignored_stale", epoch=layout.epoch, current=self.layout.epoch)
            return False
        if self.layout is not None and layout == self.layout:
            return False
        self.layout = layout
        self.slot_table = layout.slot_table()
        self.zone_of = {(n.host, n.port): n.zone for n in layout.nodes()}
        self.set_table(routes.from_layout(layout), source="bus", epoch=layout.epoch)
        self.layout_ready.set()
        return True

    def on_bus_message(self, topic: str, payload: bytes) -> None:
        data = bus.decode(payload)
        if data is None or not topic.endswith("/layout"):
            return
        try:
            self.apply_layout(Layout.from_dict(data))
        except (KeyError, TypeError, ValueError) as exc:
            self.log.warning("layout_invalid", error=str(exc))

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

    def note_moved(self, moved: replies.Moved) -> None:
        route = self.table[moved.slot]
        if route is None or route.primary != moved.addr:
            self.table[moved.slot] = routes.ShardRoute(primary=moved.addr)
            self.request_refresh(moved.addr)

    def request_refresh(self, addr: routes.Addr) -> None:
        """Coalesced: one CLUSTER SHARDS refresh at a time, one more queued at most."""
        if self.refresh_task is not None and not self.refresh_task.done():
            self.refresh_again = addr
            return
        self.refresh_task = self.spawn(self._refresh(addr), "router.refresh")

    async def _refresh(self, addr: routes.Addr) -> None:
        while True:
            try:
                reply = await self.query(addr, b"CLUSTER", b"SHARDS")
                if isinstance(reply, list) and reply:
                    self.set_table(
                        routes.from_cluster_shards(reply, self.zone_of), source="cluster-shards"
                    )
            except (OSError, TimeoutError, BackendLost, hiredis.ProtocolError) as exc:
                self.log.info("refresh_failed", node=f"{addr[0]}:{addr[1]}", error=str(exc))
            if self.refresh_again is None:
                return
            addr, self.refresh_again = self.refresh_again, None

    def any_primary(self) -> routes.Addr | None:
        plist = self.primary_list
        if not plist:
            return None
        start = next(self.rr)
        for i in range(len(plist)):
            addr = plist[(start + i) % len(plist)][1]
            if not self.is_down(addr):
                return addr
        return None

    def node_unreachable(self, addr: routes.Addr, exc: BaseException) -> None:
        self.down[addr] = time.monotonic()
        self.client_log("node_unreachable", node=f"{addr[0]}:{addr[1]}", error=str(exc) or "")

    def is_down(self, addr: routes.Addr) -> bool:
        since = self.down.get(addr)
        return since is not None and time.monotonic() - since < DOWN_FOR_S

    # -- engine queries ------------------------------------------------------------------------

    async def query(self, addr: routes.Addr, *args: bytes, timeout: float = 3.0) -> Any:
        """One request on a short-lived connection (layout refresh, command table)."""

        async def run() -> Any:
            reader, writer = await asyncio.open_connection(*addr)
            try:
                writer.write(encode_command(args))
                parser = hiredis.Reader(notEnoughData=Ellipsis)
                while True:
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        raise ConnectionError("connection closed")
                    parser.feed(chunk)
                    reply = parser.gets()
                    if reply is not Ellipsis:
                        return reply
            finally:
                writer.close()

        return await asyncio.wait_for(run(), timeout)

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

    # -- connections -------------------------------------------------------------------------

    def next_client_id(self) -> int:
        return next(self.client_ids)

    def pooled(self, addr: routes.Addr, readonly: bool, resp3: bool, salt: int) -> BackendConn:
        key = (addr, readonly, resp3)
        conns = self.pools.get(key)
        if conns is None:
            conns = self.pools[key] = [None] * POOL_SIZE
        i = salt % POOL_SIZE  # one client -> one connection per node: its order is kept
        conn = conns[i]
        if conn is None or conn.closed:
            conn = conns[i] = BackendConn(self, addr, readonly=readonly, resp3=resp3)
            conn.pool_key = (key, i)
        return conn

    def pool_forget(self, conn: BackendConn) -> None:
        if conn.pool_key is not None:
            key, i = conn.pool_key
            conns = self.pools.get(key)
            if conns is not None and conns[i] is conn:
                conns[i] = None

    def dedicated(self, client: ClientConn, addr: routes.Addr) -> BackendConn:
        conn = client.dedicated.get(addr)
        if conn is None or conn.closed:

            def forget(c: BackendConn) -> None:
                if client.dedicated.get(addr) is c:
                    del client.dedicated[addr]

            conn = client.dedicated[addr] = BackendConn(
                self, addr, resp3=client.resp3, on_close=forget
            )
        return conn

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- sending, redirects, failover hiding -----------------------------------------------------

    def route(self, call: Call) -> tuple[routes.Addr | None, bool]:
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
            conn = self.pooled(addr, readonly, client.protocol == 3, client.id)
        call.version = self.version
        if call.asking:
            conn.send(_ASK_WAITER, ASKING)
        conn.send(call, call.payload)

    def on_error_reply(self, call: Call, frame: bytes) -> bool:
        """Follow MOVED/ASK, retry TRYAGAIN/CLUSTERDOWN (bounded); False: relay the reply."""
        redirect = replies.classify(frame)
        if redirect is None or call.redirects >= MAX_ATTEMPTS:
            return False
        call.redirects += 1
        if isinstance(redirect, replies.Moved):
            if call.redirects > MAX_REDIRECTS:
                return False
            self.note_moved(redirect)
            call.target, call.asking = redirect.addr, False
            self.send(call)
        elif isinstance(redirect, replies.Ask):
            if call.redirects > MAX_REDIRECTS:
                return False
            call.target, call.asking = redirect.addr, True
            self.send(call)
        else:
            call.target, call.asking = None, False
            self.loop.call_later(0.02 * call.redirects, self._resend, call)
        return True

    def _resend(self, call: Call) -> None:
        if not call.client.closed:
            self.send(call)

    def on_call_lost(self, call: Call, written: bool, addr: routes.Addr) -> None:
        if written and not call.readonly:
            call.finish(
                _err(
                    f"ERR router: outcome unknown (connection to {addr[0]}:{addr[1]} lost "
                    "after the request was sent)"
                )
            )
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
                    _err(
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

    def serial(self, client: ClientConn, operation: Callable[[], Awaitable[None]]) -> None:
        """Run `operation` with the client's later requests held until it is done."""
        if client.held is None:
            client.held = collections.deque()

        async def run() -> None:
            try:
                await operation()
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

    def client_error(self, client: ClientConn, kind: str, detail: str) -> None:
        self.errors += 1
        self.client_log(f"client_{kind}", client=client.id, peer=client.peer, error=detail)

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
        self.ops += 1
        if client.pubsub is not None and self.in_pubsub(client, args, raw):
            return
        if client.tx is not None:
            self.in_transaction(client, args, raw)
            return
        fast = self.fast.get(args[0])
        if fast is not None and len(args) > fast[0]:
            call = Call(client, args, raw, key_slot(args[fast[0]]), fast[1], fast[2])
            client.queue.append(call)
            self.send(call)
            return
        table = self.commands
        if table is None:
            name = args[0].upper()
            if name in LOCAL_COMMANDS:
                self.local(client, args)
                return
            client.held = collections.deque([(args, raw)])
            self.serial(client, lambda: self._wait_commands(client))
            return
        p = plan(table, args)
        action = p.action
        if action is Action.SINGLE:
            cmd = p.command
            if cmd is not None and cmd.response_policy == "special" and p.slot is None:
                pass  # INFO, RANDOMKEY, MEMORY STATS ...: one primary's answer
            call = Call(client, args, raw, p.slot, p.readonly, cmd)
            client.queue.append(call)
            self.send(call)
        elif action is Action.LOCAL:
            self.local(client, args)
        elif action is Action.CROSSSLOT:
            client.reply_now(CROSSSLOT)
        elif action is Action.SPLIT:
            assert p.command is not None
            self.split(client, args, p.command)
        elif action is Action.FANOUT:
            assert p.command is not None
            self.fanout(client, args, raw, p.command)
        elif action is Action.SCAN:
            self.scan(client, args)
        elif action is Action.BLOCKING:
            call = client.add(Call(client, args, raw, p.slot, False, p.command))
            call.dedicated = True
            self.serial(client, lambda: self._serial_call(call))
        elif action is Action.GETKEYS:
            call = client.add(Call(client, args, raw, None, p.readonly, p.command))
            self.serial(client, lambda: self._getkeys_call(call))
        elif action is Action.TRANSACTION:
            self.transaction(client, args, raw)
        elif action is Action.PUBSUB:
            self.enter_pubsub(client, args, raw)

    async def _wait_commands(self, client: ClientConn) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.commands_ready.wait(), self.failover_wait_s + 5)
        if self.commands is None and client.held:
            for _ in range(len(client.held)):
                client.reply_now(
                    _err("CLUSTERDOWN router: the engine's command table is not loaded")
                )
            client.held.clear()

    async def _serial_call(self, call: Call) -> None:
        await call.client.wait_head(call)
        await self.run_call(call)

    async def _getkeys_call(self, call: Call) -> None:
        await call.client.wait_head(call)
        addr = self.any_primary()
        keys: list[bytes] = []
        if addr is not None:
            try:
                conn = self.pooled(addr, False, False, call.client.id)
                frame = (await conn.request(encode_command([b"COMMAND", b"GETKEYS", *call.args])))[
                    0
                ]
                value = replies.parse(frame)
                if isinstance(value, list):
                    keys = [bytes(k) for k in value]
            except BackendLost:
                pass
        slots = {key_slot(k) for k in keys}
        if len(slots) > 1:
            call.finish(CROSSSLOT)
            return
        call.slot = slots.pop() if slots else None
        await self.run_call(call)

    # -- local commands ----------------------------------------------------------------------

    def local(self, client: ClientConn, args: list[bytes]) -> None:
        try:
            value = self.execute_local(client, args)
        except Exception as exc:  # one bad request never takes the router down
            self.log.exception("request_failed", client=client.id)
            value = Err(f"ERR router: {exc}")
        if value is _FORWARD:
            call = client.add(Call(client, args, None, self._forward_slot(args)))
            self.send(call)
            return
        client.reply_now(encode(value, client.resp3))
        if args[0].upper() == b"QUIT":
            client.close_after_replies()

    @staticmethod
    def _forward_slot(args: list[bytes]) -> int | None:
        if (
            len(args) > 2
            and args[0].upper() == b"CLUSTER"
            and args[1].upper() in (b"COUNTKEYSINSLOT", b"GETKEYSINSLOT")
            and args[2].isdigit()
            and int(args[2]) < SLOTS
        ):
            return int(args[2])
        return None

    def execute_local(self, conn: ClientConn, args: list[bytes]) -> Any:
        name = args[0].upper()
        if name == b"PING":
            if len(args) > 2:
                return _arity("ping")
            return Simple("PONG") if len(args) == 1 else args[1]
        if name == b"ECHO":
            return args[1] if len(args) == 2 else _arity("echo")
        if name == b"QUIT":
            return OK
        if name == b"HELLO":
            return self.hello(conn, args)
        if name == b"AUTH":
            return auth_without_password(args)
        if name == b"SELECT":
            if len(args) != 2:
                return _arity("select")
            return OK if args[1] == b"0" else Err("ERR SELECT is not allowed in cluster mode")
        if name in (b"READONLY", b"READWRITE", b"ASKING"):
            return OK
        if name in SHARED_CONNECTION_UNSAFE:
            return Err(
                f"ERR router: {name.decode(errors='replace')} is not supported through the "
                "router; connect to a node"
            )
        if name == b"RESET":
            self.reset(conn)
            return Simple("RESET")
        if name == b"CLIENT":
            return self.client_command(conn, args)
        if name == b"CLUSTER":
            return self.handle_cluster(args)
        return _FORWARD

    def reset(self, client: ClientConn) -> None:
        client.protocol = 2
        client.name = None
        client.tx = None
        if client.watch is not None:
            client.watch[1].close()
            client.watch = None
        if client.pubsub is not None:
            client.pubsub.close()
            client.pubsub = None

    def handle_cluster(self, args: list[bytes]) -> Any:
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"SLOTS":
            return self.cluster_slots()
        if sub == b"SHARDS":
            return self.cluster_shards()
        if sub == b"NODES":
            return Verbatim(self.cluster_nodes())
        if sub == b"INFO":
            return Verbatim(self.cluster_info())
        if sub == b"KEYSLOT" and len(args) == 3:
            return key_slot(args[2])
        if sub == b"MYID":
            return Err("ERR the router is not a cluster node; ask a node (see CLUSTER NODES)")
        return _FORWARD

    def cluster_slots(self) -> list[Any]:
        out: list[Any] = []
        if self.layout is None:
            return out
        for shard in self.layout.shards:
            primary = shard.primary
            if primary is None:
                continue
            members = [primary, *shard.replicas]
            for start, end in shard.slots:
                out.append([start, end, *[[n.host, n.port, n.id, []] for n in members]])
        return out

    def cluster_shards(self) -> list[Any]:
        out: list[Any] = []
        if self.layout is None:
            return out
        for shard in self.layout.shards:
            flat = [x for r in shard.slots for x in r]
            nodes = [
                {
                    "id": n.id,
                    "port": n.port,
                    "ip": n.host,
                    "endpoint": n.host,
                    "role": "master" if n.role == "primary" else "replica",
                    "replication-offset": 0,
                    "health": "online",
                }
                for n in shard.nodes
            ]
            out.append({"slots": flat, "nodes": nodes})
        return out

    def cluster_nodes(self) -> str:
        lines = []
        if self.layout is None:
            return ""
        for shard in self.layout.shards:
            primary = shard.primary
            for n in shard.nodes:
                role = "master" if n.role == "primary" else "slave"
                master = "-" if n.role == "primary" or primary is None else primary.id
                slots = " ".join(f"{a}-{b}" if a != b else str(a) for a, b in shard.slots)
                parts = [
                    n.id,
                    f"{n.host}:{n.port}@{n.bus_port}",
                    role,
                    master,
                    "0",
                    "0",
                    str(self.layout.epoch),
                    "connected",
                ]
                if n.role == "primary" and slots:
                    parts.append(slots)
                lines.append(" ".join(parts))
        return "\n".join(lines) + "\n"

    def cluster_info(self) -> str:
        layout = self.layout
        assigned = sum(1 for s in self.slot_table if s is not None)
        served = sum(1 for s in self.slot_table if s is not None and s.primary is not None)
        shards = len([s for s in layout.shards if s.primary]) if layout else 0
        known = len(layout.nodes()) if layout else 0
        state = "ok" if layout and served == SLOTS else "fail"
        fields = {
            "cluster_enabled": 1,
            "cluster_state": state,
            "cluster_slots_assigned": assigned,
            "cluster_slots_ok": served,
            "cluster_slots_pfail": 0,
            "cluster_slots_fail": assigned - served,
            "cluster_known_nodes": known,
            "cluster_size": shards,
            "cluster_current_epoch": layout.epoch if layout else 0,
            "cluster_my_epoch": layout.epoch if layout else 0,
        }
        return "".join(f"{k}:{v}\r\n" for k, v in fields.items())

    def hello(self, conn: ClientConn, args: list[bytes]) -> Any:
        proto = conn.protocol
        i = 1
        if len(args) > 1:
            try:
                proto = int(args[1])
            except ValueError:
                return Err("ERR Protocol version is not an integer or out of range")
            if proto not in (2, 3):
                return Err("NOPROTO unsupported protocol version")
            i = 2
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH" and i + 2 < len(args):
                reply = auth_without_password([b"AUTH", args[i + 1], args[i + 2]])
                if isinstance(reply, Err):
                    return reply
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                conn.name = args[i + 1]
                i += 2
            else:
                return Err(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
        conn.protocol = proto
        engine = self.plan.topology.engine
        return {
            "server": engine,
            "version": "8.1.0" if engine == "valkey" else "7.0.0",
            "proto": proto,
            "id": conn.id,
            "mode": "cluster",
            "role": "master",
            "modules": [],
        }

    def client_command(self, conn: ClientConn, args: list[bytes]) -> Any:
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"ID":
            return conn.id
        if sub == b"SETNAME" and len(args) == 3:
            conn.name = args[2]
            return OK
        if sub == b"GETNAME":
            return conn.name
        if sub in (b"SETINFO", b"NO-EVICT", b"NO-TOUCH"):
            return OK
        if sub in (b"REPLY", b"TRACKING", b"CACHING", b"UNBLOCK"):
            # Would change (or act on) a backend connection shared by other clients.
            return Err(f"ERR router: CLIENT {sub.decode()} is not supported through the router")
        return _FORWARD

    # -- split, fan-out, scan ------------------------------------------------------------------

    def split(self, client: ClientConn, args: list[bytes], cmd: Command) -> None:
        parts = split(cmd, args)
        policy = cmd.response_policy
        resp3 = client.resp3
        calls: list[Call] = []

        total = len(key_positions(cmd, args) or [])

        def merge() -> bytes:
            frames = [c.reply or b"" for c in calls]
            if policy == "agg_sum":
                return replies.merge_sum(frames)
            if policy == "all_succeeded":
                return replies.merge_all_succeeded(frames)
            pairs = [(part.positions, f) for part, f in zip(parts, frames, strict=True)]
            return replies.merge_ordered(pairs, total, resp3)

        parent = client.add(Merge(client, args, merge))
        for part in parts:
            calls.append(
                parent.add(Call(client, list(part.args), None, part.slot, cmd.readonly, cmd))
            )
        for c in calls:
            self.send(c)

    def fanout(
        self, client: ClientConn, args: list[bytes], raw: bytes | None, cmd: Command
    ) -> None:
        if cmd.response_policy == "special":
            call = client.add(Call(client, args, raw, None, cmd.readonly, cmd))
            self.send(call)
            return
        targets = (
            routes.all_nodes(self.table)
            if cmd.request_policy == "all_nodes"
            else list(self.primary_list)
        )
        if not targets:
            client.reply_now(_err("CLUSTERDOWN The cluster is down (no layout yet)"))
            return
        calls: list[Call] = []
        policy = cmd.response_policy
        resp3 = client.resp3

        def merge() -> bytes:
            frames = [c.reply or b"" for c in calls]
            if policy == "agg_sum":
                return replies.merge_sum(frames)
            if policy == "agg_min":
                return replies.merge_min(frames)
            if policy == "one_succeeded":
                return replies.merge_one_succeeded(frames)
            if policy == "agg_logical_and":
                return replies.merge_logical_and(frames, resp3)
            if policy is None and frames and frames[0][:1] in (b"*", b"~"):
                return replies.merge_concat(frames, resp3)
            return replies.merge_all_succeeded(frames)

        parent = client.add(Merge(client, args, merge))
        for slot, addr in targets:
            part = parent.add(Call(client, args, raw, slot, False, cmd))
            part.target = addr
            calls.append(part)
        for c in calls:
            self.send(c)

    def scan(self, client: ClientConn, args: list[bytes]) -> None:
        plist = list(self.primary_list)
        try:
            cursor = int(args[1]) if len(args) > 1 else -1
        except ValueError:
            cursor = -1
        if cursor < 0 or not plist:
            call = client.add(Call(client, args, None))  # the engine says what is wrong
            self.send(call)
            return
        index, engine_cursor = replies.split_scan_cursor(cursor)
        if index >= len(plist):
            client.reply_now(encode([b"0", []], client.resp3))
            return
        part_args = [args[0], str(engine_cursor).encode(), *args[2:]]
        resp3 = client.resp3
        part = Call(client, part_args, None, plist[index][0], True)

        def merge() -> bytes:
            return replies.merge_scan(part.reply or b"", index, len(plist), resp3)

        parent = client.add(Merge(client, args, merge))
        parent.add(part)
        self.send(part)

    # -- transactions ----------------------------------------------------------------------------

    def transaction(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
        name = args[0].upper()
        if name == b"MULTI":
            client.tx, client.tx_dirty = [], False
            client.reply_now(b"+OK\r\n")
        elif name == b"EXEC":
            client.reply_now(_err("ERR EXEC without MULTI"))
        elif name == b"DISCARD":
            client.reply_now(_err("ERR DISCARD without MULTI"))
        elif name == b"UNWATCH":
            if client.watch is not None:
                client.watch[1].close()
                client.watch = None
            client.reply_now(b"+OK\r\n")
        elif name == b"WATCH":
            if len(args) < 2:
                client.reply_now(encode(_arity("watch")))
                return
            slot = slot_of(args, range(1, len(args)))
            if slot is False or (client.watch is not None and client.watch[0] != slot):
                client.reply_now(CROSSSLOT)
                return
            assert isinstance(slot, int)
            call = client.add(Call(client, args, raw, slot))
            call.dedicated = True
            self.serial(client, lambda: self._watch(call, slot))

    async def _watch(self, call: Call, slot: int) -> None:
        client = call.client
        await client.wait_head(call)
        frame = await self.run_call(call)
        if frame.startswith(b"+OK"):
            addr, _ = self.route(call)
            conn = client.dedicated.get(addr) if addr else None
            if conn is not None:
                client.watch = (slot, conn)

    def in_transaction(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
        name = args[0].upper()
        assert client.tx is not None
        if name == b"MULTI":
            client.reply_now(_err("ERR MULTI calls can not be nested"))
        elif name == b"WATCH":
            client.reply_now(_err("ERR WATCH inside MULTI is not allowed"))
        elif name == b"DISCARD":
            client.tx = None
            if client.watch is not None:
                client.watch[1].close()
                client.watch = None
            client.reply_now(b"+OK\r\n")
        elif name == b"EXEC":
            call = client.add(Call(client, args, raw))
            queued, client.tx = client.tx, None
            self.serial(client, lambda: self._exec(call, queued))
        else:
            cmd = lookup(self.commands or {}, args)
            if cmd is None:
                client.tx_dirty = True
                shown = " ".join(f"'{a.decode(errors='replace')}'" for a in args[1:3])
                client.reply_now(
                    _err(
                        f"ERR unknown command '{args[0].decode(errors='replace')}', "
                        f"with args beginning with: {shown}"
                    )
                )
            elif (cmd.arity > 0 and len(args) != cmd.arity) or len(args) < -cmd.arity:
                client.tx_dirty = True
                client.reply_now(encode(_arity(args[0].decode(errors="replace").lower())))
            else:
                client.tx.append((args, raw))
                client.reply_now(b"+QUEUED\r\n")

    async def _exec(self, call: Call, queued: list[tuple[list[bytes], bytes | None]]) -> None:
        client = call.client
        await client.wait_head(call)
        watch, client.watch = client.watch, None
        try:
            if client.tx_dirty:
                call.finish(_err("EXECABORT Transaction discarded because of previous errors."))
                return
            slots: set[int] = set()
            for args, _ in queued:
                cmd = lookup(self.commands or {}, args)
                positions = key_positions(cmd, args) if cmd is not None else []
                slots.update(key_slot(args[i]) for i in positions or [])
            if watch is not None:
                slots.add(watch[0])
            if len(slots) > 1:
                call.finish(CROSSSLOT)
                return
            if watch is not None:
                conn = watch[1]
                if conn.closed:  # the WATCH is gone with its connection: abort as if touched
                    call.finish(b"*-1\r\n")
                    return
            else:
                slot = next(iter(slots), None)
                probe = Call(client, [], None, slot)
                addr, _ = self.route(probe)
                if addr is None:
                    call.finish(_err("CLUSTERDOWN router: no primary for the transaction"))
                    return
                conn = self.dedicated(client, addr)
            payloads = [MULTI, *(raw or encode_command(args) for args, raw in queued), EXEC]
            try:
                frames = await conn.request(*payloads)
            except BackendLost as exc:
                addr_text = f"{exc.addr[0]}:{exc.addr[1]}"
                if exc.written:
                    call.finish(
                        _err(
                            f"ERR router: outcome unknown (connection to {addr_text} lost "
                            "after the request was sent)"
                        )
                    )
                else:
                    call.finish(_err(f"TRYAGAIN router: {addr_text} unreachable, not executed"))
                return
            for frame in frames[1:-1]:
                moved = replies.classify(frame)
                if isinstance(moved, replies.Moved):
                    self.note_moved(moved)
            call.finish(frames[-1])
        finally:
            if watch is not None:
                watch[1].close()

    # -- pub/sub ---------------------------------------------------------------------------------

    def enter_pubsub(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
        call = client.add(Call(client, args, raw))

        async def enter() -> None:
            await client.wait_head(call)
            if client.pubsub is None:
                client.pubsub = PubSub(self, client)
            call.finish(b"")
            self.in_pubsub(client, args, raw)

        self.serial(client, enter)

    def in_pubsub(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> bool:
        """Handle a request of a subscribed client; False: not a pub/sub request (RESP3
        clients may run ordinary commands while subscribed)."""
        ps: PubSub = client.pubsub
        name = args[0].upper()
        payload = raw or encode_command(args)
        if name in (b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"PING"):
            conn = ps.classic_conn()
            if conn is None:
                client.push(_err("CLUSTERDOWN The cluster is down (no layout yet)"))
            else:
                conn.send_nowait(payload)
            return True
        if name in (b"SSUBSCRIBE", b"SUNSUBSCRIBE"):
            if len(args) == 1:
                for conn in list(ps.sharded.values()):
                    conn.send_nowait(payload)
                if not ps.sharded:
                    client.push(encode([b"sunsubscribe", None, 0], client.resp3))
                return True
            slot = slot_of(args, range(1, len(args)))
            if slot is False:
                client.push(CROSSSLOT)
                return True
            assert isinstance(slot, int)
            route = self.table[slot]
            if route is None or route.primary is None:
                client.push(_err(f"CLUSTERDOWN Hash slot {slot} not served"))
                return True
            ps.sharded_conn(route.primary).send_nowait(payload)
            return True
        if name in (b"QUIT", b"RESET"):
            return False
        if client.resp3:
            return False
        client.push(
            _err(
                f"ERR Can't execute '{args[0].decode(errors='replace').lower()}': only "
                "(P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed "
                "in this context"
            )
        )
        return True

    # -- status --------------------------------------------------------------------------------

    def state(self, ops_per_sec: float) -> dict[str, Any]:
        backends = sum(1 for conns in self.pools.values() for c in conns if c is not None)
        return {
            "id": self.id,
            "address": f"{self.plan.router_host}:{self.plan.router_port}",
            "pid": os.getpid(),
            "worker": self.worker,
            "connections": len(self.clients),
            "backend_connections": backends,
            "ops_per_sec": round(ops_per_sec, 1),
            "ops_total": self.ops,
            "client_errors": self.errors,
            "epoch": self.layout.epoch if self.layout else 0,
            "read_from": self.read_from,
            "commands_loaded": self.commands is not None,
        }

    async def publish_state(self, link: bus.BusLink, stop: asyncio.Event) -> None:
        topic = bus.topic(self.plan.name, "routers", self.id, "state")
        last_ops, last_t = self.ops, time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            now = time.monotonic()
            rate = (self.ops - last_ops) / max(now - last_t, 1e-6)
            last_ops, last_t = self.ops, now
            link.publish(topic, bus.encode(self.state(rate)), retain=True)


class _AskWaiter:
    def on_reply(self, frame: bytes) -> None:
        pass

    def on_lost(self, written: bool, addr: routes.Addr) -> None:
        pass


_ASK_WAITER = _AskWaiter()
_FORWARD = object()


def _arity(cmd: str) -> Err:
    return Err(f"ERR wrong number of arguments for '{cmd}' command")


def auth_without_password(args: Sequence[bytes]) -> Any:
    """What the engine answers when no password is configured (default user, nopass)."""
    if len(args) == 2:
        return Err(
            "ERR AUTH <password> called without any password configured for the default user. "
            "Are you sure your configuration is correct?"
        )
    if len(args) == 3:
        if args[1] == b"default":
            return OK
        return Err("WRONGPASS invalid username-password pair or user is disabled.")
    return Err("ERR syntax error")


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def run_router(plan: Plan, *, worker: int = 0, reuse_port: bool = False) -> None:
    import signal

    router = Router(plan=plan, worker=worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = listen_socket(plan.router_host, plan.router_port, reuse_port=reuse_port)
    server = await loop.create_server(lambda: ClientConn(router), sock=sock)
    state_topic = bus.topic(plan.name, "routers", router.id, "state")
    link = bus.BusLink(
        host=plan.bus_host,
        port=plan.bus_port,
        name=f"router-{worker}",
        will=(state_topic, b"offline"),
        subscriptions=(bus.topic(plan.name, "layout"),),
        on_message=router.on_bus_message,
        log=router.log,
    )
    router.log.info(
        "router_started",
        address=f"{plan.router_host}:{plan.router_port}",
        read_from=router.read_from,
        worker=worker,
    )
    async with server, asyncio.TaskGroup() as tg:
        tg.create_task(link.run(stop, final=[(state_topic, b"offline")]), name="router.bus")
        tg.create_task(router.load_commands(stop), name="router.commands")
        tg.create_task(router.publish_state(link, stop), name="router.state")
        await stop.wait()
        server.close()
        for task in list(router.tasks):
            task.cancel()
        for conns in router.pools.values():
            for conn in conns:
                if conn is not None:
                    conn.close()
        for client in list(router.clients):
            if client.transport is not None:
                client.transport.close()
    router.log.info("router_stopped", last_epoch=router.layout.epoch if router.layout else None)
