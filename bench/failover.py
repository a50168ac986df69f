"""Failover benchmark: unavailability and lost acknowledged writes when a shard's primary is
killed (SIGKILL) or paused (SIGSTOP), cachefleet's sentinel failover beside the engine's own.

What is measured, per trial: one writer thread does sequential SETs through redis-py's
``RedisCluster`` (keys spread over every shard, each value a unique counter) and records every
operation as a ``cachefleet.chaos.checker.Op`` (start, end, key, value, outcome ok / error /
unknown). After 1.5 s of steady writes
the primary of the target shard gets SIGKILL or SIGSTOP (``t_fault``); the writer goes on until
the first successful SET, started after ``t_fault``, of a key whose slot belongs to that shard
(unavailability = the end of that SET - ``t_fault``: ``checker.availability``), then 1 s more.
Once the cluster is whole again every key is read back through the cluster client, and lost
acknowledged writes are counted by ``checker.lost_writes`` — the chaos runner's definition: a
key whose last acknowledged value is not read (and is not the value of a later SET with an
error/unknown outcome, which may or may not have been applied). Percentiles are the checker's
nearest-rank ones (p99 of 30 trials is the largest of them).

Sides (same engine binary, the topology's shape — default.yaml: 3 zones, 3 shards x (1+1) —
and node timeout = the topology's ``down_after_ms``):

* cachefleet: ``cachefleet up --detach`` of the topology (auto ports, unique name); sentinels
  promote with ``CLUSTER FAILOVER TAKEOVER``; zone agents restart a killed node, which rejoins as
  a replica; a paused node gets SIGCONT once the failover is observed. The writer bootstraps
  from the router (configuration endpoint).
* anchor (``bench/anchor.py``): engine processes started here, created with ``redis-cli
  --cluster create``, ``cluster-require-full-coverage no``, the engine's own replica failover.
  This script restarts a killed primary (same argv and nodes.conf, so it rejoins as a replica)
  or SIGCONTs a paused one once the failover is observed (or after 10 s). The writer bootstraps
  from one node.

One cluster per variant and side serves every trial; each trial targets the next shard (round
robin) and starts only once the cluster is whole again (cachefleet: ``status`` says
``available``; anchor: every node agrees on one configuration with no failure flags and every
replica is linked). Prints tables; asserts nothing. Run: ``python bench/failover.py --trials 10``;
``--only cachefleet --variants kill --trials 30`` for the sentinel figures alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import psutil
import redis
import yaml
from anchor import ROOT, PlainCluster, wait_until
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from cachefleet.chaos.checker import Op, availability, lost_writes, percentile
from cachefleet.slots import key_slot, ranges_to_slots
from cachefleet.topology import load_topology

KEYS = 3000
STEADY_S = 1.5  # writes before the fault
AFTER_S = 1.0  # writes after the first successful write to the faulted shard
MAX_WRITE_S = 20.0  # a trial never writes longer than this
ACT_AFTER_S = 10.0  # restart / SIGCONT the faulted node at the latest this long after the fault
READY_TIMEOUT_S = 60.0
ERROR_SLEEP_S = 0.005
SOCKET_TIMEOUT_S = 0.5

SIGNALS = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the writer ------------------------------------------------------------------------------


def classify(exc: BaseException) -> str:
    """ "error" only when the SET certainly was not applied; everything else is "unknown"."""
    text = str(exc)
    if isinstance(exc, redis.ResponseError):
        return "error"  # the server answered with an error (READONLY, CLUSTERDOWN, ...)
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError) and "connecting to" in text:
        return "error"  # never connected, so nothing was sent
    return "unknown"


def make_client(host: str, port: int, retries: int) -> RedisCluster:
    return RedisCluster(
        host=host,
        port=port,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), retries),
    )


def writer_sentence(retries: int) -> str:
    return (
        f"writer: 1 thread of sequential SETs, redis-py {redis.__version__} RedisCluster "
        "(bootstrapped from the router for cachefleet, from one node for the anchor; "
        "dynamic startup nodes, the library's default), "
        f"socket_timeout={SOCKET_TIMEOUT_S} s, socket_connect_timeout={SOCKET_TIMEOUT_S} s, "
        f"cluster-level retries={retries} (no backoff), the writer itself retrying after "
        f"{ERROR_SLEEP_S * 1000:.0f} ms on any error; {KEYS} keys per trial over all shards, "
        f"unique counter values; {STEADY_S} s steady writes, then the fault, then writes until "
        f"the first ok SET on the faulted shard + {AFTER_S} s (at most {MAX_WRITE_S:.0f} s); "
        "unavailability = end of the first ok SET started after the fault on that shard - fault"
    )


class Writer(threading.Thread):
    """Sequential SETs of unique values; watches for the faulted shard's first ok write."""

    def __init__(self, client: RedisCluster, prefix: str, target: set[int], first: int) -> None:
        super().__init__(daemon=True, name=f"writer-{prefix}")
        self.client = client
        self.names = [f"{prefix}k:{i}" for i in range(KEYS)]
        self.in_target = [key_slot(name) in target for name in self.names]
        self.counter = first
        self.ops: list[Op] = []
        self.t_fault: float | None = None
        self.recovered_at: float | None = None
        self.recovered = threading.Event()
        self.stop = threading.Event()
        self.deadline = time.monotonic() + MAX_WRITE_S + 5.0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            key = i % KEYS
            i += 1
            self.counter += 1
            value = self.counter
            start = time.monotonic()
            try:
                self.client.set(self.names[key], value)
                outcome = "ok"
            except Exception as exc:
                outcome = classify(exc)
            end = time.monotonic()
            self.ops.append(Op("w", self.names[key], value, start, end, outcome))
            if outcome != "ok":
                time.sleep(ERROR_SLEEP_S)
                continue
            t_fault = self.t_fault
            if (
                self.recovered_at is None
                and t_fault is not None
                and start >= t_fault
                and self.in_target[key]
            ):
                self.recovered_at = end
                self.recovered.set()


