"""Snapshot identifiers, manifests and integrity checks (pure, on files in a temp dir)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cachefleet import snapshots
from cachefleet.snapshots import Manifest, ShardSnapshot, SnapshotError


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
