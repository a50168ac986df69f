"""Sentinel quorum failover, acceptance scenarios on real engines, sentinels and agents.

Each reads as a sentence: "kill the primary of shard 1 → a replica in another zone serves
shard 1's slots → the killed node comes back as its replica".
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from helpers import RunningCluster, cli, node_client, router_client, wait_for
from redis.cluster import RedisCluster

from cachefleet.events import read_events
from cachefleet.nodes import parse_cluster_nodes
from cachefleet.proc import read_pid
from cachefleet.slots import key_slot

pytestmark = pytest.mark.integration


def node(address: str) -> redis.Redis:
    return node_client(address, timeout=1)


def events(c: RunningCluster, kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_events(c.cdir.events_path) if kind is None or e["type"] == kind]


def node_pid(c: RunningCluster, name: str) -> int:
    pid = read_pid(c.cdir.pid_file(f"node.{name}"))
    assert pid is not None
    return pid


def masters_holding(c: RunningCluster, slot: int) -> set[str]:
    """Addresses of every live node that, in its own view, is a master owning `slot`."""
    owners = set()
    for spec in c.plan.nodes:
        try:
            text = node(spec.address).execute_command("CLUSTER", "NODES")
        except redis.RedisError:
            continue
        me = next((ln for ln in parse_cluster_nodes(str(text)) if "myself" in ln.flags), None)
        if me and me.is_primary and any(a <= slot <= b for a, b in me.slots):
            owners.add(spec.address)
    return owners


def key_in_shard(status: dict[str, Any], shard_id: int, n: int = 0) -> str:
    shard = next(s for s in status["shards"] if s["id"] == shard_id)
    i = 0
    found = 0
    while True:
        k = f"k{i}"
        if any(a <= key_slot(k) <= b for a, b in shard["slots"]):
            if found == n:
                return k
            found += 1
        i += 1


def primary_of(c: RunningCluster, shard_id: int) -> dict[str, Any]:
    st = c.status()
    shard = next(s for s in st["shards"] if s["id"] == shard_id)
    return dict(shard["primary"])


def test_killed_primary_is_replaced_by_a_replica_in_another_zone(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory()
    before = c.status()
    old = before["shards"][0]["primary"]
    replica = before["shards"][0]["replicas"][0]
    slot = before["shards"][0]["slots"][0][0]
    os.kill(node_pid(c, old["name"]), signal.SIGKILL)

    wait_for(lambda: masters_holding(c, slot) == {replica["address"]}, 15, "the replica to serve")
    assert replica["zone"] != old["zone"]
    host, port = c.router
    rc = RedisCluster(host=host, port=port, decode_responses=True)
    try:
        k = key_in_shard(before, 1)
        rc.set(k, "after-failover")
        assert rc.get(k) == "after-failover"
    finally:
        rc.close()

    def old_is_replica() -> bool:
        try:
            rep = node(old["address"]).info("replication")
        except redis.RedisError:
            return False
        return rep["role"] == "slave" and rep.get("master_link_status") == "up"

    wait_for(old_is_replica, 20, "the killed primary to return as a replica")
    after = c.status()
    shard = after["shards"][0]
    assert shard["primary"]["name"] == replica["name"]
    assert [r["name"] for r in shard["replicas"]] == [old["name"]]
    assert after["epoch"] > before["epoch"]
    kinds = [e["type"] for e in events(c)]
    for kind in ("sdown", "odown", "new_epoch", "elected_leader", "failover_started",
                 "switch_primary", "failover_completed", "node_replaced"):  # fmt: skip
        assert kind in kinds, kind
    assert masters_holding(c, slot) == {replica["address"]}


def test_paused_primary_fails_over_and_returns_as_replica_never_a_second_primary(
    cluster_factory: Any,
) -> None:
    c: RunningCluster = cluster_factory(shards=2)
    before = c.status()
    old = before["shards"][1]["primary"]
    replica = before["shards"][1]["replicas"][0]
    slot = before["shards"][1]["slots"][0][0]
    pid = node_pid(c, old["name"])
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: replica["address"] in masters_holding(c, slot), 15, "promotion")
    finally:
        os.kill(pid, signal.SIGCONT)

    def settled() -> bool:
        try:
            rep = node(old["address"]).info("replication")
        except redis.RedisError:
            return False
        return rep["role"] == "slave" and masters_holding(c, slot) == {replica["address"]}

    wait_for(settled, 20, "the resumed primary to become a replica")
    # it stays a replica: watch for a while that only one node ever owns the slot
    for _ in range(20):
        assert masters_holding(c, slot) == {replica["address"]}
        time.sleep(0.1)
    st = c.status()
    assert st["shards"][1]["primary"]["name"] == replica["name"]


def test_a_whole_zone_down_fails_over_every_primary_it_held(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory()
    before = c.status()
    zone = "az-a"
    victims = [s for s in before["shards"] if s["primary"]["zone"] == zone]
    assert victims, "placement puts a primary in every zone"
    pids = list(_zone_pids(c, zone).values())  # the agent first: nothing restarts
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for shard in victims:
        slot = shard["slots"][0][0]
        replica = shard["replicas"][0]
        wait_for(
            lambda slot=slot, replica=replica: masters_holding(c, slot) == {replica["address"]},
            15,
            f"shard {shard['id']} to fail over",
        )
    st = c.status()
    for shard in victims:
        now = next(s for s in st["shards"] if s["id"] == shard["id"])
        assert now["primary"]["zone"] != zone


def _zone_pids(c: RunningCluster, zone: str) -> dict[str, int]:
    """Agent, nodes and sentinels of one zone (their pid files)."""
    plan = c.plan
    names = [f"agent.{zone}"] + [f"node.{n.name}" for n in plan.zone_nodes(zone)]
    zones = plan.topology.zones
    names += [f"sentinel.s{i + 1}" for i in range(plan.topology.sentinels.count)
              if zones[i % len(zones)] == zone]  # fmt: skip
    out = {}
    for name in names:
        pid = read_pid(c.cdir.pid_file(name))
        if pid:
            out[name] = pid
    return out


def sentinel_pid(c: RunningCluster, sid: str) -> int:
    pid = read_pid(c.cdir.pid_file(f"sentinel.{sid}"))
    assert pid is not None, f"no pid file for sentinel {sid}"
    return pid


@contextlib.contextmanager
def sentinels_paused(c: RunningCluster, *sids: str) -> Iterator[None]:
    """Sentinels that are down for the whole block: paused (SIGSTOP), so that nothing
    restarts them meanwhile; resumed on the way out."""
    pids = [sentinel_pid(c, sid) for sid in sids]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_one_sentinel_down_still_fails_over(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=2)
    with sentinels_paused(c, "s3"):
        before = c.status()
        old = before["shards"][0]["primary"]
        replica = before["shards"][0]["replicas"][0]
        os.kill(node_pid(c, old["name"]), signal.SIGKILL)
        slot = before["shards"][0]["slots"][0][0]
        wait_for(
            lambda: masters_holding(c, slot) == {replica["address"]}, 15, "failover with 2 of 3"
        )
        leaders = {e["sentinel"] for e in events(c, "elected_leader")}
    assert leaders and "s3" not in leaders


def test_minority_of_sentinels_never_promotes_and_says_so(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=2)
    with sentinels_paused(c, "s2", "s3"):
        time.sleep(1.5)  # their hellos go stale
        before = c.status()
        old = before["shards"][0]["primary"]
        replica = before["shards"][0]["replicas"][0]
        os.kill(node_pid(c, old["name"]), signal.SIGKILL)
        wait_for(lambda: events(c, "no_quorum"), 10, "a no_quorum event")
        # well past detection + election time: still nobody promoted
        time.sleep(2.0)
        rep = node(replica["address"]).info("replication")
        assert rep["role"] == "slave"
        assert not events(c, "switch_primary")
        assert not events(c, "elected_leader")
    ev = events(c, "no_quorum")[0]
    assert ev["sentinel"] == "s1" and ev["shard"] == 1


def test_graceful_failover_under_a_steady_writer_loses_no_acknowledged_write(
    cluster_factory: Any,
) -> None:
    c: RunningCluster = cluster_factory(shards=2)
    before = c.status()
    host, port = c.router
    rc = RedisCluster(host=host, port=port, decode_responses=True)
    acked: dict[str, int] = {}
    indeterminate: dict[str, set[int]] = {}
    stop = threading.Event()
    counter = 0

    def writer() -> None:
        nonlocal counter
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            counter += 1
            k = f"g:{counter % 500}"
            try:
                rc.set(k, counter)
                acked[k] = counter
            except redis.RedisError:
                indeterminate.setdefault(k, set()).add(counter)
                time.sleep(0.005)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(1.0)
        out = cli("failover", c.name, "--shard", "1", "--state-dir", str(c.state_dir))
        assert "shard 1: primary" in out.stdout
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    assert len(acked) == 500
    new = primary_of(c, 1)
    assert new["name"] == before["shards"][0]["replicas"][0]["name"]
    lost = []
    for k, v in acked.items():
        got = int(rc.get(k))
        if got != v and got not in indeterminate.get(k, set()):
            lost.append((k, v, got))
    rc.close()
    assert lost == []
    assert events(c, "graceful_failover")[0]["new_primary"] == new["name"]


def test_graceful_failover_refuses_without_a_healthy_replica(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=1, replicas_per_shard=0, zones=["az-a"])
    proc = cli("failover", c.name, "--shard", "1", "--state-dir", str(c.state_dir), check=False)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == "cachefleet: error: shard 1 has no healthy replica to fail over to"
    )
    proc = cli("failover", c.name, "--shard", "9", "--state-dir", str(c.state_dir), check=False)
    assert proc.returncode == 1
    assert "has no shard 9" in proc.stderr


def test_a_stopped_cluster_restarts_with_the_roles_its_failovers_left(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=2)
    before = c.status()
    old = before["shards"][0]["primary"]
    replica = before["shards"][0]["replicas"][0]
    slot = before["shards"][0]["slots"][0][0]
    os.kill(node_pid(c, old["name"]), signal.SIGKILL)
    wait_for(lambda: masters_holding(c, slot) == {replica["address"]}, 15, "failover")
    c.down(purge=False)
    cli("up", str(c.topology_path), "--detach", "--state-dir", str(c.state_dir), timeout=120)
    after = c.status()
    assert after["state"] == "available"
    assert after["shards"][0]["primary"]["name"] == replica["name"]
    assert after["epoch"] > before["epoch"]
    assert all(n["healthy"] for s in after["shards"] for n in [s["primary"], *s["replicas"]])


def test_subscribers_through_the_router_keep_their_subscriptions_across_a_failover(
    cluster_factory: Any,
) -> None:
    """Kill the node that serves a router client's classic and sharded subscriptions while a
    publisher sends numbered messages: the client stays connected, and from the moment its
    subscriptions are on the new node it misses no message."""
    c: RunningCluster = cluster_factory()
    before = c.status()
    client = router_client(c, socket_timeout=5)
    sub = client.pubsub()
    sub.subscribe("news")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    primaries = {s["id"]: s["primary"] for s in before["shards"]}
    serving = [
        (sid, p) for sid, p in primaries.items()
        if dict(node(p["address"]).pubsub_numsub("news")).get("news") == 1
    ]  # fmt: skip
    assert len(serving) == 1, serving
    shard_id, victim = serving[0]
    channel = key_in_shard(before, shard_id)  # a sharded channel of the same node
    sub.ssubscribe(channel)
    assert sub.get_message(timeout=5)["type"] == "ssubscribe"

    total, sent_at, errors = 200, {}, 0
    publisher = router_client(c, socket_timeout=2)
    received: dict[str, list[int]] = {"news": [], channel: []}
    stop = threading.Event()

    def publish() -> None:
        nonlocal errors
        for i in range(total):
            if stop.is_set():
                return
            sent_at[i] = time.monotonic()
            for command in ("PUBLISH", "SPUBLISH"):
                try:
                    publisher.execute_command(
                        command, "news" if command == "PUBLISH" else channel, i
                    )
                except redis.RedisError:
                    errors += 1
            time.sleep(0.03)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(node_pid(c, victim["name"]), signal.SIGKILL)
        deadline = time.monotonic() + total * 0.03 + 15
        while thread.is_alive() or time.monotonic() < deadline:
            msg = sub.get_message(timeout=0.5)
            if msg is None:
                if not thread.is_alive():
                    break
                continue
            if msg["type"] in ("message", "smessage"):
                received[msg["channel"]].append(int(msg["data"]))
    finally:
        stop.set()
        thread.join(30)
        sub.close()
        client.close()
        publisher.close()
    for name, seqs in received.items():
        assert seqs and seqs[-1] == total - 1, (name, seqs[-5:])
        # once the subscription is back, nothing is missing: the received numbers end in an
        # unbroken run, which starts soon after the kill
        run_start = next(
            i for i in range(len(seqs) - 1, -1, -1) if i == 0 or seqs[i - 1] != seqs[i] - 1
        )
        assert seqs[run_start:] == list(range(seqs[run_start], total)), name
        assert sent_at[seqs[run_start]] - killed_at < 10, (name, seqs[run_start])
