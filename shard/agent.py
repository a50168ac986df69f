"""The zone agent: starts, watches and replaces the nodes of one zone; publishes their state.

One process per zone (``python -m shard --cluster NAME --zone az-a --state-dir D``). Node
supervision never depends on the bus: if the broker is down the agent keeps replacing nodes
and reconnects to the bus with capped, jittered back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cachefleet import bus
from cachefleet.announce import emit_event
from cachefleet.errors import CachefleetError
from cachefleet.nodes import (
    STATE_SECTIONS,
    NodeLine,
    Replication,
    cluster_nodes,
    connect,
    info,
    myself,
    myself_line,
    try_call,
)
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import alive_and_ours, ensure_supervisor, read_pid
from cachefleet.state import ClusterDir
from shard.launch import node_paths, start_engine

STATE_INTERVAL_S = 1.0
SUPERVISOR_CHECK_S = 0.25
RESTART_BACKOFF_MIN_S = 0.05
RESTART_BACKOFF_MAX_S = 5.0
STOP_GRACE_S = 5.0
PLAN_CHECK_S = 0.25


@dataclass
class NodeRuntime:
    spec: NodeSpec
    pid: int | None = None
    child: subprocess.Popen[bytes] | None = None
    engine_id: str | None = None
    started_at: float = 0.0
    restarts: int = 0
    status: str = "starting"
    last_state: dict[str, Any] = field(default_factory=dict)


class ZoneAgent:
    def __init__(
        self,
        *,
        plan: Plan,
        cdir: ClusterDir,
        zone: str,
        prestarted: dict[str, subprocess.Popen[bytes]] | None = None,
    ) -> None:
        self.plan = plan
        self.cdir = cdir
        self.zone = zone
        self.log = structlog.get_logger("agent").bind(cluster=plan.name, zone=zone)
        self.nodes = {n.name: NodeRuntime(n) for n in plan.zone_nodes(zone)}
        self.admin = cdir.admin()
        for name, child in (prestarted or {}).items():
            self.nodes[name].child = child
        self.stopping = asyncio.Event()
        self._supervisors: dict[str, asyncio.Task[Any]] = {}  # node name -> its supervise
        self.agent_topic = bus.topic(plan.name, "agents", zone, "state")
        self.bus = bus.BusLink(
            host=plan.bus_host,
            port=plan.bus_port,
            name=f"agent-{zone}",
            will=(self.agent_topic, b"offline"),
            on_connect=self._on_connect,
            log=self.log,
        )

    # -- engine processes -------------------------------------------------------------------

    def _conf(self, spec: NodeSpec) -> str:
        return str(node_paths(self.cdir, spec)[1])

    async def _start(self, rt: NodeRuntime) -> None:
        rt.child = start_engine(self.plan, self.cdir, rt.spec)
        rt.pid = rt.child.pid
        rt.started_at = time.monotonic()
        self.log.info("node_started", node=rt.spec.name, pid=rt.pid, address=rt.spec.address)

    def _adopt(self, rt: NodeRuntime) -> bool:
        """Take over a node process started before the agent's loop ran (by `python -m shard`
        right at start-up) or left running by an earlier agent of this zone."""
        if rt.child is not None:
            rt.pid = rt.child.pid
        else:
            rt.pid = read_pid(self.cdir.pid_file(f"node.{rt.spec.name}"))
        if rt.pid is not None and alive_and_ours(rt.pid, self._conf(rt.spec)):
            rt.started_at = time.monotonic()
            self.log.info("node_started", node=rt.spec.name, pid=rt.pid, address=rt.spec.address)
            return True
        rt.child = None
        return False

    def _identity(self, spec: NodeSpec) -> str | None:
        """The engine node id a node had, from its nodes.conf (None when it never had one)."""
        data_dir, _ = node_paths(self.cdir, spec)
        try:
            text = (data_dir / "nodes.conf").read_text()
        except OSError:
            return None
        me = myself_line(text)
        return me.id if me else None

    async def _wait_exit(self, rt: NodeRuntime) -> int | None:
        """Wait until the node's process has exited (polled: it may not be our child)."""
        while True:
            if rt.child is not None:
                code = rt.child.poll()
                if code is not None:
                    return code
            elif rt.pid is None or not alive_and_ours(rt.pid, self._conf(rt.spec)):
                return None
            await asyncio.sleep(0.05)

    async def _wait_ping(self, spec: NodeSpec, timeout: float = 10.0) -> str | None:
        client = connect(spec.host, spec.port, timeout=1.0, auth=self.admin)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                node_id = await try_call(client, "CLUSTER", "MYID")
                if node_id:
                    return str(node_id)
                await asyncio.sleep(0.02)
            return None
        finally:
            await client.aclose()

    async def supervise(self, rt: NodeRuntime) -> None:
        """Start (or adopt) the node; whenever it dies, start it again and make it rejoin.

        A node found dead when the agent (re)starts is treated like one that just died: if it
        was its shard's primary it waits for the failover before it comes back."""
        task = asyncio.current_task()
        if task is not None:
            self._supervisors[rt.spec.name] = task  # cancelled when a new plan removes the node
        if not self._adopt(rt):
            rt.engine_id = self._identity(rt.spec)
            if rt.engine_id is not None:
                await self._hold_while_primary(rt)
                if self.stopping.is_set():
                    return
            await self._start(rt)
        rt.engine_id = await self._wait_ping(rt.spec)
        rt.status = "up"
        backoff = RESTART_BACKOFF_MIN_S
        while not self.stopping.is_set():
            code = await self._wait_exit(rt)
            if self.stopping.is_set():
                return
            rt.status = "down"
            lived = time.monotonic() - rt.started_at
            self.log.warning("node_exited", node=rt.spec.name, code=code, lived_s=round(lived, 2))
            self._event("node_exited", node=rt.spec.name, zone=self.zone, code=code)
            self._queue_state(rt, {"status": "down"})
            backoff = (
                RESTART_BACKOFF_MIN_S if lived > 10 else min(backoff * 2, RESTART_BACKOFF_MAX_S)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            if self.stopping.is_set():
                return
            await self._hold_while_primary(rt)
            if self.stopping.is_set():
                return
            old_id = rt.engine_id
            data_dir, _ = node_paths(self.cdir, rt.spec)
            lost_identity = not (data_dir / "nodes.conf").exists()
            await self._start(rt)
            rt.restarts += 1
            rt.engine_id = await self._wait_ping(rt.spec)
            if lost_identity and rt.engine_id:
                await self._rejoin(rt, old_id)
            rt.status = "up"
            self.log.info(
                "node_replaced",
                node=rt.spec.name,
                pid=rt.pid,
                lost_identity=lost_identity,
                engine_id=rt.engine_id,
            )
            self._event(
                "node_replaced",
                node=rt.spec.name,
                zone=self.zone,
                id=rt.engine_id,
                **self._replaced_fields(lost_identity),
            )
            self._after_replace(rt)

    def _replaced_fields(self, lost_identity: bool) -> dict[str, Any]:
        return {"lost_identity": lost_identity}

    def _after_replace(self, rt: NodeRuntime) -> None:
        """Hook: what else a replacement changes (memcached: the discovery version)."""

    def extra_tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """Hook: more long-running tasks of the agent (memcached: following plan changes)."""
        return []

    async def _peer_views(self, rt: NodeRuntime) -> list[list[NodeLine]]:
        async def view(peer: NodeSpec) -> list[NodeLine]:
            client = connect(peer.host, peer.port, timeout=0.5, auth=self.admin)
            try:
                return await cluster_nodes(client) or []
            finally:
                await client.aclose()

        peers = [n for n in self.plan.nodes if n.name != rt.spec.name]
        return list(await asyncio.gather(*(view(p) for p in peers)))

    async def _hold_while_primary(self, rt: NodeRuntime) -> None:
        """Do not bring a dead primary straight back.

        Without persistence it would restart empty while still owning its slots, and its
        replicas would resync that empty data set: everything the shard held, lost. So while
        the sentinels can fail the shard over, the agent waits until another member of the
        shard holds its slots (the restarted node then rejoins as that primary's replica),
        for at most down_after + 2 x failover_timeout.
        """
        topo = self.plan.topology
        # The id from nodes.conf when the node never answered CLUSTER MYID (a loaded machine
        # at start-up): an unknown id must not let a dead primary come straight back.
        engine_id = rt.engine_id or self._identity(rt.spec)
        if topo.sentinels.count == 0 or topo.replicas_per_shard == 0 or not engine_id:
            return
        if topo.persistence.appendonly:
            return  # it restarts with its data
        views = [view for view in await self._peer_views(rt) if view]
        serving = any(line.id == engine_id and line.serving for view in views for line in view)
        if views and not serving:
            return  # the peers that answered know it as no shard's primary
        # It served its shard, or no peer answered (a busy machine, a whole zone coming back):
        # not knowing is no reason to risk wiping the replicas, so wait for the failover.
        shard_addrs = {(n.host, n.port) for n in self.plan.shard_nodes(rt.spec.shard)}
        hold_s = (topo.sentinels.down_after_ms + 2 * topo.sentinels.failover_timeout_ms) / 1000
        self.log.info("primary_restart_held", node=rt.spec.name, max_s=hold_s)
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            for view in await self._peer_views(rt):
                for line in view:
                    if (
                        line.serving
                        and line.id != engine_id
                        and (line.host, line.port) in shard_addrs
                    ):
                        self.log.info("primary_restart_released", node=rt.spec.name, by=line.id)
                        return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.1)
        self.log.warning("primary_restart_hold_expired", node=rt.spec.name)

    async def _rejoin(self, rt: NodeRuntime, old_id: str | None) -> None:
        """A node that lost nodes.conf comes back as a stranger: MEET it, make it a replica of
        its shard's current primary, and make the others forget its old identity."""
        peers = [n for n in self.plan.nodes if n.name != rt.spec.name]
        me = connect(rt.spec.host, rt.spec.port, auth=self.admin)
        try:
            for peer in peers:
                client = connect(peer.host, peer.port, timeout=1.0, auth=self.admin)
                try:
                    view = await cluster_nodes(client)
                    if view is None:
                        continue
                    if len(view) <= 1:
                        continue  # the cluster was never created: `up` will do it
                    if old_id:
                        await self._forget_everywhere(peers, old_id)
                    await try_call(me, "CLUSTER", "MEET", peer.host, peer.port, peer.bus_port)
                    shard_addrs = {(n.host, n.port) for n in self.plan.shard_nodes(rt.spec.shard)}
                    primary = next(
                        (
                            line
                            for line in view
                            if line.serving and (line.host, line.port) in shard_addrs
                        ),
                        None,
                    )
                    if primary is None:
                        self.log.warning(
                            "rejoin_no_primary", node=rt.spec.name, shard=rt.spec.shard
                        )
                        return
                    # meet the shard's primary directly too: it learns the new identity at
                    # once instead of by gossip
                    await try_call(
                        me, "CLUSTER", "MEET", primary.host, primary.port, primary.bus_port
                    )
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        reply = await try_call(me, "CLUSTER", "REPLICATE", primary.id)
                        if reply:
                            self.log.info("node_rejoined", node=rt.spec.name, primary=primary.id)
                            return
                        await asyncio.sleep(0.1)
                    self.log.warning("rejoin_timeout", node=rt.spec.name)
                    return
                finally:
                    await client.aclose()
        finally:
            await me.aclose()

    async def _forget_everywhere(self, peers: list[NodeSpec], old_id: str) -> None:
        async def forget(peer: NodeSpec) -> None:
            client = connect(peer.host, peer.port, timeout=1.0, auth=self.admin)
            try:
                await try_call(client, "CLUSTER", "FORGET", old_id)
            finally:
                await client.aclose()

        await asyncio.gather(*(forget(p) for p in peers))

    async def stop_nodes(self) -> None:
        await asyncio.gather(*(self._stop_one(rt) for rt in self.nodes.values()))

    # -- nodes added and removed (`apply` and a memcached scaling `up` rewrite plan.json) ----

    async def follow_plan(self) -> None:
        """Start supervising the zone's nodes a new plan adds; stop those it removes."""
        path = self.cdir.plan_path
        seen = _mtime(path)
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), PLAN_CHECK_S)
            mtime = _mtime(path)
            if self.stopping.is_set() or mtime == seen:
                continue
            seen = mtime
            try:
                plan = Plan.load(path)
            except (OSError, ValueError, KeyError, TypeError, CachefleetError) as exc:
                self.log.warning("plan_unreadable", error=repr(exc))
                continue
            await self._apply_plan(plan)

    async def _apply_plan(self, plan: Plan) -> None:
        wanted = {n.name: n for n in plan.zone_nodes(self.zone)}
        self.plan = plan
        for name in [n for n in self.nodes if n not in wanted]:
            rt = self.nodes.pop(name)
            task = self._supervisors.pop(name, None)
            if task is not None:
                task.cancel()
            await self._stop_one(rt)
            self.bus.publish(bus.topic(plan.name, "nodes", name, "state"), b"offline", retain=True)
            self.log.info("node_removed", node=name)
        for name, spec in wanted.items():
            if name in self.nodes:
                continue
            rt = NodeRuntime(spec)
            self.nodes[name] = rt
            asyncio.get_running_loop().create_task(
                self.supervise(rt), name=f"agent[{self.zone}].supervise[{name}]"
            )
            self.log.info("node_added", node=name, address=spec.address)

    async def _stop_one(self, rt: NodeRuntime) -> None:
        """SIGTERM (and SIGCONT, for a node paused by a chaos run), SIGKILL after
        STOP_GRACE_S; the pid file goes with it."""
        conf = self._conf(rt.spec)
        if rt.pid is not None and alive_and_ours(rt.pid, conf):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rt.pid, signal.SIGTERM)
                os.kill(rt.pid, signal.SIGCONT)
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and alive_and_ours(rt.pid, conf):
                if rt.child is not None:
                    rt.child.poll()
                await asyncio.sleep(0.05)
            if alive_and_ours(rt.pid, conf):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rt.pid, signal.SIGKILL)
        if rt.child is not None:
            await asyncio.to_thread(rt.child.wait)
        self.cdir.pid_file(f"node.{rt.spec.name}").unlink(missing_ok=True)
        self.log.info("node_stopped", node=rt.spec.name)

    # -- state publishing ---------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        emit_event(self.bus, self.cdir, kind, **fields)

    def _queue_state(self, rt: NodeRuntime, extra: dict[str, Any]) -> None:
        state = {
            "node": rt.spec.name,
            "id": rt.engine_id,
            "zone": self.zone,
            "shard": rt.spec.shard,
            "address": rt.spec.address,
            "pid": rt.pid,
            "restarts": rt.restarts,
            **extra,
        }
        rt.last_state = state
        topic = bus.topic(self.plan.name, "nodes", rt.spec.name, "state")
        self.bus.publish(topic, bus.encode(state), retain=True)

    async def _sample(self, rt: NodeRuntime) -> None:
        if rt.status != "up":
            return
        client = connect(rt.spec.host, rt.spec.port, timeout=0.5, auth=self.admin)
        try:
            data = await info(client, *STATE_SECTIONS)
            me = await myself(client)
        finally:
            await client.aclose()
        if data is None:
            self._queue_state(rt, {"status": "unresponsive"})
            return
        rep = Replication.from_info(data)
        self._queue_state(
            rt,
            {
                "status": "up",
                "id": me.id if me else rt.engine_id,
                "role": str(rep.role),
                "offset": rep.offset,
                "link": None if rep.is_primary else ("up" if rep.link_up else "down"),
                "connected_replicas": rep.connected_replicas,
                "used_memory": data.get("used_memory"),
                "maxmemory": data.get("maxmemory"),
                "ops_per_sec": data.get("instantaneous_ops_per_sec"),
                "hits": data.get("keyspace_hits"),
                "misses": data.get("keyspace_misses"),
                "uptime_s": data.get("uptime_in_seconds"),
            },
        )

    async def watch_supervisor(self) -> None:
        """Start the cluster's supervisor again when it is gone (any agent may; its lock
        keeps it to one), unless the cluster is being stopped."""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), SUPERVISOR_CHECK_S)
            if self.stopping.is_set() or self.cdir.stopping():
                continue
            pid = ensure_supervisor(self.cdir)
            if pid is None:
                continue
            self.log.warning("supervisor_restarted", pid=pid)
            self._event("process_restarted", process="supervisor", pid=pid, by=f"agent.{self.zone}")

    async def publish_states(self) -> None:
        while not self.stopping.is_set():
            sampled = list(self.nodes.values())  # a new plan may change the dict meanwhile
            results = await asyncio.gather(
                *(self._sample(rt) for rt in sampled), return_exceptions=True
            )
            for rt, result in zip(sampled, results, strict=True):
                if isinstance(result, Exception):  # a state sample never takes the agent down
                    self.log.warning("state_sample_failed", node=rt.spec.name, error=repr(result))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), STATE_INTERVAL_S)

    def _on_connect(self) -> None:
        self.bus.publish(
            self.agent_topic, bus.encode({"zone": self.zone, "status": "up"}), retain=True
        )
        for rt in self.nodes.values():
            if rt.last_state:
                self._queue_state(rt, {})  # re-send current state after a reconnect

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.log.info("agent_started", nodes=sorted(self.nodes))
        async with asyncio.TaskGroup() as tg:
            for rt in self.nodes.values():
                tg.create_task(
                    self.supervise(rt), name=f"agent[{self.zone}].supervise[{rt.spec.name}]"
                )
            tg.create_task(self.publish_states(), name=f"agent[{self.zone}].states")
            tg.create_task(self.watch_supervisor(), name=f"agent[{self.zone}].supervisor")
            tg.create_task(self.follow_plan(), name=f"agent[{self.zone}].plan")
            for name, extra in self.extra_tasks():
                tg.create_task(extra, name=f"agent[{self.zone}].{name}")
            bus_stop = asyncio.Event()
            final = [
                (bus.topic(self.plan.name, "nodes", name, "state"), b"offline")
                for name in self.nodes
            ]
            final.append((self.agent_topic, b"offline"))
            pump = tg.create_task(self.bus.run(bus_stop, final), name=f"agent[{self.zone}].bus")
            await self.stopping.wait()
            await self.stop_nodes()
            bus_stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), 2.0)
            pump.cancel()
        self.log.info("agent_stopped")


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
