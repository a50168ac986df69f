"""Cluster mode disabled: one primary with read replicas behind a primary endpoint and a
reader endpoint, failed over by the sentinels. One group serves every test, in order."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import RunningCluster, cli, cluster_up, wait_for

REPLICAS = 2


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    tmp = tmp_path_factory.mktemp("cmd")
    name = f"g{uuid.uuid4().hex[:8]}"
    topo = {
        "name": name,
        "engine": "valkey",
        "cluster_mode": "disabled",
        "zones": ["az-a", "az-b", "az-c"],
        "replicas": REPLICAS,
        "node_type": "cache.micro",
        "endpoints": {"primary": {"port": "auto"}, "reader": {"port": "auto"}},
    }
    with cluster_up(tmp, topo) as c:
        yield c


def endpoint(c: RunningCluster, kind: str, **kw: Any) -> redis.Redis:
    plan = c.plan
    port = plan.router_port if kind == "primary" else plan.reader_port
    assert port is not None
    kw.setdefault("socket_timeout", 5)
    return redis.Redis(host=plan.router_host, port=port, decode_responses=True, **kw)


def current_primary(c: RunningCluster) -> dict[str, Any]:
    st = c.status()
    (shard,) = st["shards"]
    primary: dict[str, Any] = shard["primary"]
    return primary


def node_pid(c: RunningCluster, name: str) -> int:
    return int(c.cdir.pid_file(f"node.{name}").read_text().split()[0])


def role_of(c: RunningCluster, address: str) -> tuple[str, str | None]:
    """(role, address of its primary) as the node itself says."""
    try:
        info = c.admin(address).info("replication")
    except redis.RedisError:
        return "down", None
    if info["role"] == "master":
        return "primary", None
    return "replica", f"{info['master_host']}:{info['master_port']}"


def wait_settled(c: RunningCluster, primary: str, timeout: float = 30) -> None:
    """Every node follows `primary` (address) with its link up."""

    def settled() -> bool:
        st = c.status()
        (shard,) = st["shards"]
        return (
            st["state"] == "available"
            and shard["primary"]["address"] == primary
            and all(role_of(c, r["address"]) == ("replica", primary) for r in shard["replicas"])
        )

    wait_for(settled, timeout, f"every node following {primary}")


def test_status_and_endpoints(group: RunningCluster) -> None:
    st = group.status()
    assert st["state"] == "available"
    assert set(st["endpoints"]) == {"primary", "reader"}
    (shard,) = st["shards"]
    assert shard["id"] == 1 and shard["slots"] == []
    assert len(shard["replicas"]) == REPLICAS
    zones = {shard["primary"]["zone"]} | {r["zone"] for r in shard["replicas"]}
    assert len(zones) == 3  # primary and replicas in different zones
    text = cli("status", group.name, "--state-dir", str(group.state_dir)).stdout
    assert "primary endpoint" in text and "reader endpoint" in text


def test_writes_through_primary_reads_through_reader(group: RunningCluster) -> None:
    w = endpoint(group, "primary")
    assert w.set("greeting", "hello")
    assert w.execute_command("WAIT", REPLICAS, 2000) == REPLICAS
    replicas = {r["address"] for r in current_primary_shard(group)["replicas"]}
    served = set()
    for _ in range(6):  # new connections spread over the replicas
        r = endpoint(group, "reader")
        assert r.get("greeting") == "hello"
        info = r.info("replication")
        assert info["role"] == "slave"
        served.add(r.execute_command("CONFIG", "GET", "port")["port"])
        r.close()
    assert {a.rsplit(":", 1)[1] for a in replicas} == served
    with pytest.raises(redis.ReadOnlyError):
        endpoint(group, "reader").set("x", "1")


def current_primary_shard(c: RunningCluster) -> dict[str, Any]:
    (shard,) = c.status()["shards"]
    return dict(shard)


def test_select_multikey_and_lua(group: RunningCluster) -> None:
    w = endpoint(group, "primary", db=3)
    assert w.mset({"a": "1", "b": "2", "zzz": "3"})  # any keys: no slots here
    assert w.eval("return redis.call('GET', KEYS[1]) .. redis.call('GET', KEYS[2])", 2, "a", "b")
    assert w.execute_command("WAIT", REPLICAS, 2000) == REPLICAS
    assert endpoint(group, "primary").get("a") is None  # database 0 is another keyspace
    assert endpoint(group, "reader", db=3).mget("a", "zzz") == ["1", "3"]


class Writer(threading.Thread):
    """Writes unique keys through the primary endpoint, each acknowledged by WAIT 1."""

    def __init__(self, c: RunningCluster, seconds: float) -> None:
        super().__init__(daemon=True)
        self.c, self.seconds = c, seconds
        self.acked: list[str] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        client = endpoint(self.c, "primary", socket_timeout=2)
        i = 0
        while time.monotonic() < deadline and not self.stop.is_set():
            key = f"w:{uuid.uuid4().hex[:6]}:{i}"
            i += 1
            try:
                client.set(key, key)
                if client.execute_command("WAIT", 1, 500) >= 1:
                    self.acked.append(key)
            except redis.RedisError:
                self.errors += 1
                client.close()
                client = endpoint(self.c, "primary", socket_timeout=2)
                time.sleep(0.02)


def test_failover_under_writer_keeps_every_acknowledged_write(group: RunningCluster) -> None:
    old = current_primary(group)
    writer = Writer(group, seconds=25)
    writer.start()
    wait_for(lambda: len(writer.acked) > 20, 10, "acknowledged writes before the fault")
    os.kill(node_pid(group, old["name"]), signal.SIGKILL)
    new = wait_for(
        lambda: (p := current_primary(group))["name"] != old["name"] and p["healthy"] and p,
        30, "a new primary",
    )  # fmt: skip
    before = len(writer.acked)
    wait_for(lambda: len(writer.acked) > before + 20, 15, "writes after the failover")
    writer.stop.set()
    writer.join(10)
    assert new["zone"] != old["zone"] or REPLICAS == 0
    # the killed primary came back as a replica of the new one (never as an empty primary)
    wait_settled(group, new["address"])
    reader = endpoint(group, "primary")
    values = reader.mget(writer.acked)
    lost = [k for k, v in zip(writer.acked, values, strict=True) if v != k]
    assert not lost, f"{len(lost)} of {len(writer.acked)} acknowledged writes lost: {lost[:5]}"


def test_paused_primary_is_demoted_and_gets_no_writes(group: RunningCluster) -> None:
    old = current_primary(group)
    plan = group.plan
    # a client connected before the pause, through the primary endpoint
    held = socket.create_connection((plan.router_host, plan.router_port), timeout=5)
    held.sendall(b"PING\r\n")
    assert held.recv(64) == b"+PONG\r\n"
    pid = node_pid(group, old["name"])
    os.kill(pid, signal.SIGSTOP)
    try:
        new = wait_for(
            lambda: (p := current_primary(group))["name"] != old["name"] and p["healthy"] and p,
            30, "a new primary while the old one is paused",
        )  # fmt: skip
    finally:
        os.kill(pid, signal.SIGCONT)
    # the resumed node is made a replica of the new primary: no second failover
    wait_settled(group, new["address"])
    assert current_primary(group)["name"] == new["name"]
    # the connection to the demoted node was closed: a write on it cannot reach that node
    held.settimeout(5)
    try:
        held.sendall(b"SET demoted-write 1\r\n")
        reply = held.recv(64)
    except OSError:
        reply = b""
    finally:
        held.close()
    assert reply == b""
    assert group.admin(old["address"]).get("demoted-write") is None
    w = endpoint(group, "primary")
    assert w.set("after-pause", "1")
    assert w.execute_command("ROLE")[0] == "master"
    assert role_of(group, old["address"]) == ("replica", new["address"])


def test_graceful_failover(group: RunningCluster) -> None:
    old = current_primary(group)
    w = endpoint(group, "primary")
    w.set("before-graceful", "1")
    out = cli("failover", group.name, "--state-dir", str(group.state_dir)).stdout
    assert old["name"] in out
    new = wait_for(
        lambda: (p := current_primary(group))["name"] != old["name"] and p, 15, "new primary"
    )
    wait_settled(group, new["address"])
    assert endpoint(group, "primary").get("before-graceful") == "1"
    events = Path(group.cdir.events_path).read_text()
    assert '"graceful_failover"' in events
