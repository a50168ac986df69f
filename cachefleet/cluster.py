"""Cluster operations behind the CLI: up, status, down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cachefleet import bus, ports
from cachefleet.engine import resolve_engine_binary
from cachefleet.errors import CachefleetError, ClusterTimeout, StateError, TopologyError
from cachefleet.events import append_event, make_event
from cachefleet.layout import Layout
from cachefleet.plan import Plan, build_plan, place
from cachefleet.proc import live_processes, python_module_cmd, spawn, stop_processes
from cachefleet.state import ClusterDir, state_home
from cachefleet.topology import Topology, load_topology
from sentinel.process import sentinel_ids, sentinel_zone
from shard.admin import connect, info, myself, try_call

Out = Callable[[str], None]
STOP_ORDER = (("router",), ("sentinel",), ("agent",), ("node",), ("broker",))


def layout_file(cdir: ClusterDir) -> Path:
    return cdir.root / "layout.json"


def save_layout(cdir: ClusterDir, layout: Layout) -> None:
    tmp = layout_file(cdir).with_suffix(".tmp")
    tmp.write_text(json.dumps(layout.to_dict(), indent=1))
    tmp.replace(layout_file(cdir))


def load_layout_file(cdir: ClusterDir) -> Layout | None:
    try:
        return Layout.from_dict(json.loads(layout_file(cdir).read_text()))
    except (OSError, ValueError, KeyError):
        return None


async def publish_layout(plan: Plan, cdir: ClusterDir, layout: Layout) -> None:
    payload = bus.encode(layout.to_dict())
    await bus.publish_once(
        plan.bus_host, plan.bus_port, bus.topic(plan.name, "layout"), payload, retain=True
    )
    save_layout(cdir, layout)


def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.02)
    return False


def _make_plan(topo: Topology, raw: dict[str, Any], binary: str) -> Plan:
    node_ports: list[tuple[int, int]] | None = None
    if topo.ports_base is None:
        hosts = [topo.zone_address(z) for _, _, z in place(topo)]
        node_ports = ports.allocate(hosts, pairs=True)
    embedded = topo.bus.embedded
    bus_addr = ("127.0.0.1", ports.allocate_one()) if embedded else topo.bus.host_port
    router_port = topo.router.port if topo.router.port is not None else ports.allocate_one()
    return build_plan(
        topo,
        raw,
        engine_binary=binary,
        node_ports=node_ports,
        bus=bus_addr,
        router_port=router_port,
    )


def _check_ports_free(plan: Plan) -> None:
    wanted = [(n.host, n.port, f"node {n.name}") for n in plan.nodes]
    wanted += [(n.host, n.bus_port, f"cluster bus of {n.name}") for n in plan.nodes]
    wanted.append((plan.router_host, plan.router_port, "router"))
    if plan.topology.bus.embedded:
        wanted.append((plan.bus_host, plan.bus_port, "embedded bus"))
    for host, port, what in wanted:
        if not ports.port_free(host, port):
            raise CachefleetError(f"port {host}:{port} for the {what} is already in use")


async def up(topology_path: str, *, state_dir: str | None, detach: bool, out: Out) -> int:
    t0 = time.monotonic()

    def step(msg: str) -> None:
        out(f"[{time.monotonic() - t0:5.1f}s] {msg}")

    topo = load_topology(topology_path)
    raw = yaml.safe_load(Path(topology_path).read_text())
    if topo.engine == "memcached":
        raise TopologyError(topo.source, "engine", "memcached is not supported yet (valkey, redis)")
    binary = resolve_engine_binary(topo.engine, topo.engine_binary)
    cdir = ClusterDir(state_home(state_dir), topo.name)

    if cdir.exists():
        plan = cdir.load_plan()
        if plan.raw_topology != raw:
            raise StateError(
                f"cluster {topo.name!r} already exists under {cdir.home} with a different "
                f"topology; run `cachefleet down {topo.name} --purge` first"
            )
        live = live_processes(cdir)
        if live:
            restarted = repair(plan, cdir)
            if restarted:
                out(f"cluster {topo.name} is running; restarted {', '.join(restarted)}")
            else:
                out(
                    f"cluster {topo.name} is already running ({len(live)} processes); "
                    "nothing changed"
                )
            _print_endpoints(plan, load_layout_file(cdir), out)
            return 0
        step(f"restarting cluster {topo.name} from {cdir.root}")
        _check_ports_free(plan)
    else:
        plan = _make_plan(topo, raw, binary)
        cdir.make()
        cdir.plan_path.write_text(plan.to_json())
        step(f"cluster {topo.name}: {len(plan.nodes)} nodes in {len(topo.zones)} zones, {binary}")

    try:
        await _start_processes(plan, cdir, step)
        from shard.create import Creator

        creator = Creator(plan=plan, progress=step)
        try:
            previous = load_layout_file(cdir)
            layout = await creator.create()
            epoch = previous.epoch + 1 if previous else 1
            layout = Layout(cluster=layout.cluster, epoch=epoch, shards=layout.shards)
        finally:
            await creator.close()
        await _wait_bus(plan, cdir)
        await publish_layout(plan, cdir, layout)
        append_event(
            cdir.events_path,
            make_event("cluster_created", plan.name, epoch=layout.epoch, nodes=len(plan.nodes)),
        )
        step("waiting for the router to serve the layout")
        await _wait_router(plan, layout.epoch, 15.0)
    except BaseException:
        out("startup failed; stopping what was started")
        stop_processes(cdir, STOP_ORDER)
        raise
    step(f"cluster {topo.name} is available (epoch {layout.epoch})")
    _print_endpoints(plan, layout, out)
    if detach:
        return 0
    return await _foreground(plan, cdir, out)


def control_processes(plan: Plan, cdir: ClusterDir) -> dict[str, list[str]]:
    """Every long-running cachefleet process of the cluster, by pid-file name, with its argv.
    (Engine nodes are not here: their zone agent starts them.)"""
    home = str(cdir.home)
    common = ["--cluster", plan.name, "--state-dir", home]
    procs: dict[str, list[str]] = {}
    if plan.topology.bus.embedded:
        procs["broker"] = python_module_cmd(
            "cachefleet.broker", "--host", plan.bus_host, "--port", str(plan.bus_port), *common
        )
    for zone in plan.topology.zones:
        if plan.zone_nodes(zone):
            procs[f"agent.{zone}"] = python_module_cmd("shard", "--zone", zone, *common)
    procs["router"] = python_module_cmd("router", *common)
    for sid in sentinel_ids(plan):
        procs[f"sentinel.{sid}"] = python_module_cmd("sentinel", "--id", sid, *common)
    return procs


async def _start_processes(plan: Plan, cdir: ClusterDir, step: Out) -> None:
    procs = control_processes(plan, cdir)
    zones = [k.split(".", 1)[1] for k in procs if k.startswith("agent.")]
    step(
        f"starting the bus, zone agents ({', '.join(zones)}), the router and "
        f"{plan.topology.sentinels.count} sentinels"
    )
    for name, argv in procs.items():
        spawn(cdir, name, argv)


def repair(plan: Plan, cdir: ClusterDir) -> list[str]:
    """Start every control process of a running cluster that is not running (after a crash or
    a chaos fault); returns their names. Agents restart their zone's nodes themselves."""
    live = live_processes(cdir)
    missing = [name for name in control_processes(plan, cdir) if name not in live]
    for name in missing:
        spawn(cdir, name, control_processes(plan, cdir)[name])
    return missing


