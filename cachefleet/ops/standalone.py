"""A cluster-mode-disabled group at `up` and in `status`: one primary with read replicas.

There is nothing to create: each node's config names whom it replicates. `up` waits until
one node is the primary and every other is its replica with the link up, then publishes the
layout (shard 1, no slots) and waits until the primary endpoint reaches the primary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aredis

from cachefleet.credentials import Credentials
from cachefleet.errors import ClusterTimeout
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import Replication, Role, connect, info, try_call
from cachefleet.plan import NodeSpec, Plan

Out = Callable[[str], None]


def endpoints(plan: Plan) -> dict[str, str]:
    """The group's endpoints as `host:port`, for `status --json` and the `up` summary."""
    return {
        "primary": f"{plan.router_host}:{plan.router_port}",
        "reader": f"{plan.router_host}:{plan.reader_port}",
    }


def choose_primary(
    plan: Plan, roles: dict[str, Replication | None], previous: Layout | None
) -> NodeSpec | None:
    """The node that leads the group: the only primary the nodes report; with several, the
    previous layout's primary, else the plan's first member; None while none reports it."""
    primaries = [n for n in plan.nodes if (r := roles.get(n.name)) and r.role is Role.PRIMARY]
    if len(primaries) <= 1:
        return primaries[0] if primaries else None
    before = previous.shards[0].primary if previous and previous.shards else None
    for node in primaries:
        if before is not None and node.name == before.name:
            return node
    return next((n for n in primaries if n.member == 0), primaries[0])


def group_layout(plan: Plan, primary: NodeSpec, ids: dict[str, str], epoch: int) -> Layout:
    """Shard 1 with no slots: `primary` leads, every other member is its replica."""
    nodes = tuple(
        LayoutNode(
            name=n.name,
            id=ids.get(n.name, ""),
            shard=1,
            zone=n.zone,
            host=n.host,
            port=n.port,
            bus_port=n.bus_port,
            role="primary" if n.name == primary.name else "replica",
        )
        for n in plan.nodes
    )
    return Layout(cluster=plan.name, epoch=epoch, shards=(LayoutShard(1, (), nodes),))


async def _state(client: aredis.Redis) -> tuple[Replication | None, str]:
    data = await info(client, "server", "replication")
    if data is None:
        return None, ""
    return Replication.from_info(data), str(data.get("run_id", ""))


async def create(
    plan: Plan, auth: Credentials, previous: Layout | None, progress: Out, timeout: float = 60.0
) -> Layout:
    """Wait for one primary and its replicas in sync; the layout at the next epoch."""
    clients = {n.name: connect(n.host, n.port, timeout=2.0, auth=auth) for n in plan.nodes}
    try:
        progress(f"waiting for {len(plan.nodes)} nodes: one primary, replicas in sync")
        deadline = time.monotonic() + timeout
        missing = "not checked"
        while time.monotonic() < deadline:
            states = await asyncio.gather(*(_state(c) for c in clients.values()))
            roles = {name: st[0] for name, st in zip(clients, states, strict=True)}
            ids = {name: st[1] for name, st in zip(clients, states, strict=True)}
            primary = choose_primary(plan, roles, previous)
            missing = _not_ready(plan, roles, primary) or ""
            if primary is not None and not missing:
                epoch = previous.epoch + 1 if previous else 1
                return group_layout(plan, primary, ids, epoch)
            await asyncio.sleep(0.05)
        raise ClusterTimeout("group start", timeout, missing)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)


def _not_ready(
    plan: Plan, roles: dict[str, Replication | None], primary: NodeSpec | None
) -> str | None:
    if primary is None:
        return "no node is the primary yet"
    for node in plan.nodes:
        rep = roles.get(node.name)
        if rep is None:
            return f"{node.name} does not answer"
        if node.name == primary.name:
            continue
        if rep.role is not Role.REPLICA or rep.primary_addr != (primary.host, primary.port):
            return f"{node.name} is not a replica of {primary.name}"
        if not rep.link_up or rep.syncing:
            return f"{node.name} is still syncing"
    return None


async def wait_endpoints(plan: Plan, timeout: float) -> None:
    """Until the primary endpoint reaches a primary and the reader endpoint answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writer = connect(plan.router_host, plan.router_port, timeout=1.0)
        reader = connect(plan.router_host, plan.reader_port or 0, timeout=1.0)
        try:
            role = await try_call(writer, "ROLE")
            pong = await try_call(reader, "PING")
        finally:
            await writer.aclose()
            await reader.aclose()
        if isinstance(role, list) and role and role[0] == "master" and pong:
            return
        await asyncio.sleep(0.05)
    raise ClusterTimeout("endpoints", timeout, "the primary endpoint does not reach the primary")


def print_endpoints(plan: Plan, layout: Layout | None, out: Out) -> None:
    ends = endpoints(plan)
    out(f"  primary endpoint (reads and writes): {ends['primary']}")
    out(f"  reader endpoint (replicas): {ends['reader']}")
    out(f"  bus: mqtt://{plan.bus_host}:{plan.bus_port}")
    shard = layout.shards[0] if layout is not None and layout.shards else None
    if shard is not None:
        p = shard.primary
        primary = f"{p.name} {p.address} ({p.zone})" if p else "none"
        reps = ", ".join(f"{r.name} {r.address} ({r.zone})" for r in shard.replicas) or "none"
        out(f"  primary {primary}; replicas {reps}")
    host, port = ends["primary"].split(":")
    out(f"  try: redis-cli -h {host} -p {port} set foo bar")


def status_fields(plan: Plan) -> dict[str, Any]:
    return {"cluster_mode": "disabled", "endpoints": endpoints(plan)}
