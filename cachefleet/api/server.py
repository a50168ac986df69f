"""`cachefleet serve`: the Query API over aiohttp, for every cluster in one state dir.

Each action calls the same operation as the CLI (``lifecycle.up``/``down``,
``graceful_failover``, the event log; `cachefleet apply` for modifications, run detached);
long ones run as tasks of this process while the Describe calls show their progress
(``creating`` -> ``available``, ``modifying``, ``deleting`` -> gone).
The clusters themselves run under their own supervisors: stopping ``serve`` stops none of
them, and a restarted ``serve`` finds them in the state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from cachefleet.api import auth, shapes, wire
from cachefleet.api.access import Access, resource_of
from cachefleet.api.cache_cluster_actions import CacheClusterActions
from cachefleet.api.group_actions import ReplicationGroupActions
from cachefleet.api.modify_actions import ModifyActions
from cachefleet.api.names import Account
from cachefleet.api.snapshot_actions import SnapshotActions
from cachefleet.api.store import Store, load_record, save_record
from cachefleet.api.tag_actions import TagActions
from cachefleet.api.wire import ApiError, Params, XmlList
from cachefleet.engine import resolve_engine_binary
from cachefleet.errors import CachefleetError
from cachefleet.event_archive import archived, archived_names
from cachefleet.events import read_events
from cachefleet.proc import reap_children
from cachefleet.state import ClusterDir

log = logging.getLogger("cachefleet.api")
Handler = Callable[[Params], Awaitable[dict[str, Any] | None]]
Out = Callable[[str], None]

EVENT_WINDOW_S = 3600.0  # DescribeEvents without a time range: the last hour
EVENT_HISTORY_S = 14 * 86400.0


def engine_versions() -> dict[str, str]:
    """engine -> version of each server binary found here (asked once, at start)."""
    found: dict[str, str] = {}
    for engine in ("valkey", "redis", "memcached"):
        try:
            binary = resolve_engine_binary(engine)
            text = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
            ).stdout
        except (CachefleetError, OSError, subprocess.SubprocessError):
            continue
        version = shapes.engine_version(text)
        if version:
            found[engine] = version
    return found


class Api:
    def __init__(self, home: Path, account: Account, out: Out) -> None:
        self.home = home
        self.account = account
        self.out = out
        self.store = Store(home)
        self.access = Access(home)
        self.operations: dict[str, str] = {}  # cluster -> creating / deleting / modifying
        self.tasks: set[asyncio.Task[None]] = set()
        self.versions: dict[str, str] = {}
        self.actions: dict[str, Handler] = {
            "DescribeCacheClusters": self.describe_cache_clusters,
            "DescribeEvents": self.describe_events,
            "DescribeCacheEngineVersions": self.describe_cache_engine_versions,
        }
        self.groups_actions = ReplicationGroupActions(self)
        self.tags = TagActions(self)
        self.snapshots = SnapshotActions(self)
        self.cache_clusters = CacheClusterActions(self)
        self.modify = ModifyActions(self)

    # -- the HTTP edge ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        started = time.time()
        query = list(parse_qsl(request.query_string, keep_blank_values=True))
        body = await request.read() if request.method == "POST" else b""
        fields = dict(query)
        fields.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = fields.get("Action", "")
        key_id: str | None = None
        error: ApiError | None = None
        try:
            if not action:
                raise ApiError("MissingAction", "The request must contain the parameter Action")
            signed = auth.SignedRequest(
                method=request.method,
                path=request.raw_path.split("?", 1)[0],
                query=query,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
            key_id = auth.claimed_key(signed.headers.get("authorization", ""))
            key_id = self.access.check(
                signed, action, resource_of(action, fields, self.account), started
            )
            version = fields.get("Version")
            if version is not None and version != wire.API_VERSION:
                raise ApiError(
                    "InvalidParameterValue",
                    f"Version {version!r} is not supported; this endpoint speaks "
                    f"{wire.API_VERSION}",
                )
            result = await self.dispatch(action, Params(fields))
            text, status = wire.render_response(action, result, request_id), 200
        except ApiError as exc:
            error = exc
        except Exception:
            log.exception("action %s failed", action)
            error = ApiError("InternalFailure", "The request processing has failed")
        if error is not None:
            text, status = wire.render_error(error, request_id), error.status
        self.access.audit(
            {
                "ts": started,
                "request_id": request_id,
                "action": action,
                "params": auth.redact({k: v for k, v in fields.items() if k != "Action"}),
                "access_key_id": key_id,
                "source": request.remote,
                "outcome": "error" if error else "success",
                "error_code": error.code if error else None,
                "status": status,
            }
        )
        return web.Response(
            text=text,
            status=status,
            content_type="text/xml",
            headers={"x-amzn-RequestId": request_id},
        )

    async def dispatch(self, action: str, params: Params) -> dict[str, Any] | None:
        handler = self.actions.get(action)
        if handler is not None:
            return await handler(params)
        raise ApiError("InvalidAction", f"The action {action} is not valid for this web service.")

    # -- helpers -----------------------------------------------------------------------------

    def view(self, name: str) -> shapes.ClusterView:
        return self.store.view(name, self.operations.get(name), self.versions)

    def groups(self) -> list[shapes.ClusterView]:
        names = sorted(set(self.store.names()) | set(self.operations))
        views = [self.view(n) for n in names]
        return [v for v in views if not v.is_memcached]

    def existing(self, name: str) -> shapes.ClusterView:
        if name in self.operations or name in self.store.names():
            view = self.view(name)
            if not view.is_memcached:
                return view
        raise ApiError("ReplicationGroupNotFoundFault", f"Replication group {name} not found.")

    def run(self, name: str, operation: str, work: Awaitable[None]) -> None:
        self.operations[name] = operation

        async def body() -> None:
            try:
                await work
            except Exception as exc:
                log.exception("%s of %s failed", operation, name)
                self.out(f"{operation} {name} failed: {exc}")
            finally:
                self.operations.pop(name, None)

        task = asyncio.create_task(body(), name=f"api.{operation}.{name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- replication groups --------------------------------------------------------------------

    async def created(self, cdir: ClusterDir, work: Awaitable[None]) -> None:
        """A creation; when it fails, the reason is kept and the cluster is create-failed."""
        try:
            await work
        except Exception as exc:
            save_record(cdir, replace(load_record(cdir), failure=str(exc)))
            raise

    # -- cache clusters, events, engines ---------------------------------------------------------

    async def describe_cache_clusters(self, params: Params) -> dict[str, Any]:
        wanted = params.string("CacheClusterId")
        show = params.boolean("ShowCacheNodeInfo") or False
        lone = params.boolean("ShowCacheClustersNotInReplicationGroups") or False
        max_records = params.integer("MaxRecords")
        marker = params.string("Marker")
        names = sorted(set(self.store.names()) | set(self.operations))
        clusters = [
            c
            for n in names
            for c in shapes.cache_clusters(self.view(n), self.account, show_nodes=show)
        ]
        if lone:
            clusters = [c for c in clusters if "ReplicationGroupId" not in c]
        if wanted is not None:
            clusters = [c for c in clusters if c["CacheClusterId"] == wanted.lower()]
            if not clusters:
                raise ApiError("CacheClusterNotFound", f"CacheCluster not found: {wanted}")
        items, next_marker = wire.page(clusters, marker, max_records)
        return {"Marker": next_marker, "CacheClusters": XmlList("CacheCluster", items)}

    async def describe_events(self, params: Params) -> dict[str, Any]:
        source_id = params.string("SourceIdentifier")
        source_type = params.string("SourceType")
        start, end = params.time("StartTime"), params.time("EndTime")
        duration = params.integer("Duration", lo=0, hi=20160)
        max_records = params.integer("MaxRecords")
        marker = params.string("Marker")
        if source_type is not None and source_type not in shapes.SOURCE_TYPES:
            raise ApiError(
                "InvalidParameterValue",
                f"SourceType: {source_type!r} is not one of {', '.join(shapes.SOURCE_TYPES)}",
            )
        if source_id is not None and source_type is None:
            raise ApiError(
                "InvalidParameterCombination", "SourceIdentifier needs a SourceType as well"
            )
        if duration is not None and start is not None and end is not None:
            raise ApiError(
                "InvalidParameterCombination", "Give Duration or StartTime and EndTime, not all"
            )
        now = time.time()
        if duration is not None:
            end = end if end is not None else (start + duration * 60 if start else now)
            start = start if start is not None else end - duration * 60
        end = end if end is not None else now
        start = start if start is not None else end - EVENT_WINDOW_S
        start = max(start, now - EVENT_HISTORY_S)
        records = []
        logs = [(n, read_events(ClusterDir(self.home, n).events_path)) for n in self.store.names()]
        # deleted groups' events, kept 14 days (cachefleet.event_archive)
        logs += [(n, archived(self.home, n, now)) for n in archived_names(self.home)]
        for name, events in logs:
            for event in events:
                rec = shapes.event_record(name, event)
                if not start <= rec[0] <= end:
                    continue
                if source_type is not None and rec[1] != source_type:
                    continue
                if source_id is not None and rec[2] != source_id.lower():
                    continue
                records.append(rec)
        records.sort(key=lambda r: r[0], reverse=True)
        items, next_marker = wire.page(records, marker, max_records)
        return {
            "Marker": next_marker,
            "Events": XmlList("Event", [shapes.event_xml(r) for r in items]),
        }

    async def describe_cache_engine_versions(self, params: Params) -> dict[str, Any]:
        engine = params.string("Engine")
        version = params.string("EngineVersion")
        family = params.string("CacheParameterGroupFamily")
        params.boolean("DefaultOnly")
        max_records = params.integer("MaxRecords")
        marker = params.string("Marker")
        records = [
            shapes.engine_version_record(e, v)
            for e, v in sorted(self.versions.items())
            if engine in (None, e) and version in (None, v)
        ]
        records = [r for r in records if family in (None, r["CacheParameterGroupFamily"])]
        items, next_marker = wire.page(records, marker, max_records)
        return {
            "Marker": next_marker,
            "CacheEngineVersions": XmlList("CacheEngineVersion", items),
        }


def make_app(api: Api) -> web.Application:
    app = web.Application(client_max_size=1024**2)
    app.router.add_route("GET", "/", api.handle)
    app.router.add_route("POST", "/", api.handle)
    from cachefleet.ops.metrics_all import mount as mount_metrics

    mount_metrics(app, api.home)  # /metrics: every cluster's series, from their supervisors
    from cachefleet.console.web import mount_serve

    mount_serve(app, api.home)  # the web console at /console/ (loopback Host names only)
    return app


async def _reaper(stop: asyncio.Event) -> None:
    """Clusters this process started are its children: collect the ones that exit."""
    while not stop.is_set():
        reap_children()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def serve(*, host: str, port: int, home: Path, account: Account, out: Out) -> int:
    api = Api(home, account, out)
    home.mkdir(parents=True, exist_ok=True)
    keys = api.access.keys()  # a broken credentials.yaml stops serve here, with its message
    api.versions = await asyncio.to_thread(engine_versions)
    runner = web.AppRunner(make_app(api), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    clusters = api.store.names()
    out(
        f"serving the ElastiCache API on http://{host}:{port}/ for {len(clusters)} cluster(s) "
        f"in {home} (region {account.region}, account {account.account})"
    )
    if keys is None:
        out(f"no {api.access.path}: every request is accepted, signed or not (local development)")
    else:
        out(f"requests are SigV4-verified against {len(keys)} key(s) in {api.access.path}")
        if api.access.path.stat().st_mode & 0o077:
            out(f"warning: {api.access.path} holds secrets and is readable by others: chmod 600")
    out(f"audit log: {api.access.audit_path}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reaper = asyncio.create_task(_reaper(stop), name="api.reaper")
    try:
        await stop.wait()
    finally:
        out("stopping the API; clusters keep running under their supervisors")
        for task in list(api.tasks):
            task.cancel()
        await asyncio.gather(*api.tasks, reaper, return_exceptions=True)
        await runner.cleanup()
    return 0
