"""Cluster mode disabled in the topology and the plan: one shard with replicas, endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from cachefleet.errors import TopologyError
from cachefleet.plan import Plan, build_plan, place
from cachefleet.topology import Endpoints, parse_topology

BUS = ("127.0.0.1", 1883)


def doc(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "sessions",
        "engine": "valkey",
        "cluster_mode": "disabled",
        "zones": ["az-a", "az-b", "az-c"],
        "replicas": 2,
        "endpoints": {"primary": {"port": 7200}, "reader": {"port": 7201}},
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def test_defaults_stay_cluster_mode_enabled() -> None:
    topo = parse_topology({"name": "c", "zones": ["az-a"]})
    assert topo.cluster_mode == "enabled" and not topo.standalone and topo.endpoints is None


def test_disabled_group_is_one_shard_with_its_replicas() -> None:
    topo = parse_topology(doc())
    assert topo.standalone
    assert (topo.shards, topo.replicas_per_shard, topo.nodes_total) == (1, 2, 3)
    assert topo.endpoints == Endpoints(primary_port=7200, reader_port=7201)


def test_endpoint_ports_are_optional() -> None:
    topo = parse_topology(doc(endpoints=None))
    assert topo.endpoints == Endpoints(None, None)
    topo = parse_topology(doc(endpoints={"primary": {"port": 7300}}))
    assert topo.endpoints == Endpoints(7300, None)


@pytest.mark.parametrize("replicas", [0, 1, 5])
def test_replicas_range(replicas: int) -> None:
    assert parse_topology(doc(replicas=replicas)).replicas_per_shard == replicas


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"shards": 2}, "shards", "one shard"),
        ({"replicas_per_shard": 1}, "replicas_per_shard", "use replicas"),
        ({"replicas": 6}, "replicas", "out of range"),
        ({"cluster_mode": "off"}, "cluster_mode", "not one of"),
        ({"endpoints": {"primary": {"port": 7200}, "reader": {"port": 7200}}}, "endpoints.reader",
         "port of its own"),
        ({"endpoints": {"writer": {"port": 1}}}, "endpoints.writer", "unknown field"),
        ({"endpoints": {"primary": {"port": 7101}}, "ports": {"base": 7100}},
         "endpoints.primary.port", "collides"),
        ({"router": {"port": 7000}}, "router.port", "endpoints.primary.port"),
        ({"durability": {"min_replicas_to_write": 3}}, "durability.min_replicas_to_write",
         "greater than replicas (2)"),
    ],
)  # fmt: skip
def test_disabled_errors_name_the_field(change: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology(doc(**change), "g.yaml")
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize("field", ["replicas", "endpoints"])
def test_enabled_refuses_disabled_only_fields(field: str) -> None:
    data = {"name": "c", "zones": ["az-a"], field: 1 if field == "replicas" else {}}
    with pytest.raises(TopologyError) as err:
        parse_topology(data)
    assert err.value.field == field


def test_memcached_has_no_cluster_mode() -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology({"name": "m", "engine": "memcached", "zones": ["az-a"], "nodes": 2,
                        "cluster_mode": "disabled"})  # fmt: skip
    assert err.value.field == "cluster_mode"


@pytest.mark.parametrize("zones", [2, 3, 6])
@pytest.mark.parametrize("replicas", range(0, 6))
def test_primary_and_replicas_in_different_zones(zones: int, replicas: int) -> None:
    names = ["az-a", "az-b", "az-c", "az-d", "az-e", "az-f"][:zones]
    topo = parse_topology(doc(zones=names, replicas=replicas))
    placed = place(topo)
    assert [m for _, m, _ in placed] == list(range(replicas + 1))
    primary_zone = placed[0][2]
    assert all(zone != primary_zone for _, m, zone in placed if m)
    replica_zones = [zone for _, m, zone in placed if m]
    assert len(set(replica_zones)) == min(replicas, zones - 1)


def test_plan_has_one_shard_without_slots_and_keeps_the_endpoints() -> None:
    topo = parse_topology(doc(ports={"base": 7101}))
    plan = build_plan(
        topo, doc(), engine_binary="valkey-server", node_ports=None, bus=BUS, router_port=7200,
        reader_port=7201,
    )  # fmt: skip
    assert plan.slot_ranges == ()
    assert {n.shard for n in plan.nodes} == {1}
    assert [n.name for n in plan.nodes] == [f"sessions-0001-00{i}" for i in (1, 2, 3)]
    again = Plan.from_json(plan.to_json())
    assert (again.router_port, again.reader_port, again.slot_ranges) == (7200, 7201, ())


def test_plan_of_enabled_cluster_has_no_reader_port() -> None:
    raw = {"name": "c", "zones": ["az-a"], "shards": 1}
    topo = parse_topology(raw)
    plan = build_plan(
        topo, raw, engine_binary="x", node_ports=[(1, 2), (3, 4)], bus=BUS, router_port=9
    )
    assert plan.reader_port is None and "reader_port" not in plan.to_json()
    assert Plan.from_json(plan.to_json()).reader_port is None
