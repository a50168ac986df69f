"""The recorded workload of a chaos trial: writers of unique values and readers, every
operation recorded with its start, end and outcome (see checker.Op).

Each shard has writers of its own, over keys of that shard only: a writer blocked on a shard
whose primary died must not stop the writes of the healthy shards, so that the history shows
whether they kept serving (the design promises they do: `cluster-require-full-coverage no`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, ResponseError

from cachefleet.chaos.checker import Op
from cachefleet.chaos.scenario import Workload
from cachefleet.credentials import Credentials
from cachefleet.nodes import NodeLink
from cachefleet.plan import Plan
from cachefleet.slots import SLOTS, key_slot

FINAL_READ_S = 60.0
# What a client raises when an operation may or may not have reached the node (redis-py's
# cluster client raises RedisClusterException, outside RedisError, when it cannot connect).
CLIENT_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)


@dataclass
class Trial:
    """The mutable record of one trial while it runs."""

    number: int
    t0: float
    history: list[Op] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    paused: set[int] = field(default_factory=set)
    targeted: set[int] = field(default_factory=set)  # shards whose primary a fault took

    def now(self) -> float:
        return time.monotonic() - self.t0


def chaos_keys(count: int) -> list[str]:
    return [f"chaos:{{{i}}}" for i in range(count)]


def assign_keys(
    keys: Sequence[str], shard_of: Mapping[str, int], writers_per_shard: int
) -> list[tuple[int, tuple[str, ...]]]:
    """``(shard, keys)`` for each writer: every shard's keys dealt round robin among that
    shard's own `writers_per_shard` writers, so that each key has exactly one writer (values of
    a key then only grow, which the stale-read check relies on) and no writer spans shards.
    Writers that would get no key are left out."""
    by_shard: dict[int, list[str]] = {}
    for key in keys:
        by_shard.setdefault(shard_of[key], []).append(key)
    out = []
    for shard in sorted(by_shard):
        mine = by_shard[shard]
        for i in range(min(writers_per_shard, len(mine))):
            out.append((shard, tuple(mine[i::writers_per_shard])))
    return out


def shard_of_keys(
    keys: Sequence[str], ranges: Mapping[int, Sequence[tuple[int, int]]]
) -> dict[str, int]:
    """key -> shard id, from each shard's slot ranges."""
    table: dict[int, int] = {}
    for sid, rs in ranges.items():
        for a, b in rs:
            for slot in range(a, b + 1):
                table[slot] = sid
    return {k: table[key_slot(k)] for k in keys}


class SlotMap:
    """slot -> primary address, read from the configuration endpoint (`CLUSTER SLOTS` on the
    router, which follows the layout the sentinels publish)."""

    def __init__(
        self, host: str, port: int, timeout: float, auth: Credentials | None = None
    ) -> None:
        self.endpoint = NodeLink(host=host, port=port, auth=auth)
        self.timeout = timeout
        self.table: list[tuple[str, int] | None] = [None] * SLOTS

    def lookup(self, key: str) -> tuple[str, int] | None:
        return self.table[key_slot(key)]

    async def refresh(self) -> bool:
        reply = await self.endpoint.call("CLUSTER", "SLOTS", timeout=self.timeout)
        if not isinstance(reply, list):
            return False
        table: list[tuple[str, int] | None] = [None] * SLOTS
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            for slot in range(start, end + 1):
                table[slot] = (host, int(primary[1]))
        self.table = table
        return True

    async def close(self) -> None:
        await self.endpoint.close()


async def _close(client: Any) -> None:
    """Close a client without letting a node that is paused or gone stall or fail the trial:
    its operations are recorded already."""
    with contextlib.suppress(*CLIENT_ERRORS):
        await asyncio.wait_for(client.aclose(), 1.0)


