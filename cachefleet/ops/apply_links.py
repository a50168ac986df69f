"""The connections of apply to a running cluster: redis-py clients and raw pipelined links
per node, observing the cluster, publishing layouts and events, writing plan.json, and the
marker of a change under way."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aredis
from redis.exceptions import RedisError

from cachefleet import bus
from cachefleet.announce import emit_event, publish_layout
from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import NodeLink
from cachefleet.ops.apply_view import Ends, View, _view
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import alive_and_ours, live_processes, read_pid
from cachefleet.state import ClusterDir
from cachefleet.tls import ca_for, remember_tls, tls_addresses, tls_files

Out = Callable[[str], None]

#: Slots moving at once per source shard, keys per MIGRATE, attempts per slot.
SLOT_WORKERS = 64
MIGRATES_IN_FLIGHT = 4  # per source
MAX_CONNECTIONS = 1024  # per node
KEY_BATCH = 1000
MOVE_ATTEMPTS = 60
#: How long one observation of two shards' primaries serves concurrent slot moves.
ENDS_TTL_S = 1.0
MIGRATE_TIMEOUT_MS = 60_000
#: The layout is published at most this often while slots move (and once at the end).
PUBLISH_EVERY_S = 0.5
#: Present in the cluster's directory while a change is under way (or was interrupted).
MARKER = "modifying.json"


class EngineReplyError(CachefleetError):
    """An error reply of an engine to one of apply's commands."""


#: What a raw link raises when its node is gone or slow.
LINK_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, hiredis.ProtocolError)


