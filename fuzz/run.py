"""`make fuzz`: hostile RESP against a live router and hostile messages on the bus, beside a
well-behaved client that must notice nothing.

    python -m fuzz.run [--inputs 1000000] [--seconds 1800] [--seed 1] [--connections 8]

Starts a default-shaped cluster (3 zones, 3 shards x 1 replica) in a temp state dir, then
until the input count or the time is reached: several connections each send batches of fuzz
inputs (fuzz.inputs) to the router and read what comes back; one task publishes fuzzed
payloads on the cluster's bus topics; one well-behaved client writes and reads back its own
keys through the router and counts every error and every reply that is not what it wrote.
About once a second it checks that no router worker, sentinel, agent or broker died (same
pid), that the router still answers, and the routers' memory. Prints one line of figures per
check and a summary; exits 1 when anything died, the good client saw an error or a mismatch,
or the routers' memory went past --max-rss-mb. Stops the cluster whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import redis
import yaml

from cachefleet import bus
from cachefleet.events import read_events
from cachefleet.proc import process_rss, read_pid, running
from cachefleet.state import ClusterDir
from fuzz import inputs

TOPOLOGY = {
    "name": "fuzz",
    "engine": "valkey",
    "zones": ["az-a", "az-b", "az-c"],
    "shards": 3,
    "replicas_per_shard": 1,
    "node_type": "cache.small",
    "ports": {"base": "auto"},
    "router": {"port": "auto"},
}
WATCHED = ("router", "router.1", "sentinel.s1", "sentinel.s2", "sentinel.s3", "broker",
           "agent.az-a", "agent.az-b", "agent.az-c")  # fmt: skip


@dataclass
class Figures:
    inputs: int = 0
    batches: int = 0
    bus_messages: int = 0
    good_ops: int = 0
    good_errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    died: list[str] = field(default_factory=list)
    max_rss_mb: float = 0.0
    router_unreachable: int = 0
    #: what else happened in the cluster meanwhile (events, and the routers' backend log
    #: lines): a good client's error is explained by these or it is a finding
    cluster_events: dict[str, int] = field(default_factory=dict)
    router_backend_log: dict[str, int] = field(default_factory=dict)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cachefleet", *args], capture_output=True, text=True, timeout=180
    )


async def fuzz_connection(
    host: str, port: int, rng: random.Random, batch: int, fig: Figures, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        except (OSError, TimeoutError):
            fig.router_unreachable += 1
            await asyncio.sleep(0.05)
            continue
        try:
            payload = b"".join(inputs.batch(rng, batch))
            writer.write(payload)
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.drain(), 2.0)
                if writer.can_write_eof():
                    writer.write_eof()  # done sending: the router answers, then closes
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:  # take what the router answers
                    if not await asyncio.wait_for(reader.read(1 << 16), 1.0):
                        break
            fig.inputs += batch
            fig.batches += 1
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def good_client(host: str, port: int, fig: Figures, stop: threading.Event) -> None:
    """Writes unique values to its own keys (spread over every shard) and reads them back,
    singly, pipelined and with MGET; any error or other value is a finding. Runs in its own
    thread, so the fuzzers' input generation cannot starve it."""
    client = redis.Redis(host=host, port=port, socket_timeout=10, decode_responses=True)
    i = 0
    try:
        while not stop.is_set():
            i += 1
            keys = [f"good:{i}:{j}" for j in range(4)]
            want = [f"{k}={i}" for k in keys]
            try:
                pipe = client.pipeline(transaction=False)
                for k, v in zip(keys, want, strict=True):
                    pipe.set(k, v)
                if pipe.execute() != [True] * len(keys):
                    fig.mismatches.append(f"op {i}: SET replies")
                got = [client.get(k) for k in keys] + client.mget(keys)
                if got != want * 2:
                    fig.mismatches.append(f"op {i}: {got!r} != {want * 2!r}")
                fig.good_ops += 3 * len(keys)
            except redis.RedisError as exc:
                fig.good_errors.append(f"op {i}: {type(exc).__name__}: {exc}")
    finally:
        client.close()


async def bus_fuzzer(
    host: str, port: int, cluster: str, rng: random.Random, fig: Figures, stop: asyncio.Event
) -> None:
    """Publishes with the cluster's own `cli` credential, the one allowed on every topic: the
    daemons must survive whatever a holder of the strongest login sends (an anonymous
    sender is refused by the broker before any daemon sees a byte)."""
    while not stop.is_set():
        try:
            async with bus.client(host, port, "fuzz") as c:
                while not stop.is_set():
                    topic = inputs.bus_topic(rng, cluster)
                    retain = not topic.endswith("/layout") and rng.random() < 0.3
                    await c.publish(topic, inputs.bus_payload(rng), qos=0, retain=retain)
                    fig.bus_messages += 1
                    await asyncio.sleep(0.01)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


def check(cdir: ClusterDir, pids: dict[str, int], fig: Figures) -> None:
    for name, pid in pids.items():
        now = read_pid(cdir.pid_file(name))
        if (now != pid or not running(pid)) and name not in fig.died:
            fig.died.append(name)
    rss = sum(process_rss(pids[n]) or 0 for n in pids if n.startswith("router"))
    fig.max_rss_mb = max(fig.max_rss_mb, rss / 2**20)


