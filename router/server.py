"""The router process: configuration endpoint for cluster-aware clients.

It answers ``CLUSTER SLOTS|SHARDS|NODES|INFO`` from the live layout on the bus, so a client
bootstraps from this one well-known address and then talks to the nodes directly. Keyed
commands get ``MOVED`` to the owning primary (``redis-cli -c`` and cluster clients follow it);
keyless ones are forwarded to a primary and the reply relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Sequence
from typing import Any

import aiomqtt
import hiredis
import structlog

from cachefleet import bus
from cachefleet.layout import Layout, LayoutShard
from cachefleet.plan import Plan
from cachefleet.slots import SLOTS, key_slot
from router.resp import OK, Err, InlineError, Simple, Verbatim, encode, encode_command, split_inline

CROSSSLOT = Err("CROSSSLOT Keys in request don't hash to the same slot")
MAX_INLINE = 64 * 1024
#: Commands the router answers itself, whatever their keys.
LOCAL = {
    b"PING", b"ECHO", b"HELLO", b"AUTH", b"QUIT", b"CLUSTER", b"SELECT", b"READONLY",
    b"READWRITE", b"CLIENT", b"COMMAND", b"RESET",
}  # fmt: skip


class BackendError(Exception):
    pass


class NodeLink:
    """One raw connection to an engine node, one request at a time (forwarding of rare
    commands only; the data path of cluster-aware clients goes to the nodes directly)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.lock = asyncio.Lock()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, args: Sequence[bytes | str | int], timeout: float = 5.0) -> Any:
        async with self.lock:
            try:
                return await asyncio.wait_for(self._call(args), timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                await self.close()
                raise BackendError(
                    f"node {self.host}:{self.port}: {exc or type(exc).__name__}"
                ) from exc

    async def _call(self, args: Sequence[bytes | str | int]) -> Any:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        parser = hiredis.Reader(notEnoughData=Ellipsis)
        self.writer.write(encode_command(args))
        await self.writer.drain()
        while True:
            chunk = await self.reader.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(b"", None)
            parser.feed(chunk)
            reply = parser.gets()
            if reply is not Ellipsis:
                return reply

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class Router:
    def __init__(self, *, plan: Plan) -> None:
        self.plan = plan
        self.log = structlog.get_logger("router").bind(cluster=plan.name)
        self.layout: Layout | None = None
        self.slot_table: list[LayoutShard | None] = [None] * SLOTS
        self.layout_ready = asyncio.Event()
        self.links: dict[tuple[str, int], NodeLink] = {}
        self.command_table: dict[bytes, tuple[int, int, int, bool]] | None = None
        self.client_ids = itertools.count(1)
        self.connections = 0

    # -- layout -----------------------------------------------------------------------------

    def apply_layout(self, layout: Layout) -> bool:
        if self.layout is not None and layout.epoch < self.layout.epoch:
            self.log.info("layout_ignored_stale", epoch=layout.epoch, current=self.layout.epoch)
            return False
        self.layout = layout
        self.slot_table = layout.slot_table()
        self.layout_ready.set()
        self.log.info("layout_applied", epoch=layout.epoch)
        return True

    async def follow_layout(self, stop: asyncio.Event) -> None:
        topic = bus.topic(self.plan.name, "layout")
        backoff = 0.2
        while not stop.is_set():
            try:
                async with bus.client(self.plan.bus_host, self.plan.bus_port, "router") as c:
                    backoff = 0.2
                    await c.subscribe(topic, qos=1)
                    async for msg in c.messages:
                        data = bus.decode(msg.payload)
                        if data is None:
                            continue
                        try:
                            self.apply_layout(Layout.from_dict(data))
                        except (KeyError, TypeError, ValueError) as exc:
                            self.log.warning("layout_invalid", error=str(exc))
            except aiomqtt.MqttError as exc:
                self.log.warning("bus_disconnected", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0) * random.uniform(0.8, 1.2)

    def primaries(self) -> list[tuple[str, int]]:
        if self.layout is None:
            return []
        return [(s.primary.host, s.primary.port) for s in self.layout.shards if s.primary]

    def link(self, host: str, port: int) -> NodeLink:
        key = (host, port)
        if key not in self.links:
            self.links[key] = NodeLink(host, port)
        return self.links[key]

    async def forward(self, args: Sequence[bytes], target: tuple[str, int] | None = None) -> Any:
        """Send to `target` (or to a live primary) and return the parsed reply."""
        candidates = [target] if target else self.primaries()
        if not candidates:
            return Err("CLUSTERDOWN The cluster is down (no layout published yet)")
        random.shuffle(candidates)
        last: Exception | None = None
        for host, port in candidates:
            try:
                return await self.link(host, port).call(args)
            except BackendError as exc:
                last = exc
        return Err(f"ERR backend unavailable: {last}")

    # -- key positions ------------------------------------------------------------------------

    async def load_command_table(self) -> dict[bytes, tuple[int, int, int, bool]]:
        if self.command_table is None:
            reply = await self.forward([b"COMMAND"])
            table: dict[bytes, tuple[int, int, int, bool]] = {}
            if isinstance(reply, list):
                for entry in reply:
                    name = bytes(entry[0]).upper()
                    flags = {bytes(f) for f in entry[2]}
                    table[name] = (
                        int(entry[3]),
                        int(entry[4]),
                        int(entry[5]),
                        b"movablekeys" in flags,
                    )
                self.command_table = table
            return table
        return self.command_table

    async def keys_of(self, args: list[bytes]) -> list[bytes] | None:
        """Key arguments by the engine's own COMMAND table (COMMAND GETKEYS when movable);
        None when the command has no keys or is unknown."""
        table = await self.load_command_table()
        name = args[0].upper()
        entry = table.get(name)
        if entry is None:
            return None
        first, last, step, movable = entry
        if movable or first == 0:
            if first == 0 and not movable and len(args) < 2:
                return None
            reply = await self.forward([b"COMMAND", b"GETKEYS", *args])
            if isinstance(reply, list) and reply:
                return [bytes(k) for k in reply]
            return None
        if last < 0:
            last = len(args) + last
        return [args[i] for i in range(first, min(last, len(args) - 1) + 1, max(step, 1))]

    # -- the endpoint ---------------------------------------------------------------------

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

    async def handle_cluster(self, args: list[bytes]) -> Any:
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
        return await self.forward(args)

    def moved(self, slot: int) -> Any:
        shard = self.slot_table[slot]
        if shard is None or shard.primary is None:
            return Err(f"CLUSTERDOWN Hash slot {slot} not served")
        return Err(f"MOVED {slot} {shard.primary.host}:{shard.primary.port}")

    async def execute(self, conn: ClientState, args: list[bytes]) -> Any:
        name = args[0].upper()
        if name == b"PING":
            return Simple("PONG") if len(args) == 1 else args[1]
        if name == b"ECHO":
            return args[1] if len(args) == 2 else _arity("echo")
        if name == b"QUIT":
            conn.closing = True
            return OK
        if name == b"HELLO":
            return self.hello(conn, args)
        if name == b"AUTH":
            return auth_without_password(args)
        if name == b"SELECT":
            if len(args) != 2:
                return _arity("select")
            return OK if args[1] == b"0" else Err("ERR SELECT is not allowed in cluster mode")
        if name in (b"READONLY", b"READWRITE", b"RESET"):
            return OK if name != b"RESET" else Simple("RESET")
        if name == b"CLIENT":
            return self.client_command(conn, args)
        if name == b"CLUSTER":
            return await self.handle_cluster(args)
        if name == b"COMMAND":
            return await self.forward(args)
        if not self.layout_ready.is_set():
            return Err("CLUSTERDOWN The cluster is down (no layout published yet)")
        keys = await self.keys_of(args)
        if not keys:
            return await self.forward(args)
        slots = {key_slot(k) for k in keys}
        if len(slots) > 1:
            return CROSSSLOT
        return self.moved(slots.pop())

    def hello(self, conn: ClientState, args: list[bytes]) -> Any:
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

    def client_command(self, conn: ClientState, args: list[bytes]) -> Any:
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"ID":
            return conn.id
        if sub == b"SETNAME" and len(args) == 3:
            conn.name = args[2]
            return OK
        if sub == b"GETNAME":
            return conn.name
        if sub in (b"SETINFO", b"NO-EVICT", b"NO-TOUCH", b"REPLY", b"TRACKING"):
            return OK
        return Err(f"ERR unknown subcommand '{sub.decode(errors='replace')}' for the router")

    # -- transport --------------------------------------------------------------------------

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = ClientState(id=next(self.client_ids))
        self.connections += 1
        parser = hiredis.Reader(notEnoughData=Ellipsis)
        pending = b""
        try:
            while not conn.closing:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                try:
                    requests, pending = self._frame(parser, pending + chunk)
                except (hiredis.ProtocolError, InlineError) as exc:
                    writer.write(encode(Err(f"ERR Protocol error: {exc}")))
                    self.log.info("client_protocol_error", client=conn.id, error=str(exc))
                    break
                for args in requests:
                    if not args:
                        continue
                    try:
                        reply = await self.execute(conn, args)
                    except Exception as exc:  # one bad request never takes the router down
                        self.log.exception("request_failed", client=conn.id)
                        reply = Err(f"ERR router: {exc}")
                    if isinstance(reply, hiredis.ReplyError):
                        reply = Err(str(reply))
                    writer.write(encode(reply, conn.protocol == 3))
                    if conn.closing:
                        break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _frame(self, parser: Any, data: bytes) -> tuple[list[list[bytes]], bytes]:
        """Split received bytes into requests: RESP arrays via hiredis, inline lines otherwise.
        Returns the requests and the bytes of an incomplete inline line."""
        out: list[list[bytes]] = []
        while data:
            if data[:1] == b"*" or parser.has_data():
                parser.feed(data)
                data = b""
                while True:
                    req = parser.gets()
                    if req is Ellipsis:
                        break
                    if not isinstance(req, list):
                        raise hiredis.ProtocolError("expected an array of bulk strings")
                    out.append([bytes(a) if not isinstance(a, bytes) else a for a in req])
                break
            end = data.find(b"\n")
            if end < 0:
                if len(data) > MAX_INLINE:
                    raise InlineError("too big inline request")
                return out, data
            line, data = data[:end].rstrip(b"\r"), data[end + 1 :]
            out.append(split_inline(line))
        return out, b""


class ClientState:
    def __init__(self, id: int) -> None:
        self.id = id
        self.protocol = 2
        self.name: bytes | None = None
        self.closing = False


def _arity(cmd: str) -> Err:
    return Err(f"ERR wrong number of arguments for '{cmd}' command")


def auth_without_password(args: list[bytes]) -> Any:
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


async def run_router(plan: Plan) -> None:
    import signal

    router = Router(plan=plan)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(
        router.serve_client, plan.router_host, plan.router_port, reuse_address=True, backlog=1024
    )
    router.log.info("router_started", address=f"{plan.router_host}:{plan.router_port}")
    async with server, asyncio.TaskGroup() as tg:
        follower = tg.create_task(router.follow_layout(stop), name="router.layout")
        await stop.wait()
        follower.cancel()
        server.close()
        for link in router.links.values():
            await link.close()
    router.log.info("router_stopped", last_epoch=router.layout.epoch if router.layout else None)
