"""What a fault hits: a scenario's target spec (``primary:random``, ``zone:az-b`` …) resolved
against the plan and the current layout into a typed Target, and the placement of primaries
that a run restores between trials. Pure: no I/O, the random choice comes from the caller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from cachefleet.errors import CachefleetError
from cachefleet.layout import Layout
from cachefleet.plan import Plan


class TargetKind(StrEnum):
    NODE = "node"  # one engine node (a primary, a replica or a named node)
    SENTINEL = "sentinel"
    ROUTER = "router"
    BUS = "bus"
    ZONE = "zone"  # a zone's agent, nodes and sentinels


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    processes: tuple[str, ...]  # pid-file names, in the order to signal them
    description: str  # for people: live lines, reports
    zone: str | None = None  # the zone it lives in (for ZONE: the zone itself)
    shard: int | None = None  # the shard whose node it is, when one
    node: str | None = None  # the node's name, for NODE


def zones_with_primaries(layout: Layout) -> list[str]:
    """Zones that hold at least one shard's primary, sorted."""
    return sorted({s.primary.zone for s in layout.shards if s.primary is not None})


def zone_processes(plan: Plan, zone: str) -> tuple[str, ...]:
    """A zone's processes: its agent first, so that nothing restarts the zone's nodes while
    they are being stopped, then its nodes and sentinels."""
    names = [f"agent.{zone}"]
    names += [f"node.{n.name}" for n in plan.zone_nodes(zone)]
    names += [f"sentinel.{s.id}" for s in plan.sentinels if s.zone == zone]
    return tuple(names)


def resolve(spec: str, plan: Plan, layout: Layout, rng: random.Random) -> Target:
    """The Target of a scenario target spec (validated by the scenario parser).

    ``zone:random`` picks among the zones that hold a primary at the time of the fault: a zone
    without one would measure nothing (no shard loses its primary)."""
    kind, _, arg = spec.partition(":")
    shard_ids = [s.id for s in layout.shards]
    if kind in ("primary", "replica", "primary-zone"):
        shard_id = rng.choice(shard_ids) if arg == "random" else int(arg)
        shard = layout.shard(shard_id)
        if kind == "replica":
            if not shard.replicas:
                raise CachefleetError(f"shard {shard_id} has no replica to target")
            r = rng.choice(list(shard.replicas))
            return Target(
                TargetKind.NODE, (f"node.{r.name}",),
                f"replica of shard {shard_id} ({r.name}, {r.zone})", r.zone, shard_id, r.name,
            )  # fmt: skip
        p = shard.primary
        if p is None:
            raise CachefleetError(f"shard {shard_id} has no primary to target")
        if kind == "primary":
            return Target(
                TargetKind.NODE, (f"node.{p.name}",),
                f"primary of shard {shard_id} ({p.name}, {p.zone})", p.zone, shard_id, p.name,
            )  # fmt: skip
        return Target(
            TargetKind.ZONE, zone_processes(plan, p.zone),
            f"zone {p.zone} (primary of shard {shard_id})", p.zone, shard_id,
        )  # fmt: skip
    if kind == "node":
        spec_node = plan.node(arg)
        return Target(
            TargetKind.NODE, (f"node.{arg}",), f"node {arg} ({spec_node.zone})",
            spec_node.zone, spec_node.shard, arg,
        )  # fmt: skip
    if kind == "sentinel":
        sid = rng.choice([s.id for s in plan.sentinels]) if arg == "random" else arg
        zone = plan.sentinel(sid).zone
        return Target(TargetKind.SENTINEL, (f"sentinel.{sid}",), f"sentinel {sid} ({zone})", zone)
    if kind == "router":
        return Target(TargetKind.ROUTER, ("router",), "the router")
    if kind == "bus":
        return Target(TargetKind.BUS, ("broker",), "the bus broker")
    if kind == "zone":
        if arg == "random":
            candidates = zones_with_primaries(layout) or list(plan.topology.zones)
            zone = rng.choice(candidates)
        else:
            zone = arg
        return Target(TargetKind.ZONE, zone_processes(plan, zone), f"zone {zone}", zone)
    raise CachefleetError(f"unknown target {spec!r}")


Placement = dict[int, str]  # shard id -> name of its primary


def placement(layout: Layout) -> Placement:
    return {s.id: s.primary.name for s in layout.shards if s.primary is not None}


@dataclass(frozen=True)
class Move:
    """A graceful failover that puts a shard's primary back where the run started it."""

    shard: int
    to: str


def moves_back(start: Placement, layout: Layout) -> list[Move]:
    """Graceful failovers that restore `start`: one per shard whose primary moved and whose
    original primary is now one of its replicas (a node that is not back yet is left alone)."""
    moves = []
    for shard in layout.shards:
        want = start.get(shard.id)
        if want is None or shard.primary is None or shard.primary.name == want:
            continue
        if any(r.name == want for r in shard.replicas):
            moves.append(Move(shard.id, want))
    return moves


def shards_hit(target: Target, layout: Layout) -> set[int]:
    """Shards a fault on `target` takes a node of: a node's own shard; for a zone, the shards
    whose primary is in it (their failover is what the fault measures)."""
    if target.kind is TargetKind.NODE and target.shard is not None:
        return {target.shard}
    if target.kind is TargetKind.ZONE:
        return {
            s.id for s in layout.shards if s.primary is not None and s.primary.zone == target.zone
        }
    return set()
