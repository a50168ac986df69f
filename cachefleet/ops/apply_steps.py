"""The steps of apply on a sharded cluster: live settings, joining new nodes, graceful
hand-overs, merging a split shard, removing nodes, rolling restarts (slot moves are in
apply_slots)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from redis.exceptions import ResponseError

from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.nodes import parse_cluster_nodes
from cachefleet.ops.apply_links import (
    _read_marker,
    _until,
    _update_marker,
    _wait_stopped,
)
from cachefleet.ops.apply_slots import SlotMover
from cachefleet.ops.apply_view import _split_primaries
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import alive_and_ours, live_processes, read_pid

Out = Callable[[str], None]

#: Slots moving at once per source shard, keys per MIGRATE, attempts per slot.


class Applier(SlotMover):
    """Every step of a change of a sharded cluster (the group and memcached executors
    subclass it)."""

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
