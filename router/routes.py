"""Slot routes (pure): which nodes serve each slot, built from the bus layout or from a node's
``CLUSTER SHARDS``, and which node a request goes to under ``read_from``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachefleet.layout import Layout
from cachefleet.slots import SLOTS
from router.replies import pairs

Addr = tuple[str, int]


@dataclass(frozen=True)
class ShardRoute:
    primary: Addr | None
    replicas: tuple[Addr, ...] = ()
    zones: tuple[tuple[Addr, str], ...] = ()  # node -> zone, where known

    def zone_of(self, addr: Addr) -> str | None:
        return next((z for a, z in self.zones if a == addr), None)


Table = list[ShardRoute | None]


def from_layout(layout: Layout) -> Table:
    table: Table = [None] * SLOTS
    for shard in layout.shards:
        primary = shard.primary
        route = ShardRoute(
            primary=(primary.host, primary.port) if primary else None,
            replicas=tuple((n.host, n.port) for n in shard.replicas),
            zones=tuple(((n.host, n.port), n.zone) for n in shard.nodes),
        )
        for start, end in shard.slots:
            table[start : end + 1] = [route] * (end - start + 1)
    return table


def from_cluster_shards(reply: Sequence[Any], zone_of: Mapping[Addr, str]) -> Table:
    """The engine's ``CLUSTER SHARDS`` (RESP2, hiredis-parsed) as a slot table; only nodes
    reported online serve."""
    table: Table = [None] * SLOTS
    for raw in reply:
        shard = pairs(raw)
        flat = [int(x) for x in shard.get(b"slots", [])]
        primary: Addr | None = None
        replicas: list[Addr] = []
        for raw_node in shard.get(b"nodes", []):
            node = pairs(raw_node)
            ip = node.get(b"ip") or node.get(b"endpoint") or b"127.0.0.1"
            addr = (bytes(ip).decode(), int(node[b"port"]))
            if bytes(node.get(b"health", b"online")) != b"online":
                continue
            if bytes(node.get(b"role", b"")) == b"master":
                primary = addr
            else:
                replicas.append(addr)
        members = ([primary] if primary else []) + replicas
        route = ShardRoute(
            primary=primary,
            replicas=tuple(replicas),
            zones=tuple((a, zone_of[a]) for a in members if a in zone_of),
        )
        for i in range(0, len(flat) - 1, 2):
            start, end = flat[i], flat[i + 1]
            table[start : end + 1] = [route] * (end - start + 1)
    return table


def within(table: Table, members: frozenset[Addr]) -> bool:
    """Every node the table routes to is one of `members` (the layout's nodes)."""
    seen: set[int] = set()
    for route in table:
        if route is None or id(route) in seen:
            continue
        seen.add(id(route))
        if any(a not in members for a in (route.primary, *route.replicas) if a is not None):
            return False
    return True


def primaries(table: Table) -> list[tuple[int, Addr]]:
    """(first slot, primary) per shard, in slot order: the fan-out and SCAN order."""
    out: list[tuple[int, Addr]] = []
    seen: set[Addr] = set()
    for slot, route in enumerate(table):
        if route is not None and route.primary is not None and route.primary not in seen:
            seen.add(route.primary)
            out.append((slot, route.primary))
    return out


def all_nodes(table: Table) -> list[tuple[int, Addr]]:
    out: list[tuple[int, Addr]] = []
    seen: set[Addr] = set()
    for slot, route in enumerate(table):
        if route is None:
            continue
        for addr in (route.primary, *route.replicas):
            if addr is not None and addr not in seen:
                seen.add(addr)
                out.append((slot, addr))
    return out


def pick(
    route: ShardRoute, *, readonly: bool, read_from: str, zone: str | None, salt: int
) -> tuple[Addr | None, bool]:
    """(node, via a READONLY connection) for one request.

    ``primary``: always the primary. ``replica``: read-only commands go to a replica (spread
    by `salt`, the client id), else the primary. ``same-zone``: read-only commands go to a
    node in the router's zone (a replica first, then the primary), else the primary.
    """
    if not readonly or read_from == "primary" or not route.replicas:
        return route.primary, False
    if read_from == "replica":
        return route.replicas[salt % len(route.replicas)], True
    if zone is not None:
        local = [a for a in route.replicas if route.zone_of(a) == zone]
        if local:
            return local[salt % len(local)], True
    return route.primary, False
