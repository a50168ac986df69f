"""The web console's pure parts: the sample ring, the page's JSON, request checks, the event
log read by offsets."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from cachefleet.console.actions import Actions
from cachefleet.console.checks import host_name, refusal
from cachefleet.console.history import SIZE, SampleRing
from cachefleet.console.view import cluster_entry, cluster_view, slot_map
from cachefleet.console.web import backlog_offset, page, read_event_lines
from cachefleet.errors import CachefleetError
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.metrics import (
    CommandClasses,
    NodeReading,
    Sample,
    down_sample,
    memcached_samples,
    node_samples,
)
from cachefleet.plan import Plan, build_plan
from cachefleet.topology import parse_topology

SHARDED = {
    "name": "c",
    "zones": ["az-a", "az-b"],
    "shards": 2,
    "replicas_per_shard": 1,
    "ports": {"base": 30000},
}
MEMCACHED = {
    "name": "m",
    "engine": "memcached",
    "zones": ["az-a", "az-b"],
    "nodes": 2,
    "ports": {"base": 11301},
    "router": {"port": 11300},
}
STANDALONE = {
    "name": "g",
    "cluster_mode": "disabled",
    "zones": ["az-a", "az-b"],
    "replicas": 1,
    "ports": {"base": 7101},
}


def make_plan(raw: dict[str, Any]) -> Plan:
    extra = {"reader_port": 7201} if raw.get("cluster_mode") == "disabled" else {}
    return build_plan(
        parse_topology(raw), raw, engine_binary="valkey-server", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7200, **extra,
    )  # fmt: skip


def layout_of(plan: Plan, primaries: dict[int, str], epoch: int = 1) -> Layout:
    shards = []
    for i, sid in enumerate(sorted({n.shard for n in plan.nodes})):
        role = {n.name: "primary" if n.name == primaries[sid] else "replica" for n in plan.nodes}
        nodes = tuple(
            LayoutNode(n.name, "", n.shard, n.zone, n.host, n.port, n.bus_port, role[n.name])
            for n in plan.shard_nodes(sid)
        )
        slots = (plan.slot_ranges[i],) if plan.slot_ranges else ()
        shards.append(LayoutShard(sid, slots, nodes))
    return Layout(plan.name, epoch, tuple(shards))


def engine_samples(plan: Plan, node: str, role: str, ops: float = 10.0) -> list[Sample]:
    spec = plan.node(node)
    info: dict[str, object] = {
        "role": "master" if role == "primary" else "slave",
        "used_memory": 1024**2,
        "maxmemory": 4 * 1024**2,
        "connected_clients": 3,
        "instantaneous_ops_per_sec": ops,
    }
    if role != "primary":
        info.update(master_link_status="up", master_last_io_seconds_ago=2)
    reading = NodeReading.from_info(info, {}, CommandClasses(), 1.0)
    return node_samples(
        reading, None, cluster=plan.name, shard=spec.shard, node=node, zone=spec.zone
    )


# -- the sample ring ------------------------------------------------------------------------


def test_ring_keeps_one_point_per_window_and_at_most_size() -> None:
    plan = make_plan(SHARDED)
    samples = engine_samples(plan, "c-0001-001", "primary")
    ring = SampleRing()
    kept = [ring.offer(1000.0 + 2 * i, samples) for i in range(30)]  # a pass every 2 s, 60 s
    assert sum(kept) == 12  # one per 5 s window: 1000..1058 spans windows 200..211
    stamps = [p.ts for p in ring.points]
    assert all(b - a >= 4 for a, b in itertools.pairwise(stamps))
    for i in range(3 * SIZE):
        ring.offer(2000.0 + 5 * i, samples)
    assert len(ring.points) == SIZE
    assert ring.points[-1].ts == 2000.0 + 5 * (3 * SIZE - 1)


def test_ring_json_aligns_series_and_leaves_gaps_for_missing_nodes() -> None:
    plan = make_plan(SHARDED)
    ring = SampleRing()
    both = engine_samples(plan, "c-0001-001", "primary", ops=5) + engine_samples(
        plan, "c-0001-002", "replica", ops=7
    )
    ring.offer(100.0, both)
    ring.offer(105.0, engine_samples(plan, "c-0001-001", "primary", ops=6))
    ring.offer(110.0, [*both, down_sample("c", "c-0002-001", "az-b", "primary", 2)])
    data = json.loads(json.dumps(ring.to_json()))  # plain JSON
    assert data["t"] == [100.0, 105.0, 110.0]
    assert data["window_s"] == 900
    assert data["series"]["ops_per_sec"] == {
        "c-0001-001": [5.0, 6.0, 5.0],
        "c-0001-002": [7.0, None, 7.0],
    }
    assert data["series"]["memory"]["c-0001-001"] == [1024**2] * 3
    assert data["series"]["lag_s"] == {"c-0001-002": [2.0, None, 2.0]}  # replicas only
    assert "c-0002-001" not in data["series"]["connections"]  # down: no point


def test_ring_takes_memcached_nodes() -> None:
    plan = make_plan(MEMCACHED)
    n = plan.nodes[0]
    stats = {"bytes": "2048", "curr_connections": "2"}
    ring = SampleRing()
    ring.offer(1.0, memcached_samples(stats, cluster="m", node=n.name, zone=n.zone))
    series = ring.to_json()["series"]
    assert series["memory"] == {n.name: [2048.0]}
    assert series["connections"] == {n.name: [2.0]}
    assert series["ops_per_sec"] == {} and series["lag_s"] == {}


# -- the page's JSON ------------------------------------------------------------------------


def test_slot_map_merges_adjacent_runs_of_a_shard() -> None:
    assert slot_map([(2, [(100, 199)]), (1, [(0, 49), (50, 99), (300, 400)])]) == [
        [0, 99, 1],
        [100, 199, 2],
        [300, 400, 1],
    ]


def test_cluster_view_zones_shards_health_and_the_engines_roles() -> None:
    plan = make_plan(SHARDED)
    layout = layout_of(plan, {1: "c-0001-001", 2: "c-0002-001"}, epoch=4)
    # shard 1 failed over: the engine says c-0001-002 leads before the layout says so
    samples = engine_samples(plan, "c-0001-001", "replica") + engine_samples(
        plan, "c-0001-002", "primary"
    )
    samples += engine_samples(plan, "c-0002-002", "replica")
    samples.append(down_sample("c", "c-0002-001", "az-b", "primary", 2))
    view = cluster_view(plan, layout, samples, sdown={"s1": frozenset({"c-0002-002"})})
    json.dumps(view)
    assert [z["name"] for z in view["zones"]] == ["az-a", "az-b"]
    nodes = {n["name"]: n for z in view["zones"] for n in z["nodes"]}
    assert set(nodes) == {n.name for n in plan.nodes}
    for zone in view["zones"]:
        assert all(n["zone"] == zone["name"] for n in zone["nodes"])
    assert nodes["c-0001-002"]["role"] == "primary" and nodes["c-0001-002"]["health"] == "ok"
    assert nodes["c-0001-001"]["role"] == "replica" and nodes["c-0001-001"]["lag_s"] == 2
    assert nodes["c-0002-001"]["health"] == "down"
    assert nodes["c-0002-001"]["role"] == "primary"  # the layout's, as it did not answer
    assert nodes["c-0002-001"]["ops_per_sec"] is None
    assert nodes["c-0002-002"]["health"] == "sdown"
    assert nodes["c-0001-002"]["memory"] == 1024**2
    assert nodes["c-0001-002"]["memory_ratio"] == 0.25
    assert nodes["c-0001-002"]["connections"] == 3
    shards = {s["id"]: s for s in view["shards"]}
    assert shards[1]["primary"] == "c-0001-002"
    assert shards[2]["primary"] == "c-0002-001"  # down, and no other claims it
    assert shards[1]["slots"] + shards[2]["slots"] == 16384
    assert view["slot_map"] == [[0, 8191, 1], [8192, 16383, 2]]
    assert view["config_epoch"] == 4
    assert view["can"] == {"failover": True, "snapshot": True}


def test_cluster_view_prefers_the_layouts_primary_when_two_claim() -> None:
    plan = make_plan(SHARDED)
    layout = layout_of(plan, {1: "c-0001-002", 2: "c-0002-001"})
    samples = engine_samples(plan, "c-0001-001", "primary") + engine_samples(
        plan, "c-0001-002", "primary"
    )
    view = cluster_view(plan, layout, samples)
    assert view["shards"][0]["primary"] == "c-0001-002"


def test_cluster_view_without_samples_or_layout_is_unknown_not_a_crash() -> None:
    plan = make_plan(SHARDED)
    view = cluster_view(plan, None, [], supervised=False)
    assert {n["health"] for z in view["zones"] for n in z["nodes"]} == {"unknown"}
    assert view["can"] == {"failover": False, "snapshot": False}
    assert view["slot_map"] == [[0, 8191, 1], [8192, 16383, 2]]  # as planned


def test_memcached_and_cluster_mode_disabled_show_no_slot_bar() -> None:
    mc = make_plan(MEMCACHED)
    n = mc.nodes[0]
    samples = memcached_samples({"curr_connections": "2"}, cluster="m", node=n.name, zone=n.zone)
    view = cluster_view(mc, None, samples)
    assert view["mode"] == "memcached" and view["slot_map"] is None and view["shards"] == []
    assert "Not shown" in view["slot_note"]
    assert not view["can"]["failover"] and not view["can"]["snapshot"]
    nodes = {n["name"]: n for z in view["zones"] for n in z["nodes"]}
    assert nodes[n.name]["role"] == "node" and nodes[n.name]["connections"] == 2
    group = make_plan(STANDALONE)
    first = group.nodes[0].name
    view = cluster_view(group, layout_of(group, {1: first}), [])
    assert view["mode"] == "standalone" and view["slot_map"] is None
    assert "Not shown" in view["slot_note"]
    assert [s["primary"] for s in view["shards"]] == [first]
    assert view["can"]["failover"]


def test_cluster_entry() -> None:
    plan = make_plan(SHARDED)
    entry = cluster_entry("c", plan, running=True, href="/")
    assert entry["shards"] == 2 and entry["nodes"] == 4 and entry["mode"] == "cluster"
    assert cluster_entry("x", None, running=False, href=None)["engine"] is None


# -- request checks ---------------------------------------------------------------------------

JSON_POST = {"Host": "127.0.0.1:9000", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("host", "name"),
    [("127.0.0.1:9000", "127.0.0.1"), ("[::1]:80", "::1"), ("LocalHost", "localhost")],
)
def test_host_name(host: str, name: str) -> None:
    assert host_name(host) == name


def test_reads_need_a_loopback_host() -> None:
    assert refusal("GET", {"Host": "127.0.0.1:9000"}) == ""
    assert refusal("GET", {"Host": "localhost:9000"}) == ""
    assert refusal("GET", {"Host": "[::1]:9000"}) == ""
    assert "not served" in refusal("GET", {"Host": "evil.example:9000"})  # DNS rebinding
    assert "not served" in refusal("GET", {})
    assert refusal("GET", {"Host": "cache.lan:9000"}, frozenset({"cache.lan"})) == ""


def test_actions_need_this_origin_and_json() -> None:
    assert refusal("POST", {**JSON_POST, "Origin": "http://127.0.0.1:9000"}) == ""
    assert refusal("POST", JSON_POST) == ""  # not a browser: no Origin
    for origin in ("http://evil.example", "http://127.0.0.1:9001", "null", "file://"):
        assert "cross-origin" in refusal("POST", {**JSON_POST, "Origin": origin}), origin
    assert "cross-site" in refusal("POST", {**JSON_POST, "Sec-Fetch-Site": "cross-site"})
    form = {**JSON_POST, "Content-Type": "application/x-www-form-urlencoded"}
    assert "application/json" in refusal("POST", form)
    assert refusal("POST", {**JSON_POST, "Content-Type": "text/plain"})


# -- actions --------------------------------------------------------------------------------


def test_actions_run_as_tasks_and_keep_their_outcome() -> None:
    async def scenario() -> list[dict[str, Any]]:
        actions = Actions()
        gate = asyncio.Event()

        async def ok() -> str:
            await gate.wait()
            return "moved"

        async def broken() -> str:
            raise CachefleetError("shard 2 has no healthy replica to fail over to")

        actions.start("failover", "shard 1", ok)
        actions.start("failover", "shard 2", broken)
        await asyncio.sleep(0)
        assert actions.running("failover", "shard 1") is not None
        assert actions.running("failover", "shard 2") is None  # it failed at once
        gate.set()
        await asyncio.gather(*actions.tasks)
        assert actions.running("failover", "shard 1") is None
        never = asyncio.Event()
        actions.start("snapshot", "", never.wait)  # type: ignore[arg-type]  # left running
        await asyncio.sleep(0)
        await actions.close()  # stopping the console ends it
        return actions.to_json()

    newest_first = asyncio.run(scenario())
    assert [(a["target"], a["state"]) for a in newest_first] == [
        ("", "failed"),
        ("shard 2", "failed"),
        ("shard 1", "done"),
    ]
    assert newest_first[1]["message"] == "shard 2 has no healthy replica to fail over to"
    assert newest_first[2]["message"] == "moved" and newest_first[2]["ended"] is not None


# -- the event log and the page -----------------------------------------------------------------


def test_event_lines_by_offset(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert read_event_lines(path, 0) == ([], 0)
    path.write_text('{"type":"a"}\nnot json\n{"type":"b"}\n{"type":"c"')  # the last is partial
    events, offset = read_event_lines(path, 0)
    assert [e["type"] for _, e in events] == ["a", "b"]
    assert offset == events[-1][0] == len('{"type":"a"}\nnot json\n{"type":"b"}\n')
    with open(path, "a") as f:
        f.write("}\n")
    more, offset2 = read_event_lines(path, offset)
    assert [e["type"] for _, e in more] == ["c"] and offset2 == path.stat().st_size
    path.write_text('{"type":"new"}\n')  # recreated, shorter than the offset
    again, _ = read_event_lines(path, offset2)
    assert [e["type"] for _, e in again] == ["new"]


def test_backlog_starts_at_a_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert backlog_offset(path) == 0
    lines = [json.dumps({"type": "x", "n": i}) + "\n" for i in range(200)]
    path.write_text("".join(lines))
    offset = backlog_offset(path, 1000)
    events, _ = read_event_lines(path, offset)
    assert events and events[-1][1]["n"] == 199
    assert path.stat().st_size - offset <= 1000
    assert path.read_text()[offset - 1] == "\n"


def test_page_escapes_what_it_fills_in() -> None:
    text = page(title="<t>", cluster='a"b', api="/api/", clusters_api="/x", static="/s/")
    assert 'data-cluster="a&quot;b"' in text and "&lt;t&gt;" in text
    assert 'href="/s/console.css"' in text and "{{" not in text
