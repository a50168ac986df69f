"""Placement: which node lives in which zone on which port, decided once at `up`.

The plan is pure given the topology and the allocated ports; `cachefleet up` writes it to
``<state-dir>/<cluster>/plan.json`` and every process of the cluster reads it from there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachefleet.slots import Range, split_slots
from cachefleet.tls import remember_tls, tls_addresses, tls_files
from cachefleet.topology import CLUSTER_BUS_OFFSET, Topology, parse_topology


@dataclass(frozen=True)
class NodeSpec:
    # stable logical name: <cluster>-<shard:04>-<member+1:03> (primary is -001); a memcached
    # node is <cluster>-<node:04> (its "shard" is its 1-based node number, member 0)
    name: str
    shard: int  # 1-based
    member: int  # 0 = initial primary
    zone: str
    host: str
    port: int
    bus_port: int  # 0 for memcached nodes (no cluster bus)
    runs: str = ""  # what the node was started as: "<node_type> <engine binary>" (stamp())

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def node_id(self) -> str:
        """A memcached node's id, as the managed service names them: 0001, 0002, ..."""
        return f"{self.shard:04d}"


@dataclass(frozen=True)
class SentinelSpec:
    id: str  # s1, s2, ...
    zone: str  # sentinel i (1-based) sits in zone (i - 1) mod Z
    host: str  # the zone's address: it probes from there


@dataclass(frozen=True)
class Plan:
    topology: Topology
    raw_topology: dict[str, Any]
    nodes: tuple[NodeSpec, ...]
    slot_ranges: tuple[Range, ...]  # index i -> shard i+1
    engine_binary: str
    bus_host: str
    bus_port: int
    router_host: str
    router_port: int  # cluster mode disabled: the primary endpoint
    reader_port: int | None = None  # cluster mode disabled: the reader endpoint

    @property
    def name(self) -> str:
        return self.topology.name

    @property
    def sentinels(self) -> tuple[SentinelSpec, ...]:
        zones = self.topology.zones
        return tuple(
            SentinelSpec(id=f"s{i + 1}", zone=z, host=self.topology.zone_address(z))
            for i in range(self.topology.sentinels.count)
            for z in (zones[i % len(zones)],)
        )

    def sentinel(self, sid: str) -> SentinelSpec:
        for s in self.sentinels:
            if s.id == sid:
                return s
        raise KeyError(sid)

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def zone_nodes(self, zone: str) -> list[NodeSpec]:
        return [n for n in self.nodes if n.zone == zone]

    def shard_nodes(self, shard: int) -> list[NodeSpec]:
        return [n for n in self.nodes if n.shard == shard]

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "topology": self.raw_topology,
                "source": self.topology.source,
                "nodes": [asdict(n) for n in self.nodes],
                "slot_ranges": [list(r) for r in self.slot_ranges],
                "engine_binary": self.engine_binary,
                "bus": {"host": self.bus_host, "port": self.bus_port},
                "router": {"host": self.router_host, "port": self.router_port},
                **({"reader_port": self.reader_port} if self.reader_port is not None else {}),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        topology = parse_topology(data["topology"], data.get("source", "<plan>"))
        runs = stamp(topology, data["engine_binary"])  # plans written before stamps existed
        return cls(
            topology=topology,
            raw_topology=data["topology"],
            nodes=tuple(NodeSpec(**{"runs": runs, **n}) for n in data["nodes"]),
            slot_ranges=tuple((a, b) for a, b in data["slot_ranges"]),
            engine_binary=data["engine_binary"],
            bus_host=data["bus"]["host"],
            bus_port=data["bus"]["port"],
            router_host=data["router"]["host"],
            router_port=data["router"]["port"],
            reader_port=data.get("reader_port"),
        )

    @classmethod
    def load(cls, path: Path) -> Plan:
        """A cluster's plan.json; a TLS cluster's addresses are remembered as speaking TLS
        (this process reaches them over TLS from now on, nodes added by `apply` too)."""
        plan = cls.from_json(path.read_text())
        if plan.topology.security.tls:
            remember_tls(tls_files(path.parent).ca, tls_addresses(plan))
        return plan