class ClusterLinks:
    """One change's connections to the cluster's nodes, its bus outbox and its view of the
    cluster (the base of the slot mover and of the steps)."""

    def __init__(self, cdir: ClusterDir, plan: Plan, out: Out) -> None:
        self.cdir = cdir
        self.plan = plan
        self.out = out
        self.auth = cdir.admin()
        self.clients: dict[str, aredis.Redis] = {}
        self.outbox = bus.Outbox(plan.bus_host, plan.bus_port)
        self.epoch = 0
        self.last_publish = 0.0
        self.t0 = time.monotonic()
        self._ends: dict[tuple[int, int], Ends] = {}
        self._split: dict[int, str] = {}  # -n -> a second serving primary of a shard (merge)
        self._told_failover = False
        self._migrate_slots: dict[str, asyncio.Semaphore] = {}
        self._links: dict[str, list[NodeLink]] = {}  # idle raw links per node
        self._ends_lock = asyncio.Lock()

    def step(self, msg: str) -> None:
        self.out(f"[{time.monotonic() - self.t0:5.1f}s] {msg}")

    # -- connections -----------------------------------------------------------------------

    def client(self, node: NodeSpec) -> aredis.Redis:
        c = self.clients.get(node.name)
        if c is None:
            ca = ca_for(node.host, node.port)  # a TLS cluster's node
            c = aredis.Redis(
                host=node.host,
                port=node.port,
                ssl=ca is not None,
                ssl_ca_certs=str(ca) if ca is not None else None,
                username=self.auth.user,
                password=self.auth.password,
                socket_timeout=MIGRATE_TIMEOUT_MS / 1000 + 10,
                socket_connect_timeout=2.0,
                decode_responses=False,  # keys are bytes
                protocol=2,
                # every source's SLOT_WORKERS may talk to one target at once
                max_connections=MAX_CONNECTIONS,
            )
            self.clients[node.name] = c
        return c

    async def close(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()), return_exceptions=True)
        self.clients.clear()
        links = [link for idle in self._links.values() for link in idle]
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        self._links.clear()

    async def call(self, node: NodeSpec, *args: Any) -> Any:
        return await self.client(node).execute_command(*args)  # type: ignore[no-untyped-call]

    async def try_call(self, node: NodeSpec, *args: Any) -> Any:
        try:
            return await self.call(node, *args)
        except (RedisError, OSError, TimeoutError):
            return None

    async def raw(self, node: NodeSpec, *args: Any, timeout: float = 10.0) -> Any:
        """One command on a raw link of its own (a pool per node: hiredis framing, no client
        library between, so the migration's many small commands cost little CPU here).
        An error reply raises EngineReplyError."""
        idle = self._links.setdefault(node.name, [])
        link = idle.pop() if idle else NodeLink(host=node.host, port=node.port, auth=self.auth)
        try:
            reply = await link.request(*args, timeout=timeout)
        except BaseException:
            await link.close()
            raise
        idle.append(link)
        if isinstance(reply, hiredis.ReplyError):
            raise EngineReplyError(str(reply))
        return reply

    async def info(self, node: NodeSpec, section: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.client(node).info(section)
            return result
        except (RedisError, OSError, TimeoutError):
            return {}

    async def in_sync(self, node: NodeSpec) -> bool:
        rep = await self.info(node, "replication")
        return rep.get("master_link_status") == "up" and not rep.get("master_sync_in_progress")

    async def observe(self, nodes: Sequence[NodeSpec]) -> View:
        replies = await asyncio.gather(*(self.try_call(n, "CLUSTER", "NODES") for n in nodes))
        texts = {
            n.name: r.decode() for n, r in zip(nodes, replies, strict=True) if isinstance(r, bytes)
        }
        view = _view(texts, nodes)
        if view is None:
            raise ClusterTimeout("observe the cluster", 0, "no node answers CLUSTER NODES")
        return view

    # -- layout ----------------------------------------------------------------------------

    def layout_of(self, view: View, nodes: Sequence[NodeSpec], epoch: int) -> Layout:
        shards = []
        for shard in sorted({n.shard for n in nodes}):
            primary = view.primary(shard, nodes)
            members = []
            slots: tuple[tuple[int, int], ...] = ()
            for spec in (n for n in nodes if n.shard == shard):
                line = view.by_name.get(spec.name)
                if line is None:
                    continue
                role = "primary" if spec.name == primary else "replica"
                if role == "primary":
                    slots = line.slots
                members.append(
                    LayoutNode(
                        name=spec.name, id=line.id, shard=shard, zone=spec.zone, host=spec.host,
                        port=spec.port, bus_port=spec.bus_port, role=role,
                    )
                )  # fmt: skip
            shards.append(LayoutShard(id=shard, slots=slots, nodes=tuple(members)))
        return Layout(cluster=self.plan.name, epoch=epoch, shards=tuple(shards))

    async def publish(self, nodes: Sequence[NodeSpec], *, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self.last_publish < PUBLISH_EVERY_S:
            return
        self.last_publish = now
        view = await self.observe(nodes)
        saved = self.cdir.load_layout()
        self.epoch = max(self.epoch, saved.epoch if saved else 0) + 1
        layout = self.layout_of(view, nodes, self.epoch)
        publish_layout(self.outbox, self.cdir, layout)
        await self.outbox.flush()

    def event(self, kind: str, **fields: Any) -> None:
        emit_event(self.outbox, self.cdir, kind, **fields)

    # -- plan.json -------------------------------------------------------------------------

    def write_plan(self, plan: Plan) -> None:
        """plan.json changes (the zone agents follow it); a zone that gains its first node
        gets an agent, one left without nodes loses it."""
        from cachefleet.ops.lifecycle import follow_zones

        tmp = self.cdir.plan_path.with_name(f".plan.{os.getpid()}.tmp")
        tmp.write_text(plan.to_json())
        tmp.replace(self.cdir.plan_path)
        self.plan = plan
        if plan.topology.security.tls:  # new nodes speak TLS too
            remember_tls(tls_files(self.cdir.root).ca, tls_addresses(plan))
        if plan.topology.security.allowed_sources:  # new nodes' ports get the same rules
            from cachefleet.ops import firewall

            firewall.install(plan)
        if follow_zones(plan, self.cdir, live_processes(self.cdir)):
            self.step("the supervisor restarts to follow the zones in use")

    # -- steps -----------------------------------------------------------------------------


def _read_marker(cdir: ClusterDir) -> dict[str, Any]:
    try:
        data = json.loads((cdir.root / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update_marker(cdir: ClusterDir, **fields: Any) -> None:
    data = {**_read_marker(cdir), **fields}
    tmp = cdir.root / f".{MARKER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(cdir.root / MARKER)


async def _until(what: str, timeout: float, check: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise ClusterTimeout(what, timeout)


async def _wait_stopped(cdir: ClusterDir, names: list[str], timeout: float) -> None:
    marker = str(cdir.root)

    async def stopped() -> bool:
        for name in names:
            pid = read_pid(cdir.pid_file(f"node.{name}"))
            if pid is not None and alive_and_ours(pid, marker):
                return False
        return True

    await _until("removed nodes to stop", timeout, stopped)