def read_back(client: RedisCluster, keys: set[str]) -> dict[str, int | None]:
    """Each key's value; a key that cannot be read in 5 tries is left out (unreadable)."""
    out: dict[str, int | None] = {}
    for key in sorted(keys):
        for _ in range(5):
            try:
                got = client.get(key)
                out[key] = None if got is None else int(got)
                break
            except Exception:
                time.sleep(0.1)
    return out


# -- sides -----------------------------------------------------------------------------------


@dataclass
class Target:
    shard: int  # 1-based, by slot order
    name: str
    pid: int
    slots: set[int]


@dataclass
class TrialResult:
    side: str
    variant: str
    trial: int
    shard: int
    unavailability: float | None
    lost: int
    unreadable: int
    ok: int
    errors: int
    unknown: int
    no_quorum: int = 0
    notes: list[str] = field(default_factory=list)


class Side(Protocol):
    label: str

    def start(self) -> None: ...
    def close(self) -> None: ...
    def target(self, shard_index: int) -> Target: ...
    def client(self) -> RedisCluster: ...
    def fault(self, target: Target, sig: signal.Signals) -> None: ...
    def after_failover(self, target: Target, sig: signal.Signals) -> None: ...
    def wait_ready(self, timeout: float) -> bool: ...
    def check(self, target: Target, variant: str, wall_fault: float) -> list[str]: ...
    def no_quorum(self, wall_fault: float) -> int: ...


def _is_engine(pid: int, marker: str) -> bool:
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return any(marker in a for a in argv)


def _cont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


