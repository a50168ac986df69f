"""The console's routes under `serve`, in process (aiohttp's test server on loopback), for
clusters whose supervisor does not run: a memcached cluster and a cluster-mode-disabled group
are shown without crashing, and what does not apply is refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cachefleet.console.web import mount_serve
from cachefleet.plan import build_plan
from cachefleet.state import ClusterDir
from cachefleet.topology import parse_topology

MEMCACHED = {
    "name": "sessions",
    "engine": "memcached",
    "zones": ["az-a", "az-b"],
    "nodes": 2,
    "ports": {"base": 11301},
    "router": {"port": 11300},
}
GROUP = {
    "name": "group",
    "cluster_mode": "disabled",
    "zones": ["az-a", "az-b"],
    "replicas": 1,
    "ports": {"base": 7101},
}


def install(home: Path, raw: dict[str, Any], **extra: Any) -> None:
    plan = build_plan(
        parse_topology(raw), raw, engine_binary="valkey-server", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7200, **extra,
    )  # fmt: skip
    cdir = ClusterDir(home, plan.name)
    cdir.make()
    cdir.plan_path.write_text(plan.to_json())
    cdir.events_path.write_text(json.dumps({"v": 1, "ts": 1.0, "type": "cluster_created"}) + "\n")


def run(home: Path, body: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    async def main() -> None:
        app = web.Application()
        mount_serve(app, home)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await body(client)

    asyncio.run(main())


def test_stopped_clusters_of_every_mode(tmp_path: Path) -> None:
    install(tmp_path, MEMCACHED)
    install(tmp_path, GROUP, reader_port=7201)

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/console/api/clusters.json")
        listed = {c["name"]: c for c in (await resp.json())["clusters"]}
        assert listed["sessions"]["mode"] == "memcached" and not listed["sessions"]["running"]
        assert listed["group"]["href"] == "/console/c/group/"
        page = await client.get("/console/c/sessions/")
        text = await page.text()
        assert page.status == 200 and 'data-api="/console/c/sessions/api/"' in text
        view = await (await client.get("/console/c/sessions/api/cluster.json")).json()
        assert view["mode"] == "memcached" and view["slot_map"] is None
        assert {n["health"] for z in view["zones"] for n in z["nodes"]} == {"unknown"}
        view = await (await client.get("/console/c/group/api/cluster.json")).json()
        assert view["mode"] == "standalone" and "Not shown" in view["slot_note"]
        # never started: nothing spent this month (the page shows it beside the title)
        assert view["cost"]["month_to_date_usd"] == 0.0
        assert view["cost"]["since"].endswith("-01T00:00:00+00:00")
        history = await (await client.get("/console/c/group/api/history.json")).json()
        assert history["t"] == []
        post = await client.post("/console/c/sessions/api/failover", json={"shard": 1})
        assert post.status == 409
        assert (await client.get("/console/c/nope/api/cluster.json")).status == 404
        assert (await client.get("/console/c/..%2f..%2fetc/")).status == 404
        js = await client.get("/console/static/console.js")
        assert js.status == 200 and "EventSource" in await js.text()
        assert (await client.get("/console/static/index.html")).status == 404
        evil = await client.get("/console/api/clusters.json", headers={"Host": "evil.example"})
        assert evil.status == 403

    run(tmp_path, body)


def test_event_stream_sends_the_backlog(tmp_path: Path) -> None:
    install(tmp_path, MEMCACHED)

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/console/c/sessions/api/events")
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        seen = b""
        async with asyncio.timeout(5):
            while b"cluster_created" not in seen:
                seen += await resp.content.readany()
        assert b"id: " in seen and b'data: {"v":1' in seen
        resp.close()

    run(tmp_path, body)
