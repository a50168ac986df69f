"""apply's pure decisions: what may change, which nodes come and go, which slots move."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachefleet.plan import Plan, build_plan
from cachefleet.reshape import (
    ApplyRefused,
    check_changeable,
    live_settings,
    quotas,
    rebalance,
    reshape,
)
from cachefleet.slots import split_slots
from cachefleet.topology import parse_topology

BASE: dict[str, Any] = {
    "name": "c",
    "engine": "valkey",
    "zones": ["az-a", "az-b", "az-c"],
    "shards": 3,
    "replicas_per_shard": 1,
    "node_type": "cache.small",
    "ports": {"base": 7000},
}


def plan_of(**change: Any) -> Plan:
    raw = {**BASE, **change}
    return build_plan(
        parse_topology(raw), raw, engine_binary="/bin/valkey", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7999,
    )  # fmt: skip


def primaries(plan: Plan) -> dict[int, str]:
    return {n.shard: n.name for n in plan.nodes if n.member == 0}


def no_alloc(hosts: list[str]) -> list[tuple[int, int]]:
    raise AssertionError("fixed ports: nothing to allocate")


def apply_moves(start: dict[int, list[tuple[int, int]]], shards: list[int]) -> dict[int, int]:
    owner = {x: s for s, ranges in start.items() for a, b in ranges for x in range(a, b + 1)}
    for m in rebalance(start, shards):
        for x in range(m.start, m.end + 1):
            assert owner[x] == m.source
            owner[x] = m.target
    counts: dict[int, int] = {}
    for s in owner.values():
        counts[s] = counts.get(s, 0) + 1
    return counts


def test_scaling_out_three_to_five_moves_only_what_the_new_shards_need() -> None:
    start = {i + 1: [r] for i, r in enumerate(split_slots(3))}
    moves = rebalance(start, [1, 2, 3, 4, 5])
    assert {m.target for m in moves} == {4, 5}
    quota = quotas([1, 2, 3, 4, 5])
    assert sum(m.count for m in moves) == quota[4] + quota[5]  # nothing more than they need
    assert apply_moves(start, [1, 2, 3, 4, 5]) == quota


def test_scaling_in_moves_every_slot_of_the_removed_shards() -> None:
    start = {i + 1: [r] for i, r in enumerate(split_slots(5))}
    moves = rebalance(start, [1, 2, 3])
    assert {m.source for m in moves} == {4, 5}
    counts = apply_moves(start, [1, 2, 3])
    assert set(counts) == {1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1


@given(st.integers(1, 12), st.integers(1, 12))
def test_any_rebalance_ends_even_and_moves_no_slot_twice(before: int, after: int) -> None:
    start = {i + 1: [r] for i, r in enumerate(split_slots(before))}
    shards = list(range(1, after + 1))
    moves = rebalance(start, shards)
    slots = [x for m in moves for x in range(m.start, m.end + 1)]
    assert len(slots) == len(set(slots))
    counts = apply_moves(start, shards)
    assert set(counts) == set(shards)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_a_balanced_cluster_moves_nothing() -> None:
    start = {i + 1: [r] for i, r in enumerate(split_slots(3))}
    assert rebalance(start, [1, 2, 3]) == []


def test_more_replicas_never_share_the_primary_zone_and_take_new_ports_after_the_highest() -> None:
    plan = plan_of()
    topo = parse_topology({**BASE, "replicas_per_shard": 2})
    r = reshape(plan, topo, "/bin/valkey", primaries(plan), no_alloc)
    assert len(r.added) == 3 and not r.removed
    top = max(n.port for n in plan.nodes)
    assert sorted(n.port for n in r.added) == [top + 1, top + 2, top + 3]
    for shard in (1, 2, 3):
        members = [n for n in r.final if n.shard == shard]
        assert len({n.zone for n in members}) == 3
        new = next(n for n in r.added if n.shard == shard)
        assert new.name == f"c-{shard:04d}-003" and new.member == 2
    assert r.final[: len(plan.nodes)] == plan.nodes  # running nodes keep everything


def test_fewer_replicas_keep_the_primary_and_zone_spread() -> None:
    plan = plan_of(replicas_per_shard=2)
    # after a failover shard 1's primary is its second member
    prim = {**primaries(plan), 1: "c-0001-002"}
    r = reshape(plan, parse_topology(BASE), "/bin/valkey", prim, no_alloc)
    assert len(r.removed) == 3
    assert "c-0001-002" not in {n.name for n in r.removed}
    for shard in (1, 2, 3):
        members = [n for n in r.final if n.shard == shard]
        assert len(members) == 2 and len({n.zone for n in members}) == 2


def test_new_shards_follow_creation_placement_and_removed_shards_lose_every_node() -> None:
    plan = plan_of()
    r = reshape(plan, parse_topology({**BASE, "shards": 5}), "/bin/valkey", primaries(plan),
                no_alloc)  # fmt: skip
    fresh = build_plan(parse_topology({**BASE, "shards": 5}), {}, engine_binary="/bin/valkey",
                       node_ports=None, bus=("127.0.0.1", 1), router_port=1)  # fmt: skip
    want = [(n.name, n.zone) for n in fresh.nodes if n.shard > 3]
    assert [(n.name, n.zone) for n in r.added] == want
    back = reshape(
        plan_of(shards=5), parse_topology(BASE), "/bin/valkey", primaries(plan_of(shards=5)),
        no_alloc,
    )  # fmt: skip
    assert {n.shard for n in back.removed} == {4, 5} and len(back.removed) == 4
    assert [c.shard for c in back.shards if c.gone] == [4, 5]


def test_a_new_node_type_replaces_every_node_in_the_same_zones() -> None:
    plan = plan_of()
    r = reshape(plan, parse_topology({**BASE, "node_type": "cache.medium"}), "/bin/valkey",
                primaries(plan), no_alloc)  # fmt: skip
    assert {n.name for n in r.removed} == {n.name for n in plan.nodes}
    for shard in (1, 2, 3):
        old = sorted((n.member, n.zone) for n in plan.nodes if n.shard == shard)
        new = sorted((n.member, n.zone) for n in r.added if n.shard == shard)
        assert [z for _, z in new] == [z for _, z in old]
        assert all(n.runs.startswith("cache.medium ") for n in r.added)
    # resumed after the new nodes were added: nothing more to add, the old ones still go
    half = Plan(**{**plan.__dict__, "nodes": r.union})
    again = reshape(half, parse_topology({**BASE, "node_type": "cache.medium"}), "/bin/valkey",
                    primaries(plan), no_alloc)  # fmt: skip
    assert not again.added and {n.name for n in again.removed} == {n.name for n in plan.nodes}


def test_no_change_reshapes_nothing() -> None:
    plan = plan_of()
    r = reshape(plan, parse_topology(BASE), "/bin/valkey", primaries(plan), no_alloc)
    assert r.shards == () and r.final == plan.nodes


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"engine": "memcached", "nodes": 3}, "engine"),
        ({"zones": ["az-a", "az-b"]}, "zones"),
        ({"ports": {"base": 8000}}, "ports_base"),
        ({"cluster_mode": "disabled", "replicas": 1}, "cluster_mode"),
    ],
)
def test_changes_that_cannot_be_made_online_are_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    new = {**BASE, **change}
    if change.get("engine") == "memcached" or "cluster_mode" in change:
        new.pop("shards")
        new.pop("replicas_per_shard")
    with pytest.raises(ApplyRefused) as err:
        check_changeable(parse_topology(BASE), parse_topology(new))
    assert err.value.field == field


def test_engine_downgrades_are_refused() -> None:
    old = parse_topology(BASE)
    with pytest.raises(ApplyRefused) as err:
        check_changeable(old, parse_topology({**BASE, "engine": "redis"}))
    assert err.value.field == "engine"
    with pytest.raises(ApplyRefused) as err:
        check_changeable(old, old, old_version=(8, 1, 0), new_version=(7, 2, 4))
    assert err.value.field == "engine_binary"
    check_changeable(parse_topology({**BASE, "engine": "redis"}), old)  # an upgrade


def test_live_settings_list_only_what_changed() -> None:
    old = parse_topology(BASE)
    new = parse_topology({**BASE, "maxmemory_policy": "allkeys-lru",
                          "parameters": {"hz": 20, "lazyfree-lazy-eviction": True}})  # fmt: skip
    assert live_settings(old, new) == [
        ("hz", "", "20"),
        ("lazyfree-lazy-eviction", "", "yes"),
        ("maxmemory-policy", "volatile-lru", "allkeys-lru"),
    ]
    assert live_settings(old, old) == []
