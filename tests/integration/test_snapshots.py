"""Snapshots and restore on real engines: every key of every data type, with its TTL, comes
back in a new cluster of the same or another shard count; a damaged snapshot is refused
before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import RunningCluster, assert_all_gone, base_topology, cli, start_cluster, wait_for
from redis.cluster import RedisCluster

from cachefleet.events import read_events
from cachefleet.proc import read_pid

pytestmark = pytest.mark.integration

KEYS = 300  # of each type


def fill(rc: RedisCluster) -> None:
    pipe = rc.pipeline(transaction=False)
    for i in range(KEYS):
        pipe.set(f"s:{i}", f"v{i}" * (i % 7 + 1))
        pipe.hset(f"h:{i}", mapping={"a": i, "b": f"x{i}"})
        pipe.rpush(f"l:{i}", *[str(j) for j in range(i % 5 + 1)])
        pipe.sadd(f"set:{i}", *[f"m{j}" for j in range(i % 4 + 1)])
        pipe.zadd(f"z:{i}", {f"m{j}": j * 1.5 for j in range(i % 3 + 1)})
        if i % 10 == 0:
            pipe.xadd(f"x:{i}", {"f": str(i)})
        if i % 3 == 0:
            pipe.expire(f"s:{i}", 3600)
    pipe.execute()


def contents(rc: RedisCluster) -> dict[str, Any]:
    """Every key's type, value and whether it has a TTL."""
    out: dict[str, Any] = {}
    for key in rc.scan_iter(count=1000, target_nodes=RedisCluster.PRIMARIES):
        kind = rc.type(key)
        value: Any
        match kind:
            case "string":
                value = rc.get(key)
            case "hash":
                value = rc.hgetall(key)
            case "list":
                value = rc.lrange(key, 0, -1)
            case "set":
                value = sorted(rc.smembers(key))
            case "zset":
                value = rc.zrange(key, 0, -1, withscores=True)
            case "stream":
                value = [fields for _, fields in rc.xrange(key)]
            case _:
                value = None
        ttl = rc.pttl(key)
        out[key] = (kind, value, ttl > 0)
    return out


def cluster_client(c: RunningCluster) -> RedisCluster:
    host, port = c.router
    return RedisCluster(host=host, port=port, decode_responses=True)


@pytest.fixture(scope="module")
def source(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningCluster, dict[str, Any]]]:
    c = start_cluster(tmp_path_factory.mktemp("snap"), shards=2, replicas_per_shard=1)
    rc = cluster_client(c)
    try:
        fill(rc)
        want = contents(rc)
    finally:
        rc.close()
    yield c, want
    c.down()
    assert_all_gone(c.seen_pids)


def topology_file(c: RunningCluster, name: str, shards: int) -> Path:
    path = c.state_dir.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base_topology(name, shards=shards, replicas_per_shard=0)))
    return path


def restore_and_compare(
    c: RunningCluster, snapshot: str, name: str, shards: int, want: Any, *, seeded: bool
) -> None:
    path = topology_file(c, name, shards)
    out = cli("restore", snapshot, str(path), "--state-dir", str(c.state_dir), timeout=300)
    assert f"restored from {snapshot}: {len(want)} keys" in out.stdout, out.stdout
    # same shards and ranges: the nodes start from the files; else every key is copied
    assert ("start from the snapshot's files" in out.stdout) == seeded
    restored = RunningCluster(name, c.state_dir, path, out.stdout)
    restored.remember_pids()
    try:
        assert len(restored.status()["shards"]) == shards
        rc = cluster_client(restored)
        try:
            got = contents(rc)
        finally:
            rc.close()
        assert got == want  # every key, type, value and TTL-or-not
    finally:
        restored.down()
        assert_all_gone(restored.seen_pids)


