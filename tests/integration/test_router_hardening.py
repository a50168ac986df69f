"""The router under hostile or careless clients, against a real cluster: forged redirects,
slow and malformed input, deep and large replies, commands that would break the cluster,
clients that never read, too many clients."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from helpers import RunningCluster, node_client, router_client

from cachefleet.resp import encode_command
from cachefleet.slots import key_slot

pytestmark = pytest.mark.integration


client = router_client
node = node_client


def raw(c: RunningCluster) -> socket.socket:
    return socket.create_connection(c.router, timeout=10)


def read_reply(sock: socket.socket, ends_with: bytes) -> bytes:
    data = b""
    while not data.endswith(ends_with):
        chunk = sock.recv(1 << 16)
        assert chunk, data[-200:]
        data += chunk
    return data


@pytest.mark.parametrize(
    "forged",
    ["MOVED 0 127.0.0.1:1", "ASK 0 127.0.0.1:1", "MOVED 99999 127.0.0.1:1", "MOVED -5 127.0.0.1:1"],
)
def test_a_script_cannot_redirect_the_router(shared_cluster: RunningCluster, forged: str) -> None:
    r = client(shared_cluster)
    r.delete("{t}:n")
    sock = raw(shared_cluster)
    script = f"return redis.error_reply('{forged}')".encode()
    # The forged reply, then writes pipelined behind it on the same backend connection: had
    # the connection been torn down, they would come back "outcome unknown".
    for round_ in range(5):
        sock.sendall(
            encode_command([b"EVAL", script, b"1", b"{t}:0"])
            + b"".join(encode_command([b"INCR", b"{t}:n"]) for _ in range(20))
        )
        last = (round_ + 1) * 20
        data = read_reply(sock, b":%d\r\n" % last)
        expected = b"-" + forged.encode() + b"\r\n"
        expected += b"".join(b":%d\r\n" % i for i in range(last - 19, last + 1))
        assert data == expected
    sock.close()
    # Slot 0 and the others still route to the cluster's own nodes.
    for key in ("{t}:0", "a", "b", "c"):
        assert r.set(key, "v") is True and r.get(key) == "v"
    nodes = r.execute_command("CLUSTER", "SLOTS")
    assert all(int(n[1]) != 1 for rng in nodes for n in rng[2:])


def test_a_1500_deep_script_reply_is_relayed(shared_cluster: RunningCluster) -> None:
    sock = raw(shared_cluster)
    script = b"local t = {1} for i = 1, 1499 do t = {t} end return t"
    sock.sendall(encode_command([b"EVAL", script, b"0"]) + encode_command([b"PING"]))
    data = read_reply(sock, b"+PONG\r\n")
    assert data == b"*1\r\n" * 1500 + b":1\r\n+PONG\r\n"
    sock.close()
    assert client(shared_cluster).ping() is True


def test_a_slow_loris_request_does_not_stall_other_clients(shared_cluster: RunningCluster) -> None:
    slow = raw(shared_cluster)
    slow.sendall(b"*1000000\r\n" + b"$1\r\nx\r\n" * 150_000)
    r = client(shared_cluster)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            try:
                slow.sendall(b"$1\r\nx\r\n")
            except OSError:
                return
            time.sleep(0.001)

    t = threading.Thread(target=trickle)
    t.start()
    try:
        started = time.monotonic()
        for i in range(200):
            assert r.set(f"loris:{i}", i) is True
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        t.join(10)
        slow.close()
    assert elapsed < 5.0  # ~1 s of CPU per 11 packets before: this took minutes


def test_a_large_value_round_trips(shared_cluster: RunningCluster) -> None:
    r = redis.Redis(*shared_cluster.router, socket_timeout=30)
    value = b"v" * (4 << 20)
    assert r.set("big", value) is True
    assert r.get("big") == value
    r.delete("big")


def test_cluster_breaking_commands_are_refused_and_read_forms_work(
    shared_cluster: RunningCluster,
) -> None:
    r = client(shared_cluster)
    primary = shared_cluster.status()["shards"][0]["primary"]["address"]
    before = node(primary).config_get("maxmemory")
    for args, instead in [
        (("CONFIG", "SET", "maxmemory", "1"), "cachefleet up"),
        (("ACL", "SETUSER", "default", "-@all"), "users"),
        (("CLUSTER", "RESET", "HARD"), "cachefleet"),
        (("CLUSTER", "FAILOVER"), "cachefleet failover"),
        (("SHUTDOWN", "NOSAVE"), "cachefleet down"),
        (("REPLICAOF", "NO", "ONE"), "cachefleet failover"),
        (("CLIENT", "PAUSE", "10000"), "connect to a node"),
        (("DEBUG", "SLEEP", "5"), "not available"),
        (("BGSAVE",), "persistence"),
    ]:
        with pytest.raises(
            redis.ResponseError, match=f"not supported through the router.*{instead}"
        ):
            r.execute_command(*args)
    assert node(primary).config_get("maxmemory") == before
    assert "maxmemory" in r.config_get("maxmemory")
    assert r.execute_command("ACL", "WHOAMI") == "default"
    assert r.execute_command("CLUSTER", "INFO")
    assert r.execute_command("CLUSTER", "KEYSLOT", "k") == key_slot("k")
    assert isinstance(r.execute_command("CLUSTER", "COUNTKEYSINSLOT", 0), int)
    # Inside MULTI too: the transaction is discarded, nothing reaches a node.
    pipe = r.pipeline(transaction=True)
    pipe.set("{tx}a", 1).execute_command("CONFIG", "SET", "maxmemory", "1")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    assert node(primary).config_get("maxmemory") == before
    assert r.set("still", "fine") is True


def test_auth_is_not_answered_ok(shared_cluster: RunningCluster) -> None:
    r = client(shared_cluster)
    for args in (("AUTH", "secret"), ("AUTH", "default", "anything")):
        with pytest.raises(
            (redis.ResponseError, redis.AuthenticationError), match="without any password"
        ):
            r.execute_command(*args)


def test_a_subscriber_that_does_not_read_is_disconnected_with_a_log_line(
    shared_cluster: RunningCluster,
) -> None:
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(10)
    slow.connect(shared_cluster.router)
    slow.sendall(encode_command([b"SUBSCRIBE", b"firehose"]))
    assert read_reply(slow, b":1\r\n").endswith(b"$8\r\nfirehose\r\n:1\r\n")
    publisher = client(shared_cluster)
    payload = "x" * 100_000
    for _ in range(500):  # 50 MB, over the 32 MB pub/sub output limit; never read
        publisher.publish("firehose", payload)
    assert publisher.ping() is True  # everyone else is fine
    slow.settimeout(0.5)
    closed = False
    deadline = time.monotonic() + 20
    while not closed and time.monotonic() < deadline:
        try:
            closed = slow.recv(1 << 20) == b""
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed = True
    slow.close()
    assert closed
    logs = shared_cluster.cdir.log_file("router").parent.glob("router*.log")  # every worker
    assert any("client_pubsub_output_limit" in log.read_text() for log in logs)


def test_wait_mset_and_client_through_the_router(shared_cluster: RunningCluster) -> None:
    r = client(shared_cluster)
    with pytest.raises(redis.ResponseError, match="WAIT is not supported through the router"):
        r.execute_command("WAIT", 1, 100)
    r.delete("ms:a", "ms:b")
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'mset'"):
        r.execute_command("MSET", "ms:a", "1", "ms:b")
    assert r.exists("ms:a", "ms:b") == 0  # refused whole, not applied in part
    r.client_setname("me")
    assert r.client_getname() == "me"
    me = r.client_id()
    listed = {c["id"]: c for c in r.client_list()}  # the clients of this router worker
    assert listed[str(me)]["name"] == "me"
    assert str(r.client_info()["id"]) == str(me)


def test_resp3_subscriber_sees_replies_in_order(shared_cluster: RunningCluster) -> None:
    sock = raw(shared_cluster)
    sock.sendall(encode_command([b"HELLO", b"3"]) + encode_command([b"SUBSCRIBE", b"r3"]))
    read_reply(sock, b"$2\r\nr3\r\n:1\r\n")
    client(shared_cluster).set("r3:k", "v")
    sock.sendall(
        encode_command([b"GET", b"r3:k"])
        + encode_command([b"PING"])
        + encode_command([b"UNSUBSCRIBE", b"r3"])
    )
    data = read_reply(sock, b"$2\r\nr3\r\n:0\r\n")
    assert data == b"$1\r\nv\r\n+PONG\r\n>3\r\n$11\r\nunsubscribe\r\n$2\r\nr3\r\n:0\r\n"
    sock.close()
