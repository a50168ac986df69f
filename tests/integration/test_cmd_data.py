"""Snapshots and metrics of a cluster-mode-disabled group: a snapshot of keys in databases 0
and 3 restored into new groups (from the file, and copied key by key when the new group runs
with AOF), every key read back in its database; a metrics scrape labels each node's role."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from helpers import RunningCluster, assert_all_gone, cli, wait_for
from prometheus_client.parser import text_string_to_metric_families

KEYS = 300


def group_topology(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "valkey",
        "cluster_mode": "disabled",
        "zones": ["az-a", "az-b"],
        "replicas": 1,
        "node_type": "cache.micro",
        "endpoints": {"primary": {"port": "auto"}, "reader": {"port": "auto"}},
        **extra,
    }


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cmddata")


@pytest.fixture(scope="module")
def group(state: Path) -> Iterator[RunningCluster]:
    name = f"gd{uuid.uuid4().hex[:8]}"
    path = state / f"{name}.yaml"
    path.write_text(yaml.safe_dump(group_topology(name)))
    out = cli("up", str(path), "--detach", "--state-dir", str(state / "state"))
    c = RunningCluster(name, state / "state", path, out.stdout)
    c.remember_pids()
    try:
        yield c
    finally:
        c.remember_pids()
        cli("down", name, "--purge", "--state-dir", str(state / "state"), check=False)
        assert_all_gone(c.seen_pids)


def endpoint(c: RunningCluster, db: int = 0) -> redis.Redis:
    plan = c.plan
    return redis.Redis(
        host=plan.router_host, port=plan.router_port, db=db, decode_responses=True,
        socket_timeout=10,
    )  # fmt: skip


def fill(c: RunningCluster) -> dict[tuple[int, str], Any]:
    """Strings, a hash and a key with a TTL in database 0; strings and a list in database 3."""
    want: dict[tuple[int, str], Any] = {}
    for db in (0, 3):
        r = endpoint(c, db)
        pipe = r.pipeline(transaction=False)
        for i in range(KEYS):
            key, value = f"k{i}", f"db{db}-v{i}"
            pipe.set(key, value)
            want[(db, key)] = value
        pipe.execute()
        if db == 0:
            r.hset("h", mapping={"a": "1", "b": "2"})
            want[(0, "h")] = {"a": "1", "b": "2"}
            r.set("ttl", "x", ex=3600)
            want[(0, "ttl")] = "x"
        else:
            r.rpush("l", "1", "2", "3")
            want[(3, "l")] = ["1", "2", "3"]
        assert r.execute_command("WAIT", 1, 5000) == 1
    return want


def contents(c: RunningCluster, want: dict[tuple[int, str], Any]) -> dict[tuple[int, str], Any]:
    got: dict[tuple[int, str], Any] = {}
    clients = {db: endpoint(c, db) for db in (0, 3)}
    for (db, key), value in want.items():
        r = clients[db]
        if isinstance(value, dict):
            got[(db, key)] = r.hgetall(key)
        elif isinstance(value, list):
            got[(db, key)] = r.lrange(key, 0, -1)
        else:
            got[(db, key)] = r.get(key)
    sizes = {db: r.dbsize() for db, r in clients.items()}
    assert sizes == {0: KEYS + 2, 3: KEYS + 1}  # nothing more either
    ttl = clients[0].ttl("ttl")
    assert 3000 < ttl <= 3600  # its TTL came along
    return got


def restore(c: RunningCluster, snapshot: str, name: str, **extra: Any) -> RunningCluster:
    path = c.topology_path.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(group_topology(name, **extra)))
    out = cli("restore", snapshot, str(path), "--state-dir", str(c.state_dir), timeout=180)
    restored = RunningCluster(name, c.state_dir, path, out.stdout)
    restored.remember_pids()
    return restored


def test_snapshot_restores_every_database_into_new_groups(group: RunningCluster) -> None:
    want = fill(group)
    out = cli("snapshot", "create", group.name, "--id", "cmd-snap", "--state-dir",
              str(group.state_dir)).stdout  # fmt: skip
    assert f"{len(want)} keys" in out  # counted over every database
    for name, extra, how in (
        (f"{group.name}-r", {}, "start from the snapshot's files"),
        (f"{group.name}-a", {"persistence": {"appendonly": True}}, "keys restored"),
    ):
        restored = restore(group, "cmd-snap", name, **extra)
        try:
            assert how in restored.up_output
            assert restored.status()["state"] == "available"
            assert contents(restored, want) == want
        finally:
            restored.remember_pids()
            cli("down", name, "--purge", "--state-dir", str(group.state_dir), check=False)
            assert_all_gone(restored.seen_pids)


def test_metrics_label_each_node_with_its_role(group: RunningCluster) -> None:
    st = wait_for(
        lambda: (s := group.status())["metrics"]["address"] and s["metrics"]["running"] and s,
        30, "the metrics endpoint",
    )  # fmt: skip
    (shard,) = st["shards"]
    roles = {shard["primary"]["name"]: "primary"} | {
        r["name"]: "replica" for r in shard["replicas"]
    }

    def scraped() -> dict[str, str] | None:
        with urllib.request.urlopen(f"http://{st['metrics']['address']}/metrics", timeout=5) as r:
            text = r.read().decode()
        seen = {}
        for family in text_string_to_metric_families(text):
            if family.name == "cachefleet_is_primary":
                for s in family.samples:
                    seen[s.labels["node"]] = s.labels["role"]
                    assert s.value == (1.0 if s.labels["role"] == "primary" else 0.0)
                    assert s.labels["shard"] == "1"
        return seen if seen == roles else None

    wait_for(scraped, 30, f"every node in /metrics with its role {roles}")
