"""The memcached router process: listener, bus link (the node list) and status publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from cachefleet import bus
from cachefleet.errors import CachefleetError
from cachefleet.layout import Layout, LayoutError
from cachefleet.plan import Plan
from cachefleet.tls import server_context, tls_files
from router.auth import watch_certificate
from router.latency import LATENCY
from router.memcache.conns import Client
from router.memcache.proxy import Proxy
from router.server import listen_socket, raise_nofile_limit, state_link


def engine_version(binary: str) -> str:
    """The nodes' memcached version (``memcached 1.6.18`` -> ``1.6.18``), answered to
    `version` as a single node would."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.strip().rsplit(" ", 1)[-1] or "unknown"


class Router:
    def __init__(self, *, plan: Plan, worker: int, plan_path: Path | None = None) -> None:
        topo = plan.topology
        assert topo.memcached is not None
        self.plan = plan
        self.plan_path = plan_path  # read again when a layout names nodes a scaling added
        self.worker = worker
        self.id = f"router-{worker}"
        self.proxy = Proxy(
            cluster=plan.name,
            version=engine_version(plan.engine_binary),
            max_value=topo.memcached.max_item_size,
            max_clients=topo.router.max_clients,
            worker=worker,
            copies=topo.memcached.copies,
            allowed_sources=topo.security.allowed_sources,
        )
        self.layouts_refused = 0

    def on_bus_message(self, topic: str, payload: bytes) -> None:
        data = bus.decode(payload)
        if data is None or not topic.endswith("/layout"):
            return
        self.take_layout(data)

    def load_saved(self, path: Path) -> None:
        """The last published node list (the cluster's layout.json), so that a worker that
        starts again (apply restarts them one at a time) serves at once instead of answering
        "no node list yet" until the bus delivers it; a later one from the bus replaces it."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        self.take_layout(data)

    def take_layout(self, data: Any) -> None:
        layout: Layout | None
        try:  # only the plan's nodes at their planned addresses
            layout = Layout.from_dict(data, self.plan)
        except LayoutError as exc:
            layout = self._with_new_plan(data)
            if layout is None:
                self.layouts_refused += 1
                self.proxy.log.warning(
                    "layout_refused", error=str(exc), refused=self.layouts_refused
                )
                return
        self.proxy.apply_layout(layout)

    def _with_new_plan(self, data: Any) -> Layout | None:
        """The layout checked against plan.json as it is now, when a scaling `up` changed it
        (nodes added or removed); None when it is still refused."""
        if self.plan_path is None:
            return None
        try:
            plan = Plan.load(self.plan_path)
            layout = Layout.from_dict(data, plan)
        except (OSError, ValueError, KeyError, TypeError, CachefleetError):
            return None
        if plan.name != self.plan.name or plan.router_port != self.plan.router_port:
            return None
        self.plan = plan
        self.proxy.log.info("plan_reloaded", nodes=len(plan.nodes))
        return layout

    def state(self, ops_per_sec: float) -> dict[str, Any]:
        p = self.proxy
        return {
            "id": self.id,
            "address": f"{self.plan.router_host}:{self.plan.router_port}",
            "pid": os.getpid(),
            "worker": self.worker,
            "engine": "memcached",
            "connections": len(p.clients),
            "backend_connections": sum(1 for c in p.conns.values() if not c.closed),
            "ops_per_sec": round(ops_per_sec, 1),
            "ops_total": p.ops,
            "client_errors": p.client_errors,
            "latency": LATENCY.state(),
            "epoch": p.layout.epoch if p.layout else 0,
        }

    async def publish_state(self, link: bus.BusLink, stop: asyncio.Event) -> None:
        topic = bus.topic(self.plan.name, "routers", self.id, "state")
        last_ops, last_t = self.proxy.ops, time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            now = time.monotonic()
            rate = (self.proxy.ops - last_ops) / max(now - last_t, 1e-6)
            last_ops, last_t = self.proxy.ops, now
            link.publish(topic, bus.encode(self.state(rate)), retain=True)


async def run_memcached_router(
    plan: Plan, *, worker: int = 0, reuse_port: bool = False, plan_path: Path | None = None
) -> None:
    raise_nofile_limit()
    router = Router(plan=plan, worker=worker, plan_path=plan_path)
    proxy = router.proxy
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if plan_path is not None:
        router.load_saved(plan_path.parent / "layout.json")
    sock = listen_socket(plan.router_host, plan.router_port, reuse_port=reuse_port)
    # a TLS cluster's configuration endpoint terminates TLS (and speaks TLS to the nodes)
    files = tls_files(plan_path.parent) if plan.topology.security.tls and plan_path else None
    tls = server_context(files) if files is not None else None
    server = await loop.create_server(lambda: Client(proxy), sock=sock, ssl=tls)
    link, state_topic = state_link(plan, worker, router.id, router.on_bus_message, proxy.log)
    proxy.log.info(
        "router_started",
        address=f"{plan.router_host}:{plan.router_port}",
        engine="memcached",
        version=proxy.version,
    )
    async with server, asyncio.TaskGroup() as tg:
        tg.create_task(link.run(stop, final=[(state_topic, b"offline")]), name="router.bus")
        tg.create_task(router.publish_state(link, stop), name="router.state")
        tg.create_task(proxy.watch(stop), name="router.request_deadlines")
        if tls is not None and files is not None and plan_path is not None:
            process = "router" if worker == 0 else f"router.{worker}"
            ack = plan_path.parent / "security" / f"{process}.cert"
            tg.create_task(
                watch_certificate(tls, files, ack, stop, proxy.log), name="router.certificate"
            )
        await stop.wait()
        server.close()
        for task in list(proxy.tasks):
            task.cancel()
        for conn in list(proxy.conns.values()):
            conn.fail()
        for client in list(proxy.clients):
            if client.transport is not None:
                client.transport.close()
    proxy.log.info("router_stopped", last_version=proxy.layout.epoch if proxy.layout else None)
