"""Snapshots of a running cluster (restore is :mod:`cachefleet.ops.restore`).

**Create**: per shard, in parallel, from a healthy linked replica when there is one (so the
primary does not fork), else from the primary: the data set streamed as ``redis-cli --rdb``
asks for it (``REPLCONF rdb-only`` + ``SYNC``) and hashed on the way, or, where the engine
refuses that and for encrypted snapshots, ``BGSAVE`` and the engine's RDB file linked (or
sealed) into the snapshot with its SHA-256. Each shard's file is
a point-in-time image of that shard; the shards are taken at nearly the same moment, not at
one global instant (as the managed service's snapshots are).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import io
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hiredis

from cachefleet import snapshots
from cachefleet.credentials import Credentials
from cachefleet.errors import CachefleetError
from cachefleet.layout import LayoutNode, LayoutShard
from cachefleet.nodes import NodeLink, Replication, Role, parse_info
from cachefleet.resp import encode_command
from cachefleet.snapshots import Manifest, ShardSnapshot, SnapshotError
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import client_context

if TYPE_CHECKING:  # sealing (and its cryptography) loads only for an encrypted snapshot
    from cachefleet.sealing import Key

Out = Callable[[str], None]

BGSAVE_TIMEOUT_S = 600.0
SCAN_COUNT = 1000  # keys per SCAN step, and per pipelined DUMP/RESTORE round


def _now_id(cluster: str) -> str:
    return f"{cluster}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}"


async def _sources(shard: LayoutShard, auth: Credentials, prefer: str) -> list[LayoutNode]:
    """Where to take the shard's snapshot, best first: linked replicas, most caught up
    first, then the primary (`prefer` "primary": the primary first)."""
    linked: list[tuple[int, LayoutNode]] = []
    for node in shard.replicas:
        link = NodeLink(host=node.host, port=node.port, auth=auth)
        try:
            rep = await link.probe(1.0)
        finally:
            await link.close()
        if rep is not None and rep.role is Role.REPLICA and rep.link_up and not rep.syncing:
            linked.append((rep.offset, node))
    replicas = [node for _, node in sorted(linked, key=lambda x: (-x[0], x[1].name))]
    primary = [shard.primary] if shard.primary is not None else []
    found = primary + replicas if prefer == "primary" else replicas + primary
    if not found:
        raise CachefleetError(f"shard {shard.id} has no primary and no linked replica")
    return found


# What a raw link to a node raises when the node is gone or answers nonsense.
_LINK_FAILURES = (OSError, TimeoutError, asyncio.IncompleteReadError, hiredis.ProtocolError,
                  ValueError)  # fmt: skip


async def _ask(link: NodeLink, *args: str, timeout: float = 10.0) -> Any:
    """One command on the node's link; an error reply raises."""
    reply = await link.request(*args, timeout=timeout)
    if isinstance(reply, hiredis.ReplyError):
        raise CachefleetError(f"{' '.join(args[:2])}: {reply}")
    return reply


async def _info(link: NodeLink, section: str) -> dict[str, str]:
    text = await _ask(link, "INFO", section)
    if not isinstance(text, bytes):
        raise CachefleetError(f"no INFO {section} reply")
    return parse_info(text.decode(errors="replace"))


def keyspace_keys(fields: Mapping[str, Any]) -> int:
    """Keys in every database of an INFO keyspace (a cluster-mode-disabled group's nodes
    have 16), as text (``db3:keys=12,expires=0,avg_ttl=0``) or redis-py's parsed mapping."""
    total = 0
    for name, value in fields.items():
        if name.startswith("db"):
            if isinstance(value, str):
                value = dict(p.partition("=")[::2] for p in value.split(","))
            total += int(value.get("keys", 0))
    return total


async def _persistence(link: NodeLink, run_id: str | None = None) -> dict[str, str]:
    """INFO persistence and server; with `run_id`, a node that restarted meanwhile is an
    error, not a node whose counters started afresh."""
    fields = {**await _info(link, "persistence"), **await _info(link, "server")}
    if run_id is not None and fields.get("run_id") != run_id:
        raise CachefleetError("the node restarted during its snapshot")
    return fields