def stamp(topology: Topology, engine_binary: str) -> str:
    """What a node runs as: a node whose stamp differs from the wanted one is replaced by
    `apply` (a new node type or engine binary), one shard at a time."""
    return f"{topology.node_type} {engine_binary}"


def node_name(cluster: str, shard: int, member: int) -> str:
    return f"{cluster}-{shard:04d}-{member + 1:03d}"


def place(topology: Topology) -> list[tuple[int, int, str]]:
    """(shard, member, zone) for every node.

    Primaries go round-robin over the zones; replica r (1-based) of shard s cycles through the
    Z - 1 other zones, starting with the next one: zone (s + 1 + (r - 1) mod (Z - 1)) mod Z.
    So with more than one zone no replica ever shares its primary's zone, and a shard's
    replicas use distinct zones while there are enough zones.
    """
    zones = topology.zones
    z = len(zones)
    out = []
    for s in range(topology.shards):
        out.append((s + 1, 0, zones[s % z]))
        for r in range(1, 1 + topology.replicas_per_shard):
            zone = zones[0] if z == 1 else zones[(s + 1 + (r - 1) % (z - 1)) % z]
            out.append((s + 1, r, zone))
    return out


def build_plan(
    topology: Topology,
    raw_topology: dict[str, Any],
    *,
    engine_binary: str,
    node_ports: list[tuple[int, int]] | None,
    bus: tuple[str, int],
    router_port: int,
    reader_port: int | None = None,
) -> Plan:
    """Combine placement with ports: fixed (ports.base) when node_ports is None.

    A memcached cluster's node i (0-based) is in zone i mod Z on port base + i (the same
    round-robin as shard primaries), without a cluster-bus port."""
    placed = place(topology)
    nodes = []
    for i, (shard, member, zone) in enumerate(placed):
        if node_ports is None:
            assert topology.ports_base is not None
            port = topology.ports_base + i
            bus_port = 0 if topology.is_memcached else port + CLUSTER_BUS_OFFSET
        else:
            port, bus_port = node_ports[i]
        name = (
            f"{topology.name}-{shard:04d}"
            if topology.is_memcached
            else node_name(topology.name, shard, member)
        )
        nodes.append(
            NodeSpec(
                name=name,
                shard=shard,
                member=member,
                zone=zone,
                host=topology.zone_address(zone),
                port=port,
                bus_port=bus_port,
                runs=stamp(topology, engine_binary),
            )
        )
    return Plan(
        topology=topology,
        raw_topology=raw_topology,
        nodes=tuple(nodes),
        # cluster mode disabled: one shard that owns no slots (the engines run without them)
        slot_ranges=() if topology.standalone else tuple(split_slots(topology.shards)),
        engine_binary=engine_binary,
        bus_host=bus[0],
        bus_port=bus[1],
        router_host="127.0.0.1",
        router_port=router_port,
        reader_port=reader_port,
    )


class PlanFile:
    """A daemon's view of plan.json: read again only when the file changed (`apply` rewrites
    it before it publishes a layout naming new nodes, so a layout that names an unknown node
    is first checked against the newest plan)."""

    def __init__(self, path: Path, plan: Plan) -> None:
        self.path = path
        self.plan = plan
        self._mtime = _mtime_ns(path)

    def refresh(self) -> bool:
        """Reload when the file changed since the last read; True when the plan changed."""
        mtime = _mtime_ns(self.path)
        if mtime is None or mtime == self._mtime:
            return False
        try:
            plan = Plan.load(self.path)
        except (OSError, ValueError, KeyError, TypeError):
            return False  # mid-write or damaged: keep the plan we have, try again next time
        self._mtime = mtime
        changed = plan != self.plan
        self.plan = plan
        return changed


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
