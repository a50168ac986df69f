"""Memcached topologies: nodes instead of shards, allow-listed parameters, copies."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cachefleet.engine import resolve_engine_binary
from cachefleet.errors import EngineNotFound, TopologyError
from cachefleet.plan import build_plan
from cachefleet.topology import Memcached, parse_topology
from shard.config import memcached_argv

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


@pytest.mark.parametrize("field", ["nodes", "memcached"])
def test_memcached_fields_are_refused_for_other_engines(field: str) -> None:
    doc = {k: v for k, v in BASE.items() if k != "nodes"}
    with pytest.raises(TopologyError) as err:
        parse_topology({**doc, "engine": "valkey", field: 3 if field == "nodes" else {}})
    assert err.value.field == field


def test_memcached_parameters_are_not_engine_parameters() -> None:
    doc = {k: v for k, v in BASE.items() if k != "nodes"}
    with pytest.raises(TopologyError) as err:
        parse_topology({**doc, "engine": "valkey", "parameters": {"threads": 8}})
    assert err.value.field == "parameters.threads"


def test_copies_and_the_router_port_next_to_the_nodes() -> None:
    topo = parse_topology({**BASE, "memcached": {"copies": 2}, "router": {"port": 21301}})
    assert topo.memcached is not None and topo.memcached.copies == 2


def test_a_missing_memcached_binary_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(EngineNotFound, match="Debian package `memcached`"):
        resolve_engine_binary("memcached")


def test_parameters_become_memcached_options() -> None:
    raw = {
        **BASE,
        "parameters": {"threads": 2, "max_item_size": "2m", "cas": False, "evictions": False},
    }
    plan = build_plan(
        parse_topology(raw), raw, engine_binary="/usr/bin/memcached", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=11300,
    )  # fmt: skip
    node = plan.nodes[1]
    argv = memcached_argv(plan, node, Path("/s/c/nodes/x/memcached.pid"), as_root=True)
    opts = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[0] == "/usr/bin/memcached"
    assert opts["-l"] == "127.0.2.1" and opts["-p"] == "11302" and opts["-U"] == "0"
    assert opts["-m"] == "64" and opts["-t"] == "2" and opts["-I"] == str(2 * 1024**2)
    assert opts["-P"] == "/s/c/nodes/x/memcached.pid"  # the state dir in argv: ours to stop
    assert "-C" in argv and "-M" in argv and argv[-2:] == ["-u", "root"]
