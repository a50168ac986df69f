"""The endpoints of a cluster-mode-disabled group: a primary endpoint and a reader endpoint.

Each is a byte-for-byte TCP hop, one backend connection per client connection, no request
parsing: the engine itself speaks to the client (so SELECT, MULTI, Lua, pub/sub and blocking
commands all work as on a single node). What the hop decides is only where a new connection
goes, from the layout the router follows on the bus:

* primary endpoint: the layout's primary. When a new layout names another primary, every
  connection to the old one is closed, so no client keeps writing to a demoted node; a client
  that connects while no primary is known waits (up to ``router.failover_wait_ms``).
* reader endpoint: the healthy replicas in turn (those in the router's zone first when it
  has one), the primary when no replica is healthy. Health is probed here (PING + INFO
  replication every probe interval): answering, a replica, link to its primary up.

Security stays the engines' own: a client's AUTH (or HELLO ... AUTH) reaches the node, which
answers NOAUTH, WRONGPASS or NOPERM itself, with its users, access strings and blocked
commands. With ``security.tls`` the hop still only moves bytes, to the node's TLS port: the
client's handshake is with the node, whose certificate carries 127.0.0.1 (the endpoints'
address) as well as its zone address, so the client verifies it as it would the endpoint's
(pass-through: no second handshake, no decryption here; the health probes speak TLS to the
nodes as the control plane's user). ``security.allowed_sources``: a connection from any other
source is reset as soon as it is accepted.

Layouts come from the bus and, as a fast path, from ``layout.json`` in the cluster's state
dir (written by the same call that publishes the layout, read as soon as its mtime changes):
on a busy machine the bus delivers a new layout 100-150 ms after it was published, about a
tenth of a failover. Both are validated against the plan; an older epoch never wins.

Forwarding (zero-copy ``splice``, or a copy between protocols) is in :mod:`router.forward`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from cachefleet import bus
from cachefleet.credentials import Credentials
from cachefleet.layout import Layout, LayoutError, LayoutNode
from cachefleet.nodes import NodeLink, Role
from cachefleet.plan import Plan, PlanFile
from cachefleet.security import source_allowed
from cachefleet.state import ClusterDir
from router.forward import ClientHalf, Hop, Joint, serve_spliced
from router.server import listen_socket, raise_nofile_limit, state_link

Addr = tuple[str, int]
HEALTH_INTERVAL_S = 0.25
HEALTH_TIMEOUT_S = 0.5
LAYOUT_FILE_CHECK_S = 0.01
#: How a hop moves bytes: "splice" (zero-copy, socket -> pipe -> socket in the kernel) or
#: "copy" (asyncio protocols).
FORWARD = os.environ.get("CACHEFLEET_FORWARD", "splice")


def pick_reader(
    replicas: Sequence[LayoutNode],
    healthy: set[str],
    primary: LayoutNode | None,
    turn: int,
    zone: str | None = None,
) -> LayoutNode | None:
    """Where the reader endpoint sends connection number `turn`: the healthy replicas in
    turn (the router's zone first when it has healthy replicas there), else the primary."""
    up = [r for r in replicas if r.name in healthy]
    local = [r for r in up if zone is not None and r.zone == zone]
    pool = local or up
    if pool:
        return pool[turn % len(pool)]
    return primary


class Endpoint:
    """One listening port and its hops: `primary` or `reader`."""

    def __init__(self, router: StandaloneRouter, kind: str) -> None:
        self.router = router
        self.kind = kind
        self.hops: set[Joint] = set()
        self.turn = 0

    def admits(self, host: str) -> bool:
        """Whether a client from `host` may connect (``security.allowed_sources``)."""
        sources = self.router.allowed_sources
        if not sources or source_allowed(sources, host):
            return True
        self.router.refused_sources += 1
        self.router.log.info("client_refused_source", peer=host, endpoint=self.kind)
        return False

    def protocol(self) -> ClientHalf:
        return ClientHalf(Hop(self))

    async def choose(self) -> LayoutNode | None:
        r = self.router
        if self.kind == "reader":
            self.turn += 1
            return pick_reader(r.replicas, r.healthy, r.primary, self.turn, r.zone)
        deadline = time.monotonic() + r.failover_wait_s
        while r.primary is None and time.monotonic() < deadline and not r.stop.is_set():
            r.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(r.changed.wait(), deadline - time.monotonic())
        return r.primary

    def still_valid(self, target: str | None) -> bool:
        """A primary-endpoint hop only while its node is still the primary."""
        if self.kind != "primary":
            return True
        return self.router.primary is not None and self.router.primary.name == target

    def drop_gone(self, members: set[str]) -> int:
        """Close every hop to a node that is no longer a member; how many were closed."""
        gone = [h for h in self.hops if h.target is not None and h.target not in members]
        for hop in gone:
            hop.close()
        return len(gone)

    def drop(self, keep: str | None) -> int:
        """Close every hop that does not go to `keep`; how many were closed."""
        gone = [h for h in self.hops if h.target != keep]
        for hop in gone:
            hop.close()
        return len(gone)


class StandaloneRouter:
    def __init__(
        self,
        *,
        plan: Plan,
        worker: int = 0,
        zone: str | None = None,
        admin: Credentials | None = None,
        plan_path: Path | None = None,
    ) -> None:
        settings = plan.topology.router
        self.plan = plan
        # `apply` writes plan.json before it publishes a layout naming new members
        self.plan_file = PlanFile(plan_path, plan) if plan_path is not None else None
        self.admin = admin
        self.worker = worker
        self.id = f"router-{worker}"
        self.zone = zone or settings.zone
        self.failover_wait_s = settings.failover_wait_ms / 1000
        self.log = structlog.get_logger("router").bind(cluster=plan.name, worker=worker)
        self.layout: Layout | None = None
        self.primary: LayoutNode | None = None
        self.replicas: tuple[LayoutNode, ...] = ()
        self.healthy: set[str] = set()
        self.changed = asyncio.Event()
        self.stop = asyncio.Event()
        self.writer = Endpoint(self, "primary")
        self.reader = Endpoint(self, "reader")
        # health probes speak as the control plane's user: they work with AUTH on as well
        self.links = {n.name: NodeLink(host=n.host, port=n.port, auth=admin) for n in plan.nodes}
        self.layouts_refused = 0
        self.connections_total = 0
        # CIDR blocks the endpoints admit clients from (empty: any source)
        self.allowed_sources = plan.topology.security.allowed_sources
        self.refused_sources = 0

    def on_bus_message(self, topic: str, payload: bytes) -> None:
        data = bus.decode(payload)
        if data is None or not topic.endswith("/layout"):
            return
        try:  # only this group's nodes at their planned addresses
            layout = self.validate(data)
        except LayoutError as exc:
            self.layouts_refused += 1
            self.log.warning("layout_refused", error=str(exc), refused=self.layouts_refused)
            return
        self.apply_layout(layout)

    def validate(self, data: Any) -> Layout:
        try:
            return Layout.from_dict(data, self.plan)
        except LayoutError:
            if self.plan_file is None or not self.plan_file.refresh():
                raise
            self.plan = self.plan_file.plan
            return Layout.from_dict(data, self.plan)

    def link(self, node: LayoutNode) -> NodeLink:
        """The health probe's link to a member (members `apply` adds get one when first seen)."""
        link = self.links.get(node.name)
        if link is None:
            link = NodeLink(host=node.host, port=node.port, auth=self.admin)
            self.links[node.name] = link
        return link

    def apply_layout(self, layout: Layout) -> None:
        if self.layout is not None and (layout.epoch < self.layout.epoch or layout == self.layout):
            return  # older, or the same one from the other source
        self.layout = layout
        shard = layout.shards[0] if layout.shards else None
        old = self.primary
        self.primary = shard.primary if shard else None
        self.replicas = shard.replicas if shard else ()
        new_name = self.primary.name if self.primary else None
        if old is not None and old.name != new_name:
            # the old primary is demoted (or being): no client may keep writing to it
            closed = self.writer.drop(new_name)
            self.log.info("primary_changed", old=old.name, new=new_name, closed=closed)
        members = {n.name for n in shard.nodes} if shard else set()
        self.reader.drop_gone(members)  # members `apply` removed: their nodes stop
        self.healthy &= members
        self.log.info("layout_applied", epoch=layout.epoch, primary=new_name)
        self.changed.set()

    async def follow_layout_file(self, path: Path) -> None:
        """The fast path: apply ``layout.json`` whenever it changes (validated like a bus
        message; a file mid-replace or damaged is skipped until the next change)."""
        seen: int | None = None
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), LAYOUT_FILE_CHECK_S)
            try:
                mtime = path.stat().st_mtime_ns
            except OSError:
                continue
            if mtime == seen:
                continue
            seen = mtime
            try:
                layout = self.validate(json.loads(path.read_bytes()))
            except (OSError, ValueError, LayoutError):
                continue
            self.apply_layout(layout)

    def note_unreachable(self, name: str | None) -> None:
        if name is not None:
            self.healthy.discard(name)

    async def health_loop(self) -> None:
        """Which replicas the reader endpoint may use: answering, a replica, link up."""

        async def check(node: LayoutNode) -> tuple[str, bool]:
            rep = await self.link(node).probe(HEALTH_TIMEOUT_S)
            ok = rep is not None and rep.role is Role.REPLICA and rep.link_up
            return node.name, ok

        while not self.stop.is_set():
            results = await asyncio.gather(*(check(n) for n in self.replicas))
            self.healthy = {name for name, ok in results if ok}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), HEALTH_INTERVAL_S)

    def state(self, ops_per_sec: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": f"{self.plan.router_host}:{self.plan.router_port}",
            "reader_address": f"{self.plan.router_host}:{self.plan.reader_port}",
            "pid": os.getpid(),
            "worker": self.worker,
            "connections": len(self.writer.hops) + len(self.reader.hops),
            "ops_per_sec": round(ops_per_sec, 1),
            "epoch": self.layout.epoch if self.layout else 0,
            "primary": self.primary.name if self.primary else None,
            "healthy_replicas": sorted(self.healthy),
        }

    async def publish_state(self, link: bus.BusLink) -> None:
        topic = bus.topic(self.plan.name, "routers", self.id, "state")
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)
            # a byte hop does not count requests: connections are what it knows
            link.publish(topic, bus.encode(self.state(0.0)), retain=True)