async def _bgsave(link: NodeLink, where: str) -> None:
    """BGSAVE, and wait until this save (not an earlier one) has finished well."""
    deadline = time.monotonic() + BGSAVE_TIMEOUT_S
    while (before := await _persistence(link)).get("rdb_bgsave_in_progress") == "1":
        if time.monotonic() > deadline:
            raise CachefleetError(f"{where}: a background save never finished")
        await asyncio.sleep(0.02)
    run_id = before.get("run_id")
    await _ask(link, "BGSAVE")
    while True:
        now = await _persistence(link, run_id)
        done = now.get("rdb_bgsave_in_progress") != "1"
        if "rdb_saves" in now:
            done = done and int(now["rdb_saves"]) > int(before.get("rdb_saves", 0))
        else:  # engines without the counter: the save time moves
            done = done and now.get("rdb_last_save_time") != before.get("rdb_last_save_time")
        if done:
            if now.get("rdb_last_bgsave_status") != "ok":
                raise CachefleetError(f"{where}: the background save failed")
            return
        if time.monotonic() > deadline:
            raise CachefleetError(f"{where}: the background save did not finish in time")
        await asyncio.sleep(0.01)


async def _snapshot_shard(
    shard: LayoutShard, auth: Credentials, target: Path, prefer: str, key: Key | None, out: Out
) -> tuple[ShardSnapshot, str]:
    """From the best source; a source that fails (a replica that dies meanwhile) passes the
    shard to the next one, and only when every one failed does the snapshot fail."""
    errors: list[str] = []
    for node in await _sources(shard, auth, prefer):
        try:
            return await _snapshot_from(shard, node, auth, target, key, out)
        except (CachefleetError, *_LINK_FAILURES) as exc:
            errors.append(f"{node.name}: {exc}")
            out(f"shard {shard.id}: snapshot from {node.name} failed ({exc}); trying another node")
    raise CachefleetError(f"shard {shard.id}: no node could be snapshotted ({'; '.join(errors)})")


async def _snapshot_from(
    shard: LayoutShard,
    node: LayoutNode,
    auth: Credentials,
    target: Path,
    key: Key | None,
    out: Out,
) -> tuple[ShardSnapshot, str]:
    where = f"shard {shard.id} ({node.name})"
    name = f"shard-{shard.id:04d}.rdb" + (".enc" if key is not None else "")
    dest = target / name
    link = NodeLink(host=node.host, port=node.port, auth=auth)
    try:
        keys = keyspace_keys(await _info(link, "keyspace"))
        rep = Replication.from_info(await _info(link, "replication"))
        server = await _info(link, "server")
        sha = None
        if key is None:  # streamed as a replica would get it, hashed on the way
            try:
                sha = await _stream_rdb(node, auth, dest)
            except StreamRefused as exc:  # an engine without rdb-only transfers
                out(f"{where}: {exc}; saving the RDB instead")
                dest.unlink(missing_ok=True)
        if sha is None:
            await _bgsave(link, where)
            directory = (await _ask(link, "CONFIG", "GET", "dir"))[1].decode()
            dbfilename = (await _ask(link, "CONFIG", "GET", "dbfilename"))[1].decode()
    finally:
        await link.close()
    if sha is None:
        if key is None:
            await asyncio.to_thread(link_or_copy, Path(directory) / dbfilename, dest)
        else:  # sealed from the node's file: no plaintext copy is written
            await asyncio.to_thread(key.seal, Path(directory) / dbfilename, dest)
        sha = await asyncio.to_thread(snapshots.sha256_file, dest)
    out(f"shard {shard.id}: {keys} keys, {dest.stat().st_size} bytes from {node.name}")
    version = str(server.get("valkey_version") or server.get("redis_version") or "")
    return (
        ShardSnapshot(
            shard=shard.id,
            slots=tuple(shard.slots),
            file=name,
            keys=keys,
            bytes=dest.stat().st_size,
            sha256=sha,
            source=node.name,
            offset=rep.offset,
        ),
        version,
    )


class StreamRefused(CachefleetError):
    """The node does not stream an RDB to us (the save-to-disk path is used instead); any
    other failure of the stream (the node died) passes the shard to the next node."""


