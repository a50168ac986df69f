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
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cachefleet import ports
from cachefleet.engine import resolve_engine_binary
from cachefleet.errors import StateError
from cachefleet.ops.apply_links import (
    MARKER,
    _update_marker,
)
from cachefleet.ops.apply_steps import Applier
from cachefleet.ops.apply_view import _joined, _split_primaries
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import live_processes
from cachefleet.reshape import (
    Reshape,
    check_changeable,
    live_settings,
    rebalance,
    reshape,
    restarts,
)
from cachefleet.slots import split_slots
from cachefleet.state import ClusterDir, state_home
from cachefleet.topology import Topology, load_topology

Out = Callable[[str], None]

#: Slots moving at once per source shard, keys per MIGRATE, attempts per slot.


# --- the operation ------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyRequest:
    """One `apply`, whatever the engine: the running plan, the topology asked for (parsed,
    and as written, which the plan keeps), the engine binary it names, and how the plan of
    changes is shown and confirmed."""

    plan: Plan
    topo: Topology
    raw: dict[str, Any]
    binary: str
    dry_run: bool
    assume_yes: bool
    as_json: bool
    out: Out
    confirm: Callable[[str], bool] | None


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
            req = ApplyRequest(plan, topo, raw, binary, dry_run, assume_yes, as_json, out, confirm)
            return await run(applier, req)
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


async def _apply(a: Applier, req: ApplyRequest) -> int:
    plan, topo, raw, binary = req.plan, req.topo, req.raw, req.binary
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
    code = present(summary, req)
    if code is not None:
        return code
    joining = [*unjoined, *r.added]
    return await _execute(a, plan, topo, raw, binary, r, joining, settings, to_restart, summary)


def present(summary: Summary, req: ApplyRequest) -> int | None:
    """Print the plan (or its --json) and ask; the exit code when nothing is to be carried
    out (no change, --dry-run, declined), None to go on. A topology that changes nothing on
    the nodes (a comment, a field at its default) is still recorded."""
    if req.plan.raw_topology != req.raw and not summary.steps:
        summary.steps.append(
            {"step": "record", "text": "record the topology (nothing to change on the nodes)"}
        )
    name, out = req.topo.name, req.out
    if req.as_json:
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
    if summary.empty or req.dry_run:
        return 0
    confirm = req.confirm
    if not req.assume_yes and (confirm is None or not confirm("Apply these changes? [y/N] ")):
        out("nothing changed")
        return 1
    return None


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
