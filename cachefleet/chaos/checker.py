"""The history of a chaos trial and the checks over it (pure functions, no I/O).

Every operation is recorded with its start and end (seconds from the trial's start), key,
value, outcome and — where the client knows it — the node that served it. Outcomes:
``ok`` (acknowledged; with ``wait`` also replicated), ``error`` (the server refused), ``unknown``
(timeout or connection lost after sending, or a write whose WAIT did not confirm).
``error`` and ``unknown`` writes are indeterminate: they may have been applied, so they are
never counted as lost and never as acknowledged.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


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
    members: Collection[str] | None = None,
) -> float:
    """How long two primaries accepted writes for one shard (0 when never): after each
    promotion ``(time, new primary address)``, until the shard's next promotion, how long any
    *other* node still acknowledged writes for it. Handovers that are clean (the old primary
    stops before the new one starts) give 0, however often they happen. With `members` (the
    shard's node addresses), only they count: a key whose slot moved to another shard (an
    apply during the trial) is acknowledged there rightly."""
    acks = sorted(
        (op.end, op.node)
        for op in history
        if op.kind == "w" and op.outcome == "ok" and op.node is not None and in_shard(op.key)
        and (members is None or op.node in members)
    )  # fmt: skip
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


@dataclass(frozen=True)
class Service:
    """How a shard served writes over a stretch of the trial."""

    ok: int  # acknowledged writes that ended in the stretch
    failed: int  # failed (error / unknown) writes that ended in it
    max_gap_s: float  # longest time in the stretch without an acknowledged write


def service(
    history: Iterable[Op], in_shard: Callable[[str], bool], since: float, until: float
) -> Service:
    """Writes of one shard between `since` and `until`. A shard that keeps serving shows a
    small `max_gap_s` (one write's latency); a stalled one shows the stall, errors or not."""
    writes = [op for op in history if op.kind == "w" and in_shard(op.key) and since <= op.end]
    writes = [op for op in writes if op.end <= until]
    acked = sorted(op.end for op in writes if op.outcome == "ok")
    edges = [since, *acked, until]
    return Service(
        ok=len(acked),
        failed=len(writes) - len(acked),
        max_gap_s=max(b - a for a, b in itertools.pairwise(edges)),
    )


def check_trial(
    history: Sequence[Op],
    final: Mapping[str, int | None],
    *,
    shard_of: Mapping[str, int],
    shards: Iterable[int],
    fault_times: Sequence[float],
    targeted: Iterable[int],
    promotions: Iterable[tuple[int, float, str]],
    duration_s: float,
    members: Mapping[int, Collection[str]] | None = None,
) -> dict[str, Any]:
    """Every figure of one trial. `members`: each shard's node addresses (split brain counts
    only acknowledgements by members of the shard).

    Per shard: ``window_s`` (unavailability: from the fault that hit it — the last fault before
    its first failed write — to the first acknowledged write started after that; the rest of
    the trial when it never recovered), ``errors``, ``affected`` (any failed write after the
    first fault, or a promotion in the shard after it), ``targeted`` (the fault took this
    shard's primary, or a node of it), and how it served from the first fault to the end:
    ``ok_writes``, ``failed_writes``, ``max_gap_s``.
    `promotions` are ``(shard, time, new primary address)``.
    """
    first_fault = min(fault_times, default=0.0)
    times = sorted(fault_times)
    hit = set(targeted)
    promoted = list(promotions)
    avail: dict[str, Any] = {}
    split: dict[str, float] = {}
    for sid in shards:

        def in_shard(k: str, sid: int = sid) -> bool:
            return shard_of.get(k) == sid

        failed = [
            op.end
            for op in history
            if op.kind == "w" and op.outcome != "ok" and op.end >= first_fault and in_shard(op.key)
        ]
        fault_at = first_fault
        if failed:
            fault_at = max((t for t in times if t <= min(failed)), default=first_fault)
        a = availability(history, fault_at, in_shard)
        window = a.window_s
        if window is None and a.errors:
            window = duration_s - fault_at  # never recovered within the trial: the rest of it
        served = service(history, in_shard, first_fault, duration_s)
        mine = [(t, addr) for shard, t, addr in promoted if shard == sid]
        # a shard whose primary changed is affected even when no write failed: clients that
        # retry (or wait on an endpoint) see the failover as a stall, not as errors
        failed_over = any(t >= first_fault for t, _ in mine)
        avail[str(sid)] = {
            "window_s": round(window, 3) if window is not None else None,
            "recovered": a.window_s is not None,
            "error_time_s": round(a.error_time_s, 3),
            "errors": a.errors,
            "affected": a.errors > 0 or (failed_over and window is not None),
            "targeted": sid in hit,
            "ok_writes": served.ok,
            "failed_writes": served.failed,
            "max_gap_s": round(served.max_gap_s, 3),
        }
        owners = None if members is None else members.get(sid, set())
        split[str(sid)] = round(split_brain_window(history, in_shard, mine, owners), 3)
    lost = lost_writes(history, final)
    return {
        "ops": len(history),
        "writes_ok": sum(1 for o in history if o.kind == "w" and o.outcome == "ok"),
        "indeterminate": sum(1 for o in history if o.outcome != "ok"),
        "lost_writes": len(lost),
        "lost_examples": [vars(x) for x in lost[:10]],
        "availability": avail,
        "split_brain_s": split,
        "split_brain_max_s": max(split.values(), default=0.0),
        "stale_reads": len(stale_reads(history)),
    }


def aggregate(trials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Figures over trials (each a check_trial result). ``failover_*``: unavailability of the
    affected shards; ``other_shards``: shards that no fault targeted — their failed writes and
    the longest time without an acknowledged write (p50/p99/max over trials x shards)."""
    windows = [
        v["window_s"]
        for t in trials
        for v in t["availability"].values()
        if v["affected"] and v["window_s"] is not None
    ]
    others = [v for t in trials for v in t["availability"].values() if not v["targeted"]]
    gaps = [float(v["max_gap_s"]) for v in others]
    ok = sum(v["ok_writes"] for v in others)
    failed = sum(v["failed_writes"] for v in others)
    return {
        "failover_p50_s": percentile(windows, 50),
        "failover_p99_s": percentile(windows, 99),
        "failover_max_s": max(windows) if windows else None,
        "lost_writes": sum(t["lost_writes"] for t in trials),
        "trials_with_loss": sum(1 for t in trials if t["lost_writes"]),
        "split_brain_max_s": max((t["split_brain_max_s"] for t in trials), default=0.0),
        "stale_reads": sum(t["stale_reads"] for t in trials),
        "ops": sum(t["ops"] for t in trials),
        "indeterminate": sum(t["indeterminate"] for t in trials),
        "other_shards": {
            "shard_trials": len(others),
            "ok_writes": ok,
            "failed_writes": failed,
            "ok_fraction": round(ok / (ok + failed), 6) if ok + failed else None,
            "max_gap_p50_s": percentile(gaps, 50),
            "max_gap_p99_s": percentile(gaps, 99),
            "max_gap_max_s": max(gaps) if gaps else None,
        },
    }


@dataclass(frozen=True)
class Limit:
    """One expectation of a scenario: `got` must not exceed `limit`."""

    limit: float
    got: float

    @property
    def met(self) -> bool:
        return self.got <= self.limit


def expectations(
    agg: Mapping[str, Any],
    *,
    lost_writes: int | None,
    max_unavailable_s: float | None,
    split_brain_s: float | None,
) -> dict[str, dict[str, Any]]:
    """The scenario's expectations checked against the aggregate (unset ones are skipped)."""
    checks: dict[str, Limit] = {}
    if lost_writes is not None:
        checks["lost_writes"] = Limit(lost_writes, agg["lost_writes"])
    if max_unavailable_s is not None:
        checks["max_unavailable_s"] = Limit(max_unavailable_s, agg["failover_max_s"] or 0.0)
    if split_brain_s is not None:
        checks["split_brain_s"] = Limit(split_brain_s, agg["split_brain_max_s"])
    return {k: {"limit": c.limit, "got": c.got, "met": c.met} for k, c in checks.items()}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