async def _stream_rdb(node: LayoutNode, auth: Credentials, dest: Path) -> str:
    """The node's data set as an RDB stream (``REPLCONF rdb-only`` + ``SYNC``: what
    ``redis-cli --rdb`` asks for; the node forks and sends it without touching its disk),
    written to `dest` and hashed on the way, in a thread of its own (hashing and writing
    release the GIL, so shards stream in parallel); its SHA-256."""
    return await asyncio.to_thread(_stream_rdb_blocking, node, auth, dest)


_HEADER_BUFFER = 1 << 16


def _stream_rdb_blocking(node: LayoutNode, auth: Credentials, dest: Path) -> str:
    digest = hashlib.sha256()
    tls = client_context(node.host, node.port)  # a TLS cluster's node
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(socket.create_connection((node.host, node.port), timeout=60))
        sock = tls.wrap_socket(raw, server_hostname=node.host) if tls is not None else raw
        stack.enter_context(sock)
        sock.sendall(
            encode_command([b"AUTH", auth.user.encode(), auth.password.encode()])
            + encode_command([b"REPLCONF", b"rdb-only", b"1"])
            # an EOF-marked stream is one the node can send while its fork writes it
            # (diskless); without this capability it writes the file to disk first
            + encode_command([b"REPLCONF", b"capa", b"eof"])
        )
        rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=_HEADER_BUFFER))
        for _ in range(3):
            line = rfile.readline()
            if line.startswith(b"-"):
                raise StreamRefused(f"the node refused: {line.strip()[:200]!r}")
            if not line.startswith(b"+"):
                raise CachefleetError(f"no reply from the node: {line.strip()[:200]!r}")
        sock.sendall(encode_command([b"SYNC"]))  # only once nothing else is pending
        while (line := rfile.readline()) in (b"\n", b"\r\n"):
            pass  # the node's keepalives while it forks
        if line.startswith(b"-"):
            raise StreamRefused(f"the node refused SYNC: {line.strip()[:200]!r}")
        if not line.startswith(b"$"):
            raise CachefleetError(f"not an RDB transfer: {line.strip()[:200]!r}")
        # The payload: whatever the header's buffer already holds (read1 asking for the
        # buffer's size hands all of it over), then straight from the socket into one
        # reused buffer, written and hashed from views of it: no copy, no fresh pages.
        f = stack.enter_context(dest.open("wb"))

        def out(data: bytes | memoryview) -> None:
            f.write(data)
            digest.update(data)

        buf = memoryview(bytearray(1 << 22))
        first = rfile.read1(_HEADER_BUFFER)
        if line.startswith(b"$EOF:"):  # diskless: the payload ends with a 40-byte mark
            mark = line[5:45]
            tail = b""  # the last len(mark) bytes seen, held back until more arrive
            piece: bytes | memoryview = first
            while True:
                if len(piece) >= len(mark):
                    out(tail)
                    out(piece[: -len(mark)])
                    tail = bytes(piece[-len(mark) :])
                else:
                    joined = tail + bytes(piece)
                    out(joined[: -len(mark)])
                    tail = joined[-len(mark) :]
                if tail == mark:
                    return digest.hexdigest()
                n = sock.recv_into(buf)
                if not n:
                    raise CachefleetError("the RDB stream ended before its end mark")
                piece = buf[:n]
        left = int(line[1:].strip())
        out(first[:left])
        left -= len(first)
        while left > 0:
            n = sock.recv_into(buf, min(left, len(buf)))
            if not n:
                raise CachefleetError("the RDB stream ended early")
            out(buf[:n])
            left -= n
    return digest.hexdigest()


def link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the node's data dir and the snapshots share a file system (the
    engine replaces its RDB by renaming a new file over it, so the linked file never
    changes), else a copy."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


