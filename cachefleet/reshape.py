"""What `cachefleet apply` changes: the pure difference between a running cluster and the
topology it should have.

:func:`check_changeable` refuses what cannot change online (naming the field);
:func:`reshape` computes the nodes to add and remove per shard (zone rules of creation, a
replacement for every node whose node type or engine binary is not the wanted one);
:func:`rebalance` the slot moves that even out the shards with the fewest slots moved;
:func:`live_settings` the engine settings that change with CONFIG SET. No I/O here:
:mod:`cachefleet.ops.apply` observes the cluster, calls these and carries the result out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from cachefleet.errors import InvalidInput
from cachefleet.plan import NodeSpec, Plan, node_name, stamp
from cachefleet.slots import SLOTS, Range
from cachefleet.topology import CLUSTER_BUS_OFFSET, Topology


class ApplyRefused(InvalidInput):
    """A change `apply` cannot make to a running cluster; names the topology field."""

    def __init__(self, field: str, reason: str, source: str = "<topology>") -> None:
        super().__init__(source, field, reason)


# --- what may change ------------------------------------------------------------------------

#: Fields fixed for the life of a cluster, with the reason given when they differ.
FIXED: dict[str, str] = {
    "cluster_mode": "cannot change on a running cluster (create a new one and restore a snapshot)",
    "zones": "cannot change on a running cluster (nodes keep their zones)",
    "zone_addressing": "cannot change on a running cluster (nodes keep their addresses)",
    "ports_base": "cannot change on a running cluster (nodes keep their ports)",
    "bus": "cannot change on a running cluster",
    "endpoints": "cannot change on a running cluster",
    "security": "cannot change with apply (use `cachefleet auth` for the AUTH token)",
    "metrics": "cannot change on a running cluster",
}


def check_changeable(
    old: Topology,
    new: Topology,
    *,
    old_version: tuple[int, ...] | None = None,
    new_version: tuple[int, ...] | None = None,
) -> None:
    """Raise ApplyRefused for a change that cannot be made online. Versions are the engine
    binaries' (major, minor, patch) when the binary changes."""
    if (old.engine == "memcached") != (new.engine == "memcached"):
        raise ApplyRefused("engine", f"{old.engine} -> {new.engine} is another kind of cluster")
    if old.engine == "valkey" and new.engine == "redis":
        raise ApplyRefused("engine", "valkey -> redis is a downgrade (its data files may not load)")
    if old_version and new_version and new_version < old_version:
        have = ".".join(map(str, old_version))
        want = ".".join(map(str, new_version))
        raise ApplyRefused(
            "engine_binary", f"{want} is older than the running {have}: downgrades are refused"
        )
    for name, reason in FIXED.items():
        if getattr(old, name) != getattr(new, name):
            raise ApplyRefused(name, reason)
    if new.router.port is not None and new.router.port != old.router.port:
        raise ApplyRefused("router.port", "cannot change on a running cluster")


def live_settings(old: Topology, new: Topology) -> list[tuple[str, str, str]]:
    """(engine setting, old value, new value) for every setting CONFIG SET changes live."""

    def settings(t: Topology) -> dict[str, str]:
        out = {
            "maxmemory-policy": t.maxmemory_policy,
            "appendonly": "yes" if t.persistence.appendonly else "no",
            "appendfsync": t.persistence.appendfsync,
            "min-replicas-to-write": str(t.durability.min_replicas_to_write),
            "min-replicas-max-lag": str(t.durability.max_lag_s),
        }
        out.update(dict(t.parameters))
        return out

    before, after = settings(old), settings(new)
    return [(k, before.get(k, ""), v) for k, v in sorted(after.items()) if before.get(k) != v]


def restarts(old: Topology, new: Topology) -> list[str]:
    """The control processes whose settings changed: only those restart."""
    out = []
    if old.sentinels != new.sentinels:
        out.append("sentinels")
    if replace(old.router, port=None) != replace(new.router, port=None):
        out.append("routers")
    if old.backup != new.backup or old.alarms != new.alarms:  # the supervisor runs both
        out.append("supervisor")
    return out


