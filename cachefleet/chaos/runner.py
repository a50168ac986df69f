"""`cachefleet chaos SCENARIO.yaml`: run a recorded workload, inject faults on a schedule,
check the history, write the report.

One trial: wait until the cluster is available, start writers and readers, fire the faults at
their times (printing a live line for each, and one whenever a shard gets a new primary),
stop the workload, undo what is still in force (resume, heal), restore killed processes,
wait until the cluster is available again, read every key, and check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisError, ResponseError

from cachefleet.chaos import checker, report
from cachefleet.chaos.checker import Op
from cachefleet.chaos.faults import PacketFilter, packet_filter, partition_support, signal_pid
from cachefleet.chaos.scenario import Fault, Scenario, load_scenario
from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.events import EventTail
from cachefleet.nodes import NodeLink
from cachefleet.ops import lifecycle
from cachefleet.ops.status import status
from cachefleet.plan import Plan
from cachefleet.proc import live_processes, read_pid, until_state
from cachefleet.slots import SLOTS, key_slot
from cachefleet.state import ClusterDir, state_home
from cachefleet.topology import load_topology

Out = Callable[[str], None]
RECOVER_S = 90.0
EXIT_SKIPPED = 4  # `cachefleet chaos` when the scenario cannot run here (see --allow-skip)


class Trial:
    """The mutable record of one trial while it runs."""

    def __init__(self, number: int, t0: float) -> None:
        self.number = number
        self.t0 = t0
        self.history: list[Op] = []
        self.faults: list[dict[str, Any]] = []
        self.failovers: list[dict[str, Any]] = []
        self.paused: set[int] = set()

    def now(self) -> float:
        return time.monotonic() - self.t0


class SlotMap:
    """slot -> primary address, read from the configuration endpoint (`CLUSTER SLOTS` on the
    router, which follows the layout the sentinels publish)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.endpoint = NodeLink(host=host, port=port)
        self.timeout = timeout
        self.table: list[tuple[str, int] | None] = [None] * SLOTS

    def lookup(self, key: str) -> tuple[str, int] | None:
        return self.table[key_slot(key)]

    async def refresh(self) -> bool:
        reply = await self.endpoint.call("CLUSTER", "SLOTS", timeout=self.timeout)
        if not isinstance(reply, list):
            return False
        table: list[tuple[str, int] | None] = [None] * SLOTS
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            for slot in range(start, end + 1):
                table[slot] = (host, int(primary[1]))
        self.table = table
        return True

    async def close(self) -> None:
        await self.endpoint.close()


