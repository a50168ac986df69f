"""The proxy core without sockets: clients and nodes are in-memory transports that feed bytes
to the real connection classes, and the tests play the nodes' part (read what the router
wrote, answer when they choose). Ordering of a pipelined client across shards, redirects,
failover waiting, back-pressure, and no task left behind by a client that went away."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

import pytest
from test_router_protocol import TABLE

from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.resp import encode_command
from cachefleet.slots import key_slot
from router import client as client_module
from router.backend import BackendConn
from router.client import MAX_INFLIGHT, ClientConn
from router.commands import fast_paths
from router.core import DEMOTED_GRACE_S, Core
from router.framing import RequestFramer
from router.server import Router

Addr = tuple[str, int]
P1: Addr = ("127.0.1.1", 7011)  # shard 1 primary, slots 0-8191
R1: Addr = ("127.0.2.1", 7012)  # shard 1 replica
P2: Addr = ("127.0.2.1", 7021)  # shard 2 primary, slots 8192-16383
R2: Addr = ("127.0.1.1", 7022)
STRANGER: Addr = ("127.0.0.1", 1)

# Keys by shard (checked below, so a change of hash cannot silently weaken the tests).
K1 = [b"b", b"c", b"f"]  # shard 1
K2 = [b"a", b"foo", b"x"]  # shard 2


def test_fixture_keys_are_where_the_tests_say() -> None:
    assert all(key_slot(k) < 8192 for k in K1)
    assert all(key_slot(k) >= 8192 for k in K2)


def layout(epoch: int = 1, *, shard1_primary: Addr = P1) -> Layout:
    def node(name: str, shard: int, addr: Addr, role: str) -> LayoutNode:
        return LayoutNode(name, name * 40, shard, "az-a", addr[0], addr[1], 17000, role)

    s1 = (node("a", 1, P1, "primary"), node("b", 1, R1, "replica"))
    if shard1_primary == R1:
        s1 = (node("a", 1, P1, "replica"), node("b", 1, R1, "primary"))
    return Layout(
        cluster="c",
        epoch=epoch,
        shards=(
            LayoutShard(1, ((0, 8191),), s1),
            LayoutShard(
                2, ((8192, 16383),), (node("c", 2, P2, "primary"), node("d", 2, R2, "replica"))
            ),
        ),
    )


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: Any) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.200", 50000) if name == "peername" else default


class FakeNode:
    """A node as the router sees it: its connections, what was written, answers on demand."""

    def __init__(self, addr: Addr) -> None:
        self.addr = addr
        self.conns: list[tuple[BackendConn, FakeTransport, RequestFramer]] = []
        self.refuse = False

    def requests(self) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        for _, t, framer in self.conns:
            if t.written:
                got, error = framer.feed(bytes(t.written))
                assert error is None
                t.written.clear()
                out.extend(args for args, _ in got)
        return out

    def answer(self, frame: bytes, conn: int = 0) -> None:
        self.conns[conn][0].data_received(frame)

    def drop(self) -> None:
        for _, t, _ in self.conns:
            t.close()


class Harness(Router):
    """The real router (dispatch, core, features) over fake transports."""

    def __init__(self, lay: Layout, **limits: int) -> None:
        Core.__init__(self, cluster="c", failover_wait_s=0.5, **limits)
        self.plan = SimpleNamespace(topology=SimpleNamespace(engine="valkey"), name="c")  # type: ignore[assignment]
        self.worker, self.id = 0, "router-0"
        self.commands, self.fast = TABLE, fast_paths(TABLE)
        self.commands_ready.set()
        self.nodes: dict[Addr, FakeNode] = {}
        self.queries: list[tuple[Addr, tuple[bytes, ...]]] = []
        self.apply_layout(lay)

    def node(self, addr: Addr) -> FakeNode:
        return self.nodes.setdefault(addr, FakeNode(addr))

    async def connect(self, conn: BackendConn) -> None:
        node = self.node(conn.addr)
        if node.refuse:
            raise ConnectionRefusedError(f"{conn.addr} refused")
        transport = FakeTransport(conn)
        node.conns.append((conn, transport, RequestFramer()))
        conn.connection_made(transport)

    async def query(self, addr: Addr, *args: bytes, timeout: float = 3.0) -> Any:
        self.queries.append((addr, args))
        raise OSError("no CLUSTER SHARDS in this test")

    def client(self) -> tuple[ClientConn, FakeTransport]:
        c = ClientConn(self)
        t = FakeTransport(c)
        c.connection_made(t)
        return c, t


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def cmds(*requests: list[bytes]) -> bytes:
    return b"".join(encode_command(r) for r in requests)


async def test_a_pipeline_across_shards_is_answered_in_request_order() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"GET", K2[0]], [b"GET", K1[0]], [b"GET", K2[1]], [b"GET", K1[1]]))
    await settle()
    n1, n2 = h.node(P1), h.node(P2)
    assert n1.requests() == [[b"GET", K1[0]], [b"GET", K1[1]]]
    assert n2.requests() == [[b"GET", K2[0]], [b"GET", K2[1]]]
    # one write per node; the run's replies go back together, in request order
    assert [w.left for w in n1.conns[0][0].waiters] == [2] and len(c.queue) == 1
    n1.answer(b"$2\r\nb0\r\n$2\r\nb1\r\n")  # shard 1 answers first ...
    await settle()
    assert t.written == b""  # ... but its replies wait for the first request's
    n2.answer(b"$2\r\na0\r\n")
    await settle()
    assert t.written == b""
    n2.answer(b"$2\r\na1\r\n")
    await settle()
    assert t.written == b"$2\r\na0\r\n$2\r\nb0\r\n$2\r\na1\r\n$2\r\nb1\r\n"


async def test_moved_to_a_layout_node_is_followed_and_the_slot_rerouted() -> None:
    h = Harness(layout())
    c, t = h.client()
    slot = key_slot(K1[0])
    c.data_received(cmds([b"GET", K1[0]]))
    await settle()
    assert h.node(P1).requests() == [[b"GET", K1[0]]]
    h.node(P1).answer(b"-MOVED %d %s:%d\r\n" % (slot, P2[0].encode(), P2[1]))
    await settle()
    assert h.node(P2).requests() == [[b"GET", K1[0]]]
    h.node(P2).answer(b"$1\r\nv\r\n")
    await settle()
    assert t.written == b"$1\r\nv\r\n"
    route = h.table[slot]
    assert route is not None and route.primary == P2
    assert h.queries == [(P2, (b"CLUSTER", b"SHARDS"))]  # refreshed from a cluster node


async def test_ask_sends_asking_then_the_request_to_the_importing_node() -> None:
    h = Harness(layout())
    c, t = h.client()
    slot = key_slot(K1[0])
    c.data_received(cmds([b"GET", K1[0]]))
    await settle()
    h.node(P1).requests()
    h.node(P1).answer(b"-ASK %d %s:%d\r\n" % (slot, P2[0].encode(), P2[1]))
    await settle()
    assert h.node(P2).requests() == [[b"ASKING"], [b"GET", K1[0]]]
    h.node(P2).answer(b"+OK\r\n$1\r\nv\r\n")
    await settle()
    assert t.written == b"$1\r\nv\r\n"
    route = h.table[slot]
    assert route is not None and route.primary == P1  # ASK changes no route


@pytest.mark.parametrize(
    "forged",
    [
        b"-MOVED 0 127.0.0.1:1\r\n",  # not a node of the cluster
        b"-ASK 0 127.0.0.1:1\r\n",
        b"-MOVED 99999 127.0.2.1:7021\r\n",  # no such slot
        b"-MOVED -1 127.0.2.1:7021\r\n",
        b"-MOVED 5 127.0.2.1:99999\r\n",  # no such port
        b"-MOVED 5 evil.example:7021\r\n",
    ],
)
async def test_a_forged_redirect_is_relayed_and_changes_nothing(forged: bytes) -> None:
    h = Harness(layout())
    c, t = h.client()
    h.client()
    other, other_t = h.client()  # clients 1 and 3 share a pooled connection per node
    other.data_received(cmds([b"GET", K1[2]]))
    c.data_received(cmds([b"EVAL", b"return redis.error_reply('...')", b"1", K1[0]]))
    await settle()
    assert len(h.node(P1).requests()) == 2
    table_before = list(h.table)
    h.node(P1).answer(forged)  # the other client's GET went first on the shared connection
    h.node(P1).answer(b"$1\r\nz\r\n")
    await settle()
    assert other_t.written == forged  # the first reply on the connection was the other's
    assert t.written == b"$1\r\nz\r\n"
    # Same order again, now with the forged reply to the script itself.
    c.data_received(cmds([b"EVAL", b"return redis.error_reply('...')", b"1", K1[0]]))
    other.data_received(cmds([b"GET", K1[2]]))
    await settle()
    h.node(P1).requests()
    h.node(P1).answer(forged + b"$1\r\ny\r\n")
    await settle()
    assert t.written == b"$1\r\nz\r\n" + forged
    assert other_t.written == forged + b"$1\r\ny\r\n"  # the shared connection survived
    assert h.table == table_before
    assert STRANGER not in h.nodes and h.queries == []


async def test_a_request_not_yet_written_waits_for_the_next_layout() -> None:
    h = Harness(layout())
    h.node(P1).refuse = True
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v"]))
    await settle()
    assert t.written == b""  # waiting: neither an error nor a write
    h.apply_layout(layout(epoch=2, shard1_primary=R1))
    await asyncio.sleep(0.05)
    assert h.node(R1).requests() == [[b"SET", K1[0], b"v"]]
    h.node(R1).answer(b"+OK\r\n")
    await settle()
    assert t.written == b"+OK\r\n"


async def test_no_new_layout_in_time_is_clusterdown() -> None:
    h = Harness(layout())
    h.node(P1).refuse = True
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v"]))
    await asyncio.sleep(0.8)  # failover_wait_s is 0.5
    assert t.written.startswith(b"-CLUSTERDOWN router: no reachable node for slot")


async def test_a_written_write_whose_node_is_lost_is_not_retried() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v"], [b"GET", K1[1]]))
    await settle()
    assert h.node(P1).requests() == [[b"SET", K1[0], b"v"], [b"GET", K1[1]]]
    h.node(P1).drop()
    await settle()
    h.apply_layout(layout(epoch=2, shard1_primary=R1))
    await asyncio.sleep(0.05)
    # The write may have been applied: "outcome unknown", never sent again; the read is.
    assert h.node(R1).requests() == [[b"GET", K1[1]]]
    h.node(R1).answer(b"$1\r\nw\r\n")
    await settle()
    assert t.written.startswith(b"-ERR router: outcome unknown (connection to 127.0.1.1:7011")
    assert t.written.endswith(b"\r\n$1\r\nw\r\n")


async def test_a_client_that_does_not_read_replies_is_paused_then_resumed() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds(*[[b"GET", K1[0]]] * (MAX_INFLIGHT + 10)))
    await settle()
    assert not t.reading  # stopped reading from the client
    n = len(h.node(P1).requests())
    assert n == MAX_INFLIGHT + 10
    h.node(P1).answer(b"$1\r\nv\r\n" * n)
    await settle()
    assert t.reading
    assert t.written == b"$1\r\nv\r\n" * n


async def test_a_client_gone_while_a_serial_request_waits_leaves_nothing_behind() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"GET", K1[0]], [b"BLPOP", K1[1], b"0"], [b"GET", K1[2]]))
    await settle()
    assert h.node(P1).requests() == [[b"GET", K1[0]]]  # BLPOP waits for its turn
    assert h.tasks
    t.close()
    await settle()
    assert not h.tasks and c not in h.clients
    assert c.held is None and not c.queue


async def test_a_split_request_counts_each_part_against_the_in_flight_limit() -> None:
    h = Harness(layout())
    c, t = h.client()
    keys = [b"k%d" % i for i in range(MAX_INFLIGHT + 50)]
    assert len({key_slot(k) for k in keys}) > MAX_INFLIGHT // 2
    c.data_received(cmds([b"MGET", *keys]))
    await settle()
    assert not t.reading  # one request, but more than MAX_INFLIGHT backend calls


async def test_the_global_byte_budget_pauses_clients_until_replies_drain() -> None:
    h = Harness(layout(), inflight_budget=100_000)
    a, ta = h.client()
    b, tb = h.client()
    value = b"v" * 30_000
    a.data_received(cmds(*[[b"SET", K1[0], value]] * 4))  # 120 kB in flight
    await settle()
    b.data_received(cmds([b"GET", K2[0]]))
    await settle()
    assert not ta.reading and not tb.reading and h.starving
    h.node(P1).answer(b"+OK\r\n" * 4)
    h.node(P2).answer(b"$1\r\nv\r\n")
    await settle()
    assert ta.reading and tb.reading and h.inflight_bytes == 0
    assert ta.written == b"+OK\r\n" * 4 and tb.written == b"$1\r\nv\r\n"


async def test_maxclients_refuses_with_the_engine_text() -> None:
    h = Harness(layout(), max_clients=2)
    h.client()
    h.client()
    _c, t = h.client()
    await settle()
    assert t.written == b"-ERR max number of clients reached\r\n" and t.closed
    assert len(h.clients) == 2


async def test_a_subscriber_that_does_not_read_is_disconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "PUBSUB_OUTPUT_LIMIT", 10_000)
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SUBSCRIBE", b"news"]))
    await settle()
    assert c.pubsub is not None
    message = b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$1000\r\n" + b"m" * 1000 + b"\r\n"
    conn = next(iter(h.nodes.values())).conns[0][0]
    conn.data_received(b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n")
    for _ in range(20):
        conn.data_received(message)  # never flushed: the client is not reading
    await settle()
    assert t.closed and c.closed and c.pubsub is None
    assert all(tr.closed for _, tr, _ in next(iter(h.nodes.values())).conns)


async def test_a_client_gone_with_requests_in_flight_frees_its_budget() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v" * 1000], [b"GET", K2[0]]))
    await settle()
    assert h.inflight_bytes > 1000
    t.close()
    await settle()
    h.node(P1).answer(b"+OK\r\n")  # replies after the client left are dropped
    h.node(P2).answer(b"$1\r\nv\r\n")
    await settle()
    assert h.inflight_bytes == 0 and not h.tasks and not h.clients


async def test_a_node_that_stops_answering_is_cut_off_after_the_request_deadline() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v"], [b"GET", K1[1]]))
    await settle()
    assert len(h.node(P1).requests()) == 2
    seen: dict[int, tuple[int, float]] = {}
    h.sweep(seen, timeout=0.05)
    assert not h.node(P1).conns[0][1].closed  # not yet
    await asyncio.sleep(0.1)
    h.sweep(seen, timeout=0.05)
    await settle()
    assert h.node(P1).conns[0][1].closed
    assert t.written.startswith(b"-ERR router: outcome unknown")  # the write; the read waits


async def test_primary_connections_to_a_demoted_node_are_closed_on_the_new_layout() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v"]))
    await settle()
    h.node(P1).requests()
    h.apply_layout(layout(epoch=2, shard1_primary=R1))  # P1 is a replica now
    await settle()
    assert not h.node(P1).conns[0][1].closed  # it may still answer (a graceful failover)
    await asyncio.sleep(DEMOTED_GRACE_S + 0.2)
    assert h.node(P1).conns[0][1].closed  # it did not: a late ack cannot come now
    assert t.written.startswith(b"-ERR router: outcome unknown")


async def test_a_gracefully_demoted_primary_answers_its_last_requests() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v"]))
    await settle()
    h.node(P1).requests()
    h.apply_layout(layout(epoch=2, shard1_primary=R1))
    await settle()
    slot = key_slot(K1[0])
    h.node(P1).answer(b"-MOVED %d %s:%d\r\n" % (slot, R1[0].encode(), R1[1]))
    await settle()
    assert h.node(R1).requests() == [[b"SET", K1[0], b"v"]]
    h.node(R1).answer(b"+OK\r\n")
    await asyncio.sleep(DEMOTED_GRACE_S + 0.2)
    assert t.written == b"+OK\r\n"
    assert h.node(P1).conns[0][1].closed  # idle now, and no longer a primary


async def test_mset_with_a_missing_value_is_refused_whole() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"MSET", K1[0], b"1", K2[0]]))
    await settle()
    assert t.written == b"-ERR wrong number of arguments for 'mset' command\r\n"
    assert h.node(P1).requests() == [] and h.node(P2).requests() == []


async def test_wait_is_refused_with_a_reason() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SET", K1[0], b"v"], [b"WAIT", b"1", b"100"]))
    await settle()
    h.node(P1).answer(b"+OK\r\n")
    await settle()
    assert t.written.startswith(b"+OK\r\n-ERR router: WAIT is not supported through the router")
    assert h.node(P1).requests() == [[b"SET", K1[0], b"v"]]


async def test_client_commands_describe_the_clients_own_connection() -> None:
    h = Harness(layout())
    c, t = h.client()
    other, _ = h.client()
    c.data_received(
        cmds(
            [b"CLIENT", b"SETNAME", b"worker-1"],
            [b"CLIENT", b"GETNAME"],
            [b"CLIENT", b"ID"],
            [b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"],
            [b"CLIENT", b"INFO"],
            [b"CLIENT", b"LIST"],
        )
    )
    await settle()
    out = bytes(t.written)
    assert out.startswith(b"+OK\r\n$8\r\nworker-1\r\n:%d\r\n+OK\r\n" % c.id)
    assert b"id=%d " % c.id in out and b"name=worker-1" in out and b"lib-name=redis-py" in out
    listing = out.split(b"+OK\r\n")[-1]
    assert b"id=%d " % c.id in listing and b"id=%d " % other.id in listing
    assert all(n.requests() == [] for n in h.nodes.values())  # nothing reached a node


async def test_resp3_subscriber_gets_replies_and_pushes_in_request_order() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"HELLO", b"3"], [b"SUBSCRIBE", b"ch"]))
    await settle()
    sub_node = next(n for n in h.nodes.values() if n.conns)
    assert sub_node.requests() == [[b"HELLO", b"3"], [b"SUBSCRIBE", b"ch"]]
    sub_node.answer(b"+OK\r\n>3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
    await settle()
    t.written.clear()
    c.data_received(cmds([b"GET", K1[0]], [b"PING"], [b"UNSUBSCRIBE", b"ch"]))
    await settle()
    assert t.written == b""  # PONG and the unsubscribe push wait for the GET's reply
    pooled = next(i for i, (b, _, _) in enumerate(h.node(P1).conns) if b.pool_key is not None)
    h.node(P1).answer(b"+OK\r\n$1\r\nv\r\n", conn=pooled)  # HELLO 3, then the GET
    await settle()
    assert t.written == b"$1\r\nv\r\n+PONG\r\n"
    assert [b"UNSUBSCRIBE", b"ch"] in sub_node.requests()


async def test_a_multi_block_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from router import transactions

    monkeypatch.setattr(transactions, "MAX_QUEUED_BYTES", 1000)
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"MULTI"], *[[b"SET", K1[0], b"v" * 300]] * 5, [b"EXEC"]))
    await settle()
    out = bytes(t.written)
    assert out.startswith(b"+OK\r\n" + b"+QUEUED\r\n" * 4 + b"-ERR router: MULTI queue over")
    assert out.endswith(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
    assert h.node(P1).requests() == []


@pytest.mark.parametrize(
    "forged", [b"-TRYAGAIN x\r\n", b"-CLUSTERDOWN x\r\n", b"-MOVED %d 127.0.2.1:7021\r\n"]
)
async def test_a_script_is_never_sent_again_on_its_own_error_reply(forged: bytes) -> None:
    h = Harness(layout())
    c, t = h.client()
    if b"%d" in forged:
        forged = forged % key_slot(K1[0])  # a member and the right slot: still the script's
    c.data_received(cmds([b"EVAL", b"redis.call('INCR', KEYS[1]) return x", b"1", K1[0]]))
    await settle()
    assert len(h.node(P1).requests()) == 1
    h.node(P1).answer(forged)
    await asyncio.sleep(0.1)
    assert t.written == forged
    assert h.node(P1).requests() == [] and h.node(P2).requests() == []
    route = h.table[key_slot(K1[0])]
    assert route is not None and route.primary == P1


async def test_hello_protocol_version_is_parsed_as_the_engine_does() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"HELLO", b"03"], [b"HELLO", b"4"]))
    await settle()
    assert t.written == (
        b"-ERR Protocol version is not an integer or out of range\r\n"
        b"-NOPROTO unsupported protocol version\r\n"
    )


# --- batches: a pipeline's simple requests for one node travel as one payload ----------------


async def test_a_pipeline_for_one_node_is_one_write_and_one_reply_entry() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds(*([b"SET", k, b"v"] for k in K1), [b"GET", K1[0]]))
    await settle()
    node = h.node(P1)
    conn, _, _ = node.conns[0]
    assert [w.left for w in conn.waiters] == [4] and len(c.queue) == 1  # one batch of four
    assert node.requests() == [*([b"SET", k, b"v"] for k in K1), [b"GET", K1[0]]]
    node.answer(b"+OK\r\n+OK\r\n")
    await settle()
    assert t.written == b""  # the batch is answered as a whole
    node.answer(b"+OK\r\n$1\r\nv\r\n")
    await settle()
    assert t.written == b"+OK\r\n+OK\r\n+OK\r\n$1\r\nv\r\n"
    assert h.inflight_bytes == 0 and c.parts == 0


async def test_a_redirect_inside_a_batch_is_followed_and_the_order_kept() -> None:
    h = Harness(layout())
    c, t = h.client()
    slot = key_slot(K1[1])
    c.data_received(cmds([b"GET", K1[0]], [b"GET", K1[1]], [b"HGET", K1[2], b"f"]))
    await settle()
    assert len(h.node(P1).requests()) == 3
    h.node(P1).answer(
        b"$1\r\na\r\n-MOVED %d %s:%d\r\n-WRONGTYPE Operation against a key\r\n"
        % (slot, P2[0].encode(), P2[1])
    )
    await settle()
    assert h.node(P2).requests() == [[b"GET", K1[1]]]
    assert t.written == b"$1\r\na\r\n"  # the first reply is out; the rest waits its turn
    h.node(P2).answer(b"$1\r\nb\r\n")
    await settle()
    assert t.written == b"$1\r\na\r\n$1\r\nb\r\n-WRONGTYPE Operation against a key\r\n"
    assert h.inflight_bytes == 0 and c.parts == 0 and len(c.queue) == 0


async def test_a_batch_cut_by_a_lost_connection_answers_what_it_got_and_resends_reads() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"GET", K1[0]], [b"SET", K1[1], b"v"], [b"GET", K1[2]]))
    await settle()
    assert len(h.node(P1).requests()) == 3
    h.node(P1).answer(b"$1\r\na\r\n")
    h.node(P1).drop()
    await settle()
    # the GET that was answered is delivered, the SET's outcome is unknown, the last GET waits
    assert t.written.startswith(b"$1\r\na\r\n-ERR router: outcome unknown")
    h.apply_layout(layout(epoch=2, shard1_primary=R1))  # a failover: the read goes there
    await asyncio.sleep(0.05)
    assert h.node(R1).requests() == [[b"GET", K1[2]]]
    h.node(R1).answer(b"$1\r\nc\r\n")
    await settle()
    assert t.written == (
        b"$1\r\na\r\n-ERR router: outcome unknown (connection to 127.0.1.1:7011 lost after the "
        b"request was sent)\r\n$1\r\nc\r\n"
    )
    assert h.inflight_bytes == 0 and c.parts == 0 and not c.queue


# --- subscriptions outlive the node that serves them -----------------------------------------


def sub_frame(kind: bytes, name: bytes, count: int) -> bytes:
    return b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n:%d\r\n" % (len(kind), kind, len(name), name, count)


def message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(channel), channel, len(data), data,
    )  # fmt: skip


def subscribed_node(h: Harness, *candidates: Addr) -> FakeNode:
    (node,) = [n for n in (h.node(a) for a in candidates) if n.conns]
    return node


async def test_classic_subscriptions_move_to_another_node_when_theirs_is_lost() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SUBSCRIBE", b"news"], [b"PSUBSCRIBE", b"n*"]))
    await settle()
    first = subscribed_node(h, P1, P2)
    assert first.requests() == [[b"SUBSCRIBE", b"news"], [b"PSUBSCRIBE", b"n*"]]
    first.answer(sub_frame(b"subscribe", b"news", 1) + sub_frame(b"psubscribe", b"n*", 2))
    await settle()
    t.written.clear()
    first.drop()
    await settle()
    other = h.node(P2 if first.addr == P1 else P1)
    assert other.requests() == [[b"SUBSCRIBE", b"news"], [b"PSUBSCRIBE", b"n*"]]
    # the confirmations of the re-subscription are the router's, not the client's
    other.answer(sub_frame(b"subscribe", b"news", 1) + sub_frame(b"psubscribe", b"n*", 2))
    other.answer(message(b"news", b"after"))
    await settle()
    assert t.written == message(b"news", b"after")
    assert not t.closed and c.pubsub is not None


async def test_sharded_subscriptions_follow_their_slot_to_the_new_primary() -> None:
    h = Harness(layout())
    c, t = h.client()
    channel = next(k for k in (b"ch%d" % i for i in range(100)) if key_slot(k) < 8192)
    c.data_received(cmds([b"SSUBSCRIBE", channel]))
    await settle()
    assert h.node(P1).requests() == [[b"SSUBSCRIBE", channel]]
    h.node(P1).answer(sub_frame(b"ssubscribe", channel, 1))
    await settle()
    t.written.clear()
    h.node(P1).drop()
    await settle()
    assert not t.closed  # it waits for a node that serves the slot
    h.apply_layout(layout(epoch=2, shard1_primary=R1))
    await asyncio.sleep(0.05)
    assert h.node(R1).requests() == [[b"SSUBSCRIBE", channel]]
    h.node(R1).answer(sub_frame(b"ssubscribe", channel, 1))
    h.node(R1).answer(b"*3\r\n$8\r\nsmessage\r\n$%d\r\n%s\r\n$1\r\nx\r\n" % (len(channel), channel))
    await settle()
    assert t.written.startswith(b"*3\r\n$8\r\nsmessage\r\n") and c.pubsub is not None


async def test_a_layout_that_demotes_the_classic_node_moves_the_subscriptions() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"SUBSCRIBE", b"news"]))
    await settle()
    first = subscribed_node(h, P1, P2)
    first.requests()
    first.answer(sub_frame(b"subscribe", b"news", 1))
    await settle()
    # a paused node keeps its connection open: only the layout says it no longer serves
    h.apply_layout(layout(epoch=2, shard1_primary=R1))
    await settle()
    if first.addr == P1:
        assert first.conns[0][1].closed
        moved = subscribed_node(h, R1, P2)
        assert moved.requests() == [[b"SUBSCRIBE", b"news"]]
    else:
        assert not first.conns[0][1].closed  # P2 still serves: nothing moves
    assert not t.closed


# --- multi-key requests: split by slot, sent by node --------------------------------------------


async def test_mget_over_many_slots_is_one_write_per_node_merged_in_order() -> None:
    h = Harness(layout())
    c, t = h.client()
    keys = [K2[0], K1[0], K1[1], K2[1], K1[2]]
    assert len({key_slot(k) for k in keys}) == len(keys)
    c.data_received(cmds([b"MGET", *keys]))
    await settle()
    n1, n2 = h.node(P1), h.node(P2)
    assert n1.requests() == [[b"MGET", K1[0]], [b"MGET", K1[1]], [b"MGET", K1[2]]]
    assert n2.requests() == [[b"MGET", K2[0]], [b"MGET", K2[1]]]
    assert [w.left for w in n1.conns[0][0].waiters] == [3] and len(c.queue) == 1
    n1.answer(b"*1\r\n$2\r\nb0\r\n*1\r\n$2\r\nb1\r\n*1\r\n$-1\r\n")
    n2.answer(b"*1\r\n$2\r\na0\r\n*1\r\n$2\r\na1\r\n")
    await settle()
    assert t.written == b"*5\r\n$2\r\na0\r\n$2\r\nb0\r\n$2\r\nb1\r\n$2\r\na1\r\n$-1\r\n"
    assert h.inflight_bytes == 0 and c.parts == 0


async def test_a_moved_slot_inside_a_node_batch_of_mget_is_followed() -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"MGET", K1[0], K1[1]]))
    await settle()
    assert len(h.node(P1).requests()) == 2
    slot = key_slot(K1[1])
    h.node(P1).answer(b"*1\r\n$2\r\nb0\r\n-MOVED %d %s:%d\r\n" % (slot, P2[0].encode(), P2[1]))
    await settle()
    assert h.node(P2).requests() == [[b"MGET", K1[1]]]
    h.node(P2).answer(b"*1\r\n$2\r\nb1\r\n")
    await settle()
    assert t.written == b"*2\r\n$2\r\nb0\r\n$2\r\nb1\r\n"
    assert h.inflight_bytes == 0 and c.parts == 0 and not c.queue


async def test_requests_leave_no_garbage_for_the_cyclic_collector() -> None:
    """Reference cycles per request would be freed only by the cyclic GC, whose pauses were
    most of the router's p99: a scattered pipeline, a split MGET and a redirected batch must
    all be freed by reference counting alone."""
    h = Harness(layout())
    c, t = h.client()
    await settle()
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            c.data_received(
                cmds(*([b"GET", k] for k in K1 + K2), [b"MGET", *K1, *K2], [b"SET", K1[0], b"v"])
            )
            await settle()
            for node in h.nodes.values():
                for conn, transport, _ in node.conns:
                    frames = []
                    for w in conn.waiters:
                        frames.extend([b"$1\r\nv\r\n" if w.left else b"+OK\r\n"] * w.left)
                    transport.written.clear()
                    conn.data_received(b"".join(frames))
            await settle()
            t.written.clear()
        assert not c.queue and c.parts == 0
        assert gc.collect() == 0
    finally:
        gc.enable()
