"""The zone agent of a memcached cluster: the same supervision, without cluster-mode steps.

A memcached node has no identity on disk, no replicas and no slots: a node that dies is
started again at once, empty, at the same address (the managed service's behaviour too);
the `node_replaced` event says it came back empty, and the discovery version goes up so that
Auto Discovery clients learn of the replacement.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cachefleet import discovery, memcache
from cachefleet.plan import NodeSpec
from shard.agent import NodeRuntime, ZoneAgent

PLAN_CHECK_S = 0.25


class MemcachedAgent(ZoneAgent):
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


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
