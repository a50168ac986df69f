"""Operator-requested (graceful) failover of one shard: plain ``CLUSTER FAILOVER``.

The engine coordinates it: the primary stops accepting writes, the replica catches up to the
primary's exact offset, then takes over — no acknowledged write is lost. It needs a reachable
primary and a healthy, linked replica; otherwise it refuses (an unreachable primary is the
sentinels' job, with TAKEOVER).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from cachefleet import bus
from cachefleet.announce import emit_event, publish_layout
from cachefleet.credentials import Credentials
from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.layout import LayoutNode
from cachefleet.nodes import Role, connect, myself, replication, try_call
from cachefleet.ops.status import read_bus
from cachefleet.state import ClusterDir, state_home


@dataclass(frozen=True)
class ReplicaState:
    node: LayoutNode
    offset: int
    linked: bool
    master: tuple[str, int] | None


async def _replica_state(node: LayoutNode, auth: Credentials) -> ReplicaState | None:
    client = connect(node.host, node.port, timeout=1.0, auth=auth)
    try:
        rep = await replication(client)
    finally:
        await client.aclose()
    if rep is None or rep.role is not Role.REPLICA:
        return None
    return ReplicaState(node=node, offset=rep.offset, linked=rep.link_up, master=rep.primary_addr)


def choose_replica(
    states: list[ReplicaState], primary: LayoutNode, to: str | None
) -> ReplicaState | None:
    """Healthy replicas of `primary`; `to` (name or engine id) if given, else the most
    caught-up one, preferring another zone, then the lowest name."""
    healthy = [s for s in states if s.linked and s.master == (primary.host, primary.port)]
    if to is not None:
        return next((s for s in healthy if to in (s.node.name, s.node.id)), None)
    healthy.sort(key=lambda s: (-s.offset, s.node.zone == primary.zone, s.node.name))
    return healthy[0] if healthy else None


async def graceful_failover(
    name: str, *, shard_id: int | None, to: str | None, state_dir: str | None
) -> str:
    cdir = ClusterDir(state_home(state_dir), name)
    plan = cdir.load_plan()
    if plan.topology.is_memcached:
        raise CachefleetError(
            f"cluster {name!r} is a memcached cluster: its nodes have no replicas to fail over "
            "to (a failed node is replaced by its zone agent; memcached.copies keeps keys on "
            "more than one node)"
        )
    layout = (await read_bus(plan, cdir)).layout or cdir.load_layout()
    if layout is None:
        raise CachefleetError(f"cluster {name!r} has no published layout (is it running?)")
    if plan.topology.standalone:  # cluster mode disabled: the group's one shard, no --shard
        from cachefleet.ops import standalone

        hellos = (await read_bus(plan, cdir)).hellos
        epoch = max((h.failover_epoch for h in hellos.values()), default=0)
        return await standalone.graceful_failover(plan, cdir, layout, epoch, to)
    if shard_id is None:
        raise CachefleetError(f"cluster {name!r} has shards: give --shard N")
    ids = [s.id for s in layout.shards]
    if shard_id not in ids:
        raise CachefleetError(
            f"cluster {name!r} has no shard {shard_id} (shards {ids[0]}..{ids[-1]})"
        )
    shard = layout.shard(shard_id)
    primary = shard.primary
    if primary is None:
        raise CachefleetError(f"shard {shard_id} has no primary in the layout")
    auth = cdir.admin()
    pclient = connect(primary.host, primary.port, timeout=1.0, auth=auth)
    try:
        me = await myself(pclient)
    finally:
        await pclient.aclose()
    if me is None or not me.serving:
        raise CachefleetError(
            f"shard {shard_id}: primary {primary.name} is not serving; a graceful failover needs "
            "a live primary (the sentinels fail over a dead one)"
        )
    states = [
        s for s in await asyncio.gather(*(_replica_state(r, auth) for r in shard.replicas)) if s
    ]
    chosen = choose_replica(states, primary, to)
    if chosen is None:
        if to is not None:
            raise CachefleetError(
                f"shard {shard_id}: {to!r} is not a healthy replica of {primary.name}"
            )
        raise CachefleetError(f"shard {shard_id} has no healthy replica to fail over to")

    t0 = time.monotonic()
    target = chosen.node
    client = connect(target.host, target.port, timeout=2.0, auth=auth)
    timeout = 2 * plan.topology.sentinels.failover_timeout_ms / 1000
    try:
        reply = await try_call(client, "CLUSTER", "FAILOVER")
        if reply is None:
            raise CachefleetError(f"{target.name} refused CLUSTER FAILOVER")
        new_id: str | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = await myself(client)
            if line is not None and line.serving:
                new_id = line.id
                break
            await asyncio.sleep(0.02)
        if new_id is None:
            raise ClusterTimeout(f"graceful failover of shard {shard_id}", timeout)
    finally:
        await client.aclose()
    elapsed = time.monotonic() - t0

    # The new layout's config epoch must beat both the current layout and any failover epoch
    # the sentinels reached meanwhile (they stamp their layouts with it): re-read the hellos.
    hellos = (await read_bus(plan, cdir)).hellos
    config_epoch = max([layout.epoch, *(h.failover_epoch for h in hellos.values())]) + 1
    new_layout = layout.with_primary(shard_id, target.name, new_id, config_epoch)
    outbox = bus.Outbox(plan.bus_host, plan.bus_port)
    publish_layout(outbox, cdir, new_layout)
    emit_event(
        outbox,
        cdir,
        "graceful_failover",
        shard=shard_id,
        config_epoch=config_epoch,
        old_primary=primary.name,
        new_primary=target.name,
        zone=target.zone,
        duration_ms=round(elapsed * 1000),
    )
    await outbox.flush()
    return (
        f"shard {shard_id}: primary {primary.name} ({primary.zone}) -> {target.name} "
        f"({target.zone}) in {elapsed:.2f}s, config epoch {config_epoch}"
    )