async def _wait_bus(plan: Plan, cdir: ClusterDir) -> None:
    if plan.topology.bus.embedded and not await asyncio.to_thread(
        _wait_port, plan.bus_host, plan.bus_port, 15.0
    ):
        raise ClusterTimeout("bus start", 15.0, f"see {cdir.log_file('broker')}")


async def _wait_router(plan: Plan, epoch: int, timeout: float) -> None:
    client = connect(plan.router_host, plan.router_port, timeout=1.0)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = await try_call(client, "CLUSTER", "INFO")
            if isinstance(text, str) and f"cluster_current_epoch:{epoch}\r\n" in text:
                return
            await asyncio.sleep(0.05)
        raise ClusterTimeout("router layout", timeout, "router did not pick up the layout")
    finally:
        await client.aclose()


def _print_endpoints(plan: Plan, layout: Layout | None, out: Out) -> None:
    out(f"  configuration endpoint (router): {plan.router_host}:{plan.router_port}")
    out(f"  bus: mqtt://{plan.bus_host}:{plan.bus_port}")
    if layout is not None:
        for shard in layout.shards:
            ranges = ",".join(f"{a}-{b}" for a, b in shard.slots)
            p = shard.primary
            primary = f"{p.name} {p.address} ({p.zone})" if p else "none"
            reps = ", ".join(f"{r.name} {r.address} ({r.zone})" for r in shard.replicas) or "none"
            out(f"  shard {shard.id} slots {ranges}: primary {primary}; replicas {reps}")
    out(f"  try: redis-cli -c -h {plan.router_host} -p {plan.router_port} set foo bar")


