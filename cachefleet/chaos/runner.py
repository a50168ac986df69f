"""`cachefleet chaos SCENARIO.yaml`: run a recorded workload, inject faults on a schedule,
check the history, write the report.

One trial: wait until the cluster is available with its primaries where the run found them
(graceful failovers put back any a previous trial moved), start the workload, fire the faults
at their times (a progress line for each, and one whenever a shard gets a new primary), stop
the workload, undo what is still in force (resume, heal), restore killed processes, wait until
the cluster is available again, read every key, and check (checker.check_trial).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from cachefleet.chaos import checker, report
from cachefleet.chaos.faults import (
    Injector,
    PacketFilter,
    packet_filter,
    partition_support,
    signal_pid,
)
from cachefleet.chaos.group import GroupWorkloadRun
from cachefleet.chaos.memcached import MemcachedChaosRun
from cachefleet.chaos.scenario import Scenario, load_scenario
from cachefleet.chaos.targets import Placement, moves_back, placement
from cachefleet.chaos.workload import Trial, WorkloadRun, chaos_keys, shard_of_keys
from cachefleet.credentials import Credentials
from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.events import EventTail
from cachefleet.layout import Layout
from cachefleet.ops import apply, lifecycle
from cachefleet.ops.failover import graceful_failover
from cachefleet.ops.status import status
from cachefleet.plan import Plan
from cachefleet.proc import live_processes
from cachefleet.security import load_secrets
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import ca_for
from cachefleet.topology import load_topology

Out = Callable[[str], None]
RECOVER_S = 90.0
EXIT_SKIPPED = 4  # `cachefleet chaos` when the scenario cannot run here (see --allow-skip)

_log = structlog.get_logger("cachefleet.chaos")


def _log_progress(line: str) -> None:
    _log.info("chaos", line=line)


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
        self.progress = progress or _log_progress
        self.topology = load_topology(scenario.topology)
        self.cdir = ClusterDir(state_home(state_dir), self.topology.name)
        self.run_id = uuid.uuid4().hex[:8]
        self.pf: PacketFilter | None = None
        self.keys = chaos_keys(scenario.workload.keys)
        self.start_placement: Placement | None = None

    # -- cluster lifecycle ------------------------------------------------------------------

    async def _ensure_cluster(self) -> bool:
        """Start the cluster unless it runs; True when this run started it."""
        if self.cdir.exists() and live_processes(self.cdir):
            self.progress(f"attaching to running cluster {self.topology.name}")
            lifecycle.repair(self.cdir.load_plan(), self.cdir)
            return False
        self.progress(f"starting cluster {self.topology.name} from {self.scenario.topology}")
        # `apply` is `up` for an absent cluster, and brings a stopped one that an earlier run
        # changed (a scenario with an apply fault) back to the scenario's topology
        await apply.apply(
            str(self.scenario.topology), state_dir=self.state_dir, dry_run=False,
            assume_yes=True, as_json=False, out=lambda _m: None,
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

    def _layout(self) -> Layout:
        layout = self.cdir.load_layout()
        if layout is None:
            raise CachefleetError(f"cluster {self.topology.name} has no layout")
        return layout

    async def _restore_placement(self, plan: Plan) -> None:
        """Put every primary back where the run found it, so that each trial starts from the
        same placement (a fault that moved primaries would otherwise skew the next trial: a
        zone kill could hit a zone that no longer holds any)."""
        if self.start_placement is None:
            self.start_placement = placement(self._layout())
            return
        moves = moves_back(self.start_placement, self._layout())
        for move in moves:
            self.progress(f"  restoring shard {move.shard}'s primary to {move.to}")
            try:
                await graceful_failover(
                    plan.name, shard_id=move.shard, to=move.to, state_dir=self.state_dir
                )
            except CachefleetError as exc:
                self.progress(f"  could not restore shard {move.shard}: {exc}")
        if moves:
            await self._recover(plan)

    def _address(self, node_name: str) -> str | None:
        try:
            return self.cdir.load_plan().node(node_name).address
        except KeyError:
            return None

    async def _watch_events(self, trial: Trial, stop: asyncio.Event, offset: int) -> None:
        """Progress lines for failovers, from the event log."""
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
                            "address": self._address(new),
                        }
                    )
                    self.progress(f"  t={t:.1f}s {what}")
                elif ev.get("type") in ("no_quorum", "failover_aborted", "no_eligible_replica"):
                    self.progress(f"  t={trial.now():.1f}s {ev['type']} (shard {ev.get('shard')})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    # -- one trial ------------------------------------------------------------------------------

    async def run_trial(
        self, number: int, plan: Plan
    ) -> tuple[dict[str, Any], Trial, dict[str, int]]:
        await self._recover(plan)
        await self._restore_placement(plan)
        st = await status(plan.name, state_dir=self.state_dir)
        ranges = {s["id"]: [(int(a), int(b)) for a, b in s["slots"]] for s in st["shards"]}
        # a cluster-mode-disabled group: one shard that holds every key, no slots
        group = plan.topology.standalone
        shard_of = {k: 1 for k in self.keys} if group else shard_of_keys(self.keys, ranges)
        rng = random.Random(self.scenario.seed + number)
        offset = self.cdir.events_path.stat().st_size if self.cdir.events_path.exists() else 0
        login = load_secrets(self.cdir.root).login("default")  # the token, where there is one
        workload = (GroupWorkloadRun if group else WorkloadRun)(
            self.scenario.workload,
            plan,
            self.keys,
            self.scenario.seed,
            Credentials(*login) if login is not None else None,
            ca_for(plan.router_host, plan.router_port),  # a TLS cluster's CA
        )
        trial = Trial(number, time.monotonic())
        stop = asyncio.Event()
        workers = workload.start(trial, shard_of, stop)
        watcher = asyncio.create_task(self._watch_events(trial, stop, offset))
        injector = Injector(
            plan=plan, cdir=self.cdir, state_dir=self.state_dir, pf=self.pf,
            trial=trial, rng=rng, duration_s=self.scenario.duration_s, progress=self.progress,
        )  # fmt: skip
        faults = [
            asyncio.create_task(injector.fire(f), name=f"fault-{i}")
            for i, f in enumerate(self.scenario.faults)
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
                injector.record("heal all partitions")
        for task, res in zip([*workers, *faults], outcomes, strict=True):
            if isinstance(res, Exception):
                raise CachefleetError(f"chaos task {task.get_name()} failed: {res!r}") from res
        for f in self.scenario.faults:
            done = f"apply {f.topology.name} completed" if f.topology else None
            if done and not any(x["what"] == done for x in trial.faults):
                raise CachefleetError(
                    f"trial {number}: apply {f.topology} did not complete within duration_s"
                )
        await asyncio.sleep(self.scenario.settle_s)
        recovered_s = await self._recover(plan)
        watcher.cancel()
        final = await workload.final_read()
        figures = checker.check_trial(
            trial.history,
            final,
            shard_of=shard_of,
            shards=sorted(ranges),
            fault_times=[f["t"] for f in trial.faults],
            targeted=trial.targeted,
            promotions=[
                (fo["shard"], fo["t"], fo["address"]) for fo in trial.failovers if fo["address"]
            ],
            duration_s=self.scenario.duration_s,
            members=_members(self.cdir.load_plan()),
        )
        result = {
            "trial": number,
            "faults": trial.faults,
            "failovers": trial.failovers,
            "targeted_shards": sorted(trial.targeted),
            **figures,
            "recovered_s": round(recovered_s, 2),
            "timeline": f"timeline-{number}.svg",
        }
        return result, trial, shard_of

    # -- the run --------------------------------------------------------------------------------

    def _skip_reason(self) -> str | None:
        endpoint = self.scenario.workload.via == "endpoint"
        if endpoint != self.topology.standalone:
            raise CachefleetError(
                f"scenario {self.scenario.name}: workload.via: endpoint is for cluster-mode-"
                "disabled groups, and such a group is only reached through it"
            )
        if not self.scenario.needs_root:
            return None
        why = partition_support()
        if why is None and self.topology.zone_addressing == "shared":
            why = "zone partitions need per-zone addresses (zone_addressing: shared)"
        return why

    async def run(self) -> tuple[int, Path | None]:
        sc = self.scenario
        if (why := self._skip_reason()) is not None:
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
                    result, trial, shard_of = await self.run_trial(n, plan)
                    self._write_trial(run_dir, result, trial, shard_of)
                    trials.append(result)
        except BaseException as exc:
            if trials:  # a long run stopped part way keeps the figures of the trials it ran
                partial = self._result(trials)
                partial["stopped"] = f"after {len(trials)} of {self.trials} trials: {exc!r}"
                partial["passed"] = False
                report.write_json(run_dir / "result.json", partial)
                report.write_markdown(run_dir / "report.md", partial)
                self.out(f"chaos {sc.name}: stopped; report of {len(trials)} trials in {run_dir}")
            raise
        finally:
            self.pf = None
            stopped = await self._stop(plan) if owned else True
        result = self._result(trials)
        report.write_json(run_dir / "result.json", result)
        report.write_markdown(run_dir / "report.md", result)
        self.out(
            f"chaos {sc.name}: {'passed' if result['passed'] else 'FAILED'}; report in {run_dir}"
        )
        return (0 if result["passed"] and stopped else 1), run_dir

    async def _stop(self, plan: Plan) -> bool:
        """Stop the cluster this run started. A failure to stop it is said (and fails the
        run) but neither masks the run's own error nor loses its report."""
        try:
            await lifecycle.down(
                plan.name, state_dir=self.state_dir, purge=False, out=lambda _m: None
            )
        except (CachefleetError, OSError, TimeoutError) as exc:
            self.out(
                f"chaos: could not stop cluster {plan.name} ({exc!r}); "
                f"run `cachefleet down {plan.name}`"
            )
            return False
        return True

    def _write_trial(
        self, run_dir: Path, result: dict[str, Any], trial: Trial, shard_of: dict[str, int]
    ) -> None:
        sc = self.scenario
        report.write_timeline(
            run_dir / result["timeline"],
            title=f"{sc.name} trial {trial.number}",
            duration_s=sc.duration_s,
            shards=sorted(int(s) for s in result["availability"]),
            shard_of=shard_of,
            history=trial.history,
            faults=result["faults"],
            failovers=result["failovers"],
        )
        (run_dir / f"history-{trial.number}.jsonl").write_text(
            "\n".join(json.dumps(vars(op)) for op in trial.history) + "\n"
        )
        avail = result["availability"].values()
        worst = max((v["window_s"] for v in avail if v["affected"] and v["window_s"]), default=0.0)
        others = [v["max_gap_s"] for v in avail if not v["targeted"]]
        other = f", other shards' longest gap {max(others):.2f}s" if others else ""
        self.progress(
            f"  trial {trial.number}: lost {result['lost_writes']}, unavailable {worst:.2f}s, "
            f"split brain {result['split_brain_max_s']:.2f}s{other}, ops {result['ops']}"
        )

    def _result(self, trials: list[dict[str, Any]]) -> dict[str, Any]:
        sc = self.scenario
        agg = checker.aggregate(trials)
        expect = checker.expectations(
            agg,
            lost_writes=sc.expect.lost_writes,
            max_unavailable_s=sc.expect.max_unavailable_s,
            split_brain_s=sc.expect.split_brain_s,
        )
        w = sc.workload
        workload_text = (
            f"{w.writers} writer(s) per shard + {w.readers} reader(s) over {w.keys} keys, "
            f"via {w.via}"
            + (" (redis-py RedisCluster bootstrapped from the router, direct to nodes)"
               if w.via == "direct" else " (plain redis-py clients through the primary endpoint)"
               if w.via == "endpoint" else " (plain redis-py client through the router)")
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
    progress: Out | None = None,
    allow_skip: bool = False,
) -> tuple[int, Path | None]:
    """Run a scenario; exit code 0 when it passed, 1 when it failed, EXIT_SKIPPED when it
    could not run here (e.g. partitions without root) unless `allow_skip`. `progress` gets the
    live lines (faults, failovers, one summary per trial); by default they are logged."""
    scenario = load_scenario(path)
    runner: ChaosRun | MemcachedChaosRun
    if load_topology(scenario.topology).is_memcached:
        runner = MemcachedChaosRun(
            scenario, state_dir=state_dir, trials=trials, out=out, progress=progress
        )
    else:
        runner = ChaosRun(
            scenario, state_dir=state_dir, trials=trials, out=out, progress=progress,
            allow_skip=allow_skip,
        )  # fmt: skip
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


def _members(plan: Plan) -> dict[int, set[str]]:
    """Each shard's node addresses as the workload's clients see them (host:port)."""
    out: dict[int, set[str]] = {}
    for n in plan.nodes:
        out.setdefault(n.shard, set()).add(n.address)
    return out
