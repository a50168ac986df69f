"""The slot mover of apply: the engine's own migration (SETSLOT IMPORTING/MIGRATING, MIGRATE
in batches, SETSLOT NODE), many slots in flight per source, finishing half-moved slots."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from redis.exceptions import RedisError

from cachefleet.errors import CachefleetError
from cachefleet.nodes import parse_cluster_nodes
from cachefleet.ops.apply_links import (
    ENDS_TTL_S,
    KEY_BATCH,
    LINK_ERRORS,
    MIGRATE_TIMEOUT_MS,
    MIGRATES_IN_FLIGHT,
    MOVE_ATTEMPTS,
    PUBLISH_EVERY_S,
    SLOT_WORKERS,
    ClusterLinks,
    EngineReplyError,
    _until,
)
from cachefleet.ops.apply_view import Ends, View
from cachefleet.plan import NodeSpec
from cachefleet.reshape import (
    Move,
)

Out = Callable[[str], None]

#: Slots moving at once per source shard, keys per MIGRATE, attempts per slot.


class SlotMover(ClusterLinks):
    """Moves slots between the shards' primaries over the links of ClusterLinks."""

    async def migrate(self, moves: Sequence[Move], union: Sequence[NodeSpec]) -> tuple[int, int]:
        """Carry out slot moves; returns (slots, keys) moved.

        Every CLUSTER SETSLOT waits until the primary's replicas have it (Valkey 8), a few
        milliseconds each: so slots move SLOT_WORKERS at a time per source shard, each on
        connections of its own, and all source shards at once. The layout is published
        every PUBLISH_EVERY_S meanwhile, so `status` and the router follow the move."""
        by_source: dict[int, list[Move]] = {}
        for m in moves:
            by_source.setdefault(m.source, []).append(m)
        totals = [0, 0]
        done = asyncio.Event()

        async def publisher() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), PUBLISH_EVERY_S)
                with contextlib.suppress(CachefleetError, RedisError, OSError):
                    await self.publish(union)

        async def run_source(source_moves: list[Move]) -> None:
            sem = asyncio.Semaphore(SLOT_WORKERS)

            async def one(slot: int, m: Move) -> int:
                async with sem:
                    return await self.move_slot(slot, m.source, m.target, union)

            for m in source_moves:
                counts = await asyncio.gather(*(one(s, m) for s in range(m.start, m.end + 1)))
                keys = sum(counts)
                totals[0] += m.count
                totals[1] += keys
                self.event(
                    "slots_migrated", source=m.source, target=m.target, slots=m.count,
                    first=m.start, last=m.end, keys=keys,
                )  # fmt: skip
                self.step(
                    f"slots {m.start}-{m.end} ({m.count}) shard {m.source} -> {m.target}: "
                    f"{keys:,} keys"
                )

        background = asyncio.create_task(publisher())
        try:
            await asyncio.gather(*(run_source(ms) for ms in by_source.values()))
        finally:
            done.set()
            await background
        return totals[0], totals[1]

    async def endpoints(self, source: int, target: int, union: Sequence[NodeSpec]) -> Ends:
        """The current primaries of two shards (and every other primary), cached briefly so
        that concurrent slot moves share one observation."""
        key = (source, target)
        cached = self._ends.get(key)
        if cached is not None and time.monotonic() - cached.at < ENDS_TTL_S:
            return cached
        async with self._ends_lock:
            cached = self._ends.get(key)
            if cached is not None and time.monotonic() - cached.at < ENDS_TTL_S:
                return cached
            view = await self.observe(union)
            src_name = view.primary(source, union) if source > 0 else self._split[-source]
            tgt_name = view.primary(target, union)
            if src_name is None or tgt_name is None:
                missing = source if src_name is None else target
                raise CachefleetError(f"shard {missing} has no primary")
            by = {n.name: n for n in union}
            ends = Ends(
                src=by[src_name], tgt=by[tgt_name], src_id=view.by_name[src_name].id,
                tgt_id=view.by_name[tgt_name].id, at=time.monotonic(),
            )  # fmt: skip
            self._ends[key] = ends
            return ends

    async def move_slot(
        self, slot: int, source: int, target: int, union: Sequence[NodeSpec]
    ) -> int:
        """Move one slot, retried (with fresh primaries) when a node fails mid-way: every step
        of the protocol can be repeated. Returns keys moved."""
        for attempt in range(MOVE_ATTEMPTS):
            try:
                ends = await self.endpoints(source, target, union)
                return await self._move_slot(slot, ends)
            except (RedisError, *LINK_ERRORS, CachefleetError) as exc:
                if attempt == MOVE_ATTEMPTS - 1:
                    raise CachefleetError(f"slot {slot}: {exc}") from exc
                if attempt == 0 or attempt % 10 == 9:
                    self.step(f"slot {slot}: {exc!r}; retrying")
                self._ends.pop((source, target), None)
                await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
        raise AssertionError("unreachable")

    async def _move_slot(self, slot: int, e: Ends) -> int:
        try:
            await self.raw(e.tgt, "CLUSTER", "SETSLOT", slot, "IMPORTING", e.src_id)
        except EngineReplyError as exc:
            if "already the owner" in str(exc):
                return 0  # moved before (a resumed apply)
            raise
        await self.raw(e.src, "CLUSTER", "SETSLOT", slot, "MIGRATING", e.tgt_id)
        keys = await self._send_keys(slot, e)
        # the target first (it bumps its config epoch, so its claim wins), then the source;
        # the other primaries learn it by gossip within a round (telling each directly, as
        # redis-cli does, would add a replicated SETSLOT per primary per slot)
        await self.raw(e.tgt, "CLUSTER", "SETSLOT", slot, "NODE", e.tgt_id)
        await self.raw(e.src, "CLUSTER", "SETSLOT", slot, "NODE", e.tgt_id)
        return keys

    def _migrating(self, node: NodeSpec) -> asyncio.Semaphore:
        """At most MIGRATES_IN_FLIGHT per source: MIGRATE blocks the whole engine until the
        target has the keys, so many in flight only queue the sentinels' probes behind them
        (64 made two healthy primaries look down for a second on a loaded machine); a few
        keep the engine busy while this process reads a reply. The SETSLOT steps, which
        block only their own connection, stay concurrent."""
        sem = self._migrate_slots.get(node.name)
        if sem is None:
            sem = self._migrate_slots[node.name] = asyncio.Semaphore(MIGRATES_IN_FLIGHT)
        return sem

    async def _send_keys(self, slot: int, e: Ends) -> int:
        """MIGRATE every key of the slot. Once the slot is MIGRATING no key can appear in it
        on the source (a write to a missing key is sent to the target with ASK), so one
        listing shorter than KEY_BATCH is the last; SETSLOT NODE refuses, and the slot is
        tried again, should any key remain."""
        keys = 0
        replace_keys = False
        while True:
            found = await self.raw(e.src, "CLUSTER", "GETKEYSINSLOT", slot, KEY_BATCH)
            if not found:
                return keys
            try:
                async with self._migrating(e.src):
                    await self.raw(
                        e.src, "MIGRATE", e.tgt.host, e.tgt.port, "", 0, MIGRATE_TIMEOUT_MS,
                        *(["REPLACE"] if replace_keys else []),
                        "AUTH2", self.auth.user, self.auth.password, "KEYS", *found,
                        timeout=MIGRATE_TIMEOUT_MS / 1000 + 5,
                    )  # fmt: skip
            except EngineReplyError as exc:
                if "BUSYKEY" not in str(exc) or replace_keys:
                    raise
                # A migration resumed after a failover: the source's copy was served (and
                # possibly written) since, so it wins.
                replace_keys = True
                continue
            keys += len(found)
            if len(found) < KEY_BATCH:
                return keys

    async def finish_open(self, union: Sequence[NodeSpec]) -> None:
        """A slot left importing/migrating by an interrupted apply (or a failover during a
        migration) is moved on to the node that was importing it."""
        view = await self.observe(union)
        by_id = {ln.id: name for name, ln in view.by_name.items()}
        by = {n.name: n for n in union}
        moves: dict[tuple[int, int], list[int]] = {}
        for name, slot, kind, peer in view.open:
            importer = name if kind == "importing" else by_id.get(peer)
            if importer is None:
                continue
            owner = next(
                (n for n, ln in view.by_name.items() if ln.is_primary and
                 any(a <= slot <= b for a, b in ln.slots)),
                None,
            )  # fmt: skip
            if owner is None or owner == importer:
                await self.try_call(by[name], "CLUSTER", "SETSLOT", slot, "STABLE")
                continue
            moves.setdefault((by[owner].shard, by[importer].shard), []).append(slot)
        for (source, target), slots in moves.items():
            self.step(f"finishing {len(slots)} slot(s) left migrating: shard {source} -> {target}")
            for slot in sorted(set(slots)):
                await self.move_slot(slot, source, target, union)

    async def count_keys(
        self, moves: Sequence[Move], view: View, union: Sequence[NodeSpec]
    ) -> tuple[int, int]:
        """(keys, bytes) the moves carry, estimated from COUNTKEYSINSLOT and memory per key."""
        keys = 0
        size = 0
        for source in {m.source for m in moves}:
            name = view.primary(source, union)
            if name is None:
                continue
            node = next(n for n in union if n.name == name)
            pipe = self.client(node).pipeline(transaction=False)
            slots = [s for m in moves if m.source == source for s in range(m.start, m.end + 1)]
            for s in slots:
                pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", s)
            counts = await pipe.execute(raise_on_error=False)
            n_keys = sum(c for c in counts if isinstance(c, int))
            dataset = (await self.info(node, "memory")).get("used_memory_dataset")
            dbsize = await self.try_call(node, "DBSIZE")
            if isinstance(dataset, int) and isinstance(dbsize, int) and dbsize:
                size += int(dataset * n_keys / dbsize)
            keys += n_keys
        return keys, size

    async def converge(self, nodes: Sequence[NodeSpec], timeout: float = 30.0) -> None:
        """Until every node sees the same owner for every slot: the other primaries learn a
        moved slot by gossip, and a layout (or a removal) must not follow a stale view."""

        async def agreed() -> bool:
            replies = await asyncio.gather(*(self.try_call(n, "CLUSTER", "NODES") for n in nodes))
            seen = set()
            for r in replies:
                if not isinstance(r, bytes):
                    continue  # a node that is down (being failed over) has no say
                lines = parse_cluster_nodes(r.decode())
                seen.add(frozenset((ln.id, ln.slots) for ln in lines if ln.is_primary and ln.slots))
            return len(seen) == 1

        await _until("every node to agree on the slots' owners", timeout, agreed)
