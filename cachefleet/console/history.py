"""The last 15 minutes of each node's numbers, for the console's charts.

The metrics collector offers every pass (one every 2 s) to a :class:`SampleRing`; it keeps one
point per ``interval_s`` window of wall-clock time, at most ``size`` of them (180 x 5 s), so a
supervisor that runs for months holds the same few kilobytes. Pure.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cachefleet import metrics
from cachefleet.metrics import Sample

INTERVAL_S = 5.0
SIZE = 180  # 15 minutes of 5 s points

#: The charted series: name -> the metrics that give it (the first one a node reports).
SERIES: dict[str, tuple[str, ...]] = {
    "ops_per_sec": (metrics.OPS.name,),
    "memory": (metrics.USED.name, metrics.MC_BYTES.name),
    "connections": (metrics.CONNS.name, metrics.MC_CONNS.name),
    "lag_s": (metrics.LAG.name,),
}

Values = tuple[float | None, ...]  # one value per SERIES entry, None when not reported


def by_node(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """node -> metric name -> value (its labels: :func:`labels_by_node`)."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        node = dict(s.labels).get("node")
        if node is not None:
            out.setdefault(node, {})[s.metric.name] = s.value
    return out


def labels_by_node(samples: Iterable[Sample]) -> dict[str, dict[str, str]]:
    """node -> its labels (``role`` among them), as the last sample of it has them."""
    out: dict[str, dict[str, str]] = {}
    for s in samples:
        labels = dict(s.labels)
        node = labels.get("node")
        if node is not None:
            out.setdefault(node, {}).update(labels)
    return out


def node_values(values: Mapping[str, float]) -> Values:
    """One node's charted values, in SERIES order."""
    out: list[float | None] = []
    for names in SERIES.values():
        got = next((values[n] for n in names if n in values), None)
        out.append(got if got is not None and math.isfinite(got) else None)
    return tuple(out)


@dataclass(frozen=True)
class Point:
    ts: float  # Unix time of the pass it was taken from
    nodes: Mapping[str, Values]


class SampleRing:
    """At most one point per ``interval_s`` window, the newest ``size`` of them."""

    def __init__(self, interval_s: float = INTERVAL_S, size: int = SIZE) -> None:
        self.interval_s = interval_s
        self.points: deque[Point] = deque(maxlen=size)

    def offer(self, ts: float, samples: Iterable[Sample]) -> bool:
        """Keep this pass if it is the first of its window; True when it was kept."""
        if self.points and math.floor(ts / self.interval_s) <= math.floor(
            self.points[-1].ts / self.interval_s
        ):
            return False
        nodes = {
            node: node_values(values)
            for node, values in by_node(samples).items()
            if values.get(metrics.UP.name, values.get(metrics.MC_UP.name, 1.0)) != 0
        }
        self.points.append(Point(ts, nodes))
        return True

    def to_json(self) -> dict[str, Any]:
        """``{"interval_s", "t": [ts...], "series": {series: {node: [value|null...]}}}``:
        one list per node and series, aligned with ``t`` (null where the node did not
        answer or does not report that series)."""
        names = sorted({n for p in self.points for n in p.nodes})
        series: dict[str, dict[str, list[float | None]]] = {s: {} for s in SERIES}
        for i, key in enumerate(SERIES):
            for node in names:
                column = [p.nodes[node][i] if node in p.nodes else None for p in self.points]
                if any(v is not None for v in column):
                    series[key][node] = column
        return {
            "interval_s": self.interval_s,
            "window_s": self.interval_s * (self.points.maxlen or 0),
            "t": [round(p.ts, 3) for p in self.points],
            "series": series,
        }
