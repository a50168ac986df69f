"""Poisonous retained bus messages cost only their sender: publish them on a running cluster
→ every sentinel is still the same running process → a later SIGKILL of a primary is still
failed over."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
import redis
from helpers import RunningCluster, wait_for

from cachefleet import bus
from cachefleet.events import read_events
from cachefleet.nodes import parse_cluster_nodes
from cachefleet.proc import read_pid, running

pytestmark = pytest.mark.integration


def poison(cluster: str) -> list[tuple[str, bytes]]:
    t = lambda *parts: bus.topic(cluster, *parts)  # noqa: E731
    return [
        (t("sentinels", "x", "hello"), b'{"sdown":5}'),
        (t("sentinels", "y", "hello"), b"\x00\xff not json"),
        (t("sentinels", "z", "hello"), b"[" * 100_000),
        (t("sentinels", "w", "hello"), b'{"a":' * 20_000 + b"1" + b"}" * 20_000),
        (t("failover", "1", "votes"), b'{"type":"request","epoch":99,"shard":1,"primary":"n"}'),
        (t("failover", "2", "votes"), b'{"type":"elected","candidate":"x","epoch":99,"shard":2}'),
        (t("failover", "3", "votes"), b'{"type":"vote","voter":5,"candidate":[],"shard":"3"}'),
    ]


def publish(c: RunningCluster, messages: list[tuple[str, bytes]]) -> None:
    plan = c.plan
    out = bus.Outbox(plan.bus_host, plan.bus_port)
    for name, payload in messages:
        out.publish(name, payload, retain=True)
    asyncio.run(out.flush())


def sentinel_pids(c: RunningCluster) -> dict[str, int]:
    pids = {}
    for s in c.plan.sentinels:
        pid = read_pid(c.cdir.pid_file(f"sentinel.{s.id}"))
        assert pid is not None, s.id
        pids[s.id] = pid
    return pids


def primary_address_holding(c: RunningCluster, slot: int) -> set[str]:
    owners = set()
    for spec in c.plan.nodes:
        try:
            r = redis.Redis(host=spec.host, port=spec.port, socket_timeout=1)
            text = r.execute_command("CLUSTER", "NODES")
        except redis.RedisError:
            continue
        raw = text.decode() if isinstance(text, bytes) else str(text)
        me = next((ln for ln in parse_cluster_nodes(raw) if "myself" in ln.flags), None)
        if me and me.is_primary and any(a <= slot <= b for a, b in me.slots):
            owners.add(spec.address)
    return owners


def test_poisonous_retained_messages_leave_sentinels_running_and_failover_working(
    cluster_factory: Any,
) -> None:
    c: RunningCluster = cluster_factory()
    before = sentinel_pids(c)
    publish(c, poison(c.name))
    # every sentinel gets the retained poison at once; several ticks and hellos later:
    time.sleep(2.0)
    assert sentinel_pids(c) == before
    assert all(running(pid) for pid in before.values())
    assert not [e for e in read_events(c.cdir.events_path) if e["type"] == "switch_primary"]

    st = c.status()
    shard = st["shards"][0]
    old, replica = shard["primary"], shard["replicas"][0]
    slot = shard["slots"][0][0]
    pid = read_pid(c.cdir.pid_file(f"node.{old['name']}"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: primary_address_holding(c, slot) == {replica["address"]},
        15,
        "failover after poison",
    )
    assert sentinel_pids(c) == before


def forged_layouts(c: RunningCluster) -> list[bytes]:
    """Layouts with a higher config epoch that must not change any routing."""
    real = c.cdir.load_layout()
    assert real is not None
    good = real.to_dict()
    epoch = real.epoch + 100

    def variant(**edits: Any) -> bytes:
        d = {**good, "epoch": epoch, **edits}
        return bus.encode(d)

    elsewhere = [
        {**s, "nodes": [{**n, "host": "127.0.0.9", "port": 1} for n in s["nodes"]]}
        for s in good["shards"]
    ]
    return [
        variant(shards=[{**good["shards"][0], "slots": [[0, 20000]]}]),
        variant(epoch=float("inf")),
        variant(shards=elsewhere),  # well-formed, but every node somewhere else
        variant(cluster="another"),
        b'{"cluster":"x","epoch":1e309,"shards":[]}',
    ]


def test_forged_layouts_change_no_routing(shared_cluster: RunningCluster) -> None:
    """A retained layout with a higher epoch but bad slots, an infinite epoch, or nodes that
    are not the cluster's: the router refuses it, keeps its worker, and keeps serving every
    key; status still shows the real layout."""
    c = shared_cluster
    host, port = c.router
    r = redis.Redis(host=host, port=port, socket_timeout=5, decode_responses=True)
    keys = [f"forged:{i}" for i in range(300)]  # over every shard
    for k in keys:
        r.set(k, k)
    workers = {n: read_pid(c.cdir.pid_file(n)) for n in ("router", "router.1")}
    before = c.status()["epoch"]
    topic = bus.topic(c.name, "layout")
    publish(c, [(topic, payload) for payload in forged_layouts(c)])
    time.sleep(1.0)
    try:
        assert [r.get(k) for k in keys] == keys
        assert all(r.set(k, "again") for k in keys)
        assert {n: read_pid(c.cdir.pid_file(n)) for n in workers} == workers
        assert all(p is None or running(p) for p in workers.values())
        assert c.status()["epoch"] == before
    finally:
        # put the real layout back as the retained one, for the module's other tests
        real = c.cdir.load_layout()
        assert real is not None
        publish(c, [(topic, bus.encode(real.to_dict()))])
        r.close()
