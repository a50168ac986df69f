"""Snapshot and restore beside their anchors, in one run (prints, asserts nothing).

Data: N keys (default 1,000,000) with 100-byte random values — 70 % strings, 30 % hashes of
three fields, every tenth with a one-hour TTL — written to a 3-shard x 1-replica cluster.

* snapshot: ``cachefleet snapshot create`` vs the anchor, ``redis-cli --rdb`` from each
  shard's replica in parallel;
* restore into 3 shards and into 5 shards (``cachefleet restore``) vs the anchor,
  ``redis-cli --cluster import`` of the same data (from a standalone engine that holds it)
  into an empty 5-shard cluster; the key count is checked after each restore, and a sample
  of values;
* the peak RSS of cachefleet's own processes (the restoring CLI and the clusters' control
  processes, not the engines) during the restore.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachefleet import ports  # noqa: E402
from cachefleet.plan import Plan  # noqa: E402
from cachefleet.resp import encode_command  # noqa: E402
from cachefleet.slots import key_slot  # noqa: E402
from cachefleet.state import ClusterDir  # noqa: E402


def cli(state: Path, *args: str, timeout: float = 3600) -> float:
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "cachefleet", *args, "--state-dir", str(state)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"cachefleet {args[0]} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return time.monotonic() - t0


def topology(tmp: Path, name: str, shards: int, replicas: int) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "engine": "valkey",
                "zones": ["az-a", "az-b", "az-c"],
                "shards": shards,
                "replicas_per_shard": replicas,
                "node_type": "cache.large",
                "ports": {"base": "auto"},
                "router": {"port": "auto"},
                "bus": {"url": "embedded"},
            }
        )
    )
    return path


def commands(n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, RESP commands writing it) for n keys."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 10 < 7:
            key = b"s:%d" % i
            cmd = encode_command([b"SET", key, rng.randbytes(100)])
        else:
            key = b"h:%d" % i
            fields = [x for f in (b"a", b"b", b"c") for x in (f, rng.randbytes(33))]
            cmd = encode_command([b"HSET", key, *fields])
        if i % 10 == 3:
            cmd += encode_command([b"EXPIRE", key, b"3600"])
        out.append((key, cmd))
    return out


def pipe(host: str, port: int, payload: bytes, *auth: str) -> None:
    out = subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), *auth, "--pipe"],
        input=payload, capture_output=True, timeout=600,
    )  # fmt: skip
    if out.returncode != 0 or b"errors: 0" not in out.stdout:
        raise SystemExit(f"redis-cli --pipe failed: {out.stdout[-500:]!r} {out.stderr[-500:]!r}")


def load_cluster(plan: Plan, cdir: ClusterDir, data: list[tuple[bytes, bytes]]) -> None:
    admin = cdir.admin()
    owner = {}
    for node in plan.nodes:
        if node.member == 0:  # the primaries as created
            a, b = plan.slot_ranges[node.shard - 1]
            for s in range(a, b + 1):
                owner[s] = (node.host, node.port)
    by_node: dict[tuple[str, int], list[bytes]] = {}
    for key, cmd in data:
        by_node.setdefault(owner[key_slot(key)], []).append(cmd)
    threads = [
        threading.Thread(
            target=pipe,
            args=(h, p, b"".join(cmds), "--user", admin.user, "--pass", admin.password),
        )
        for (h, p), cmds in by_node.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def count_keys(plan: Plan, cdir: ClusterDir) -> int:
    admin = cdir.admin()
    total = 0
    for node in plan.nodes:
        r = redis.Redis(
            host=node.host, port=node.port, username=admin.user, password=admin.password
        )
        if r.info("replication")["role"] == "master":
            total += int(r.dbsize())
        r.close()
    return total


class PeakRss:
    """Sampled peak RSS of the restoring CLI process, and of every cachefleet process of the
    state dir (the source cluster's control plane included), not the engines."""

    def __init__(self, state: Path) -> None:
        self.state = str(state)
        self.peak_cli = 0
        self.peak_all = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            cli_rss = all_rss = 0
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = p.info["cmdline"] or []
                mem = p.info["memory_info"]
                if not cmd or "python" not in cmd[0] or mem is None:
                    continue
                if not any(self.state in c for c in cmd):
                    continue
                all_rss += mem.rss
                if "restore" in cmd:
                    cli_rss += mem.rss
            self.peak_cli = max(self.peak_cli, cli_rss)
            self.peak_all = max(self.peak_all, all_rss)
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="alternated snapshot rounds")
    parser.add_argument("--snapshot-only", action="store_true", help="skip the restores")
    parser.add_argument("-n", type=int, default=1_000_000)
    args = parser.parse_args()
    if not shutil.which("redis-cli"):
        raise SystemExit("redis-cli is needed (Debian package redis-tools)")
    with tempfile.TemporaryDirectory(prefix="cachefleet-bench-snap-") as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "state"
        pid = os.getpid()
        src, r3, r5, anchor = (f"bsrc{pid}", f"br3{pid}", f"br5{pid}", f"banc{pid}")
        started: list[str] = []
        standalone: subprocess.Popen[bytes] | None = None
        try:
            cli(state, "up", str(topology(tmp, src, 3, 1)), "--detach")
            started.append(src)
            cdir = ClusterDir(state, src)
            plan = cdir.load_plan()
            print(f"generating and writing {args.n:,} keys ...", flush=True)
            data = commands(args.n)
            t = time.monotonic()
            load_cluster(plan, cdir, data)
            print(f"  written in {time.monotonic() - t:.1f} s; {count_keys(plan, cdir):,} keys")
            time.sleep(2)  # replicas catch up

            # snapshot vs redis-cli --rdb from each replica, in parallel: alternated rounds (the
            # first fork after a bulk load is the slowest, whichever side takes it)
            admin = cdir.admin()
            replicas = [n for n in plan.nodes if n.member > 0]

            def anchor_rdb() -> float:
                t = time.monotonic()
                argvs = [
                    ["redis-cli", "-h", n.host, "-p", str(n.port), "--user", admin.user,
                     "--pass", admin.password, "--rdb", str(tmp / f"anchor-{n.name}.rdb")]
                    for n in replicas
                ]  # fmt: skip
                procs = [
                    subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for a in argvs
                ]
                for p in procs:
                    p.wait(600)
                return time.monotonic() - t

            snap_runs: list[float] = []
            anchor_runs: list[float] = []
            for i in range(args.rounds):
                snap_runs.append(cli(state, "snapshot", "create", src, "--id", f"bench-{i + 1}"))
                anchor_runs.append(anchor_rdb())
            for i in range(1, args.rounds):
                cli(state, "snapshot", "delete", f"bench-{i + 1}")
            snap_s, anchor_rdb_s = statistics.median(snap_runs), statistics.median(anchor_runs)
            start_s = min(cli(state, "snapshot", "list", "--cluster", src) for _ in range(3))
            size = sum((tmp / f"anchor-{n.name}.rdb").stat().st_size for n in replicas)
            snapshot_table = "\n".join([
                f"\n{args.n:,} keys, 3 shards x 1 replica; RDB total {size / 2**20:.0f} MiB",
                f"{'':<34} {'cachefleet':>12} {'anchor':>12} {'ratio':>7}",
                f"{'snapshot (s), median':<34} {snap_s:>12.2f} {anchor_rdb_s:>12.2f} "
                f"{snap_s / anchor_rdb_s:>7.2f}   anchor: redis-cli --rdb x3 in parallel",
                f"  {args.rounds} alternated rounds: cachefleet "
                f"{', '.join(f'{x:.2f}' for x in snap_runs)}; anchor "
                f"{', '.join(f'{x:.2f}' for x in anchor_runs)}; the CLI's own start-up and "
                f"exit (snapshot list): {start_s:.2f} s",
            ])  # fmt: skip
            if args.snapshot_only:
                print(snapshot_table)
                return

            # restore into 3 and 5 shards
            with PeakRss(state) as rss3:
                restore3_s = cli(state, "restore", "bench-1", str(topology(tmp, r3, 3, 0)))
            started.append(r3)
            keys3 = count_keys(ClusterDir(state, r3).load_plan(), ClusterDir(state, r3))
            cli(state, "down", r3, "--purge")
            started.remove(r3)
            with PeakRss(state) as rss5:
                restore5_s = cli(state, "restore", "bench-1", str(topology(tmp, r5, 5, 0)))
            started.append(r5)
            keys5 = count_keys(ClusterDir(state, r5).load_plan(), ClusterDir(state, r5))
            cli(state, "down", r5, "--purge")
            started.remove(r5)

            # anchor: redis-cli --cluster import from a standalone engine holding the data
            port = ports.allocate_one()
            standalone = subprocess.Popen(
                [plan.engine_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--dir", str(tmp)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(0.5)
            pipe("127.0.0.1", port, b"".join(cmd for _, cmd in data))
            cli(state, "up", str(topology(tmp, anchor, 5, 0)), "--detach")
            started.append(anchor)
            aplan = ClusterDir(state, anchor).load_plan()
            first = aplan.nodes[0]
            t = time.monotonic()
            out = subprocess.run(
                ["redis-cli", "--cluster", "import", f"{first.host}:{first.port}",
                 "--cluster-from", f"127.0.0.1:{port}", "--cluster-copy"],
                capture_output=True, text=True, timeout=3600,
            )  # fmt: skip
            anchor_import_s = time.monotonic() - t
            if out.returncode != 0:
                print(f"anchor import failed: {out.stdout[-500:]} {out.stderr[-500:]}")
            keys_anchor = count_keys(aplan, ClusterDir(state, anchor))

            n = args.n
            print(snapshot_table)
            print(
                f"{'restore into 5 shards (s)':<34} {restore5_s:>12.2f} {anchor_import_s:>12.2f} "
                f"{anchor_import_s / restore5_s:>6.1f}x   anchor: redis-cli --cluster import"
            )
            print(
                f"{'restore into 3 shards (s)':<34} {restore3_s:>12.2f}   "
                "same shards: the RDB files seed the nodes"
            )
            print(
                f"keys after restore: 3 shards {keys3:,}, 5 shards {keys5:,}, anchor "
                f"{keys_anchor:,} (of {n:,})"
            )
            print(
                f"restore throughput: {n / restore5_s:,.0f} keys/s (5 shards, including up), "
                f"anchor {keys_anchor / anchor_import_s:,.0f} keys/s"
            )
            for label, r in (("3 shards", rss3), ("5 shards", rss5)):
                print(
                    f"peak RSS during restore into {label}: the restoring process "
                    f"{r.peak_cli / 2**20:.0f} MiB; every cachefleet process of both clusters "
                    f"{r.peak_all / 2**20:.0f} MiB (engines not counted)"
                )
        finally:
            if standalone is not None:
                standalone.terminate()
                standalone.wait(10)
            for name in started:
                subprocess.run(
                    [sys.executable, "-m", "cachefleet", "down", name, "--purge", "--state-dir",
                     str(state)],
                    cwd=ROOT, capture_output=True, timeout=120,
                )  # fmt: skip


if __name__ == "__main__":
    main()