# --- nodes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardChange:
    """The nodes one shard gains and loses."""

    shard: int
    add: tuple[NodeSpec, ...] = ()
    remove: tuple[NodeSpec, ...] = ()
    new: bool = False  # a shard that does not exist yet
    gone: bool = False  # a shard removed by scaling in (its slots move away first)
    replaced: bool = False  # its nodes are replaced (node type or engine binary)


@dataclass(frozen=True)
class Reshape:
    union: tuple[NodeSpec, ...]  # what runs while the change is carried out
    final: tuple[NodeSpec, ...]  # what runs after it
    shards: tuple[ShardChange, ...] = field(default=())

    @property
    def added(self) -> list[NodeSpec]:
        return [n for s in self.shards for n in s.add]

    @property
    def removed(self) -> list[NodeSpec]:
        return [n for s in self.shards for n in s.remove]


#: (host per new node) -> one (port, cluster bus port) per new node
PortAllocator = Callable[[list[str]], list[tuple[int, int]]]


def new_shard_zones(topo: Topology, shard: int) -> list[str]:
    """The zones of a new shard's members, by creation's rule (cachefleet.plan.place)."""
    zones = topo.zones
    z = len(zones)
    out = [zones[(shard - 1) % z]]
    for r in range(1, 1 + topo.replicas_per_shard):
        out.append(zones[0] if z == 1 else zones[(shard + (r - 1) % (z - 1)) % z])
    return out


def _spread_zones(topo: Topology, kept: Sequence[NodeSpec], primary_zone: str, n: int) -> list[str]:
    """Zones for `n` more members of a shard: the least used first, the primary's zone last
    (no replica shares its primary's zone while another zone exists), then zone order."""
    zones = topo.zones
    count = {z: sum(1 for k in kept if k.zone == z) for z in zones}
    start = (zones.index(primary_zone) + 1) % len(zones) if primary_zone in zones else 0
    order = list(zones[start:] + zones[:start])
    out = []
    for _ in range(n):
        zone = min(order, key=lambda z: (z == primary_zone and len(zones) > 1, count[z]))
        count[zone] += 1
        out.append(zone)
    return out


def _drop_order(members: Sequence[NodeSpec], primary: str | None) -> list[NodeSpec]:
    """Which members a shard gives up first when it has too many: never its primary; a
    replica in a zone it shares with another member (the primary's zone first), newest
    member first."""
    zone_count: dict[str, int] = {}
    for m in members:
        zone_count[m.zone] = zone_count.get(m.zone, 0) + 1
    primary_zone = next((m.zone for m in members if m.name == primary), None)
    candidates = [m for m in members if m.name != primary]
    return sorted(
        candidates,
        key=lambda m: (-(zone_count[m.zone] > 1), -(m.zone == primary_zone), -m.member),
    )


