"""What the metrics endpoint costs: the cluster supervisor's CPU while it collects and serves
(a collection pass every 2 s, rendered when a scrape asks for it, every `--interval` s), and
`/metrics` latency.

Starts a cluster of `--shards` x (1 + `--replicas`) nodes (default 10 x 3 = 30 nodes), lets it
settle, then for `--seconds` scrapes every `--interval` s and reads the supervisor's CPU time
(psutil) before and after; then `--requests` back-to-back scrapes for the latency percentiles.
The supervisor's CPU includes its process supervision (a tick every 0.2 s), measured alone
first with the same window while nothing scrapes (collection still runs: it is not optional).
The cluster carries `--alarms` alarms (10 s periods, evaluated after every pass) and the
collector computes its cost series once a minute; both are timed on their own too.
Prints figures; asserts nothing. Figures taken while other work runs on the machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from cachefleet.alarms import Evaluator
from cachefleet.ops.alarms import points
from cachefleet.ops.cost import cluster_bill
from cachefleet.ops.metrics_server import Collector
from cachefleet.proc import live_processes
from cachefleet.state import ClusterDir

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> str:
    cmd = [sys.executable, "-m", "cachefleet", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def status(name: str, state: Path) -> dict[str, object]:
    cmd = [sys.executable, "-m", "cachefleet", "status", name, "--json", "--state-dir", str(state)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout
    data: dict[str, object] = json.loads(out)
    return data


def scrape(address: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        body = resp.read()
    return time.perf_counter() - t0, len(body)


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def _time_passes(collector: Collector, n: int) -> tuple[float, float, float]:
    """Median CPU and wall time of one collection pass (after a first one that connects),
    and the CPU of rendering one pass as text (done once per pass that is scraped)."""
    await collector.collect()
    cpu, wall, render = [], [], []
    for _ in range(n):
        c0, w0 = time.process_time(), time.perf_counter()
        await collector.collect()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        c0 = time.process_time()
        collector.text()
        render.append(time.process_time() - c0)
    await collector.close()
    return statistics.median(cpu), statistics.median(wall), statistics.median(render)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=10)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--alarms", type=int, default=3)
    args = ap.parse_args()
    watched = [  # (metric, statistic, comparison, threshold)
        ("DatabaseMemoryUsagePercentage", "Maximum", "GreaterThanOrEqualToThreshold", 90),
        ("CurrConnections", "Average", "GreaterThanThreshold", 1000),
        ("Evictions", "Sum", "GreaterThanThreshold", 0),
        ("ReplicationLag", "Maximum", "GreaterThanThreshold", 5),
    ]
    alarms = [
        {
            "name": f"alarm-{i}",
            "metric": metric,
            "statistic": stat,
            "period_s": 10,
            "comparison": comparison,
            "threshold": threshold,
        }
        for i, (metric, stat, comparison, threshold) in (
            (i, watched[i % len(watched)]) for i in range(args.alarms)
        )
    ]

    name = f"bench-metrics-{os.getpid()}"
    topo = {
        "name": name,
        "zones": ["az-a", "az-b", "az-c"],
        "shards": args.shards,
        "replicas_per_shard": args.replicas,
        "node_type": "cache.micro",
        "router": {"workers": 1},
        "alarms": alarms,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "topology.yaml"
        path.write_text(yaml.safe_dump(topo))
        state = Path(tmp) / "state"
        cli("up", str(path), "--detach", "--state-dir", str(state))
        try:
            deadline = time.monotonic() + 60
            st = status(name, state)
            while not (st.get("metrics") or {}).get("address"):  # type: ignore[union-attr]
                if time.monotonic() > deadline:
                    raise RuntimeError("no metrics address within 60 s")
                time.sleep(0.5)
                st = status(name, state)
            address = str(st["metrics"]["address"])  # type: ignore[index]
            sup = int(st["processes"]["supervisor"])  # type: ignore[index]
            nodes = args.shards * (1 + args.replicas)
            time.sleep(5)  # the first passes (COMMAND tables, connections) are not the steady state

            c0, t0 = cpu_seconds(sup), time.monotonic()
            time.sleep(args.seconds)
            idle = (cpu_seconds(sup) - c0) / (time.monotonic() - t0)

            c0, t0 = cpu_seconds(sup), time.monotonic()
            scrapes = 0
            while time.monotonic() - t0 < args.seconds:
                scrape(address)
                scrapes += 1
                time.sleep(max(0.0, t0 + scrapes * args.interval - time.monotonic()))
            busy = (cpu_seconds(sup) - c0) / (time.monotonic() - t0)

            # One collection pass of the same code in this process: what the 2 s loop costs.
            collector = Collector(
                plan=ClusterDir(state, name).load_plan(), cdir=ClusterDir(state, name)
            )
            passes = asyncio.run(_time_passes(collector, 10))
            # Alarm evaluation of one pass's samples, and one bill (the cost series).
            evaluator = Evaluator(collector.plan.topology.alarms)
            sample_points = points(collector.samples)
            c0 = time.process_time()
            for i in range(20):
                evaluator.evaluate(1000.0 + 2 * i)
                evaluator.feed(sample_points, 1000.0 + 2 * i)
            alarm_pass = (time.process_time() - c0) / 20
            c0 = time.process_time()
            cluster_bill(ClusterDir(state, name), collector.plan, since=None, now=time.time())
            bill_cpu = time.process_time() - c0
            # What the supervisor's own tick (every 0.2 s) spends finding live processes.
            cdir = ClusterDir(state, name)
            c0 = time.process_time()
            for _ in range(20):
                live = live_processes(cdir)
            tick = (time.process_time() - c0) / 20

            c0 = cpu_seconds(sup)
            latencies, size = [], 0
            for _ in range(args.requests):
                dt, size = scrape(address)
                latencies.append(dt)
            per_scrape = (cpu_seconds(sup) - c0) / args.requests
            latencies.sort()
            p50 = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]

            print(f"cluster: {nodes} nodes ({args.shards} shards x {1 + args.replicas}), "
                  f"collection every 2 s")  # fmt: skip
            print(f"supervisor CPU, nothing scraping:          {100 * idle:5.2f} % of one core")
            print(f"supervisor CPU, scraped every {args.interval:g} s:      "
                  f"{100 * busy:5.2f} % of one core")  # fmt: skip
            print(f"supervisor CPU per scrape (back to back):  {1000 * per_scrape:5.2f} ms")
            print(f"one collection pass (in this process):     {1000 * passes[0]:5.1f} ms CPU, "
                  f"{1000 * passes[1]:.1f} ms wall (median of 10)")  # fmt: skip
            print(f"rendering one pass for a scrape:           {1000 * passes[2]:5.1f} ms CPU")
            label = f"evaluating {args.alarms} alarms on one pass:"
            print(f"{label:<43}{1000 * alarm_pass:5.2f} ms CPU")
            print(f"one bill (cost series, once a minute):     {1000 * bill_cpu:5.2f} ms CPU")
            print(f"supervision: live_processes() over {len(live)} pid files: {1000 * tick:.1f} ms "
                  f"CPU per tick, {100 * tick / 0.2:.1f} % of one core at 5 ticks/s")  # fmt: skip
            print(f"/metrics: {size} bytes, p50 {1000 * p50:.2f} ms, p99 {1000 * p99:.2f} ms "
                  f"over {args.requests} requests")  # fmt: skip
        finally:
            cli("down", name, "--purge", "--state-dir", str(state))


if __name__ == "__main__":
    main()
