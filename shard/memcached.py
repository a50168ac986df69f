"""The zone agent of a memcached cluster: the same supervision, without cluster-mode steps.

A memcached node has no identity on disk, no replicas and no slots: a node that dies is
started again at once, empty, at the same address (the managed service's behaviour too);
the `node_replaced` event says it came back empty, and the discovery version goes up so that
Auto Discovery clients learn of the replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from cachefleet import bus, discovery, memcache
from cachefleet.errors import CachefleetError
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import alive_and_ours
from shard.agent import STOP_GRACE_S, NodeRuntime, ZoneAgent

PLAN_CHECK_S = 0.25


class MemcachedAgent(ZoneAgent):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._supervisors: dict[str, asyncio.Task[Any]] = {}  # node name -> its supervise

    async def supervise(self, rt: NodeRuntime) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._supervisors[rt.spec.name] = task  # cancelled when a new plan removes the node
        await super().supervise(rt)

    def _identity(self, spec: NodeSpec) -> str | None:
        return None  # nothing on disk: a dead node is simply started again

    async def _hold_while_primary(self, rt: NodeRuntime) -> None:
        return None  # no slots to fail over, no replicas to protect

    async def _rejoin(self, rt: NodeRuntime, old_id: str | None) -> None:
        return None  # nothing to join: clients find the node by hashing or discovery

    async def _wait_ping(self, spec: NodeSpec, timeout: float = 10.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await memcache.version(spec.host, spec.port, timeout=0.5):
                return spec.node_id
            await asyncio.sleep(0.02)
        return None

    def _replaced_fields(self, lost_identity: bool) -> dict[str, Any]:
        return {"empty": True}

    def _after_replace(self, rt: NodeRuntime) -> None:
        version = discovery.bump_version(self.bus, self.cdir, "node_replaced", node=rt.spec.name)
        self.log.info("discovery_version", version=version, node=rt.spec.name)

    # -- nodes added and removed (a scaling `up` rewrites plan.json) -----------------------

    def extra_tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        return [("plan", self.follow_plan())]

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
        conf = self._conf(rt.spec)
        if rt.pid is not None and alive_and_ours(rt.pid, conf):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rt.pid, signal.SIGTERM)
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

    async def _sample(self, rt: NodeRuntime) -> None:
        if rt.status != "up":
            return
        data = await memcache.stats(rt.spec.host, rt.spec.port, timeout=0.5)
        if data is None:
            self._queue_state(rt, {"status": "unresponsive"})
            return
        self._queue_state(
            rt,
            {
                "status": "up",
                "id": rt.spec.node_id,
                "role": "primary",
                "used_memory": _int(data.get("bytes")),
                "maxmemory": _int(data.get("limit_maxbytes")),
                "items": _int(data.get("curr_items")),
                "connections": _int(data.get("curr_connections")),
                "hits": _int(data.get("get_hits")),
                "misses": _int(data.get("get_misses")),
                "evictions": _int(data.get("evictions")),
                "uptime_s": _int(data.get("uptime")),
            },
        )


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
