"""A plain (not cluster-aware) redis.Redis pointed at the router works against the cluster:
data types over all shards, pipelines in order, split multi-key commands, transactions,
blocking commands, pub/sub, a slot migration and a primary's death hidden."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

import pytest
import redis
from helpers import RunningCluster, node_client, router_client

from cachefleet.proc import read_pid
from cachefleet.resp import encode_command
from cachefleet.slots import key_slot

pytestmark = pytest.mark.integration


client = router_client
node = node_client


def shard_of(status: dict[str, Any], key: str) -> dict[str, Any]:
    slot = key_slot(key)
    return next(s for s in status["shards"] if any(a <= slot <= b for a, b in s["slots"]))


def test_data_types_round_trip_across_all_shards(shared_cluster: RunningCluster) -> None:
    r = client(shared_cluster)
    status = shared_cluster.status()
    keys = [f"type:{i}" for i in range(12)]
    assert {shard_of(status, f"{k}:s")["id"] for k in keys} == {1, 2, 3}
    for k in keys:
        r.set(f"{k}:s", "v")
        r.hset(f"{k}:h", mapping={"a": "1", "b": "2"})
        r.rpush(f"{k}:l", "x", "y", "z")
        r.sadd(f"{k}:set", "m1", "m2")
        r.zadd(f"{k}:z", {"one": 1, "two": 2})
        r.xadd(f"{k}:x", {"f": "v"}, id="1-1")
    for k in keys:
        assert r.get(f"{k}:s") == "v"
        assert r.hgetall(f"{k}:h") == {"a": "1", "b": "2"}
        assert r.lrange(f"{k}:l", 0, -1) == ["x", "y", "z"]
        assert r.smembers(f"{k}:set") == {"m1", "m2"}
        assert r.zrange(f"{k}:z", 0, -1, withscores=True) == [("one", 1.0), ("two", 2.0)]
        assert r.xrange(f"{k}:x") == [("1-1", {"f": "v"})]
    # Data really lives on the owning primaries.
    for k in keys:
        assert node(shard_of(status, f"{k}:s")["primary"]["address"]).get(f"{k}:s") == "v"


def test_pipeline_of_1000_mixed_commands_comes_back_in_order(
    shared_cluster: RunningCluster,
) -> None:
    r = client(shared_cluster)
    pipe = r.pipeline(transaction=False)
    expected: list[Any] = []
    for i in range(250):
        pipe.set(f"pl:{i}", i)
        expected.append(True)
        pipe.get(f"pl:{i}")
        expected.append(str(i))
        pipe.incr(f"pl:n:{i % 7}")
        expected.append(None)
        pipe.mget(f"pl:{i}", f"pl:{(i + 1) % 250}", "pl:none")
        expected.append(None)
    out = pipe.execute()
    assert len(out) == 1000
    for i in range(250):
        assert out[4 * i] is True
        assert out[4 * i + 1] == str(i)
        assert isinstance(out[4 * i + 2], int)
        assert out[4 * i + 3][0] == str(i) and out[4 * i + 3][2] is None


def test_cross_slot_mget_mset_del(shared_cluster: RunningCluster) -> None:
    r = client(shared_cluster)
    mapping = {f"x:{i}": f"v{i}" for i in range(30)}
    assert r.mset(mapping) is True
    keys = [*mapping, "x:missing", "x:0"]
    assert r.mget(keys) == [*mapping.values(), None, "v0"]
    assert r.exists(*mapping, "x:missing") == 30
    assert r.delete("x:0", "x:1", "x:missing") == 2
    assert r.mget("x:0", "x:1", "x:2") == [None, None, "v2"]
    assert r.unlink(*[f"x:{i}" for i in range(2, 30)]) == 28
    assert r.dbsize() == sum(
        node(s["primary"]["address"]).dbsize() for s in shared_cluster.status()["shards"]
    )


def test_keys_scan_and_flush_fan_out(shared_cluster: RunningCluster) -> None:
    r = client(shared_cluster)
    primaries = [node(s["primary"]["address"]) for s in shared_cluster.status()["shards"]]
    for flush in (r.flushall, r.flushdb):
        names = {f"scan:{i}" for i in range(200)}
        r.mset(dict.fromkeys(names, "1"))
        assert names <= set(r.keys("scan:*"))
        assert set(r.scan_iter(match="scan:*", count=50)) == names
        assert all(p.dbsize() > 0 for p in primaries)  # the keys are spread over every shard
        assert flush() is True
        assert [p.dbsize() for p in primaries] == [0] * len(primaries)
        assert r.dbsize() == 0


def test_multi_in_one_slot_works_and_across_slots_is_crossslot(
    shared_cluster: RunningCluster,
) -> None:
    r = client(shared_cluster)
    pipe = r.pipeline(transaction=True)
    pipe.set("{acct}a", 10).incrby("{acct}a", 5).get("{acct}a")
    assert pipe.execute() == [True, 15, "15"]
    pipe = r.pipeline(transaction=True)
    pipe.set("acct-a", 1).set("acct-b", 2)
    with pytest.raises(redis.ResponseError, match="don't hash to the same slot"):
        pipe.execute()
    # WATCH in one slot: a concurrent change aborts the transaction.
    with r.pipeline(transaction=True) as p:
        p.watch("{acct}a")
        client(shared_cluster).set("{acct}a", 99)
        p.multi()
        p.set("{acct}a", 1)
        with pytest.raises(redis.WatchError):
            p.execute()
    assert r.get("{acct}a") == "99"


def test_blpop_is_woken_by_lpush_from_another_client(shared_cluster: RunningCluster) -> None:
    r = client(shared_cluster)
    r.delete("queue:1")
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(r.blpop(["queue:1"], timeout=10)))
    t.start()
    time.sleep(0.5)
    assert client(shared_cluster).lpush("queue:1", "job") == 1
    t.join(10)
    assert result == [("queue:1", "job")]
    assert r.ping() is True  # the connection is usable after the blocking command


def test_pubsub_messages_are_delivered(shared_cluster: RunningCluster) -> None:
    sub = client(shared_cluster).pubsub()
    sub.subscribe("news")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    client(shared_cluster).publish("news", "hello")  # counts receivers on one node only
    msg = sub.get_message(timeout=5)
    assert msg is not None and msg["data"] == "hello"
    sub.ssubscribe("shard-news")
    assert sub.get_message(timeout=5)["type"] == "ssubscribe"
    client(shared_cluster).spublish("shard-news", "local")
    msg = sub.get_message(timeout=5)
    assert msg is not None and msg["data"] == "local"
    sub.close()


def test_garbage_client_is_disconnected_and_others_are_unaffected(
    shared_cluster: RunningCluster,
) -> None:
    host, port = shared_cluster.router
    good = socket.create_connection((host, port), timeout=10)
    bad = socket.create_connection((host, port), timeout=10)
    requests = [encode_command([b"SET", b"g:%d" % i, b"%d" % i]) for i in range(500)]
    requests += [encode_command([b"GET", b"g:%d" % i]) for i in range(500)]
    stream = b"".join(requests)
    good.sendall(stream[: len(stream) // 2])
    bad.sendall(b"*1\r\n$999999999999\r\n")
    good.sendall(stream[len(stream) // 2 :])
    data = b""
    while not data.endswith(b"$3\r\n499\r\n"):
        chunk = good.recv(65536)
        assert chunk
        data += chunk
    assert data.count(b"+OK\r\n") == 500
    assert data.endswith(b"".join(b"$%d\r\n%d\r\n" % (len(str(i)), i) for i in range(490, 500)))
    reply = bad.recv(1024)
    assert reply.startswith(b"-ERR Protocol error: invalid bulk length")
    assert bad.recv(1024) == b""  # closed
    for garbage in (
        b'SET "unbalanced\r\n',
        b"*1\r\n:1\r\n",
        b"*2\r\n$4\r\nECHO\r\n$1\r\naXY*1\r\n$4\r\nPING\r\n",  # no CRLF after "a"
    ):
        bad = socket.create_connection((host, port), timeout=10)
        bad.sendall(garbage)
        answer = b""
        while chunk := bad.recv(1024):
            answer += chunk
        # the router's own verdict, and the connection closed: nothing reached a node's
        # shared connection (which the node would have closed under other clients)
        assert answer.startswith(b"-ERR Protocol error") and answer.count(b"\r\n") == 1, answer
        bad.close()
    assert client(shared_cluster).get("g:7") == "7"
    good.close()


def error_replies(c: RunningCluster) -> int:
    return sum(
        int(node(s["primary"]["address"]).info("stats")["total_error_replies"])
        for s in c.status()["shards"]
    )


def test_unknown_commands_reach_the_engine(shared_cluster: RunningCluster) -> None:
    r = client(shared_cluster)
    before = error_replies(shared_cluster)
    pipe = r.pipeline(transaction=False)
    for i in range(50):
        pipe.execute_command("NOSUCHCOMMAND", "x", i)
    out = pipe.execute(raise_on_error=False)
    assert all(
        str(e).startswith("unknown command 'NOSUCHCOMMAND', with args beginning with: 'x'")
        for e in out
    )
    # The nodes answered them (other errors may come meanwhile, from probes: at least 50).
    assert error_replies(shared_cluster) >= before + 50
    # A command the router knows nothing of: the engine's own answer comes back.
    assert "ver." in r.execute_command("LOLWUT")


def test_status_of_router_is_published(shared_cluster: RunningCluster) -> None:
    from cachefleet import bus

    plan = shared_cluster.plan
    client(shared_cluster).ping()
    import asyncio

    msgs = asyncio.run(
        bus.read_retained(
            plan.bus_host, plan.bus_port, bus.topic(plan.name, "routers", "+", "state")
        )
    )
    states = [bus.decode(v) for v in msgs.values()]
    assert any(s and "connections" in s and "ops_per_sec" in s for s in states)


def test_primary_killed_during_reads_is_hidden(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=2)
    r = client(c, socket_timeout=15)
    status = c.status()
    keys = [f"fo:{i}" for i in range(40)]
    for k in keys:
        r.set(k, k)
    victim = shard_of(status, keys[0])
    assert any(shard_of(status, k)["id"] == victim["id"] for k in keys)
    results: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def reader() -> None:
        rr = client(c, socket_timeout=15)
        while not stop.is_set():
            for k in keys:
                try:
                    assert rr.get(k) == k
                    results.append((time.monotonic(), None))
                except redis.RedisError as exc:
                    results.append((time.monotonic(), str(exc)))

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(1.0)
    pid = read_pid(c.cdir.pid_file(f"node.{victim['primary']['name']}"))
    assert pid
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    def promoted() -> bool:
        st = c.status()
        s = next(x for x in st["shards"] if x["id"] == victim["id"])
        return bool(s["primary"]) and s["primary"]["name"] != victim["primary"]["name"]

    deadline = time.monotonic() + 20
    while not promoted():
        assert time.monotonic() < deadline, "no failover within 20 s"
        time.sleep(0.2)
    promoted_at = time.monotonic()
    time.sleep(3.0)
    stop.set()
    t.join(20)
    after = [e for ts, e in results if ts > promoted_at + 1.0]
    assert len(after) > 100 and all(e is None for e in after), after[:5]
    errors = [e for ts, e in results if e is not None]
    # Reads are safe to resend: at most the ones in flight failed, and only around the kill.
    assert all(killed_at - 0.5 <= ts <= promoted_at + 1.0 for ts, e in results if e), errors[:5]
    assert len(errors) <= 5, errors[:5]
    # A write whose primary died before it was sent goes to the new primary.
    assert r.set(keys[0], "after") is True and r.get(keys[0]) == "after"


def test_commands_that_would_hijack_a_shared_connection_are_refused(
    shared_cluster: RunningCluster,
) -> None:
    r = client(shared_cluster)
    for args in (("CLIENT", "REPLY", "OFF"), ("MONITOR",), ("CLIENT", "TRACKING", "ON")):
        with pytest.raises(redis.ResponseError, match="not supported through the router"):
            r.execute_command(*args)
    assert r.set("still", "fine") is True and r.get("still") == "fine"


def test_migrated_slot_is_followed_transparently(shared_cluster: RunningCluster) -> None:
    """Last in this module on purpose: it moves a slot between the shared cluster's shards."""
    r = client(shared_cluster)
    status = shared_cluster.status()
    tag = "mig"
    slot = key_slot(tag)
    keys = [f"{{{tag}}}:{i}" for i in range(20)]
    for k in keys:
        r.set(k, k)
    src_shard = shard_of(status, keys[0])
    dst_shard = next(s for s in status["shards"] if s["id"] != src_shard["id"])
    src, dst = src_shard["primary"], dst_shard["primary"]
    src_c, dst_c = shared_cluster.admin(src["address"]), shared_cluster.admin(dst["address"])
    dst_c.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src["id"])
    src_c.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst["id"])
    host, port = dst["address"].rsplit(":", 1)
    src_c.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys[:10])
    # Half moved: the router follows ASK for those, the rest are still at the source.
    assert [r.get(k) for k in keys] == keys
    with pytest.raises(redis.exceptions.TryAgainError):
        r.mget(keys)  # keys split between two nodes mid-migration: TRYAGAIN, as the engine
    src_c.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys[10:])
    for s in status["shards"]:
        admin = shared_cluster.admin(s["primary"]["address"])
        admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst["id"])
    # Done: MOVED from the old owner, followed; new writes land on the new owner.
    assert [r.get(k) for k in keys] == keys
    assert r.mget(keys) == keys
    assert r.set(f"{{{tag}}}:new", "x") is True
    assert dst_c.get(f"{{{tag}}}:new") == "x"
