"""The control plane heals itself: kill -9 any control process and it comes back on its own,
while clients of the router and of the cluster keep (or get back) their service."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import redis
from helpers import RunningCluster, wait_for

from cachefleet.events import read_events
from cachefleet.proc import read_pid, running

pytestmark = pytest.mark.integration

# Every kind of long-running control process, in the order they are killed. Each is killed
# only after the previous one is back, so every restart is measured on its own.
KINDS = ["router", "router.1", "sentinel.s1", "agent.az-b", "broker", "supervisor"]


def pid_of(c: RunningCluster, process: str) -> int:
    pid = read_pid(c.cdir.pid_file(process))
    assert pid is not None and running(pid), f"{process} is not running"
    return pid


def back_with_new_pid(c: RunningCluster, process: str, old: int) -> Any:
    def check() -> int | None:
        pid = read_pid(c.cdir.pid_file(process))
        return pid if pid is not None and pid != old and running(pid) else None

    return check


def router_serves(client: redis.Redis, i: int) -> bool:
    try:
        return bool(client.set(f"heal:{i}", i)) and client.get(f"heal:{i}") == str(i)
    except redis.RedisError:
        return False


def test_killing_any_control_process_heals_by_itself(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(router={"port": "auto", "workers": 2})
    wait_for(lambda: read_pid(c.cdir.pid_file("supervisor")), 10, "the supervisor's pid file")
    host, port = c.router
    client = redis.Redis(host=host, port=port, socket_timeout=2, decode_responses=True)
    assert router_serves(client, 0)
    took: dict[str, float] = {}
    try:
        for i, process in enumerate(KINDS, start=1):
            old = pid_of(c, process)
            t0 = time.monotonic()
            os.kill(old, signal.SIGKILL)
            wait_for(back_with_new_pid(c, process, old), 15, f"{process} restarted")
            took[process] = time.monotonic() - t0
            # a plain client of the router gets its service back (a reconnect at most)
            wait_for(lambda i=i: router_serves(client, i), 15, f"router serving after {process}")
    finally:
        client.close()
    print("restart times:", {k: round(v, 2) for k, v in took.items()})

    restarted = {
        e["process"] for e in read_events(c.cdir.events_path) if e["type"] == "process_restarted"
    }
    assert restarted >= set(KINDS)
    # Every write made through the kills is still there, and the cluster is whole again.
    st = wait_for(
        lambda: (
            (s := c.status())["state"] == "available"
            and all(x["online"] for x in s["sentinels"])
            and s
        ),
        30,
        "cluster available with every sentinel online",
    )
    assert set(st["processes"]) >= set(KINDS)
    assert st["restarts"].get("router", 0) >= 1
    check = redis.Redis(host=host, port=port, socket_timeout=2, decode_responses=True)
    try:
        assert [check.get(f"heal:{i}") for i in range(len(KINDS) + 1)] == [
            str(i) for i in range(len(KINDS) + 1)
        ]
    finally:
        check.close()


def test_a_sentinel_restarted_after_a_broker_restart_still_fails_over(
    cluster_factory: Any,
) -> None:
    """After the bus was replaced (the embedded broker keeps nothing), the supervisor
    re-publishes the layout: a later primary failure is still failed over."""
    c: RunningCluster = cluster_factory()
    wait_for(lambda: read_pid(c.cdir.pid_file("supervisor")), 10, "the supervisor's pid file")
    old = pid_of(c, "broker")
    os.kill(old, signal.SIGKILL)
    wait_for(back_with_new_pid(c, "broker", old), 15, "broker restarted")
    wait_for(
        lambda: all(x["online"] for x in c.status()["sentinels"]), 20, "sentinels back on the bus"
    )
    st = c.status()
    assert st["epoch"] >= 1, "the layout is retained on the new broker"
    shard = st["shards"][0]
    victim = read_pid(c.cdir.pid_file(f"node.{shard['primary']['name']}"))
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: (
            (p := c.status()["shards"][0]["primary"]) is not None
            and p["name"] != shard["primary"]["name"]
            and p["healthy"]
        ),
        30,
        "shard 1 failed over to its replica",
    )
