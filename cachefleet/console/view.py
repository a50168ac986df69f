"""What the console's page shows, as JSON: pure functions of the plan, the layout and the
collector's last samples (no sockets, no files).

Health of a node: ``ok`` when it answered the last collection, ``down`` when it did not,
``sdown`` when it answers but a sentinel holds it subjectively down, ``unknown`` when nothing
was collected (the cluster's supervisor is not running, or has not finished a pass).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cachefleet import metrics
from cachefleet.console.history import by_node, labels_by_node
from cachefleet.layout import Layout
from cachefleet.metrics import Sample
from cachefleet.plan import Plan
from cachefleet.slots import Range

NO_SLOTS = {
    "memcached": "Not shown: a memcached cluster has no slots (clients hash keys to nodes).",
    "standalone": "Not shown: cluster mode is disabled (one shard holds every key).",
}


def mode_of(plan: Plan) -> str:
    if plan.topology.is_memcached:
        return "memcached"
    return "standalone" if plan.topology.standalone else "cluster"


def slot_map(shards: Iterable[tuple[int, Iterable[Range]]]) -> list[list[int]]:
    """``[start, end, shard]`` runs in slot order, adjacent runs of one shard merged."""
    runs = sorted((start, end, sid) for sid, ranges in shards for start, end in ranges)
    out: list[list[int]] = []
    for start, end, sid in runs:
        if out and out[-1][2] == sid and out[-1][1] + 1 == start:
            out[-1][1] = end
        else:
            out.append([start, end, sid])
    return out


def _num(values: Mapping[str, float], *names: str) -> float | None:
    return next((values[n] for n in names if n in values), None)


def cluster_view(
    plan: Plan,
    layout: Layout | None,
    samples: Iterable[Sample],
    *,
    sdown: Mapping[str, frozenset[str]] | None = None,
    collected_at: float | None = None,
    supervised: bool = True,
) -> dict[str, Any]:
    """The page's model of one cluster: zones (columns) with their nodes, shards with their
    primary, the slot map (sharded clusters only) and what actions apply.

    A node's role is the one its engine reported in the last collection, else the layout's;
    a shard's primary is the node its engine calls primary (the layout's choice first when
    two do), else the layout's."""
    samples = list(samples)
    values = by_node(samples)
    labels = labels_by_node(samples)
    mode = mode_of(plan)
    layout_nodes = {n.name: n for n in layout.nodes()} if layout is not None else {}
    held_down = {n for names in (sdown or {}).values() for n in names}
    nodes: dict[str, dict[str, Any]] = {}
    for spec in sorted(plan.nodes, key=lambda n: (n.shard, n.name)):
        got = values.get(spec.name)
        up = _num(got, metrics.UP.name, metrics.MC_UP.name) if got else None
        if got is None or up is None:
            health = "unknown"
        elif up == 0:
            health = "down"
        else:
            health = "sdown" if spec.name in held_down else "ok"
        role = labels.get(spec.name, {}).get("role")
        if mode == "memcached":
            role = "node"
        elif role is None or health in ("down", "unknown"):
            known = layout_nodes.get(spec.name)
            role = known.role if known is not None else (role or "unknown")
        live = got if health in ("ok", "sdown") and got is not None else {}
        nodes[spec.name] = {
            "name": spec.name,
            "shard": spec.shard,
            "zone": spec.zone,
            "address": spec.address,
            "role": role,
            "health": health,
            "memory": _num(live, metrics.USED.name, metrics.MC_BYTES.name),
            "memory_ratio": _num(live, metrics.MEM_PCT.name),
            "ops_per_sec": _num(live, metrics.OPS.name),
            "connections": _num(live, metrics.CONNS.name, metrics.MC_CONNS.name),
            "lag_s": _num(live, metrics.LAG.name) if role == "replica" else None,
            "hit_rate": _num(live, metrics.HIT_RATE.name),
        }
    zones = [
        {"name": zone, "nodes": [n for n in nodes.values() if n["zone"] == zone]}
        for zone in plan.topology.zones
    ]
    view: dict[str, Any] = {
        "name": plan.name,
        "engine": plan.topology.engine,
        "mode": mode,
        "supervised": supervised,
        "collected_at": collected_at,
        "config_epoch": layout.epoch if layout is not None else None,
        "zones": zones,
        "shards": [],
        "slot_map": None,
        "slot_note": NO_SLOTS.get(mode, ""),
        "can": {
            "failover": mode != "memcached" and layout is not None,
            "snapshot": mode != "memcached" and layout is not None,
        },
    }
    if mode == "memcached":
        return view
    layout_shards = {s.id: s for s in layout.shards} if layout is not None else {}
    planned = dict(enumerate(plan.slot_ranges, start=1))
    for sid in sorted({n.shard for n in plan.nodes}):
        members = [n for n in nodes.values() if n["shard"] == sid]
        lshard = layout_shards.get(sid)
        layout_primary = lshard.primary.name if lshard and lshard.primary else None
        claim = sorted(
            (n["name"] for n in members if n["role"] == "primary" and n["health"] != "down"),
            key=lambda name: name != layout_primary,
        )
        ranges = list(lshard.slots) if lshard is not None else []
        if lshard is None and mode == "cluster" and sid in planned:
            ranges = [planned[sid]]
        view["shards"].append(
            {
                "id": sid,
                "primary": claim[0] if claim else layout_primary,
                "nodes": [n["name"] for n in members],
                "slots": sum(end - start + 1 for start, end in ranges),
                "ranges": [list(r) for r in ranges],
            }
        )
    if mode == "cluster":
        view["slot_map"] = slot_map((s["id"], s["ranges"]) for s in view["shards"])
        view["slot_note"] = "" if view["slot_map"] else "No slots assigned yet."
    return view


def cluster_entry(
    name: str, plan: Plan | None, *, running: bool, href: str | None
) -> dict[str, Any]:
    """One line of the clusters list."""
    if plan is None:
        return {"name": name, "engine": None, "mode": None, "running": running, "href": href}
    topo = plan.topology
    return {
        "name": name,
        "engine": topo.engine,
        "mode": mode_of(plan),
        "shards": len({n.shard for n in plan.nodes}) if not topo.is_memcached else None,
        "nodes": len(plan.nodes),
        "zones": list(topo.zones),
        "running": running,
        "href": href,
    }
