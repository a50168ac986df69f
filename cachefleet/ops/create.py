"""Cluster creation (MEET, ADDSLOTSRANGE, REPLICATE) and reading the live layout back.

Every step is idempotent, so `up` on a half-created cluster finishes the job and `up` on a
created one changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import redis.asyncio as aredis

from cachefleet.credentials import Credentials
from cachefleet.errors import ClusterTimeout
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import NodeLine, Role, cluster_nodes, connect, replication, try_call
from cachefleet.plan import NodeSpec, Plan
from cachefleet.slots import SLOTS

Progress = Callable[[str], None]
FULL_MESH_LIMIT = 64


def missing_ranges(start: int, end: int, held: set[int]) -> list[tuple[int, int]]:
    """The contiguous runs of start..end (inclusive) that are not in `held`."""
    out: list[tuple[int, int]] = []
    run: int | None = None
    for slot in range(start, end + 2):
        free = slot <= end and slot not in held
        if free and run is None:
            run = slot
        elif not free and run is not None:
            out.append((run, slot - 1))
            run = None
    return out


async def _until(
    step: str, timeout: float, check: Callable[[], Awaitable[str | None]], interval: float = 0.05
) -> None:
    """Poll `check` (returns None when done, else what is still missing) until the deadline."""
    deadline = time.monotonic() + timeout
    missing: str | None = "not checked"
    while time.monotonic() < deadline:
        missing = await check()
        if missing is None:
            return
        await asyncio.sleep(interval)
    raise ClusterTimeout(step, timeout, missing or "")


class Creator:
    def __init__(self, *, plan: Plan, auth: Credentials, progress: Progress | None = None) -> None:
        self.plan = plan
        self.progress = progress or (lambda _msg: None)
        self.clients: dict[str, aredis.Redis] = {
            n.name: connect(n.host, n.port, timeout=3.0, auth=auth) for n in plan.nodes
        }
        self.ids: dict[str, str] = {}

    async def close(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()), return_exceptions=True)

    async def wait_nodes_up(self, timeout: float = 30.0) -> None:
        async def check() -> str | None:
            replies = await asyncio.gather(
                *(try_call(c, "CLUSTER", "MYID") for c in self.clients.values())
            )
            down = [n for n, r in zip(self.clients, replies, strict=True) if not r]
            for name, reply in zip(self.clients, replies, strict=True):
                if reply:
                    self.ids[name] = str(reply)
            return f"nodes not answering: {', '.join(down)}" if down else None

        await _until("nodes start", timeout, check)

    async def _nodes_view(self, name: str) -> list[NodeLine] | None:
        return await cluster_nodes(self.clients[name])

    async def create(self, timeout: float = 60.0) -> Layout:
        plan = self.plan
        nodes = list(plan.nodes)
        self.progress(f"waiting for {len(nodes)} nodes")
        await self.wait_nodes_up()

        infos = await asyncio.gather(
            *(try_call(self.clients[n.name], "CLUSTER", "INFO") for n in nodes)
        )
        fresh = all(isinstance(i, str) and "cluster_known_nodes:1\r\n" in i + "\r\n" for i in infos)
        if fresh:
            # Distinct config epochs up front, as `redis-cli --cluster create` does, so the
            # engines need no epoch-collision rounds.
            await asyncio.gather(
                *(
                    try_call(self.clients[n.name], "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                    for i, n in enumerate(nodes)
                    if n.member == 0
                )
            )

        self.progress("meeting nodes")
        await self._meet(nodes)

        self.progress("assigning slots")
        await self._assign_slots()

        self.progress("waiting until every node knows every other")
        await _until("cluster meet", timeout, self._check_all_known)

        self.progress("attaching replicas")
        await self._replicate()

        self.progress("waiting for one agreed configuration and replicas in sync")
        await _until("cluster convergence", timeout, self._check_converged)
        return await self.observe(epoch=1)

    async def _meet(self, nodes: list[NodeSpec]) -> None:
        calls = []
        if len(nodes) <= FULL_MESH_LIMIT:
            pairs = [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1 :]]
        else:
            pairs = [(b, nodes[0]) for b in nodes[1:]]
        for a, b in pairs:
            calls.append(
                try_call(self.clients[a.name], "CLUSTER", "MEET", b.host, b.port, b.bus_port)
            )
        await asyncio.gather(*calls)

    async def _assign_slots(self) -> None:
        """Each primary gets the slots of its range that no node it knows holds yet (a node
        restarted mid-creation, or started from a snapshot's RDB, holds some already: it
        claims the slots it has keys for)."""
        plan = self.plan
        calls = []
        for shard_index, (start, end) in enumerate(plan.slot_ranges):
            members = plan.shard_nodes(shard_index + 1)
            if not members:
                continue
            primary = min(members, key=lambda n: n.member)  # member 0 may have been replaced
            view = await self._nodes_view(primary.name) or []
            held = {slot for line in view for a, b in line.slots for slot in range(a, b + 1)}
            missing = missing_ranges(start, end, held)
            if missing:  # one command for every run (a seeded node may leave thousands)
                bounds = [x for run in missing for x in run]
                calls.append(
                    try_call(self.clients[primary.name], "CLUSTER", "ADDSLOTSRANGE", *bounds)
                )
        await asyncio.gather(*calls)

    async def _check_all_known(self) -> str | None:
        wanted = set(self.ids.values())
        views = await asyncio.gather(*(self._nodes_view(n) for n in self.clients))
        for name, view in zip(self.clients, views, strict=True):
            if view is None:
                return f"{name} does not answer CLUSTER NODES"
            known = {line.id for line in view if "handshake" not in line.flags}
            if not wanted <= known:
                return f"{name} knows {len(known & wanted)}/{len(wanted)} nodes"
        return None

    async def _replicate(self) -> None:
        calls = []
        views = await asyncio.gather(*(self._nodes_view(n.name) for n in self.plan.nodes))
        mine = {
            n.name: next((line for line in (v or []) if line.is_myself), None)
            for n, v in zip(self.plan.nodes, views, strict=True)
        }
        for shard in range(1, self.plan.topology.shards + 1):
            members = self.plan.shard_nodes(shard)
            # The shard's primary is whichever member serves its slots: the plan's first member
            # on a new cluster, possibly another after failovers and a restart.
            holder = next((n for n in members if (m := mine[n.name]) and m.serving), None)
            if holder is None:
                continue
            for node in members:
                current = mine[node.name]
                if node is holder or (current and current.primary_id == self.ids[holder.name]):
                    continue
                if current is not None and current.serving:
                    continue  # two holders: the engines' epochs settle it, not us
                calls.append(
                    try_call(self.clients[node.name], "CLUSTER", "REPLICATE", self.ids[holder.name])
                )
        await asyncio.gather(*calls)

    async def _check_converged(self) -> str | None:
        names = list(self.clients)
        views = await asyncio.gather(*(self._nodes_view(n) for n in names))
        signatures = set()
        for name, view in zip(names, views, strict=True):
            if view is None:
                return f"{name} does not answer"
            served = sum(b - a + 1 for line in view if line.is_primary for a, b in line.slots)
            if served != SLOTS:
                return f"{name} sees {served}/{SLOTS} slots served"
            sig = tuple(
                sorted(
                    (line.id, line.is_primary, line.primary_id or "", line.slots) for line in view
                )
            )
            if any(line.failing for line in view):
                return f"{name} still sees a node in handshake or failing"
            signatures.add(sig)
        if len(signatures) != 1:
            return "nodes disagree on the configuration"
        # A primary keeps cluster_state:fail for ~2 s after it starts (the engine's writable
        # delay) and refuses commands until then: wait for ok everywhere.
        infos = await asyncio.gather(
            *(try_call(c, "CLUSTER", "INFO") for c in self.clients.values())
        )
        for name, text in zip(names, infos, strict=True):
            if not isinstance(text, str) or "cluster_state:ok" not in text:
                return f"{name} reports cluster_state other than ok"
        # Every node that is not serving slots must be a replica with its link up (the plan's
        # roles only hold on a new cluster; after failovers and a restart, roles are the
        # engines' own).
        reps = await asyncio.gather(*(replication(self.clients[n]) for n in names))
        serving = {line.id for view in views if view for line in view if line.serving}
        # a shard an interrupted `apply` was adding holds no slots yet: its primary is empty
        held = {n.shard for n in self.plan.nodes if self.ids.get(n.name) in serving}
        shard_of = {n.name: n.shard for n in self.plan.nodes}
        for name, rep in zip(names, reps, strict=True):
            if rep is None:
                return f"{name} does not answer INFO"
            if self.ids.get(name) in serving:
                continue
            if rep.role is Role.PRIMARY and shard_of[name] not in held:
                continue
            if rep.role is not Role.REPLICA or not rep.link_up:
                return f"{name} replica link not up"
            if rep.syncing:
                return f"{name} still syncing"
        return None

    async def observe(self, epoch: int) -> Layout:
        """The live layout as the nodes report it (ids, roles, slots), shard ids from the plan."""
        return await observe_layout(self.plan, self.clients, epoch=epoch)


async def observe_layout(plan: Plan, clients: dict[str, aredis.Redis], *, epoch: int) -> Layout:
    """Build the layout from CLUSTER NODES of the first node that answers."""
    view: list[NodeLine] | None = None
    for node in plan.nodes:
        view = await cluster_nodes(clients[node.name])
        if view is not None and any(line.slots for line in view):
            break
    if view is None:
        raise ClusterTimeout("observe layout", 0, "no node answers CLUSTER NODES")
    by_addr = {(line.host, line.port): line for line in view}
    shards = []
    for shard_id in range(1, plan.topology.shards + 1):
        members = []
        slots: tuple[tuple[int, int], ...] = ()
        for spec in plan.shard_nodes(shard_id):
            line = by_addr.get((spec.host, spec.port))
            if line is None:
                continue
            role = str(line.role)
            if line.serving:
                slots = line.slots
            members.append(
                LayoutNode(
                    name=spec.name,
                    id=line.id,
                    shard=shard_id,
                    zone=spec.zone,
                    host=spec.host,
                    port=spec.port,
                    bus_port=spec.bus_port,
                    role=role,
                )
            )
        # A shard has one primary in the layout: the master that holds its slots.
        owners = [m for m in members if m.role == "primary"]
        if len(owners) > 1:
            holder = {(line.host, line.port) for line in view if line.serving}
            members = [
                m
                if (m.role != "primary" or (m.host, m.port) in holder)
                else replace(m, role="replica")
                for m in members
            ]
        shards.append(LayoutShard(id=shard_id, slots=slots, nodes=tuple(members)))
    return Layout(cluster=plan.name, epoch=epoch, shards=tuple(shards))
