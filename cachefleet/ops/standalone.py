"""A cluster-mode-disabled group at `up` and in `status`: one primary with read replicas.

There is nothing to create: each node's config names whom it replicates. `up` waits until
one node is the primary and every other is its replica with the link up, then publishes the
layout (shard 1, no slots) and waits until the primary endpoint reaches the primary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aredis

from cachefleet import bus
from cachefleet.announce import emit_event, publish_layout
from cachefleet.credentials import Credentials
from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import Replication, Role, connect, info, try_call
from cachefleet.plan import NodeSpec, Plan
from cachefleet.security import security_summary
from cachefleet.state import ClusterDir
from cachefleet.tls import ca_for

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


def group_layout(
    plan: Plan,
    primary: NodeSpec,
    ids: dict[str, str],
    epoch: int,
    members: Sequence[NodeSpec] | None = None,
) -> Layout:
    """Shard 1 with no slots: `primary` leads, every other member (of `members`, the plan's
    nodes by default) is its replica."""
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
        for n in (plan.nodes if members is None else members)
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


async def wait_endpoints(plan: Plan, auth: Credentials, timeout: float) -> None:
    """Until the primary endpoint reaches a primary and the reader endpoint answers (as the
    control plane's user: the hops are transparent, the engines check who it is)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writer = connect(plan.router_host, plan.router_port, timeout=1.0, auth=auth)
        reader = connect(plan.router_host, plan.reader_port or 0, timeout=1.0, auth=auth)
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
    sec = plan.topology.security
    ca = ca_for(plan.router_host, plan.router_port)  # the endpoints pass the nodes' TLS on
    opts = (f" --tls --cacert {ca}" if ca is not None else "") + (
        " --askpass" if sec.requires_auth else ""
    )
    if sec.tls or sec.requires_auth or sec.allowed_sources:
        from cachefleet.ops import firewall

        nodes = firewall.describe(plan) if sec.allowed_sources else ""
        out(f"  security: {security_summary(sec, ca, nodes)}")
    host, port = ends["primary"].split(":")
    out(f"  try: redis-cli{opts} -h {host} -p {port} set foo bar")


class Member(Protocol):
    """A group member as the layout (LayoutNode) or the plan (NodeSpec) knows it."""

    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


async def failover_to(
    primary: Member,
    target: Member,
    others: Sequence[Member],
    auth: Credentials,
    timeout_ms: int,
) -> tuple[str, float]:
    """The engine's ``FAILOVER TO`` on a live primary (it stops writes, waits until `target`
    has every byte, then swaps roles: nothing acknowledged is lost), then `others` re-pointed
    at `target`. Returns the target's run id as primary and the seconds the swap took."""
    pclient = connect(primary.host, primary.port, timeout=2.0, auth=auth)
    try:
        t0 = time.monotonic()
        reply = await try_call(
            pclient, "FAILOVER", "TO", target.host, target.port, "TIMEOUT", timeout_ms
        )
        if reply is None:
            raise CachefleetError(f"{primary.name} refused FAILOVER TO {target.name}")
    finally:
        await pclient.aclose()
    tclient = connect(target.host, target.port, timeout=2.0, auth=auth)
    try:
        deadline = time.monotonic() + 2 * timeout_ms / 1000
        new_id: str | None = None
        while time.monotonic() < deadline:
            rep, run_id = await _state(tclient)
            if rep is not None and rep.role is Role.PRIMARY:
                new_id = run_id
                break
            await asyncio.sleep(0.02)
        if new_id is None:
            raise ClusterTimeout("graceful failover", 2 * timeout_ms / 1000)
    finally:
        await tclient.aclose()
    elapsed = time.monotonic() - t0
    for other in others:
        client = connect(other.host, other.port, timeout=1.0, auth=auth)
        try:
            await try_call(client, "REPLICAOF", target.host, target.port)
        finally:
            await client.aclose()
    return new_id, elapsed


def status_fields(plan: Plan) -> dict[str, Any]:
    return {"cluster_mode": "disabled", "endpoints": endpoints(plan)}


async def graceful_failover(
    plan: Plan, cdir: ClusterDir, layout: Layout, hellos_epoch: int, to: str | None
) -> str:
    """Operator-requested failover of a group: the engine's own ``FAILOVER TO host port``
    on the primary (it stops writes, waits until the replica has every byte, then swaps
    roles: nothing acknowledged is lost), the other replicas re-pointed, the layout
    published at an epoch above every failover epoch the sentinels reached."""
    from cachefleet.ops.failover import _replica_state, choose_replica

    shard = layout.shards[0]
    primary = shard.primary
    if primary is None:
        raise CachefleetError(f"group {plan.name!r} has no primary in the layout")
    auth = cdir.admin()
    pclient = connect(primary.host, primary.port, timeout=2.0, auth=auth)
    try:
        state = await _state(pclient)
        if state[0] is None or state[0].role is not Role.PRIMARY:
            raise CachefleetError(
                f"primary {primary.name} is not serving; a graceful failover needs a live "
                "primary (the sentinels fail over a dead one)"
            )
        states = [
            s for s in await asyncio.gather(*(_replica_state(r, auth) for r in shard.replicas)) if s
        ]
        chosen = choose_replica(states, primary, to)
        if chosen is None:
            what = f"{to!r} is not a healthy replica" if to else "no healthy replica"
            raise CachefleetError(f"group {plan.name!r}: {what} of {primary.name}")
        target = chosen.node
        timeout_ms = plan.topology.sentinels.failover_timeout_ms
    finally:
        await pclient.aclose()
    others = [r for r in shard.replicas if r.name != target.name]
    new_id, elapsed = await failover_to(primary, target, others, auth, timeout_ms)
    config_epoch = max(layout.epoch, hellos_epoch) + 1
    new_layout = layout.with_primary(1, target.name, new_id, config_epoch)
    outbox = bus.Outbox(plan.bus_host, plan.bus_port)
    publish_layout(outbox, cdir, new_layout)
    emit_event(
        outbox, cdir, "graceful_failover", shard=1, config_epoch=config_epoch,
        old_primary=primary.name, new_primary=target.name, zone=target.zone,
        duration_ms=round(elapsed * 1000),
    )  # fmt: skip
    await outbox.flush()
    return (
        f"group {plan.name}: primary {primary.name} ({primary.zone}) -> {target.name} "
        f"({target.zone}) in {elapsed:.2f}s, config epoch {config_epoch}"
    )
