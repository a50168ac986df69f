"""What apply reads of a running cluster, as pure values: who serves which slots, which
slots are half-migrated, which nodes have joined their shard (from CLUSTER NODES texts)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cachefleet.nodes import NodeLine, parse_cluster_nodes
from cachefleet.plan import NodeSpec

Out = Callable[[str], None]

#: Slots moving at once per source shard, keys per MIGRATE, attempts per slot.


@dataclass
class View:
    """One node's CLUSTER NODES, mapped onto plan nodes."""

    lines: list[NodeLine]
    by_name: dict[str, NodeLine]
    open: list[tuple[str, int, str, str]]  # (node name, slot, "importing"|"migrating", peer id)

    def primary(self, shard: int, plan_nodes: Sequence[NodeSpec]) -> str | None:
        """The member of `shard` serving it: the master holding slots, else a lone master."""
        members = [n for n in plan_nodes if n.shard == shard and n.name in self.by_name]
        masters = [n for n in members if self.by_name[n.name].is_primary]
        serving = [n for n in masters if self.by_name[n.name].slots]
        pick = serving or masters
        return pick[0].name if pick else None

    def owned(self, plan_nodes: Sequence[NodeSpec]) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {}
        for n in plan_nodes:
            line = self.by_name.get(n.name)
            if line is not None and line.is_primary:
                out.setdefault(n.shard, []).extend(line.slots)
        return out


_OPEN = re.compile(r"\[(\d+)-([<>])-([0-9a-f]+)\]")


def _view(texts: dict[str, str], plan_nodes: Sequence[NodeSpec]) -> View | None:
    """Combine the nodes' own views: slots and roles from the first answering node that
    sees every slot served, open migrations from each node's own line."""
    by_addr = {(n.host, n.port): n.name for n in plan_nodes}
    best: list[NodeLine] | None = None
    for text in texts.values():
        lines = parse_cluster_nodes(text)
        served = sum(b - a + 1 for ln in lines if ln.is_primary for a, b in ln.slots)
        if best is None or served > sum(
            b - a + 1 for ln in best if ln.is_primary for a, b in ln.slots
        ):
            best = lines
    if best is None:
        return None
    by_name = {by_addr[(ln.host, ln.port)]: ln for ln in best if (ln.host, ln.port) in by_addr}
    opened = []
    for name, text in texts.items():
        me = next((ln for ln in text.splitlines() if _is_myself(ln)), "")
        for slot, arrow, peer in _OPEN.findall(me):
            opened.append((name, int(slot), "importing" if arrow == "<" else "migrating", peer))
    return View(best, by_name, opened)


def _is_myself(line: str) -> bool:
    parts = line.split()
    return len(parts) > 2 and "myself" in parts[2].split(",")


@dataclass(frozen=True)
class Ends:
    """Both sides of a slot move, as observed at `at`."""

    src: NodeSpec
    tgt: NodeSpec
    src_id: str
    tgt_id: str
    at: float


def _split_primaries(view: View, nodes: Sequence[NodeSpec]) -> list[tuple[str, int]]:
    """(node, shard) of every serving primary that is not its shard's chosen primary."""
    out = []
    for shard in sorted({n.shard for n in nodes}):
        chosen = view.primary(shard, nodes)
        for n in nodes:
            line = view.by_name.get(n.name)
            if n.shard == shard and n.name != chosen and line is not None and line.serving:
                out.append((n.name, shard))
    return out


def _joined(view: View, node: NodeSpec, nodes: Sequence[NodeSpec]) -> bool:
    """A node is part of the cluster once the cluster knows it and, unless it is its shard's
    primary, it replicates that primary."""
    line = view.by_name.get(node.name)
    if line is None:
        return False
    primary = view.primary(node.shard, nodes)
    if primary is None or primary == node.name or line.serving:
        return True  # (a second serving primary is merged first, see merge_split)
    return line.primary_id == view.by_name[primary].id
