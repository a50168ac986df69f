"""The sentinel's eyes: one probe task per node (PING + INFO replication on a pipelined
link, every probe interval) recording the last valid reply, and the pure views of it that
decisions read (:class:`~sentinel.decide.Probe`, replicas for the replica choice)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachefleet.credentials import Credentials
from cachefleet.layout import LayoutNode, LayoutShard
from cachefleet.nodes import NodeLink, Replication, Role
from cachefleet.plan import Plan
from sentinel import decide, machine
from sentinel.decide import Timings


@dataclass
class Observation:
    first_probe: float
    last_ok: float | None = None
    reply: Replication | None = None


class Probes:
    def __init__(
        self, *, plan: Plan, source: str, auth: Credentials | None, timings: Timings, log: Any
    ) -> None:
        self.plan = plan
        self.timings = timings
        self.log = log
        self.obs: dict[str, Observation] = {}
        self.links = {
            n.name: NodeLink(host=n.host, port=n.port, source=source, auth=auth) for n in plan.nodes
        }
        self.by_addr = {(n.host, n.port): n.name for n in plan.nodes}

    async def probe_loop(self, name: str, stop: asyncio.Event) -> None:
        link = self.links[name]
        self.obs[name] = Observation(first_probe=time.monotonic())
        next_at = time.monotonic()
        t = self.timings
        while not stop.is_set():
            try:
                reply = await link.probe(t.probe_timeout_s)
            except Exception:  # a sentinel that stops probing would silently leave the quorum
                self.log.exception("probe_failed", node=name)
                await link.close()
                reply = None
            if reply is not None:
                ob = self.obs[name]
                ob.last_ok, ob.reply = time.monotonic(), reply
            next_at = max(next_at + t.interval_s, time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def view(self, name: str) -> decide.Probe:
        ob = self.obs.get(name) or Observation(first_probe=time.monotonic())
        r = ob.reply
        return decide.Probe(
            node=name,
            last_ok=ob.last_ok,
            first_probe=ob.first_probe,
            role=r.role if r else None,
            repl_offset=r.offset if r else 0,
            link_up=bool(r and r.link_up),
            link_down_since_s=r.link_down_s if r else 0.0,
        )

    def is_sdown(self, name: str, now: float, promoted_at: Mapping[str, float]) -> bool:
        """Subjectively down, unless just promoted (its grace period)."""
        if decide.in_promotion_grace(promoted_at.get(name), now, self.timings.grace_s):
            return False
        return decide.is_sdown(self.view(name), now, self.timings.down_after_s)

    def rank(
        self,
        shard: LayoutShard,
        failed: LayoutNode,
        now: float,
        *,
        sdown_since: float,
        promoted_at: Mapping[str, float],
    ) -> machine.Ranked:
        """The shard's replicas as this sentinel sees them, ranked for promotion."""
        t = self.timings
        replicas = []
        for node in shard.replicas:
            ob = self.obs.get(node.name)
            reply = ob.reply if ob else None
            fresh = bool(ob and ob.last_ok and now - ob.last_ok <= t.probe_timeout_s + t.interval_s)
            primary = self.by_addr.get(reply.primary_addr) if reply and reply.primary_addr else None
            replicas.append(
                machine.Replica(
                    name=node.name,
                    zone=node.zone,
                    repl_offset=reply.offset if reply else 0,
                    reachable=fresh and reply is not None and reply.role is Role.REPLICA,
                    sdown=self.is_sdown(node.name, now, promoted_at),
                    link_down_s=reply.link_down_s if reply else float("inf"),
                    primary=primary,
                )
            )
        return machine.rank_replicas(
            replicas,
            failed_primary=failed.name,
            failed_zone=failed.zone,
            max_link_down_s=(now - sdown_since) + 10 * t.down_after_s,
        )

    async def close(self) -> None:
        for link in self.links.values():
            await link.close()
