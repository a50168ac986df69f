"""The cluster supervisor: one process per cluster that keeps its control plane running.

``python -m cachefleet.ops.supervisor --cluster NAME --state-dir D``, started by ``up`` and
left running by ``up --detach``. Every tick it compares the processes the cluster should have
(broker, zone agents, sentinels, router workers) with those that run, and restarts the missing
ones with per-process back-off; each restart is a ``process_restarted`` event. It also serves
the cluster's Prometheus metrics (:mod:`cachefleet.ops.metrics_server`) and takes the
automatic snapshots the topology asks for, with their retention. After a restart
of the embedded broker, which keeps nothing, it publishes the last layout again. The zone agents
restart the supervisor in turn (an exclusive lock on ``supervisor.lock`` keeps it to one).
``down`` first sets the ``stopping`` marker: the supervisor then exits by itself, and nothing
starts it again until the next ``up``.

Engine nodes are not here: each zone agent supervises its own zone's nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import enum
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from redis.exceptions import RedisError

from cachefleet import bus, snapshots
from cachefleet.announce import emit_event, publish_layout
from cachefleet.errors import CachefleetError
from cachefleet.layout import Layout, LayoutError
from cachefleet.log import configure
from cachefleet.ops import snapshot as snapshot_ops
from cachefleet.ops.lifecycle import control_processes
from cachefleet.ops.metrics_server import MetricsServer
from cachefleet.plan import Plan
from cachefleet.proc import ProcessLock, live_processes, spawn, write_pid
from cachefleet.state import ClusterDir, state_home

TICK_S = 0.2
BACKOFF_MIN_S = 0.0  # the first restart is immediate
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_S = 30.0  # a process that lived this long is healthy again: its back-off resets


class Hold(enum.Enum):
    """Why a missing process is not restarted on this tick."""

    STOPPING = "stopping"  # `down` is stopping the cluster
    BACKOFF = "backoff"  # it died again soon after its last restart


@dataclass
class History:
    """What the supervisor remembers of one process across ticks."""

    restarts: int = 0
    backoff_s: float = BACKOFF_MIN_S
    started_at: float | None = None  # when it was last (re)started
    missing_since: float | None = None


@dataclass(frozen=True)
class Restart:
    process: str
    down_for_s: float


@dataclass(frozen=True)
class Decision:
    restart: tuple[Restart, ...]
    held: Mapping[str, Hold] = field(default_factory=dict)


def decide(
    expected: list[str],
    live: Mapping[str, int],
    history: dict[str, History],
    *,
    stopping: bool,
    now: float,
) -> Decision:
    """Which missing processes to restart now. Updates `history` (missing_since, back-off
    reset for processes that have been up long enough); pure otherwise."""
    restart: list[Restart] = []
    held: dict[str, Hold] = {}
    for name in expected:
        h = history.setdefault(name, History())
        if name in live:
            h.missing_since = None
            if h.started_at is not None and now - h.started_at >= STABLE_S:
                h.backoff_s = BACKOFF_MIN_S
            continue
        if h.missing_since is None:
            h.missing_since = now
        if stopping:
            held[name] = Hold.STOPPING
            continue
        due = (h.started_at or 0.0) + h.backoff_s
        if now < due:
            held[name] = Hold.BACKOFF
            continue
        restart.append(Restart(name, now - h.missing_since))
    return Decision(tuple(restart), held)


def record_restart(h: History, now: float) -> None:
    h.restarts += 1
    h.started_at = now
    h.missing_since = None
    h.backoff_s = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, 2 * h.backoff_s))


class Supervisor:
    def __init__(self, *, plan: Plan, cdir: ClusterDir) -> None:
        self.plan = plan
        self.cdir = cdir
        self.procs = control_processes(plan, cdir)
        self.history: dict[str, History] = {}
        self.held: dict[str, Hold] = {}  # the last reason logged per process
        self.log = structlog.get_logger("supervisor").bind(cluster=plan.name)
        self.stop = asyncio.Event()
        self.seen_epoch = -1  # the config epoch of the retained layout, as the bus holds it
        self.bus = bus.BusLink(
            host=plan.bus_host,
            port=plan.bus_port,
            name="supervisor",
            subscriptions=(bus.topic(plan.name, "layout"),),
            on_message=self._on_message,
            on_connect=self._on_connect,
            log=self.log,
        )
        self._republish: asyncio.Task[None] | None = None

    def _on_message(self, topic: str, payload: bytes) -> None:
        data = bus.decode(payload)
        if data is None:
            return
        try:  # validated like every daemon's input: a forged epoch must not hold back a republish
            layout = Layout.from_dict(data, self.plan)
        except LayoutError:
            return
        self.seen_epoch = max(self.seen_epoch, layout.epoch)

    def _on_connect(self) -> None:
        """After any (re)connect: the broker may be a fresh one that holds no layout."""
        self.seen_epoch = -1
        if self._republish is None or self._republish.done():
            self._republish = asyncio.get_running_loop().create_task(self._republish_layout())

    async def _republish_layout(self) -> None:
        await asyncio.sleep(1.0)  # retained messages arrive right after SUBSCRIBE
        layout: Layout | None = self.cdir.load_layout()
        if layout is not None and self.seen_epoch < layout.epoch:
            publish_layout(self.bus, self.cdir, layout)
            self.log.info("layout_republished", config_epoch=layout.epoch)

    def tick(self) -> None:
        now = time.monotonic()
        live = live_processes(self.cdir)
        decision = decide(
            list(self.procs), live, self.history, stopping=self.cdir.stopping(), now=now
        )
        for r in decision.restart:
            h = self.history[r.process]
            pid = spawn(self.cdir, r.process, self.procs[r.process])
            record_restart(h, now)
            self.log.warning(
                "process_restarted", process=r.process, pid=pid, down_for_s=round(r.down_for_s, 2)
            )
            emit_event(
                self.bus,
                self.cdir,
                "process_restarted",
                process=r.process,
                pid=pid,
                restarts=h.restarts,
                down_for_ms=round(r.down_for_s * 1000),
            )
        for name, why in decision.held.items():  # why a missing process waits, once per change
            if self.held.get(name) is not why:
                self.log.info("process_held", process=name, reason=why.value)
        self.held = dict(decision.held)

    async def backups(self) -> None:
        """Automatic snapshots (the topology's ``backup``), then retention: the newest
        ``retention`` automatic snapshots of this cluster are kept."""
        backup = self.plan.topology.backup
        home = self.cdir.home
        started = dt.datetime.now(dt.UTC)
        retry_at = 0.0
        while not self.stop.is_set() and not self.cdir.stopping():
            mine = [
                m
                for m in snapshots.list_all(home)
                if m.cluster == self.plan.name and m.kind == "automatic"
            ]
            # the first interval counts from the supervisor's start, not from the epoch
            last = max((snapshots.created_at(m) for m in mine), default=None)
            if last is None and backup.interval_s is not None:
                last = started
            now = dt.datetime.now(dt.UTC)
            ready = self.cdir.load_layout() is not None and time.monotonic() >= retry_at
            if ready and snapshots.automatic_due(backup, now, last):
                try:
                    ok = await self.take_snapshot()
                except Exception:  # never the end of automatic snapshots, nor of the supervisor
                    self.log.exception("snapshot_crashed")
                    ok = False
                if not ok:
                    retry_at = time.monotonic() + min(60.0, float(backup.interval_s or 60))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)

    async def take_snapshot(self) -> bool:
        emit_event(self.bus, self.cdir, "snapshot_started", snapshot_kind="automatic")
        t0 = time.monotonic()
        try:
            m = await snapshot_ops.create(
                self.plan.name,
                snapshot_id=None,
                state_dir=str(self.cdir.home),
                kind="automatic",
                out=lambda msg: self.log.info("snapshot_progress", detail=msg),
            )
        except (CachefleetError, RedisError, OSError) as exc:
            self.log.warning("snapshot_failed", error=str(exc))
            emit_event(
                self.bus, self.cdir, "snapshot_failed", snapshot_kind="automatic", error=str(exc)
            )
            return False
        emit_event(
            self.bus,
            self.cdir,
            "snapshot_completed",
            snapshot=m.id,
            snapshot_kind="automatic",
            keys=m.keys,
            bytes=m.bytes,
            seconds=round(time.monotonic() - t0, 3),
        )
        retention = self.plan.topology.backup.retention
        found = snapshots.list_all(self.cdir.home)
        for old in snapshots.to_expire(found, self.plan.name, retention):
            snapshot_ops.delete(old, state_dir=str(self.cdir.home))
            emit_event(self.bus, self.cdir, "snapshot_deleted", snapshot=old, reason="retention")
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.log.info("supervisor_started", processes=sorted(self.procs))
        bus_stop = asyncio.Event()
        pump = asyncio.create_task(self.bus.run(bus_stop), name="supervisor.bus")
        backups = None
        if self.plan.topology.backup.automatic:
            backups = asyncio.create_task(self.backups(), name="supervisor.backups")
        try:
            async with MetricsServer(plan=self.plan, cdir=self.cdir, log=self.log):
                while not self.stop.is_set() and not self.cdir.stopping():
                    self.tick()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), TICK_S)
        finally:
            bus_stop.set()
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pump), 2.0)
            pump.cancel()
            if backups is not None:
                backups.cancel()
            if self._republish is not None:
                self._republish.cancel()
            self.log.info("supervisor_stopped")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cachefleet.ops.supervisor")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()
    cdir = ClusterDir(state_home(args.state_dir), args.cluster)
    lock = ProcessLock(cdir.supervisor_lock)
    if not lock.acquire() or cdir.stopping():
        return  # another supervisor of this cluster runs, or the cluster is being stopped
    write_pid(cdir.pid_file("supervisor"), os.getpid())
    cdir.supervisor_claim.unlink(missing_ok=True)
    configure("supervisor", cluster=args.cluster)
    asyncio.run(Supervisor(plan=cdir.load_plan(), cdir=cdir).run())


if __name__ == "__main__":
    main()