async def create(
    name: str,
    *,
    snapshot_id: str | None,
    state_dir: str | None,
    out: Out,
    kind: str = "manual",
) -> Manifest:
    cdir = ClusterDir(state_home(state_dir), name)
    plan = cdir.load_plan()
    if plan.topology.is_memcached:
        raise SnapshotError(f"cluster {name!r} is a memcached cluster: it has no snapshots")
    now = dt.datetime.now(dt.UTC)
    snapshot_id = snapshots.check_id(
        snapshot_id or (snapshots.automatic_id(name, now) if kind == "automatic" else _now_id(name))
    )
    final = snapshots.directory(cdir.home, snapshot_id)
    if final.exists():
        raise SnapshotError(f"a snapshot named {snapshot_id!r} already exists")
    # Every layout change is saved in the state dir as it is published (announce), so the
    # file is current; the bus is asked only when there is none.
    layout = cdir.load_layout()
    if layout is None:
        from cachefleet.ops.status import read_bus

        layout = (await read_bus(plan, cdir)).layout
    if layout is None:
        raise CachefleetError(f"cluster {name!r} has no layout (is it running?)")
    key_file = plan.topology.backup.encryption_key_file
    key = None
    if key_file:  # refused before any BGSAVE
        from cachefleet.sealing import Key

        key = Key.from_file(key_file)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    snapshots.root(cdir.home).mkdir(parents=True, exist_ok=True, mode=0o700)
    partial.mkdir(mode=0o700)
    auth = cdir.admin()
    created = now.isoformat(timespec="milliseconds")
    try:
        prefer = plan.topology.backup.source
        taken = await asyncio.gather(
            *(_snapshot_shard(shard, auth, partial, prefer, key, out) for shard in layout.shards)
        )
        manifest = Manifest(
            id=snapshot_id,
            cluster=name,
            engine=plan.topology.engine,
            engine_version=next((v for _, v in taken if v), ""),
            created=created,
            kind=kind,
            config_epoch=layout.epoch,
            shards=tuple(s for s, _ in taken),
            key_id=key.id if key is not None else None,
        )
        (partial / snapshots.MANIFEST).write_text(manifest.to_json())
        partial.rename(final)  # complete: every file and the manifest are in place
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    out(
        f"snapshot {snapshot_id}: {len(manifest.shards)} shards, {manifest.keys} keys, "
        f"{manifest.bytes} bytes"
    )
    return manifest


def list_snapshots(state_dir: str | None, cluster: str | None = None) -> list[Manifest]:
    found = snapshots.list_all(state_home(state_dir))
    return [m for m in found if cluster is None or m.cluster == cluster]


def delete(snapshot_id: str, *, state_dir: str | None) -> None:
    home = state_home(state_dir)
    snapshots.load(home, snapshot_id)  # it exists and is one of ours
    shutil.rmtree(snapshots.directory(home, snapshot_id))


def copy(source_id: str, target_id: str, *, state_dir: str | None) -> Manifest:
    """A manual snapshot `target_id` with the data of `source_id` (checked first): its files
    hard-linked (they never change once written), the manifest its own."""
    home = state_home(state_dir)
    manifest = snapshots.load(home, source_id)
    snapshots.verify(home, manifest)
    target = snapshots.directory(home, snapshots.check_id(target_id))
    if target.exists():
        raise SnapshotError(f"a snapshot named {target_id!r} already exists")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    copied = replace(manifest, id=target_id, kind="manual")
    try:
        for shard in manifest.shards:
            link_or_copy(snapshots.directory(home, source_id) / shard.file, partial / shard.file)
        (partial / snapshots.MANIFEST).write_text(copied.to_json())
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return copied


def export(snapshot_id: str, destination: str, *, state_dir: str | None) -> Path:
    """A self-contained copy (manifest + one RDB per shard) under `destination`."""
    home = state_home(state_dir)
    manifest = snapshots.load(home, snapshot_id)
    snapshots.verify(home, manifest)
    target = Path(destination) / snapshot_id
    if target.exists():
        raise SnapshotError(f"{target} already exists")
    shutil.copytree(snapshots.directory(home, snapshot_id), target)
    return target


def import_(path: str, *, state_dir: str | None) -> Manifest:
    """Make an exported snapshot known again: its manifest and every file are checked."""
    source = Path(path)
    manifest = snapshots.load_dir(source)
    snapshots.verify_dir(source, manifest)
    home = state_home(state_dir)
    target = snapshots.directory(home, manifest.id)
    if target.exists():
        raise SnapshotError(f"a snapshot named {manifest.id!r} already exists")
    snapshots.root(home).mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    partial.rename(target)
    return manifest
