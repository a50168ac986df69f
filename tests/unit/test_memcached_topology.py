"""Memcached topologies: nodes instead of shards, allow-listed parameters, copies."""

from __future__ import annotations

from typing import Any

import pytest

from cachefleet.errors import TopologyError
from cachefleet.topology import Memcached, parse_topology

BASE: dict[str, Any] = {
    "name": "sessions",
    "engine": "memcached",
    "zones": ["az-a", "az-b", "az-c"],
    "nodes": 3,
    "node_type": "cache.micro",  # 64 MiB
    "ports": {"base": 11301},
    "router": {"port": 11300},
}


def test_a_memcached_cluster_has_nodes_and_no_sentinels() -> None:
    topo = parse_topology({**BASE, "parameters": {"threads": 2, "max_item_size": "512k"}})
    assert topo.is_memcached and topo.shards == 3 and topo.replicas_per_shard == 0
    assert topo.sentinels.count == 0
    assert topo.memcached == Memcached(nodes=3, threads=2, max_item_size=512 * 1024)


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"shards": 3}, "shards", "memcached clusters have nodes"),
        ({"replicas_per_shard": 1}, "replicas_per_shard", "memcached clusters have nodes"),
        ({"nodes": 0}, "nodes", "out of range"),
        ({"nodes": None}, "nodes", "is required"),
        ({"parameters": {"maxmemory": 1}}, "parameters.maxmemory", "not an allowed"),
        ({"parameters": {"threads": 65}}, "parameters.threads", "out of range"),
        ({"parameters": {"max_item_size": "2x"}}, "parameters.max_item_size", "must be a size"),
        ({"parameters": {"max_item_size": "40m"}}, "parameters.max_item_size", "more than half"),
        ({"parameters": {"growth_factor": 1}}, "parameters.growth_factor", "out of range"),
        ({"parameters": {"cas": "no"}}, "parameters.cas", "true or false"),
        ({"sentinels": {"count": 3}}, "sentinels.count", "no replicas to fail over"),
        ({"persistence": {"appendonly": True}}, "persistence.appendonly", "no data on disk"),
        ({"memcached": {"copies": 4}}, "memcached.copies", "out of range"),
        ({"nodes": 1, "memcached": {"copies": 2}}, "memcached.copies", "at least as many"),
        ({"memcached": {"replicas": 2}}, "memcached.replicas", "unknown field"),
        ({"ports": {"base": 65534}}, "ports.base", "need ports"),
    ],
)
def test_memcached_topology_errors_name_the_field(
    change: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology({**BASE, **change}, "t.yaml")
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize("field", ["nodes", "parameters", "memcached"])
def test_memcached_fields_are_refused_for_other_engines(field: str) -> None:
    doc = {k: v for k, v in BASE.items() if k != "nodes"}
    with pytest.raises(TopologyError) as err:
        parse_topology({**doc, "engine": "valkey", field: 3 if field == "nodes" else {}})
    assert err.value.field == field


def test_copies_and_the_router_port_next_to_the_nodes() -> None:
    topo = parse_topology({**BASE, "memcached": {"copies": 2}, "router": {"port": 21301}})
    assert topo.memcached is not None and topo.memcached.copies == 2