class Ours:
    label = "cachefleet"

    def __init__(self, topology: Path, variant: str, tmp: Path, retries: int) -> None:
        data = yaml.safe_load(topology.read_text())
        data["name"] = f"bench-fo-{os.getpid()}-{variant}"
        data["ports"] = {"base": "auto"}
        data["router"] = {**data.get("router", {}), "port": "auto"}
        self.name: str = data["name"]
        self.retries = retries
        self.topo_path = tmp / f"{self.name}.yaml"
        self.topo_path.write_text(yaml.safe_dump(data))
        self.state = tmp / "state"
        self.cmd = [sys.executable, "-m", "cachefleet"]
        self.paused: set[int] = set()
        self.started = False
        self.router: tuple[str, int] = ("127.0.0.1", 0)

    @property
    def root(self) -> Path:
        return self.state / self.name

    def _run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.cmd, *args, "--state-dir", str(self.state)],
            capture_output=True, text=True, cwd=ROOT, timeout=timeout,
        )  # fmt: skip

    def start(self) -> None:
        self.started = True
        proc = self._run("up", str(self.topo_path), "--detach", timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"cachefleet up failed: {proc.stderr.strip()[-2000:]}")
        host, port = self.status()["router"]["address"].rsplit(":", 1)
        self.router = (host, int(port))

    def close(self) -> None:
        for pid in self.paused:
            _cont(pid)
        if not self.started:
            return
        pids = self._pids()
        try:
            proc = self._run("down", self.name, "--purge", timeout=120)
            if proc.returncode != 0:
                log(f"cachefleet down failed: {proc.stderr.strip()}")
        finally:
            left = [p for p in pids if _is_engine(p, str(self.state))]
            for pid in left:  # only what this run started (the marker is our temp state dir)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if left:
                log(f"cachefleet down left {len(left)} processes running; killed {left}")

    def _pids(self) -> list[int]:
        out = []
        for f in (self.root / "pids").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                out.append(int(f.read_text().split()[0]))
        return out

    def status(self) -> dict[str, Any]:
        proc = self._run("status", self.name, "--json", timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"cachefleet status failed: {proc.stderr.strip()}")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def target(self, shard_index: int) -> Target:
        shards = sorted(self.status()["shards"], key=lambda s: min(r[0] for r in s["slots"]))
        shard = shards[shard_index]
        name = shard["primary"]["name"]
        pid = int((self.root / "pids" / f"node.{name}.pid").read_text().split()[0])
        if not _is_engine(pid, str(self.state)):
            raise RuntimeError(f"pid {pid} of {name} is not a node of this run")
        ranges = [(int(a), int(b)) for a, b in shard["slots"]]
        return Target(shard_index + 1, name, pid, ranges_to_slots(ranges))

    def client(self) -> RedisCluster:
        return make_client(*self.router, self.retries)

    def fault(self, target: Target, sig: signal.Signals) -> None:
        if sig == signal.SIGSTOP:
            self.paused.add(target.pid)
        os.kill(target.pid, sig)

    def after_failover(self, target: Target, sig: signal.Signals) -> None:
        if sig == signal.SIGSTOP:
            _cont(target.pid)
            self.paused.discard(target.pid)
        # a killed node is restarted by its zone agent

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                st = self.status()
                nodes = [n for s in st["shards"] for n in [s["primary"], *s["replicas"]] if n]
                if st["state"] == "available" and all(n["healthy"] for n in nodes):
                    return True
            time.sleep(0.3)
        return False

    def events_since(self, wall: float) -> list[dict[str, Any]]:
        out = []
        path = self.root / "events.jsonl"
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if ev.get("ts", 0) >= wall:
                        out.append(ev)
        return out

    def check(self, target: Target, variant: str, wall_fault: float) -> list[str]:
        """Anomalies of this trial, judged from the event log and the status afterwards."""
        notes: list[str] = []
        events = self.events_since(wall_fault - 0.5)
        switches = [e for e in events if e["type"] == "switch_primary"]
        mine = [e for e in switches if e.get("shard") == target.shard]
        done = [
            e
            for e in events
            if e["type"] == "failover_completed" and e.get("shard") == target.shard
        ]
        if done:
            notes.append(f"failover_completed +{done[0]['ts'] - wall_fault:.2f} s")
        if len(mine) != 1:
            notes.append(f"ANOMALY: {len(mine)} switch_primary events for shard {target.shard}")
        if len(switches) != len(mine):
            notes.append(f"ANOMALY: switch_primary on other shards: {len(switches) - len(mine)}")
        for kind in ("failover_aborted", "no_quorum", "no_eligible_replica"):
            if any(e["type"] == kind for e in events):
                notes.append(f"ANOMALY: {kind} event")
        try:
            st = self.status()
            shard = next(
                s for s in st["shards"] if target.slots & ranges_to_slots(map(tuple, s["slots"]))
            )
            replicas = {r["name"]: r for r in shard["replicas"]}
            if target.name not in replicas or not replicas[target.name]["healthy"]:
                notes.append(f"ANOMALY: {target.name} is not back as a healthy replica")
        except Exception as exc:
            notes.append(f"ANOMALY: status failed after the trial: {exc}")
        return notes

    def no_quorum(self, wall_fault: float) -> int:
        """no_quorum events (a failover round without a majority: split votes) since the
        fault."""
        return sum(1 for e in self.events_since(wall_fault - 0.5) if e["type"] == "no_quorum")

    def excerpt(self, wall_fault: float) -> list[str]:
        return [
            json.dumps({**e, "t_rel": round(e["ts"] - wall_fault, 3)}, separators=(",", ":"))
            for e in self.events_since(wall_fault - 0.5)
        ]


