"""Cluster mode disabled, pure parts: configs, the group's primary at `up`, the reader
endpoint's choice, and which nodes the sentinels re-point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import Replication, Role
from cachefleet.ops.standalone import choose_primary, group_layout
from cachefleet.plan import Plan, build_plan
from cachefleet.state import ClusterDir
from cachefleet.topology import parse_topology
from router.standalone import pick_reader
from sentinel.standalone import Seen, is_astray, misdirected
from shard.launch import standalone_primary, without_cluster_mode

RAW: dict[str, Any] = {
    "name": "g",
    "cluster_mode": "disabled",
    "zones": ["az-a", "az-b", "az-c"],
    "replicas": 2,
    "ports": {"base": 7101},
}


def plan() -> Plan:
    return build_plan(
        parse_topology(RAW), RAW, engine_binary="valkey-server", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7200, reader_port=7201,
    )  # fmt: skip


def node(name: str, zone: str, role: str, port: int) -> LayoutNode:
    host = {"az-a": "127.0.1.1", "az-b": "127.0.2.1", "az-c": "127.0.3.1"}[zone]
    return LayoutNode(name, "", 1, zone, host, port, port + 10000, role)


P = node("g-0001-001", "az-a", "primary", 7101)
R1 = node("g-0001-002", "az-b", "replica", 7102)
R2 = node("g-0001-003", "az-c", "replica", 7103)
SHARD = LayoutShard(1, (), (P, R1, R2))


def primary_rep(replid: str = "a", replid2: str = "") -> Replication:
    return Replication(Role.PRIMARY, 100, True, 0.0, None, False, 2, replid, replid2)


def replica_of(addr: tuple[str, int], link: bool = True, replid: str = "a") -> Replication:
    return Replication(Role.REPLICA, 100, link, 0.0 if link else 3.0, addr, False, 0, replid)


# -- configs -------------------------------------------------------------------------------


def test_config_drops_cluster_lines_and_names_the_primary() -> None:
    text = "port 1\ncluster-enabled yes\ncluster-port 2\nmasteruser cf\n"
    out = without_cluster_mode(text, ("127.0.1.1", 7101))
    assert out.splitlines() == ["port 1", "masteruser cf", "replicaof 127.0.1.1 7101"]
    assert "replicaof" not in without_cluster_mode(text, None)


def test_start_replicates_the_layouts_primary(tmp_path: Path) -> None:
    p = plan()
    cdir = ClusterDir(tmp_path, "g")
    cdir.make()
    first, second, third = p.nodes
    # before any layout: the plan's first member leads
    assert standalone_primary(p, cdir, first) is None
    assert standalone_primary(p, cdir, second) == (first.host, first.port)
    # after a failover to the second member: everyone else (the old primary too) follows it
    cdir.save_layout(group_layout(p, second, {}, epoch=3))
    assert standalone_primary(p, cdir, first) == (second.host, second.port)
    assert standalone_primary(p, cdir, third) == (second.host, second.port)
    assert standalone_primary(p, cdir, second) is None


# -- the primary at `up` ---------------------------------------------------------------------


def test_choose_primary_prefers_the_only_primary_then_the_previous_layout() -> None:
    p = plan()
    first, second, _ = p.nodes
    roles: dict[str, Replication | None] = {n.name: replica_of(("x", 1)) for n in p.nodes}
    assert choose_primary(p, roles, None) is None
    roles[second.name] = primary_rep()
    assert choose_primary(p, roles, None) == second
    roles[first.name] = primary_rep()  # two claim it: the previous layout decides
    assert choose_primary(p, roles, None) == first
    before = group_layout(p, second, {}, epoch=4)
    assert choose_primary(p, roles, before) == second


def test_group_layout_is_shard_one_without_slots() -> None:
    p = plan()
    layout = group_layout(p, p.nodes[1], {p.nodes[1].name: "abc"}, epoch=7)
    again = Layout.from_dict(layout.to_dict(), p)
    assert again == layout and layout.epoch == 7
    (shard,) = layout.shards
    assert shard.id == 1 and shard.slots == ()
    assert shard.primary is not None and shard.primary.name == p.nodes[1].name
    assert shard.primary.id == "abc"
    assert [n.name for n in shard.replicas] == [p.nodes[0].name, p.nodes[2].name]


# -- the reader endpoint -----------------------------------------------------------------------


def test_reader_rotates_over_healthy_replicas() -> None:
    healthy = {R1.name, R2.name}
    picks = [pick_reader((R1, R2), healthy, P, turn) for turn in range(4)]
    assert [n.name for n in picks if n] == [R1.name, R2.name, R1.name, R2.name]


def test_reader_skips_unhealthy_and_falls_back_to_the_primary() -> None:
    assert pick_reader((R1, R2), {R2.name}, P, 0) == R2
    assert pick_reader((R1, R2), set(), P, 0) == P
    assert pick_reader((), set(), None, 0) is None


def test_reader_prefers_its_zone_while_a_replica_there_is_healthy() -> None:
    assert {pick_reader((R1, R2), {R1.name, R2.name}, P, t, "az-c") for t in range(3)} == {R2}
    assert pick_reader((R1, R2), {R1.name}, P, 0, "az-c") == R1


# -- sentinels re-point strays -------------------------------------------------------------


TARGET = (P.host, P.port)


def seen(**over: Seen) -> dict[str, Seen]:
    base = {
        P.name: Seen(primary_rep(), False),
        R1.name: Seen(replica_of(TARGET), False),
        R2.name: Seen(replica_of(TARGET), False),
    }
    base.update(over)
    return base


def test_replication_history_from_info() -> None:
    rep = Replication.from_info({"role": "master", "master_replid": "b", "master_replid2": "a"})
    assert (rep.replid, rep.replid2) == ("b", "a")
    assert Replication.from_text("role:slave\r\nmaster_replid:b\r\n").replid == "b"


def test_astray() -> None:
    assert is_astray(primary_rep(), TARGET)
    assert is_astray(replica_of(("127.0.9.1", 1)), TARGET)
    assert not is_astray(replica_of(TARGET), TARGET)
    assert not is_astray(replica_of(TARGET, link=False), TARGET)  # syncing: not astray
    assert not is_astray(Replication.unknown(), TARGET)


@pytest.mark.parametrize(
    ("over", "busy", "since", "want"),
    [
        ({}, False, {}, {}),
        # a resumed old primary, seen so long enough: re-pointed
        ({R1.name: Seen(primary_rep(), False)}, False, {R1.name: 0.0}, {R1.name: TARGET}),
        # not long enough yet
        ({R1.name: Seen(primary_rep(), False)}, False, {R1.name: 0.95}, {}),
        # a failover is under way: nothing
        ({R1.name: Seen(primary_rep(), False)}, True, {R1.name: 0.0}, {}),
        # a replica left on another node
        ({R2.name: Seen(replica_of(("127.0.2.1", 7102)), False)}, False, {R2.name: 0.0},
         {R2.name: TARGET}),
        # the layout's primary is down: a promoted candidate must not be demoted
        ({P.name: Seen(primary_rep(), True), R1.name: Seen(primary_rep(), False)}, False,
         {R1.name: 0.0}, {}),
        # the layout's primary does not say it leads (someone demoted it): leave it to failover
        ({P.name: Seen(replica_of(("127.0.2.1", 7102)), False),
          R1.name: Seen(primary_rep(), False)}, False, {R1.name: 0.0}, {}),
        # a stray that is down itself is left to its agent
        ({R1.name: Seen(primary_rep(), True)}, False, {R1.name: 0.0}, {}),
        ({R1.name: Seen(None, False)}, False, {R1.name: 0.0}, {}),
        # the old primary resumed while this sentinel still has the old layout (it names the
        # old primary) and R1 was promoted from it: R1 is newer, never put back under it
        ({R1.name: Seen(primary_rep("b", replid2="a"), False)}, False, {R1.name: 0.0}, {}),
        # ... nor is a replica that already follows R1
        ({R1.name: Seen(primary_rep("b", replid2="a"), False),
          R2.name: Seen(replica_of((R1.host, R1.port), replid="b"), False)}, False,
         {R1.name: 0.0, R2.name: 0.0}, {}),
        # a resumed old primary (its history is older than the layout's primary's) is moved
        ({P.name: Seen(primary_rep("b", replid2="a"), False),
          R1.name: Seen(primary_rep("a"), False)}, False, {R1.name: 0.0}, {R1.name: TARGET}),
    ],
)  # fmt: skip
def test_misdirected(
    over: dict[str, Seen], busy: bool, since: dict[str, float], want: dict[str, Any]
) -> None:
    got = misdirected(SHARD, seen(**over), busy=busy, since=since, now=1.0, settle_s=0.2)
    assert got == want