async def _foreground(plan: Plan, cdir: ClusterDir, out: Out) -> int:
    out("running in the foreground; Ctrl-C stops the cluster")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            live = live_processes(cdir)
            if not any(k.startswith(("agent", "broker", "router")) for k in live):
                out(f"cluster {plan.name} was stopped elsewhere")
                return 0
    out(f"stopping cluster {plan.name}")
    down(plan.name, state_dir=str(cdir.home), purge=False, out=out)
    return 0


def down(name: str, *, state_dir: str | None, purge: bool, out: Out) -> int:
    cdir = ClusterDir(state_home(state_dir), name)
    if not cdir.root.exists():
        raise StateError(f"no cluster named {name!r} under {cdir.home}")
    live = live_processes(cdir)
    stop_processes(cdir, STOP_ORDER)
    left = live_processes(cdir)
    if left:
        raise CachefleetError(f"could not stop {', '.join(sorted(left))}")
    if cdir.exists():
        append_event(cdir.events_path, make_event("cluster_stopped", name, processes=len(live)))
    if purge:
        cdir.purge()
        out(f"cluster {name}: stopped {len(live)} processes and removed {cdir.root}")
    else:
        out(f"cluster {name}: stopped {len(live)} processes (data kept in {cdir.root})")
    return 0


# -- status ---------------------------------------------------------------------------------


async def _probe(host: str, port: int) -> dict[str, Any] | None:
    client = connect(host, port, timeout=0.5)
    try:
        rep = await info(client, "replication")
        if rep is None:
            return None
        me = await myself(client)
        return {
            "role": "primary" if rep.get("role") == "master" else "replica",
            "link": rep.get("master_link_status"),
            "id": me.id if me else None,
            "slots": [list(r) for r in me.slots] if me else [],
        }
    finally:
        await client.aclose()


class BusView:
    """Everything retained under ``cachefleet/<cluster>/`` read in one subscription: the
    layout, sentinel hellos, router states (offline wills dropped)."""

    def __init__(self, retained: dict[str, bytes], cluster: str) -> None:
        prefix = bus.topic(cluster, "")
        self.layout: Layout | None = None
        self.hellos: dict[str, dict[str, Any]] = {}
        self.routers: dict[str, dict[str, Any]] = {}
        for name, payload in retained.items():
            data = bus.decode(payload)
            if data is None or not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            if parts == ["layout"]:
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    self.layout = Layout.from_dict(data)
            elif len(parts) == 3 and parts[0] == "sentinels" and parts[2] == "hello":
                self.hellos[parts[1]] = data
            elif len(parts) == 3 and parts[0] == "routers" and parts[2] == "state":
                self.routers[parts[1]] = data


async def read_bus(plan: Plan, cdir: ClusterDir) -> BusView:
    live = live_processes(cdir)
    retained: dict[str, bytes] = {}
    if "broker" in live or not plan.topology.bus.embedded:
        with contextlib.suppress(CachefleetError):
            retained = await bus.read_retained(
                plan.bus_host, plan.bus_port, bus.topic(plan.name, "#"), timeout=1.0
            )
    return BusView(retained, plan.name)


