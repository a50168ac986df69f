"""The cluster's metrics endpoint, run inside the cluster supervisor.

Every ``COLLECT_S`` the collector reads every node (``INFO`` and ``INFO commandstats`` of
Valkey/Redis, ``stats`` of memcached), the layout's config epoch, the events appended since the
last pass and the sentinels' and routers' retained bus state, turns them into samples
(:mod:`cachefleet.metrics`, pure); ``GET /metrics`` renders the last pass (once per pass,
on the first scrape that asks), so a scrape costs no engine round trip and values are at
most ``COLLECT_S`` plus one pass old. The address is ``metrics.port`` of the topology, or a port
chosen once and kept in ``<cluster>/metrics.json`` (``status`` reads it from there).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cachefleet import bus, messages, metrics, ports, snapshots
from cachefleet.console.history import SampleRing
from cachefleet.errors import CachefleetError, InvalidInput
from cachefleet.events import EventTail
from cachefleet.metrics import CommandClasses, EventCounts, NodeReading, RouterStats, Sample
from cachefleet.nodes import connect, info, try_call
from cachefleet.ops.alarms import AlarmRunner
from cachefleet.ops.cost import cluster_bill, read_traffic, save_traffic
from cachefleet.ops.metrics_file import address_path, metrics_address, save_address
from cachefleet.plan import NodeSpec, Plan, PlanFile
from cachefleet.state import ClusterDir
from cachefleet.tls import stream_options

COLLECT_S = 2.0  # values served are at most this plus one pass old (<= 5 s)
SNAPSHOT_SCAN_S = 30.0  # the snapshot directory is listed this often (snapshot age)
BILL_EVERY_S = 60.0  # cachefleet_cost_usd_total is recomputed this often
TRAFFIC_SAVE_S = 30.0  # cross-zone byte counts are written to traffic.json this often
NODE_TIMEOUT_S = 1.0
HOST = "127.0.0.1"
T = TypeVar("T")
ENGINE_SECTIONS = ("server", "memory", "stats", "replication", "cpu", "clients", "keyspace")


def _candidate_port(plan: Plan, cdir: ClusterDir) -> int:
    """The topology's port, else the one chosen before (stable across supervisor restarts),
    else a fresh free one."""
    if plan.topology.metrics.port is not None:
        return plan.topology.metrics.port
    known = metrics_address(cdir)
    if known is not None:
        return int(known.rsplit(":", 1)[1])
    return ports.allocate_one(HOST)


@dataclass
class _Node:
    spec: NodeSpec
    client: aredis.Redis | None = None
    classes: CommandClasses | None = None
    prev: NodeReading | None = None
    role: str = "unknown"  # the last role it reported (the label of its node_up 0 when down)


class Collector:
    """One pass reads everything and renders the exposition text (`text`)."""

    def __init__(self, *, plan: Plan, cdir: ClusterDir) -> None:
        self.plan, self.cdir = plan, cdir
        self.memcached = plan.topology.engine == "memcached"
        self.nodes = [_Node(spec) for spec in plan.nodes]
        self._plan_file = PlanFile(cdir.plan_path, plan)
        self.counts = EventCounts()
        self.events = EventTail(cdir.events_path)
        self.sdown: dict[str, frozenset[str]] = {}
        self.routers: dict[str, tuple[int, float]] = {}
        self.router_stats: dict[str, RouterStats] = {}
        self.snapshot_ages: dict[str, float] = {}  # kind -> newest one's creation (Unix time)
        self._snapshots_scanned = 0.0
        self.zone_of = {spec.address: spec.zone for spec in plan.nodes}
        self.cross_zone = read_traffic(cdir)  # hour start -> bytes sent across zones
        self._traffic_saved = time.monotonic()
        self.bill: list[Sample] = []
        self._billed_at = -BILL_EVERY_S
        self.known = messages.Known.from_plan(plan)
        self.samples: list[Sample] = []  # of the last pass (what `top` and a scrape show)
        self._text: tuple[int, bytes] | None = None  # (pass, its exposition text)
        self.collected_at = 0.0  # time.time() of the last pass
        self.passes = 0
        self.history = SampleRing()  # the console's charts: 15 minutes, a point per 5 s

    def on_bus(self, topic: str, payload: bytes) -> None:
        """Sentinel hellos (SDOWN sets) and router states, validated like any daemon's input."""
        try:
            msg = messages.parse(self.known, topic, payload)
        except InvalidInput:
            return
        match msg:
            case messages.Hello():
                self.sdown[msg.sentinel] = msg.sdown
            case messages.SentinelOffline():
                self.sdown.pop(msg.sentinel, None)
            case messages.RouterState():
                self.routers[msg.router] = (msg.connections, msg.ops_per_sec)
                stats = RouterStats.from_state(bus.decode(payload))
                if stats is not None:
                    self.router_stats[msg.router] = stats
            case messages.RouterOffline():
                self.routers.pop(msg.router, None)
                self.router_stats.pop(msg.router, None)

    async def _read_engine(self, node: _Node) -> NodeReading | None:
        spec = node.spec
        if node.client is None:
            auth = self.cdir.admin() if self.cdir.admin_secret_path.exists() else None
            node.client = connect(spec.host, spec.port, timeout=NODE_TIMEOUT_S, auth=auth)
        if node.classes is None:
            table = await try_call(node.client, "COMMAND")
            if isinstance(table, dict):
                node.classes = CommandClasses.from_command_table(table)
        state = await info(node.client, *ENGINE_SECTIONS, "commandstats")  # one round trip
        if state is None:
            return None
        return NodeReading.from_info(
            state, state, node.classes or CommandClasses(), time.monotonic()
        )

    def _engine_samples(self, readings: list[NodeReading | None]) -> list[Sample]:
        lags = metrics.replica_lags(r for r in readings if r is not None)
        out: list[Sample] = []
        for node, cur in zip(self.nodes, readings, strict=True):
            prev, node.prev = node.prev, cur
            spec = node.spec
            if cur is None:
                out.append(
                    metrics.down_sample(self.plan.name, spec.name, spec.zone, node.role, spec.shard)
                )
                continue
            node.role = cur.role
            if prev is not None and prev.cpu_s > cur.cpu_s:
                prev = None  # the node restarted: no rate across it
            if cur.primary and prev is not None and prev.primary:
                self._count_cross_zone(cur, prev, spec.zone)
            out += metrics.node_samples(
                cur,
                prev,
                cluster=self.plan.name,
                shard=spec.shard,
                node=spec.name,
                zone=spec.zone,
                lag_s=lags.get(spec.address),
            )
        return out

    async def _read_memcached(self, node: _Node) -> list[Sample]:
        spec = node.spec
        stats = await memcached_stats(spec.host, spec.port, NODE_TIMEOUT_S)
        if stats is None:
            return [metrics.down_sample(self.plan.name, spec.name, spec.zone)]
        return metrics.memcached_samples(
            stats, cluster=self.plan.name, node=spec.name, zone=spec.zone
        )

    async def _bounded(self, read: Awaitable[T], empty: T) -> T:
        try:
            return await asyncio.wait_for(read, 2 * NODE_TIMEOUT_S)
        except (TimeoutError, OSError):
            return empty

    async def _follow_plan(self) -> None:
        """Nodes `apply` adds are read from the next pass on; those it removed no more."""
        if not self._plan_file.refresh():
            return
        plan = self._plan_file.plan
        old = {n.spec.name: n for n in self.nodes}
        self.plan = plan
        self.nodes = [old.pop(n.name) if n.name in old else _Node(n) for n in plan.nodes]
        self.zone_of = {spec.address: spec.zone for spec in plan.nodes}
        self.known = messages.Known.from_plan(plan)
        for gone in old.values():
            if gone.client is not None:
                with contextlib.suppress(Exception):
                    await gone.client.aclose()

    async def collect(self) -> None:
        await self._follow_plan()
        samples: list[Sample] = []
        if self.memcached:
            per_node = await asyncio.gather(
                *(
                    self._bounded(
                        self._read_memcached(n),
                        [metrics.down_sample(self.plan.name, n.spec.name, n.spec.zone)],
                    )
                    for n in self.nodes
                )
            )
            samples = [s for batch in per_node for s in batch]
        else:
            readings = await asyncio.gather(
                *(self._bounded(self._read_engine(n), None) for n in self.nodes)
            )
            samples = self._engine_samples(list(readings))
        self.counts.feed(self.events.read())
        layout = self.cdir.load_layout()
        now = time.time()
        samples += metrics.control_samples(
            cluster=self.plan.name,
            config_epoch=layout.epoch if layout is not None else None,
            counts=self.counts,
            sdown=self.sdown,
            routers=self.routers,
            router_stats=self.router_stats,
            snapshot_ages={k: max(0.0, now - t) for k, t in self._newest_snapshots(now).items()},
        )
        samples += self._costs()
        self.samples = samples
        self.collected_at = time.time()
        self.passes += 1
        self.history.offer(self.collected_at, samples)

    def _count_cross_zone(self, cur: NodeReading, prev: NodeReading, zone: str) -> None:
        """A primary's replication stream since `prev`, once per replica linked to it from
        another zone: the bytes that crossed a zone boundary (the cost's proxy)."""
        sent = cur.repl_offset - prev.repl_offset
        remote = sum(1 for addr, _ in cur.replica_lags if self.zone_of.get(addr, zone) != zone)
        if sent > 0 and remote:
            hour = int(time.time() // 3600 * 3600)
            self.cross_zone[hour] = self.cross_zone.get(hour, 0) + int(sent) * remote

    def _costs(self) -> list[Sample]:
        """cachefleet_cost_usd_total by component, recomputed every BILL_EVERY_S (every pass
        while it is still zero: a cluster's first seconds)."""
        mono = time.monotonic()
        if mono - self._traffic_saved >= TRAFFIC_SAVE_S:
            self._traffic_saved = mono
            save_traffic(self.cdir, self.cross_zone)
        billed = any(s.value > 0 for s in self.bill)
        if mono - self._billed_at < BILL_EVERY_S and billed:
            return self.bill
        self._billed_at = mono
        try:
            b = cluster_bill(self.cdir, self.plan, since=None, now=time.time())
        except CachefleetError:
            return self.bill  # a price table without this node type: no cost series
        self.bill = [
            Sample(metrics.COST, metrics.labels_of(cluster=self.plan.name, component=k), v)
            for k, v in b.components().items()
        ]
        return self.bill

    def _newest_snapshots(self, now: float) -> dict[str, float]:
        """Snapshot kind -> when the cluster's newest snapshot of that kind was taken (the
        directory is listed every SNAPSHOT_SCAN_S, not every pass)."""
        if self.memcached or now - self._snapshots_scanned < SNAPSHOT_SCAN_S:
            return self.snapshot_ages
        self._snapshots_scanned = now
        newest: dict[str, float] = {}
        for m in snapshots.list_all(self.cdir.home):
            if m.cluster == self.plan.name:
                at = snapshots.created_at(m).timestamp()
                newest[m.kind] = max(newest.get(m.kind, 0.0), at)
        self.snapshot_ages = newest
        return newest

    def text(self) -> bytes:
        """The last pass as Prometheus text, rendered on the first scrape that wants it (a pass
        every 2 s, a scrape every 10 s or so: most passes are never rendered)."""
        if self._text is None or self._text[0] != self.passes:
            self._text = (self.passes, metrics.render(self.samples))
        return self._text[1]

    async def close(self) -> None:
        for node in self.nodes:
            if node.client is not None:
                with contextlib.suppress(Exception):
                    await node.client.aclose()
                node.client = None


async def memcached_stats(host: str, port: int, timeout: float) -> dict[str, str] | None:
    """A memcached node's ``stats`` (``STAT name value`` lines up to ``END``)."""

    async def ask() -> dict[str, str]:
        reader, writer = await asyncio.open_connection(host, port, **stream_options(host, port))
        try:
            writer.write(b"stats\r\n")
            await writer.drain()
            out: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("ascii", "replace").strip()
                if not line or line == "END" or "ERROR" in line:
                    return out
                parts = line.split(" ", 2)
                if len(parts) == 3 and parts[0] == "STAT":
                    out[parts[1]] = parts[2]
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(ask(), timeout)
    except (TimeoutError, OSError):  # ssl.SSLError is an OSError
        return None


class MetricsServer:
    """``async with MetricsServer(plan=..., cdir=..., log=...)``: the collector, its bus
    session and the HTTP endpoint, stopped on exit. A port that cannot be bound is logged and
    retried; it never stops the supervisor's real work."""

    def __init__(self, *, plan: Plan, cdir: ClusterDir, log: Any) -> None:
        self.plan, self.cdir, self.log = plan, cdir, log
        self.collector = Collector(plan=plan, cdir=cdir)
        self.bus = bus.BusLink(
            host=plan.bus_host,
            port=plan.bus_port,
            name="supervisor.metrics",
            subscriptions=(
                bus.topic(plan.name, "sentinels", "+", "hello"),
                bus.topic(plan.name, "routers", "+", "state"),
            ),
            on_message=self.collector.on_bus,
            log=log,
        )
        self.address: str | None = None
        self.alarms: AlarmRunner | None = None
        self.interval_s = COLLECT_S
        if plan.topology.alarms:
            self.alarms = AlarmRunner(
                specs=plan.topology.alarms, cdir=cdir, publisher=self.bus, log=log
            )
            # at least two passes per period of the shortest alarm
            self.interval_s = min(COLLECT_S, max(0.5, self.alarms.shortest_period_s / 2))
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.collector.text(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.handle_metrics)
        from cachefleet.console.web import mount_cluster

        mount_cluster(app, self.collector)  # the web console at /
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        delay = 1.0
        while not self._stop.is_set():
            port = _candidate_port(self.plan, self.cdir)
            try:
                site = web.TCPSite(self._runner, HOST, port, reuse_address=True)
                await site.start()
            except OSError as exc:
                self.log.warning("metrics_port_unavailable", port=port, error=str(exc))
                if self.plan.topology.metrics.port is None:
                    address_path(self.cdir).unlink(missing_ok=True)  # choose another next time
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(10.0, delay * 2)
                continue
            save_address(self.cdir, HOST, port)
            self.address = f"{HOST}:{port}"
            self.log.info("metrics_serving", address=self.address)
            return

    async def _collect_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await self.collector.collect()
                if self.alarms is not None:
                    self.alarms.after_pass(self.collector.samples, self.collector.collected_at)
                    self.collector.samples += self.alarms.samples(self.plan.name)
            except Exception as exc:  # a bad pass must not end the endpoint
                self.log.error("metrics_collect_failed", error=f"{type(exc).__name__}: {exc}")
            wait = max(0.1, self.interval_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def __aenter__(self) -> MetricsServer:
        self._tasks = [
            asyncio.create_task(self.bus.run(self._stop), name="supervisor.metrics.bus"),
            asyncio.create_task(self._collect_loop(), name="supervisor.metrics.collect"),
            asyncio.create_task(self._serve(), name="supervisor.metrics.http"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 3.0)
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.alarms is not None:
            await self.alarms.close()
        await self.collector.close()