def reshape(
    plan: Plan,
    topo: Topology,
    engine_binary: str,
    primaries: Mapping[int, str],
    allocate: PortAllocator,
) -> Reshape:
    """The nodes of `plan` reshaped to `topo`: shards added or removed, replicas per shard
    brought to topo's count, every node not running as stamp(topo, engine_binary) replaced.
    Existing nodes keep their names, zones and ports; new members get the next member
    numbers of their shard and ports after the highest in use (fixed ports) or free ones.
    `primaries`: each shard's current primary (node name)."""
    want_runs = stamp(topo, engine_binary)
    old_shards = max((n.shard for n in plan.nodes), default=0)
    per_shard = 1 + topo.replicas_per_shard
    changes: list[ShardChange] = []
    pending: list[tuple[int, int, str]] = []  # (shard, member, zone) of nodes to create
    for shard in range(1, max(old_shards, topo.shards) + 1):
        members = plan.shard_nodes(shard)
        if shard > topo.shards:
            changes.append(ShardChange(shard, remove=tuple(members), gone=True))
            continue
        if not members:
            zones = new_shard_zones(topo, shard)
            pending += [(shard, m, z) for m, z in enumerate(zones)]
            changes.append(ShardChange(shard, new=True))
            continue
        primary = primaries.get(shard)
        good = [m for m in members if m.runs == want_runs]
        bad = [m for m in members if m.runs != want_runs]
        remove = list(bad)
        if len(good) > per_shard:
            remove += _drop_order(good, primary)[: len(good) - per_shard]
        kept = [m for m in good if m not in remove]
        missing = per_shard - len(kept)
        if missing > 0:
            # a replacement mirrors the zones of the nodes it replaces (primary first)
            bad_zones = [m.zone for m in sorted(bad, key=lambda m: m.name != primary)]
            zones = bad_zones[:missing]
            primary_zone = next((m.zone for m in members if m.name == primary), members[0].zone)
            zones += _spread_zones(topo, kept, primary_zone, missing - len(zones))
            first = max(m.member for m in members) + 1
            pending += [(shard, first + i, z) for i, z in enumerate(zones)]
        changes.append(ShardChange(shard, remove=tuple(remove), replaced=bool(bad)))

    hosts = [topo.zone_address(z) for _, _, z in pending]
    if topo.ports_base is not None:
        top = max((n.port for n in plan.nodes), default=topo.ports_base - 1)
        ports = [(top + 1 + i, top + 1 + i + CLUSTER_BUS_OFFSET) for i in range(len(pending))]
    else:
        ports = allocate(hosts) if pending else []
    created: dict[int, list[NodeSpec]] = {}
    for (shard, member, zone), host, (port, bus_port) in zip(pending, hosts, ports, strict=True):
        spec = NodeSpec(
            name=node_name(topo.name, shard, member),
            shard=shard,
            member=member,
            zone=zone,
            host=host,
            port=port,
            bus_port=bus_port,
            runs=want_runs,
        )
        created.setdefault(shard, []).append(spec)
    shards = tuple(replace(c, add=tuple(created.get(c.shard, ()))) for c in changes)
    removed = {n.name for c in shards for n in c.remove}
    added = [n for c in shards for n in c.add]
    union = tuple(plan.nodes) + tuple(added)
    final = tuple(n for n in union if n.name not in removed)
    return Reshape(union=union, final=final, shards=tuple(c for c in shards if c.add or c.remove))


# --- slots -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """Slots start..end (inclusive) move from one shard to another."""

    start: int
    end: int
    source: int
    target: int

    @property
    def count(self) -> int:
        return self.end - self.start + 1


def quotas(shards: Sequence[int]) -> dict[int, int]:
    """How many slots each shard should own: an even split, the lower ids taking the rest."""
    ids = sorted(shards)
    n = len(ids)
    return {s: SLOTS // n + (1 if i < SLOTS % n else 0) for i, s in enumerate(ids)}


def rebalance(owned: Mapping[int, Sequence[Range]], shards: Sequence[int]) -> list[Move]:
    """The fewest slot moves that leave every shard of `shards` with its quota: shards not
    in `shards` give all their slots, shards over quota give their highest slots, shards
    under quota take them in shard order. Slots nobody owns are not moved."""
    quota = quotas(shards)
    have = {s: sorted(x for a, b in ranges for x in range(a, b + 1)) for s, ranges in owned.items()}
    surplus: list[tuple[int, int]] = []  # (slot, from shard)
    for s, slots in have.items():
        keep = quota.get(s, 0)
        surplus += [(x, s) for x in slots[keep:]]
    surplus.sort()
    receivers = [(s, quota[s] - len(have.get(s, []))) for s in sorted(quota)]
    pairs: list[tuple[int, int, int]] = []  # (slot, source, target)
    it = iter(surplus)
    for target, need in receivers:
        for _ in range(max(0, need)):
            slot, source = next(it)
            pairs.append((slot, source, target))
    moves: list[Move] = []
    for slot, source, target in sorted(pairs):
        last = moves[-1] if moves else None
        if last and last.end + 1 == slot and (last.source, last.target) == (source, target):
            moves[-1] = replace(last, end=slot)
        else:
            moves.append(Move(slot, slot, source, target))
    return moves


def compress(slots: Sequence[int]) -> tuple[Range, ...]:
    """Sorted slot numbers as inclusive ranges."""
    out: list[Range] = []
    for x in sorted(slots):
        if out and out[-1][1] + 1 == x:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    return tuple(out)