async def run_standalone_router(
    plan: Plan,
    *,
    worker: int = 0,
    reuse_port: bool = False,
    zone: str | None = None,
    plan_path: Path | None = None,
) -> None:
    raise_nofile_limit()
    admin = None
    if plan_path is not None:
        root = plan_path.parent
        admin = ClusterDir(root.parent, root.name).admin()
    router = StandaloneRouter(plan=plan, worker=worker, zone=zone, admin=admin, plan_path=plan_path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, router.stop.set)
    assert plan.reader_port is not None
    servers = []
    listening = []
    for endpoint, port in ((router.writer, plan.router_port), (router.reader, plan.reader_port)):
        sock = listen_socket(plan.router_host, port, reuse_port=reuse_port)
        if FORWARD == "splice":
            serve_spliced(endpoint, sock)
            listening.append(sock)
        else:
            servers.append(await loop.create_server(endpoint.protocol, sock=sock))
    link, state_topic = state_link(plan, worker, router.id, router.on_bus_message, router.log)
    router.log.info(
        "router_started",
        primary_endpoint=f"{plan.router_host}:{plan.router_port}",
        reader_endpoint=f"{plan.router_host}:{plan.reader_port}",
        zone=router.zone,
        worker=worker,
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(link.run(router.stop, final=[(state_topic, b"offline")]), name="router.bus")
        tg.create_task(router.health_loop(), name="router.health")
        if plan_path is not None:
            layout_file = plan_path.with_name("layout.json")
            tg.create_task(router.follow_layout_file(layout_file), name="router.layout_file")
        tg.create_task(router.publish_state(link), name="router.state")
        await router.stop.wait()
        for server in servers:
            server.close()
        for sock in listening:
            loop.remove_reader(sock.fileno())
            sock.close()
        router.writer.drop(None)
        router.reader.drop(None)
        router.changed.set()
    for node_link in router.links.values():
        await node_link.close()
    router.log.info("router_stopped", last_epoch=router.layout.epoch if router.layout else None)
