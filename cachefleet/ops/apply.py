"""`cachefleet apply`: bring a running cluster to the topology file, online.

The topology file is the desired state. :func:`apply` observes the cluster (plan, live
roles, slot owners), asks :mod:`cachefleet.reshape` for the difference, prints it as a plan
and carries it out in this order, each step safe to interrupt:

1. live settings (CONFIG SET on every node; plan.json renders them for nodes started later);
2. new nodes: plan.json gains them (the zone agents start them), they meet the cluster and
   replicate their shard's primary (a new shard's first member stays an empty primary), and
   count once their link is up and synced;
3. replaced shards (node type, engine binary): a graceful failover hands the primary to a
   new node;
4. slots: the fewest moves to even the shards out, with the engine's own migration
   (SETSLOT IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE), a source at a time per
   primary and all sources at once; the layout is published as slots move;
5. removed nodes: out of the layout, plan.json loses them (their agents stop them), every
   other node forgets them;
6. the control processes whose settings changed, and the sentinels whenever nodes changed,
   restart one at a time.

Resumable: every step is computed from what runs, so a rerun after Ctrl-C, kill -9 or a
reboot continues (a slot left half-migrated is finished first). ``<cluster>/modifying.json``
exists while a change is under way: `status` then says "modifying".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aredis
import yaml
from redis.exceptions import RedisError, ResponseError

from cachefleet import bus, ports
from cachefleet.announce import emit_event, publish_layout
from cachefleet.engine import resolve_engine_binary
from cachefleet.errors import CachefleetError, ClusterTimeout, StateError
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import NodeLine, NodeLink, parse_cluster_nodes
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import alive_and_ours, live_processes, read_pid
from cachefleet.reshape import (
    Move,
    Reshape,
    check_changeable,
    live_settings,
    rebalance,
    reshape,
    restarts,
)
from cachefleet.slots import split_slots
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import ca_for, remember_tls, tls_addresses, tls_files
from cachefleet.topology import Topology, load_topology

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


# --- observing ----------------------------------------------------------------------------


@dataclass
class View:
    """One node's CLUSTER NODES, mapped onto plan nodes."""

    lines: list[NodeLine]
    by_name: dict[str, NodeLine]
    open: list[tuple[str, int, str, str]]  # (node name, slot, "importing"|"migrating", peer id)

    def primary(self, shard: int, plan_nodes: Sequence[NodeSpec]) -> str | None:
        """The member of `shard` serving it: the master holding slots, else a lone master."""
        members = [n for n in plan_nodes if n.shard == shard and n.name in self.by_name]
        masters = [n for n in members if self.by_name[n.name].is_primary]
        serving = [n for n in masters if self.by_name[n.name].slots]
        pick = serving or masters
        return pick[0].name if pick else None

    def owned(self, plan_nodes: Sequence[NodeSpec]) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for n in plan_nodes:
            line = self.by_name.get(n.name)
            if line is not None and line.is_primary:
                out.setdefault(n.shard, []).extend(line.slots)
        return out


_OPEN = re.compile(r"\[(\d+)-([<>])-([0-9a-f]+)\]")


def _view(texts: dict[str, str], plan_nodes: Sequence[NodeSpec]) -> View | None:
    """Combine the nodes' own views: slots and roles from the first answering node that
    sees every slot served, open migrations from each node's own line."""
    by_addr = {(n.host, n.port): n.name for n in plan_nodes}
    best: list[NodeLine] | None = None
    for text in texts.values():
        lines = parse_cluster_nodes(text)
        served = sum(b - a + 1 for ln in lines if ln.is_primary for a, b in ln.slots)
        if best is None or served > sum(
            b - a + 1 for ln in best if ln.is_primary for a, b in ln.slots
        ):
            best = lines
    if best is None:
        return None
    by_name = {by_addr[(ln.host, ln.port)]: ln for ln in best if (ln.host, ln.port) in by_addr}
    opened = []
    for name, text in texts.items():
        me = next((ln for ln in text.splitlines() if _is_myself(ln)), "")
        for slot, arrow, peer in _OPEN.findall(me):
            opened.append((name, int(slot), "importing" if arrow == "<" else "migrating", peer))
    return View(best, by_name, opened)


def _is_myself(line: str) -> bool:
    parts = line.split()
    return len(parts) > 2 and "myself" in parts[2].split(",")


@dataclass(frozen=True)
class Ends:
    """Both sides of a slot move, as observed at `at`."""

    src: NodeSpec
    tgt: NodeSpec
    src_id: str
    tgt_id: str
    at: float


# --- the operation ------------------------------------------------------------------------