class WorkloadRun:
    """Writers and readers of one trial, as asyncio tasks that stop when `stop` is set."""

    def __init__(
        self,
        spec: Workload,
        plan: Plan,
        keys: Sequence[str],
        seed: int,
        auth: Credentials | None = None,
        ca: Path | None = None,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.auth = auth  # the client's login where the cluster requires AUTH
        self.ca = ca  # the cluster's CA where it speaks TLS
        self.keys = list(keys)
        self.seed = seed

    def start(
        self, trial: Trial, shard_of: Mapping[str, int], stop: asyncio.Event
    ) -> list[asyncio.Task[None]]:
        counter = itertools.count(trial.number * 10_000_000 + 1)
        writers = assign_keys(self.keys, shard_of, self.spec.writers)
        tasks = [
            asyncio.create_task(self._writer(i, keys, trial, stop, counter), name=f"writer-{i}")
            for i, (_shard, keys) in enumerate(writers)
        ]
        tasks += [
            asyncio.create_task(self._reader(i, trial, stop), name=f"reader-{i}")
            for i in range(self.spec.readers)
        ]
        return tasks

    def _client(self) -> Any:
        timeout = self.spec.op_timeout_ms / 1000
        host, port = self.plan.router_host, self.plan.router_port
        if self.spec.via == "router":
            return aredis.Redis(
                host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                username=self.user, password=self.password, **self.tls,
            )  # fmt: skip
        return RedisCluster(
            host=host, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
            username=self.user, password=self.password, **self.tls,
        )  # fmt: skip

    @property
    def tls(self) -> dict[str, Any]:
        return {"ssl": True, "ssl_ca_certs": str(self.ca)} if self.ca is not None else {}

    @property
    def user(self) -> str | None:
        return self.auth.user if self.auth is not None else None

    @property
    def password(self) -> str | None:
        return self.auth.password if self.auth is not None else None

    async def _writer(
        self,
        index: int,
        keys: Sequence[str],
        trial: Trial,
        stop: asyncio.Event,
        counter: Iterator[int],
    ) -> None:
        w = self.spec
        # WAIT writes go to each key's primary on connections of their own (_write_wait)
        client = None if w.wait else self._client()
        node_clients: dict[str, aredis.Redis] = {}
        slots = SlotMap(
            self.plan.router_host, self.plan.router_port, w.op_timeout_ms / 1000, self.auth
        )
        try:
            if isinstance(client, RedisCluster):
                await self._initialize(client, stop)
            if w.wait:
                await slots.refresh()
            for key in itertools.cycle(keys):
                if stop.is_set():
                    return
                value = next(counter)
                start = trial.now()
                node: str | None = None
                try:
                    if client is None:
                        outcome, node = await self._write_wait(slots, node_clients, key, value)
                    else:
                        await asyncio.wait_for(client.set(key, value), 2 * w.op_timeout_ms / 1000)
                        outcome = "ok"
                        if w.via == "direct":
                            node = client.get_node_from_key(key).name
                except ResponseError:
                    outcome = "error"
                except CLIENT_ERRORS:
                    outcome = "unknown"
                trial.history.append(
                    Op("w", key, value, start, trial.now(), outcome, node, worker=index)
                )
                if outcome != "ok":
                    await asyncio.sleep(0.01)
        finally:
            if client is not None:
                await _close(client)
            await slots.close()
            for c in node_clients.values():
                await _close(c)

    async def _initialize(self, client: RedisCluster, stop: asyncio.Event) -> None:
        """Bootstrap a cluster client from the configuration endpoint, retried until the trial
        stops: a busy endpoint at the start of a trial is not a failure of the run."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(client.initialize(), 5.0)
                return
            except CLIENT_ERRORS:
                await asyncio.sleep(0.1)

    async def _write_wait(
        self, slots: SlotMap, node_clients: dict[str, aredis.Redis], key: str, value: int
    ) -> tuple[str, str | None]:
        """SET then WAIT on the same connection of the key's primary: acknowledged only when
        the write reached `wait` replicas. The slot map comes from the configuration endpoint
        and is refreshed after any error or timeout."""
        w = self.spec
        addr = slots.lookup(key)
        if addr is None:
            await slots.refresh()
            addr = slots.lookup(key)
            if addr is None:
                raise ClusterDownError("no slot map from the configuration endpoint")
        name = f"{addr[0]}:{addr[1]}"
        client = node_clients.get(name)
        if client is None:
            client = aredis.Redis(
                host=addr[0], port=addr[1], socket_timeout=w.op_timeout_ms / 1000,
                socket_connect_timeout=w.op_timeout_ms / 1000, single_connection_client=True,
                username=self.user, password=self.password, **self.tls,
            )  # fmt: skip
            node_clients[name] = client
        try:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, value)
            pipe.execute_command("WAIT", w.wait, w.wait_timeout_ms)
            # an explicit deadline: the client's socket timeout does not bound a pipeline to a
            # paused (SIGSTOPped) node
            deadline = (w.op_timeout_ms + w.wait_timeout_ms) / 1000
            set_reply, acks = await asyncio.wait_for(pipe.execute(raise_on_error=False), deadline)
        except CLIENT_ERRORS:
            node_clients.pop(name, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 0.5)
            await slots.refresh()
            raise
        if isinstance(set_reply, Exception):
            await slots.refresh()
            raise set_reply if isinstance(set_reply, ResponseError) else ResponseError(set_reply)
        if isinstance(acks, int) and acks >= w.wait:
            return "ok", name
        return "unknown", name  # applied on the primary, not confirmed replicated

    async def _reader(self, index: int, trial: Trial, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed * 1000 + index)
        client = self._client()
        timeout = 2 * self.spec.op_timeout_ms / 1000
        try:
            while not stop.is_set():
                key = rng.choice(self.keys)
                start = trial.now()
                value: int | None = None
                try:
                    raw = await asyncio.wait_for(client.get(key), timeout)
                    value = int(raw) if raw is not None else None
                    outcome = "ok"
                except ResponseError:
                    outcome = "error"
                except CLIENT_ERRORS:
                    outcome = "unknown"
                trial.history.append(Op("r", key, value, start, trial.now(), outcome, worker=index))
                if outcome != "ok":
                    await asyncio.sleep(0.01)
        finally:
            await _close(client)

    async def final_read(self) -> dict[str, int | None]:
        """Every key's value once the cluster is whole again (retried for FINAL_READ_S)."""
        rc = RedisCluster(
            host=self.plan.router_host, port=self.plan.router_port, socket_timeout=2,
            username=self.user, password=self.password, **self.tls,
        )  # fmt: skip
        out: dict[str, int | None] = {}
        deadline = time.monotonic() + FINAL_READ_S
        try:
            for key in self.keys:
                while True:
                    try:
                        raw = await rc.get(key)
                        out[key] = int(raw) if raw is not None else None
                        break
                    except CLIENT_ERRORS:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
        finally:
            await rc.aclose()
        return out