async def status(name: str, *, state_dir: str | None) -> dict[str, Any]:
    cdir = ClusterDir(state_home(state_dir), name)
    plan = cdir.load_plan()
    live = live_processes(cdir)
    view = await read_bus(plan, cdir)
    layout = view.layout or load_layout_file(cdir)
    hellos = view.hellos
    probes = await asyncio.gather(*(_probe(n.host, n.port) for n in plan.nodes))
    by_name = dict(zip([n.name for n in plan.nodes], probes, strict=True))
    ids = {n.name: n.id for n in layout.nodes()} if layout else {}

    def node_json(spec_name: str, layout_role: str | None) -> dict[str, Any]:
        spec = plan.node(spec_name)
        probe = by_name[spec_name]
        role = probe["role"] if probe else (layout_role or "unknown")
        healthy = probe is not None and (role == "primary" or probe["link"] == "up")
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
    for shard_id in range(1, plan.topology.shards + 1):
        members = plan.shard_nodes(shard_id)
        lshard = layout.shard(shard_id) if layout else None
        layout_roles = {n.name: n.role for n in lshard.nodes} if lshard else {}
        nodes = [node_json(m.name, layout_roles.get(m.name)) for m in members]
        layout_primary = lshard.primary.name if lshard and lshard.primary else None
        live_slots = {n["name"]: (by_name[n["name"]] or {}).get("slots") for n in nodes}
        # The primary is the live master holding slots (the layout's choice first, should two
        # claim them); if none answers, the layout's primary, reported unhealthy.
        claimants = sorted(
            (n for n in nodes if n["role"] == "primary" and live_slots[n["name"]]),
            key=lambda n: n["name"] != layout_primary,
        )
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
    failing_over = sorted({int(s) for h in hellos.values() for s in h.get("failing_over", [])})
    if not live:
        state = "stopped"
    elif layout is None:
        state = "creating"
    elif failing_over:
        state = "failing-over"
    elif all(n["healthy"] for n in all_nodes) and all(s["primary"] for s in shards):
        state = "available"
    else:
        state = "degraded"
    return {
        "name": plan.name,
        "engine": plan.topology.engine,
        "state": state,
        "epoch": layout.epoch if layout else 0,
        "zones": [
            {
                "name": z,
                "address": plan.topology.zone_address(z),
                "agent": "running" if f"agent.{z}" in live else "stopped",
                "nodes": [n.name for n in plan.zone_nodes(z)],
            }
            for z in plan.topology.zones
        ],
        "shards": shards,
        "router": {
            "address": f"{plan.router_host}:{plan.router_port}",
            "running": "router" in live,
            "connections": sum(int(r.get("connections", 0)) for r in view.routers.values()),
            "ops_per_sec": sum(float(r.get("ops_per_sec", 0)) for r in view.routers.values()),
            "workers": [view.routers[k] for k in sorted(view.routers)],
        },
        "sentinels": [
            {
                "id": sid,
                "zone": sentinel_zone(plan, sid),
                "address": plan.topology.zone_address(sentinel_zone(plan, sid)),
                "running": f"sentinel.{sid}" in live,
                "online": sid in hellos,
                "epoch": int(hellos.get(sid, {}).get("epoch", 0)),
                "sdown": hellos.get(sid, {}).get("sdown", []),
                "stalled": bool(hellos.get(sid, {}).get("stalled", False)),
            }
            for sid in sentinel_ids(plan)
        ],
        "failing_over": failing_over,
        "bus": {
            "url": f"mqtt://{plan.bus_host}:{plan.bus_port}",
            "embedded": plan.topology.bus.embedded,
            "running": "broker" in live if plan.topology.bus.embedded else None,
        },
        "processes": {k: v for k, v in sorted(live.items())},
        "state_dir": str(cdir.root),
    }


def format_status(st: dict[str, Any]) -> str:
    lines = [f"cluster {st['name']} ({st['engine']}): {st['state']}, epoch {st['epoch']}"]
    r = st["router"]
    lines.append(
        f"  router (configuration endpoint and proxy): {r['address']}, "
        f"{len(r['workers'])} worker(s), {r['connections']} connections, "
        f"{r['ops_per_sec']:.0f} ops/s"
    )
    for z in st["zones"]:
        lines.append(f"  zone {z['name']} {z['address']}: agent {z['agent']}")
    for s in st["shards"]:
        ranges = ",".join(f"{a}-{b}" for a, b in s["slots"]) or "-"
        lines.append(f"  shard {s['id']} slots {ranges}")
        for n in ([s["primary"]] if s["primary"] else []) + s["replicas"]:
            health = "healthy" if n["healthy"] else "UNHEALTHY"
            lines.append(f"    {n['role']:<8} {n['name']} {n['address']} ({n['zone']}) {health}")
    return "\n".join(lines)
