"""The memcached proxy with in-memory transports: routing, ordering, errors (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cachefleet import discovery
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from router.memcache import conns
from router.memcache.conns import Client, NodeConn
from router.memcache.proxy import Proxy

NODES = ("c-0001", "c-0002", "c-0003")


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out


class FakeProxy(Proxy):
    """Node connections attach to in-memory transports instead of connecting."""

    def __init__(self, copies: int = 1) -> None:
        super().__init__(
            cluster="c", version="1.6.18", max_value=1024, max_clients=10, copies=copies
        )
        self.node_transports: dict[str, FakeTransport] = {}

    async def _connect(self, conn: NodeConn, addr: tuple[str, int]) -> None:
        transport = FakeTransport()
        self.node_transports[conn.name] = transport
        conn.connection_made(transport)  # type: ignore[arg-type]


def layout(epoch: int = 3) -> Layout:
    shards = tuple(
        LayoutShard(
            id=i + 1,
            slots=(),
            nodes=(
                LayoutNode(
                    name, f"{i + 1:04d}", i + 1, "az-a", f"127.0.{i + 1}.1", 11301 + i, 0, "primary"
                ),
            ),
        )
        for i, name in enumerate(NODES)
    )
    return Layout(cluster="c", epoch=epoch, shards=shards)


def run(
    test: Callable[[FakeProxy, Client, FakeTransport], Awaitable[None]], copies: int = 1
) -> None:
    async def main() -> None:
        proxy = FakeProxy(copies)
        proxy.apply_layout(layout())
        client = Client(proxy)
        transport = FakeTransport()
        client.connection_made(transport)  # type: ignore[arg-type]
        await test(proxy, client, transport)

    asyncio.run(main())


async def turn() -> None:
    """Let the event loop run the connects and the coalesced writes."""
    for _ in range(3):
        await asyncio.sleep(0)


def keys_on_distinct_nodes(proxy: Proxy, n: int = 2) -> list[bytes]:
    assert proxy.ring is not None
    found: dict[str, bytes] = {}
    for i in range(1000):
        key = b"k%d" % i
        found.setdefault(proxy.ring.node(key), key)
        if len(found) == n:
            break
    return list(found.values())


def test_a_multi_get_is_split_by_node_and_merged_in_the_order_asked() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        a, b = keys_on_distinct_nodes(proxy)
        node_a, node_b = proxy.ring.node(a), proxy.ring.node(b)  # type: ignore[union-attr]
        client.data_received(b"get %s %s %s\r\n" % (b, a, b))
        await turn()
        assert proxy.node_transports[node_a].take() == b"get %s\r\n" % a
        assert proxy.node_transports[node_b].take() == b"get %s\r\n" % b
        proxy.conns[node_a].data_received(b"VALUE %s 0 1\r\nA\r\nEND\r\n" % a)
        await turn()
        assert out.take() == b""  # still waiting for the other node
        proxy.conns[node_b].data_received(b"VALUE %s 0 1\r\nB\r\nEND\r\n" % b)
        await turn()
        assert out.take() == (
            b"VALUE %s 0 1\r\nB\r\nVALUE %s 0 1\r\nA\r\nVALUE %s 0 1\r\nB\r\nEND\r\n" % (b, a, b)
        )

    run(test)


def test_replies_go_out_in_request_order_whichever_node_answers_first() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        a, b = keys_on_distinct_nodes(proxy)
        node_a, node_b = proxy.ring.node(a), proxy.ring.node(b)  # type: ignore[union-attr]
        client.data_received(b"get %s\r\nincr %s 1\r\n" % (a, b))
        await turn()
        proxy.conns[node_b].data_received(b"5\r\n")
        await turn()
        assert out.take() == b""
        proxy.conns[node_a].data_received(b"END\r\n")
        await turn()
        assert out.take() == b"END\r\n5\r\n"

    run(test)


def test_noreply_is_stripped_towards_the_node_and_its_reply_dropped() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        node = proxy.ring.node(key)  # type: ignore[union-attr]
        client.data_received(b"set %s 0 0 2 noreply\r\nhi\r\nmn\r\n" % key)
        await turn()
        assert proxy.node_transports[node].take() == b"set %s 0 0 2\r\nhi\r\n" % key
        proxy.conns[node].data_received(b"STORED\r\n")
        await turn()
        assert out.take() == b"MN\r\n"

    run(test)


def test_a_quiet_meta_get_miss_is_dropped_and_a_hit_kept() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        node = proxy.ring.node(key)  # type: ignore[union-attr]
        client.data_received(b"mg %s v q\r\nmg %s v q\r\nmn\r\n" % (key, key))
        await turn()
        assert proxy.node_transports[node].take() == b"mg %s v\r\n" % key * 2
        proxy.conns[node].data_received(b"EN\r\nVA 2\r\nhi\r\n")
        await turn()
        assert out.take() == b"VA 2\r\nhi\r\nMN\r\n"

    run(test)


def test_a_lost_node_answers_server_error_and_others_keep_serving() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        a, b = keys_on_distinct_nodes(proxy)
        node_a, node_b = proxy.ring.node(a), proxy.ring.node(b)  # type: ignore[union-attr]
        client.data_received(b"get %s\r\nget %s\r\n" % (a, b))
        await turn()
        proxy.conns[node_a].connection_lost(None)
        proxy.conns[node_b].data_received(b"END\r\n")
        await turn()
        assert (
            out.take()
            == (
                f"SERVER_ERROR node {node_a} ({proxy.addresses[node_a][0]}:"
                f"{proxy.addresses[node_a][1]}) is unavailable\r\nEND\r\n"
            ).encode()
        )
        assert not out.closed

    run(test)


def test_a_node_past_its_deadline_fails_its_requests_and_is_held_down() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        node = proxy.ring.node(key)  # type: ignore[union-attr]
        client.data_received(b"get %s\r\n" % key)
        await turn()
        proxy.conns[node].expire(now=10**9)  # far past BACKEND_TIMEOUT_S
        await turn()
        assert out.take().startswith(b"SERVER_ERROR node ")
        client.data_received(b"get %s\r\n" % key)  # held down: answered without a node
        await turn()
        assert out.take().startswith(b"SERVER_ERROR node ")

    run(test)


def test_malformed_input_is_answered_after_earlier_replies_then_closed() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        client.data_received(b"version\r\nset k 0 0 x\r\nversion\r\n")
        await turn()
        assert out.take() == b"VERSION 1.6.18\r\nCLIENT_ERROR bad command line format\r\n"
        assert out.closed
        assert proxy.client_errors == 1

    run(test)


def test_discovery_is_answered_locally_with_the_layout_version() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        client.data_received(b"config get cluster\r\nget AmazonElastiCache:cluster\r\n")
        await turn()
        entries = discovery.entries(layout())
        assert out.take() == (
            discovery.config_reply(3, entries) + discovery.value_block(3, entries) + b"END\r\n"
        )
        assert proxy.node_transports == {}  # no node was asked

    run(test)


def test_a_client_owed_too_many_replies_is_not_read_until_it_catches_up() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        node = proxy.ring.node(key)  # type: ignore[union-attr]
        client.data_received(b"get %s\r\n" % key * conns.MAX_PENDING)
        await turn()
        assert out.paused
        proxy.conns[node].data_received(b"END\r\n" * conns.MAX_PENDING)
        await turn()
        assert not out.paused and out.take() == b"END\r\n" * conns.MAX_PENDING

    run(test)


def test_a_key_asked_many_times_goes_to_its_node_once() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        node = proxy.ring.node(key)  # type: ignore[union-attr]
        client.data_received(b"get" + b" %s" % key * 5000 + b"\r\n")
        await turn()
        assert proxy.node_transports[node].take() == b"get %s\r\n" % key
        proxy.conns[node].data_received(b"VALUE %s 0 1\r\nx\r\nEND\r\n" % key)
        await turn()
        assert out.take().count(b"VALUE") == 5000

    run(test)


# -- replicated pools (memcached.copies: 2) ---------------------------------------------------


def test_with_two_copies_a_write_goes_to_both_and_the_first_reply_is_answered() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        first, second = proxy.ring.nodes(key, 2)  # type: ignore[union-attr]
        client.data_received(b"set %s 0 0 1\r\nv\r\n" % key)
        await turn()
        for name in (first, second):
            assert proxy.node_transports[name].take() == b"set %s 0 0 1\r\nv\r\n" % key
        proxy.conns[first].connection_lost(None)  # the first copy died before answering
        proxy.conns[second].data_received(b"STORED\r\n")
        await turn()
        assert out.take() == b"STORED\r\n"

    run(test, copies=2)


def test_with_two_copies_a_read_falls_back_on_a_miss_and_on_a_dead_node() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        a, b = keys_on_distinct_nodes(proxy)
        chain_a = proxy.ring.nodes(a, 2)  # type: ignore[union-attr]
        chain_b = proxy.ring.nodes(b, 2)  # type: ignore[union-attr]
        client.data_received(b"get %s %s\r\n" % (a, b))
        await turn()
        assert proxy.node_transports[chain_a[0]].take() == b"get %s\r\n" % a
        proxy.conns[chain_a[0]].data_received(b"END\r\n")  # a: a miss on its first copy
        proxy.conns[chain_b[0]].connection_lost(None)  # b: its first copy is dead
        await turn()
        second_round = {chain_a[1]: a, chain_b[1]: b}
        for name, key in second_round.items():
            assert key in proxy.node_transports[name].take()
        if chain_a[1] == chain_b[1]:
            proxy.conns[chain_a[1]].data_received(
                b"VALUE %s 0 1\r\nA\r\nVALUE %s 0 1\r\nB\r\nEND\r\n" % (a, b)
            )
        else:
            proxy.conns[chain_a[1]].data_received(b"VALUE %s 0 1\r\nA\r\nEND\r\n" % a)
            proxy.conns[chain_b[1]].data_received(b"VALUE %s 0 1\r\nB\r\nEND\r\n" % b)
        await turn()
        assert out.take() == b"VALUE %s 0 1\r\nA\r\nVALUE %s 0 1\r\nB\r\nEND\r\n" % (a, b)

    run(test, copies=2)


def test_with_two_copies_a_key_whose_copies_are_all_down_is_a_server_error() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        first, second = proxy.ring.nodes(key, 2)  # type: ignore[union-attr]
        client.data_received(b"mg %s v\r\n" % key)
        await turn()
        proxy.conns[first].connection_lost(None)
        await turn()
        proxy.conns[second].connection_lost(None)
        await turn()
        assert out.take().startswith(b"SERVER_ERROR node %s " % first.encode())

    run(test, copies=2)


def test_with_two_copies_cas_goes_to_the_first_and_the_stored_value_is_copied() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        (key,) = keys_on_distinct_nodes(proxy, 1)
        first, second = proxy.ring.nodes(key, 2)  # type: ignore[union-attr]
        client.data_received(b"cas %s 3 0 1 77\r\nv\r\n" % key)
        await turn()
        assert proxy.node_transports[first].take() == b"cas %s 3 0 1 77\r\nv\r\n" % key
        assert second not in proxy.node_transports
        proxy.conns[first].data_received(b"STORED\r\n")
        await turn()
        assert out.take() == b"STORED\r\n"
        assert proxy.node_transports[second].take() == b"set %s 3 0 1\r\nv\r\n" % key

    run(test, copies=2)


def test_reply_bytes_over_the_router_budget_pause_every_client_until_written() -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        other = Client(proxy)
        other_out = FakeTransport()
        other.connection_made(other_out)  # type: ignore[arg-type]
        proxy.budget = 100
        (key,) = keys_on_distinct_nodes(proxy, 1)
        node = proxy.ring.node(key)  # type: ignore[union-attr]
        client.data_received(b"get %s\r\n" % key)
        await turn()
        big = b"VALUE %s 0 200\r\n%s\r\nEND\r\n" % (key, b"x" * 200)
        proxy.conns[node].data_received(big)
        assert proxy.held > proxy.budget
        other.data_received(b"version\r\n")  # any client's next read pauses it
        assert other_out.paused
        await turn()  # the replies are written: the budget is free again
        assert out.take() == big and proxy.held == 0
        assert not out.paused and not other_out.paused

    run(test)
