"""The memcached side of `up` and `status`: nodes, the configuration endpoint, health."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from cachefleet import memcache, ports
from cachefleet.errors import ClusterTimeout
from cachefleet.layout import Layout
from cachefleet.plan import NodeSpec, Plan, build_plan, place
from cachefleet.proc import alive_and_ours, live_processes, read_pid
from cachefleet.state import ClusterDir
from cachefleet.tls import ca_for
from cachefleet.topology import Topology

Out = Callable[[str], None]


async def wait_nodes(plan: Plan, timeout: float) -> None:
    """Until every node answers `version`."""
    deadline = time.monotonic() + timeout
    down = [n.name for n in plan.nodes]
    while time.monotonic() < deadline:
        answers = await asyncio.gather(
            *(memcache.version(n.host, n.port, timeout=0.5) for n in plan.nodes)
        )
        down = [n.name for n, v in zip(plan.nodes, answers, strict=True) if v is None]
        if not down:
            return
        await asyncio.sleep(0.05)
    raise ClusterTimeout("nodes start", timeout, f"nodes not answering: {', '.join(down)}")


def discovery_version(reply: bytes | None) -> int | None:
    """The version in a `config get cluster` reply (None when there is none)."""
    if reply is None or not reply.startswith(b"CONFIG cluster 0 "):
        return None
    try:
        return int(reply.split(b"\r\n", 1)[1].split(b"\n", 1)[0])
    except (IndexError, ValueError):
        return None


async def wait_router(plan: Plan, version: int, timeout: float) -> None:
    """Until the configuration endpoint serves discovery version `version` (or a later one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = await memcache.call(
            plan.router_host, plan.router_port, b"config get cluster\r\n", timeout=0.5
        )
        seen = discovery_version(reply)
        if seen is not None and seen >= version:
            return
        await asyncio.sleep(0.05)
    raise ClusterTimeout("router layout", timeout, "the router did not serve the node list")


def print_endpoints(plan: Plan, layout: Layout | None, out: Out) -> None:
    out(
        f"  configuration endpoint (Auto Discovery and proxy): "
        f"{plan.router_host}:{plan.router_port}"
    )
    out(f"  bus: mqtt://{plan.bus_host}:{plan.bus_port}")
    if layout is not None:
        out(f"  discovery version {layout.epoch}")
    for n in plan.nodes:
        out(f"  node {n.node_id} {n.name} {n.address} ({n.zone})")
    host, port = plan.router_host, plan.router_port
    ca = ca_for(host, port)
    sources = plan.topology.security.allowed_sources
    if sources:
        from cachefleet.ops import firewall

        out(
            f"  security: the configuration endpoint admits {', '.join(sources)} only; "
            f"{firewall.describe(plan)}"
        )
    if ca is None:
        out(f"  try: printf 'config get cluster\\r\\n' | nc {host} {port}")
        return
    out(f"  security: TLS (CA {ca}) on the nodes and the configuration endpoint")
    out(
        f"  try: printf 'config get cluster\\r\\n' | openssl s_client -quiet -CAfile {ca} "
        f"-verify_ip {host} -connect {host}:{port}"
    )


async def node_health(plan: Plan) -> list[dict[str, Any]]:
    """Every node with its health (answers `stats` within 0.5 s) and a few of its figures."""
    answers = await asyncio.gather(
        *(memcache.stats(n.host, n.port, timeout=0.5) for n in plan.nodes)
    )
    nodes = []
    for n, st in zip(plan.nodes, answers, strict=True):
        nodes.append(
            {
                "id": n.node_id,
                "name": n.name,
                "address": n.address,
                "zone": n.zone,
                "healthy": st is not None,
                "items": int(st["curr_items"]) if st and "curr_items" in st else None,
                "uptime_s": int(st["uptime"]) if st and "uptime" in st else None,
            }
        )
    return nodes


def format_nodes(st: dict[str, Any]) -> list[str]:
    lines = []
    for n in st["nodes"]:
        health = "healthy" if n["healthy"] else "UNHEALTHY"
        items = f", {n['items']} items" if n.get("items") is not None else ""
        lines.append(f"  node {n['id']} {n['name']} {n['address']} ({n['zone']}) {health}{items}")
    return lines


def only_nodes_changed(plan: Plan, raw: Any) -> bool:
    """True when `raw` is the memcached cluster's topology with another `nodes:` only (the
    one change `up` makes online: nodes added or removed)."""
    if not plan.topology.is_memcached or not isinstance(raw, dict):
        return False
    old = {k: v for k, v in plan.raw_topology.items() if k != "nodes"}
    return old == {k: v for k, v in raw.items() if k != "nodes"} and raw != plan.raw_topology


def scaled_plan(old: Plan, topo: Topology, raw: dict[str, Any]) -> Plan:
    """The plan with topo's node count: the nodes both have keep their zone, address and
    port; new ones get node i's zone (i mod Z) and a port (base + i, or a free one)."""
    keep = min(len(old.nodes), topo.shards)
    node_ports: list[tuple[int, int]] | None = None
    if topo.ports_base is None:
        hosts = [topo.zone_address(z) for _, _, z in place(topo)][keep:]
        node_ports = [(n.port, 0) for n in old.nodes[:keep]] + ports.allocate(hosts)
    plan = build_plan(
        topo,
        raw,
        engine_binary=old.engine_binary,
        node_ports=node_ports,
        bus=(old.bus_host, old.bus_port),
        router_port=old.router_port,
    )
    kept = [(n.name, n.zone, n.host, n.port) for n in plan.nodes[:keep]]
    assert kept == [(n.name, n.zone, n.host, n.port) for n in old.nodes[:keep]]
    return plan


async def wait_routers(cdir: ClusterDir, plan: Plan, version: int, timeout: float) -> None:
    """Until every router worker serves discovery version `version` (or a later one): each
    fresh connection reaches one worker (SO_REUSEPORT), and the proxy's `stats` names the
    worker's pid beside the version it serves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = {pid for name, pid in live_processes(cdir).items() if name.startswith("router")}
        current: set[int] = set()
        for _ in range(4 * max(len(workers), 1)):
            reply = await memcache.call(
                plan.router_host, plan.router_port, b"stats\r\n", timeout=2.0
            )
            st = memcache.parse_stats(reply or b"")
            with contextlib.suppress(KeyError, ValueError):
                if int(st["discovery_version"]) >= version:
                    current.add(int(st["pid"]))
            if workers and workers <= current:
                return
        await asyncio.sleep(0.05)
    raise ClusterTimeout("routers serve the node list", timeout, f"discovery version {version}")


def wanted_settings(topo: Topology) -> dict[str, str]:
    """What `stats settings` reports on a node started for `topo` (the fields a topology
    sets: node_type as -m, and the allow-listed parameters)."""
    mc = topo.memcached
    assert mc is not None
    return {
        "maxbytes": str(topo.maxmemory // 1024**2 * 1024**2),
        "maxconns": str(mc.max_connections),
        "num_threads": str(mc.threads),
        "item_size_max": str(mc.max_item_size),
        "chunk_size": str(mc.chunk_size),
        "growth_factor": f"{mc.growth_factor:.2f}",
        "cas_enabled": "yes" if mc.cas else "no",
        "evictions": "on" if mc.evictions else "off",
    }


def settings_differ(wanted: dict[str, str], seen: dict[str, str]) -> list[str]:
    """The wanted settings a node reports otherwise (a node that reports none of them,
    an older memcached, is taken as it is)."""
    return [k for k, v in wanted.items() if k in seen and seen[k] != v]


async def node_settings(node: NodeSpec, timeout: float = 1.0) -> dict[str, str] | None:
    """A node's `stats settings` (None when it does not answer)."""
    reply = await memcache.call(node.host, node.port, b"stats settings\r\n", timeout=timeout)
    if reply is None or not reply.endswith(b"END\r\n"):
        return None
    return memcache.parse_stats(reply)


async def wait_stopped(cdir: ClusterDir, names: list[str], timeout: float) -> None:
    """Until the named nodes' processes are gone (their agents stop them)."""
    marker = str(cdir.root)
    deadline = time.monotonic() + timeout
    left = names
    while time.monotonic() < deadline:
        left = []
        for name in names:
            pid = read_pid(cdir.pid_file(f"node.{name}"))
            if pid is not None and alive_and_ours(pid, marker):
                left.append(name)
        if not left:
            return
        await asyncio.sleep(0.05)
    raise ClusterTimeout("nodes stop", timeout, f"still running: {', '.join(left)}")
