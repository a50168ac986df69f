"""Fault injection: signals to the cluster's processes, zone partitions with packet filters,
rolling restarts; the Injector fires a scenario's faults at their times during a trial.

Partitions drop traffic between one zone's address and every other zone's address (both
directions) with iptables rules on the loopback interface, each tagged with a comment
``cachefleet-chaos:<run-id>`` so that they are always removed at the end of a run — on
success, on error, on Ctrl-C — and so that a later run can clean up after a crashed one.
Traffic from 127.0.0.1 (clients, the bus) is not cut: the clients and the bus sit on a
third site that sees both sides, which is what lets a run observe a split brain at all.
"""

from __future__ import annotations

import asyncio
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cachefleet.chaos.scenario import Fault
from cachefleet.chaos.targets import Target, TargetKind, resolve, shards_hit
from cachefleet.chaos.workload import Trial
from cachefleet.errors import CachefleetError
from cachefleet.layout import Layout
from cachefleet.ops.failover import graceful_failover
from cachefleet.plan import Plan
from cachefleet.proc import read_pid, until_state
from cachefleet.state import ClusterDir

TAG = "cachefleet-chaos"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10)


class PartitionUnavailable(CachefleetError):
    """Packet filters cannot be used here (not root, no iptables, shared zone address)."""


def partition_support(is_root: Callable[[], bool] | None = None) -> str | None:
    """None when partitions can run, else why not (one line, for a clear skip)."""
    root = is_root() if is_root else os.geteuid() == 0
    if not root:
        return "zone partitions need root (they install iptables rules); run as root or skip"
    if shutil.which("iptables") is None:
        return "zone partitions need iptables (apt-get install iptables)"
    return None


@dataclass
class PacketFilter:
    """Installs and removes tagged DROP rules; every rule it adds is remembered."""

    run_id: str
    run: Runner = _run
    installed: list[list[str]] = field(default_factory=list)

    @property
    def comment(self) -> str:
        return f"{TAG}:{self.run_id}"

    def _rule(self, src: str, dst: str) -> list[str]:
        return ["INPUT", "-s", src, "-d", dst, "-m", "comment", "--comment", self.comment,
                "-j", "DROP"]  # fmt: skip

    def cut(self, zone_address: str, others: Sequence[str]) -> None:
        for other in others:
            for src, dst in ((zone_address, other), (other, zone_address)):
                rule = self._rule(src, dst)
                proc = self.run(["iptables", "-I", *rule])
                if proc.returncode != 0:
                    raise PartitionUnavailable(f"iptables refused a rule: {proc.stderr.strip()}")
                self.installed.append(rule)

    def heal(self) -> None:
        """Remove every rule this filter installed (idempotent)."""
        while self.installed:
            rule = self.installed.pop()
            self.run(["iptables", "-D", *rule])

    def clean_leftovers(self) -> int:
        """Remove rules left by any earlier run (crashed or killed); returns how many."""
        proc = self.run(["iptables", "-S", "INPUT"])
        removed = 0
        for line in proc.stdout.splitlines():
            if TAG not in line or not line.startswith("-A INPUT"):
                continue
            spec = shlex.split(line)[2:]  # comments may be quoted
            self.run(["iptables", "-D", "INPUT", *spec])
            removed += 1
        return removed


@contextmanager
def packet_filter(run_id: str, run: Runner = _run) -> Iterator[PacketFilter]:
    """A PacketFilter whose rules are removed however the block ends (errors, Ctrl-C, SIGTERM
    turned into KeyboardInterrupt by the runner)."""
    pf = PacketFilter(run_id=run_id, run=run)
    pf.clean_leftovers()
    try:
        yield pf
    finally:
        pf.heal()


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