async def campaign(args: argparse.Namespace, home: Path) -> Figures:
    topo = home / "fuzz.yaml"
    topo.write_text(yaml.safe_dump(TOPOLOGY))
    up = cli("up", str(topo), "--detach", "--state-dir", str(home / "state"))
    if up.returncode != 0:
        raise SystemExit(f"fuzz: cluster did not start\n{up.stdout}\n{up.stderr}")
    cdir = ClusterDir(home / "state", "fuzz")
    plan = cdir.load_plan()
    await asyncio.sleep(1.0)  # the supervisor and every worker have written their pid files
    pids = {n: p for n in WATCHED if (p := read_pid(cdir.pid_file(n))) is not None}
    fig = Figures()
    stop = asyncio.Event()
    rng = random.Random(args.seed)
    host, port = plan.router_host, plan.router_port
    tasks = [
        asyncio.create_task(
            fuzz_connection(host, port, random.Random(rng.random()), args.batch, fig, stop)
        )
        for _ in range(args.connections)
    ]
    good_stop = threading.Event()
    good = threading.Thread(target=good_client, args=(host, port, fig, good_stop), daemon=True)
    good.start()
    if args.bus:
        tasks.append(
            asyncio.create_task(
                bus_fuzzer(
                    plan.bus_host, plan.bus_port, plan.name, random.Random(args.seed), fig, stop
                )
            )
        )
    t0 = time.monotonic()
    try:
        while fig.inputs < args.inputs and time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(1.0)
            check(cdir, pids, fig)
            if not args.quiet:
                print(
                    f"t={time.monotonic() - t0:6.1f}s inputs {fig.inputs:>9,} "
                    f"bus {fig.bus_messages:>7,} good ops {fig.good_ops:>7,} "
                    f"errors {len(fig.good_errors)} mismatches {len(fig.mismatches)} "
                    f"died {fig.died or 0} router RSS {fig.max_rss_mb:.0f} MB",
                    flush=True,
                )
    finally:
        stop.set()
        good_stop.set()
        good.join(15)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        check(cdir, pids, fig)
        explain(cdir, fig)
    return fig


#: Events and router log lines that cut a backend connection with requests on it.
EXPLAINING_EVENTS = ("sdown", "failover_started", "switch_primary", "node_replaced")
EXPLAINING_LOG = (
    "backend_protocol_error",
    "backend_request_timeout",
    "node_unreachable",
    "layout_applied",
)


def explain(cdir: ClusterDir, fig: Figures) -> None:
    for event in read_events(cdir.events_path):
        kind = str(event.get("type"))
        if kind in EXPLAINING_EVENTS:
            fig.cluster_events[kind] = fig.cluster_events.get(kind, 0) + 1
    for log in cdir.logs.glob("router*.log*"):
        with contextlib.suppress(OSError):
            for line in log.read_text(errors="replace").splitlines():
                for kind in EXPLAINING_LOG:
                    if f'"{kind}"' in line:
                        fig.router_backend_log[kind] = fig.router_backend_log.get(kind, 0) + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n")[0])
    p.add_argument("--inputs", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=1800.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--batch", type=int, default=10, help="inputs per connection")
    p.add_argument("--no-bus", dest="bus", action="store_false")
    p.add_argument("--max-rss-mb", type=float, default=300.0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--keep", action="store_true", help="keep the stopped cluster's state dir")
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="cachefleet-fuzz-"))
    # SIGTERM ends the campaign like Ctrl-C: the cluster is still stopped below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    t0 = time.monotonic()
    try:
        fig = asyncio.run(campaign(args, home))
    finally:
        keep = [] if args.keep else ["--purge"]
        cli("down", "fuzz", *keep, "--state-dir", str(home / "state"))
        if args.keep:
            print(f"fuzz: the cluster's state, logs and events are kept in {home / 'state'}")
        else:
            shutil.rmtree(home, ignore_errors=True)  # nothing of the run is left behind
    elapsed = time.monotonic() - t0
    summary: dict[str, Any] = {
        "inputs": fig.inputs,
        "bus_messages": fig.bus_messages,
        "seconds": round(elapsed, 1),
        "inputs_per_s": round(fig.inputs / elapsed),
        "crashes": len(fig.died),
        "died": fig.died,
        "good_client_ops": fig.good_ops,
        "good_client_errors": len(fig.good_errors),
        # a write whose backend connection was lost after it was sent: see the README
        "good_client_outcome_unknown": sum("outcome unknown" in e for e in fig.good_errors),
        "good_client_mismatches": len(fig.mismatches),
        "router_max_rss_mb": round(fig.max_rss_mb, 1),
        "cluster_events": fig.cluster_events,
        "router_backend_log": fig.router_backend_log,
        "first_errors": (fig.good_errors + fig.mismatches)[:5],
    }
    ok = (
        not fig.died
        and not fig.good_errors
        and not fig.mismatches
        and fig.max_rss_mb <= args.max_rss_mb
        and fig.good_ops > 0
        and (fig.bus_messages > 0 or not args.bus)
    )
    summary["passed"] = ok
    print(json.dumps(summary) if args.json else "fuzz: " + json.dumps(summary, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