class Anchor:
    """The engine's own failover on a plain Redis Cluster (bench/anchor.py)."""

    label = "anchor"

    def __init__(self, topology: Path, tmp: Path, retries: int) -> None:
        self.cluster = PlainCluster(
            load_topology(topology), tmp=tmp, full_coverage=False, logs=True
        )
        self.retries = retries

    def start(self) -> None:
        self.cluster.launch()
        self.cluster.create()
        if not self.wait_ready(READY_TIMEOUT_S):
            raise RuntimeError("anchor cluster did not become ready")

    def close(self) -> None:
        self.cluster.close()

    def target(self, shard_index: int) -> Target:
        addr, slots = self.cluster.primaries()[shard_index]
        i = self.cluster.addrs.index(addr)
        name = f"node{i}@{addr[0]}:{addr[1]}"
        return Target(shard_index + 1, name, self.cluster.procs[i].pid, slots)

    def client(self) -> RedisCluster:
        return make_client(*self.cluster.addrs[0], self.retries)

    def fault(self, target: Target, sig: signal.Signals) -> None:
        os.kill(target.pid, sig)

    def after_failover(self, target: Target, sig: signal.Signals) -> None:
        if sig == signal.SIGSTOP:
            _cont(target.pid)
        else:
            self.cluster.restart(self.cluster.index_of_pid(target.pid))

    def wait_ready(self, timeout: float) -> bool:
        return wait_until(self.cluster.whole, timeout, 0.05)

    def check(self, target: Target, variant: str, wall_fault: float) -> list[str]:
        role = self.cluster.role_of(self.cluster.index_of_pid(target.pid))
        return [] if "slave" in role else [f"faulted node is {role}, not a replica"]

    def no_quorum(self, wall_fault: float) -> int:
        return 0  # the engine's failover has no such event


# -- trials ----------------------------------------------------------------------------------


