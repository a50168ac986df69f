"""Snapshots of a running cluster, and restore into a new cluster of any shard count.

**Create**: per shard, in parallel, from a healthy linked replica when there is one (so the
primary does not fork), else from the primary: the data set streamed as ``redis-cli --rdb``
asks for it (``REPLCONF rdb-only`` + ``SYNC``) and hashed on the way, or, where the engine
refuses that and for encrypted snapshots, ``BGSAVE`` and the engine's RDB file linked (or
sealed) into the snapshot with its SHA-256. Each shard's file is
a point-in-time image of that shard; the shards are taken at nearly the same moment, not at
one global instant (as the managed service's snapshots are).

**Restore**: every file's size and SHA-256 are checked before anything starts; then the new
cluster is brought up as ``up`` does, each shard's RDB is opened by a private engine process
on loopback (the engine reads its own format, every data type included), and its keys are
copied with ``DUMP``/``PTTL`` and pipelined ``RESTORE`` to the primary that owns each key's
slot in the new layout, TTLs kept. The shard count may differ from the snapshot's.
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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hiredis
import redis.asyncio as aredis
from redis.exceptions import RedisError

from cachefleet import ports, snapshots
from cachefleet.credentials import Credentials
from cachefleet.errors import CachefleetError
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import Role, connect, info, replication
from cachefleet.plan import Plan
from cachefleet.resp import encode_command
from cachefleet.sealing import Key
from cachefleet.slots import SLOTS, key_slot, split_slots
from cachefleet.snapshots import Manifest, ShardSnapshot, SnapshotError
from cachefleet.state import ClusterDir, state_home
from cachefleet.topology import load_topology

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
        client = connect(node.host, node.port, timeout=1.0, auth=auth)
        try:
            rep = await replication(client)
        finally:
            await client.aclose()
        if rep is not None and rep.role is Role.REPLICA and rep.link_up and not rep.syncing:
            linked.append((rep.offset, node))
    replicas = [node for _, node in sorted(linked, key=lambda x: (-x[0], x[1].name))]
    primary = [shard.primary] if shard.primary is not None else []
    found = primary + replicas if prefer == "primary" else replicas + primary
    if not found:
        raise CachefleetError(f"shard {shard.id} has no primary and no linked replica")
    return found


async def _persistence(client: aredis.Redis, run_id: str | None = None) -> dict[str, Any]:
    """INFO persistence (and server); with `run_id`, a node that restarted meanwhile (the
    client reconnects by itself) is an error, not a node whose counters started afresh."""
    fields = await info(client, "persistence", "server")
    if fields is None:
        raise CachefleetError("no INFO persistence reply")
    if run_id is not None and fields.get("run_id") != run_id:
        raise CachefleetError("the node restarted during its snapshot")
    return dict(fields)


async def _bgsave(client: aredis.Redis, where: str) -> None:
    """BGSAVE, and wait until this save (not an earlier one) has finished well."""
    deadline = time.monotonic() + BGSAVE_TIMEOUT_S
    while (before := await _persistence(client)).get("rdb_bgsave_in_progress"):
        if time.monotonic() > deadline:
            raise CachefleetError(f"{where}: a background save never finished")
        await asyncio.sleep(0.02)
    run_id = str(before.get("run_id"))
    await client.bgsave()
    while True:
        now = await _persistence(client, run_id)
        done = not now.get("rdb_bgsave_in_progress")
        if "rdb_saves" in now:
            done = done and now["rdb_saves"] > before.get("rdb_saves", 0)
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
        except (CachefleetError, RedisError, OSError) as exc:
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
    client = connect(node.host, node.port, timeout=10.0, auth=auth)
    try:
        keys = int(await client.dbsize())
        rep = await replication(client)
        server = await info(client, "server") or {}
        sha = None
        if key is None:  # streamed as a replica would get it, hashed on the way
            try:
                sha = await _stream_rdb(node, auth, dest)
            except StreamRefused as exc:  # an engine without rdb-only transfers
                out(f"{where}: {exc}; saving the RDB instead")
                dest.unlink(missing_ok=True)
        if sha is None:
            await _bgsave(client, where)
            directory = str((await client.config_get("dir"))["dir"])
            dbfilename = str((await client.config_get("dbfilename"))["dbfilename"])
    finally:
        await client.aclose()
    if sha is None:
        if key is None:
            await asyncio.to_thread(_link_or_copy, Path(directory) / dbfilename, dest)
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
            offset=rep.offset if rep is not None else 0,
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


def _stream_rdb_blocking(node: LayoutNode, auth: Credentials, dest: Path) -> str:
    digest = hashlib.sha256()
    with socket.create_connection((node.host, node.port), timeout=60) as sock:
        sock.sendall(
            encode_command([b"AUTH", auth.user.encode(), auth.password.encode()])
            + encode_command([b"REPLCONF", b"rdb-only", b"1"])
        )
        rfile = cast(io.BufferedReader, sock.makefile("rb", buffering=1 << 20))
        for _ in range(2):
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
        with dest.open("wb") as f:
            if line.startswith(b"$EOF:"):  # diskless: the payload ends with a 40-byte mark
                mark = line[5:45]
                tail = b""
                while chunk := rfile.read1(1 << 22):
                    data = tail + chunk if tail else chunk
                    if data.endswith(mark):
                        body = data[: -len(mark)]
                        f.write(body)
                        digest.update(body)
                        return digest.hexdigest()
                    body, tail = data[: -len(mark)], data[-len(mark) :]
                    f.write(body)
                    digest.update(body)
                raise CachefleetError("the RDB stream ended before its end mark")
            left = int(line[1:].strip())
            while left > 0:
                chunk = rfile.read1(min(left, 1 << 22))
                if not chunk:
                    raise CachefleetError("the RDB stream ended early")
                f.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
    return digest.hexdigest()


def _link_or_copy(source: Path, dest: Path) -> None:
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
    key = Key.from_file(key_file) if key_file else None  # refused before any BGSAVE
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


# -- restore --------------------------------------------------------------------------------


async def _reader(
    binary: str, rdb: Path, work: Path, key: Key | None
) -> tuple[asyncio.subprocess.Process, int]:
    """A private engine on loopback that has loaded `rdb` (not a cluster node)."""
    port = ports.allocate_one()
    if key is None:
        shutil.copyfile(rdb, work / "dump.rdb")
    else:
        await asyncio.to_thread(key.open, rdb, work / "dump.rdb")
    proc = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
        "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
        "--logfile", str(work / "reader.log"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    client = aredis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        while True:
            if proc.returncode is not None:
                raise SnapshotError(f"{rdb}: the engine could not load it (see {work})")
            with contextlib.suppress(RedisError, OSError):
                loaded = await client.info("persistence")
                if not loaded.get("loading"):
                    return proc, port
            if time.monotonic() > deadline:
                raise SnapshotError(f"{rdb}: the engine did not finish loading it")
            await asyncio.sleep(0.05)
    except BaseException:
        await _stop(proc)
        raise
    finally:
        await client.aclose()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class _Link:
    """A raw pipelined connection (the copy moves millions of commands: redis-py's per-command
    objects would be most of its cost)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = hiredis.Reader()

    @classmethod
    async def open(cls, host: str, port: int, auth: Credentials | None = None) -> _Link:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        link = cls(reader, writer)
        if auth is not None:
            await link.call(
                encode_command([b"AUTH", auth.user.encode(), auth.password.encode()]), 1
            )
        return link

    async def call(self, payload: bytes, count: int) -> list[Any]:
        """Send `payload` (`count` requests) and read their replies; an error reply raises."""
        self.writer.write(payload)
        replies: list[Any] = []
        while len(replies) < count:
            while len(replies) < count and (item := self.parser.gets()) is not False:
                if isinstance(item, hiredis.ReplyError):
                    raise CachefleetError(f"the engine refused a restore step: {item}")
                replies.append(item)
            if len(replies) < count:
                data = await asyncio.wait_for(self.reader.read(1 << 20), 60)
                if not data:
                    raise CachefleetError("an engine closed the connection during the restore")
                self.parser.feed(data)
        return replies

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def _copy_keys(source_port: int, layout: Layout, auth: Credentials) -> int:
    """Every key of the source engine to the primary owning its slot: SCAN, DUMP + PTTL,
    then RESTORE, SCAN_COUNT keys a round, each step one pipelined write per connection."""
    owner: list[tuple[str, int] | None] = [None] * SLOTS
    for shard in layout.shards:
        if shard.primary is None:
            raise CachefleetError(f"the new cluster's shard {shard.id} has no primary")
        for a, b in shard.slots:
            for slot in range(a, b + 1):
                owner[slot] = (shard.primary.host, shard.primary.port)
    source = await _Link.open("127.0.0.1", source_port)
    targets: dict[tuple[str, int], _Link] = {}
    copied = 0
    try:
        for addr in {a for a in owner if a is not None}:
            targets[addr] = await _Link.open(addr[0], addr[1], auth)
        cursor = b"0"
        count = str(SCAN_COUNT).encode()
        while True:
            ((cursor, keys),) = await source.call(
                encode_command([b"SCAN", cursor, b"COUNT", count]), 1
            )
            if keys:
                ask = b"".join(
                    encode_command([b"DUMP", k]) + encode_command([b"PTTL", k]) for k in keys
                )
                values = await source.call(ask, 2 * len(keys))
                by_node: dict[tuple[str, int], list[bytes]] = {}
                for i, key in enumerate(keys):
                    payload, ttl = values[2 * i], values[2 * i + 1]
                    if payload is None or ttl == -2:  # gone (expired) meanwhile
                        continue
                    where = owner[key_slot(key)]
                    assert where is not None
                    ttl_arg = str(max(ttl, 0)).encode()
                    by_node.setdefault(where, []).append(
                        encode_command([b"RESTORE", key, ttl_arg, payload, b"REPLACE"])
                    )
                await asyncio.gather(
                    *(targets[a].call(b"".join(cmds), len(cmds)) for a, cmds in by_node.items())
                )
                copied += sum(len(cmds) for cmds in by_node.values())
            if cursor == b"0":
                return copied
    finally:
        await source.close()
        for link in targets.values():
            await link.close()


