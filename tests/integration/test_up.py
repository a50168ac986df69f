"""`cachefleet up` brings a real cluster up; clients bootstrap from the router; agents heal."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import helpers
import pytest
import redis
from helpers import RunningCluster, assert_all_gone, cli, wait_for
from redis.cluster import RedisCluster

from cachefleet.engine import resolve_cli_binary
from cachefleet.events import read_events
from cachefleet.nodes import parse_cluster_nodes
from cachefleet.proc import read_pid
from cachefleet.slots import key_slot

pytestmark = pytest.mark.integration


def node_client(address: str) -> redis.Redis:
    return helpers.node_client(address, timeout=3)


def as_dict(value: Any) -> dict[str, Any]:
    """redis-py returns CLUSTER SHARDS entries as dicts or flat lists depending on version."""
    if isinstance(value, dict):
        return value
    return dict(zip(value[::2], value[1::2], strict=True))


def shard_of_slot(status: dict[str, Any], slot: int) -> int:
    for shard in status["shards"]:
        if any(a <= slot <= b for a, b in shard["slots"]):
            return int(shard["id"])
    raise AssertionError(f"slot {slot} not covered")


def test_cluster_client_bootstraps_from_router_and_reaches_every_shard(
    shared_cluster: RunningCluster,
) -> None:
    host, port = shared_cluster.router
    rc = RedisCluster(host=host, port=port, decode_responses=True)
    try:
        keys = [f"key:{i}" for i in range(10_000)]
        pipe = rc.pipeline()
        for k in keys:
            pipe.set(k, f"value-{k}")
        assert all(pipe.execute())
        pipe = rc.pipeline()
        for k in keys:
            pipe.get(k)
        assert pipe.execute() == [f"value-{k}" for k in keys]
    finally:
        rc.close()

    status = shared_cluster.status()
    per_shard: dict[int, int] = {}
    for k in keys:
        sid = shard_of_slot(status, key_slot(k))
        per_shard[sid] = per_shard.get(sid, 0) + 1
    assert sorted(per_shard) == [1, 2, 3]
    # Every primary really holds its share of the keys (data went to the nodes, not the router).
    for shard in status["shards"]:
        held = node_client(shard["primary"]["address"]).dbsize()
        assert held >= per_shard[shard["id"]]


def test_redis_cli_follows_moved_from_the_router(shared_cluster: RunningCluster) -> None:
    cli_bin = resolve_cli_binary()
    assert cli_bin, "redis-cli or valkey-cli is needed"
    host, port = shared_cluster.router
    base = [cli_bin, "-c", "-h", host, "-p", str(port)]
    set_out = subprocess.run(
        [*base, "set", "foo", "bar"], capture_output=True, text=True, timeout=10
    )
    assert set_out.stdout.strip() == "OK", set_out.stdout + set_out.stderr
    get_out = subprocess.run([*base, "get", "foo"], capture_output=True, text=True, timeout=10)
    assert get_out.stdout.strip() == "bar"


def test_cluster_check_reports_full_coverage(shared_cluster: RunningCluster) -> None:
    cli_bin = resolve_cli_binary()
    assert cli_bin
    node = shared_cluster.plan.nodes[0]
    out = subprocess.run(
        [cli_bin, "--cluster", "check", node.address], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout
    assert "All 16384 slots covered" in out.stdout
    assert "[ERR]" not in out.stdout
    assert "All nodes agree about slots configuration" in out.stdout


def test_status_json_matches_cluster_shards(shared_cluster: RunningCluster) -> None:
    status = shared_cluster.status()
    assert status["name"] == shared_cluster.name
    assert status["state"] == "available"
    assert status["epoch"] >= 1
    assert status["router"]["address"] == "{}:{}".format(*shared_cluster.router)
    plan = shared_cluster.plan
    zone_of = {n.address: n.zone for n in plan.nodes}

    first = status["shards"][0]["primary"]["address"]
    shards_reply = node_client(first).execute_command("CLUSTER", "SHARDS")
    engine: dict[tuple[tuple[int, int], ...], dict[str, str]] = {}
    for raw in shards_reply:
        entry = as_dict(raw)
        flat = entry["slots"]
        ranges = tuple((int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))
        nodes = {}
        for raw_node in entry["nodes"]:
            n = as_dict(raw_node)
            nodes[n["id"]] = f"{n['ip']}:{n['port']}|{n['role']}"
        engine[ranges] = nodes

    seen_zones = set()
    for shard in status["shards"]:
        ranges = tuple(tuple(r) for r in shard["slots"])
        assert ranges in engine, f"shard {shard['id']} slots {ranges} not in CLUSTER SHARDS"
        members = [shard["primary"], *shard["replicas"]]
        ours = {
            n["id"]: f"{n['address']}|{'master' if n['role'] == 'primary' else 'replica'}"
            for n in members
        }
        assert ours == engine[ranges]
        for n in members:
            assert n["healthy"] is True
            assert n["zone"] == zone_of[n["address"]]
            assert n["address"].startswith(f"127.0.{plan.topology.zones.index(n['zone']) + 1}.")
        assert shard["primary"]["zone"] not in {r["zone"] for r in shard["replicas"]}
        seen_zones.add(shard["primary"]["zone"])
    assert seen_zones == {"az-a", "az-b", "az-c"}  # primaries spread over the zones


def test_router_answers_configuration_endpoint_commands(shared_cluster: RunningCluster) -> None:
    host, port = shared_cluster.router
    r = redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=3)
    assert r.ping() is True
    info = r.execute_command("CLUSTER", "INFO")
    text = info if isinstance(info, str) else str(info)
    assert "cluster_state:ok" in text
    assert "cluster_slots_assigned:16384" in text
    nodes = r.execute_command("CLUSTER", "NODES")
    assert len(str(nodes).strip().splitlines()) == len(shared_cluster.plan.nodes)
    # Keyed commands are proxied to the owning primary; multi-key ones split by slot.
    assert r.set("foo", "bar") is True
    assert r.get("foo") == "bar"
    assert r.mget("foo", "no-such-key") == ["bar", None]
    with pytest.raises(redis.ResponseError, match="Keys in request don't hash to the same slot"):
        r.rename("a", "b")  # multi-key, not splittable: CROSSSLOT exactly like the engine
    assert r.execute_command("CLUSTER", "KEYSLOT", "foo") == 12182
    assert r.command_count() > 100  # forwarded to a node: the engine's own command table


def test_up_again_is_idempotent(shared_cluster: RunningCluster) -> None:
    before = shared_cluster.status()
    out = cli(
        "up", str(shared_cluster.topology_path), "--detach", "--state-dir",
        str(shared_cluster.state_dir),
    )  # fmt: skip
    assert "already running" in out.stdout
    after = shared_cluster.status()
    assert after["epoch"] == before["epoch"]
    assert [s["primary"]["id"] for s in after["shards"]] == [
        s["primary"]["id"] for s in before["shards"]
    ]


def _replica(status: dict[str, Any]) -> dict[str, Any]:
    return status["shards"][0]["replicas"][0]


def test_killed_replica_is_replaced_and_reconnects(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=2)
    replica = _replica(c.status())
    pid_file = c.cdir.pid_file(f"node.{replica['name']}")
    old_pid = read_pid(pid_file)
    assert old_pid
    os.kill(old_pid, signal.SIGKILL)

    def replaced() -> bool:
        pid = read_pid(pid_file)
        if pid in (None, old_pid):
            return False
        try:
            rep = node_client(replica["address"]).info("replication")
        except redis.RedisError:
            return False
        return rep.get("role") == "slave" and rep.get("master_link_status") == "up"

    wait_for(replaced, 30, "the replica to be replaced and linked")
    st = c.status()
    again = next(n for n in st["shards"][0]["replicas"] if n["name"] == replica["name"])
    assert again["id"] == replica["id"]  # same identity, rejoined from its nodes.conf
    assert again["healthy"]
    kinds = [e["type"] for e in read_events(c.cdir.events_path) if e.get("node") == replica["name"]]
    assert "node_exited" in kinds and "node_replaced" in kinds


def test_replica_that_lost_its_data_rejoins_as_replica(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=2, zones=["az-a", "az-b"])
    before = c.status()
    replica = _replica(before)
    primary_id = before["shards"][0]["primary"]["id"]
    node_dir = c.cdir.node_dir(replica["name"])
    pid = read_pid(c.cdir.pid_file(f"node.{replica['name']}"))
    assert pid
    os.kill(pid, signal.SIGSTOP)  # freeze it so nodes.conf is not rewritten meanwhile
    (node_dir / "data" / "nodes.conf").unlink()
    os.kill(pid, signal.SIGKILL)

    def rejoined() -> str | None:
        try:
            client = node_client(replica["address"])
            me = client.execute_command("CLUSTER", "MYID")
            rep = client.info("replication")
        except redis.RedisError:
            return None
        if (
            me != replica["id"]
            and rep.get("role") == "slave"
            and rep.get("master_link_status") == "up"
        ):
            return str(me)
        return None

    new_id = wait_for(rejoined, 40, "the wiped replica to rejoin under a new identity")
    primary = node_client(before["shards"][0]["primary"]["address"])

    def primary_view_converged() -> bool:
        # gossip: the primary learns the new identity and forgets the old one
        raw = str(primary.execute_command("CLUSTER", "NODES"))
        return replica["id"] not in raw and new_id in raw

    wait_for(primary_view_converged, 20, "the primary to know the new identity, not the old")
    rep = node_client(replica["address"]).execute_command("CLUSTER", "NODES")
    me = next(line for line in parse_cluster_nodes(str(rep)) if "myself" in line.flags)
    assert me.id == new_id
    assert "slave" in me.flags and me.primary_id == primary_id


def test_down_stops_every_process_and_purge_removes_state(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(shards=1, replicas_per_shard=1, zones=["az-a", "az-b"])
    c.remember_pids()
    pids = dict(c.seen_pids)
    assert any(k.startswith("node.") for k in pids)
    assert any(k.startswith("agent.") for k in pids)
    assert "broker" in pids and "router" in pids
    c.down(purge=False)
    assert_all_gone(pids)
    assert c.cdir.root.exists()
    assert c.status()["state"] == "stopped"
    cli("down", c.name, "--purge", "--state-dir", str(c.state_dir))
    assert not c.cdir.root.exists()


@pytest.mark.skipif(
    not any(
        os.access(os.path.join(p, "redis-server"), os.X_OK)
        for p in os.environ.get("PATH", "").split(os.pathsep)
    ),
    reason="redis-server is not installed",
)
def test_redis_engine_cluster_serves_a_cluster_client(cluster_factory: Any) -> None:
    c: RunningCluster = cluster_factory(engine="redis", shards=2)
    host, port = c.router
    rc = RedisCluster(host=host, port=port, decode_responses=True)
    try:
        for i in range(200):
            rc.set(f"r{i}", i)
        assert rc.get("r199") == "199"
    finally:
        rc.close()
    binary = Path(c.plan.engine_binary).name
    assert binary == "redis-server"
