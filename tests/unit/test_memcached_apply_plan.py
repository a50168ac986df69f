"""apply on memcached clusters, the pure parts: the target plan, what restarts, the printed
plan; the proxy's side of a removal (in-memory transports) and its source filter."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from test_memcached_proxy import FakeProxy, FakeTransport, keys_on_distinct_nodes, layout, turn

from cachefleet.ops import memcached
from cachefleet.ops.apply import Summary
from cachefleet.ops.apply_memcached import (
    plan_steps,
    process_restarts,
    restart_reasons,
    target_plan,
)
from cachefleet.plan import build_plan
from cachefleet.topology import parse_topology
from router.memcache.conns import Client

BIN = "/usr/bin/memcached"


def raw(nodes: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": "s",
        "engine": "memcached",
        "zones": ["az-a", "az-b", "az-c"],
        "nodes": nodes,
        "node_type": "cache.micro",
        "ports": {"base": 11301},
        "router": {"port": 11300},
        **extra,
    }


def plan_of(doc: dict[str, Any]) -> Any:
    topo = parse_topology(doc)
    return build_plan(
        topo, doc, engine_binary=BIN, node_ports=None, bus=("127.0.0.1", 1883), router_port=11300
    )


def test_new_nodes_follow_the_highest_and_the_highest_leave() -> None:
    three = plan_of(raw(3))
    four = target_plan(three, parse_topology(raw(4)), raw(4), BIN)
    assert [(n.name, n.zone, n.port) for n in four.nodes] == [
        ("s-0001", "az-a", 11301),
        ("s-0002", "az-b", 11302),
        ("s-0003", "az-c", 11303),
        ("s-0004", "az-a", 11304),
    ]
    back = target_plan(four, parse_topology(raw(3)), raw(3), BIN)
    assert back.nodes == three.nodes


def test_a_node_type_or_parameter_change_restarts_nodes_and_copies_restart_routers() -> None:
    old = parse_topology(raw(3))
    new = parse_topology(raw(3, node_type="cache.small", parameters={"threads": 2}))
    assert restart_reasons(old, new, BIN, BIN) == [
        "node_type cache.micro -> cache.small",
        "threads 4 -> 2",
    ]
    assert restart_reasons(old, parse_topology(raw(4)), BIN, BIN) == []
    assert restart_reasons(old, old, BIN, "/opt/memcached") == [
        f"engine binary {BIN} -> /opt/memcached"
    ]
    assert process_restarts(old, new) == []
    assert process_restarts(old, parse_topology(raw(3, memcached={"copies": 2}))) == ["routers"]
    wanted = memcached.wanted_settings(new)
    assert wanted["maxbytes"] == str(256 * 1024**2) and wanted["num_threads"] == "2"
    seen = {**wanted, "num_threads": "4", "unrelated": "x"}
    assert memcached.settings_differ(wanted, seen) == ["num_threads"]
    assert memcached.settings_differ(wanted, {}) == []  # an engine that reports none


def test_the_plan_says_what_scaling_and_restarts_do_to_the_items() -> None:
    three = plan_of(raw(3))
    four = target_plan(three, parse_topology(raw(4)), raw(4), BIN)
    s = Summary()
    plan_steps(s, three, four, {"s-0001", "s-0002", "s-0003"}, [], [], [], False)
    (add,) = s.steps
    assert add["step"] == "add_nodes" and add["nodes"] == ["s-0004"]
    assert "about 1/4 of the keys move there" in add["text"] and s.nodes_added == 1
    s = Summary()
    plan_steps(s, four, three, {n.name for n in four.nodes}, [], [], [], False)
    (rm,) = s.steps
    assert rm["step"] == "remove_nodes" and rm["nodes"] == ["s-0004"]
    assert "first (discovery version +1), then stopped" in rm["text"]
    s = Summary()
    why = ["node_type cache.micro -> cache.small"]
    plan_steps(s, three, three, {n.name for n in three.nodes}, why, list(three.nodes), [], False)
    (restart,) = s.steps
    assert restart["step"] == "restart_nodes" and "one at a time" in restart["text"]
    assert "loses its items when it restarts" in restart["text"]
    assert s.restarts == ["nodes"]


def test_a_removed_node_answers_what_it_was_sent_then_its_connection_closes() -> None:
    async def main() -> None:
        proxy = FakeProxy()
        proxy.apply_layout(layout())
        client = Client(proxy)
        out = FakeTransport()
        client.connection_made(out)  # type: ignore[arg-type]
        a, b = keys_on_distinct_nodes(proxy)
        gone, kept = proxy.ring.node(a), proxy.ring.node(b)  # type: ignore[union-attr]
        client.data_received(b"get %s\r\n" % a)
        await turn()
        conn = proxy.conns[gone]
        smaller = replace(
            layout(4), shards=tuple(s for s in layout(4).shards if s.nodes[0].name != gone)
        )
        proxy.apply_layout(smaller)
        assert gone not in proxy.conns and not conn.closed and conn in proxy.retired
        conn.data_received(b"VALUE %s 0 1\r\nA\r\nEND\r\n" % a)
        await turn()
        assert out.take() == b"VALUE %s 0 1\r\nA\r\nEND\r\n" % a  # not a SERVER_ERROR
        assert conn.closed
        assert proxy.ring.node(a) != gone  # type: ignore[union-attr]
        assert kept in proxy.addresses

    asyncio.run(main())


class PeerTransport(FakeTransport):
    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 40000) if name == "peername" else None


def test_a_source_outside_allowed_sources_is_closed_without_a_word() -> None:
    async def main() -> None:
        proxy = FakeProxy()
        proxy.allowed_sources = ("127.0.0.1/32",)
        proxy.apply_layout(layout())
        for peer, served in (("127.0.0.2", False), ("127.0.0.1", True)):
            client = Client(proxy)
            t = PeerTransport(peer)
            client.connection_made(t)  # type: ignore[arg-type]
            client.data_received(b"version\r\n")
            await turn()
            assert t.closed is not served
            assert t.take().startswith(b"VERSION") is served

    asyncio.run(main())