@dataclass
class Injector:
    """Fires one trial's faults at their times, recording each (with the time it took effect)
    in the trial and as a progress line."""

    plan: Plan
    cdir: ClusterDir
    state_dir: str | None
    pf: PacketFilter | None
    trial: Trial
    rng: random.Random
    duration_s: float
    progress: Callable[[str], None]

    def record(self, what: str) -> None:
        t = self.trial.now()
        self.trial.faults.append({"t": round(t, 3), "what": what})
        self.progress(f"  t={t:.1f}s {what}")

    def _layout(self) -> Layout:
        layout = self.cdir.load_layout()
        if layout is None:
            raise CachefleetError(f"cluster {self.plan.name} has no layout")
        return layout

    def _pid(self, name: str) -> int | None:
        return read_pid(self.cdir.pid_file(name))

    async def fire(self, fault: Fault) -> None:
        trial = self.trial
        await asyncio.sleep(max(0.0, fault.at_s - trial.now()))
        if fault.kind == "rolling-restart":
            trial.targeted.update(s.id for s in self._layout().shards)
            await self._rolling_restart(fault)
            return
        if fault.kind == "apply":
            await self._apply(fault)
            return
        layout = self._layout()
        target = resolve(fault.target, self.plan, layout, self.rng)
        trial.targeted |= shards_hit(target, layout)
        if fault.kind == "partition":
            await self._partition(fault, target)
            return
        pids = [p for p in (self._pid(n) for n in target.processes) if p]
        sig = signal.SIGKILL if fault.kind == "kill" else signal.SIGSTOP
        for pid in pids:
            if signal_pid(pid, sig) and sig == signal.SIGSTOP:
                trial.paused.add(pid)
        # The fault's time is when it has taken effect (the process is gone or stopped), so
        # no operation started "after the fault" can still have been served by it.
        await until_state(pids, stopped=sig != signal.SIGKILL)
        self.record(f"{fault.kind} {target.description}")
        if fault.kind == "pause" and fault.duration_s:
            await asyncio.sleep(fault.duration_s)
            for pid in pids:
                signal_pid(pid, signal.SIGCONT)
                trial.paused.discard(pid)
            self.record(f"resume {target.description}")

    async def _partition(self, fault: Fault, target: Target) -> None:
        if target.kind is not TargetKind.ZONE or target.zone is None:
            raise CachefleetError(f"a partition cuts off a zone, not {target.description}")
        if self.pf is None:
            raise PartitionUnavailable("no packet filter for this run")
        topology = self.plan.topology
        others = [topology.zone_address(z) for z in topology.zones if z != target.zone]
        self.pf.cut(topology.zone_address(target.zone), others)
        self.record(f"partition {target.description}")
        if fault.duration_s:
            await asyncio.sleep(fault.duration_s)
            self.pf.heal()
            self.record(f"heal {target.description}")

    async def _apply(self, fault: Fault) -> None:
        """`cachefleet apply` to the fault's topology, as its own process (as a user runs it);
        the trial fails when it does not complete."""
        assert fault.topology is not None
        self.record(f"apply {fault.topology.name}")
        state = ["--state-dir", self.state_dir] if self.state_dir else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cachefleet", "apply", str(fault.topology), "--yes", *state,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            self.record("apply still running at the end of the trial: stopped")
            raise
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip().splitlines()[-3:]
            raise CachefleetError(f"apply {fault.topology.name} failed: {' / '.join(tail)}")
        self.record(f"apply {fault.topology.name} completed")

    async def _rolling_restart(self, fault: Fault) -> None:
        """Every node once, one at a time, the way a managed service patches: a primary is
        first failed over gracefully, then the node is stopped (SIGTERM) and its agent
        restarts it."""
        for node in self.plan.nodes:
            if self.trial.now() > self.duration_s - 1:
                self.record("rolling restart: out of time, stopped")
                return
            shard = self._layout().shard(node.shard)
            if shard.primary is not None and shard.primary.name == node.name and shard.replicas:
                self.record(f"graceful failover of shard {node.shard}")
                await graceful_failover(
                    self.plan.name, shard_id=node.shard, to=None, state_dir=self.state_dir
                )
            pid = self._pid(f"node.{node.name}")
            if pid:
                signal_pid(pid, signal.SIGTERM)
            self.record(f"restart {node.name}")
            await asyncio.sleep(fault.interval_s)
