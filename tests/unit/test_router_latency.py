"""The routers' request-duration histogram: every request counted once, in the bucket of the
time from reading its packet to queueing its reply (a pipelined batch weighs its requests);
the RESP router and the memcached proxy alike."""

from __future__ import annotations

import pytest
from test_memcached_proxy import FakeProxy, FakeTransport, keys_on_distinct_nodes, run, turn
from test_router_core import K1, K2, P1, P2, Harness, cmds, layout, settle

from router import client as client_module
from router.latency import LATENCY, LATENCY_BOUNDS
from router.memcache import conns as memcache_conns
from router.memcache.conns import Client


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(client_module, "_now", c)
    monkeypatch.setattr(memcache_conns, "_now", c)
    hist = LATENCY  # one per worker process: reset in place
    monkeypatch.setattr(hist, "counts", [0] * (len(LATENCY_BOUNDS) + 1))
    monkeypatch.setattr(hist, "total", 0.0)
    return c


def bucket(seconds: float) -> int:
    return next((i for i, b in enumerate(LATENCY_BOUNDS) if seconds <= b), len(LATENCY_BOUNDS))


async def test_one_request(clock: Clock) -> None:
    h = Harness(layout())
    c, t = h.client()
    c.data_received(cmds([b"GET", K1[0]]))
    await settle()
    h.node(P1).requests()
    clock.now += 0.003
    h.node(P1).answer(b"$1\r\nv\r\n")
    await settle()
    assert t.written == b"$1\r\nv\r\n"
    hist = LATENCY
    assert sum(hist.counts) == 1 and hist.counts[bucket(0.003)] == 1
    assert hist.total == pytest.approx(0.003)
    published = hist.state()
    assert published["counts"] == hist.counts and published["le"] == list(LATENCY_BOUNDS)


async def test_a_pipeline_across_shards_counts_each_request(clock: Clock) -> None:
    h = Harness(layout())
    c, _ = h.client()
    c.data_received(cmds([b"GET", K2[0]], [b"GET", K1[0]], [b"GET", K2[1]], [b"GET", K1[1]]))
    await settle()
    c.data_received(cmds([b"GET", K1[0]]))  # a second packet, after the run
    clock.now += 0.0002
    await settle()
    h.node(P1).requests()
    h.node(P2).requests()
    clock.now += 0.0001
    h.node(P1).answer(b"$2\r\nb0\r\n$2\r\nb1\r\n")
    h.node(P2).answer(b"$2\r\na0\r\n$2\r\na1\r\n")
    await settle()
    hist = LATENCY
    assert sum(hist.counts) == 4  # the merged run: one queue entry, four requests
    assert hist.counts[bucket(0.0003)] == 4
    h.node(P1).answer(b"$1\r\nx\r\n")
    await settle()
    assert sum(hist.counts) == 5


def test_the_memcached_proxy_counts_each_reply(clock: Clock) -> None:
    async def test(proxy: FakeProxy, client: Client, out: FakeTransport) -> None:
        a, b = keys_on_distinct_nodes(proxy)
        node_a, node_b = proxy.ring.node(a), proxy.ring.node(b)  # type: ignore[union-attr]
        client.data_received(b"get %s\r\nincr %s 1\r\n" % (a, b))
        await turn()
        clock.now += 0.02
        proxy.conns[node_b].data_received(b"5\r\n")
        proxy.conns[node_a].data_received(b"END\r\n")
        await turn()
        assert out.take() == b"END\r\n5\r\n"

    run(test)
    assert sum(LATENCY.counts) == 2 and LATENCY.counts[bucket(0.02)] == 2
    assert LATENCY.total == pytest.approx(0.04)
