"""``cachefleet cost NAME [--since DATE] [--json]``: the cluster's bill as the managed service
would send it (the model is :mod:`cachefleet.cost`), from its event log, its snapshots, and
the cross-zone bytes its supervisor counts in ``<cluster>/traffic.json``.

Cross-zone bytes are the replication stream each primary sends to its replicas in other zones
(the growth of its replication offset times the replicas linked to it from another zone),
counted by the metrics collector and kept per hour so ``--since`` can cut them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from cachefleet import cost, snapshots
from cachefleet.errors import StateError
from cachefleet.events import parse_since, read_events
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir, state_home

HOUR = 3600


def traffic_path(cdir: ClusterDir) -> Any:
    return cdir.root / "traffic.json"


def read_traffic(cdir: ClusterDir) -> dict[int, int]:
    """Hour start (Unix time) -> bytes that crossed a zone boundary in that hour."""
    try:
        data = json.loads(traffic_path(cdir).read_text())
        hours = data["cross_zone_bytes_by_hour"]
        return {int(k): int(v) for k, v in hours.items() if int(v) >= 0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def save_traffic(cdir: ClusterDir, by_hour: Mapping[int, int]) -> None:
    path = traffic_path(cdir)
    tmp = path.with_name(f".traffic.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"cross_zone_bytes_by_hour": {str(k): v for k, v in by_hour.items()}})
    )
    tmp.replace(path)


def cluster_bill(cdir: ClusterDir, plan: Plan, *, since: float | None, now: float) -> cost.Bill:
    """The bill from `since` (default: the cluster's first creation) to `now`."""
    events = read_events(cdir.events_path)
    segments = cost.node_segments(events, now)
    created = [float(e["ts"]) for e in events if e.get("type") == "cluster_created"]
    first = min(created, default=segments[0].start if segments else now)
    start = max(first, since) if since is not None else first
    stored = [
        (m.id, m.bytes, snapshots.created_at(m).timestamp())
        for m in snapshots.list_all(cdir.home)
        if m.cluster == plan.name
    ]
    cross = sum(b for hour, b in read_traffic(cdir).items() if hour + HOUR > start)
    return cost.bill(
        node_type=plan.topology.node_type,
        segments=segments,
        reserved=plan.topology.reserved,
        prices=cost.load_prices(),
        start=start,
        end=now,
        snapshots=cost.snapshot_history(events, stored),
        cross_zone_bytes=cross,
    )


def month_start(now: float) -> float:
    """The start of `now`'s calendar month (UTC), as the service's bill counts a month."""
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def month_to_date(cdir: ClusterDir, plan: Plan, now: float | None = None) -> cost.Bill:
    """The bill of the current month so far (what the web console shows)."""
    now = time.time() if now is None else now
    return cluster_bill(cdir, plan, since=month_start(now), now=now)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def show_cost(
    name: str,
    *,
    state_dir: str | None,
    since: str | None,
    as_json: bool,
    out: Callable[[str], None],
) -> int:
    cdir = ClusterDir(state_home(state_dir), name)
    if not cdir.root.exists():
        raise StateError(f"no cluster named {name!r} under {cdir.home}")
    now = time.time()
    plan = cdir.load_plan()
    b = cluster_bill(cdir, plan, since=None if since is None else parse_since(since, now), now=now)
    if as_json:
        out(
            json.dumps(
                {"cluster": name, "prices": str(cost.prices_path()), **b.to_dict()}, indent=1
            )
        )
        return 0
    hours = (b.end - b.start) / HOUR
    out(f"{name}: {_iso(b.start)} .. {_iso(b.end)} ({hours:.2f} h), prices {cost.prices_path()}")
    rows: list[tuple[str, str, float]] = []
    for n in b.nodes:
        rows.append(
            (
                "nodes",
                f"{n.node_type} as {n.priced_as}: {n.node_hours:.2f} node-hours "
                f"({n.reserved_hours:.2f} reserved, {n.on_demand_hours:.2f} on demand)",
                n.on_demand_usd,
            )
        )
    for r in b.reserved:
        rows.append(
            (
                "reserved",
                f"{r.count} x {r.node_type} {r.term} {r.payment}: {r.hours:.2f} h at "
                f"{r.hourly_usd:.4f}/h ({r.used_hours:.2f} h used)",
                r.usd,
            )
        )
    rows.append(
        ("snapshots", f"{b.snapshot_gb_months:.6f} GB-months beyond the free one", b.snapshot_usd)
    )
    rows.append(
        (
            "cross-zone",
            f"{b.cross_zone_bytes:,} bytes of replication between zones",
            b.cross_zone_usd,
        )
    )
    width = max(len(detail) for _, detail, _ in rows)
    for item, detail, usd in rows:
        out(f"  {item:<11} {detail:<{width}}  {usd:>10.4f} {b.currency}")
    out(f"  {'total':<11} {'':<{width}}  {b.total_usd:>10.4f} {b.currency}")
    return 0