class ChaosRun:
    def __init__(
        self,
        scenario: Scenario,
        *,
        state_dir: str | None,
        trials: int | None = None,
        out: Out = print,
        progress: Out | None = None,
        allow_skip: bool = False,
    ) -> None:
        self.scenario = scenario
        self.allow_skip = allow_skip
        self.state_dir = state_dir
        self.trials = trials or scenario.trials
        self.out = out
        self.progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.topology = load_topology(scenario.topology)
        self.cdir = ClusterDir(state_home(state_dir), self.topology.name)
        self.run_id = uuid.uuid4().hex[:8]
        self.pf: PacketFilter | None = None
        self.keys = [f"chaos:{{{i}}}" for i in range(scenario.workload.keys)]

    # -- cluster lifecycle ------------------------------------------------------------------

    async def _ensure_cluster(self) -> bool:
        """Start the cluster unless it runs; True when this run started it."""
        if self.cdir.exists() and live_processes(self.cdir):
            self.progress(f"attaching to running cluster {self.topology.name}")
            lifecycle.repair(self.cdir.load_plan(), self.cdir)
            return False
        self.progress(f"starting cluster {self.topology.name} from {self.scenario.topology}")
        await lifecycle.up(
            str(self.scenario.topology), state_dir=self.state_dir, detach=True,
            out=lambda _m: None,
        )  # fmt: skip
        return True

    async def _recover(self, plan: Plan) -> float:
        """Restart killed control processes, re-publish the layout if the bus was restarted,
        and wait until every node is healthy; returns how long that took."""
        t = time.monotonic()
        restarted = lifecycle.repair(plan, self.cdir)
        if "broker" in restarted:
            await lifecycle.republish_layout(plan, self.cdir)
        if restarted:
            self.progress(f"  restarted {', '.join(restarted)}")
        deadline = time.monotonic() + RECOVER_S
        last = None
        while time.monotonic() < deadline:
            st = await status(plan.name, state_dir=self.state_dir)
            last = st["state"]
            if (
                st["state"] == "available"
                and all(s["online"] for s in st["sentinels"])
                and st["router"]["running"]
            ):
                return time.monotonic() - t
            await asyncio.sleep(0.3)
        raise ClusterTimeout("cluster recovery", RECOVER_S, f"state {last}")

    # -- targets ------------------------------------------------------------------------------

    def _pid(self, name: str) -> int | None:
        return read_pid(self.cdir.pid_file(name))

    def _resolve(self, target: str, plan: Plan, rng: random.Random) -> tuple[list[str], str]:
        """Pid-file names to signal, and a human description."""
        layout = self.cdir.load_layout()
        assert layout is not None
        kind, _, arg = target.partition(":")
        shard_ids = [s.id for s in layout.shards]
        if kind in ("primary", "replica", "primary-zone"):
            shard_id = rng.choice(shard_ids) if arg == "random" else int(arg)
            shard = layout.shard(shard_id)
            if kind == "replica":
                if not shard.replicas:
                    raise CachefleetError(f"shard {shard_id} has no replica to target")
                node = rng.choice(list(shard.replicas))
                return [
                    f"node.{node.name}"
                ], f"replica of shard {shard_id} ({node.name}, {node.zone})"
            assert shard.primary is not None
            p = shard.primary
            if kind == "primary":
                return [f"node.{p.name}"], f"primary of shard {shard_id} ({p.name}, {p.zone})"
            return self._zone(plan, p.zone), f"zone {p.zone} (primary of shard {shard_id})"
        if kind == "node":
            return [f"node.{arg}"], f"node {arg} ({plan.node(arg).zone})"
        if kind == "sentinel":
            sid = rng.choice([s.id for s in plan.sentinels]) if arg == "random" else arg
            return [f"sentinel.{sid}"], f"sentinel {sid} ({plan.sentinel(sid).zone})"
        if kind == "router":
            return ["router"], "the router"
        if kind == "bus":
            return ["broker"], "the bus broker"
        if kind == "zone":
            zone = rng.choice(list(plan.topology.zones)) if arg == "random" else arg
            return self._zone(plan, zone), f"zone {zone}"
        raise CachefleetError(f"unknown target {target!r}")

    def _address(self, node_name: str) -> str | None:
        try:
            return self.cdir.load_plan().node(node_name).address
        except KeyError:
            return None

    def _zone(self, plan: Plan, zone: str) -> list[str]:
        names = [f"agent.{zone}"]  # first: nothing may restart the zone's nodes meanwhile
        names += [f"node.{n.name}" for n in plan.zone_nodes(zone)]
        names += [f"sentinel.{s.id}" for s in plan.sentinels if s.zone == zone]
        return names

    # -- faults ---------------------------------------------------------------------------------

    async def _fire(self, fault: Fault, trial: Trial, plan: Plan, rng: random.Random) -> None:
        await asyncio.sleep(max(0.0, fault.at_s - trial.now()))
        if fault.kind == "rolling-restart":
            await self._rolling_restart(fault, trial, plan)
            return
        names, what = self._resolve(fault.target, plan, rng)
        if fault.kind == "partition":
            zone = what.split()[1]
            address = plan.topology.zone_address(zone)
            others = [plan.topology.zone_address(z) for z in plan.topology.zones if z != zone]
            assert self.pf is not None
            self.pf.cut(address, others)
            self._record(trial, trial.now(), f"partition {what}")
            if fault.duration_s:
                await asyncio.sleep(fault.duration_s)
                self.pf.heal()
                self._record(trial, trial.now(), f"heal {what}")
            return
        pids = [p for p in (self._pid(n) for n in names) if p]
        sig = signal.SIGKILL if fault.kind == "kill" else signal.SIGSTOP
        for pid in pids:
            if signal_pid(pid, sig) and sig == signal.SIGSTOP:
                trial.paused.add(pid)
        # The fault's time is when it has taken effect (the process is gone or stopped), so
        # no operation started "after the fault" can still have been served by it.
        await until_state(pids, stopped=sig != signal.SIGKILL)
        self._record(trial, trial.now(), f"{fault.kind} {what}")
        if fault.kind == "pause" and fault.duration_s:
            await asyncio.sleep(fault.duration_s)
            for pid in pids:
                signal_pid(pid, signal.SIGCONT)
                trial.paused.discard(pid)
            self._record(trial, trial.now(), f"resume {what}")

    async def _rolling_restart(self, fault: Fault, trial: Trial, plan: Plan) -> None:
        """Every node once, one at a time, the way a managed service patches: a primary is
        first failed over gracefully, then the node is stopped (SIGTERM) and its agent
        restarts it; then wait for it to be a linked replica again."""
        from cachefleet.ops.failover import graceful_failover

        for node in plan.nodes:
            if trial.now() > self.scenario.duration_s - 1:
                self._record(trial, trial.now(), "rolling restart: out of time, stopped")
                return
            layout = self.cdir.load_layout()
            assert layout is not None
            shard = layout.shard(node.shard)
            if shard.primary is not None and shard.primary.name == node.name and shard.replicas:
                self._record(trial, trial.now(), f"graceful failover of shard {node.shard}")
                await graceful_failover(
                    plan.name, shard_id=node.shard, to=None, state_dir=self.state_dir
                )
            pid = self._pid(f"node.{node.name}")
            if pid:
                signal_pid(pid, signal.SIGTERM)
            self._record(trial, trial.now(), f"restart {node.name}")
            await asyncio.sleep(fault.interval_s)

    def _record(self, trial: Trial, t: float, what: str) -> None:
        trial.faults.append({"t": round(t, 3), "what": what})
        self.progress(f"  t={t:.1f}s {what}")

    async def _watch_events(self, trial: Trial, stop: asyncio.Event, offset: int) -> None:
        """Live lines for failovers, from the event log."""
        tail = EventTail(self.cdir.events_path, offset)
        while not stop.is_set():
            for ev in tail.read():
                if ev.get("type") in ("switch_primary", "graceful_failover"):
                    t = ev["ts"] - (time.time() - trial.now())
                    new, zone = ev["new_primary"], ev.get("zone", "?")
                    what = f"shard {ev['shard']} primary now {new} ({zone})"
                    trial.failovers.append(
                        {
                            "t": round(t, 3),
                            "shard": ev["shard"],
                            "what": what,
                            "address": self._address(ev["new_primary"]),
                        }
                    )
                    self.progress(f"  t={t:.1f}s {what}")
                elif ev.get("type") in ("no_quorum", "failover_aborted", "no_eligible_replica"):
                    self.progress(f"  t={trial.now():.1f}s {ev['type']} (shard {ev.get('shard')})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    # -- workload -------------------------------------------------------------------------------

    def _client(self, plan: Plan) -> Any:
        w = self.scenario.workload
        timeout = w.op_timeout_ms / 1000
        if w.via == "router":
            return aredis.Redis(
                host=plan.router_host, port=plan.router_port,
                socket_timeout=timeout, socket_connect_timeout=timeout,
            )  # fmt: skip
        return RedisCluster(
            host=plan.router_host, port=plan.router_port,
            socket_timeout=timeout, socket_connect_timeout=timeout,
        )  # fmt: skip

    async def _writer(
        self, index: int, trial: Trial, plan: Plan, stop: asyncio.Event, counter: Any
    ) -> None:
        w = self.scenario.workload
        mine = self.keys[index :: w.writers]
        client = self._client(plan)
        node_clients: dict[str, aredis.Redis] = {}
        slots = SlotMap(plan.router_host, plan.router_port, w.op_timeout_ms / 1000)
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
            if w.wait:
                await slots.refresh()
            for key in itertools.cycle(mine):
                if stop.is_set():
                    return
                value = next(counter)
                start = trial.now()
                node: str | None = None
                try:
                    if w.wait:
                        outcome, node = await self._write_wait(slots, node_clients, key, value)
                    else:
                        await asyncio.wait_for(client.set(key, value), 2 * w.op_timeout_ms / 1000)
                        outcome = "ok"
                        if w.via == "direct":
                            node = client.get_node_from_key(key).name
                except ResponseError:
                    outcome = "error"
                except (RedisError, OSError, TimeoutError):
                    outcome = "unknown"
                trial.history.append(
                    Op("w", key, value, start, trial.now(), outcome, node, worker=index)
                )
                if outcome != "ok":
                    await asyncio.sleep(0.01)
        finally:
            await client.aclose()
            await slots.close()
            for c in node_clients.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.aclose(), 0.5)

    async def _write_wait(
        self, slots: SlotMap, node_clients: dict[str, aredis.Redis], key: str, value: int
    ) -> tuple[str, str | None]:
        """SET then WAIT on the same connection of the key's primary: acknowledged only when
        the write reached `wait` replicas. The slot map comes from the configuration endpoint
        and is refreshed after any error or timeout."""
        w = self.scenario.workload
        addr = slots.lookup(key)
        if addr is None:
            await slots.refresh()
            addr = slots.lookup(key)
            if addr is None:
                raise ClusterDownError("no slot map from the configuration endpoint")
        name = f"{addr[0]}:{addr[1]}"
        client = node_clients.get(name)
        if client is None:
            client = aredis.Redis(
                host=addr[0], port=addr[1], socket_timeout=w.op_timeout_ms / 1000,
                socket_connect_timeout=w.op_timeout_ms / 1000, single_connection_client=True,
            )  # fmt: skip
            node_clients[name] = client
        try:
            pipe = client.pipeline(transaction=False)
            pipe.set(key, value)
            pipe.execute_command("WAIT", w.wait, w.wait_timeout_ms)
            # an explicit deadline: the client's socket timeout does not bound a pipeline to a
            # paused (SIGSTOPped) node
            deadline = (w.op_timeout_ms + w.wait_timeout_ms) / 1000
            set_reply, acks = await asyncio.wait_for(pipe.execute(raise_on_error=False), deadline)
        except (RedisError, OSError, TimeoutError):
            node_clients.pop(name, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 0.5)
            await slots.refresh()
            raise
        if isinstance(set_reply, Exception):
            await slots.refresh()
            raise set_reply if isinstance(set_reply, ResponseError) else ResponseError(set_reply)
        if isinstance(acks, int) and acks >= w.wait:
            return "ok", name
        return "unknown", name  # applied on the primary, not confirmed replicated

    async def _reader(self, index: int, trial: Trial, plan: Plan, stop: asyncio.Event) -> None:
        rng = random.Random(self.scenario.seed * 1000 + index)
        client = self._client(plan)
        try:
            while not stop.is_set():
                key = rng.choice(self.keys)
                start = trial.now()
                value: int | None = None
                try:
                    timeout = 2 * self.scenario.workload.op_timeout_ms / 1000
                    raw = await asyncio.wait_for(client.get(key), timeout)
                    value = int(raw) if raw is not None else None
                    outcome = "ok"
                except ResponseError:
                    outcome = "error"
                except (RedisError, OSError, TimeoutError):
                    outcome = "unknown"
                trial.history.append(Op("r", key, value, start, trial.now(), outcome, worker=index))
                if outcome != "ok":
                    await asyncio.sleep(0.01)
        finally:
            await client.aclose()

    async def _final_read(self, plan: Plan) -> dict[str, int | None]:
        rc = RedisCluster(host=plan.router_host, port=plan.router_port, socket_timeout=2)
        out: dict[str, int | None] = {}
        deadline = time.monotonic() + 60
        try:
            for key in self.keys:
                while True:
                    try:
                        raw = await rc.get(key)
                        out[key] = int(raw) if raw is not None else None
                        break
                    except (RedisError, OSError, TimeoutError):
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
        finally:
            await rc.aclose()
        return out

    # -- one trial ------------------------------------------------------------------------------

    async def run_trial(self, number: int, plan: Plan) -> dict[str, Any]:
        await self._recover(plan)
        st = await status(plan.name, state_dir=self.state_dir)
        ranges = {s["id"]: [tuple(r) for r in s["slots"]] for s in st["shards"]}
        shard_of = {
            k: next(sid for sid, rs in ranges.items() if any(a <= key_slot(k) <= b for a, b in rs))
            for k in self.keys
        }
        rng = random.Random(self.scenario.seed + number)
        offset = self.cdir.events_path.stat().st_size if self.cdir.events_path.exists() else 0
        trial = Trial(number, time.monotonic())
        stop = asyncio.Event()
        counter = itertools.count(number * 10_000_000 + 1)
        w = self.scenario.workload
        workers = [
            asyncio.create_task(self._writer(i, trial, plan, stop, counter))
            for i in range(w.writers)
        ]
        workers += [
            asyncio.create_task(self._reader(i, trial, plan, stop)) for i in range(w.readers)
        ]
        watcher = asyncio.create_task(self._watch_events(trial, stop, offset))
        faults = [
            asyncio.create_task(self._fire(f, trial, plan, rng)) for f in self.scenario.faults
        ]
        try:
            await asyncio.sleep(self.scenario.duration_s)
        finally:
            stop.set()
            for task in faults:
                task.cancel()
            outcomes = await asyncio.gather(*workers, *faults, return_exceptions=True)
            for pid in list(trial.paused):
                signal_pid(pid, signal.SIGCONT)
            if self.pf is not None and self.pf.installed:
                self.pf.heal()
                self._record(trial, trial.now(), "heal all partitions")
        for res in outcomes:
            if isinstance(res, Exception):
                raise CachefleetError(f"chaos worker failed: {res!r}") from res
        await asyncio.sleep(self.scenario.settle_s)
        recovered_s = await self._recover(plan)
        watcher.cancel()
        final = await self._final_read(plan)
        return self._check(trial, final, shard_of, ranges, recovered_s)

    def _check(
        self,
        trial: Trial,
        final: dict[str, int | None],
        shard_of: dict[str, int],
        ranges: dict[int, list[tuple[int, int]]],
        recovered_s: float,
    ) -> dict[str, Any]:
        history = trial.history
        lost = checker.lost_writes(history, final)
        first_fault = trial.faults[0]["t"] if trial.faults else 0.0
        fault_times = sorted(f["t"] for f in trial.faults)
        avail: dict[str, Any] = {}
        split: dict[str, float] = {}
        for sid in ranges:

            def in_shard(k: str, sid: int = sid) -> bool:
                return shard_of.get(k) == sid

            # measured from the fault that hit this shard: the last one before its first
            # failed write (a trial may first kill a sentinel, then a primary)
            failed = [
                op.end
                for op in history
                if op.kind == "w"
                and op.outcome != "ok"
                and op.end >= first_fault
                and in_shard(op.key)
            ]
            fault_at = first_fault
            if failed:
                fault_at = max((t for t in fault_times if t <= min(failed)), default=first_fault)
            a = checker.availability(history, fault_at, in_shard)
            window = a.window_s
            if window is None and a.errors:
                # never recovered within the trial: count the rest of the trial, at least
                window = self.scenario.duration_s - fault_at
            avail[str(sid)] = {
                "window_s": round(window, 3) if window is not None else None,
                "recovered": a.window_s is not None,
                "error_time_s": round(a.error_time_s, 3),
                "errors": a.errors,
                "affected": a.errors > 0,
            }
            promotions = [
                (fo["t"], fo["address"])
                for fo in trial.failovers
                if fo["shard"] == sid and fo.get("address")
            ]
            split[str(sid)] = round(checker.split_brain_window(history, in_shard, promotions), 3)
        stale = checker.stale_reads(history)
        timeline = f"timeline-{trial.number}.svg"
        return {
            "trial": trial.number,
            "faults": trial.faults,
            "failovers": trial.failovers,
            "ops": len(history),
            "writes_ok": sum(1 for o in history if o.kind == "w" and o.outcome == "ok"),
            "indeterminate": sum(1 for o in history if o.outcome != "ok"),
            "lost_writes": len(lost),
            "lost_examples": [vars(x) for x in lost[:10]],
            "availability": avail,
            "split_brain_s": split,
            "split_brain_max_s": max(split.values(), default=0.0),
            "stale_reads": len(stale),
            "recovered_s": round(recovered_s, 2),
            "timeline": timeline,
            "_history": history,
            "_shard_of": shard_of,
        }

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> tuple[int, Path | None]:
        sc = self.scenario
        if sc.needs_root:
            why = partition_support()
            if why is None and self.topology.zone_addressing == "shared":
                why = "zone partitions need per-zone addresses (zone_addressing: shared)"
            if why is not None:
                self.out(f"chaos {sc.name}: skipped: {why}")
                return (0 if self.allow_skip else EXIT_SKIPPED), None
        owned = await self._ensure_cluster()
        plan = self.cdir.load_plan()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run_dir = self.cdir.root / "chaos" / f"{stamp}-{sc.name}-{self.run_id}"
        run_dir.mkdir(parents=True, exist_ok=True)
        trials: list[dict[str, Any]] = []
        try:
            with contextlib.ExitStack() as stack:
                if sc.needs_root:
                    self.pf = stack.enter_context(packet_filter(self.run_id))
                for n in range(1, self.trials + 1):
                    bar = "#" * n + "-" * (self.trials - n)
                    self.progress(f"[{bar}] {sc.name}: trial {n}/{self.trials}")
                    result = await self.run_trial(n, plan)
                    history = result.pop("_history")
                    shard_of = result.pop("_shard_of")
                    report.write_timeline(
                        run_dir / result["timeline"],
                        title=f"{sc.name} trial {n}",
                        duration_s=sc.duration_s,
                        shards=sorted(int(s) for s in result["availability"]),
                        shard_of=shard_of,
                        history=history,
                        faults=result["faults"],
                        failovers=result["failovers"],
                    )
                    (run_dir / f"history-{n}.jsonl").write_text(
                        "\n".join(json.dumps(vars(op)) for op in history) + "\n"
                    )
                    trials.append(result)
                    affected = [
                        v["window_s"] for v in result["availability"].values() if v["affected"]
                    ]
                    worst = max((x for x in affected if x is not None), default=0.0)
                    self.progress(
                        f"  trial {n}: lost {result['lost_writes']}, unavailable {worst:.2f}s, "
                        f"split brain {result['split_brain_max_s']:.2f}s, ops {result['ops']}"
                    )
        finally:
            self.pf = None
            if owned:
                await lifecycle.down(
                    plan.name, state_dir=self.state_dir, purge=False, out=lambda _m: None
                )
        result = self._aggregate(trials)
        report.write_json(run_dir / "result.json", result)
        report.write_markdown(run_dir / "report.md", result)
        self.out(
            f"chaos {sc.name}: {'passed' if result['passed'] else 'FAILED'}; report in {run_dir}"
        )
        return (0 if result["passed"] else 1), run_dir

    def _aggregate(self, trials: list[dict[str, Any]]) -> dict[str, Any]:
        sc = self.scenario
        windows = [
            v["window_s"]
            for t in trials
            for v in t["availability"].values()
            if v["affected"] and v["window_s"] is not None
        ]
        lost = sum(t["lost_writes"] for t in trials)
        split_max = max((t["split_brain_max_s"] for t in trials), default=0.0)
        agg = {
            "failover_p50_s": checker.percentile(windows, 50),
            "failover_p99_s": checker.percentile(windows, 99),
            "failover_max_s": max(windows) if windows else None,
            "lost_writes": lost,
            "trials_with_loss": sum(1 for t in trials if t["lost_writes"]),
            "split_brain_max_s": split_max,
            "stale_reads": sum(t["stale_reads"] for t in trials),
            "ops": sum(t["ops"] for t in trials),
            "indeterminate": sum(t["indeterminate"] for t in trials),
        }
        expect: dict[str, Any] = {}
        if sc.expect.lost_writes is not None:
            expect["lost_writes"] = {
                "limit": sc.expect.lost_writes, "got": lost, "met": lost <= sc.expect.lost_writes
            }  # fmt: skip
        if sc.expect.max_unavailable_s is not None:
            got = agg["failover_max_s"] or 0.0
            expect["max_unavailable_s"] = {
                "limit": sc.expect.max_unavailable_s, "got": got,
                "met": got <= sc.expect.max_unavailable_s,
            }  # fmt: skip
        if sc.expect.split_brain_s is not None:
            expect["split_brain_s"] = {
                "limit": sc.expect.split_brain_s, "got": split_max,
                "met": split_max <= sc.expect.split_brain_s,
            }  # fmt: skip
        w = sc.workload
        workload_text = (
            f"{w.writers} writer(s) + {w.readers} reader(s) over {w.keys} keys, via {w.via}"
            + (" (redis-py RedisCluster bootstrapped from the router, direct to nodes)"
               if w.via == "direct" else " (plain redis-py client through the router)")
            + f", op timeout {w.op_timeout_ms} ms, redis-py default retries"
            + (f", each write followed by WAIT {w.wait} {w.wait_timeout_ms}" if w.wait else "")
        )  # fmt: skip
        return {
            "scenario": sc.name,
            "source": sc.source,
            "topology": str(sc.topology),
            "seed": sc.seed,
            "duration_s": sc.duration_s,
            "workload": vars(w),
            "workload_text": workload_text,
            "trials": trials,
            "aggregate": agg,
            "expect": expect,
            "passed": all(e["met"] for e in expect.values()),
        }


async def run_scenario(
    path: str,
    *,
    state_dir: str | None,
    trials: int | None,
    out: Out,
    allow_skip: bool = False,
) -> tuple[int, Path | None]:
    """Run a scenario; exit code 0 when it passed, 1 when it failed, EXIT_SKIPPED when it
    could not run here (e.g. partitions without root) unless `allow_skip`."""
    scenario = load_scenario(path)
    runner = ChaosRun(scenario, state_dir=state_dir, trials=trials, out=out, allow_skip=allow_skip)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    # SIGTERM ends the run like Ctrl-C: the finally blocks heal partitions and stop the cluster.
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        return await runner.run()
    except asyncio.CancelledError:
        out(f"chaos {scenario.name}: interrupted; faults undone")
        return 130, None
