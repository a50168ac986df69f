"""`cachefleet apply` on a cluster-mode-disabled group: one primary and its replicas.

The command flow is apply's own (:func:`cachefleet.ops.apply.apply`: the lock, the printed
plan, ``--dry-run``/``--json``, the marker, the modify_* events); the difference comes from
the same :func:`cachefleet.reshape.reshape` with the group as shard 1. What differs is how
the steps are carried out, with no cluster bus and no slots:

1. live settings: CONFIG SET on every node;
2. new nodes (more replicas, or replacements for a new node type or engine binary):
   plan.json gains them, their zone agent starts each as a replica of the current primary
   (its config says so), and they count once their link is up and the first sync is over;
   the layout names them, the sentinels restart to probe them;
3. a removed member that is the primary (a replaced node type) hands the primary over
   first: the engine's ``FAILOVER TO`` to the most caught-up remaining replica, which
   pauses writes for the time the replica needs to catch up, then swaps roles;
4. removed replicas: out of the layout first (the endpoints stop using them), then out of
   plan.json (their agents stop them);
5. the control processes whose settings changed restart one at a time.

Resumable like the sharded apply: every step is computed from what runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from cachefleet.announce import publish_layout
from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.nodes import Replication, Role
from cachefleet.ops import standalone
from cachefleet.ops.apply import ApplyRequest, Summary, _allocate, modifying, present
from cachefleet.ops.apply_links import MARKER, _read_marker, _until, _update_marker
from cachefleet.ops.apply_steps import Applier
from cachefleet.plan import NodeSpec, Plan
from cachefleet.reshape import Reshape, live_settings, reshape, restarts
from cachefleet.topology import Topology

Out = Callable[[str], None]
SYNC_TIMEOUT_S = 120.0
ROLE_TIMEOUT_S = 2.0


class GroupApplier(Applier):
    """Apply's executor for a group: roles from INFO replication instead of CLUSTER NODES."""

    async def roles(self, nodes: Sequence[NodeSpec]) -> dict[str, tuple[Replication, str]]:
        """(replication, run id) of every node that answers."""

        async def one(n: NodeSpec) -> tuple[Replication, str] | None:
            try:  # a paused node must not hold the change up for the client's long timeout
                data = await asyncio.wait_for(self.info(n, "default"), ROLE_TIMEOUT_S)
            except TimeoutError:
                return None
            if not data or "role" not in data:
                return None
            return Replication.from_info(data), str(data.get("run_id", ""))

        replies = await asyncio.gather(*(one(n) for n in nodes))
        return {n.name: r for n, r in zip(nodes, replies, strict=True) if r is not None}

    async def primary_of(self, nodes: Sequence[NodeSpec]) -> NodeSpec | None:
        roles = await self.roles(nodes)
        plan = replace(self.plan, nodes=tuple(nodes))
        return standalone.choose_primary(
            plan, {k: v[0] for k, v in roles.items()}, self.cdir.load_layout()
        )

    async def next_epoch(self) -> int:
        """Above the saved layout's epoch and every failover epoch the sentinels reached."""
        from cachefleet.ops.status import read_bus

        hellos = (await read_bus(self.plan, self.cdir)).hellos
        saved = self.cdir.load_layout()
        failover = max((h.failover_epoch for h in hellos.values()), default=0)
        self.epoch = max(self.epoch, saved.epoch if saved else 0, failover) + 1
        return self.epoch

    async def publish(
        self, nodes: Sequence[NodeSpec], *, force: bool = True, epoch: int | None = None
    ) -> None:
        roles = await self.roles(nodes)
        plan = replace(self.plan, nodes=tuple(nodes))
        primary = standalone.choose_primary(
            plan, {k: v[0] for k, v in roles.items()}, self.cdir.load_layout()
        )
        if primary is None:
            raise ClusterTimeout("publish the layout", 0, "no member is the primary")
        ids = {k: v[1] for k, v in roles.items()}
        epoch = epoch if epoch is not None else await self.next_epoch()
        layout = standalone.group_layout(plan, primary, ids, epoch, nodes)
        publish_layout(self.outbox, self.cdir, layout)
        await self.outbox.flush()

    async def synced_to(self, node: NodeSpec, primary: NodeSpec) -> bool:
        rep = (await self.roles([node])).get(node.name)
        return (
            rep is not None
            and rep[0].role is Role.REPLICA
            and rep[0].primary_addr == (primary.host, primary.port)
            and rep[0].link_up
            and not rep[0].syncing
        )

    async def join_group(self, added: Sequence[NodeSpec], union: Sequence[NodeSpec]) -> None:
        """New members answer, replicate the primary (their config names it; one that
        started under an older layout is re-pointed) and finish their first sync."""
        primary = await self.primary_of([n for n in union if n not in added])
        if primary is None:
            raise CachefleetError("no member of the group is the primary: nothing to replicate")
        await _until("new nodes to start", 30.0, lambda: self._all_answer(added))
        roles = await self.roles(added)
        for n in added:
            rep = roles[n.name][0]
            if rep.role is Role.PRIMARY or rep.primary_addr != (primary.host, primary.port):
                await self.call(n, "REPLICAOF", primary.host, primary.port)

        async def synced() -> bool:
            return all(await asyncio.gather(*(self.synced_to(n, primary) for n in added)))

        await _until("new replicas in sync", SYNC_TIMEOUT_S, synced)
        for n in added:
            self.event("node_added", node=n.name, zone=n.zone, shard=1, address=n.address)
            self.step(f"node {n.name} ({n.zone}) replicates {primary.name}, in sync")

    async def _all_answer(self, nodes: Sequence[NodeSpec]) -> bool:
        return len(await self.roles(nodes)) == len(nodes)

    async def hand_group_over(self, union: Sequence[NodeSpec], leaving: set[str]) -> None:
        """When the primary is leaving: a graceful failover to the most caught-up member
        that stays (another zone than the primary's preferred), then the layout."""
        primary = await self.primary_of(union)
        if primary is None or primary.name not in leaving:
            return
        staying = [n for n in union if n.name not in leaving]
        for n in staying:
            await self.wait_synced(n)
        roles = await self.roles(staying)
        candidates = [n for n in staying if n.name in roles]
        if not candidates:
            raise CachefleetError("no member that stays answers: the primary is not handed over")
        target = min(
            candidates,
            key=lambda n: (-roles[n.name][0].offset, n.zone == primary.zone, n.name),
        )
        timeout_ms = self.plan.topology.sentinels.failover_timeout_ms
        others = [n for n in union if n.name not in (primary.name, target.name)]
        epoch = await self.next_epoch()  # (reading the bus takes a while: not in the window)
        _, took = await standalone.failover_to(primary, target, [], self.auth, timeout_ms)
        # the endpoints move at once: writes to the demoted node fail until they do
        await self.publish(union, epoch=epoch)
        for n in others:
            await self.try_call(n, "REPLICAOF", target.host, target.port)
        self.event("switch_primary", shard=1, old_primary=primary.name, new_primary=target.name,
                   zone=target.zone, reason="apply", duration_ms=round(took * 1000))  # fmt: skip
        self.step(f"primary {primary.name} -> {target.name} (writes paused {took:.2f}s)")

    async def remove_group(self, nodes: Sequence[NodeSpec], final: Plan) -> None:
        """Replicas leave: the layout without them (the endpoints stop using them), then
        plan.json (their agents stop them). Never the primary."""
        primary = await self.primary_of(self.plan.nodes)
        if primary is not None and primary.name in {n.name for n in nodes}:
            raise CachefleetError(f"{primary.name} is the primary: not removed")
        _update_marker(self.cdir, removing=[{**asdict(n), "id": ""} for n in nodes])
        await self.publish(final.nodes)
        self.write_plan(final)
        await self.finish_removal()


