"""The history of a chaos trial and the checks over it (pure functions, no I/O).

Every operation is recorded with its start and end (seconds from the trial's start), key,
value, outcome and — where the client knows it — the node that served it. Outcomes:
``ok`` (acknowledged; with ``wait`` also replicated), ``error`` (the server refused), ``unknown``
(timeout or connection lost after sending, or a write whose WAIT did not confirm).
``error`` and ``unknown`` writes are indeterminate: they may have been applied, so they are
never counted as lost and never as acknowledged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    kind: str  # "w" | "r"
    key: str
    value: int | None  # written value, or the value read (None: missing)
    start: float
    end: float
    outcome: str  # "ok" | "error" | "unknown"
    node: str | None = None  # host:port that served it, when known
    worker: int = 0


@dataclass(frozen=True)
class LostWrite:
    key: str
    value: int
    acked_at: float
    final: int | None


def lost_writes(history: Iterable[Op], final: Mapping[str, int | None]) -> list[LostWrite]:
    """Acknowledged writes neither present at the end nor superseded by a later write.

    Per key, the last acknowledged write must be what the final read returns, unless a write
    issued after it is indeterminate (then its value is an acceptable final value too).
    Earlier acknowledged writes are superseded by the later acknowledged one.
    """
    by_key: dict[str, list[Op]] = {}
    for op in history:
        if op.kind == "w":
            by_key.setdefault(op.key, []).append(op)
    lost = []
    for key, writes in by_key.items():
        acked = [w for w in writes if w.outcome == "ok"]
        if not acked:
            continue
        last = max(acked, key=lambda w: w.end)
        acceptable = {last.value} | {
            w.value for w in writes if w.outcome != "ok" and w.end >= last.start
        }
        got = final.get(key)
        if got not in acceptable:
            assert last.value is not None
            lost.append(LostWrite(key, last.value, last.end, got))
    return lost


@dataclass(frozen=True)
class Availability:
    window_s: float | None  # fault -> end of the first successful write started after it
    error_time_s: float  # summed duration of failed writes after the fault
    errors: int


def availability(
    history: Iterable[Op], fault_at: float, in_shard: Callable[[str], bool]
) -> Availability:
    writes = [op for op in history if op.kind == "w" and in_shard(op.key)]
    after = [w for w in writes if w.start >= fault_at]
    ok = [w.end for w in after if w.outcome == "ok"]
    failed = [w for w in writes if w.outcome != "ok" and w.end >= fault_at]
    return Availability(
        window_s=(min(ok) - fault_at) if ok else None,
        error_time_s=sum(w.end - max(w.start, fault_at) for w in failed),
        errors=len(failed),
    )


def split_brain_window(
    history: Iterable[Op],
    in_shard: Callable[[str], bool],
    promotions: Iterable[tuple[float, str]] = (),
) -> float:
    """How long two primaries accepted writes for one shard (0 when never): after each
    promotion ``(time, new primary address)``, until the shard's next promotion, how long any
    *other* node still acknowledged writes for it. Handovers that are clean (the old primary
    stops before the new one starts) give 0, however often they happen."""
    acks = sorted(
        (op.end, op.node)
        for op in history
        if op.kind == "w" and op.outcome == "ok" and op.node is not None and in_shard(op.key)
    )
    ordered = sorted(promotions)
    worst = 0.0
    for i, (at, new_primary) in enumerate(ordered):
        until = ordered[i + 1][0] if i + 1 < len(ordered) else float("inf")
        late = [end for end, node in acks if at < end < until and node != new_primary]
        if late:
            worst = max(worst, max(late) - at)
    return worst


@dataclass(frozen=True)
class StaleRead:
    key: str
    read_value: int | None
    expected_at_least: int
    read_start: float


def stale_reads(history: Iterable[Op]) -> list[StaleRead]:
    """Reads that returned a value older than a write acknowledged before the read started.

    Writes of one key come from one writer, one at a time, with increasing values, so "older"
    is "smaller". Indeterminate writes are not evidence either way.
    """
    ops = list(history)
    acked: dict[str, list[Op]] = {}
    for op in ops:
        if op.kind == "w" and op.outcome == "ok":
            acked.setdefault(op.key, []).append(op)
    for writes in acked.values():
        writes.sort(key=lambda w: w.end)
    stale = []
    for r in ops:
        if r.kind != "r" or r.outcome != "ok":
            continue
        before = [w for w in acked.get(r.key, []) if w.end < r.start]
        if not before:
            continue
        newest = before[-1]
        assert newest.value is not None
        if r.value is None or r.value < newest.value:
            stale.append(StaleRead(r.key, r.value, newest.value, r.start))
    return stale


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