@dataclass
class Summary:
    """What a change does, as printed and as `--json` data."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    nodes_added: int = 0
    nodes_removed: int = 0
    slots: int = 0
    keys: int = 0
    bytes: int = 0
    settings: int = 0
    restarts: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.steps

    def line(self) -> str:
        return (
            f"Plan: {self.nodes_added} node(s) to add, {self.nodes_removed} to remove, "
            f"{self.slots:,} slot(s) to move (≈ {self.keys:,} keys, {self.bytes / 1e6:.0f} MB), "
            f"{self.settings} setting(s) to change"
            + (f", restart {', '.join(self.restarts)}" if self.restarts else "")
        )


class Applier:
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

    async def set_live(
        self, settings: list[tuple[str, str, str]], nodes: Sequence[NodeSpec]
    ) -> None:
        for key, old, new in settings:
            replies = await asyncio.gather(
                *(self.try_call(n, "CONFIG", "SET", key, new) for n in nodes)
            )
            failed = [n.name for n, r in zip(nodes, replies, strict=True) if r is None]
            if failed:
                raise CachefleetError(f"CONFIG SET {key} {new!r} failed on {', '.join(failed)}")
            self.step(f"set {key}: {old or '(default)'} -> {new} on {len(nodes)} nodes")
            self.event("parameter_changed", parameter=key, old=old, new=new, nodes=len(nodes))

    async def wait_answering(
        self, nodes: Sequence[NodeSpec], timeout: float = 30.0
    ) -> dict[str, str]:
        ids: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in nodes:
                if n.name not in ids:
                    reply = await self.try_call(n, "CLUSTER", "MYID")
                    if isinstance(reply, bytes):
                        ids[n.name] = reply.decode()
            if len(ids) == len(nodes):
                return ids
            await asyncio.sleep(0.05)
        missing = [n.name for n in nodes if n.name not in ids]
        raise ClusterTimeout("new nodes start", timeout, f"not answering: {', '.join(missing)}")

    async def join(self, added: Sequence[NodeSpec], union: Sequence[NodeSpec]) -> None:
        """New nodes meet the cluster, replicate their shard's primary, and sync."""
        ids = await self.wait_answering(added)
        view = await self.observe(union)
        anchor = next(n for n in union if n.name in view.by_name and n not in added)
        for n in added:
            if n.name not in view.by_name or ids[n.name] != view.by_name[n.name].id:
                await self.call(n, "CLUSTER", "MEET", anchor.host, anchor.port, anchor.bus_port)
        # Every member must know every other, new ones included: a new replica asked to
        # CLUSTER REPLICATE a new primary it has not met yet answers "Unknown node".
        wanted = set(ids.values()) | {
            view.by_name[n.name].id for n in union if n.name in view.by_name and n not in added
        }

        async def all_known() -> bool:
            texts = await asyncio.gather(*(self.try_call(n, "CLUSTER", "NODES") for n in union))
            for n, text in zip(union, texts, strict=True):
                if not isinstance(text, bytes):
                    if n in added:
                        return False
                    continue  # an old member that is down: failover is not apply's business
                known = {
                    ln.id
                    for ln in parse_cluster_nodes(text.decode())
                    if "handshake" not in ln.flags
                }
                if not wanted <= known:
                    return False
            return True

        await _until("new nodes known everywhere", 30.0, all_known)
        view = await self.observe(union)
        for n in added:
            primary = view.primary(n.shard, union)
            if primary is None or primary == n.name:
                continue  # a new shard's first member: an empty primary
            line = view.by_name.get(n.name)
            pid = view.by_name[primary].id
            if line is not None and line.primary_id == pid:
                continue
            await self.replicate(n, pid)

        async def synced() -> bool:
            for n in added:
                if n.member == min(m.member for m in union if m.shard == n.shard) and not any(
                    m.shard == n.shard and m not in added for m in union
                ):
                    continue  # a new shard's primary
                if not await self.in_sync(n):
                    return False
            return True

        await _until("new replicas in sync", 120.0, synced)
        for n in added:
            self.event("node_added", node=n.name, zone=n.zone, shard=n.shard, address=n.address)
            self.step(f"node {n.name} ({n.zone}) joined shard {n.shard}")

    async def replicate(self, node: NodeSpec, primary_id: str) -> int:
        """CLUSTER REPLICATE; a master without slots that still holds keys (in slots it no
        longer owns: no client reaches them, and a replica's first sync replaces them) is
        emptied first, as the engine requires. Returns the keys dropped."""
        orphans = 0
        line = next(
            (ln for ln in (await self.observe([node])).lines if ln.is_myself), None
        )  # fmt: skip
        if line is not None and line.is_primary and not line.slots:
            orphans = int(await self.call(node, "DBSIZE"))
            if orphans:
                self.step(f"{node.name}: {orphans} key(s) in slots it does not own, dropped")
                await self.call(node, "FLUSHALL")
        deadline = time.monotonic() + 15.0
        while True:  # gossip may not yet have told `node` of its primary
            try:
                await self.call(node, "CLUSTER", "REPLICATE", primary_id)
                return orphans
            except ResponseError as e:
                if "Unknown node" not in str(e) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.1)

    async def hand_over(self, shard: int, to: NodeSpec, union: Sequence[NodeSpec]) -> None:
        """A graceful failover of `shard` to `to` (plain CLUSTER FAILOVER: no write lost)."""
        view = await self.observe(union)
        old = view.primary(shard, union)
        if old == to.name:
            return
        await self.wait_synced(to)
        for attempt in range(3):
            await self.call(to, "CLUSTER", "FAILOVER")
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                raw = await self.try_call(to, "CLUSTER", "NODES")
                me = next(
                    (ln for ln in parse_cluster_nodes(raw.decode()) if ln.is_myself), None
                ) if isinstance(raw, bytes) else None  # fmt: skip
                if me is not None and me.serving:
                    await self.publish(union)
                    self.event(
                        "switch_primary", shard=shard, old_primary=old, new_primary=to.name,
                        zone=to.zone, reason="apply",
                    )  # fmt: skip
                    self.step(f"shard {shard}: primary {old} -> {to.name}")
                    return
                await asyncio.sleep(0.05)
            self.step(f"shard {shard}: handover to {to.name} not done yet (attempt {attempt + 1})")
        raise ClusterTimeout(f"handover of shard {shard} to {to.name}", 30.0)

    async def wait_synced(self, node: NodeSpec, timeout: float = 60.0) -> None:
        await _until(f"{node.name} in sync", timeout, lambda: self.in_sync(node))

    # -- slots -----------------------------------------------------------------------------

    async def migrate(self, moves: Sequence[Move], union: Sequence[NodeSpec]) -> tuple[int, int]:
        """Carry out slot moves; returns (slots, keys) moved.

        Every CLUSTER SETSLOT waits until the primary's replicas have it (Valkey 8), a few
        milliseconds each: so slots move SLOT_WORKERS at a time per source shard, each on
        connections of its own, and all source shards at once. The layout is published
        every PUBLISH_EVERY_S meanwhile, so `status` and the router follow the move."""
        by_source: dict[int, list[Move]] = {}
        for m in moves:
            by_source.setdefault(m.source, []).append(m)
        totals = [0, 0]
        done = asyncio.Event()

        async def publisher() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), PUBLISH_EVERY_S)
                with contextlib.suppress(CachefleetError, RedisError, OSError):
                    await self.publish(union)

        async def run_source(source_moves: list[Move]) -> None:
            sem = asyncio.Semaphore(SLOT_WORKERS)

            async def one(slot: int, m: Move) -> int:
                async with sem:
                    return await self.move_slot(slot, m.source, m.target, union)

            for m in source_moves:
                counts = await asyncio.gather(*(one(s, m) for s in range(m.start, m.end + 1)))
                keys = sum(counts)
                totals[0] += m.count
                totals[1] += keys
                self.event(
                    "slots_migrated", source=m.source, target=m.target, slots=m.count,
                    first=m.start, last=m.end, keys=keys,
                )  # fmt: skip
                self.step(
                    f"slots {m.start}-{m.end} ({m.count}) shard {m.source} -> {m.target}: "
                    f"{keys:,} keys"
                )

        background = asyncio.create_task(publisher())
        try:
            await asyncio.gather(*(run_source(ms) for ms in by_source.values()))
        finally:
            done.set()
            await background
        return totals[0], totals[1]

    async def endpoints(self, source: int, target: int, union: Sequence[NodeSpec]) -> Ends:
        """The current primaries of two shards (and every other primary), cached briefly so
        that concurrent slot moves share one observation."""
        key = (source, target)
        cached = self._ends.get(key)
        if cached is not None and time.monotonic() - cached.at < ENDS_TTL_S:
            return cached
        async with self._ends_lock:
            cached = self._ends.get(key)
            if cached is not None and time.monotonic() - cached.at < ENDS_TTL_S:
                return cached
            view = await self.observe(union)
            src_name = view.primary(source, union) if source > 0 else self._split[-source]
            tgt_name = view.primary(target, union)
            if src_name is None or tgt_name is None:
                missing = source if src_name is None else target
                raise CachefleetError(f"shard {missing} has no primary")
            by = {n.name: n for n in union}
            ends = Ends(
                src=by[src_name], tgt=by[tgt_name], src_id=view.by_name[src_name].id,
                tgt_id=view.by_name[tgt_name].id, at=time.monotonic(),
            )  # fmt: skip
            self._ends[key] = ends
            return ends

    async def move_slot(
        self, slot: int, source: int, target: int, union: Sequence[NodeSpec]
    ) -> int:
        """Move one slot, retried (with fresh primaries) when a node fails mid-way: every step
        of the protocol can be repeated. Returns keys moved."""
        for attempt in range(MOVE_ATTEMPTS):
            try:
                ends = await self.endpoints(source, target, union)
                return await self._move_slot(slot, ends)
            except (RedisError, *LINK_ERRORS, CachefleetError) as exc:
                if attempt == MOVE_ATTEMPTS - 1:
                    raise CachefleetError(f"slot {slot}: {exc}") from exc
                if attempt == 0 or attempt % 10 == 9:
                    self.step(f"slot {slot}: {exc!r}; retrying")
                self._ends.pop((source, target), None)
                await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
        raise AssertionError("unreachable")

    async def _move_slot(self, slot: int, e: Ends) -> int:
        try:
            await self.raw(e.tgt, "CLUSTER", "SETSLOT", slot, "IMPORTING", e.src_id)
        except EngineReplyError as exc:
            if "already the owner" in str(exc):
                return 0  # moved before (a resumed apply)
            raise
        await self.raw(e.src, "CLUSTER", "SETSLOT", slot, "MIGRATING", e.tgt_id)
        keys = await self._send_keys(slot, e)
        # the target first (it bumps its config epoch, so its claim wins), then the source;
        # the other primaries learn it by gossip within a round (telling each directly, as
        # redis-cli does, would add a replicated SETSLOT per primary per slot)
        await self.raw(e.tgt, "CLUSTER", "SETSLOT", slot, "NODE", e.tgt_id)
        await self.raw(e.src, "CLUSTER", "SETSLOT", slot, "NODE", e.tgt_id)
        return keys

    def _migrating(self, node: NodeSpec) -> asyncio.Semaphore:
        """At most MIGRATES_IN_FLIGHT per source: MIGRATE blocks the whole engine until the
        target has the keys, so many in flight only queue the sentinels' probes behind them
        (64 made two healthy primaries look down for a second on a loaded machine); a few
        keep the engine busy while this process reads a reply. The SETSLOT steps, which
        block only their own connection, stay concurrent."""
        sem = self._migrate_slots.get(node.name)
        if sem is None:
            sem = self._migrate_slots[node.name] = asyncio.Semaphore(MIGRATES_IN_FLIGHT)
        return sem

    async def _send_keys(self, slot: int, e: Ends) -> int:
        """MIGRATE every key of the slot. Once the slot is MIGRATING no key can appear in it
        on the source (a write to a missing key is sent to the target with ASK), so one
        listing shorter than KEY_BATCH is the last; SETSLOT NODE refuses, and the slot is
        tried again, should any key remain."""
        keys = 0
        replace_keys = False
        while True:
            found = await self.raw(e.src, "CLUSTER", "GETKEYSINSLOT", slot, KEY_BATCH)
            if not found:
                return keys
            try:
                async with self._migrating(e.src):
                    await self.raw(
                        e.src, "MIGRATE", e.tgt.host, e.tgt.port, "", 0, MIGRATE_TIMEOUT_MS,
                        *(["REPLACE"] if replace_keys else []),
                        "AUTH2", self.auth.user, self.auth.password, "KEYS", *found,
                        timeout=MIGRATE_TIMEOUT_MS / 1000 + 5,
                    )  # fmt: skip
            except EngineReplyError as exc:
                if "BUSYKEY" not in str(exc) or replace_keys:
                    raise
                # A migration resumed after a failover: the source's copy was served (and
                # possibly written) since, so it wins.
                replace_keys = True
                continue
            keys += len(found)
            if len(found) < KEY_BATCH:
                return keys

    async def merge_split(self, union: Sequence[NodeSpec]) -> None:
        """A shard with two serving primaries (a primary paused long enough to be failed over
        while it was importing slots can keep them): the second one's slots move to the
        shard's primary, then it replicates it."""
        view = await self.observe(union)
        for name, shard in _split_primaries(view, union):
            line = view.by_name[name]
            slots = [x for a, b in line.slots for x in range(a, b + 1)]
            key = len(self._split) + 1
            self._split[key] = name
            self.step(f"shard {shard}: {name} holds {len(slots)} slot(s) as a second primary")
            for slot in slots:
                await self.move_slot(slot, -key, shard, union)
            primary = view.primary(shard, union)
            assert primary is not None
            node = next(n for n in union if n.name == name)
            orphans = await self.replicate(node, view.by_name[primary].id)
            self.event("switch_primary", shard=shard, old_primary=name, new_primary=primary,
                       reason="apply merged a second primary", orphan_keys=orphans)  # fmt: skip

    async def finish_open(self, union: Sequence[NodeSpec]) -> None:
        """A slot left importing/migrating by an interrupted apply (or a failover during a
        migration) is moved on to the node that was importing it."""
        view = await self.observe(union)
        by_id = {ln.id: name for name, ln in view.by_name.items()}
        by = {n.name: n for n in union}
        moves: dict[tuple[int, int], list[int]] = {}
        for name, slot, kind, peer in view.open:
            importer = name if kind == "importing" else by_id.get(peer)
            if importer is None:
                continue
            owner = next(
                (n for n, ln in view.by_name.items() if ln.is_primary and
                 any(a <= slot <= b for a, b in ln.slots)),
                None,
            )  # fmt: skip
            if owner is None or owner == importer:
                await self.try_call(by[name], "CLUSTER", "SETSLOT", slot, "STABLE")
                continue
            moves.setdefault((by[owner].shard, by[importer].shard), []).append(slot)
        for (source, target), slots in moves.items():
            self.step(f"finishing {len(slots)} slot(s) left migrating: shard {source} -> {target}")
            for slot in sorted(set(slots)):
                await self.move_slot(slot, source, target, union)

    async def count_keys(
        self, moves: Sequence[Move], view: View, union: Sequence[NodeSpec]
    ) -> tuple[int, int]:
        """(keys, bytes) the moves carry, estimated from COUNTKEYSINSLOT and memory per key."""
        keys = 0
        size = 0
        for source in {m.source for m in moves}:
            name = view.primary(source, union)
            if name is None:
                continue
            node = next(n for n in union if n.name == name)
            pipe = self.client(node).pipeline(transaction=False)
            slots = [s for m in moves if m.source == source for s in range(m.start, m.end + 1)]
            for s in slots:
                pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
            counts = await pipe.execute(raise_on_error=False)
            n_keys = sum(c for c in counts if isinstance(c, int))
            dataset = (await self.info(node, "memory")).get("used_memory_dataset")
            dbsize = await self.try_call(node, "DBSIZE")
            if isinstance(dataset, int) and isinstance(dbsize, int) and dbsize:
                size += int(dataset * n_keys / dbsize)
            keys += n_keys
        return keys, size

    async def remove(self, nodes: Sequence[NodeSpec], final: Plan) -> None:
        """Nodes that hold no slots leave: the layout without them, then plan.json (their
        agents stop them), then every remaining node forgets them. What leaves is written
        to the marker first, so an interrupted removal is finished by the next apply."""
        view = await self.observe(self.plan.nodes)
        for n in nodes:  # each node's own word on what it serves
            raw = await self.try_call(n, "CLUSTER", "NODES")
            mine = parse_cluster_nodes(raw.decode()) if isinstance(raw, bytes) else []
            if any(ln.is_myself and ln.serving for ln in mine):
                raise CachefleetError(f"{n.name} still serves slots: not removed")
        leaving = [
            {**asdict(n), "id": view.by_name[n.name].id if n.name in view.by_name else ""}
            for n in nodes
        ]
        _update_marker(self.cdir, removing=leaving)
        await self.publish(final.nodes)
        self.write_plan(final)
        await self.finish_removal()

    async def finish_removal(self) -> None:
        """Stop and forget the nodes the marker lists as leaving (any that still run: their
        agent may have been restarted with the new plan and no longer knows them)."""
        leaving = _read_marker(self.cdir).get("removing") or []
        marker = str(self.cdir.root)
        for item in leaving:
            pid = read_pid(self.cdir.pid_file(f"node.{item['name']}"))
            if pid is not None and alive_and_ours(pid, marker):
                await asyncio.sleep(1.0)  # its agent stops it when it sees the plan
                if alive_and_ours(pid, marker):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
        await _wait_stopped(self.cdir, [item["name"] for item in leaving], 30.0)
        for item in leaving:
            if item["id"]:
                await asyncio.gather(
                    *(self.try_call(m, "CLUSTER", "FORGET", item["id"]) for m in self.plan.nodes)
                )
            self.cdir.pid_file(f"node.{item['name']}").unlink(missing_ok=True)
            shutil.rmtree(self.cdir.node_dir(item["name"]), ignore_errors=True)
            self.event("node_removed", node=item["name"], zone=item["zone"], shard=item["shard"],
                       address=f"{item['host']}:{item['port']}")  # fmt: skip
            self.step(f"node {item['name']} ({item['zone']}) removed from shard {item['shard']}")
        _update_marker(self.cdir, removing=[])

    async def converge(self, nodes: Sequence[NodeSpec], timeout: float = 30.0) -> None:
        """Until every node sees the same owner for every slot: the other primaries learn a
        moved slot by gossip, and a layout (or a removal) must not follow a stale view."""

        async def agreed() -> bool:
            replies = await asyncio.gather(*(self.try_call(n, "CLUSTER", "NODES") for n in nodes))
            seen = set()
            for r in replies:
                if not isinstance(r, bytes):
                    continue  # a node that is down (being failed over) has no say
                lines = parse_cluster_nodes(r.decode())
                seen.add(frozenset((ln.id, ln.slots) for ln in lines if ln.is_primary and ln.slots))
            return len(seen) == 1

        await _until("every node to agree on the slots' owners", timeout, agreed)

    async def wait_no_failover(self, timeout: float = 60.0) -> None:
        """While the sentinels fail a shard over, apply waits: the two never fight over a
        shard's primary."""
        from cachefleet.ops.status import read_bus

        async def calm() -> bool:
            hellos = (await read_bus(self.plan, self.cdir)).hellos
            busy = sorted({s for h in hellos.values() for s in h.failing_over})
            if busy and not self._told_failover:
                self.step(f"waiting: shard(s) {busy} failing over")
                self._told_failover = True
            return not busy

        self._told_failover = False
        await _until("the sentinels' failover to end", timeout, calm)

    async def restart(self, kinds: Sequence[str]) -> None:
        """Restart processes one at a time (the supervisor starts each again with the new
        plan): sentinels keep a quorum, router workers keep the port open."""
        prefixes = {"sentinels": "sentinel.", "routers": "router", "supervisor": "supervisor"}
        for kind in kinds:
            names = sorted(k for k in live_processes(self.cdir) if k.startswith(prefixes[kind]))
            for name in names:
                old = live_processes(self.cdir).get(name)
                if old is None:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(old, signal.SIGTERM)

                async def back(name: str = name, old: int = old) -> bool:
                    pid = live_processes(self.cdir).get(name)
                    return pid is not None and pid != old

                await _until(f"{name} to restart", 30.0, back)
                await self.settled(kind)
            if names:
                self.step(f"restarted {', '.join(names)}")

    async def settled(self, kind: str) -> None:
        """Wait until a restarted process of `kind` counts again, before the next one stops:
        a sentinel once its hellos are fresh at the others'."""
        settle = self.plan.topology.sentinels.hello_max_age_ms / 1000
        await asyncio.sleep(settle if kind == "sentinels" else 0.1)


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


