"""Time from `cachefleet up --detach` to available (every replica in sync), median of N,
beside a plain `redis-cli --cluster create` of the same shape on the same binary.

Both sides use the same engine settings (cluster mode, diskless sync without delay), so the
figure compares orchestration, not engine tuning. The plain create is timed from starting the
engine processes to the same end condition: cluster_state:ok on every node and every replica's
master_link_status:up. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from anchor import ROOT, PlainCluster, wait_until

from cachefleet.topology import load_topology


def time_cachefleet(topology: Path, trial: int) -> float:
    data = yaml.safe_load(topology.read_text())
    data["name"] = f"bench-up-{os.getpid()}-{trial}"
    data["ports"] = {"base": "auto"}
    data["router"] = {**data.get("router", {}), "port": "auto"}
    with tempfile.TemporaryDirectory() as tmp:
        topo = Path(tmp) / "topology.yaml"
        topo.write_text(yaml.safe_dump(data))
        state = Path(tmp) / "state"
        cmd = [sys.executable, "-m", "cachefleet"]
        t0 = time.monotonic()
        subprocess.run([*cmd, "up", str(topo), "--detach", "--state-dir", str(state)],
                       check=True, capture_output=True, cwd=ROOT)  # fmt: skip
        elapsed = time.monotonic() - t0
        subprocess.run([*cmd, "down", data["name"], "--purge", "--state-dir", str(state)],
                       check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    return elapsed


def time_plain_create(topology: Path) -> float:
    """From starting the engine processes to every replica in sync (bench/anchor.py)."""
    cluster = PlainCluster(load_topology(topology))
    try:
        t0 = time.monotonic()
        cluster.launch()
        cluster.create()
        if not wait_until(cluster.synced, 120.0, 0.02):
            raise RuntimeError("the plain cluster did not get in sync within 120 s")
        return time.monotonic() - t0
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "default.yaml"))
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    topology = Path(args.topology)
    ours = [time_cachefleet(topology, t) for t in range(args.trials)]
    plain = [time_plain_create(topology) for _ in range(args.trials)]
    m_ours, m_plain = statistics.median(ours), statistics.median(plain)
    print(f"up time, {topology.name}, median of {args.trials} (all replicas in sync):")
    print(f"  cachefleet up --detach      {m_ours:6.2f} s   trials {[round(x, 2) for x in ours]}")
    print(f"  redis-cli --cluster create  {m_plain:6.2f} s   trials {[round(x, 2) for x in plain]}")
    print(f"  ratio cachefleet/plain      {m_ours / m_plain:6.2f}x  (target <= 1.5x and < 5 s)")


if __name__ == "__main__":
    main()
