"""What `apply` plans for a cluster-mode-disabled group (pure: reshape of shard 1, the
printed steps, members that do not follow the primary yet)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cachefleet.nodes import Replication, Role
from cachefleet.ops.apply import Summary
from cachefleet.ops.apply_standalone import _steps, _unjoined
from cachefleet.plan import Plan, build_plan
from cachefleet.reshape import ApplyRefused, check_changeable, reshape
from cachefleet.topology import Topology, parse_topology

BASE: dict[str, Any] = {
    "name": "g",
    "engine": "valkey",
    "cluster_mode": "disabled",
    "zones": ["az-a", "az-b", "az-c"],
    "replicas": 1,
    "node_type": "cache.small",
    "ports": {"base": 7000},
    "endpoints": {"primary": {"port": 7500}, "reader": {"port": 7501}},
}


def topo(**change: Any) -> Topology:
    return parse_topology({**BASE, **change})


def plan_of(**change: Any) -> Plan:
    raw = {**BASE, **change}
    return build_plan(
        parse_topology(raw), raw, engine_binary="/bin/valkey", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7500, reader_port=7501,
    )  # fmt: skip


def no_alloc(hosts: list[str]) -> list[tuple[int, int]]:
    raise AssertionError("fixed ports: nothing to allocate")


def planned(plan: Plan, new: Topology, binary: str = "/bin/valkey") -> list[dict[str, Any]]:
    primary = plan.nodes[0]
    r = reshape(plan, new, binary, {1: primary.name}, no_alloc)
    summary = Summary()
    _steps(summary, new, binary, r, primary, [], [], [], False)
    return summary.steps


def rep(role: Role, primary: tuple[str, int] | None = None, up: bool = True) -> Replication:
    return Replication(role, 0, up, 0.0, primary, False, 0)


def test_more_replicas_go_to_unused_zones_and_fewer_never_drop_the_primary() -> None:
    plan = plan_of()
    (step,) = planned(plan, topo(replicas=3))
    assert step["step"] == "add_replicas" and step["nodes"] == ["g-0001-003", "g-0001-004"]
    # the unused zone first, then the least used one that is not the primary's (az-a)
    assert step["text"].endswith("g-0001-003 (az-c), g-0001-004 (az-b)")
    big = plan_of(replicas=3)
    (step,) = planned(big, topo(replicas=1))
    assert step["step"] == "remove_replicas" and "g-0001-001" not in step["nodes"]
    assert len(step["nodes"]) == 2


def test_a_new_node_type_replaces_every_member_and_hands_the_primary_over() -> None:
    (step,) = planned(plan_of(), topo(node_type="cache.large"))
    assert step["step"] == "replace_nodes"
    assert step["remove"] == ["g-0001-001", "g-0001-002"] and len(step["add"]) == 2
    assert "hand the primary" in step["text"]


def test_turning_cluster_mode_on_is_refused_naming_the_field() -> None:
    enabled = parse_topology({k: v for k, v in BASE.items()
                              if k not in ("cluster_mode", "replicas", "endpoints")})  # fmt: skip
    with pytest.raises(ApplyRefused) as info:
        check_changeable(topo(), enabled)
    assert "cluster_mode" in str(info.value)


def test_members_not_following_the_primary_are_joined_again() -> None:
    plan = plan_of(replicas=2)
    p, a, b = plan.nodes
    roles = {
        p.name: (rep(Role.PRIMARY), "r1"),
        a.name: (rep(Role.REPLICA, (p.host, p.port)), "r2"),
        b.name: (rep(Role.PRIMARY), "r3"),  # started alone (an interrupted apply)
    }
    assert _unjoined(plan, roles, p) == [b]
    roles[b.name] = (rep(Role.REPLICA, (p.host, p.port), up=False), "r3")
    assert _unjoined(plan, roles, p) == [b]  # not synced yet
    del roles[b.name]
    assert _unjoined(plan, roles, p) == []  # a member that is down is not apply's to join


def test_a_resumed_replacement_adds_nothing_more() -> None:
    plan = plan_of()
    new = topo(node_type="cache.large")
    r = reshape(plan, new, "/bin/valkey", {1: plan.nodes[0].name}, no_alloc)
    union = replace(plan, nodes=r.union)  # what an interrupted apply left in plan.json
    (step,) = planned(union, new)
    assert step["step"] == "replace_nodes" and step["add"] == []
    assert step["remove"] == ["g-0001-001", "g-0001-002"]
    assert " add " not in step["text"] and "hand the primary" in step["text"]
