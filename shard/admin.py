"""Admin talk to engine nodes over RESP (redis-py asyncio), with short deadlines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from cachefleet.plan import NodeSpec


def connect(host: str, port: int, *, timeout: float = 2.0) -> aredis.Redis:
    return aredis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        retry_on_timeout=False,
        protocol=2,
    )


@dataclass(frozen=True)
class NodeLine:
    """One line of CLUSTER NODES."""

    id: str
    host: str
    port: int
    bus_port: int
    flags: frozenset[str]
    master_id: str | None
    config_epoch: int
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_cluster_nodes(text: str) -> list[NodeLine]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split(",")[0]
        hostport, _, bus = addr.partition("@")
        host, _, port = hostport.rpartition(":")
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # migrating/importing marker
            a, _, b = item.partition("-")
            slots.append((int(a), int(b or a)))
        out.append(
            NodeLine(
                id=parts[0],
                host=host,
                port=int(port) if port else 0,
                bus_port=int(bus) if bus else 0,
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                config_epoch=int(parts[6]),
                connected=parts[7] == "connected",
                slots=tuple(slots),
            )
        )
    return out


async def try_call(client: aredis.Redis, *args: Any) -> Any | None:
    try:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    except (TimeoutError, RedisError, OSError):
        return None


async def info(client: aredis.Redis, section: str | None = None) -> Mapping[str, Any] | None:
    try:
        result: Mapping[str, Any] = await (client.info(section) if section else client.info())
        return result
    except (TimeoutError, RedisError, OSError):
        return None


async def myself(client: aredis.Redis) -> NodeLine | None:
    text = await try_call(client, "CLUSTER", "NODES")
    if not isinstance(text, str):
        return None
    for line in parse_cluster_nodes(text):
        if "myself" in line.flags:
            return line
    return None


def spec_by_address(nodes: list[NodeSpec]) -> dict[tuple[str, int], NodeSpec]:
    return {(n.host, n.port): n for n in nodes}
