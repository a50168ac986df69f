"""Auto Discovery payloads byte for byte, the discovery layout, and consistent hashing."""

from __future__ import annotations

import collections

import pytest

from cachefleet import discovery
from cachefleet.layout import Layout
from cachefleet.ops.memcached import only_nodes_changed, scaled_plan
from cachefleet.plan import Plan, build_plan
from cachefleet.topology import parse_topology
from router.memcache.ring import Ring, key_hash, node_points

BASE = {
    "name": "sessions",
    "engine": "memcached",
    "zones": ["az-a", "az-b", "az-c"],
    "ports": {"base": 11301},
    "router": {"port": 11300},
}


def memcached_plan(nodes: int = 3, zones: int = 3) -> Plan:
    raw = {**BASE, "zones": [f"az-{c}" for c in "abcdef"[:zones]], "nodes": nodes}
    return build_plan(
        parse_topology(raw), raw, engine_binary="/usr/bin/memcached", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=11300,
    )  # fmt: skip


def test_config_get_cluster_reply_is_the_managed_service_format() -> None:
    nodes = [
        discovery.Entry("sessions-0002", "127.0.2.1", 11302),
        discovery.Entry("sessions-0001", "127.0.1.1", 11301),
    ]
    body = b"12\nsessions-0001|127.0.1.1|11301 sessions-0002|127.0.2.1|11302\n"
    assert discovery.payload(12, nodes) == body
    assert discovery.config_reply(12, nodes) == (
        b"CONFIG cluster 0 %d\r\n" % len(body) + body + b"\r\nEND\r\n"
    )
    assert len(body) == 63  # the version line and the node line, each with its \n
    assert discovery.value_block(12, nodes) == (
        b"VALUE AmazonElastiCache:cluster 0 63\r\n" + body + b"\r\n"
    )


def test_plan_places_node_i_in_zone_i_mod_z_on_base_plus_i() -> None:
    plan = memcached_plan(nodes=5, zones=3)
    assert [(n.name, n.zone, n.host, n.port, n.bus_port) for n in plan.nodes] == [
        ("sessions-0001", "az-a", "127.0.1.1", 11301, 0),
        ("sessions-0002", "az-b", "127.0.2.1", 11302, 0),
        ("sessions-0003", "az-c", "127.0.3.1", 11303, 0),
        ("sessions-0004", "az-a", "127.0.1.1", 11304, 0),
        ("sessions-0005", "az-b", "127.0.2.1", 11305, 0),
    ]
    assert [n.node_id for n in plan.nodes] == ["0001", "0002", "0003", "0004", "0005"]


def test_the_discovery_layout_validates_against_the_plan_and_lists_every_node() -> None:
    plan = memcached_plan()
    layout = discovery.memcached_layout(plan, 7)
    again = Layout.from_dict(layout.to_dict(), plan)  # what routers accept from the bus
    assert again == layout
    assert [e.host for e in discovery.entries(layout)] == [n.name for n in plan.nodes]
    assert discovery.config_reply(7, discovery.entries(layout)).startswith(b"CONFIG cluster 0 ")


def test_ring_points_are_ketama_style() -> None:
    points = node_points("n1")
    assert len(points) == 160 and all(0 <= p < 2**32 for p in points)
    assert key_hash(b"foo") == int.from_bytes(bytes.fromhex("acbd18db"), "little")


def test_ring_spreads_keys_and_is_stable() -> None:
    ring = Ring(["n1", "n2", "n3"])
    keys = [b"key:%d" % i for i in range(30000)]
    counts = collections.Counter(ring.node(k) for k in keys)
    assert set(counts) == {"n1", "n2", "n3"}
    assert all(8000 < c < 12000 for c in counts.values())
    assert all(Ring(["n3", "n1", "n2"]).node(k) == ring.node(k) for k in keys[:1000])


@pytest.mark.parametrize("before", [3, 4, 8])
def test_adding_a_node_moves_about_one_in_n_plus_one_keys_and_only_to_it(before: int) -> None:
    old = Ring([f"n{i}" for i in range(before)])
    new = Ring([f"n{i}" for i in range(before + 1)])
    keys = [b"k%d" % i for i in range(20000)]
    moved = [k for k in keys if old.node(k) != new.node(k)]
    assert all(new.node(k) == f"n{before}" for k in moved)
    share = len(moved) / len(keys)
    assert 0.5 / (before + 1) < share < 1.5 / (before + 1)


def test_a_scaled_plan_keeps_the_nodes_both_have_and_places_new_ones_round_robin() -> None:
    old = memcached_plan(nodes=3)
    assert only_nodes_changed(old, {**old.raw_topology, "nodes": 5})
    assert not only_nodes_changed(old, dict(old.raw_topology))
    assert not only_nodes_changed(old, {**old.raw_topology, "nodes": 5, "node_type": "cache.large"})
    raw = {**old.raw_topology, "nodes": 5}
    grown = scaled_plan(old, parse_topology(raw), raw)
    assert grown.nodes[:3] == old.nodes
    assert [(n.name, n.zone, n.port) for n in grown.nodes[3:]] == [
        ("sessions-0004", "az-a", 11304),
        ("sessions-0005", "az-b", 11305),
    ]
    raw2 = {**old.raw_topology, "nodes": 2}
    assert scaled_plan(grown, parse_topology(raw2), raw2).nodes == grown.nodes[:2]


def test_the_version_is_read_back_from_a_config_reply() -> None:
    from cachefleet.ops.memcached import discovery_version

    nodes = [discovery.Entry("sessions-0001", "127.0.1.1", 11301)]
    assert discovery_version(discovery.config_reply(42, nodes)) == 42
    assert discovery_version(b"SERVER_ERROR no node list yet\r\n") is None
    assert discovery_version(None) is None
    assert discovery_version(b"CONFIG cluster 0 3\r\nx\n\r\nEND\r\n") is None
