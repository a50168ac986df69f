"""Latency of the management API's Describe calls with 20 registered clusters.

Registers N stopped clusters in a temp state dir (plan.json each, as `down` leaves them, so
the machine is not the limit), starts `cachefleet serve`, and times DescribeReplicationGroups
(all groups, and one group) and DescribeCacheClusters over one kept-alive HTTP connection,
as boto3 sends them. Prints p50/p99/max per call; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachefleet import ports  # noqa: E402
from cachefleet.plan import build_plan  # noqa: E402
from cachefleet.state import ClusterDir  # noqa: E402
from cachefleet.topology import parse_topology  # noqa: E402


def register(state: Path, count: int) -> None:
    for i in range(count):
        name = f"bench{i:02d}"
        raw = {"name": name, "zones": ["az-a", "az-b"], "shards": 2, "replicas_per_shard": 1,
               "ports": {"base": 40000 + 8 * i}, "router": {"port": 45000 + i}}  # fmt: skip
        plan = build_plan(
            parse_topology(raw), raw, engine_binary="/bin/false", node_ports=None,
            bus=("127.0.0.1", 46000 + i), router_port=45000 + i,
        )  # fmt: skip
        cdir = ClusterDir(state, name)
        cdir.make()
        cdir.plan_path.write_text(plan.to_json())


def timed(conn: http.client.HTTPConnection, body: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("POST", "/", body, {"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        data = resp.read()
        out.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            raise SystemExit(f"{body}: HTTP {resp.status}: {data[:300]!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        register(state, args.clusters)
        port = ports.allocate_one()
        serve = subprocess.Popen(
            [sys.executable, "-m", "cachefleet", "serve", "--port", str(port),
             "--state-dir", str(state)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while ports.port_free("127.0.0.1", port) and time.monotonic() < deadline:
                time.sleep(0.05)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            calls = {
                f"DescribeReplicationGroups (all {args.clusters})":
                    "Action=DescribeReplicationGroups&Version=2015-02-02",
                "DescribeReplicationGroups (one)":
                    "Action=DescribeReplicationGroups&Version=2015-02-02&ReplicationGroupId=bench07",
                f"DescribeCacheClusters ({4 * args.clusters} nodes)":
                    "Action=DescribeCacheClusters&Version=2015-02-02&ShowCacheNodeInfo=true",
            }  # fmt: skip
            print(f"{args.clusters} stopped clusters of 2 shards x 2 nodes, {args.requests} calls")
            for what, body in calls.items():
                timed(conn, body, 20)  # warm up
                ms = sorted(timed(conn, body, args.requests))
                p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
                print(
                    f"  {what:<42} p50 {statistics.median(ms):6.2f} ms  p99 {p99:6.2f} ms  "
                    f"max {ms[-1]:6.2f} ms"
                )
        finally:
            serve.terminate()
            serve.wait(10)


if __name__ == "__main__":
    main()
