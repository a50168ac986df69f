"""The layout: which node serves which slots, published retained on the bus with an epoch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cachefleet.errors import InvalidInput
from cachefleet.plan import Plan
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
    def from_dict(cls, d: Any) -> LayoutNode:
        d = _mapping(d, "node")
        return cls(
            name=_text(d, "name"),
            id=_text(d, "id", allow_empty=True),
            shard=_integer(d, "shard", 1, MAX_SHARDS),
            zone=_text(d, "zone"),
            host=_text(d, "host"),
            port=_integer(d, "port", 1, 65535),
            bus_port=_integer(d, "bus_port", 0, 65535),
            role=_choice(d, "role", ROLES),
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
    def from_dict(cls, d: Any, plan: Plan | None = None) -> Layout:
        """A layout from its JSON form, validated: every slot range inside 0..16383 and no
        slot owned twice, integer epochs and ports, known roles, at most one primary per
        shard; with `plan`, only the plan's cluster, shards and nodes at their planned
        addresses. Raises LayoutError naming the field."""
        d = _mapping(d, "layout")
        raw_shards = d.get("shards")
        if not isinstance(raw_shards, list):
            raise LayoutError("shards", "must be a list")
        shards = []
        owned = bytearray(SLOTS)
        for i, raw in enumerate(raw_shards):
            sd = _mapping(raw, f"shards[{i}]")
            slots = _slot_ranges(sd.get("slots"), f"shards[{i}].slots")
            for start, end in slots:
                if any(owned[start : end + 1]):
                    raise LayoutError(f"shards[{i}].slots", f"slot range {start}-{end} owned twice")
                owned[start : end + 1] = b"\x01" * (end - start + 1)
            raw_nodes = sd.get("nodes")
            if not isinstance(raw_nodes, list):
                raise LayoutError(f"shards[{i}].nodes", "must be a list")
            shard = LayoutShard(
                id=_integer(sd, "id", 1, MAX_SHARDS),
                slots=slots,
                nodes=tuple(LayoutNode.from_dict(n) for n in raw_nodes),
            )
            if sum(1 for n in shard.nodes if n.role == "primary") > 1:
                raise LayoutError(f"shards[{i}].nodes", "more than one primary")
            shards.append(shard)
        if len({s.id for s in shards}) != len(shards):
            raise LayoutError("shards", "shard ids repeat")
        layout = cls(
            cluster=_text(d, "cluster"),
            epoch=_integer(d, "epoch", 0, MAX_EPOCH),
            shards=tuple(shards),
        )
        if plan is not None:
            layout.check_against(plan)
        return layout

    def check_against(self, plan: Plan) -> None:
        """Only the plan's cluster, shards and nodes, each at its planned address and shard:
        a forged layout cannot send traffic anywhere else."""
        if self.cluster != plan.name:
            raise LayoutError("cluster", f"{self.cluster!r} is not {plan.name!r}")
        planned = {n.name: n for n in plan.nodes}
        planned_shards = {n.shard for n in plan.nodes}  # while `apply` runs: old and new shards
        for shard in self.shards:
            if shard.id not in planned_shards:
                raise LayoutError("shards", f"shard {shard.id} is not in the plan")
            for node in shard.nodes:
                spec = planned.get(node.name)
                if spec is None:
                    raise LayoutError("nodes", f"node {node.name!r} is not in the plan")
                if (node.host, node.port, node.shard) != (spec.host, spec.port, spec.shard) or (
                    node.shard != shard.id
                ):
                    raise LayoutError(
                        "nodes", f"node {node.name!r} is not at its planned address and shard"
                    )


MAX_SHARDS = 500
MAX_EPOCH = (1 << 53) - 1  # integers every JSON reader keeps exact
ROLES = ("primary", "replica")


class LayoutError(InvalidInput, ValueError):
    """A layout (from the bus or layout.json) that cannot be used: names the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__("layout", field, reason)
        self.reason = reason


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise LayoutError(field, "must be an object")
    return value


def _integer(d: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise LayoutError(key, f"must be an integer in {lo}..{hi}, not {value!r:.40}")
    return value


def _text(d: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = d.get(key)
    if not isinstance(value, str) or len(value) > 256 or (not value and not allow_empty):
        raise LayoutError(key, "must be a non-empty string of at most 256 characters")
    return value


def _choice(d: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = d.get(key)
    if value not in choices:
        raise LayoutError(key, f"must be one of {', '.join(choices)}")
    return str(value)


def _slot_ranges(value: Any, field: str) -> tuple[Range, ...]:
    if not isinstance(value, list) or len(value) > SLOTS:
        raise LayoutError(field, "must be a list of [start, end] ranges")
    out = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or any(isinstance(x, bool) or not isinstance(x, int) for x in item)
            or not 0 <= item[0] <= item[1] < SLOTS
        ):
            raise LayoutError(field, f"{item!r:.40} is not a slot range inside 0..{SLOTS - 1}")
        out.append((item[0], item[1]))
    return tuple(out)