async def _count_keys(cdir: ClusterDir) -> int:
    layout = cdir.load_layout()
    auth = cdir.admin()
    total = 0
    for shard in layout.shards if layout is not None else ():
        if shard.primary is None:
            continue
        client = connect(shard.primary.host, shard.primary.port, timeout=5.0, auth=auth)
        try:
            total += int(await client.dbsize())
        finally:
            await client.aclose()
    return total


async def restore(
    snapshot_id: str,
    topology_path: str,
    *,
    state_dir: str | None,
    out: Out,
    key_file: str | None = None,
) -> int:
    home = state_home(state_dir)
    manifest = snapshots.load(home, snapshot_id)
    topo = load_topology(topology_path)
    key: Key | None = None
    if manifest.key_id is not None:
        key_file = key_file or topo.backup.encryption_key_file
        if key_file is None:
            raise SnapshotError(
                f"snapshot {snapshot_id} is encrypted (key {manifest.key_id}): give --key-file "
                "or backup.encryption_key_file"
            )
        key = Key.from_file(key_file)
        if key.id != manifest.key_id:
            raise SnapshotError(
                f"snapshot {snapshot_id} ({manifest.shards[0].file} ...) is encrypted with key "
                f"{manifest.key_id}, not with {key_file} (key {key.id})"
            )
    if topo.is_memcached or topo.engine != manifest.engine:
        raise SnapshotError(
            f"snapshot {snapshot_id} is of a {manifest.engine} cluster; {topology_path} "
            f"declares engine {topo.engine}"
        )
    if ClusterDir(home, topo.name).exists():
        raise SnapshotError(
            f"cluster {topo.name!r} already exists: restore creates a new cluster "
            f"(another name, or `cachefleet down {topo.name} --purge` first)"
        )
    out(f"checking snapshot {snapshot_id} ({len(manifest.shards)} files)")
    await asyncio.to_thread(snapshots.verify, home, manifest)
    t0 = time.monotonic()
    base = snapshots.directory(home, snapshot_id)
    ranges = tuple(tuple(s.slots) for s in manifest.shards)
    fast = (
        not topo.persistence.appendonly  # with AOF on, an engine starts from its AOF
        and topo.shards == len(manifest.shards)
        and ranges == tuple(((a, b),) for a, b in split_slots(topo.shards))
    )

    def seed(plan: Plan, cdir: ClusterDir) -> None:
        """Same shards and slot ranges: each primary starts from its shard's RDB file and
        claims the slots it holds keys for; replicas sync from it."""
        for shard in manifest.shards:
            primary = next(n for n in plan.shard_nodes(shard.shard) if n.member == 0)
            data = cdir.node_dir(primary.name) / "data"
            data.mkdir(parents=True, exist_ok=True)
            if key is None:
                _link_or_copy(base / shard.file, data / "dump.rdb")
            else:
                key.open(base / shard.file, data / "dump.rdb")

    from cachefleet.ops import lifecycle  # only restore starts a cluster

    if fast:
        out("same shards and slot ranges: the nodes start from the snapshot's files")
    code = await lifecycle.up(
        topology_path, state_dir=state_dir, detach=True, out=out, seed=seed if fast else None
    )
    if code != 0:
        return code
    if fast:
        cdir = ClusterDir(home, topo.name)
        keys = await _count_keys(cdir)
        out(
            f"cluster {topo.name} restored from {snapshot_id}: {keys} keys in "
            f"{len(manifest.shards)} shards in {time.monotonic() - t0:.1f} s"
        )
        return 0
    cdir = ClusterDir(home, topo.name)
    plan = cdir.load_plan()
    layout = cdir.load_layout()
    if layout is None:
        raise CachefleetError(f"cluster {topo.name!r} came up without a layout")
    auth = cdir.admin()

    async def one(shard: ShardSnapshot) -> int:
        with tempfile.TemporaryDirectory(prefix="cachefleet-restore-") as work:
            proc, port = await _reader(plan.engine_binary, base / shard.file, Path(work), key)
            try:
                n = await _copy_keys(port, layout, auth)
            finally:
                await _stop(proc)
        out(f"shard {shard.shard}: {n} keys restored")
        return n

    # the shards of the snapshot in parallel: each has its own reading engine
    copied = sum(await asyncio.gather(*(one(shard) for shard in manifest.shards)))
    elapsed = time.monotonic() - t0
    out(
        f"cluster {topo.name} restored from {snapshot_id}: {copied} keys into "
        f"{len(layout.shards)} shards in {elapsed:.1f} s"
    )
    return 0