@dataclass
class Modification:
    """One running change: whether it resumes an interrupted one, and how long it took."""

    resumed: bool
    t0: float = field(default_factory=time.monotonic)
    took: float = 0.0


@contextlib.asynccontextmanager
async def modifying(
    a: Applier, raw: dict[str, Any], summary: Summary
) -> AsyncIterator[Modification]:
    """The frame of every engine's change: the marker (so status says "modifying" and a
    rerun resumes) and the modify_started / _failed / _completed events around the steps."""
    marker = a.cdir.root / MARKER
    run = Modification(resumed=marker.exists())
    _update_marker(a.cdir, topology=raw, started=time.time())
    counts = {"nodes_added": summary.nodes_added, "nodes_removed": summary.nodes_removed,
              "slots": summary.slots}  # fmt: skip
    a.event("modify_started", steps=len(summary.steps), **counts)
    await a.outbox.flush()
    try:
        yield run
    except BaseException as exc:
        a.event("modify_failed", error=repr(exc)[:300])
        with contextlib.suppress(Exception):
            await asyncio.wait_for(a.outbox.flush(), 2.0)
        raise
    marker.unlink(missing_ok=True)
    run.took = time.monotonic() - run.t0
    a.event("modify_completed", seconds=round(run.took, 2), **counts)
    await a.outbox.flush()


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


