"""The engines hold clients to the command policy themselves: a cluster-aware client going
direct to a node (as the `default` user) cannot break the cluster, while the control plane,
with its own engine user, still runs the cluster."""

from __future__ import annotations

import time

import pytest
import redis
from helpers import RunningCluster

from cachefleet.proc import read_pid, running
from cachefleet.slots import key_slot

pytestmark = pytest.mark.integration

DENIED = [
    ("CONFIG", "SET", "maxmemory", "100"),
    ("CONFIG", "SET", "requirepass", "x"),
    ("CLUSTER", "RESET", "SOFT"),
    ("CLUSTER", "FAILOVER", "TAKEOVER"),
    ("CLUSTER", "FORGET", "0" * 40),
    ("ACL", "SETUSER", "default", "-@all"),
    ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "NO", "ONE"),
    ("CLIENT", "PAUSE", "10000"),
    ("BGSAVE",),
    ("MONITOR",),
]


@pytest.mark.parametrize("command", DENIED, ids=lambda c: " ".join(c[:2]))
def test_a_client_going_direct_cannot_run_cluster_breaking_commands(
    shared_cluster: RunningCluster, command: tuple[str, ...]
) -> None:
    for shard in shared_cluster.status()["shards"]:
        for member in [shard["primary"], *shard["replicas"]]:
            host, port = member["address"].rsplit(":", 1)
            direct = redis.Redis(host=host, port=int(port), socket_timeout=5)
            try:
                with pytest.raises(redis.exceptions.NoPermissionError):
                    direct.execute_command(*command)
            finally:
                direct.close()


def test_reads_of_configuration_and_topology_still_work_direct(
    shared_cluster: RunningCluster,
) -> None:
    shard = shared_cluster.status()["shards"][0]
    start, end = shard["slots"][0]
    key = next(k for i in range(100_000) if start <= key_slot(k := f"policy:{i}") <= end)
    host, port = shard["primary"]["address"].rsplit(":", 1)
    direct = redis.Redis(host=host, port=int(port), socket_timeout=5, decode_responses=True)
    try:
        assert direct.execute_command("ACL", "WHOAMI") == "default"
        assert direct.config_get("maxmemory-policy")
        assert "cluster_state:ok" in direct.execute_command("CLUSTER", "INFO")
        assert direct.execute_command("CLUSTER", "SHARDS")
        assert direct.set(key, "v") and direct.get(key) == "v"
    finally:
        direct.close()


def test_the_cluster_is_still_healthy_and_replicas_linked(shared_cluster: RunningCluster) -> None:
    """Replicas sync as the control plane's user (masteruser), and every probe of status
    and of the sentinels authenticates: everything is healthy."""
    st = shared_cluster.status()
    assert st["state"] == "available"
    assert all(s["online"] and not s["sdown"] for s in st["sentinels"])


def test_bytes_a_client_puts_in_a_nodes_info_cannot_break_the_agents(
    shared_cluster: RunningCluster,
) -> None:
    """A script's error_reply prefix lands in INFO errorstats as the client wrote it: not
    UTF-8 here. The agents read their nodes' INFO every second and must keep running."""
    c = shared_cluster
    agents = {z: read_pid(c.cdir.pid_file(f"agent.{z}")) for z in c.plan.topology.zones}
    for shard in c.status()["shards"]:
        host, port = shard["primary"]["address"].rsplit(":", 1)
        direct = redis.Redis(host=host, port=int(port), socket_timeout=5)
        try:
            with pytest.raises(redis.exceptions.ResponseError):
                direct.eval(b"return redis.error_reply('\\x87\\xff not utf-8')", 0)
        finally:
            direct.close()
    time.sleep(3.0)  # three state samples
    assert {z: read_pid(c.cdir.pid_file(f"agent.{z}")) for z in agents} == agents
    assert all(pid is not None and running(pid) for pid in agents.values())
