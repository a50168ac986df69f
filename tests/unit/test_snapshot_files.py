"""Snapshot identifiers, manifests and integrity checks (pure, on files in a temp dir)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from cachefleet import snapshots
from cachefleet.snapshots import Manifest, ShardSnapshot, SnapshotError
from cachefleet.topology import Backup


@pytest.mark.parametrize("good", ["a", "nightly-1", "Shop-2026-11-29", "x" * 255])
def test_valid_ids(good: str) -> None:
    assert snapshots.check_id(good) == good


@pytest.mark.parametrize("bad", ["", "1abc", "-a", "a-", "a--b", "a_b", "a/b", "..", "x" * 256])
def test_invalid_ids_are_refused(bad: str) -> None:
    with pytest.raises(SnapshotError, match="invalid snapshot id"):
        snapshots.check_id(bad)


def write_snapshot(home: Path, body: bytes = b"REDIS0011...data...") -> Manifest:
    d = snapshots.directory(home, "s1")
    d.mkdir(parents=True)
    (d / "shard-0001.rdb").write_bytes(body)
    manifest = Manifest(
        id="s1",
        cluster="c",
        engine="valkey",
        engine_version="8.1.0",
        created="2026-11-29T08:00:00+00:00",
        kind="manual",
        config_epoch=3,
        shards=(
            ShardSnapshot(
                shard=1,
                slots=((0, 16383),),
                file="shard-0001.rdb",
                keys=10,
                bytes=len(body),
                sha256=snapshots.sha256_file(d / "shard-0001.rdb"),
                source="c-0001-002",
                offset=42,
            ),
        ),
    )
    (d / snapshots.MANIFEST).write_text(manifest.to_json())
    return manifest


def test_a_manifest_round_trips_and_verifies(tmp_path: Path) -> None:
    written = write_snapshot(tmp_path)
    assert snapshots.load(tmp_path, "s1") == written
    assert [m.id for m in snapshots.list_all(tmp_path)] == ["s1"]
    snapshots.verify(tmp_path, written)


def test_corrupt_and_truncated_files_are_named(tmp_path: Path) -> None:
    manifest = write_snapshot(tmp_path)
    rdb = snapshots.directory(tmp_path, "s1") / "shard-0001.rdb"
    rdb.write_bytes(b"REDIS0011...dat4...")  # same size, other bytes
    with pytest.raises(SnapshotError, match=r"shard-0001\.rdb does not match its SHA-256"):
        snapshots.verify(tmp_path, manifest)
    rdb.write_bytes(b"REDIS")
    with pytest.raises(SnapshotError, match=r"shard-0001\.rdb is 5 bytes.*truncated"):
        snapshots.verify(tmp_path, manifest)
    rdb.unlink()
    with pytest.raises(SnapshotError, match="is missing"):
        snapshots.verify(tmp_path, manifest)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "weekly"}, "kind must be one of"),
        ({"config_epoch": "3"}, "not an integer"),
        ({"shards": []}, "no shards"),
        ({"id": "bad--id"}, "invalid snapshot id"),
    ],
)
def test_a_manifest_that_is_not_ours_is_refused(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    data = json.loads(write_snapshot(tmp_path).to_json())
    data.update(change)
    with pytest.raises(SnapshotError, match=message):
        Manifest.from_dict(data)


@pytest.mark.parametrize(
    ("shard_change", "message"),
    [
        ({"file": "../../etc/passwd"}, "leaves the snapshot directory"),
        ({"slots": [[0, 20000]]}, "slot range"),
        ({"sha256": "xyz"}, "64 hex digits"),
    ],
)
def test_shard_entries_are_checked(
    tmp_path: Path, shard_change: dict[str, Any], message: str
) -> None:
    data = json.loads(write_snapshot(tmp_path).to_json())
    data["shards"][0].update(shard_change)
    with pytest.raises(SnapshotError, match=message):
        Manifest.from_dict(data)


def test_a_damaged_manifest_is_skipped_by_list(tmp_path: Path) -> None:
    write_snapshot(tmp_path)
    other = snapshots.root(tmp_path) / "s2"
    other.mkdir()
    (other / snapshots.MANIFEST).write_text("{not json")
    assert [m.id for m in snapshots.list_all(tmp_path)] == ["s1"]
    with pytest.raises(SnapshotError, match="unreadable"):
        snapshots.load(tmp_path, "s2")


# --- automatic snapshots: when, and which are kept ------------------------------------------

UTC = dt.UTC


def at(h: int, m: int, day: int = 29) -> dt.datetime:
    return dt.datetime(2026, 11, day, h, m, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "now", "start"),
    [
        ((180, 240), at(3, 30), at(3, 0)),
        ((180, 240), at(4, 0), None),
        ((180, 240), at(2, 59), None),
        ((23 * 60, 60), at(23, 30), at(23, 0)),  # wraps midnight
        ((23 * 60, 60), at(0, 30), at(23, 0, day=28)),
        ((23 * 60, 60), at(12, 0), None),
    ],
)
def test_window_start(window: tuple[int, int], now: dt.datetime, start: dt.datetime | None) -> None:
    assert snapshots.window_start(window, now) == start


def test_a_window_takes_one_snapshot_a_day() -> None:
    b = Backup(retention=3, window=(180, 240))
    assert snapshots.automatic_due(b, at(3, 10), None)
    assert snapshots.automatic_due(b, at(3, 10), at(3, 5, day=28))  # yesterday's
    assert not snapshots.automatic_due(b, at(3, 10), at(3, 1))  # today's is taken
    assert not snapshots.automatic_due(b, at(5, 0), None)  # outside the window
    assert not snapshots.automatic_due(Backup(retention=0, window=(180, 240)), at(3, 10), None)


def test_an_interval_counts_from_the_last_snapshot() -> None:
    b = Backup(retention=2, interval_s=60)
    assert snapshots.automatic_due(b, at(3, 10), None)
    assert not snapshots.automatic_due(b, at(3, 10), at(3, 9) + dt.timedelta(seconds=30))
    assert snapshots.automatic_due(b, at(3, 10), at(3, 9))


def manifest(sid: str, cluster: str, kind: str, created: str) -> Manifest:
    shard = ShardSnapshot(1, ((0, 16383),), "shard-0001.rdb", 0, 0, "0" * 64, "n", 0)
    return Manifest(sid, cluster, "valkey", "8", created, kind, 1, (shard,))


def test_retention_expires_the_oldest_automatic_snapshots_of_that_cluster_only() -> None:
    found = [
        manifest("a1", "c", "automatic", "2026-11-29T01:00:00"),
        manifest("m1", "c", "manual", "2026-11-29T00:00:00"),
        manifest("a3", "c", "automatic", "2026-11-29T03:00:00"),
        manifest("a2", "c", "automatic", "2026-11-29T02:00:00"),
        manifest("o1", "other", "automatic", "2026-11-28T00:00:00"),
    ]
    assert snapshots.to_expire(found, "c", 2) == ["a1"]
    assert snapshots.to_expire(found, "c", 5) == []
    assert snapshots.to_expire(found, "c", 0) == ["a1", "a2", "a3"]


def test_automatic_ids_are_valid_whatever_the_cluster_name() -> None:
    assert snapshots.automatic_id("shop", at(3, 4)) == "auto-shop-20261129-030400"
    assert snapshots.automatic_id("my_shop--1", at(3, 4)) == "auto-my-shop-1-20261129-030400"


async def test_a_shard_whose_source_fails_is_taken_from_the_next_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A replica that dies during its snapshot passes the shard on; only when every node
    failed does the snapshot fail (with each node's reason)."""
    from cachefleet.errors import CachefleetError
    from cachefleet.layout import LayoutNode, LayoutShard
    from cachefleet.ops import snapshot as ops

    nodes = [
        LayoutNode(f"n{i}", "x" * 40, 1, "az-a", "127.0.0.1", 7000 + i, 0, "replica")
        for i in range(3)
    ]
    shard = LayoutShard(1, ((0, 16383),), tuple(nodes))
    tried: list[str] = []

    async def sources(*_: Any) -> list[LayoutNode]:
        return nodes

    async def take(shard_: Any, node: LayoutNode, *_: Any) -> Any:
        tried.append(node.name)
        if node.name != "n2":
            raise CachefleetError("Connection reset by peer")
        return ("taken from " + node.name, "8.1")

    monkeypatch.setattr(ops, "_sources", sources)
    monkeypatch.setattr(ops, "_snapshot_from", take)
    lines: list[str] = []
    got = await ops._snapshot_shard(shard, None, tmp_path, "replica", None, lines.append)  # type: ignore[arg-type]
    assert got == ("taken from n2", "8.1") and tried == ["n0", "n1", "n2"]
    assert sum("trying another node" in line for line in lines) == 2

    async def fail(shard_: Any, node: LayoutNode, *_: Any) -> Any:
        raise CachefleetError(f"{node.name} is gone")

    monkeypatch.setattr(ops, "_snapshot_from", fail)
    with pytest.raises(
        CachefleetError, match=r"no node could be snapshotted.*n0 is gone.*n2 is gone"
    ):
        await ops._snapshot_shard(shard, None, tmp_path, "replica", None, lines.append)  # type: ignore[arg-type]