def _unjoined(
    plan: Plan, roles: dict[str, tuple[Replication, str]], primary: NodeSpec | None
) -> list[NodeSpec]:
    """Members that do not replicate the primary yet (an interrupted apply's new nodes)."""
    if primary is None:
        return []
    out = []
    for n in plan.nodes:
        rep = roles.get(n.name)
        if n.name == primary.name or rep is None:
            continue  # a member that is down is the sentinels' and its agent's business
        if rep[0].primary_addr != (primary.host, primary.port) or not rep[0].link_up:
            out.append(n)
    return out


def _steps(
    summary: Summary,
    topo: Topology,
    binary: str,
    r: Reshape,
    primary: NodeSpec | None,
    settings: list[tuple[str, str, str]],
    to_restart: list[str],
    unjoined: list[NodeSpec],
    resumed: bool,
) -> None:
    def step(kind: str, text: str, **data: Any) -> None:
        summary.steps.append({"step": kind, "text": text, **data})

    if resumed:
        step("resume", "resume the change an earlier apply left unfinished")
    if unjoined:
        names = [n.name for n in unjoined]
        step("join", f"sync {', '.join(names)} with the primary", nodes=names)
    for key, old, new in settings:
        step("set", f"set {key}: {old or '(default)'} -> {new}", parameter=key, old=old, new=new)
    for c in r.shards:
        members = ", ".join(f"{n.name} ({n.zone})" for n in c.add)
        adds = [n.name for n in c.add]
        gone = [n.name for n in c.remove]
        if c.replaced:
            # (an interrupted apply may have added the replacements already)
            add = f"add {members} as replicas; " if c.add else ""
            text = (
                f"replace the group's nodes ({topo.node_type}, {Path(binary).name}): {add}"
                f"hand the primary to a new node; remove {', '.join(gone)}"
            )
            step("replace_nodes", text, add=adds, remove=gone)
            continue
        if c.add:
            step("add_replicas", f"add replicas {members}", nodes=adds)
        if c.remove:
            listed = ", ".join(f"{n.name} ({n.zone})" for n in c.remove)
            if primary is not None and primary.name in gone:  # a failover made it primary
                step("hand_over", f"hand the primary {primary.name} to a member that stays",
                     node=primary.name)  # fmt: skip
            step("remove_replicas", f"remove replicas {listed}", nodes=gone)
    for kind in to_restart:
        step("restart", f"restart {kind}", processes=kind)
    summary.nodes_added = len(r.added)
    summary.nodes_removed = len(r.removed)


