"""Cluster operations behind the CLI: up, status, down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cachefleet import bus, discovery, event_archive, ports
from cachefleet.announce import emit_event, publish_layout
from cachefleet.buscreds import read_bus_login, remember_bus, save_bus_login
from cachefleet.engine import resolve_engine_binary
from cachefleet.errors import BusError, CachefleetError, ClusterTimeout, StateError, TopologyError
from cachefleet.layout import Layout
from cachefleet.nodes import connect, try_call
from cachefleet.ops import firewall, memcached, standalone
from cachefleet.ops.create import Creator
from cachefleet.plan import Plan, build_plan, place
from cachefleet.proc import (
    ProcessLock,
    ensure_supervisor,
    live_processes,
    python_module_cmd,
    spawn,
    stop_processes,
)
from cachefleet.security import read_secrets, save_secrets, security_summary
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import (
    ca_for,
    engine_has_tls,
    ensure_certificates,
    no_tls_fix,
    remember_tls,
    tls_addresses,
)
from cachefleet.topology import Topology, load_topology

Out = Callable[[str], None]
# The supervisor first: it would restart what the later steps stop.
STOP_ORDER = (("supervisor",), ("router",), ("sentinel",), ("agent",), ("node",), ("broker",))


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
        node_ports = ports.allocate(hosts, pairs=not topo.is_memcached)
    embedded = topo.bus.embedded
    bus_addr = ("127.0.0.1", ports.allocate_one()) if embedded else topo.bus.host_port
    router_port = topo.router.port if topo.router.port is not None else ports.allocate_one()
    reader_port: int | None = None
    if topo.endpoints is not None:  # cluster mode disabled: the router serves both endpoints
        ends = topo.endpoints
        router_port = ends.primary_port if ends.primary_port is not None else router_port
        reader_port = ends.reader_port if ends.reader_port is not None else ports.allocate_one()
    return build_plan(
        topo,
        raw,
        engine_binary=binary,
        node_ports=node_ports,
        bus=bus_addr,
        router_port=router_port,
        reader_port=reader_port,
    )


def _check_ports_free(plan: Plan) -> None:
    wanted = [(n.host, n.port, f"node {n.name}") for n in plan.nodes]
    wanted += [(n.host, n.bus_port, f"cluster bus of {n.name}") for n in plan.nodes if n.bus_port]
    wanted.append((plan.router_host, plan.router_port, "router"))
    if plan.reader_port is not None:
        wanted.append((plan.router_host, plan.reader_port, "reader endpoint"))
    if plan.topology.bus.embedded:
        wanted.append((plan.bus_host, plan.bus_port, "embedded bus"))
    for host, port, what in wanted:
        if not ports.port_free(host, port):
            raise CachefleetError(f"port {host}:{port} for the {what} is already in use")


#: Called for a new cluster once its plan and directories exist and before any node starts
#: (restore's fast path puts each primary's RDB file in place).
Seed = Callable[[Plan, ClusterDir], None]


async def up(
    topology_path: str,
    *,
    state_dir: str | None,
    detach: bool,
    out: Out,
    seed: Seed | None = None,
) -> int:
    t0 = time.monotonic()

    def step(msg: str) -> None:
        out(f"[{time.monotonic() - t0:5.1f}s] {msg}")

    topo = load_topology(topology_path)
    raw = yaml.safe_load(Path(topology_path).read_text())
    binary = resolve_engine_binary(topo.engine, topo.engine_binary)
    if topo.security.tls and not engine_has_tls(binary, topo.engine):
        raise TopologyError(topo.source, "security.tls", no_tls_fix(topo.engine, binary))
    cdir = ClusterDir(state_home(state_dir), topo.name)

    if cdir.exists():
        plan = cdir.load_plan()
        if memcached.only_nodes_changed(plan, raw):
            scaled = await _scale_memcached(plan, topo, raw, cdir, step)
            if scaled is None:  # scaled online
                _print_endpoints(cdir.load_plan(), cdir.load_layout(), out)
                return 0
            plan = scaled
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
            _print_endpoints(plan, cdir.load_layout(), out)
            return 0
        step(f"restarting cluster {topo.name} from {cdir.root}")
        _check_ports_free(plan)
    else:
        plan = _make_plan(topo, raw, binary)
        # Fixed ports (ports.base, router.port) may be held by another cluster: refuse before
        # anything starts, or this cluster's sentinels would probe (and fail over) its nodes.
        _check_ports_free(plan)
        secrets = read_secrets(topo.security, topo.source)  # bad secret files fail here
        login = None if topo.bus.embedded else read_bus_login(topo.bus.external, topo.source)
        if login is not None:  # an external broker takes its login and TLS before anything
            await bus.check(
                plan.bus_host, plan.bus_port, login=login.credentials, tls_context=login.context()
            )
        cdir.make()
        save_secrets(cdir.root, secrets)
        if login is not None:
            save_bus_login(cdir.root, login)
        remember_bus(plan.bus_host, plan.bus_port, cdir.root, external=login is not None)
        if topo.security.tls:
            zone_ips = [topo.zone_address(z) for z in topo.zones]
            files = ensure_certificates(cdir.root, topo.name, zone_ips)
            remember_tls(files.ca, tls_addresses(plan))
        cdir.plan_path.write_text(plan.to_json())
        step(f"cluster {topo.name}: {len(plan.nodes)} nodes in {len(topo.zones)} zones, {binary}")
        if seed is not None:
            seed(plan, cdir)

    if topo.is_memcached:
        return await _up_memcached(plan, cdir, detach=detach, step=step, out=out)
    if topo.standalone:
        return await _up_standalone(plan, cdir, detach=detach, step=step, out=out)
    try:
        if topo.security.allowed_sources:
            step(f"allowed_sources: {await asyncio.to_thread(firewall.install, plan)}")
        await _start_processes(plan, cdir, step)
        creator = Creator(plan=plan, auth=cdir.admin(), progress=step)
        try:
            previous = cdir.load_layout()
            layout = await creator.create()
            epoch = previous.epoch + 1 if previous else 1
            layout = Layout(cluster=layout.cluster, epoch=epoch, shards=layout.shards)
        finally:
            await creator.close()
        await _wait_bus(plan, cdir)
        outbox = bus.Outbox(plan.bus_host, plan.bus_port)
        publish_layout(outbox, cdir, layout)
        emit_event(outbox, cdir, "cluster_created", epoch=layout.epoch, nodes=len(plan.nodes))
        await outbox.flush()
        step("waiting for the router to serve the layout")
        await _wait_router(plan, layout.epoch, 15.0, cdir)
    except BaseException:
        out("startup failed; stopping what was started")
        cdir.stopping_path.touch()
        stop_processes(cdir, STOP_ORDER)
        raise
    step(f"cluster {topo.name} is available (epoch {layout.epoch})")
    _print_endpoints(plan, layout, out)
    if detach:
        return 0
    return await _foreground(plan, cdir, out)


async def _up_memcached(plan: Plan, cdir: ClusterDir, *, detach: bool, step: Out, out: Out) -> int:
    """The memcached half of `up`: nodes answering, then discovery version 1 (or the next
    one after a restart: the nodes came back empty) published, and the router serving it."""
    try:
        if plan.topology.security.allowed_sources:
            step(f"allowed_sources: {await asyncio.to_thread(firewall.install, plan)}")
        await _start_processes(plan, cdir, step)
        step(f"waiting for {len(plan.nodes)} memcached nodes")
        await memcached.wait_nodes(plan, 30.0)
        await _wait_bus(plan, cdir)
        previous = cdir.load_layout()
        layout = discovery.memcached_layout(plan, previous.epoch + 1 if previous else 1)
        outbox = bus.Outbox(plan.bus_host, plan.bus_port)
        publish_layout(outbox, cdir, layout)
        emit_event(outbox, cdir, "cluster_created", epoch=layout.epoch, nodes=len(plan.nodes))
        emit_event(outbox, cdir, "discovery_version", version=layout.epoch, reason="cluster_up")
        await outbox.flush()
        step("waiting for the configuration endpoint to serve the node list")
        await memcached.wait_router(plan, layout.epoch, 15.0)
    except BaseException:
        out("startup failed; stopping what was started")
        cdir.stopping_path.touch()
        stop_processes(cdir, STOP_ORDER)
        raise
    step(f"cluster {plan.name} is available (discovery version {layout.epoch})")
    _print_endpoints(plan, layout, out)
    if detach:
        return 0
    return await _foreground(plan, cdir, out)


async def _up_standalone(plan: Plan, cdir: ClusterDir, *, detach: bool, step: Out, out: Out) -> int:
    """The cluster-mode-disabled half of `up`: one primary and its replicas in sync (their
    configs name the primary), the layout published, the endpoints reaching the nodes."""
    try:
        if plan.topology.security.allowed_sources:
            step(f"allowed_sources: {await asyncio.to_thread(firewall.install, plan)}")
        await _start_processes(plan, cdir, step)
        layout = await standalone.create(plan, cdir.admin(), cdir.load_layout(), step)
        await _wait_bus(plan, cdir)
        outbox = bus.Outbox(plan.bus_host, plan.bus_port)
        publish_layout(outbox, cdir, layout)
        emit_event(outbox, cdir, "cluster_created", epoch=layout.epoch, nodes=len(plan.nodes))
        await outbox.flush()
        step("waiting for the primary endpoint to reach the primary")
        await standalone.wait_endpoints(plan, cdir.admin(), 15.0)
    except BaseException:
        out("startup failed; stopping what was started")
        cdir.stopping_path.touch()
        stop_processes(cdir, STOP_ORDER)
        raise
    step(f"group {plan.name} is available (epoch {layout.epoch})")
    _print_endpoints(plan, layout, out)
    if detach:
        return 0
    return await _foreground(plan, cdir, out)


async def _scale_memcached(
    old: Plan, topo: Topology, raw: dict[str, Any], cdir: ClusterDir, step: Out
) -> Plan | None:
    """A memcached cluster with another `nodes:`. Stopped: the new plan, returned for `up`
    to start. Running: the zone agents start the added nodes and stop the removed ones (they
    follow plan.json), then `node_added` / `node_removed` and the next discovery version
    are published; returns None."""
    plan = memcached.scaled_plan(old, topo, raw)
    old_names = {n.name for n in old.nodes}
    added = [n for n in plan.nodes if n.name not in old_names]
    removed = [n for n in old.nodes if n.name not in {m.name for m in plan.nodes}]
    for n in added:
        if not ports.port_free(n.host, n.port):
            raise CachefleetError(f"port {n.host}:{n.port} for node {n.name} is already in use")
    live = live_processes(cdir)
    tmp = cdir.plan_path.with_name(f".plan.{os.getpid()}.tmp")
    tmp.write_text(plan.to_json())
    tmp.replace(cdir.plan_path)
    step(f"cluster {plan.name}: {len(old.nodes)} -> {len(plan.nodes)} memcached nodes")
    if not any(k.startswith(("agent", "router")) for k in live):
        return plan
    follow_zones(plan, cdir, live)
    step(f"waiting for {len(added)} new and {len(removed)} removed node(s)")
    await memcached.wait_nodes(plan, 30.0)
    await memcached.wait_stopped(cdir, [n.name for n in removed], 15.0)
    for n in removed:
        shutil.rmtree(cdir.node_dir(n.name), ignore_errors=True)
    outbox = bus.Outbox(plan.bus_host, plan.bus_port)
    for n in added:
        emit_event(outbox, cdir, "node_added", node=n.name, zone=n.zone, address=n.address)
    for n in removed:
        emit_event(outbox, cdir, "node_removed", node=n.name, zone=n.zone, address=n.address)
    reason = "nodes_added" if added else "nodes_removed"
    version = discovery.bump_version(outbox, cdir, reason, nodes=len(plan.nodes))
    await outbox.flush()
    if version is not None:
        step("waiting for the configuration endpoint to serve the new node list")
        await memcached.wait_router(plan, version, 15.0)
    step(f"cluster {plan.name} is available (discovery version {version})")
    return None


def follow_zones(plan: Plan, cdir: ClusterDir, live: dict[str, int]) -> bool:
    """After plan.json changed the set of zones with nodes: the supervisor starts again (it
    reads the plan when it starts, and starts an agent for a zone that had no node before;
    the agents start it again at once), and an agent whose zone has no node left stops.
    Returns whether anything was restarted or stopped."""
    agents = {k for k in live if k.startswith("agent.")}
    if agents == {f"agent.{z}" for z in {n.zone for n in plan.nodes}}:
        return False
    if "supervisor" in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(live["supervisor"], signal.SIGTERM)
    else:
        ensure_supervisor(cdir)
    wanted = control_processes(plan, cdir)
    for name, pid in live.items():  # a zone left without nodes needs no agent
        if name.startswith("agent.") and name not in wanted:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return True


def router_workers(plan: Plan) -> int:
    return plan.topology.router.workers or (os.cpu_count() or 1)


def control_processes(plan: Plan, cdir: ClusterDir) -> dict[str, list[str]]:
    """Every long-running cachefleet process the supervisor keeps running, by pid-file name,
    with its argv. (Engine nodes are not here: their zone agent starts them; nor is the
    supervisor: the agents start it.)"""
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
    workers = router_workers(plan)
    for k in range(workers):
        name = "router" if k == 0 else f"router.{k}"
        procs[name] = python_module_cmd(
            "router", "--worker", str(k), "--workers", str(workers), *common
        )
    for s in plan.sentinels:
        procs[f"sentinel.{s.id}"] = python_module_cmd("sentinel", "--id", s.id, *common)
    return procs


async def _start_processes(plan: Plan, cdir: ClusterDir, step: Out) -> None:
    cdir.stopping_path.unlink(missing_ok=True)
    cdir.ensure_admin()
    procs = control_processes(plan, cdir)
    zones = [k.split(".", 1)[1] for k in procs if k.startswith("agent.")]
    step(
        f"starting the bus, zone agents ({', '.join(zones)}), the router and "
        f"{plan.topology.sentinels.count} sentinels"
    )
    for name, argv in procs.items():
        # Agents started with the cluster start all their nodes at once; the supervisor
        # restarts a lone agent without the flag, which then never restarts a dead primary.
        spawn(cdir, name, [*argv, "--cluster-start"] if name.startswith("agent.") else argv)
    ensure_supervisor(cdir)


def repair(plan: Plan, cdir: ClusterDir) -> list[str]:
    """Start every control process of a running cluster that is not running; returns their
    names. While a supervisor runs it does that itself (two starters would race and start a
    process twice), so this only brings back a cluster whose supervisor is gone too. Agents
    restart their nodes."""
    cdir.stopping_path.unlink(missing_ok=True)
    if ProcessLock(cdir.supervisor_lock).held_elsewhere():
        return []
    live = live_processes(cdir)
    procs = control_processes(plan, cdir)
    missing = [name for name in procs if name not in live]
    for name in missing:
        spawn(cdir, name, procs[name])
    if ensure_supervisor(cdir) is not None:
        missing.append("supervisor")
    return missing


SUPERVISOR_EXIT_S = 3.0


async def _supervisor_gone(cdir: ClusterDir, timeout: float) -> None:
    """Wait (bounded) until no supervisor holds the cluster's lock, including one that was
    still starting when `down` began; one left after that is stopped like any process."""
    lock = ProcessLock(cdir.supervisor_lock)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and lock.held_elsewhere():
        await asyncio.sleep(0.05)


async def republish_layout(plan: Plan, cdir: ClusterDir, timeout: float = 15.0) -> bool:
    """After a restart of the embedded broker (which keeps nothing): publish the last layout
    again so that routers and sentinels that reconnect find it retained. True when sent."""
    layout = cdir.load_layout()
    if layout is None:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outbox = bus.Outbox(plan.bus_host, plan.bus_port)
        publish_layout(outbox, cdir, layout)
        try:
            await outbox.flush()
            return True
        except BusError:
            await asyncio.sleep(0.2)
    return False


async def _wait_bus(plan: Plan, cdir: ClusterDir) -> None:
    if not plan.topology.bus.embedded:  # an external broker: it takes the saved login
        await bus.check(plan.bus_host, plan.bus_port)
        return
    if not await asyncio.to_thread(_wait_port, plan.bus_host, plan.bus_port, 15.0):
        raise ClusterTimeout("bus start", 15.0, f"see {cdir.log_file('broker')}")


async def _wait_router(
    plan: Plan, epoch: int, timeout: float, cdir: ClusterDir | None = None
) -> None:
    # with AUTH on, the router takes the control plane's user too
    auth = cdir.admin() if cdir is not None and plan.topology.security.requires_auth else None
    client = connect(plan.router_host, plan.router_port, timeout=1.0, auth=auth)
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
    if plan.topology.is_memcached:
        memcached.print_endpoints(plan, layout, out)
        return
    if plan.topology.standalone:
        standalone.print_endpoints(plan, layout, out)
        return
    out(f"  configuration endpoint (router): {plan.router_host}:{plan.router_port}")
    out(f"  bus: mqtt://{plan.bus_host}:{plan.bus_port}")
    if layout is not None:
        for shard in layout.shards:
            ranges = ",".join(f"{a}-{b}" for a, b in shard.slots)
            p = shard.primary
            primary = f"{p.name} {p.address} ({p.zone})" if p else "none"
            reps = ", ".join(f"{r.name} {r.address} ({r.zone})" for r in shard.replicas) or "none"
            out(f"  shard {shard.id} slots {ranges}: primary {primary}; replicas {reps}")
    sec = plan.topology.security
    ca = ca_for(plan.router_host, plan.router_port)
    opts = (f" --tls --cacert {ca}" if ca is not None else "") + (
        " --askpass" if sec.requires_auth else ""
    )
    if sec.tls or sec.requires_auth or sec.allowed_sources:
        nodes = firewall.describe(plan) if sec.allowed_sources else ""
        out(f"  security: {security_summary(sec, ca, nodes)}")
    out(f"  try: redis-cli -c{opts} -h {plan.router_host} -p {plan.router_port} set foo bar")


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
    await down(plan.name, state_dir=str(cdir.home), purge=False, out=out)
    return 0


async def down(name: str, *, state_dir: str | None, purge: bool, out: Out) -> int:
    cdir = ClusterDir(state_home(state_dir), name)
    if not cdir.root.exists():
        raise StateError(f"no cluster named {name!r} under {cdir.home}")
    live = live_processes(cdir)
    cdir.stopping_path.touch()  # nothing restarts from here on; the supervisor exits
    await _supervisor_gone(cdir, SUPERVISOR_EXIT_S)
    # Everything but the bus first, so that `cluster_stopped` still reaches its subscribers.
    await asyncio.to_thread(stop_processes, cdir, STOP_ORDER[:-1])
    if cdir.exists():
        plan = cdir.load_plan()
        outbox = bus.Outbox(plan.bus_host, plan.bus_port)
        deleted = {"purged": True} if purge else {}  # the deletion, kept in the archive
        emit_event(outbox, cdir, "cluster_stopped", processes=len(live), **deleted)
        if "broker" in live or not plan.topology.bus.embedded:
            # best effort: the event is in the log file already; a bus that is gone or slow
            # must not fail `down`
            with contextlib.suppress(BusError, OSError, TimeoutError):
                await asyncio.wait_for(outbox.flush(), 2.0)
    await asyncio.to_thread(stop_processes, cdir, STOP_ORDER)
    await asyncio.to_thread(firewall.remove, name)  # allowed_sources' node rules, if any
    left = live_processes(cdir)
    if left:
        raise CachefleetError(f"could not stop {', '.join(sorted(left))}")
    if purge:
        event_archive.archive(cdir)  # its events outlive it (14 days, as the service keeps them)
        cdir.purge()
        out(f"cluster {name}: stopped {len(live)} processes and removed {cdir.root}")
    else:
        out(f"cluster {name}: stopped {len(live)} processes (data kept in {cdir.root})")
    return 0