def test_snapshot_then_restore_into_more_and_the_same_shards(
    source: tuple[RunningCluster, dict[str, Any]],
) -> None:
    c, want = source
    assert len(want) == KEYS * 5 + KEYS // 10
    out = cli("snapshot", "create", c.name, "--id", "nightly-1", "--state-dir", str(c.state_dir))
    assert "snapshot nightly-1: 2 shards" in out.stdout
    listed = json.loads(cli("snapshot", "list", "--json", "--state-dir", str(c.state_dir)).stdout)
    (row,) = [r for r in listed if r["id"] == "nightly-1"]
    assert row["cluster"] == c.name and row["shards"] == 2 and row["keys"] == len(want)
    for d in (c.state_dir / "snapshots", c.state_dir / "snapshots" / "nightly-1", c.cdir.root):
        assert d.stat().st_mode & 0o777 == 0o700, d  # owner only
    manifest = json.loads((c.state_dir / "snapshots" / "nightly-1" / "manifest.json").read_text())
    replicas = {n["name"] for s in c.status()["shards"] for n in s["replicas"]}
    assert {s["source"] for s in manifest["shards"]} <= replicas  # taken from replicas
    restore_and_compare(c, "nightly-1", f"{c.name}-r3", 3, want, seeded=False)
    restore_and_compare(c, "nightly-1", f"{c.name}-r2", 2, want, seeded=True)
    cli("snapshot", "delete", "nightly-1", "--state-dir", str(c.state_dir))
    listed = json.loads(cli("snapshot", "list", "--json", "--state-dir", str(c.state_dir)).stdout)
    assert not [r for r in listed if r["id"] == "nightly-1"]


