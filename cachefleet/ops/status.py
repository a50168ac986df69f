"""`cachefleet status`: what runs, what the bus holds and what the nodes say, as one dict."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from cachefleet import bus, messages
from cachefleet.credentials import Credentials
from cachefleet.errors import CachefleetError, InvalidInput
from cachefleet.events import read_events
from cachefleet.layout import Layout
from cachefleet.nodes import connect, myself, replication
from cachefleet.ops import memcached, standalone
from cachefleet.ops.metrics_file import metrics_address
from cachefleet.plan import Plan
from cachefleet.proc import live_processes
from cachefleet.security import security_status
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import tls_files

# `status` exit codes, like `redis-cli --cluster check`: scripts can wait on them.
EXIT_CODES = {"available": 0, "stopped": 3}
EXIT_NOT_AVAILABLE = 1


def exit_code(state: str) -> int:
    return EXIT_CODES.get(state, EXIT_NOT_AVAILABLE)


async def _probe(host: str, port: int, auth: Credentials | None) -> dict[str, Any] | None:
    client = connect(host, port, timeout=0.5, auth=auth)
    try:
        rep = await replication(client)
        if rep is None:
            return None
        me = await myself(client)
        return {
            "role": str(rep.role),
            "link_up": rep.link_up,
            "id": me.id if me else None,
            "slots": [list(r) for r in me.slots] if me else [],
        }
    finally:
        await client.aclose()


class BusView:
    """Everything retained under ``cachefleet/<cluster>/`` read in one subscription, each
    message validated into its typed value (what does not validate is left out, like the
    offline wills): the layout, sentinel hellos, router states."""

    def __init__(self, retained: dict[str, bytes], plan: Plan) -> None:
        known = messages.Known.from_plan(plan)
        self.layout: Layout | None = None
        self.hellos: dict[str, messages.Hello] = {}
        self.routers: dict[str, messages.RouterState] = {}
        self.refused = 0
        layout_topic = bus.topic(plan.name, "layout")
        for topic, payload in retained.items():
            try:
                if topic == layout_topic:
                    data = bus.decode(payload)
                    if data is not None:
                        self.layout = Layout.from_dict(data, plan)
                elif topic.endswith("/hello"):
                    hello = messages.parse_hello(known, topic, payload)
                    if isinstance(hello, messages.Hello):
                        self.hellos[hello.sentinel] = hello
                elif topic.endswith("/state") and "/routers/" in topic:
                    state = messages.parse_router_state(known, topic, payload)
                    if isinstance(state, messages.RouterState):
                        self.routers[state.router] = state
            except InvalidInput:
                self.refused += 1


async def read_bus(plan: Plan, cdir: ClusterDir) -> BusView:
    live = live_processes(cdir)
    retained: dict[str, bytes] = {}
    if "broker" in live or not plan.topology.bus.embedded:
        with contextlib.suppress(CachefleetError):
            retained = await bus.read_retained(
                plan.bus_host, plan.bus_port, bus.topic(plan.name, "#"), timeout=1.0
            )
    return BusView(retained, plan)


async def status(name: str, *, state_dir: str | None) -> dict[str, Any]:
    cdir = ClusterDir(state_home(state_dir), name)
    plan = cdir.load_plan()
    live = live_processes(cdir)
    view = await read_bus(plan, cdir)
    layout = view.layout or cdir.load_layout()
    if plan.topology.is_memcached:
        return await _memcached_status(plan, cdir, live, view, layout)
    hellos = view.hellos
    auth = cdir.admin() if cdir.admin_secret_path.exists() else None
    probes = await asyncio.gather(*(_probe(n.host, n.port, auth) for n in plan.nodes))
    by_name = dict(zip([n.name for n in plan.nodes], probes, strict=True))
    ids = {n.name: n.id for n in layout.nodes()} if layout else {}

    def node_json(spec_name: str, layout_role: str | None) -> dict[str, Any]:
        spec = plan.node(spec_name)
        probe = by_name[spec_name]
        role = probe["role"] if probe else (layout_role or "unknown")
        healthy = probe is not None and (role == "primary" or probe["link_up"])
        return {
            "id": (probe or {}).get("id") or ids.get(spec_name),
            "name": spec_name,
            "address": spec.address,
            "zone": spec.zone,
            "role": role,
            "healthy": healthy,
        }

    shards: list[dict[str, Any]] = []
    all_nodes: list[dict[str, Any]] = []
    for shard_id in sorted({n.shard for n in plan.nodes}):  # while `apply` runs: old and new
        members = plan.shard_nodes(shard_id)
        lshard = next((s for s in layout.shards if s.id == shard_id), None) if layout else None
        layout_roles = {n.name: n.role for n in lshard.nodes} if lshard else {}
        nodes = [node_json(m.name, layout_roles.get(m.name)) for m in members]
        layout_primary = lshard.primary.name if lshard and lshard.primary else None
        live_slots = {n["name"]: (by_name[n["name"]] or {}).get("slots") for n in nodes}
        # The primary is the live master holding slots (the layout's choice first, should two
        # claim them); if none answers, the layout's primary, reported unhealthy.
        # (a cluster-mode-disabled group's primary holds no slots: any live master claims)
        claimants = sorted(
            (
                n
                for n in nodes
                if n["role"] == "primary" and (live_slots[n["name"]] or plan.topology.standalone)
            ),
            key=lambda n: n["name"] != layout_primary,
        )
        if not claimants and layout_primary:  # a shard `apply` just added: no slots yet
            claimants = [n for n in nodes if n["name"] == layout_primary and n["role"] == "primary"]
        primary: dict[str, Any] | None = None
        slots: list[list[int]] = [list(r) for r in lshard.slots] if lshard else []
        if claimants:
            primary = claimants[0]
            slots = live_slots[primary["name"]] or slots
        else:
            fallback = next((n for n in nodes if n["name"] == layout_primary), None)
            if fallback is not None:
                primary = {**fallback, "role": "primary"}
        replicas = [n for n in nodes if primary is None or n["name"] != primary["name"]]
        shards.append({"id": shard_id, "slots": slots, "primary": primary, "replicas": replicas})
        all_nodes += ([primary] if primary else []) + replicas
    failing_over = sorted({s for h in hellos.values() for s in h.failing_over})
    if not live:
        state = "stopped"
    elif layout is None:
        state = "creating"
    elif failing_over:
        state = "failing-over"
    elif (cdir.root / "modifying.json").exists():  # `apply` is changing it
        state = "modifying"
    elif all(n["healthy"] for n in all_nodes) and all(s["primary"] for s in shards):
        state = "available"
    else:
        state = "degraded"
    return {
        "name": plan.name,
        "engine": plan.topology.engine,
        "state": state,
        "epoch": layout.epoch if layout else 0,
        "zones": _zones(plan, live),
        "shards": shards,
        "router": _router(plan, live, view),
        **(standalone.status_fields(plan) if plan.topology.standalone else {}),
        "sentinels": [
            {
                "id": s.id,
                "zone": s.zone,
                "address": s.host,
                "running": f"sentinel.{s.id}" in live,
                "online": s.id in hellos,
                "epoch": hellos[s.id].failover_epoch if s.id in hellos else 0,
                "sdown": sorted(hellos[s.id].sdown) if s.id in hellos else [],
                "stalled": hellos[s.id].stalled if s.id in hellos else False,
            }
            for s in plan.sentinels
        ],
        "failing_over": failing_over,
        **_processes(plan, cdir, live),
    }


def _zones(plan: Plan, live: dict[str, int]) -> list[dict[str, Any]]:
    return [
        {
            "name": z,
            "address": plan.topology.zone_address(z),
            "agent": "running" if f"agent.{z}" in live else "stopped",
            "nodes": [n.name for n in plan.zone_nodes(z)],
        }
        for z in plan.topology.zones
    ]


def _router(plan: Plan, live: dict[str, int], view: BusView) -> dict[str, Any]:
    return {
        "address": f"{plan.router_host}:{plan.router_port}",
        "running": "router" in live,
        "connections": sum(r.connections for r in view.routers.values()),
        "ops_per_sec": sum(r.ops_per_sec for r in view.routers.values()),
        "workers": [
            {
                "id": r.router,
                "worker": r.worker,
                "pid": r.pid,
                "connections": r.connections,
                "ops_per_sec": r.ops_per_sec,
                "epoch": r.config_epoch,
            }
            for r in sorted(view.routers.values(), key=lambda r: r.worker)
        ],
    }


async def _memcached_status(
    plan: Plan, cdir: ClusterDir, live: dict[str, int], view: BusView, layout: Layout | None
) -> dict[str, Any]:
    """A memcached cluster: `nodes` instead of `shards`, no sentinels; `epoch` and
    `discovery_version` are the Auto Discovery version."""
    nodes = await memcached.node_health(plan)
    if not live:
        state = "stopped"
    elif layout is None:
        state = "creating"
    elif (cdir.root / "modifying.json").exists():  # `apply` is changing it
        state = "modifying"
    elif all(n["healthy"] for n in nodes):
        state = "available"
    else:
        state = "degraded"
    return {
        "name": plan.name,
        "engine": plan.topology.engine,
        "state": state,
        "epoch": layout.epoch if layout else 0,
        "discovery_version": layout.epoch if layout else 0,
        "zones": _zones(plan, live),
        "nodes": nodes,
        "router": _router(plan, live, view),
        "sentinels": [],
        **_processes(plan, cdir, live),
    }


def _processes(plan: Plan, cdir: ClusterDir, live: dict[str, int]) -> dict[str, Any]:
    """What every engine's status ends with: metrics, bus, processes, restarts, state dir."""
    return {
        "metrics": metrics_status(cdir, live),
        "bus": {
            "url": f"mqtt://{plan.bus_host}:{plan.bus_port}",
            "embedded": plan.topology.bus.embedded,
            "running": "broker" in live if plan.topology.bus.embedded else None,
        },
        "processes": {k: v for k, v in sorted(live.items())},
        "security": security_status(plan.topology.security, tls_files(cdir.root).ca),
        "restarts": restarts(read_events(cdir.events_path)),
        "state_dir": str(cdir.root),
    }


