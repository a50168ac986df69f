"""Pure pieces around failover: the switched layout, the graceful-failover replica choice,
and the durability fencing rule."""

from __future__ import annotations

from typing import Any

import pytest

from cachefleet.errors import TopologyError
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.ops.failover import ReplicaState, choose_replica
from cachefleet.topology import parse_topology


def n(name: str, role: str, zone: str = "az-a", port: int = 7000, shard: int = 1) -> LayoutNode:
    return LayoutNode(name, f"id-{name}", shard, zone, "127.0.0.1", port, port + 10000, role)


def layout() -> Layout:
    return Layout(
        cluster="c",
        epoch=3,
        shards=(
            LayoutShard(1, ((0, 8191),), (n("p1", "primary"), n("r1", "replica", port=7001))),
            LayoutShard(
                2,
                ((8192, 16383),),
                (n("p2", "primary", port=7002, shard=2), n("r2", "replica", port=7003, shard=2)),
            ),
        ),
    )


def test_with_primary_switches_one_shard_and_stamps_the_epoch() -> None:
    after = layout().with_primary(1, "r1", "new-id", 4)
    assert after.epoch == 4
    s1 = after.shard(1)
    assert s1.primary is not None and s1.primary.name == "r1" and s1.primary.id == "new-id"
    assert [r.name for r in s1.replicas] == ["p1"]
    assert after.shard(2) == layout().shard(2)
    assert Layout.from_dict(after.to_dict()) == after


def rs(name: str, offset: int, zone: str, linked: bool = True, master: int = 7000) -> ReplicaState:
    return ReplicaState(n(name, "replica", zone), offset, linked, ("127.0.0.1", master))


PRIMARY = n("p", "primary", zone="az-a", port=7000)


@pytest.mark.parametrize(
    ("states", "to", "expected"),
    [
        ([rs("a", 10, "az-b"), rs("b", 20, "az-c")], None, "b"),  # most caught up
        ([rs("a", 20, "az-a"), rs("b", 20, "az-b")], None, "b"),  # then another zone
        ([rs("b", 20, "az-b"), rs("a", 20, "az-c")], None, "a"),  # then name
        ([rs("a", 30, "az-b", linked=False), rs("b", 20, "az-c")], None, "b"),  # not linked
        ([rs("a", 30, "az-b", master=9999), rs("b", 20, "az-c")], None, "b"),  # other primary
        ([rs("a", 10, "az-b"), rs("b", 20, "az-c")], "a", "a"),  # --to wins
        ([rs("a", 10, "az-b"), rs("b", 20, "az-c")], "id-a", "a"),  # --to by engine id
        ([rs("a", 10, "az-b", linked=False)], "a", None),  # --to must be healthy
        ([], None, None),
    ],
)
def test_graceful_choice(states: list[ReplicaState], to: str | None, expected: str | None) -> None:
    got = choose_replica(states, PRIMARY, to)
    assert (got.node.name if got else None) == expected


def topo(**dur: Any) -> dict[str, Any]:
    return {
        "name": "c",
        "zones": ["a", "b", "c"],
        "replicas_per_shard": 1,
        "sentinels": {"down_after_ms": 1000, "failover_timeout_ms": 3000},
        "durability": dur,
    }


def test_fencing_bound_must_not_outlast_detection_and_failover() -> None:
    assert parse_topology(topo(min_replicas_to_write=1, max_lag_s=4)).durability.max_lag_s == 4
    with pytest.raises(TopologyError) as info:
        parse_topology(topo(min_replicas_to_write=1, max_lag_s=5), "t.yaml")
    assert info.value.field == "durability.max_lag_s"
    assert "(4000 ms)" in info.value.message
    # without fencing the lag bound is not used, so it is not checked against failover
    assert parse_topology(topo(min_replicas_to_write=0, max_lag_s=60)).durability.max_lag_s == 60