def _engine_version(binary: str) -> tuple[int, ...] | None:
    try:
        text = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(x) for x in m.groups()) if m else None


def _allocate(hosts: list[str]) -> list[tuple[int, int]]:
    return ports.allocate(hosts, pairs=True)


async def apply(
    topology_path: str,
    *,
    state_dir: str | None,
    dry_run: bool,
    assume_yes: bool,
    as_json: bool,
    out: Out,
    confirm: Callable[[str], bool] | None = None,
) -> int:
    topo = load_topology(topology_path)
    raw = yaml.safe_load(Path(topology_path).read_text())
    cdir = ClusterDir(state_home(state_dir), topo.name)
    from cachefleet.ops import lifecycle

    if not cdir.exists():
        if dry_run:
            out(f"cluster {topo.name} does not exist: apply would create it (as `up`)")
            return 0
        return await lifecycle.up(topology_path, state_dir=state_dir, detach=True, out=out)
    plan = cdir.load_plan()
    if plan.topology.is_memcached or topo.is_memcached:
        check_changeable(plan.topology, topo)  # (memcached <-> valkey is refused here)
    if not live_processes(cdir):
        if plan.raw_topology == raw and not (cdir.root / MARKER).exists():
            return await lifecycle.up(topology_path, state_dir=state_dir, detach=True, out=out)
        if dry_run:
            out(f"cluster {topo.name} is stopped: apply would start it, then change it")
        else:
            # start it as plan.json has it (mid-change, after a reboot), then change it
            current = cdir.root / "topology.running.yaml"
            current.write_text(yaml.safe_dump(plan.raw_topology))
            await lifecycle.up(str(current), state_dir=state_dir, detach=True, out=out)
            plan = cdir.load_plan()
    if plan.topology.standalone or topo.standalone:
        check_changeable(plan.topology, topo)  # cluster_mode itself cannot change
    binary = resolve_engine_binary(topo.engine, topo.engine_binary)
    versions: dict[str, Any] = {}
    if binary != plan.engine_binary:
        versions = {"old_version": _engine_version(plan.engine_binary),
                    "new_version": _engine_version(binary)}  # fmt: skip
    check_changeable(plan.topology, topo, **versions)

    if topo.standalone:  # cluster mode disabled: one primary and its replicas, no slots
        from cachefleet.ops import apply_standalone

        applier: Applier = apply_standalone.GroupApplier(cdir, plan, out)
        run = apply_standalone.apply_group
    elif topo.is_memcached:  # independent nodes: node lists and rolling restarts, no slots
        from cachefleet.ops import apply_memcached

        applier = apply_memcached.MemcachedApplier(cdir, plan, out)
        run = apply_memcached.apply_memcached
    else:
        applier, run = Applier(cdir, plan, out), _apply
    with _one_apply(cdir) if not dry_run else contextlib.nullcontext():
        try:
            return await run(applier, plan, topo, raw, binary, dry_run, assume_yes, as_json,
                             out, confirm)  # fmt: skip
        finally:
            await applier.close()


