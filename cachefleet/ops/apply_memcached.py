"""`cachefleet apply` on a memcached cluster: nodes added and removed, settings rolled out.

The command flow is apply's own (:func:`cachefleet.ops.apply.apply`: the lock, the printed
plan, ``--dry-run``/``--json``, the marker, the modify_* events). A memcached cluster has no
replicas and no slots; its nodes are independent and its clients find them by consistent
hashing, from the configuration endpoint's node list (Auto Discovery) or through its proxy.
So, in this order:

1. nodes leave first from the node list: a layout without them is published (the discovery
   version goes up by one) and every router worker serves it, so neither the proxy's ring nor
   a discovery client sends them anything more; then plan.json loses them and their zone
   agents stop them. The highest-numbered nodes leave (node i is in zone i mod Z, so the
   zones stay balanced);
2. new nodes (after the highest one, round-robin over the zones, on the ports after the
   highest in use when ``ports.base`` is fixed): plan.json gains them, their zone agents start
   them, and once every one answers, the node list names them (the version goes up by one);
3. a new node type, engine binary or memcached parameter: every node whose running settings
   (``stats settings``) are not the wanted ones restarts, one at a time, with the new ones.
   A memcached node keeps nothing across a restart: each restarted node comes back empty (the
   managed service's behaviour too), and while one restarts the proxy answers its keys with
   ``SERVER_ERROR``; its agent reports ``node_replaced`` and bumps the discovery version;
4. ``memcached.copies`` or router settings: the router workers restart one at a time.

Resumable: every step is computed from what runs (plan.json, the published node list, each
node's reported settings), so a rerun after an interruption finishes the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import psutil

from cachefleet import memcache, ports
from cachefleet.announce import publish_layout
from cachefleet.discovery import memcached_layout
from cachefleet.errors import CachefleetError
from cachefleet.ops import memcached
from cachefleet.ops.apply import ApplyRequest, Summary, modifying, present
from cachefleet.ops.apply_links import MARKER, _until
from cachefleet.ops.apply_steps import Applier
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import alive_and_ours, read_pid
from cachefleet.reshape import restarts
from cachefleet.state import ClusterDir
from cachefleet.topology import Topology

Out = Callable[[str], None]
#: How long a zone agent may take to read a new plan.json (it checks every 0.25 s).
PLAN_READ_S = 0.75
RESTART_ATTEMPTS = 3


def target_plan(plan: Plan, topo: Topology, raw: dict[str, Any], binary: str) -> Plan:
    """The plan after the change: the nodes both have keep their zone, address and port
    (their stamp is the new node type's); new ones follow the highest as `up` places them."""
    scaled = memcached.scaled_plan(replace(plan, engine_binary=binary), topo, raw)
    return replace(scaled, engine_binary=binary)


def restart_reasons(old: Topology, new: Topology, old_binary: str, binary: str) -> list[str]:
    """What makes the nodes restart, as plan text ("node_type cache.micro -> cache.small",
    "threads 1 -> 2", ...); empty when nothing does."""
    out = []
    if old.node_type != new.node_type:
        out.append(f"node_type {old.node_type} -> {new.node_type}")
    if old_binary != binary:
        out.append(f"engine binary {old_binary} -> {binary}")
    a, b = old.memcached, new.memcached
    assert a is not None and b is not None
    for name in ("threads", "max_item_size", "max_connections", "chunk_size", "growth_factor",
                 "cas", "evictions"):  # fmt: skip
        if getattr(a, name) != getattr(b, name):
            out.append(f"{name} {getattr(a, name)} -> {getattr(b, name)}")
    return out


def process_restarts(old: Topology, new: Topology) -> list[str]:
    """The control processes that restart: apply's own rule (router settings, the
    supervisor's alarms and backups), and the routers for memcached.copies too."""
    kinds = [k for k in restarts(old, new) if k != "sentinels"]  # (memcached runs none)
    a, b = old.memcached, new.memcached
    assert a is not None and b is not None
    if a.copies != b.copies and "routers" not in kinds:
        kinds.append("routers")
    return kinds


class MemcachedApplier(Applier):
    """Apply's executor for a memcached cluster: node lists instead of slots."""

    async def publish_nodes(self, nodes: Sequence[NodeSpec], reason: str) -> int:
        """The node list naming exactly `nodes`, with the next discovery version (under the
        lock the zone agents take when they bump it for a replaced node)."""
        fd = os.open(self.cdir.root / "discovery.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self.cdir.load_layout()
            version = (current.epoch if current else 0) + 1
            layout = memcached_layout(replace(self.plan, nodes=tuple(nodes)), version)
            publish_layout(self.outbox, self.cdir, layout)
            self.event("discovery_version", version=version, reason=reason, nodes=len(nodes))
        finally:
            os.close(fd)
        await self.outbox.flush()
        await memcached.wait_routers(self.cdir, self.plan, version, 15.0)
        self.step(f"discovery version {version}: {len(nodes)} node(s) ({reason})")
        return version

    async def restart_node(self, node: NodeSpec, wanted: dict[str, str]) -> None:
        """Stop the node; its agent starts it again with plan.json's settings (empty). Until
        it reports the wanted settings (an agent that had not read the new plan yet restarts
        it with the old ones: again, a bounded number of times)."""
        marker = str(self.cdir.root)
        for _ in range(RESTART_ATTEMPTS):
            pid = read_pid(self.cdir.pid_file(f"node.{node.name}"))
            if pid is not None and alive_and_ours(pid, marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            t0 = time.monotonic()

            async def back(old: int | None = pid) -> bool:
                now = read_pid(self.cdir.pid_file(f"node.{node.name}"))
                if now is None or now == old or not alive_and_ours(now, marker):
                    return False
                return await memcache.version(node.host, node.port, timeout=0.5) is not None

            await _until(f"{node.name} to restart", 30.0, back)
            seen = await memcached.node_settings(node)
            if seen is not None and not memcached.settings_differ(wanted, seen):
                took = time.monotonic() - t0
                self.step(f"node {node.name} restarted with the new settings, empty ({took:.2f}s)")
                return
            await asyncio.sleep(PLAN_READ_S)
        raise CachefleetError(f"node {node.name} did not come back with the new settings")

    async def settled(self, kind: str) -> None:
        """A router worker counts as back once it serves the node list (not when its pid
        file is written): the next one stops only then, so the port never closes while
        there are two or more workers."""
        if kind != "routers":
            await super().settled(kind)
            return
        layout = self.cdir.load_layout()
        await memcached.wait_routers(self.cdir, self.plan, layout.epoch if layout else 1, 30.0)

    async def stale(
        self, nodes: Sequence[NodeSpec], wanted: dict[str, str], binary: str
    ) -> list[NodeSpec]:
        """The nodes that run other settings than `wanted` (or another engine binary)."""
        seen = await asyncio.gather(*(memcached.node_settings(n) for n in nodes))
        out = []
        for n, st in zip(nodes, seen, strict=True):
            differs = st is not None and bool(memcached.settings_differ(wanted, st))
            if differs or _binary(self.cdir, n) not in (None, binary):
                out.append(n)
        return out


def _binary(cdir: ClusterDir, node: NodeSpec) -> str | None:
    """The executable a node runs (its argv[0]), None when it does not run."""
    pid = read_pid(cdir.pid_file(f"node.{node.name}"))
    if pid is None:
        return None
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return None
    return cmdline[0] if cmdline else None


def _share(n: int, total: int) -> str:
    return f"about {n}/{total} of the keys" if total else "the keys"


def plan_steps(
    summary: Summary,
    plan: Plan,
    final: Plan,
    listed: set[str],
    reasons: list[str],
    stale: list[NodeSpec],
    kinds: list[str],
    resumed: bool,
) -> None:
    """The printed plan (and --json steps) of a memcached change."""

    def step(kind: str, text: str, **data: Any) -> None:
        summary.steps.append({"step": kind, "text": text, **data})

    old = {n.name for n in plan.nodes}
    new = {n.name for n in final.nodes}
    added = [n for n in final.nodes if n.name not in old]
    leaving = [n for n in plan.nodes if n.name not in new]
    if resumed:
        step("resume", "resume the change an earlier apply left unfinished")
    if leaving:
        names = ", ".join(f"{n.name} ({n.zone}, {n.address})" for n in leaving)
        step("remove_nodes", f"remove {names}: out of the proxy's ring and the discovery list "
             f"first (discovery version +1), then stopped; {_share(len(leaving), len(old))} "
             "move to the other nodes and start as misses (their items on the removed nodes "
             "are lost)", nodes=[n.name for n in leaving])  # fmt: skip
    if added:
        names = ", ".join(f"{n.name} ({n.zone}, {n.address})" for n in added)
        they = "they serve" if len(added) > 1 else "it serves"
        step("add_nodes", f"add {names}; the discovery version goes up by one once {they}; "
             f"{_share(len(added), len(new))} move there and start as misses",
             nodes=[n.name for n in added])  # fmt: skip
    if not added and not leaving and {n.name for n in final.nodes} != listed:
        step("publish", "publish the node list (discovery version +1)")
    if stale:
        why = "; ".join(reasons) or "settings an earlier apply left unfinished"
        names = ", ".join(n.name for n in stale)
        step("restart_nodes", f"restart {names} one at a time ({why}): a memcached node loses "
             "its items when it restarts, so each comes back empty, and its keys get "
             "SERVER_ERROR through the proxy while it restarts", nodes=[n.name for n in stale],
             reasons=reasons)  # fmt: skip
    for kind in kinds:
        step("restart", f"restart {kind} (one at a time)", processes=kind)
    summary.nodes_added = len(added)
    summary.nodes_removed = len(leaving)
    summary.restarts = (["nodes"] if stale else []) + kinds


async def apply_memcached(a: Applier, req: ApplyRequest) -> int:
    assert isinstance(a, MemcachedApplier)
    plan, topo, raw, binary = req.plan, req.topo, req.raw, req.binary
    resumed = (a.cdir.root / MARKER).exists()
    final = target_plan(plan, topo, raw, binary)
    old_names = {n.name for n in plan.nodes}
    for n in final.nodes:
        if n.name not in old_names and not ports.port_free(n.host, n.port):
            raise CachefleetError(f"port {n.host}:{n.port} for node {n.name} is already in use")
    layout = a.cdir.load_layout()
    listed = {n.name for n in layout.nodes()} if layout else set()
    reasons = restart_reasons(plan.topology, topo, plan.engine_binary, binary)
    kept = [n for n in final.nodes if n.name in old_names]
    stale = await a.stale(kept, memcached.wanted_settings(topo), binary)
    kinds = process_restarts(plan.topology, topo)
    summary = Summary()
    plan_steps(summary, plan, final, listed, reasons, stale, kinds, resumed)
    code = present(summary, req)
    if code is not None:
        return code
    return await _execute(a, plan, final, listed, stale, kinds, summary)


async def _execute(
    a: MemcachedApplier,
    plan: Plan,
    final: Plan,
    listed: set[str],
    stale: list[NodeSpec],
    kinds: list[str],
    summary: Summary,
) -> int:
    cdir = a.cdir
    old = {n.name for n in plan.nodes}
    new = {n.name for n in final.nodes}
    added = [n for n in final.nodes if n.name not in old]
    leaving = [n for n in plan.nodes if n.name not in new]
    async with modifying(a, final.raw_topology, summary) as run:
        if leaving:  # out of the ring and the discovery list before they stop
            await a.publish_nodes([n for n in plan.nodes if n.name in new], "nodes_removed")
        a.write_plan(final)  # the agents start the added nodes and stop the leaving ones
        if added:
            a.step(f"starting {len(added)} new node(s)")
            await memcached.wait_nodes(replace(final, nodes=tuple(added)), 30.0)
            for n in added:
                a.event("node_added", node=n.name, zone=n.zone, address=n.address)
            await a.publish_nodes(final.nodes, "nodes_added")
        elif not leaving and new != listed:
            await a.publish_nodes(final.nodes, "node_list")
        if leaving:
            await memcached.wait_stopped(cdir, [n.name for n in leaving], 30.0)
            for n in leaving:
                cdir.pid_file(f"node.{n.name}").unlink(missing_ok=True)
                shutil.rmtree(cdir.node_dir(n.name), ignore_errors=True)
                a.event("node_removed", node=n.name, zone=n.zone, address=n.address)
                a.step(f"node {n.name} ({n.zone}) removed")
        if stale:
            await asyncio.sleep(PLAN_READ_S)  # the agents start nodes from the new plan
            wanted = memcached.wanted_settings(final.topology)
            for n in stale:
                await a.restart_node(n, wanted)
        await a.restart(kinds)
    a.step(f"cluster {final.name}: change applied in {run.took:.1f}s")
    return 0
