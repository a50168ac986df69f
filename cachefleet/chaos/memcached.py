"""Chaos runs against memcached clusters: nodes killed or paused under two workloads.

`cachefleet chaos` runs this instead of the shard-based runner when the scenario's topology
is a memcached cluster. Each trial runs, side by side, ``workload.writers`` proxy clients (set
then get of one key at a time through the configuration endpoint's proxy) and as many
discovery clients (they poll ``config get cluster`` every second and send each key straight to
a node, chosen by CRC32 of the key modulo the node count, as a plain client would), fires the
faults (``kill`` or ``pause`` of ``node:NAME`` or ``node:random``), and reports per workload the
operations, the errors and the error window (first failed operation to the end of the last
one), and the discovery version before and after. A memcached node that is replaced comes back
empty, so lost writes are not counted; ``expect.max_unavailable_s`` bounds the error windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachefleet import memcache
from cachefleet.chaos.scenario import Fault, Scenario
from cachefleet.errors import CachefleetError, ClusterTimeout, ScenarioError
from cachefleet.ops import lifecycle
from cachefleet.ops.memcached import discovery_version
from cachefleet.ops.status import status
from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import live_processes, read_pid
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import stream_options
from cachefleet.topology import load_topology

Out = Callable[[str], None]
RECOVER_S = 60.0
POLL_S = 1.0  # how often discovery clients ask for the node list


@dataclass
class Op:
    client: str  # "proxy" | "discovery"
    kind: str  # "set" | "get"
    key: str
    start: float  # seconds since the trial started
    end: float
    ok: bool
    detail: str = ""


class TextClient:
    """One memcached text-protocol connection with a deadline per request; reconnects after
    any failure (the next request opens a new connection)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.addr: tuple[str, int] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, addr: tuple[str, int], payload: bytes, *, multi: bool) -> bytes:
        if self.addr != addr:
            self.close()
            self.addr = addr
        try:
            return await asyncio.wait_for(self._call(payload, multi), self.timeout)
        except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError):
            self.close()
            raise

    async def _call(self, payload: bytes, multi: bool) -> bytes:
        if self.writer is None:
            assert self.addr is not None
            # a TLS cluster's endpoint and nodes: TLS, verified against the cluster's CA
            self.reader, self.writer = await asyncio.open_connection(
                *self.addr, **stream_options(*self.addr)
            )
        assert self.reader is not None
        self.writer.write(payload)
        await self.writer.drain()
        line = await self.reader.readuntil(b"\r\n")
        if not multi or not line.startswith(b"VALUE "):
            return line
        size = int(line.split()[3])
        data = await self.reader.readexactly(size + 2)
        end = await self.reader.readuntil(b"\r\n")
        return line + data + end

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class DiscoveredNodes:
    """The node list as a discovery client holds it, refreshed every POLL_S."""

    def __init__(self, endpoint: tuple[str, int]) -> None:
        self.endpoint = endpoint
        self.version = 0
        self.nodes: list[tuple[str, int]] = []

    async def refresh(self) -> None:
        reply = await memcache.call(*self.endpoint, b"config get cluster\r\n", timeout=1.0)
        version = discovery_version(reply)
        if reply is None or version is None:
            return
        line = reply.split(b"\r\n", 1)[1].split(b"\n")[1].decode()
        nodes = []
        for entry in line.split():
            _, ip, port = entry.split("|")
            nodes.append((ip, int(port)))
        self.version, self.nodes = version, nodes

    async def poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)

    def node_for(self, key: str) -> tuple[str, int] | None:
        if not self.nodes:
            return None
        return self.nodes[zlib.crc32(key.encode()) % len(self.nodes)]


async def _worker(
    name: str,
    route: Callable[[str], tuple[str, int] | None],
    keys: list[str],
    history: list[Op],
    t0: float,
    stop: asyncio.Event,
    timeout: float,
    rng: random.Random,
) -> None:
    client = TextClient(timeout)
    n = 0
    while not stop.is_set():
        key = rng.choice(keys)
        n += 1
        value = f"{name}-{n}".encode()
        for kind, payload in (
            ("set", b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value)),
            ("get", b"get %s\r\n" % key.encode()),
        ):
            start = time.monotonic() - t0
            addr = route(key)
            ok, detail = False, "no node list"
            if addr is not None:
                try:
                    reply = await client.call(addr, payload, multi=kind == "get")
                    ok = not reply.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR"))
                    detail = "" if ok else reply.strip().decode(errors="replace")[:120]
                except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError) as exc:
                    detail = type(exc).__name__
            history.append(Op(name.split("-")[0], kind, key, start, time.monotonic() - t0, ok,
                              detail))  # fmt: skip
            if not ok:
                await asyncio.sleep(0.01)  # a failing client retries, not spins
    client.close()