@contextlib.contextmanager
def _one_apply(cdir: ClusterDir) -> Iterator[None]:
    """One apply per cluster at a time (a lock the kernel drops with its holder, kill -9
    included): two would fight over plan.json and the same slots."""
    with open(cdir.root / "apply.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(f"another apply is changing cluster {cdir.name} right now") from None
        yield


async def _apply(
    a: Applier,
    plan: Plan,
    topo: Topology,
    raw: dict[str, Any],
    binary: str,
    dry_run: bool,
    assume_yes: bool,
    as_json: bool,
    out: Out,
    confirm: Callable[[str], bool] | None,
) -> int:
    view = await a.observe(plan.nodes)
    resumed = (a.cdir.root / MARKER).exists()
    # nodes an interrupted apply put in plan.json that have not joined their shard yet
    unjoined = [n for n in plan.nodes if not _joined(view, n, plan.nodes)]
    primaries = {s: p for s in {n.shard for n in plan.nodes} if (p := view.primary(s, plan.nodes))}
    r = reshape(plan, topo, binary, primaries, _allocate)
    settings = live_settings(plan.topology, topo)
    to_restart = restarts(plan.topology, topo)
    shard_ids = list(range(1, topo.shards + 1))
    moves = rebalance(view.owned(plan.nodes), shard_ids)
    summary = Summary(settings=len(settings), restarts=to_restart)

    def step(kind: str, text: str, **data: Any) -> None:
        summary.steps.append({"step": kind, "text": text, **data})

    if resumed:
        step("resume", "resume the change an earlier apply left unfinished")
    if unjoined:
        joined = [n.name for n in unjoined]
        step("join", f"join {', '.join(joined)} (started by an earlier apply)", nodes=joined)
    if view.open:
        step("finish", f"finish {len(view.open)} slot(s) left migrating", slots=len(view.open))
    for name, shard in _split_primaries(view, plan.nodes):
        step("merge", f"shard {shard}: move the slots of a second primary ({name}) to its "
             "primary, which it then replicates", shard=shard, node=name)  # fmt: skip
    for key, old, new in settings:
        step("set", f"set {key}: {old or '(default)'} -> {new}", parameter=key, old=old, new=new)
    for c in r.shards:
        adds = [n.name for n in c.add]
        members = ", ".join(
            f"{n.name} ({n.zone}{', primary' if c.new and n is c.add[0] else ''})" for n in c.add
        )
        if c.new:
            step("add_shard", f"add shard {c.shard}: nodes {members}", shard=c.shard, nodes=adds)
        elif c.replaced:
            gone = [n.name for n in c.remove]
            text = (
                f"replace shard {c.shard} ({topo.node_type}, {Path(binary).name}): add {members};"
                f" fail over to a new node; remove {', '.join(gone)}"
            )
            step("replace_shard", text, shard=c.shard, add=adds, remove=gone)
        else:
            if c.add:
                step(
                    "add_replicas", f"add to shard {c.shard}: {members}", shard=c.shard, nodes=adds
                )
            if c.remove and not c.gone:
                names = ", ".join(f"{n.name} ({n.zone})" for n in c.remove)
                step("remove_replicas", f"remove from shard {c.shard}: {names}", shard=c.shard,
                     nodes=[n.name for n in c.remove])  # fmt: skip
    if moves:
        keys, size = await a.count_keys(moves, view, plan.nodes)
        n_slots = sum(m.count for m in moves)
        summary.slots, summary.keys, summary.bytes = n_slots, keys, size
        text = (
            f"migrate {n_slots:,} slots (≈ {keys:,} keys, {size / 1e6:.0f} MB) from shard(s) "
            f"{_ids(sorted({m.source for m in moves}))} to shard(s) "
            f"{_ids(sorted({m.target for m in moves}))}"
        )
        step("migrate", text, slots=n_slots, keys=keys, bytes=size,
             moves=[[m.start, m.end, m.source, m.target] for m in moves])  # fmt: skip
    for c in r.shards:
        if c.gone:
            gone = [n.name for n in c.remove]
            step("remove_shard", f"remove shard {c.shard}: nodes {', '.join(gone)}",
                 shard=c.shard, nodes=gone)  # fmt: skip
    for kind in to_restart:
        step("restart", f"restart {kind}", processes=kind)
    summary.nodes_added = len(r.added)
    summary.nodes_removed = len(r.removed)
    if plan.raw_topology != raw and not summary.steps:
        step("record", "record the topology (nothing to change on the nodes)")

    code = present(summary, topo.name, dry_run, assume_yes, as_json, out, confirm)
    if code is not None:
        return code
    joining = [*unjoined, *r.added]
    return await _execute(a, plan, topo, raw, binary, r, joining, settings, to_restart, summary)


def present(
    summary: Summary,
    name: str,
    dry_run: bool,
    assume_yes: bool,
    as_json: bool,
    out: Out,
    confirm: Callable[[str], bool] | None,
) -> int | None:
    """Print the plan (or its --json) and ask; the exit code when nothing is to be carried
    out (no change, --dry-run, declined), None to go on."""
    if as_json:
        out(json.dumps({"cluster": name, "steps": summary.steps, "summary": {
            "nodes_added": summary.nodes_added, "nodes_removed": summary.nodes_removed,
            "slots": summary.slots, "keys": summary.keys, "bytes": summary.bytes,
            "settings": summary.settings, "restarts": summary.restarts}}, indent=1))  # fmt: skip
    elif summary.empty:
        out(f"cluster {name}: no changes")
        return 0
    else:
        out(f"cluster {name}: changes to apply, in order:")
        for i, s in enumerate(summary.steps, 1):
            out(f"  {i}. {s['text']}")
        out(summary.line())
    if summary.empty or dry_run:
        return 0
    if not assume_yes and (confirm is None or not confirm("Apply these changes? [y/N] ")):
        out("nothing changed")
        return 1
    return None


def _split_primaries(view: View, nodes: Sequence[NodeSpec]) -> list[tuple[str, int]]:
    """(node, shard) of every serving primary that is not its shard's chosen primary."""
    out = []
    for shard in sorted({n.shard for n in nodes}):
        chosen = view.primary(shard, nodes)
        for n in nodes:
            line = view.by_name.get(n.name)
            if n.shard == shard and n.name != chosen and line is not None and line.serving:
                out.append((n.name, shard))
    return out


def _joined(view: View, node: NodeSpec, nodes: Sequence[NodeSpec]) -> bool:
    """A node is part of the cluster once the cluster knows it and, unless it is its shard's
    primary, it replicates that primary."""
    line = view.by_name.get(node.name)
    if line is None:
        return False
    primary = view.primary(node.shard, nodes)
    if primary is None or primary == node.name or line.serving:
        return True  # (a second serving primary is merged first, see merge_split)
    return line.primary_id == view.by_name[primary].id


def _ids(ids: Sequence[int]) -> str:
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return ", ".join(map(str, ids))


async def _execute(
    a: Applier,
    plan: Plan,
    topo: Topology,
    raw: dict[str, Any],
    binary: str,
    r: Reshape,
    joining: list[NodeSpec],
    settings: list[tuple[str, str, str]],
    to_restart: list[str],
    summary: Summary,
) -> int:
    async with modifying(a, raw, summary) as run:
        marker_found = run.resumed
        union = Plan(
            topology=topo, raw_topology=raw, nodes=r.union, slot_ranges=plan.slot_ranges,
            engine_binary=binary, bus_host=plan.bus_host, bus_port=plan.bus_port,
            router_host=plan.router_host, router_port=plan.router_port,
            reader_port=plan.reader_port,
        )  # fmt: skip
        await a.wait_no_failover()
        await a.set_live(settings, plan.nodes)
        a.write_plan(union)
        await a.finish_removal()  # nodes an interrupted apply was removing
        await a.finish_open(union.nodes)
        await a.merge_split(union.nodes)
        if joining:
            a.step(f"starting {len(joining)} new node(s)")
            await a.join(joining, union.nodes)
        await a.publish(union.nodes)
        if joining or marker_found:
            await a.restart(["sentinels"])  # they probe (and can fail over) the new nodes
        for c in r.shards:
            if c.replaced and not c.gone:
                view = await a.observe(union.nodes)
                current = view.primary(c.shard, union.nodes)
                if current in {n.name for n in c.remove}:
                    fresh = [n for n in union.nodes if n.shard == c.shard and n not in c.remove]
                    await a.hand_over(c.shard, fresh[0], union.nodes)
        await a.wait_no_failover()
        view = await a.observe(union.nodes)
        moves = rebalance(view.owned(union.nodes), list(range(1, topo.shards + 1)))
        if moves:
            n = sum(m.count for m in moves)
            a.step(f"moving {n:,} slots")
            t_mig = time.monotonic()
            slots, keys = await a.migrate(moves, union.nodes)
            await a.converge(union.nodes)
            took = time.monotonic() - t_mig
            a.step(f"moved {slots:,} slots, {keys:,} keys in {took:.1f}s "
                   f"({keys / took if took else 0:,.0f} keys/s)")  # fmt: skip
            await a.publish(union.nodes)
        # a removed replica must not be any shard's primary now (a failover may have made it)
        removed = r.removed
        if removed:
            view = await a.observe(union.nodes)
            for c in r.shards:
                current = view.primary(c.shard, union.nodes)
                if not c.gone and current in {n.name for n in c.remove}:
                    fresh = [n for n in union.nodes if n.shard == c.shard and n not in c.remove]
                    await a.hand_over(c.shard, fresh[0], union.nodes)
        final = replace(
            union,
            nodes=r.final,
            slot_ranges=tuple(split_slots(topo.shards)) if topo.shards != plan.topology.shards
            else plan.slot_ranges,
        )  # fmt: skip
        if removed:
            await a.remove(removed, final)
        else:
            a.write_plan(final)
        if removed:
            await a.restart(["sentinels"])
        sentinels_done = joining or removed or marker_found
        await a.restart([k for k in to_restart if not (k == "sentinels" and sentinels_done)])
        await a.publish(final.nodes)
    a.step(f"cluster {topo.name}: change applied in {run.took:.1f}s")
    return 0


def confirm_on_terminal(question: str) -> bool:
    if not sys.stdin.isatty():
        raise StateError("apply needs --yes when not run on a terminal")
    return input(question).strip().lower() in ("y", "yes")
