"""The memcached proxy beside the engine itself, and the keys consistent hashing moves.

In one run, on the same machine: `memcaslap` (Debian package `libmemcached-tools`), 50
connections, get/set 9:1, 100-byte values, against (a) one memcached node of a 3-node cluster
directly, (b) a copy-only hop in front of that node (an asyncio/uvloop process that copies
bytes between each client and the node: the floor for any proxy written this way), and (c)
the cluster's router with one worker, and (d) another such cluster's router with two workers
sharing the port (SO_REUSEPORT), which parse every request and hash it to one of the three
nodes. Rounds alternate the order of the targets (a shared machine's load moves). Prints
ops/s and p50/p99 latency; memcaslap reports latencies only as a log2 histogram, so the
percentiles are interpolated inside its power-of-two buckets (coarse: say so when quoting
them). Then the share of 100,000 keys that move when the ring grows from 3 to
4 nodes (ideal: 1/4). Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hop import copy_hop  # noqa: E402  (bench/hop.py; bench/ is the script's directory)

from cachefleet import ports  # noqa: E402
from cachefleet.proc import read_pid  # noqa: E402
from cachefleet.state import ClusterDir  # noqa: E402
from router.memcache.ring import Ring  # noqa: E402

GET_SET_9_1 = "key\n64 64 1\nvalue\n100 100 1\ncmd\n0 0.1\n1 0.9\n"


def cli(*args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cachefleet", *args], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"cachefleet {args[0]} failed: {(out.stdout + out.stderr)[-1500:]}")


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {host}:{port}")


def percentile_from_log2(buckets: dict[int, int], q: float) -> float:
    """memcaslap's bucket k holds latencies in [2^(k-1), 2^k) us: the q-quantile, linearly
    interpolated inside its bucket, in ms."""
    total = sum(buckets.values())
    rank = q * total
    seen = 0
    for k in sorted(buckets):
        count = buckets[k]
        if count and seen + count >= rank:
            lo, hi = 2 ** (k - 1), 2**k
            return (lo + (hi - lo) * (rank - seen) / count) / 1000
        seen += count
    return float("nan")


def run_memcaslap(host: str, port: int, seconds: int, cfg: Path) -> dict[str, float]:
    binary = shutil.which("memcaslap") or shutil.which("memaslap")
    if not binary:
        raise SystemExit("memcaslap is needed: apt-get install libmemcached-tools")
    out = subprocess.run(
        [binary, "-s", f"{host}:{port}", "-F", str(cfg), "-T", "2", "-c", "50",
         "-t", f"{seconds}s", "-S", f"{seconds}s"],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    text = out.stdout
    tps = re.search(r"Run time: [\d.]+s Ops: \d+ TPS: (\d+)", text)
    if not tps:
        raise SystemExit(f"memcaslap failed: {(out.stderr + text)[-800:]}")
    total = text[text.rindex("Total Statistics (") :]
    dist = total[total.index("Log2 Dist:") :]
    buckets: dict[int, int] = {}
    for row in re.finditer(r"^\s+(\d+):((?:\s+\d+)+)\s*$", dist, re.M):
        start = int(row.group(1))
        for i, count in enumerate(row.group(2).split()):
            buckets[start + i] = int(count)
    errors = re.search(r"get_misses: (\d+)", text)
    return {
        "ops": float(tps.group(1)),
        "p50": percentile_from_log2(buckets, 0.50),
        "p99": percentile_from_log2(buckets, 0.99),
        "misses": float(errors.group(1)) if errors else 0.0,
    }


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def keys_moved(before: int, after: int, n: int = 100_000) -> float:
    old = Ring([f"c-{i:04d}" for i in range(1, before + 1)])
    new = Ring([f"c-{i:04d}" for i in range(1, after + 1)])
    keys = [b"key:%d" % i for i in range(n)]
    return sum(old.node(k) != new.node(k) for k in keys) / n


def up_cluster(tmp: Path, state: Path, name: str, workers: int) -> None:
    topo = {
        "name": name,
        "engine": "memcached",
        "zones": ["az-a", "az-b", "az-c"],
        "nodes": 3,
        "node_type": "cache.small",
        "parameters": {"threads": 2},
        "ports": {"base": "auto"},
        "router": {"port": "auto", "workers": workers},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    cli("up", str(path), "--detach", "--state-dir", str(state))


def router_pids(state: Path, name: str) -> list[int]:
    cdir = ClusterDir(state, name)
    names = ["router", *(p.stem for p in cdir.pid_file("router").parent.glob("router.*.pid"))]
    return [pid for n in names if (pid := read_pid(cdir.pid_file(n))) is not None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds (the order "
                        "of the targets is reversed every other round)")  # fmt: skip
    parser.add_argument("--copy-hop", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.copy_hop:
        copy_hop(int(args.copy_hop[0]), int(args.copy_hop[2]), args.copy_hop[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        cfg = Path(tmp) / "get-set-9-1.cfg"
        cfg.write_text(GET_SET_9_1)
        stamp = int(time.time()) % 100000
        names = {1: f"bench-mc1-{stamp}", 2: f"bench-mc2-{stamp}"}
        hop = None
        started: list[str] = []
        try:
            for workers, name in names.items():
                up_cluster(Path(tmp), state, name, workers)
                started.append(name)
            plan = ClusterDir(state, names[1]).load_plan()
            plan2 = ClusterDir(state, names[2]).load_plan()
            node = plan.nodes[0]
            hop_port = ports.allocate_one()
            hop = subprocess.Popen(
                [sys.executable, __file__, "--copy-hop", str(hop_port), node.host, str(node.port)]
            )
            wait_port("127.0.0.1", hop_port)
            targets = [
                ("direct (one node)", node.host, node.port, [0]),
                ("copy-only hop", "127.0.0.1", hop_port, [hop.pid]),
                ("proxy, 1 worker", plan.router_host, plan.router_port,
                 router_pids(state, names[1])),
                ("proxy, 2 workers", plan2.router_host, plan2.router_port,
                 router_pids(state, names[2])),
            ]  # fmt: skip
            print(
                f"memcaslap -T 2 -c 50 -t {args.seconds}s, get/set 9:1, 100-byte values "
                "(ops/s; p50/p99 ms interpolated in memcaslap's log2 histogram); "
                f"{args.rounds} alternated round(s)"
            )
            results: dict[str, list[dict[str, float]]] = {t[0]: [] for t in targets}
            for rnd in range(args.rounds):
                order = targets if rnd % 2 == 0 else targets[::-1]
                for label, host, port, pids in order:
                    pids = [p for p in pids if p]
                    before = sum(cpu_s(p) for p in pids)
                    r = run_memcaslap(host, port, args.seconds, cfg)
                    r["us"] = (
                        (sum(cpu_s(p) for p in pids) - before)
                        / max(r["ops"] * args.seconds, 1)
                        * 1e6
                        if pids
                        else 0.0
                    )
                    results[label].append(r)
                    per_op = f"  {r['us']:.0f} us CPU per request" if pids else ""
                    print(
                        f"  round {rnd + 1} {label:<18} {r['ops']:>9.0f} ops/s  "
                        f"p50 {r['p50']:.2f}  p99 {r['p99']:.2f}" + per_op,
                        flush=True,
                    )
            best = {k: max(v, key=lambda r: r["ops"]) for k, v in results.items()}
            direct = best["direct (one node)"]
            hop_r = best["copy-only hop"]
            print("best of the rounds:")
            for label, r in best.items():
                print(
                    f"  {label:<18} {r['ops']:>9.0f} ops/s ({r['ops'] / direct['ops']:.2f}x "
                    f"direct)  p99 {r['p99']:.2f}, "
                    f"{r['p99'] - hop_r['p99']:+.2f} ms over the copy hop's"
                )
        finally:
            if hop is not None:
                hop.terminate()
                hop.wait(10)
            for name in started:
                with contextlib.suppress(SystemExit):
                    cli("down", name, "--purge", "--state-dir", str(state))
    share = keys_moved(3, 4)
    print(f"keys moved when the ring grows 3 -> 4 nodes: {share:.1%} of 100,000 (ideal 25.0%)")


if __name__ == "__main__":
    main()
