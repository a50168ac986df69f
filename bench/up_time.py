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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachefleet import ports  # noqa: E402
from cachefleet.engine import resolve_cli_binary, resolve_engine_binary  # noqa: E402
from cachefleet.plan import place  # noqa: E402
from cachefleet.topology import load_topology  # noqa: E402


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
    topo = load_topology(topology)
    binary = resolve_engine_binary(topo.engine, topo.engine_binary)
    cli = resolve_cli_binary()
    assert cli, "redis-cli or valkey-cli needed"
    placed = place(topo)
    hosts = [topo.zone_address(z) for _, _, z in placed]
    # redis-cli --cluster create takes primaries first, then replicas.
    order = sorted(range(len(placed)), key=lambda i: placed[i][1] != 0)
    got = ports.allocate(hosts, pairs=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-plain-"))
    procs = []
    try:
        t0 = time.monotonic()
        for i, host in enumerate(hosts):
            port, bus_port = got[i]
            d = tmp / str(i)
            d.mkdir()
            args = {
                "port": port, "bind": host, "bind-source-addr": host,
                "cluster-announce-ip": host, "cluster-enabled": "yes", "cluster-port": bus_port,
                "cluster-config-file": "nodes.conf", "dir": d, "save": "", "appendonly": "no",
                "repl-diskless-sync": "yes", "repl-diskless-sync-delay": 0,
                "cluster-node-timeout": topo.sentinels.down_after_ms,
            }  # fmt: skip
            argv = [binary] + [x for k, v in args.items() for x in (f"--{k}", str(v))]
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        clients = [
            redis.Redis(host=h, port=got[i][0], socket_timeout=1) for i, h in enumerate(hosts)
        ]
        for c in clients:
            while True:
                try:
                    c.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.01)
        addrs = [f"{hosts[i]}:{got[i][0]}" for i in order]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas",
             str(topo.replicas_per_shard), "--cluster-yes"],
            check=True, capture_output=True,
        )  # fmt: skip
        while True:
            ok = all(
                "cluster_state:ok" in str(c.execute_command("CLUSTER", "INFO")) for c in clients
            )
            reps = [c.info("replication") for c in clients]
            synced = all(r.get("master_link_status") == "up" for r in reps if r["role"] == "slave")
            if ok and synced:
                break
            time.sleep(0.02)
        return time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


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
