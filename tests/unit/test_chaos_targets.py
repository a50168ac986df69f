"""Fault targets resolved against a plan and a layout, and the placement restored between
trials (pure: no cluster)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from cachefleet.chaos.targets import (
    Move,
    TargetKind,
    moves_back,
    placement,
    resolve,
    shards_hit,
    zones_with_primaries,
)
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.plan import Plan, build_plan
from cachefleet.topology import parse_topology


def plan(shards: int = 3, replicas: int = 1) -> Plan:
    raw: dict[str, Any] = {
        "name": "t", "engine": "valkey", "zones": ["az-a", "az-b", "az-c"], "shards": shards,
        "replicas_per_shard": replicas, "node_type": "cache.micro", "ports": {"base": 7101},
        "router": {"port": 7100},
    }  # fmt: skip
    return build_plan(
        parse_topology(raw), raw, engine_binary="valkey-server", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7100,
    )  # fmt: skip


def layout_of(p: Plan) -> Layout:
    shards = []
    for i, rng in enumerate(p.slot_ranges):
        nodes = tuple(
            LayoutNode(
                n.name,
                f"id-{n.name}",
                n.shard,
                n.zone,
                n.host,
                n.port,
                n.bus_port,
                "primary" if n.member == 0 else "replica",
            )
            for n in p.shard_nodes(i + 1)
        )
        shards.append(LayoutShard(i + 1, (rng,), nodes))
    return Layout(cluster=p.name, epoch=1, shards=tuple(shards))


def moved(layout: Layout, shard: int) -> Layout:
    """The layout after shard's first replica took over."""
    new = layout.shard(shard).replicas[0]
    return layout.with_primary(shard, new.name, new.id, layout.epoch + 1)


def test_a_primary_target_is_typed_with_its_zone_and_shard() -> None:
    p = plan()
    lay = layout_of(p)
    t = resolve("primary:2", p, lay, random.Random(1))
    primary = lay.shard(2).primary
    assert primary is not None
    assert t.kind is TargetKind.NODE
    assert t.processes == (f"node.{primary.name}",)
    assert (t.zone, t.shard, t.node) == (primary.zone, 2, primary.name)
    assert t.description.startswith("primary of shard 2 (")
    assert shards_hit(t, lay) == {2}


def test_the_primary_zone_target_carries_the_zone_not_a_description_to_parse() -> None:
    p = plan()
    lay = moved(layout_of(p), 1)
    t = resolve("primary-zone:1", p, lay, random.Random(1))
    primary = lay.shard(1).primary
    assert primary is not None
    assert t.kind is TargetKind.ZONE and t.zone == primary.zone
    assert t.processes[0] == f"agent.{primary.zone}"  # the agent first: nothing restarts nodes
    assert {f"node.{n.name}" for n in p.zone_nodes(primary.zone)} <= set(t.processes)
    assert shards_hit(t, lay) == {
        s.id for s in lay.shards if s.primary is not None and s.primary.zone == primary.zone
    }


def test_a_random_zone_is_always_one_that_holds_a_primary() -> None:
    p = plan(shards=2)
    lay = layout_of(p)
    holding = zones_with_primaries(lay)
    assert len(holding) == 2 < len(p.topology.zones)
    picked = {resolve("zone:random", p, lay, random.Random(seed)).zone for seed in range(50)}
    assert picked == set(holding)
    for seed in range(20):
        t = resolve("zone:random", p, lay, random.Random(seed))
        assert shards_hit(t, lay), "a zone fault must take some shard's primary"


def test_a_named_zone_and_the_control_processes() -> None:
    p = plan()
    lay = layout_of(p)
    rng = random.Random(3)
    assert resolve("zone:az-c", p, lay, rng).zone == "az-c"
    router = resolve("router", p, lay, rng)
    assert router.kind is TargetKind.ROUTER and router.processes == ("router",)
    assert shards_hit(router, lay) == set()
    assert resolve("bus", p, lay, rng).processes == ("broker",)
    s = resolve("sentinel:s2", p, lay, rng)
    assert s.kind is TargetKind.SENTINEL and s.zone == p.sentinel("s2").zone


def test_a_replica_target_is_in_its_shard() -> None:
    p = plan(replicas=2)
    lay = layout_of(p)
    t = resolve("replica:3", p, lay, random.Random(5))
    assert t.node in {r.name for r in lay.shard(3).replicas} and t.shard == 3


def test_moves_back_restore_the_starting_placement() -> None:
    p = plan()
    start = layout_of(p)
    after = moved(moved(start, 1), 3)
    moves = moves_back(placement(start), after)
    assert moves == [Move(1, placement(start)[1]), Move(3, placement(start)[3])]
    assert moves_back(placement(start), start) == []


def test_a_primary_that_is_not_back_as_a_replica_is_not_moved_to() -> None:
    p = plan()
    start = layout_of(p)
    after = moved(start, 2)
    s2 = after.shard(2)
    # the old primary is missing from the layout (not back yet): nothing to fail over to
    gone = Layout(
        cluster=after.cluster,
        epoch=after.epoch,
        shards=tuple(
            s
            if s.id != 2
            else LayoutShard(2, s.slots, tuple(n for n in s.nodes if n.role == "primary"))
            for s in after.shards
        ),
    )
    assert s2.primary is not None
    assert moves_back(placement(start), gone) == []


@pytest.mark.parametrize("spec", ["primary:random", "primary-zone:random", "replica:random"])
def test_random_choices_follow_the_seed(spec: str) -> None:
    p = plan()
    lay = layout_of(p)
    a = [resolve(spec, p, lay, random.Random(s)) for s in range(5)]
    b = [resolve(spec, p, lay, random.Random(s)) for s in range(5)]
    assert a == b
