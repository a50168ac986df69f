"""What a cluster would cost as a managed service (pure): the bill's items from its history.

* **Nodes**: node-hours per node type from the cluster's event log (``cluster_created`` sets
  the count of running nodes, ``node_added`` / ``node_removed`` change it, ``cluster_stopped``
  ends it) against the on-demand prices of the price table (``cachefleet/prices.yaml``).
* **Reserved nodes** (``reserved:`` in the topology) are applied as the service applies them:
  to matching running nodes first, each hour; a reservation is paid for every hour of the
  window, used or not, at its effective hourly price (upfront spread over the term).
* **Snapshots**: storage beyond the free allowance of one snapshot's worth (the largest stored
  at that moment), in GB-months.
* **Cross-zone bytes**: bytes measured crossing a zone boundary (the supervisor counts the
  replication stream each primary sends to replicas in other zones), per GB.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from cachefleet.errors import InvalidInput, TopologyError

TERMS = ("1y", "3y")
PAYMENTS = ("no-upfront", "partial", "all-upfront")
HOURS_PER_MONTH = 730.0
GB = 1024**3
PRICES_ENV = "CACHEFLEET_PRICES"
PACKAGE_PRICES = Path(__file__).with_name("prices.yaml")


@dataclass(frozen=True)
class Reservation:
    node_type: str
    count: int
    term: str = "1y"
    payment: str = "no-upfront"


def parse_reserved(data: Any, *, source: str) -> tuple[Reservation, ...]:
    """The topology's ``reserved:`` list; TopologyError naming the field otherwise."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise TopologyError(
            source, "reserved", "must be a list of {node_type, count, term, payment}"
        )
    table = load_prices()
    out = []
    for i, item in enumerate(data):
        path = f"reserved[{i}]"
        if not isinstance(item, Mapping):
            raise TopologyError(source, path, "must be a mapping {node_type, count, term, payment}")
        unknown = sorted(set(map(str, item)) - {"node_type", "count", "term", "payment"})
        if unknown:
            raise TopologyError(source, f"{path}.{unknown[0]}", "unknown field")
        node_type = item.get("node_type")
        if not isinstance(node_type, str) or table.canonical(node_type) is None:
            raise TopologyError(
                source,
                f"{path}.node_type",
                f"{node_type!r} is not a node type of the price table "
                f"({', '.join(sorted(table.names()))})",
            )
        count = item.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
            raise TopologyError(
                source, f"{path}.count", f"must be an integer 1..10000, got {count!r}"
            )
        term = item.get("term", "1y")
        if term not in TERMS:
            raise TopologyError(
                source, f"{path}.term", f"{term!r} is not one of {', '.join(TERMS)}"
            )
        payment = item.get("payment", "no-upfront")
        if payment not in PAYMENTS:
            raise TopologyError(
                source, f"{path}.payment", f"{payment!r} is not one of {', '.join(PAYMENTS)}"
            )
        out.append(Reservation(node_type, count, str(term), str(payment)))
    return tuple(out)


# -- the price table -----------------------------------------------------------------------


