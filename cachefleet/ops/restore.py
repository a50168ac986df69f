"""Restore: a new cluster seeded from a snapshot, of any shard count.

Every file's size and SHA-256 (and the key of an encrypted snapshot) are checked before
anything starts. With the snapshot's shard count and slot ranges (and no AOF), each primary
starts from its shard's RDB file and claims the slots it holds keys for. Otherwise the new
cluster is brought up as ``up`` does, each shard's RDB is opened by a private engine process on
loopback (the engine reads its own format, every data type included), and its keys are
copied with ``DUMP``/``PTTL`` and pipelined ``RESTORE`` to the primary that owns each key's
slot in the new layout, TTLs kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aredis
from redis.exceptions import RedisError

from cachefleet import ports, snapshots
from cachefleet.credentials import Credentials
from cachefleet.errors import CachefleetError
from cachefleet.layout import Layout
from cachefleet.nodes import connect, info
from cachefleet.ops.snapshot import Out, keyspace_keys, link_or_copy
from cachefleet.plan import Plan
from cachefleet.resp import encode_command
from cachefleet.sealing import Key
from cachefleet.slots import SLOTS, key_slot, split_slots
from cachefleet.snapshots import ShardSnapshot, SnapshotError
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import client_context
from cachefleet.topology import load_topology

SCAN_COUNT = 1000  # keys per SCAN step, and per pipelined DUMP/RESTORE round


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
        tls = client_context(host, port)  # a TLS cluster's node (the private engine is plain)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls is not None else None
            ),
            10,
        )
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


async def _databases(source_port: int, group: bool) -> list[int]:
    """The source engine's databases that hold keys. Only a cluster-mode-disabled group has
    more than database 0; a cluster cannot take the others, so that is refused."""
    source = await _Link.open("127.0.0.1", source_port)
    try:
        (text,) = await source.call(encode_command([b"INFO", b"keyspace"]), 1)
    finally:
        await source.close()
    dbs = sorted(int(line[2:].split(b":")[0]) for line in text.split() if line.startswith(b"db"))
    if not group and any(db != 0 for db in dbs):
        raise SnapshotError(
            f"the snapshot holds keys in database(s) {', '.join(map(str, dbs))}: a cluster "
            "serves database 0 only (restore it into a cluster_mode: disabled group)"
        )
    return dbs


async def _copy_keys(source_port: int, layout: Layout, auth: Credentials, db: int = 0) -> int:
    """Every key of the source engine's database `db` to the primary owning its slot (a
    group's one primary: its shard owns no slots, it holds every key): SCAN, DUMP + PTTL,
    then RESTORE, SCAN_COUNT keys a round, each step one pipelined write per connection."""
    owner: list[tuple[str, int] | None] = [None] * SLOTS
    for shard in layout.shards:
        if shard.primary is None:
            raise CachefleetError(f"the new cluster's shard {shard.id} has no primary")
        for a, b in shard.slots or ((0, SLOTS - 1),):
            for slot in range(a, b + 1):
                owner[slot] = (shard.primary.host, shard.primary.port)
    source = await _Link.open("127.0.0.1", source_port)
    targets: dict[tuple[str, int], _Link] = {}
    copied = 0
    select = encode_command([b"SELECT", str(db).encode()])
    try:
        if db:
            await source.call(select, 1)
        for addr in {a for a in owner if a is not None}:
            targets[addr] = await _Link.open(addr[0], addr[1], auth)
            if db:
                await targets[addr].call(select, 1)
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
            total += keyspace_keys(await info(client, "keyspace") or {})
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
    same_shape = (  # a group from one file (every database), a cluster from the same ranges
        len(manifest.shards) == 1
        if topo.standalone
        else topo.shards == len(manifest.shards)
        and ranges == tuple(((a, b),) for a, b in split_slots(topo.shards))
    )
    fast = not topo.persistence.appendonly and same_shape  # with AOF, nodes start from it

    def seed(plan: Plan, cdir: ClusterDir) -> None:
        """Same shards and slot ranges: each primary starts from its shard's RDB file and
        claims the slots it holds keys for; replicas sync from it."""
        for shard in manifest.shards:
            primary = next(n for n in plan.shard_nodes(shard.shard) if n.member == 0)
            data = cdir.node_dir(primary.name) / "data"
            data.mkdir(parents=True, exist_ok=True)
            if key is None:
                link_or_copy(base / shard.file, data / "dump.rdb")
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
                n = 0
                for db in await _databases(port, topo.standalone):
                    n += await _copy_keys(port, layout, auth, db)
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