def test_a_damaged_snapshot_is_refused_before_anything_starts(
    source: tuple[RunningCluster, dict[str, Any]],
) -> None:
    c, _ = source
    cli("snapshot", "create", c.name, "--id", "damaged", "--state-dir", str(c.state_dir))
    rdb = c.state_dir / "snapshots" / "damaged" / "shard-0002.rdb"
    data = bytearray(rdb.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rdb.write_bytes(bytes(data))
    name = f"{c.name}-bad"
    out = cli(
        "restore", "damaged", str(topology_file(c, name, 2)), "--state-dir", str(c.state_dir),
        check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "shard-0002.rdb does not match its SHA-256" in out.stderr
    assert not (c.state_dir / name).exists()  # nothing was started
    rdb.write_bytes(bytes(data[:100]))  # truncated
    out = cli(
        "restore", "damaged", str(topology_file(c, name, 2)), "--state-dir", str(c.state_dir),
        check=False,
    )  # fmt: skip
    assert out.returncode == 1 and "truncated" in out.stderr
    assert not (c.state_dir / name).exists()
    cli("snapshot", "delete", "damaged", "--state-dir", str(c.state_dir))


def test_automatic_snapshots_keep_the_newest_and_down_takes_a_final_one(tmp_path: Path) -> None:
    c = start_cluster(
        tmp_path,
        shards=1,
        replicas_per_shard=1,
        zones=["az-a", "az-b"],
        backup={"retention": 2, "interval_s": 1},
    )
    try:
        rc = cluster_client(c)
        try:
            rc.set("k", "v")
        finally:
            rc.close()

        def kinds() -> list[str]:
            return [e["type"] for e in read_events(c.cdir.events_path)]

        wait_for(
            lambda: kinds().count("snapshot_completed") >= 3 and "snapshot_deleted" in kinds(),
            60,
            "three automatic snapshots and a retention deletion",
        )
        listed = json.loads(
            cli(
                "snapshot", "list", "--cluster", c.name, "--json", "--state-dir", str(c.state_dir)
            ).stdout
        )
        auto = [r for r in listed if r["kind"] == "automatic"]
        assert 2 <= len(auto) <= 3  # one more may have completed since the last deletion
        assert all(r["keys"] == 1 for r in auto)
        cli(
            "down", c.name, "--purge", "--final-snapshot", "last-1", "--state-dir", str(c.state_dir)
        )
        assert not c.cdir.root.exists()
        listed = json.loads(
            cli("snapshot", "list", "--json", "--state-dir", str(c.state_dir)).stdout
        )
        (final,) = [r for r in listed if r["id"] == "last-1"]
        assert final["kind"] == "manual" and final["keys"] == 1  # it outlives the purge
    finally:
        c.remember_pids()
        if c.cdir.root.exists():
            c.down()
        assert_all_gone(c.seen_pids)


def test_a_node_restarted_with_aof_comes_back_with_its_data(tmp_path: Path) -> None:
    c = start_cluster(
        tmp_path,
        shards=1,
        replicas_per_shard=0,
        zones=["az-a"],
        sentinels={"count": 1, "quorum": 1},
        persistence={"appendonly": True, "appendfsync": "always"},
    )
    try:
        rc = cluster_client(c)
        try:
            for i in range(200):
                rc.set(f"aof:{i}", str(i))
        finally:
            rc.close()
        (shard,) = c.status()["shards"]
        name = shard["primary"]["name"]
        pid = read_pid(c.cdir.pid_file(f"node.{name}"))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        def restarted() -> bool:
            now = read_pid(c.cdir.pid_file(f"node.{name}"))
            return now is not None and now != pid and c.status()["state"] == "available"

        wait_for(restarted, 60, "the agent to restart the node")
        rc = cluster_client(c)
        try:
            assert [rc.get(f"aof:{i}") for i in range(200)] == [str(i) for i in range(200)]
        finally:
            rc.close()
    finally:
        c.remember_pids()
        c.down()
        assert_all_gone(c.seen_pids)


def test_encrypted_snapshots_export_import_and_restore_only_with_their_key(tmp_path: Path) -> None:
    key = tmp_path / "snap.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    c = start_cluster(
        tmp_path,
        shards=1,
        replicas_per_shard=0,
        zones=["az-a"],
        sentinels={"count": 1, "quorum": 1},
        backup={"encryption_key_file": str(key)},
    )
    state = str(c.state_dir)
    try:
        rc = cluster_client(c)
        try:
            fill(rc)
            want = contents(rc)
        finally:
            rc.close()
        cli("snapshot", "create", c.name, "--id", "sealed", "--state-dir", state)
        stored = c.state_dir / "snapshots" / "sealed" / "shard-0001.rdb.enc"
        assert not stored.read_bytes().startswith(b"REDIS")  # no plaintext at rest
        assert b"v1v1" not in stored.read_bytes()
        exported = tmp_path / "backups"
        exported.mkdir()
        cli("snapshot", "export", "sealed", str(exported), "--state-dir", state)
        cli("snapshot", "delete", "sealed", "--state-dir", state)
        cli("snapshot", "import", str(exported / "sealed"), "--state-dir", state)
        (row,) = json.loads(cli("snapshot", "list", "--json", "--state-dir", state).stdout)
        assert row["id"] == "sealed" and row["encrypted"] is True

        name = f"{c.name}-wrong"
        out = cli(
            "restore", "sealed", str(topology_file(c, name, 2)), "--key-file", str(other),
            "--state-dir", state, check=False,
        )  # fmt: skip
        assert out.returncode == 1 and "is encrypted with key" in out.stderr, out.stderr
        assert not (c.state_dir / name).exists()

        restored_name = f"{c.name}-dec"
        path = topology_file(c, restored_name, 2)
        out = cli("restore", "sealed", str(path), "--key-file", str(key), "--state-dir", state)
        restored = RunningCluster(restored_name, c.state_dir, path, out.stdout)
        restored.remember_pids()
        try:
            rc = cluster_client(restored)
            try:
                assert contents(rc) == want
            finally:
                rc.close()
        finally:
            restored.down()
            assert_all_gone(restored.seen_pids)
    finally:
        c.remember_pids()
        c.down()
        assert_all_gone(c.seen_pids)


def test_a_replica_killed_during_its_snapshot_passes_the_shard_to_another_node(
    tmp_path: Path,
) -> None:
    c = start_cluster(tmp_path, shards=1, replicas_per_shard=1, zones=["az-a", "az-b"])
    try:
        (shard,) = c.status()["shards"]
        replica = shard["replicas"][0]
        primary = shard["primary"]
        admin = c.admin(primary["address"])
        pipe = admin.pipeline(transaction=False)
        for i in range(20_000):
            pipe.set(f"{{t}}:{i}", i)
        pipe.execute()
        wait_for(lambda: c.admin(replica["address"]).dbsize() == 20_000, 30, "the replica")
        watcher = c.admin(replica["address"])
        # the engine's own test knob: each key takes 100 us to save, so the replica's
        # BGSAVE lasts about 2 s and can be caught in progress
        watcher.config_set("rdb-key-save-delay", 100)
        pid = read_pid(c.cdir.pid_file(f"node.{replica['name']}"))
        assert pid is not None
        snap = subprocess.Popen(
            [sys.executable, "-m", "cachefleet", "snapshot", "create", c.name, "--id", "k1",
             "--state-dir", str(c.state_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(
                lambda: watcher.info("persistence")["rdb_bgsave_in_progress"] == 1,
                20,
                "the replica's snapshot to start",
            )
            os.kill(pid, signal.SIGKILL)
            out, err = snap.communicate(timeout=120)
        finally:
            if snap.poll() is None:
                snap.kill()
                snap.wait()
        assert snap.returncode == 0, err
        assert "trying another node" in out
        manifest = json.loads((c.state_dir / "snapshots" / "k1" / "manifest.json").read_text())
        assert manifest["shards"][0]["source"] == primary["name"]
        assert manifest["shards"][0]["keys"] == 20_000
    finally:
        c.remember_pids()
        c.down()
        assert_all_gone(c.seen_pids)
