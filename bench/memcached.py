"""The memcached proxy beside the engine itself, and the keys consistent hashing moves.

In one run, on the same machine: `memcaslap` (Debian package `libmemcached-tools`), 50
connections, get/set 9:1, 100-byte values, against (a) one memcached node of a 3-node cluster
directly, (b) a copy-only hop in front of that node (an asyncio/uvloop process that copies
bytes between each client and the node: the floor for any proxy written this way), and (c)
the cluster's router (one worker), which parses every request and hashes it to one of the
three nodes. Prints ops/s and p50/p99 latency; memcaslap reports latencies only as a log2
histogram, so the percentiles are interpolated inside its power-of-two buckets (coarse: say
so when quoting them). Then the share of 100,000 keys that move when the ring grows from 3 to
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--copy-hop", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.copy_hop:
        copy_hop(int(args.copy_hop[0]), int(args.copy_hop[2]), args.copy_hop[1])
        return
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        cfg = Path(tmp) / "get-set-9-1.cfg"
        cfg.write_text(GET_SET_9_1)
        name = f"bench-mc-{int(time.time()) % 100000}"
        topo = {
            "name": name,
            "engine": "memcached",
            "zones": ["az-a", "az-b", "az-c"],
            "nodes": 3,
            "node_type": "cache.small",
            "parameters": {"threads": 2},
            "ports": {"base": "auto"},
            "router": {"port": "auto", "workers": 1},
        }
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(topo))
        cli("up", str(path), "--detach", "--state-dir", str(state))
        hop = None
        try:
            plan = ClusterDir(state, name).load_plan()
            node = plan.nodes[0]
            hop_port = ports.allocate_one()
            hop = subprocess.Popen(
                [sys.executable, __file__, "--copy-hop", str(hop_port), node.host, str(node.port)]
            )
            wait_port("127.0.0.1", hop_port)
            targets = [
                ("direct (one node)", node.host, node.port),
                ("copy-only hop", "127.0.0.1", hop_port),
                ("proxy (3 nodes)", plan.router_host, plan.router_port),
            ]
            print(
                f"memcaslap -T 2 -c 50 -t {args.seconds}s, get/set 9:1, 100-byte values "
                "(ops/s; p50/p99 ms interpolated in memcaslap's log2 histogram)"
            )
            router_pid = read_pid(ClusterDir(state, name).pid_file("router"))
            pids = {"copy-only hop": hop.pid, "proxy (3 nodes)": router_pid}
            results = {}
            for label, host, port in targets:
                pid = pids.get(label)
                before = cpu_s(pid) if pid else 0.0
                results[label] = r = run_memcaslap(host, port, args.seconds, cfg)
                per_op = ""
                if pid:
                    us = (cpu_s(pid) - before) / max(r["ops"] * args.seconds, 1) * 1e6
                    per_op = f"  {us:.0f} us CPU per request"
                print(
                    f"  {label:<18} {r['ops']:>9.0f} ops/s  p50 {r['p50']:.2f}  p99 {r['p99']:.2f}"
                    + per_op,
                    flush=True,
                )
            direct, hop_r, proxy = (results[t[0]] for t in targets)
            print(
                f"  proxy/direct {proxy['ops'] / direct['ops']:.2f}x, copy hop/direct "
                f"{hop_r['ops'] / direct['ops']:.2f}x; proxy p99 - copy hop p99 "
                f"{proxy['p99'] - hop_r['p99']:+.2f} ms"
            )
        finally:
            if hop is not None:
                hop.terminate()
                hop.wait(10)
            with contextlib.suppress(SystemExit):
                cli("down", name, "--purge", "--state-dir", str(state))
    share = keys_moved(3, 4)
    print(f"keys moved when the ring grows 3 -> 4 nodes: {share:.1%} of 100,000 (ideal 25.0%)")


if __name__ == "__main__":
    main()
