"""Snapshots (pure): identifiers, the manifest, where snapshots live, and their integrity.

A snapshot is a directory ``<state-dir>/snapshots/<id>/`` holding ``manifest.json`` and one
RDB file per shard, in the engine's own format. It lives outside every cluster's directory,
so it outlives ``down --purge``. It is written under ``<id>.partial/`` and renamed when every
file is in place: a snapshot directory with a manifest is complete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachefleet.errors import CachefleetError
from cachefleet.slots import SLOTS
from cachefleet.topology import Backup

KINDS = ("manual", "automatic")
#: The managed service's rule: a letter first, then letters, digits and single hyphens, at
#: most 255, no hyphen at the end.
_ID = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,254}")
MANIFEST = "manifest.json"


class SnapshotError(CachefleetError):
    """A snapshot that does not exist, is not valid, or does not match its manifest."""


def check_id(snapshot_id: str) -> str:
    if not _ID.fullmatch(snapshot_id):
        raise SnapshotError(
            f"invalid snapshot id {snapshot_id!r}: a letter first, then letters, digits and "
            "single hyphens (at most 255, no hyphen at the end)"
        )
    return snapshot_id


@dataclass(frozen=True)
class ShardSnapshot:
    shard: int
    slots: tuple[tuple[int, int], ...]
    file: str  # name inside the snapshot directory
    keys: int
    bytes: int
    sha256: str
    source: str  # the node it was taken from
    offset: int  # that node's replication offset when it was taken


@dataclass(frozen=True)
class Manifest:
    id: str
    cluster: str
    engine: str
    engine_version: str
    created: str  # ISO 8601, UTC
    kind: str
    config_epoch: int
    shards: tuple[ShardSnapshot, ...]
    key_id: str | None = None  # encrypted at rest with this key (cachefleet.sealing)

    @property
    def keys(self) -> int:
        return sum(s.keys for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        """Strictly typed: a manifest that is not what this module writes is refused."""
        try:
            if not isinstance(data, dict):
                raise TypeError("not an object")
            shards = tuple(_shard(s) for s in data["shards"])
            manifest = cls(
                id=check_id(_str(data["id"])),
                cluster=_str(data["cluster"]),
                engine=_str(data["engine"]),
                engine_version=_str(data["engine_version"]),
                created=_str(data["created"]),
                kind=_str(data["kind"]),
                config_epoch=_int(data["config_epoch"]),
                shards=shards,
                key_id=_key_id(data.get("key_id")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{where}: not a valid snapshot manifest ({exc})") from exc
        if manifest.kind not in KINDS:
            raise SnapshotError(f"{where}: kind must be one of {', '.join(KINDS)}")
        if not shards:
            raise SnapshotError(f"{where}: no shards")
        return manifest


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _key_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{16}", value):
        raise ValueError("key_id is not 16 hex digits")
    return value


def _shard(data: Any) -> ShardSnapshot:
    if not isinstance(data, dict):
        raise TypeError("a shard is not an object")
    slots = tuple((_int(a), _int(b)) for a, b in data["slots"])
    if any(not 0 <= a <= b < SLOTS for a, b in slots):
        raise ValueError(f"slot range out of 0..{SLOTS - 1}")
    name = _str(data["file"])
    if "/" in name or name.startswith("."):
        raise ValueError(f"file name {name!r} leaves the snapshot directory")
    sha = _str(data["sha256"])
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ValueError("sha256 is not 64 hex digits")
    return ShardSnapshot(
        shard=_int(data["shard"]),
        slots=slots,
        file=name,
        keys=_int(data["keys"]),
        bytes=_int(data["bytes"]),
        sha256=sha,
        source=_str(data["source"]),
        offset=_int(data["offset"]),
    )


def root(home: Path) -> Path:
    return home / "snapshots"


def directory(home: Path, snapshot_id: str) -> Path:
    return root(home) / check_id(snapshot_id)


def load(home: Path, snapshot_id: str) -> Manifest:
    return load_dir(
        directory(home, snapshot_id), f"no snapshot named {snapshot_id!r} under {root(home)}"
    )


def load_dir(base: Path, missing: str | None = None) -> Manifest:
    """The manifest of the snapshot directory `base` (exported or in the state dir)."""
    path = base / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SnapshotError(missing or f"{base} is not a snapshot (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path}: unreadable ({exc})") from exc
    return Manifest.from_dict(data, str(path))


def list_all(home: Path) -> list[Manifest]:
    """Every complete snapshot, oldest first (a damaged one is skipped, not fatal)."""
    out: list[Manifest] = []
    base = root(home)
    if not base.is_dir():
        return out
    for d in base.iterdir():
        if d.is_dir() and not d.name.endswith(".partial") and (d / MANIFEST).exists():
            try:
                out.append(load(home, d.name))
            except SnapshotError:
                continue
    out.sort(key=lambda m: (m.created, m.id))
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(home: Path, manifest: Manifest) -> None:
    """Every file present, of its size and SHA-256; else the error names the file."""
    verify_dir(directory(home, manifest.id), manifest)


def verify_dir(base: Path, manifest: Manifest) -> None:
    for shard in manifest.shards:
        path = base / shard.file
        if not path.is_file():
            raise SnapshotError(f"snapshot {manifest.id}: {path} is missing")
        size = path.stat().st_size
        if size != shard.bytes:
            raise SnapshotError(
                f"snapshot {manifest.id}: {path} is {size} bytes, the manifest says "
                f"{shard.bytes} (truncated or replaced)"
            )
        if sha256_file(path) != shard.sha256:
            raise SnapshotError(
                f"snapshot {manifest.id}: {path} does not match its SHA-256 (corrupt)"
            )


# -- automatic snapshots (decisions, pure) -----------------------------------------------------


def automatic_id(cluster: str, now: dt.datetime) -> str:
    """``auto-<cluster>-<UTC time>``, made a valid id whatever the cluster's name."""
    name = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9-]", "-", cluster)).strip("-")
    return check_id(f"auto-{name}-{now.strftime('%Y%m%d-%H%M%S')}"[:255].rstrip("-"))


def window_start(window: tuple[int, int], now: dt.datetime) -> dt.datetime | None:
    """The start of the window `now` is in (UTC minutes of the day; it may wrap midnight),
    or None when `now` is outside it."""
    start, end = window
    minute = now.hour * 60 + now.minute
    today = now.replace(hour=start // 60, minute=start % 60, second=0, microsecond=0)
    if start < end:
        return today if start <= minute < end else None
    if minute >= start:
        return today
    if minute < end:
        return today - dt.timedelta(days=1)
    return None


def automatic_due(backup: Backup, now: dt.datetime, last: dt.datetime | None) -> bool:
    """Whether an automatic snapshot is due, given when the last one was taken."""
    if not backup.automatic:
        return False
    if backup.interval_s is not None:
        return last is None or (now - last).total_seconds() >= backup.interval_s
    if backup.window is None:
        return False
    began = window_start(backup.window, now)
    return began is not None and (last is None or last < began)


def to_expire(found: list[Manifest], cluster: str, retention: int) -> list[str]:
    """The automatic snapshots of `cluster` beyond the newest `retention`, oldest first
    (manual snapshots are the user's: never expired)."""
    auto = sorted(
        (m for m in found if m.cluster == cluster and m.kind == "automatic"),
        key=lambda m: (m.created, m.id),
    )
    return [m.id for m in auto[: max(0, len(auto) - retention)]]


def created_at(manifest: Manifest) -> dt.datetime:
    return dt.datetime.fromisoformat(manifest.created)
