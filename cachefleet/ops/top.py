"""`cachefleet top NAME`: a live table of the cluster's nodes, refreshed every second.

It reads the nodes through the same collector as the metrics endpoint, so the table shows the
numbers a scrape would (ops/s, memory, connections, replication lag, hit rate); ``q`` or
Ctrl-C quits. Building rows and the table is pure (:func:`table_rows`, :func:`render_table`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cachefleet import metrics
from cachefleet.metrics import Sample
from cachefleet.ops.metrics_server import Collector
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir, state_home

REFRESH_S = 1.0
CLEAR = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class Row:
    node: str
    shard: int
    zone: str
    role: str  # primary / replica / node (memcached) / down
    ops_per_sec: float | None = None
    memory: float | None = None
    max_memory_ratio: float | None = None
    connections: float | None = None
    lag_s: float | None = None
    hit_rate: float | None = None


def table_rows(plan: Plan, samples: Iterable[Sample]) -> list[Row]:
    """One row per node of the plan, by shard then node; a node that did not answer (no
    samples, or ``node_up`` 0) is down."""
    by_node: dict[str, dict[str, float]] = {}
    roles: dict[str, str] = {}
    for s in samples:
        labels = dict(s.labels)
        node = labels.get("node")
        if node is None:
            continue
        by_node.setdefault(node, {})[s.metric.name] = s.value
        if "role" in labels:
            roles[node] = labels["role"]
    rows = []
    for spec in sorted(plan.nodes, key=lambda n: (n.shard, n.name)):
        got = by_node.get(spec.name)
        if not got or got.get(metrics.UP.name) == 0:
            rows.append(Row(spec.name, spec.shard, spec.zone, "down"))
            continue
        hits = got.get(metrics.MC_HITS.name)
        misses = got.get(metrics.MC_MISSES.name)
        lookups = (hits or 0.0) + (misses or 0.0)
        mc_rate = (hits or 0.0) / lookups if lookups > 0 else None
        rows.append(
            Row(
                node=spec.name,
                shard=spec.shard,
                zone=spec.zone,
                role=roles.get(spec.name, "node"),
                ops_per_sec=got.get(metrics.OPS.name),
                memory=got.get(metrics.USED.name, got.get(metrics.MC_BYTES.name)),
                max_memory_ratio=got.get(metrics.MEM_PCT.name),
                connections=got.get(metrics.CONNS.name),
                lag_s=got.get(metrics.LAG.name),
                hit_rate=got.get(metrics.HIT_RATE.name, mc_rate),
            )
        )
    return rows


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"  # unreachable


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


COLUMNS = ("NODE", "SHARD", "ZONE", "ROLE", "OPS/S", "MEMORY", "MEM%", "CONNS", "LAG", "HIT%")


def render_table(title: str, rows: list[Row], width: int = 120) -> str:
    cells = [
        (
            r.node,
            str(r.shard),
            r.zone,
            r.role,
            _num(r.ops_per_sec, ".0f"),
            _size(r.memory),
            _num(None if r.max_memory_ratio is None else 100 * r.max_memory_ratio, ".1f"),
            _num(r.connections, ".0f"),
            "-" if r.lag_s is None else f"{r.lag_s:.0f}s",
            _num(None if r.hit_rate is None else 100 * r.hit_rate, ".1f"),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(COLUMNS)]

    def line(values: Iterable[str]) -> str:
        parts = [
            v.ljust(w) if i < 4 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts)[:width]

    return "\n".join([title[:width], "", line(COLUMNS), *(line(c) for c in cells)])


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[], str]]:
    """Single keypresses from a terminal stdin (cbreak mode, restored on exit); elsewhere
    no keys (Ctrl-C still quits)."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield lambda: ""
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read() -> str:
        ready, _, _ = select.select([fd], [], [], 0)
        return os.read(fd, 32).decode("utf-8", "replace") if ready else ""

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _run(
    plan: Plan, cdir: ClusterDir, out: Callable[[str], None], iterations: int | None
) -> int:
    collector = Collector(plan=plan, cdir=cdir)
    shown = 0
    try:
        with _keys() as key:
            while iterations is None or shown < iterations:
                started = time.monotonic()
                await collector.collect()
                layout = cdir.load_layout()
                epoch = layout.epoch if layout is not None else 0
                title = (
                    f"cachefleet top - {plan.name} ({plan.topology.engine}), config epoch "
                    f"{epoch}, {time.strftime('%H:%M:%S')}  (q quits)"
                )
                tty_out = sys.stdout.isatty()  # elsewhere (a pipe) tables follow one another
                width = os.get_terminal_size().columns if tty_out else 200
                table = render_table(title, table_rows(plan, collector.samples), width)
                out((CLEAR if tty_out else "") + table)
                shown += 1
                deadline = started + REFRESH_S
                while time.monotonic() < deadline:
                    if "q" in key().lower():
                        return 0
                    await asyncio.sleep(0.05)
    finally:
        await collector.close()
    return 0


def top(
    name: str,
    *,
    state_dir: str | None,
    out: Callable[[str], None],
    iterations: int | None = None,
) -> int:
    cdir = ClusterDir(state_home(state_dir), name)
    plan = cdir.load_plan()
    try:
        return asyncio.run(_run(plan, cdir, out, iterations))
    except KeyboardInterrupt:
        return 0