def run_trial(
    side: Side, variant: str, trial: int, trials: int, shards: int, first_value: int
) -> TrialResult:
    sig = SIGNALS[variant]
    target = side.target((trial - 1) % shards)
    client = side.client()
    prefix = f"{side.label[0]}{variant}{trial}:"
    writer = Writer(client, prefix, target.slots, first_value)
    notes: list[str] = []
    acted = False
    try:
        writer.start()
        time.sleep(STEADY_S)
        wall_fault = time.time()
        t_fault = time.monotonic()
        writer.t_fault = t_fault
        side.fault(target, sig)
        if not writer.recovered.wait(ACT_AFTER_S):
            notes.append(f"no failover observed within {ACT_AFTER_S:.0f} s")
        side.after_failover(target, sig)
        acted = True
        writer.recovered.wait(max(0.0, t_fault + MAX_WRITE_S - STEADY_S - time.monotonic()))
        if writer.recovered_at is not None:
            time.sleep(AFTER_S)
    finally:
        writer.stop.set()
        writer.join(timeout=10)
        if not acted:
            with contextlib.suppress(Exception):
                side.after_failover(target, sig)
        client.close()
    if writer.is_alive():
        notes.append("writer did not stop within 10 s")
    ready = side.wait_ready(READY_TIMEOUT_S)
    if not ready:
        notes.append(f"ANOMALY: cluster not whole again within {READY_TIMEOUT_S:.0f} s")
    ops = list(writer.ops)
    reader = side.client()
    try:
        read = read_back(reader, {op.key for op in ops})
    finally:
        reader.close()
    readable = [op for op in ops if op.key in read]
    unreadable = len({op.key for op in ops} - read.keys())
    lost = len(lost_writes(readable, read))
    with contextlib.suppress(Exception):
        notes.extend(side.check(target, variant, wall_fault))
    no_quorum = 0
    with contextlib.suppress(Exception):
        no_quorum = side.no_quorum(wall_fault)
    in_target = {name for name, hit in zip(writer.names, writer.in_target, strict=True) if hit}
    unavail = availability(ops, t_fault, in_target.__contains__).window_s
    outcomes = [op.outcome for op in ops]
    result = TrialResult(
        side=side.label, variant=variant, trial=trial, shard=target.shard,
        unavailability=unavail, lost=lost, unreadable=unreadable,
        ok=outcomes.count("ok"), errors=outcomes.count("error"),
        unknown=outcomes.count("unknown"), no_quorum=no_quorum, notes=notes,
    )  # fmt: skip
    shown = "none" if unavail is None else f"{unavail:.2f} s"
    extra = f"; {'; '.join(notes)}" if notes else ""
    log(
        f"{variant} trial {trial}/{trials} {side.label} shard {target.shard}: {shown}, "
        f"lost {lost} (ok {result.ok}, error {result.errors}, unknown {result.unknown}"
        f"{f', unreadable {unreadable}' if unreadable else ''}){extra}"
    )
    if isinstance(side, Ours) and (lost or any("ANOMALY" in n for n in notes)):
        result.notes.extend(f"  event {line}" for line in side.excerpt(wall_fault))
    if not ready:
        raise RuntimeError(f"{side.label}: cluster not whole again; stopping this side")
    return result


SIDES = {"cachefleet": "cachefleet", "anchor": "anchor (engine)"}


