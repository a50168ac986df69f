"""The zone agent of a cluster-mode-disabled group: the same supervision, no cluster steps.

The engines run without cluster mode; whom a node replicates is in its config, rendered at
every start from the last published layout (:func:`shard.launch.standalone_primary`). So a
node that dies comes back as a replica of whoever is primary now. A dead primary is never
brought straight back as a primary: without persistence it would come back empty and its
replicas would resync that empty data set. It waits until the sentinels have promoted
another member (it then starts as that node's replica), for at most down_after +
2 x failover_timeout, as in cluster mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from cachefleet.nodes import connect, info
from cachefleet.plan import NodeSpec
from shard.agent import NodeRuntime, ZoneAgent


class StandaloneAgent(ZoneAgent):
    def _identity(self, spec: NodeSpec) -> str | None:
        # A node was part of the group once the group was created (a layout was published).
        return "member" if self.cdir.layout_path.exists() else None

    def _layout_primary(self) -> str | None:
        layout = self.cdir.load_layout()
        if layout is None or not layout.shards:
            return None
        primary = layout.shards[0].primary
        return primary.name if primary else None

    async def _hold_while_primary(self, rt: NodeRuntime) -> None:
        topo = self.plan.topology
        if topo.sentinels.count == 0 or topo.replicas_per_shard == 0 or not rt.engine_id:
            return
        if topo.persistence.appendonly:
            return  # it restarts with its data (a sentinel demotes it if another was promoted)
        if self._layout_primary() != rt.spec.name:
            return  # a replica: its config names the current primary
        hold_s = (topo.sentinels.down_after_ms + 2 * topo.sentinels.failover_timeout_ms) / 1000
        self.log.info("primary_restart_held", node=rt.spec.name, max_s=hold_s)
        deadline = time.monotonic() + hold_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            current = self._layout_primary()
            if current is not None and current != rt.spec.name:
                self.log.info("primary_restart_released", node=rt.spec.name, by=current)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.1)
        self.log.warning("primary_restart_hold_expired", node=rt.spec.name)

    async def _rejoin(self, rt: NodeRuntime, old_id: str | None) -> None:
        return None  # nothing to join: the config's `replicaof` names the current primary

    def _replaced_fields(self, lost_identity: bool) -> dict[str, Any]:
        return {"lost_identity": False}  # no cluster identity to lose

    async def _wait_ping(self, spec: NodeSpec, timeout: float = 10.0) -> str | None:
        """The node's run id once it answers INFO as the control plane's user."""
        client = connect(spec.host, spec.port, timeout=1.0, auth=self.admin)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = await info(client, "server")
                if data is not None and data.get("run_id"):
                    return str(data["run_id"])
                await asyncio.sleep(0.02)
            return None
        finally:
            await client.aclose()