def metrics_status(cdir: ClusterDir, live: dict[str, int]) -> dict[str, Any]:
    """The supervisor's Prometheus endpoint: its address once chosen, and whether it serves."""
    return {"address": metrics_address(cdir), "running": "supervisor" in live}


def restarts(events: list[dict[str, Any]]) -> dict[str, int]:
    """Restarts per process (`process_restarted` events) since the cluster was last started."""
    counts: dict[str, int] = {}
    for event in events:
        if event.get("type") == "cluster_created":
            counts = {}
        elif event.get("type") == "process_restarted":
            name = str(event.get("process"))
            counts[name] = counts.get(name, 0) + 1
    return counts


def format_status(st: dict[str, Any]) -> str:
    lines = [f"cluster {st['name']} ({st['engine']}): {st['state']}, epoch {st['epoch']}"]
    r = st["router"]
    lines.append(
        f"  router (configuration endpoint and proxy): {r['address']}, "
        f"{len(r['workers'])} worker(s), {r['connections']} connections, "
        f"{r['ops_per_sec']:.0f} ops/s"
    )
    sec = st.get("security") or {}
    if sec.get("tls") or sec.get("auth") or sec.get("allowed_sources"):
        enforced = [f"TLS (CA {sec['ca']})" if sec.get("tls") else "no TLS"]
        enforced += ["AUTH required"] if sec.get("auth") else []
        enforced += [f"users {', '.join(sec['users'])}"] if sec.get("users") else []
        if sec.get("allowed_sources"):
            enforced.append(f"sources {', '.join(sec['allowed_sources'])}")
        lines.append(f"  security: {'; '.join(enforced)}")
        host, port = r["address"].rsplit(":", 1)
        opts = (f" --tls --cacert {sec['ca']}" if sec.get("tls") else "") + (
            " --askpass" if sec.get("auth") else ""
        )
        if st["engine"] == "memcached":  # the configuration endpoint speaks TLS
            opts = f"-CAfile {sec['ca']} -verify_ip {host}"
            lines.append(f"  connect: openssl s_client -quiet {opts} -connect {host}:{port}")
        else:
            cluster = "" if st.get("endpoints") else " -c"  # a group: no cluster redirects
            lines.append(f"  connect: redis-cli{cluster}{opts} -h {host} -p {port}")
    if st.get("endpoints"):
        ends = st["endpoints"]
        lines[1] = f"  primary endpoint: {ends['primary']}, reader endpoint: {ends['reader']}"
    m = st.get("metrics") or {}
    if m.get("address"):
        serving = "" if m.get("running") else " (not serving: the supervisor is stopped)"
        lines.append(f"  metrics: http://{m['address']}/metrics{serving}")
    for z in st["zones"]:
        lines.append(f"  zone {z['name']} {z['address']}: agent {z['agent']}")
    if st.get("restarts"):
        restarted = ", ".join(f"{k} x{n}" for k, n in sorted(st["restarts"].items()))
        lines.append(f"  restarted by the supervisor: {restarted}")
    if "nodes" in st:
        lines[0] = (
            f"cluster {st['name']} ({st['engine']}): {st['state']}, discovery version {st['epoch']}"
        )
        lines += memcached.format_nodes(st)
    for s in st.get("shards", []):
        ranges = ",".join(f"{a}-{b}" for a, b in s["slots"]) or "-"
        lines.append(f"  shard {s['id']} slots {ranges}")
        for n in ([s["primary"]] if s["primary"] else []) + s["replicas"]:
            health = "healthy" if n["healthy"] else "UNHEALTHY"
            lines.append(f"    {n['role']:<8} {n['name']} {n['address']} ({n['zone']}) {health}")
    return "\n".join(lines)
