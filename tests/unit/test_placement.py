"""Placement of primaries and replicas over zones, node names and ports (pure, no sockets)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cachefleet.plan import Plan, build_plan, place
from cachefleet.slots import split_slots
from cachefleet.topology import Topology, parse_topology

ZONE_NAMES = ["az-a", "az-b", "az-c", "az-d", "az-e", "az-f"]
SHARD_COUNTS = range(1, 13)
BUS = ("127.0.0.1", 1883)


def raw(zones: int, shards: int, replicas: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "fleet",
        "zones": ZONE_NAMES[:zones],
        "shards": shards,
        "replicas_per_shard": replicas,
        **extra,
    }


def topo(zones: int, shards: int, replicas: int, **extra: Any) -> Topology:
    return parse_topology(raw(zones, shards, replicas, **extra), "t.yaml")


def by_shard(placed: list[tuple[int, int, str]]) -> dict[int, dict[int, str]]:
    out: dict[int, dict[int, str]] = {}
    for shard, member, zone in placed:
        out.setdefault(shard, {})[member] = zone
    return out


GRID = [(z, r) for z in range(1, 7) for r in range(0, 6)]


@pytest.mark.parametrize(("zones", "replicas"), GRID)
def test_every_node_placed_once(zones: int, replicas: int) -> None:
    for shards in SHARD_COUNTS:
        t = topo(zones, shards, replicas)
        placed = place(t)
        assert len(placed) == t.nodes_total == shards * (1 + replicas)
        assert len({(s, m) for s, m, _ in placed}) == len(placed)
        assert {s for s, _, _ in placed} == set(range(1, shards + 1))
        members = by_shard(placed)
        for shard in members:
            assert sorted(members[shard]) == list(range(1 + replicas))
        assert {z for _, _, z in placed} <= set(t.zones)


def _replica_zone_params() -> list[Any]:
    params = []
    for zones, replicas in GRID:
        if zones == 1 or replicas == 0:
            continue  # one zone: nowhere else to go; no replicas: nothing to check
        params.append(pytest.param(zones, replicas, id=f"z{zones}-r{replicas}"))
    return params


@pytest.mark.parametrize(("zones", "replicas"), _replica_zone_params())
def test_no_replica_in_its_primarys_zone(zones: int, replicas: int) -> None:
    for shards in SHARD_COUNTS:
        for shard, members in by_shard(place(topo(zones, shards, replicas))).items():
            primary_zone = members[0]
            replica_zones = [zone for member, zone in members.items() if member]
            assert len(replica_zones) == replicas, (shards, shard)
            assert primary_zone not in replica_zones, (shards, shard, replica_zones)


@pytest.mark.parametrize(("zones", "replicas"), [(z, r) for z, r in GRID if r < z])
def test_shard_members_in_distinct_zones_when_enough_zones(zones: int, replicas: int) -> None:
    for shards in SHARD_COUNTS:
        for members in by_shard(place(topo(zones, shards, replicas))).values():
            replica_zones = [z for m, z in members.items() if m]
            assert len(set(replica_zones)) == len(replica_zones)
            # replicas < zones leaves room for the primary too
            assert len(set(members.values())) == len(members)


@pytest.mark.parametrize(("zones", "replicas"), [(z, r) for z, r in GRID if r + 1 >= z])
def test_every_zone_holds_a_copy_when_members_cover_zones(zones: int, replicas: int) -> None:
    for shards in SHARD_COUNTS:
        for members in by_shard(place(topo(zones, shards, replicas))).values():
            assert set(members.values()) == set(ZONE_NAMES[:zones])


@pytest.mark.parametrize("zones", range(1, 7))
@pytest.mark.parametrize("replicas", [0, 1, 5])
def test_primaries_spread_round_robin(zones: int, replicas: int) -> None:
    for shards in SHARD_COUNTS:
        members = by_shard(place(topo(zones, shards, replicas)))
        primary_zones = [members[s][0] for s in range(1, shards + 1)]
        counts = Counter(primary_zones)
        per_zone = [counts.get(z, 0) for z in ZONE_NAMES[:zones]]
        assert max(per_zone) - min(per_zone) <= 1
        # consecutive shards' primaries go to consecutive zones
        assert primary_zones == [ZONE_NAMES[(s - 1) % zones] for s in range(1, shards + 1)]


@pytest.mark.parametrize("zones", range(1, 7))
def test_nodes_spread_evenly_over_zones(zones: int) -> None:
    # with as many members as zones, every zone gets exactly one copy of each shard
    t = topo(zones, 12, zones - 1)
    counts = Counter(z for _, _, z in place(t))
    assert set(counts.values()) == {12}


def test_large_yaml_layout() -> None:
    # 6 shards x 3 members over 3 zones: each shard has one copy in every zone
    t = topo(3, 6, 2)
    members = by_shard(place(t))
    assert members[1] == {0: "az-a", 1: "az-b", 2: "az-c"}
    assert members[2] == {0: "az-b", 1: "az-c", 2: "az-a"}
    assert members[4][0] == "az-a"


NAME_RE = re.compile(r"^fleet-(\d{4})-(\d{3})$")


@pytest.mark.parametrize(("zones", "shards", "replicas"), [(3, 12, 2), (1, 1, 0), (6, 10, 5)])
def test_node_names(zones: int, shards: int, replicas: int) -> None:
    t = topo(zones, shards, replicas, ports={"base": 20000})
    plan = build_plan(
        t,
        raw(zones, shards, replicas),
        engine_binary="/bin/true",
        node_ports=None,
        bus=BUS,
        router_port=7100,
    )
    names = [n.name for n in plan.nodes]
    assert len(set(names)) == len(names)
    for node in plan.nodes:
        m = NAME_RE.match(node.name)
        assert m, node.name
        # <cluster>-<shard:04>-<nnn>: members counted from 001 (the initial primary)
        assert (int(m.group(1)), int(m.group(2))) == (node.shard, node.member + 1)
    assert plan.node("fleet-0001-001").member == 0
    assert plan.node(f"fleet-{shards:04d}-{replicas + 1:03d}").member == replicas
    with pytest.raises(KeyError):
        plan.node("fleet-0000-001")


def fixed_plan(zones: int = 3, shards: int = 3, replicas: int = 1, base: int = 7101) -> Plan:
    data = raw(zones, shards, replicas, ports={"base": base})
    t = parse_topology(data, "t.yaml")
    return build_plan(
        t, data, engine_binary="/bin/true", node_ports=None, bus=BUS, router_port=7100
    )


@pytest.mark.parametrize(
    ("zones", "shards", "replicas", "base"), [(3, 3, 1, 7101), (2, 12, 5, 30000), (1, 1, 0, 1024)]
)
def test_ports_base_gives_consecutive_ports(
    zones: int, shards: int, replicas: int, base: int
) -> None:
    plan = fixed_plan(zones, shards, replicas, base)
    ports = [n.port for n in plan.nodes]
    assert ports == list(range(base, base + shards * (1 + replicas)))
    assert [n.bus_port for n in plan.nodes] == [p + 10000 for p in ports]


def test_default_ports_and_hosts() -> None:
    plan = fixed_plan()
    assert [(n.name, n.zone, n.host, n.port, n.bus_port) for n in plan.nodes] == [
        ("fleet-0001-001", "az-a", "127.0.1.1", 7101, 17101),
        ("fleet-0001-002", "az-b", "127.0.2.1", 7102, 17102),
        ("fleet-0002-001", "az-b", "127.0.2.1", 7103, 17103),
        ("fleet-0002-002", "az-c", "127.0.3.1", 7104, 17104),
        ("fleet-0003-001", "az-c", "127.0.3.1", 7105, 17105),
        ("fleet-0003-002", "az-a", "127.0.1.1", 7106, 17106),
    ]
    assert plan.node("fleet-0002-002").address == "127.0.3.1:7104"
    assert plan.slot_ranges == ((0, 5461), (5462, 10922), (10923, 16383))
    assert (plan.bus_host, plan.bus_port) == BUS
    assert (plan.router_host, plan.router_port) == ("127.0.0.1", 7100)
    assert [n.name for n in plan.zone_nodes("az-b")] == ["fleet-0001-002", "fleet-0002-001"]
    assert [n.member for n in plan.shard_nodes(3)] == [0, 1]


def test_shared_addressing_puts_every_node_on_127_0_0_1() -> None:
    data = raw(3, 3, 1, ports={"base": 7101}, zone_addressing="shared")
    t = parse_topology(data, "t.yaml")
    plan = build_plan(
        t, data, engine_binary="/bin/true", node_ports=None, bus=BUS, router_port=7100
    )
    assert {n.host for n in plan.nodes} == {"127.0.0.1"}


def test_explicit_node_ports_are_used() -> None:
    data = raw(3, 2, 1)
    t = parse_topology(data, "t.yaml")
    ports = [(40001, 50011), (40007, 50003), (41000, 41001), (40500, 45000)]
    plan = build_plan(
        t, data, engine_binary="/bin/true", node_ports=ports, bus=BUS, router_port=40000
    )
    assert [(n.port, n.bus_port) for n in plan.nodes] == ports
    assert plan.router_port == 40000


def test_plan_json_round_trip(tmp_path: Path) -> None:
    data = raw(
        3,
        4,
        2,
        ports={"base": 7101},
        router={"port": 7100},
        durability={"min_replicas_to_write": 1},
    )
    t = parse_topology(data, "topologies/x.yaml")
    plan = build_plan(
        t,
        data,
        engine_binary="/opt/valkey-server",
        node_ports=None,
        bus=("127.0.0.1", 1999),
        router_port=7100,
    )
    again = Plan.from_json(plan.to_json())
    assert again.nodes == plan.nodes
    assert again.slot_ranges == plan.slot_ranges == tuple(split_slots(4))
    assert again.topology == plan.topology
    assert again.topology.source == "topologies/x.yaml"
    assert again.raw_topology == data
    assert (again.engine_binary, again.bus_host, again.bus_port) == (
        "/opt/valkey-server",
        "127.0.0.1",
        1999,
    )
    assert again == plan
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    assert Plan.load(path) == plan


def test_plan_json_round_trip_explicit_ports() -> None:
    data = raw(2, 1, 1)
    t = parse_topology(data, "t.yaml")
    plan = build_plan(
        t, data, engine_binary="/bin/true", node_ports=[(1, 2), (3, 4)], bus=BUS, router_port=5
    )
    assert Plan.from_json(plan.to_json()) == plan