@dataclass(frozen=True)
class PriceTable:
    on_demand: Mapping[str, float]  # the service's node type -> USD per node-hour
    aliases: Mapping[str, str] = field(default_factory=dict)  # cachefleet's name -> service's
    reserved_fraction: Mapping[tuple[str, str], float] = field(default_factory=dict)
    snapshot_gb_month: float = 0.0
    cross_zone_gb: float = 0.0
    currency: str = "USD"

    def names(self) -> set[str]:
        return set(self.on_demand) | set(self.aliases)

    def canonical(self, node_type: str) -> str | None:
        """The service's node type a name stands for (itself, or its alias), if priced."""
        name = self.aliases.get(node_type, node_type)
        return name if name in self.on_demand else None

    def hourly(self, node_type: str) -> float:
        name = self.canonical(node_type)
        if name is None:
            raise InvalidInput("price table", "on_demand_hourly", f"no price for {node_type!r}")
        return self.on_demand[name]

    def reserved_hourly(self, r: Reservation) -> float:
        return self.hourly(r.node_type) * self.reserved_fraction.get((r.term, r.payment), 1.0)

    @classmethod
    def from_dict(cls, data: Any, source: str) -> PriceTable:
        def number(value: Any, where: str) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(source, where, f"must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise InvalidInput(source, where, f"must be a price >= 0, got {value!r}")
            return float(value)

        if not isinstance(data, Mapping):
            raise InvalidInput(source, "", "must be a mapping")
        prices = data.get("on_demand_hourly")
        if not isinstance(prices, Mapping) or not prices:
            raise InvalidInput(source, "on_demand_hourly", "must map node types to prices")
        on_demand = {str(k): number(v, f"on_demand_hourly.{k}") for k, v in prices.items()}
        aliases_raw = data.get("aliases") or {}
        if not isinstance(aliases_raw, Mapping):
            raise InvalidInput(source, "aliases", "must map node type names to priced ones")
        aliases = {}
        for k, v in aliases_raw.items():
            if v not in on_demand:
                raise InvalidInput(source, f"aliases.{k}", f"{v!r} has no on-demand price")
            aliases[str(k)] = str(v)
        fractions: dict[tuple[str, str], float] = {}
        for term, by_payment in (data.get("reserved_fraction") or {}).items():
            if term not in TERMS or not isinstance(by_payment, Mapping):
                raise InvalidInput(source, f"reserved_fraction.{term}", "unknown term")
            for payment, value in by_payment.items():
                if payment not in PAYMENTS:
                    raise InvalidInput(
                        source, f"reserved_fraction.{term}.{payment}", "unknown payment"
                    )
                fractions[(term, payment)] = number(value, f"reserved_fraction.{term}.{payment}")
        return cls(
            on_demand=on_demand,
            aliases=aliases,
            reserved_fraction=fractions,
            snapshot_gb_month=number(data.get("snapshot_gb_month", 0), "snapshot_gb_month"),
            cross_zone_gb=number(data.get("cross_zone_gb", 0), "cross_zone_gb"),
            currency=str(data.get("currency", "USD")),
        )


def prices_path() -> Path:
    return Path(os.environ.get(PRICES_ENV) or PACKAGE_PRICES)


def load_prices(path: Path | None = None) -> PriceTable:
    """The price table: `path`, else ``$CACHEFLEET_PRICES``, else the one in the package."""
    return _load(str(path or prices_path()))


@lru_cache(maxsize=4)
def _load(path: str) -> PriceTable:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InvalidInput(path, "", f"cannot read the price table: {exc.strerror}") from None
    except yaml.YAMLError:
        raise InvalidInput(path, "", "the price table is not valid YAML") from None
    return PriceTable.from_dict(data, path)


# -- history -> usage ----------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """`nodes` nodes ran from `start` to `end` (Unix times)."""

    start: float
    end: float
    nodes: int


def node_segments(events: Iterable[Mapping[str, Any]], now: float) -> list[Segment]:
    """How many nodes ran when, from the event log: ``cluster_created`` (its ``nodes``) sets
    the count, ``node_added`` / ``node_removed`` change it by one, ``cluster_stopped`` ends it.
    The service bills a node from its creation to its deletion, crashes and restarts included,
    so ``node_exited`` does not stop the meter."""
    out: list[Segment] = []
    count, since = 0, None
    timed = [
        e for e in events if isinstance(e.get("ts"), int | float) and not isinstance(e["ts"], bool)
    ]
    for e in sorted(timed, key=lambda e: float(e["ts"])):
        kind, ts = e.get("type"), float(e["ts"])
        new = count
        if kind == "cluster_created":
            n = e.get("nodes")
            new = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else count
        elif kind == "node_added":
            new = count + 1
        elif kind == "node_removed":
            new = max(0, count - 1)
        elif kind == "cluster_stopped":
            new = 0
        else:
            continue
        if since is not None and count and ts > since:
            out.append(Segment(since, float(ts), count))
        count, since = new, float(ts)
    if since is not None and count and now > since:
        out.append(Segment(since, now, count))
    return out


def clip(segments: Iterable[Segment], start: float, end: float) -> list[Segment]:
    out = []
    for s in segments:
        a, b = max(s.start, start), min(s.end, end)
        if b > a:
            out.append(Segment(a, b, s.nodes))
    return out


@dataclass(frozen=True)
class StoredSnapshot:
    id: str
    bytes: int
    start: float  # when it was taken
    end: float | None  # when it was deleted (None: still stored)


def billable_snapshot_byte_seconds(
    snaps: Sequence[StoredSnapshot], start: float, end: float
) -> float:
    """Integral over [start, end] of (stored bytes - the largest stored snapshot): one
    snapshot's worth is free, as the service gives one backup's storage per cluster."""
    edges = {start, end}
    for s in snaps:
        edges.update(t for t in (s.start, s.end) if t is not None and start < t < end)
    points = sorted(edges)
    total = 0.0
    for a, b in itertools.pairwise(points):
        mid = (a + b) / 2
        live = [s.bytes for s in snaps if s.start <= mid and (s.end is None or s.end > mid)]
        if live:
            total += (sum(live) - max(live)) * (b - a)
    return total


# -- the bill ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeLine:
    node_type: str  # as the cluster names it
    priced_as: str  # the service's node type
    node_hours: float
    reserved_hours: float  # node-hours covered by reservations
    on_demand_hours: float
    on_demand_usd: float


@dataclass(frozen=True)
class ReservedLine:
    node_type: str
    count: int
    term: str
    payment: str
    hours: float  # reservation-hours in the window (count x hours)
    used_hours: float
    hourly_usd: float  # effective price of one reserved node-hour
    usd: float


@dataclass(frozen=True)
class Bill:
    start: float
    end: float
    nodes: tuple[NodeLine, ...]
    reserved: tuple[ReservedLine, ...]
    snapshot_gb_months: float
    snapshot_usd: float
    cross_zone_bytes: int
    cross_zone_usd: float
    currency: str = "USD"

    @property
    def total_usd(self) -> float:
        return (
            sum(n.on_demand_usd for n in self.nodes)
            + sum(r.usd for r in self.reserved)
            + self.snapshot_usd
            + self.cross_zone_usd
        )

    def components(self) -> dict[str, float]:
        """USD per component, for the cachefleet_cost_usd_total series."""
        return {
            "on_demand_nodes": sum(n.on_demand_usd for n in self.nodes),
            "reserved_nodes": sum(r.usd for r in self.reserved),
            "snapshot_storage": self.snapshot_usd,
            "cross_zone_transfer": self.cross_zone_usd,
        }

    def to_dict(self) -> dict[str, Any]:
        def r(x: float, n: int = 6) -> float:
            return round(x, n)

        return {
            "start": self.start,
            "end": self.end,
            "currency": self.currency,
            "total_usd": r(self.total_usd),
            "nodes": [
                {
                    "node_type": n.node_type,
                    "priced_as": n.priced_as,
                    "node_hours": r(n.node_hours),
                    "reserved_hours": r(n.reserved_hours),
                    "on_demand_hours": r(n.on_demand_hours),
                    "on_demand_usd": r(n.on_demand_usd),
                }
                for n in self.nodes
            ],
            "reserved": [
                {
                    "node_type": x.node_type,
                    "count": x.count,
                    "term": x.term,
                    "payment": x.payment,
                    "hours": r(x.hours),
                    "used_hours": r(x.used_hours),
                    "hourly_usd": r(x.hourly_usd),
                    "usd": r(x.usd),
                }
                for x in self.reserved
            ],
            "snapshots": {"gb_months": r(self.snapshot_gb_months, 9), "usd": r(self.snapshot_usd)},
            "cross_zone": {"bytes": self.cross_zone_bytes, "usd": r(self.cross_zone_usd)},
        }


def bill(
    *,
    node_type: str,
    segments: Sequence[Segment],
    reserved: Sequence[Reservation],
    prices: PriceTable,
    start: float,
    end: float,
    snapshots: Sequence[StoredSnapshot] = (),
    cross_zone_bytes: int = 0,
) -> Bill:
    """The cluster's bill over [start, end]. Reservations of the cluster's node type (by
    either name) cover its running nodes first, up to their count at every moment; the
    rest run on demand. Each reservation is paid for the whole window."""
    used = clip(segments, start, end)
    priced_as = prices.canonical(node_type) or node_type
    node_hours = sum((s.end - s.start) * s.nodes for s in used) / 3600
    matching = [r for r in reserved if prices.canonical(r.node_type) == priced_as]
    capacity = sum(r.count for r in matching)
    covered = sum((s.end - s.start) * min(s.nodes, capacity) for s in used) / 3600
    rate = prices.hourly(node_type)
    on_demand_hours = node_hours - covered
    lines = (
        NodeLine(
            node_type, priced_as, node_hours, covered, on_demand_hours, on_demand_hours * rate
        ),
    )
    window_h = max(0.0, end - start) / 3600
    reserved_lines = []
    left = covered  # covered hours, handed to reservations in their order
    for r in reserved:
        hours = r.count * window_h
        mine = min(left, hours) if r in matching else 0.0
        left -= mine
        hourly = prices.reserved_hourly(r)
        reserved_lines.append(
            ReservedLine(
                r.node_type, r.count, r.term, r.payment, hours, mine, hourly, hours * hourly
            )
        )
    byte_s = billable_snapshot_byte_seconds(snapshots, start, end)
    gb_months = byte_s / GB / 3600 / HOURS_PER_MONTH
    return Bill(
        start=start,
        end=end,
        nodes=lines,
        reserved=tuple(reserved_lines),
        snapshot_gb_months=gb_months,
        snapshot_usd=gb_months * prices.snapshot_gb_month,
        cross_zone_bytes=cross_zone_bytes,
        cross_zone_usd=cross_zone_bytes / GB * prices.cross_zone_gb,
        currency=prices.currency,
    )


def snapshot_history(
    events: Iterable[Mapping[str, Any]], stored: Iterable[tuple[str, int, float]]
) -> list[StoredSnapshot]:
    """The cluster's snapshots over time: those still `stored` (id, bytes, taken at), and
    those the event log saw completed and then deleted (``snapshot_completed`` carries their
    bytes, ``snapshot_deleted`` their end)."""
    taken: dict[str, tuple[int, float]] = {}
    deleted: dict[str, float] = {}
    for e in events:
        ts, sid = e.get("ts"), e.get("snapshot")
        if not isinstance(ts, int | float) or not isinstance(sid, str):
            continue
        if e.get("type") == "snapshot_completed" and isinstance(e.get("bytes"), int):
            taken[sid] = (int(e["bytes"]), float(ts))
        elif e.get("type") == "snapshot_deleted":
            deleted[sid] = float(ts)
    out = {sid: StoredSnapshot(sid, size, at, None) for sid, size, at in stored}
    for sid, (size, at) in taken.items():
        if sid not in out and sid in deleted:
            out[sid] = StoredSnapshot(sid, size, at, deleted[sid])
    return sorted(out.values(), key=lambda s: (s.start, s.id))