def error_window(ops: list[Op]) -> float:
    """First failed operation's start to the last failed operation's end (0 without errors)."""
    failed = [op for op in ops if not op.ok]
    if not failed:
        return 0.0
    return max(op.end for op in failed) - min(op.start for op in failed)


class MemcachedChaosRun:
    def __init__(
        self,
        scenario: Scenario,
        *,
        state_dir: str | None,
        trials: int | None = None,
        out: Out = print,
        progress: Out | None = None,
    ) -> None:
        self.scenario = scenario
        self.state_dir = state_dir
        self.trials = trials or scenario.trials
        self.out = out
        self.progress = progress or out
        self.topology = load_topology(scenario.topology)
        self.cdir = ClusterDir(state_home(state_dir), self.topology.name)
        self.rng = random.Random(scenario.seed)
        for fault in scenario.faults:
            if fault.kind not in ("kill", "pause") or not fault.target.startswith("node:"):
                raise ScenarioError(
                    scenario.source, "faults", "a memcached scenario kills or pauses node:NAME "
                    "or node:random"
                )  # fmt: skip

    async def _available(self, plan: Plan) -> None:
        deadline = time.monotonic() + RECOVER_S
        state = None
        while time.monotonic() < deadline:
            st = await status(plan.name, state_dir=self.state_dir)
            state = st["state"]
            if state == "available" and st["router"]["running"]:
                return
            await asyncio.sleep(0.3)
        raise ClusterTimeout("cluster recovery", RECOVER_S, f"state {state}")

    def _target(self, plan: Plan, fault: Fault) -> NodeSpec:
        name = fault.target.split(":", 1)[1]
        if name == "random":
            return self.rng.choice(plan.nodes)
        try:
            return plan.node(name)
        except KeyError:
            raise ScenarioError(self.scenario.source, "faults", f"no node {name!r}") from None

    async def _fire(self, plan: Plan, fault: Fault, t0: float, done: list[dict[str, Any]]) -> None:
        await asyncio.sleep(max(0.0, fault.at_s - (time.monotonic() - t0)))
        node = self._target(plan, fault)
        pid = read_pid(self.cdir.pid_file(f"node.{node.name}"))
        if pid is None:
            raise CachefleetError(f"node {node.name} has no pid file")
        at = time.monotonic() - t0
        os.kill(pid, signal.SIGKILL if fault.kind == "kill" else signal.SIGSTOP)
        self.progress(f"  {at:5.2f}s {fault.kind} {node.name} ({node.address}, pid {pid})")
        done.append({"at_s": round(at, 3), "kind": fault.kind, "node": node.name, "pid": pid})
        if fault.kind == "pause":
            try:
                await asyncio.sleep(fault.duration_s or self.scenario.duration_s - at)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    async def run_trial(self, number: int, plan: Plan) -> tuple[dict[str, Any], list[Op]]:
        sc = self.scenario
        await self._available(plan)
        endpoint = (plan.router_host, plan.router_port)
        discovered = DiscoveredNodes(endpoint)
        await discovered.refresh()
        before = discovered.version
        keys = [f"chaos:{i}" for i in range(sc.workload.keys)]
        history: list[Op] = []
        faults: list[dict[str, Any]] = []
        stop = asyncio.Event()
        t0 = time.monotonic()
        timeout = sc.workload.op_timeout_ms / 1000
        async with asyncio.TaskGroup() as tg:
            tg.create_task(discovered.poll(stop))
            for i in range(sc.workload.writers):
                rng = random.Random(sc.seed * 1000 + number * 10 + i)
                tg.create_task(_worker(f"proxy-{i}", lambda _k: endpoint, keys, history, t0,
                                       stop, timeout, rng))  # fmt: skip
                tg.create_task(_worker(f"discovery-{i}", discovered.node_for, keys, history, t0,
                                       stop, timeout, random.Random(rng.random())))  # fmt: skip
            fires = [tg.create_task(self._fire(plan, f, t0, faults)) for f in sc.faults]
            await asyncio.sleep(sc.duration_s)
            stop.set()
            for task in fires:
                task.cancel()
        await self._available(plan)
        await discovered.refresh()
        result: dict[str, Any] = {
            "trial": number,
            "faults": faults,
            "version_before": before,
            "version_after": discovered.version,
            "version_moved": discovered.version > before,
        }
        for client in ("proxy", "discovery"):
            ops = [op for op in history if op.client == client]
            result[client] = {
                "ops": len(ops),
                "errors": sum(1 for op in ops if not op.ok),
                "error_window_s": round(error_window(ops), 3),
            }
        return result, history

    async def run(self) -> tuple[int, Path | None]:
        sc = self.scenario
        owned = not (self.cdir.exists() and live_processes(self.cdir))
        if owned:
            self.progress(f"starting cluster {self.topology.name} from {sc.topology}")
            await lifecycle.up(str(sc.topology), state_dir=self.state_dir, detach=True,
                               out=lambda _m: None)  # fmt: skip
        plan = self.cdir.load_plan()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run_dir = self.cdir.root / "chaos" / f"{stamp}-{sc.name}-{uuid.uuid4().hex[:8]}"
        run_dir.mkdir(parents=True, exist_ok=True)
        trials = []
        try:
            for n in range(1, self.trials + 1):
                self.progress(f"{sc.name}: trial {n}/{self.trials}")
                result, history = await self.run_trial(n, plan)
                (run_dir / f"history-{n}.jsonl").write_text(
                    "".join(json.dumps(asdict(op)) + "\n" for op in history)
                )
                p, d = result["proxy"], result["discovery"]
                self.progress(
                    f"  trial {n}: proxy {p['errors']}/{p['ops']} errors over "
                    f"{p['error_window_s']:.2f}s, discovery clients {d['errors']}/{d['ops']} over "
                    f"{d['error_window_s']:.2f}s, discovery version {result['version_before']} -> "
                    f"{result['version_after']}"
                )
                trials.append(result)
        finally:
            if owned:
                await lifecycle.down(self.topology.name, state_dir=self.state_dir, purge=False,
                                     out=lambda _m: None)  # fmt: skip
        summary = self._summary(trials)
        (run_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
        (run_dir / "report.md").write_text(_markdown(summary))
        self.out(f"chaos {sc.name}: {'passed' if summary['passed'] else 'FAILED'}; "
                 f"report in {run_dir}")  # fmt: skip
        return (0 if summary["passed"] else 1), run_dir

    def _summary(self, trials: list[dict[str, Any]]) -> dict[str, Any]:
        sc = self.scenario
        worst = max(
            (t[c]["error_window_s"] for t in trials for c in ("proxy", "discovery")), default=0.0
        )
        kills = any(f.kind == "kill" for f in sc.faults)
        moved = all(t["version_moved"] for t in trials)
        expect: dict[str, dict[str, Any]] = {
            "discovery_version_moved": {"expected": kills, "got": moved, "met": moved or not kills}
        }
        if sc.expect.max_unavailable_s is not None:
            expect["max_unavailable_s"] = {
                "expected": sc.expect.max_unavailable_s,
                "got": worst,
                "met": worst <= sc.expect.max_unavailable_s,
            }
        return {
            "scenario": sc.name,
            "source": sc.source,
            "topology": str(sc.topology),
            "engine": "memcached",
            "workload_text": (
                f"{sc.workload.writers} proxy client(s) and {sc.workload.writers} discovery "
                f"client(s), set then get over {sc.workload.keys} keys, op timeout "
                f"{sc.workload.op_timeout_ms} ms"
            ),
            "trials": trials,
            "worst_error_window_s": worst,
            "expect": expect,
            "passed": all(e["met"] for e in expect.values()),
        }


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# chaos {summary['scenario']} ({summary['engine']}): "
        f"{'passed' if summary['passed'] else 'FAILED'}",
        "",
        f"Workload: {summary['workload_text']}.",
        "",
        "| trial | fault | proxy errors / ops | proxy window s | discovery errors / ops | "
        "discovery window s | version |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in summary["trials"]:
        fault = ", ".join(f"{f['kind']} {f['node']} at {f['at_s']}s" for f in t["faults"])
        p, d = t["proxy"], t["discovery"]
        lines.append(
            f"| {t['trial']} | {fault} | {p['errors']} / {p['ops']} | {p['error_window_s']} | "
            f"{d['errors']} / {d['ops']} | {d['error_window_s']} | "
            f"{t['version_before']} -> {t['version_after']} |"
        )
    lines += ["", "| expectation | expected | got | met |", "|---|---|---|---|"]
    for name, e in summary["expect"].items():
        lines.append(f"| {name} | {e['expected']} | {e['got']} | {e['met']} |")
    return "\n".join(lines) + "\n"
