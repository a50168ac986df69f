"""The console's HTTP side (aiohttp): the page, its assets, JSON, server-sent events, actions.

Two mounts share the handlers of :class:`ClusterConsole`:

- :func:`mount_cluster`, in the cluster supervisor's metrics server: the page at ``/``, the
  cluster's view from the collector's last pass and its sample ring.
- :func:`mount_serve`, in ``cachefleet serve``: ``/console/`` lists the state dir's
  clusters, ``/console/c/NAME/`` shows one, its view asked of that cluster's supervisor
  (``api/cluster.json`` at its metrics address) or, when none runs, drawn from the plan and
  layout on disk with every node ``unknown``.

Every route passes :func:`cachefleet.console.checks.refusal` first (loopback ``Host``; for an
action, this origin and a JSON body); actions are :mod:`cachefleet.console.actions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import html
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from cachefleet.console.actions import ACTIONS_KEPT, Action, Actions, run_failover, run_snapshot
from cachefleet.console.checks import refusal
from cachefleet.console.history import SampleRing
from cachefleet.console.view import cluster_entry, cluster_view
from cachefleet.errors import CachefleetError
from cachefleet.metrics import Sample
from cachefleet.plan import Plan, PlanFile
from cachefleet.proc import live_processes
from cachefleet.state import ClusterDir

STATIC = Path(__file__).with_name("static")
ASSETS = {"console.js": "application/javascript", "console.css": "text/css"}
BACKLOG_BYTES = 64 * 1024  # a new event stream starts with the events in the log's last 64 KiB
READ_MAX = 1024 * 1024  # at most this much of the log per poll of an event stream
POLL_S = 0.5
KEEPALIVE_S = 15.0
PROXY_TIMEOUT_S = 2.0
HOSTS_KEY = web.AppKey("console_hosts", frozenset)  # host names served besides loopback ones
COST_EVERY_S = 60.0  # the month-to-date cost is recomputed this often


class MonthToDate:
    """The cluster's cost since the first of this month (UTC):
    :func:`cachefleet.ops.cost.month_to_date` (node-hours, reserved nodes, snapshot storage,
    cross-zone bytes at the price table's prices), recomputed at most every COST_EVERY_S in a
    thread."""

    def __init__(self, cdir: ClusterDir) -> None:
        self.cdir = cdir
        self._at = -COST_EVERY_S
        self._value: dict[str, Any] | None = None

    async def get(self, plan: Plan) -> dict[str, Any] | None:
        if time.monotonic() - self._at < COST_EVERY_S:
            return self._value
        self._at = time.monotonic()
        from cachefleet.ops.cost import month_start, month_to_date

        now = time.time()
        try:
            bill = await asyncio.to_thread(month_to_date, self.cdir, plan, now)
        except (CachefleetError, OSError, ValueError, KeyError, TypeError):
            self._value = None  # no price for this node type, or no log yet: not shown
        else:
            since = dt.datetime.fromtimestamp(month_start(now), dt.UTC)
            self._value = {
                "month_to_date_usd": round(bill.total_usd, 2),
                "since": since.isoformat(),
            }
        return self._value


# -- the event log, by byte offsets -------------------------------------------------------------


def backlog_offset(path: Path, max_bytes: int = BACKLOG_BYTES) -> int:
    """Where the last `max_bytes` of the log begin, moved to the start of a whole line."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size <= max_bytes:
                return 0
            f.seek(size - max_bytes)
            head = f.read(max_bytes)
    except OSError:
        return 0
    cut = head.find(b"\n")
    return size if cut < 0 else size - max_bytes + cut + 1


def read_event_lines(path: Path, offset: int) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The whole lines appended since `offset` (at most READ_MAX bytes of them): ``([(offset
    after the line, event)...], offset after the last whole line)``. A log shorter than
    `offset` (recreated) is read from its start."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if offset > size:
                offset = 0
            f.seek(offset)
            chunk = f.read(min(size - offset, READ_MAX))
    except OSError:
        return [], offset
    out: list[tuple[int, dict[str, Any]]] = []
    pos = 0
    while True:
        end = chunk.find(b"\n", pos)
        if end < 0:
            break
        try:
            event = json.loads(chunk[pos:end])
        except ValueError:
            event = None
        pos = end + 1
        if isinstance(event, dict):
            out.append((offset + pos, event))
    return out, offset + pos


# -- one cluster's handlers ---------------------------------------------------------------------

ViewFn = Callable[[], Awaitable[dict[str, Any]]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


class ClusterConsole:
    """The JSON, event stream and actions of one cluster; `view` and `history` say where its
    numbers come from (the collector in this process, or its supervisor over HTTP)."""

    def __init__(
        self,
        cdir: ClusterDir,
        *,
        view: ViewFn,
        history: ViewFn,
        plan: Callable[[], Plan],
        actions: Actions,
        stop: asyncio.Event,
    ) -> None:
        self.cdir = cdir
        self.view, self.history, self.plan = view, history, plan
        self.actions = actions
        self.stop = stop

    async def cluster_json(self, request: web.Request) -> web.Response:
        data = await self.view()
        mine = self.actions.to_json()
        theirs = [a for a in data.get("recent_actions", []) if isinstance(a, dict)]
        newest_first = sorted(mine + theirs, key=lambda a: -float(a.get("started") or 0))
        data["recent_actions"] = newest_first[:ACTIONS_KEPT]
        return _json(data)

    async def history_json(self, request: web.Request) -> web.Response:
        return _json(await self.history())

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The event log as server-sent events: the last ones, then each as it is appended;
        ``Last-Event-ID`` (a byte offset) resumes a broken stream where it stopped."""
        path = self.cdir.events_path
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        last = request.headers.get("Last-Event-ID", "")
        offset = int(last) if last.isdigit() and len(last) < 16 else backlog_offset(path)
        with contextlib.suppress(OSError):
            if offset > path.stat().st_size:  # not this log's offset: start as a new stream
                offset = backlog_offset(path)
        quiet_since = time.monotonic()
        try:
            await resp.write(b"retry: 2000\n\n")
            while not self.stop.is_set():
                batch, offset = read_event_lines(path, offset)
                if batch:
                    text = "".join(
                        f"id: {end}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
                        for end, event in batch
                    )
                    await resp.write(text.encode())
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    await resp.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), POLL_S)
        except (ConnectionError, RuntimeError):
            pass  # the page went away
        return resp

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body is not a JSON object")
        return body

    def _started(self, action: Action) -> web.Response:
        return _json({"action": asdict(action)}, status=202)

    async def post_failover(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        plan = self.plan()
        if plan.topology.is_memcached:
            return _json({"error": "a memcached cluster has no replicas to fail over to"}, 409)
        shard = body.get("shard")
        if plan.topology.standalone:
            shard = None
        elif isinstance(shard, bool) or not isinstance(shard, int):
            return _json({"error": 'give the shard to fail over: {"shard": N}'}, 400)
        target = f"shard {shard}" if shard is not None else "group"
        if self.actions.running("failover", target):
            return _json({"error": f"a failover of {target} is already running"}, 409)
        cdir = self.cdir
        return self._started(
            self.actions.start("failover", target, lambda: run_failover(cdir, shard))
        )

    async def post_snapshot(self, request: web.Request) -> web.Response:
        await self._body(request)
        plan = self.plan()
        if plan.topology.is_memcached:
            return _json({"error": "a memcached cluster has no snapshots"}, 409)
        if self.actions.running("snapshot", ""):
            return _json({"error": "a snapshot is already being taken"}, 409)
        cdir = self.cdir
        return self._started(self.actions.start("snapshot", "", lambda: run_snapshot(cdir, plan)))


# -- the page ---------------------------------------------------------------------------------


def page(*, title: str, cluster: str, api: str, clusters_api: str, static: str) -> str:
    """index.html with its data attributes filled (the script reads every URL from them)."""
    text = (STATIC / "index.html").read_text()
    for key, value in {
        "title": title,
        "cluster": cluster,
        "api": api,
        "clusters_api": clusters_api,
        "static": static,
    }.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return text


def _page_response(**kw: str) -> web.Response:
    return web.Response(
        text=page(**kw), content_type="text/html", headers={"Cache-Control": "no-store"}
    )


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=(STATIC / name).read_bytes(), content_type=ASSETS[name])


def cluster_names(home: Path) -> list[str]:
    """The clusters of a state dir: its directories that hold a plan."""
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if (p / "plan.json").is_file())


def _supervised(cdir: ClusterDir) -> bool:
    return "supervisor" in live_processes(cdir)


def _load_plan(cdir: ClusterDir) -> Plan | None:
    try:
        return Plan.load(cdir.plan_path)
    except (OSError, ValueError, KeyError, TypeError, CachefleetError):
        return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _add(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """A console route, behind the checks of :func:`refusal`."""
    hosts: frozenset[str] = app.get(HOSTS_KEY, frozenset())

    async def guarded(request: web.Request) -> web.StreamResponse:
        why = refusal(request.method, request.headers, hosts)
        if why:
            return _json({"error": why}, 403)
        return await handler(request)

    app.router.add_route(method, path, guarded)


def _on_stop(app: web.Application, stop: asyncio.Event, actions: list[Actions]) -> None:
    async def shutdown(_app: web.Application) -> None:
        stop.set()  # event streams end, so the runner's cleanup does not wait for them

    async def cleanup(_app: web.Application) -> None:
        for a in actions:
            await a.close()

    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)


# -- in the cluster supervisor --------------------------------------------------------------


class Source(Protocol):
    """What the console reads of the metrics collector (cachefleet.ops.metrics_server)."""

    plan: Plan
    cdir: ClusterDir
    samples: list[Sample]
    sdown: dict[str, frozenset[str]]
    collected_at: float
    history: SampleRing


def mount_cluster(
    app: web.Application, source: Source, hosts: frozenset[str] = frozenset()
) -> None:
    """The console of the collector's cluster at ``/`` (with ``/static/``, ``/api/``)."""
    cdir = source.cdir
    planfile = PlanFile(cdir.plan_path, source.plan)
    stop = asyncio.Event()
    actions = Actions()
    month = MonthToDate(cdir)

    def plan() -> Plan:
        planfile.refresh()  # `apply` may have added nodes
        return planfile.plan

    async def view() -> dict[str, Any]:
        data = cluster_view(
            plan(),
            cdir.load_layout(),
            source.samples,
            sdown=source.sdown,
            collected_at=source.collected_at or None,
        )
        data["recent_actions"] = []
        data["cost"] = await month.get(plan())
        return data

    async def history() -> dict[str, Any]:
        return source.history.to_json()

    console = ClusterConsole(
        cdir, view=view, history=history, plan=plan, actions=actions, stop=stop
    )

    async def index(request: web.Request) -> web.Response:
        return _page_response(
            title=f"{cdir.name} · cachefleet",
            cluster=cdir.name,
            api="/api/",
            clusters_api="/api/clusters.json",
            static="/static/",
        )

    async def clusters(request: web.Request) -> web.Response:
        from cachefleet.ops.metrics_file import metrics_address

        out = []
        for name in cluster_names(cdir.home):
            other = ClusterDir(cdir.home, name)
            running = name == cdir.name or _supervised(other)
            address = metrics_address(other) if name != cdir.name else None
            href = (
                "/"
                if name == cdir.name
                else (f"http://{address}/" if running and address else None)
            )
            p = plan() if name == cdir.name else _load_plan(other)
            out.append(cluster_entry(name, p, running=running, href=href))
        return _json({"clusters": out, "current": cdir.name})

    app[HOSTS_KEY] = hosts
    _add(app, "GET", "/", index)
    _add(app, "GET", "/static/{name}", _asset)
    _add(app, "GET", "/api/clusters.json", clusters)
    _add(app, "GET", "/api/cluster.json", console.cluster_json)
    _add(app, "GET", "/api/history.json", console.history_json)
    _add(app, "GET", "/api/events", console.events)
    _add(app, "POST", "/api/failover", console.post_failover)
    _add(app, "POST", "/api/snapshot", console.post_snapshot)
    _on_stop(app, stop, [actions])


# -- in `cachefleet serve` ----------------------------------------------------------------------


class _Remote:
    """One HTTP client session for asking the clusters' supervisors, made in the server's
    loop on first use."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def get(self, address: str, path: str) -> dict[str, Any] | None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S)
            )
        try:
            async with self.session.get(f"http://{address}{path}") as resp:
                if resp.status != 200:
                    return None
                data = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


def mount_serve(
    app: web.Application, home: Path, hosts: frozenset[str] = frozenset(), prefix: str = "/console"
) -> None:
    """The console of every cluster in `home` under `prefix`."""
    from cachefleet.ops.metrics_file import metrics_address

    stop = asyncio.Event()
    remote = _Remote()
    consoles: dict[str, ClusterConsole] = {}
    all_actions: list[Actions] = []

    def console_of(name: str) -> ClusterConsole:
        if name not in cluster_names(home):
            raise web.HTTPNotFound(text=f"no cluster named {name!r} in {home}")
        if name in consoles:
            return consoles[name]
        cdir = ClusterDir(home, name)

        def plan() -> Plan:
            found = _load_plan(cdir)
            if found is None:
                raise web.HTTPNotFound(text=f"cluster {name!r} has no readable plan")
            return found

        month = MonthToDate(cdir)

        async def view() -> dict[str, Any]:
            address = metrics_address(cdir)
            if address is not None and _supervised(cdir):
                data = await remote.get(address, "/api/cluster.json")
                if data is not None:
                    return data
            data = cluster_view(plan(), cdir.load_layout(), [], supervised=False)
            data["cost"] = await month.get(plan())
            return data

        async def history() -> dict[str, Any]:
            address = metrics_address(cdir)
            if address is not None and _supervised(cdir):
                data = await remote.get(address, "/api/history.json")
                if data is not None:
                    return data
            return SampleRing().to_json()

        actions = Actions()
        all_actions.append(actions)
        consoles[name] = ClusterConsole(
            cdir, view=view, history=history, plan=plan, actions=actions, stop=stop
        )
        return consoles[name]

    def delegate(attr: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            bound: Handler = getattr(console_of(request.match_info["cluster"]), attr)
            return await bound(request)

        return handler

    async def index(request: web.Request) -> web.Response:
        name = request.match_info.get("cluster", "")
        if name:
            console_of(name)  # 404 for an unknown cluster
        return _page_response(
            title=f"{name + ' · ' if name else ''}cachefleet",
            cluster=name,
            api=f"{prefix}/c/{name}/api/" if name else "",
            clusters_api=f"{prefix}/api/clusters.json",
            static=f"{prefix}/static/",
        )

    async def to_slash(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path + "/")

    async def clusters(request: web.Request) -> web.Response:
        out = []
        for name in cluster_names(home):
            cdir = ClusterDir(home, name)
            out.append(
                cluster_entry(
                    name, _load_plan(cdir), running=_supervised(cdir), href=f"{prefix}/c/{name}/"
                )
            )
        return _json({"clusters": out, "current": None})

    async def close_remote(_app: web.Application) -> None:
        await remote.close()

    app[HOSTS_KEY] = hosts
    _add(app, "GET", prefix, to_slash)
    _add(app, "GET", f"{prefix}/", index)
    _add(app, "GET", f"{prefix}/static/{{name}}", _asset)
    _add(app, "GET", f"{prefix}/api/clusters.json", clusters)
    _add(app, "GET", f"{prefix}/c/{{cluster}}", to_slash)
    _add(app, "GET", f"{prefix}/c/{{cluster}}/", index)
    base = f"{prefix}/c/{{cluster}}/api"
    _add(app, "GET", f"{base}/cluster.json", delegate("cluster_json"))
    _add(app, "GET", f"{base}/history.json", delegate("history_json"))
    _add(app, "GET", f"{base}/events", delegate("events"))
    _add(app, "POST", f"{base}/failover", delegate("post_failover"))
    _add(app, "POST", f"{base}/snapshot", delegate("post_snapshot"))
    _on_stop(app, stop, all_actions)
    app.on_cleanup.append(close_remote)
