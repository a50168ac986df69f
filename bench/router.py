"""Router throughput and latency beside the engine itself, and the router's idle memory.

In one run, on the same machine and binary: `redis-benchmark -t set,get -n N -c 50` at -P 1
and -P 16 against (a) one engine node directly, (b) a copy-only hop (an asyncio/uvloop
process that copies bytes between each client and the node: the floor for any proxy written
this way), (c) the router in front of a one-shard cluster (started with `cachefleet up`),
and (d) `redis-benchmark --cluster` bootstrapped from the router's configuration endpoint
(a cluster-aware client talking to the nodes; it needs two nodes or more, so it runs on a
3-shard cluster, beside the router in front of that cluster; -n --cluster-n). Prints ops/s,
p50/p99 latency (medians of alternated rounds: -P 16 runs are short and the machine's load
moves), the router/direct ratio and the router's CPU time per request; then the
router's RSS before and after 1,000 idle client connections. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import socket
import statistics
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
from cachefleet.engine import resolve_engine_binary  # noqa: E402
from cachefleet.proc import process_rss, read_pid  # noqa: E402
from cachefleet.state import ClusterDir  # noqa: E402


def benchmark_binary() -> str:
    found = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if not found:
        raise SystemExit("redis-benchmark (or valkey-benchmark) is needed on the PATH")
    return found


def run_benchmark(
    port: int, pipeline: int, n: int, clients: int, *, cluster: bool = False
) -> dict[str, dict[str, float]]:
    out = subprocess.run(
        [benchmark_binary(), "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-n", str(n),
         "-c", str(clients), "-P", str(pipeline), "--csv", "-r", "100000",
         *(["--cluster"] if cluster else [])],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if out.returncode != 0 or "rps" not in out.stdout:
        raise SystemExit(f"redis-benchmark failed: {(out.stderr + out.stdout).strip()[-800:]}")
    csv_text = out.stdout[out.stdout.index('"test"') :]  # --cluster prints the nodes first
    rows = list(csv.reader(io.StringIO(csv_text)))
    header, body = rows[0], rows[1:]
    result: dict[str, dict[str, float]] = {}
    for row in body:
        rec = dict(zip(header, row, strict=False))
        result[rec["test"]] = {
            "rps": float(rec["rps"]),
            "p50": float(rec.get("p50_latency_ms", "nan")),
            "p99": float(rec.get("p99_latency_ms", "nan")),
        }
    return result


STATS = ("rps", "p50", "p99")


def speedups_built() -> bool:
    """Whether the routers (started from this environment) run the C accelerator."""
    from router import speedups

    return speedups.split_canonical is not None


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def rss_kib(pid: int) -> int:
    return (process_rss(pid) or 0) // 1024


def cli(*args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cachefleet", *args], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"cachefleet {args[0]} failed: {(out.stdout + out.stderr)[-1500:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200_000, help="requests per run at -P 1")
    # At -P 16 a 200,000-request run lasts well under a second: too short to be steady.
    parser.add_argument("--n16", type=int, default=2_000_000, help="requests per run at -P 16")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians)")
    parser.add_argument("-c", type=int, default=50)
    parser.add_argument("--cluster-n", type=int, default=1_000_000)
    parser.add_argument("--copy-hop", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.copy_hop:
        copy_hop(*args.copy_hop)
        return
    engine = resolve_engine_binary("valkey")
    with tempfile.TemporaryDirectory() as tmp:
        direct_port = ports.allocate_one()
        direct = subprocess.Popen(
            [engine, "--port", str(direct_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        state = Path(tmp) / "state"

        def up(name: str, shards: int) -> tuple[ClusterDir, int]:
            topo = {
                "name": name,
                "engine": "valkey",
                "zones": ["az-a"],
                "shards": shards,
                "replicas_per_shard": 0,
                "node_type": "cache.small",
                "ports": {"base": "auto"},
                "router": {"port": "auto"},
                "sentinels": {"count": 1, "quorum": 1},
                "bus": {"url": "embedded"},
            }
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(topo))
            cli("up", str(path), "--detach", "--state-dir", str(state))
            cdir = ClusterDir(state, name)
            return cdir, cdir.load_plan().router_port

        name, name3 = f"bench-router-{os.getpid()}", f"bench-router3-{os.getpid()}"
        hop_port = ports.allocate_one()
        hop = subprocess.Popen(
            [sys.executable, __file__, "--copy-hop", str(hop_port), str(direct_port)]
        )
        try:
            wait_port(direct_port)
            wait_port(hop_port)
            cdir, router_port = up(name, 1)
            _, router3_port = up(name3, 3)
            print(
                f"redis-benchmark -t set,get -c {args.c}, -n {args.n} at -P 1 and {args.n16} at "
                f"-P 16 (ops/s, p50/p99 ms, medians of {args.rounds} alternated rounds); "
                f"3-shard --cluster with -n {args.cluster_n}; ratio: router/direct; the "
                f"router's C accelerator: {'on' if speedups_built() else 'off'}"
            )
            names = ("direct", "copy hop", "router", "router 3 shards", "--cluster 3 shards")
            print(f"{'':>6} {'test':>4} " + " ".join(f"{n:>22}" for n in names) + "  ratio")
            router_pid = read_pid(cdir.pid_file("router"))
            assert router_pid
            # every worker's CPU: the listening socket spreads the clients over all of them
            workers = [
                pid
                for name in ("router", *(f"router.{i}" for i in range(1, 64)))
                if (pid := read_pid(cdir.pid_file(name))) is not None
            ]
            cpu_per_op: dict[int, float] = {}
            for pipeline in (1, 16):
                n = args.n if pipeline == 1 else args.n16
                ports_ = (direct_port, hop_port, router_port, router3_port, router3_port)
                runs: list[list[dict[str, dict[str, float]]]] = [[] for _ in names]
                cpu, requests = 0.0, 0
                for round_ in range(args.rounds):
                    # alternate the order: a shared machine's load moves between runs
                    order = list(range(len(names)))
                    order = order[round_ % len(order) :] + order[: round_ % len(order)]
                    for i in order:
                        if i == 4:
                            runs[i].append(
                                run_benchmark(ports_[i], pipeline, args.cluster_n, args.c,
                                              cluster=True)
                            )  # fmt: skip
                            continue
                        before = sum(cpu_s(pid) for pid in workers) if i == 2 else 0.0
                        runs[i].append(run_benchmark(ports_[i], pipeline, n, args.c))
                        if i == 2:
                            cpu += sum(cpu_s(pid) for pid in workers) - before
                            requests += 2 * n
                cpu_per_op[pipeline] = cpu / requests * 1e6
                for test in ("SET", "GET"):
                    medians = [
                        {k: statistics.median(r[test][k] for r in target) for k in STATS}
                        for target in runs
                    ]
                    cells = " ".join(
                        f"{m['rps']:>10.0f} {m['p50']:>5.2f}/{m['p99']:<5.2f}" for m in medians
                    )
                    ratio = medians[2]["rps"] / medians[0]["rps"]
                    print(f"-P {pipeline:<3} {test:>4} {cells} {ratio:>6.2f}", flush=True)
            print(
                f"router CPU per request, all {len(workers)} workers (user+system, less "
                "sensitive to machine load than ops/s): "
                + ", ".join(f"-P {p}: {us:.1f} us" for p, us in cpu_per_op.items())
            )
            pid = router_pid
            before = rss_kib(pid)
            socks = [socket.create_connection(("127.0.0.1", router_port)) for _ in range(1000)]
            for s in socks[::100]:
                s.sendall(b"PING\r\n")
                s.recv(64)
            time.sleep(1.0)
            after = rss_kib(pid)
            print(
                f"router RSS: {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB with "
                f"1,000 idle clients ({(after - before) / 1000:.1f} KiB per client)"
            )
            for s in socks:
                s.close()
        finally:
            for cluster in (name, name3):
                with contextlib.suppress(SystemExit):
                    cli("down", cluster, "--purge", "--state-dir", str(state))
            hop.terminate()
            hop.wait(10)
            direct.terminate()
            direct.wait(10)


if __name__ == "__main__":
    main()
