"""The layout: which node serves which slots, published retained on the bus with an epoch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cachefleet.slots import SLOTS, Range


@dataclass(frozen=True)
class LayoutNode:
    name: str  # logical name (stable across restarts)
    id: str  # engine node id (40 hex)
    shard: int
    zone: str
    host: str
    port: int
    bus_port: int
    role: str  # "primary" | "replica"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "shard": self.shard,
            "zone": self.zone,
            "host": self.host,
            "port": self.port,
            "bus_port": self.bus_port,
            "role": self.role,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayoutNode:
        return cls(
            name=d["name"],
            id=d["id"],
            shard=int(d["shard"]),
            zone=d["zone"],
            host=d["host"],
            port=int(d["port"]),
            bus_port=int(d["bus_port"]),
            role=d["role"],
        )


@dataclass(frozen=True)
class LayoutShard:
    id: int
    slots: tuple[Range, ...]
    nodes: tuple[LayoutNode, ...]

    @property
    def primary(self) -> LayoutNode | None:
        return next((n for n in self.nodes if n.role == "primary"), None)

    @property
    def replicas(self) -> tuple[LayoutNode, ...]:
        return tuple(n for n in self.nodes if n.role != "primary")


@dataclass(frozen=True)
class Layout:
    cluster: str
    epoch: int
    shards: tuple[LayoutShard, ...]

    def nodes(self) -> list[LayoutNode]:
        return [n for s in self.shards for n in s.nodes]

    def shard(self, shard_id: int) -> LayoutShard:
        for s in self.shards:
            if s.id == shard_id:
                return s
        raise KeyError(shard_id)

    def slot_table(self) -> list[LayoutShard | None]:
        """slot -> shard owning it (None when unassigned)."""
        table: list[LayoutShard | None] = [None] * SLOTS
        for s in self.shards:
            for start, end in s.slots:
                for slot in range(start, end + 1):
                    table[slot] = s
        return table

    def with_primary(self, shard_id: int, name: str, node_id: str, epoch: int) -> Layout:
        """The layout after a failover: node `name` (engine id `node_id`) leads the shard,
        every other member of it is a replica; other shards unchanged."""
        shards = []
        for shard in self.shards:
            if shard.id == shard_id:
                nodes = tuple(
                    replace(n, role="primary", id=node_id)
                    if n.name == name
                    else replace(n, role="replica")
                    for n in shard.nodes
                )
                shard = replace(shard, nodes=nodes)
            shards.append(shard)
        return Layout(cluster=self.cluster, epoch=epoch, shards=tuple(shards))

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "epoch": self.epoch,
            "shards": [
                {
                    "id": s.id,
                    "slots": [list(r) for r in s.slots],
                    "primary": s.primary.name if s.primary else None,
                    "nodes": [n.to_dict() for n in s.nodes],
                }
                for s in self.shards
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        return cls(
            cluster=d["cluster"],
            epoch=int(d["epoch"]),
            shards=tuple(
                LayoutShard(
                    id=int(s["id"]),
                    slots=tuple((int(a), int(b)) for a, b in s["slots"]),
                    nodes=tuple(LayoutNode.from_dict(n) for n in s["nodes"]),
                )
                for s in d["shards"]
            ),
        )