def table(variant: str, trials: int, results: dict[str, list[TrialResult]]) -> list[str]:
    """The printed table: one column per side that ran (both unless --only)."""
    what = {"kill": "SIGKILL", "pause": "SIGSTOP, SIGCONT after the failover"}[variant]
    sides = [s for s in SIDES if s in results]

    def times(side: str) -> list[float]:
        return [r.unavailability for r in results[side] if r.unavailability is not None]

    def stat(side: str, q: float) -> str:
        got = percentile(times(side), q)
        return "n/a" if got is None else f"{got:.2f}"

    def sets(side: str) -> str:
        rs = results[side]
        return "/".join(str(sum(getattr(r, a) for r in rs)) for a in ("ok", "errors", "unknown"))

    def no_quorum(side: str) -> str:
        rs = results[side]
        if side != "cachefleet":
            return "-"
        return f"{sum(r.no_quorum for r in rs)} in {sum(r.no_quorum > 0 for r in rs)}/{len(rs)}"

    rows = [
        ("unavailability p50 (s)", [stat(s, 50) for s in sides]),
        ("unavailability p99 (s)", [stat(s, 99) for s in sides]),
        ("unavailability max (s)", [stat(s, 100) for s in sides]),
        ("trials without recovery", [str(len(results[s]) - len(times(s))) for s in sides]),
        ("lost acknowledged writes", [str(sum(r.lost for r in results[s])) for s in sides]),
        (
            "trials with any loss",
            [f"{sum(r.lost > 0 for r in results[s])}/{len(results[s])}" for s in sides],
        ),
        ("ok / error / unknown SETs", [sets(s) for s in sides]),
        ("no_quorum events (trials)", [no_quorum(s) for s in sides]),
    ]
    out = [f"{variant} ({what} of one shard's primary), {trials} trials per side:"]
    out.append(f"  {'':28}" + "".join(f" {SIDES[s]:>18}" for s in sides))
    for label, cells in rows:
        out.append(f"  {label:28}" + "".join(f" {c:>18}" for c in cells))
    ours = percentile(times("cachefleet"), 50) if "cachefleet" in results else None
    anchor = percentile(times("anchor"), 50) if "anchor" in results else None
    if ours is not None and anchor is not None:
        out.append(
            f"  ratio anchor/cachefleet of p50 unavailability: {anchor / max(ours, 1e-9):.2f}x"
        )
    return out


def run_side(
    side: Side, variant: str, trials: int, shards: int, deadline: float
) -> list[TrialResult]:
    results: list[TrialResult] = []
    try:
        side.start()
        for t in range(1, trials + 1):
            if time.monotonic() > deadline:
                log(f"time budget spent; {side.label} {variant} stops after {t - 1} trials")
                break
            results.append(run_trial(side, variant, t, trials, shards, 10_000_000 * t))
    except Exception as exc:
        log(f"{side.label} {variant}: stopped: {type(exc).__name__}: {exc}")
    finally:
        side.close()
    return results


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "default.yaml"))
    parser.add_argument("--trials", type=int, default=10, help="per variant per side")
    parser.add_argument("--variants", default="kill,pause", help="comma list of kill, pause")
    parser.add_argument("--client-retries", type=int, default=0, help="RedisCluster retries")
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds for the whole run")
    parser.add_argument(
        "--only", choices=sorted(SIDES), default=None, help="run one side only (default: both)"
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := [v for v in variants if v not in SIGNALS]:
        parser.error(f"unknown variant(s) {bad}; choose from {sorted(SIGNALS)}")
    topology = Path(args.topology)
    topo = load_topology(topology)
    deadline = time.monotonic() + args.budget
    tables: list[str] = []
    notes: list[str] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        for variant in variants:
            results: dict[str, list[TrialResult]] = {}
            sides: list[Side] = []
            if args.only in (None, "cachefleet"):
                sides.append(Ours(topology, variant, Path(tmp), args.client_retries))
            if args.only in (None, "anchor"):
                sides.append(Anchor(topology, Path(tmp), args.client_retries))
            for side in sides:
                results[side.label] = run_side(side, variant, args.trials, topo.shards, deadline)
            tables.extend([*table(variant, args.trials, results), ""])
            for rs in results.values():
                for r in rs:
                    if r.lost or any("ANOMALY" in n or "no failover" in n for n in r.notes):
                        notes.append(f"{r.side} {r.variant} trial {r.trial} shard {r.shard}:")
                        notes.extend(f"  {n}" for n in r.notes)
    print(
        f"failover, {topology.name} ({topo.shards} shards x (1+{topo.replicas_per_shard}), "
        f"{len(topo.zones)} zones, down_after_ms = cluster-node-timeout = "
        f"{topo.sentinels.down_after_ms}), same engine binary both sides"
    )
    print(writer_sentence(args.client_retries))
    print()
    print("\n".join(tables).rstrip())
    if notes:
        print("\nanomalies:")
        print("\n".join(notes))


if __name__ == "__main__":
    main()
