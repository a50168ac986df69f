"""apply's reading of CLUSTER NODES: primaries, slot owners, open migrations, split shards."""

from __future__ import annotations

from cachefleet.ops.apply_view import _joined, _split_primaries, _view
from cachefleet.plan import NodeSpec


def spec(name: str, shard: int, member: int, port: int) -> NodeSpec:
    return NodeSpec(name=name, shard=shard, member=member, zone="az-a", host="127.0.1.1",
                    port=port, bus_port=port + 10000)  # fmt: skip


NODES = [spec("a1", 1, 0, 7001), spec("a2", 1, 1, 7002), spec("b1", 2, 0, 7003),
         spec("b2", 2, 1, 7004)]  # fmt: skip


def line(node_id: str, port: int, flags: str, primary: str, slots: str) -> str:
    return f"{node_id} 127.0.1.1:{port}@{port + 10000} {flags} {primary} 0 0 1 connected {slots}"


A1 = line("aaaa", 7001, "myself,master", "-", "0-8191 [100->-bbbb]")
A2 = line("a2a2", 7002, "slave", "aaaa", "")
B1 = line("bbbb", 7003, "master", "-", "8192-16383")
B2 = line("b2b2", 7004, "slave", "bbbb", "")


def test_primaries_owners_and_open_migrations_from_the_nodes_own_lines() -> None:
    b_self = "\n".join([A1.replace("myself,", ""), A2, B1.replace("master", "myself,master")
                        + " [100-<-aaaa]", B2])  # fmt: skip
    view = _view({"a1": "\n".join([A1, A2, B1, B2]), "b1": b_self}, NODES)
    assert view is not None
    assert view.primary(1, NODES) == "a1" and view.primary(2, NODES) == "b1"
    assert view.owned(NODES) == {1: [(0, 8191)], 2: [(8192, 16383)]}
    assert sorted(view.open) == [("a1", 100, "migrating", "bbbb"), ("b1", 100, "importing", "aaaa")]
    assert all(_joined(view, n, NODES) for n in NODES)
    assert _split_primaries(view, NODES) == []


def test_a_second_serving_primary_is_split_and_an_unknown_node_is_not_joined() -> None:
    split = line("b2b2", 7004, "master", "-", "24 28")
    b1 = line("bbbb", 7003, "master", "-", "8192-16383")
    view = _view({"a1": "\n".join([A1, A2, b1, split])}, [*NODES, spec("c1", 3, 0, 7005)])
    assert view is not None
    assert _split_primaries(view, NODES) == [("b2", 2)]
    assert not _joined(view, spec("c1", 3, 0, 7005), NODES)
