"""Alarms, operator side: the supervisor's runner and ``cachefleet alarms NAME``.

:class:`AlarmRunner` lives in the cluster supervisor's metrics server: after every collection
pass it feeds the pass's samples to the pure :class:`cachefleet.alarms.Evaluator`, turns each
transition into an ``alarm_state_changed`` event, runs the new state's actions (an HTTP POST
to a loopback URL, a command with a timeout) in the background, and writes every alarm's
state to ``<cluster>/alarms.json``, which ``cachefleet alarms`` reads (and a restarted
supervisor starts from).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cachefleet import bus, metrics
from cachefleet.alarms import Action, AlarmSpec, Evaluator, Point, State, Transition
from cachefleet.announce import emit_event
from cachefleet.errors import StateError
from cachefleet.metrics import Kind, Sample
from cachefleet.state import ClusterDir, state_home


def alarms_path(cdir: ClusterDir) -> Path:
    return cdir.root / "alarms.json"


def read_states(cdir: ClusterDir) -> dict[str, Any]:
    """Alarm name -> its saved status (empty when none was written yet)."""
    try:
        data = json.loads(alarms_path(cdir).read_text())
    except (OSError, ValueError):
        return {}
    found = data.get("alarms") if isinstance(data, dict) else None
    return found if isinstance(found, dict) else {}


def points(samples: Iterable[Sample]) -> list[Point]:
    """The samples of a pass as alarms see them: by the service's metric name."""
    return [
        Point(s.metric.service, s.labels, s.value, s.metric.kind is Kind.COUNTER)
        for s in samples
        if s.metric.service
    ]


class AlarmRunner:
    def __init__(
        self, *, specs: Iterable[AlarmSpec], cdir: ClusterDir, publisher: bus.Publisher, log: Any
    ) -> None:
        self.cdir, self.publisher, self.log = cdir, publisher, log
        self.evaluator = Evaluator(specs, restored=read_states(cdir))
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def shortest_period_s(self) -> float:
        return min((s.spec.period_s for s in self.evaluator.statuses()), default=60)

    def after_pass(self, samples: Iterable[Sample], at: float) -> list[Transition]:
        """Judge the periods that ended before this pass, then add its samples."""
        transitions = self.evaluator.evaluate(at)
        self.evaluator.feed(points(samples), at)
        for t in transitions:
            self.log.info("alarm_state_changed", alarm=t.alarm, state=t.new.value, reason=t.reason)
            emit_event(self.publisher, self.cdir, "alarm_state_changed", **t.to_event())
            spec = self.evaluator.alarms[t.alarm].spec
            for action in spec.actions_for(t.new):
                task = asyncio.get_running_loop().create_task(self._run(action, t))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        self.save()
        return transitions

    def samples(self, cluster: str) -> list[Sample]:
        """cachefleet_alarm_state: 1 for each alarm's state, 0 for its other states."""
        return [
            Sample(
                metrics.ALARM_STATE,
                metrics.labels_of(cluster=cluster, alarm=s.spec.name, state=state.value),
                1.0 if s.state is state else 0.0,
            )
            for s in self.evaluator.statuses()
            for state in State
        ]

    def save(self) -> None:
        data = {
            "updated": time.time(),
            "alarms": {s.spec.name: s.to_dict() for s in self.evaluator.statuses()},
        }
        path = alarms_path(self.cdir)
        tmp = path.with_name(f".alarms.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    def payload(self, t: Transition) -> dict[str, Any]:
        return {"cluster": self.cdir.name, "ts": t.at, **t.to_event()}

    async def _run(self, action: Action, t: Transition) -> None:
        try:
            if action.kind == "http_post":
                await self._post(action, t)
            else:
                await self._command(action, t)
        except Exception as exc:  # an action never stops the metrics server
            self.log.warning(
                "alarm_action_failed",
                alarm=t.alarm,
                action=action.kind,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _post(self, action: Action, t: Transition) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=action.timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(action.url, json=self.payload(t)) as resp,
        ):
            self.log.info("alarm_action", alarm=t.alarm, action="http_post", status=resp.status)

    async def _command(self, action: Action, t: Transition) -> None:
        env = {
            **os.environ,
            "CACHEFLEET_CLUSTER": self.cdir.name,
            "CACHEFLEET_ALARM": t.alarm,
            "CACHEFLEET_ALARM_STATE": t.new.value,
            "CACHEFLEET_ALARM_OLD_STATE": t.old.value,
        }
        proc = await asyncio.create_subprocess_exec(
            *action.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            await asyncio.wait_for(
                proc.communicate(json.dumps(self.payload(t)).encode()), action.timeout_s
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command and its children
            await proc.wait()
            self.log.warning("alarm_action_timeout", alarm=t.alarm, argv=list(action.argv))
            return
        self.log.info("alarm_action", alarm=t.alarm, action="command", code=proc.returncode)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


# -- `cachefleet alarms NAME` ----------------------------------------------------------------


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_alarms(
    name: str, *, state_dir: str | None, as_json: bool, out: Callable[[str], None]
) -> int:
    """Every alarm of the cluster with its state, reason and last transition."""
    cdir = ClusterDir(state_home(state_dir), name)
    if not cdir.root.exists():
        raise StateError(f"no cluster named {name!r} under {cdir.home}")
    plan = cdir.load_plan()
    saved = read_states(cdir)
    rows = []
    for spec in plan.topology.alarms:
        got = saved.get(spec.name) or {}
        rows.append(
            {
                "name": spec.name,
                "state": got.get("state", State.INSUFFICIENT_DATA.value),
                "reason": got.get("reason", "not evaluated yet"),
                "since": got.get("since"),
                "evaluated_at": got.get("evaluated_at"),
                "datapoints": got.get("datapoints", []),
                "condition": spec.describe(),
                "metric": spec.metric,
            }
        )
    if as_json:
        out(json.dumps({"cluster": name, "alarms": rows}, indent=1))
        return 0
    if not rows:
        out(f"{name}: no alarms (add an alarms: section to the topology)")
        return 0
    width = max(len(r["name"]) for r in rows)
    out(f"{'ALARM':<{width}}  {'STATE':<17}  {'SINCE':<20}  CONDITION")
    for r in rows:
        out(f"{r['name']:<{width}}  {r['state']:<17}  {_when(r['since']):<20}  {r['condition']}")
        out(f"{'':<{width}}  {r['reason']}")
    return 0