async def apply_group(a: Applier, req: ApplyRequest) -> int:
    assert isinstance(a, GroupApplier)
    plan, topo, raw, binary = req.plan, req.topo, req.raw, req.binary
    roles = await a.roles(plan.nodes)
    primary = standalone.choose_primary(
        plan, {k: v[0] for k, v in roles.items()}, a.cdir.load_layout()
    )
    if primary is None:
        raise CachefleetError(
            f"group {plan.name!r} has no primary right now (failing over?): try again"
        )
    resumed = (a.cdir.root / MARKER).exists()
    unjoined = _unjoined(plan, roles, primary)
    r = reshape(plan, topo, binary, {1: primary.name}, _allocate)
    settings = live_settings(plan.topology, topo)
    to_restart = restarts(plan.topology, topo)
    summary = Summary(settings=len(settings), restarts=to_restart)
    _steps(summary, topo, binary, r, primary, settings, to_restart, unjoined, resumed)
    code = present(summary, req)
    if code is not None:
        return code
    return await _execute(a, plan, topo, raw, binary, r, unjoined, settings, to_restart, summary)


async def _execute(
    a: GroupApplier,
    plan: Plan,
    topo: Topology,
    raw: dict[str, Any],
    binary: str,
    r: Reshape,
    unjoined: list[NodeSpec],
    settings: list[tuple[str, str, str]],
    to_restart: list[str],
    summary: Summary,
) -> int:
    cdir = a.cdir
    async with modifying(a, raw, summary) as run:
        marker_found = run.resumed
        union = replace(plan, topology=topo, raw_topology=raw, nodes=r.union, engine_binary=binary)
        await a.wait_no_failover()
        await a.set_live(settings, plan.nodes)
        a.write_plan(union)
        if _read_marker(cdir).get("removing"):
            await a.finish_removal()  # nodes an interrupted apply was removing
        joining = [*unjoined, *r.added]
        if joining:
            a.step(f"starting {len(joining)} new replica(s)")
            await a.join_group(joining, union.nodes)
        await a.publish(union.nodes)
        if joining or marker_found:
            await a.restart(["sentinels"])  # they probe (and can promote) the new nodes
        removed = r.removed
        final = replace(union, nodes=r.final)
        if removed:
            await a.wait_no_failover()
            await a.hand_group_over(union.nodes, {n.name for n in removed})
            await a.remove_group(removed, final)
            await a.restart(["sentinels"])
        else:
            a.write_plan(final)
        sentinels_done = joining or removed or marker_found
        await a.restart([k for k in to_restart if not (k == "sentinels" and sentinels_done)])
        await a.publish(final.nodes)
    a.step(f"group {topo.name}: change applied in {run.took:.1f}s")
    return 0
