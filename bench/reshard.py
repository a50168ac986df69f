"""Online resharding: `cachefleet apply` scaling 3 -> 5 -> 3 shards under a steady workload,
beside the anchor in the same run: `redis-cli --cluster rebalance` making the same moves on a
plain cluster of the same shape and data (two empty primaries added with `--cluster add-node`,
then `--cluster-use-empty-masters`; back with weight 0 and `del-node`).

Both sides hold the same keys (100 random bytes each) on 3 shards x 1 replica. During each
move a RedisCluster writer (unique keys) and a RedisCluster reader (random base keys, value
checked) run; on cachefleet's side a plain client writes through the router too. Printed per
move: time, keys/s, client errors not retried by the client library (redis-py crashes on an
ASK to a node it does not know yet are counted apart: redis/redis-py#4015), client p50/p99,
and every key and value read back after. Figures, not asserts.

    python bench/reshard.py [--keys 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from redis.cluster import RedisCluster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from anchor import PlainCluster, wait_until  # noqa: E402

from cachefleet import ports  # noqa: E402
from cachefleet.resp import encode_command  # noqa: E402
from cachefleet.slots import key_slot  # noqa: E402
from cachefleet.state import ClusterDir  # noqa: E402
from cachefleet.topology import parse_topology  # noqa: E402

MOVE_LIMIT_S = 900  # every workload thread stops by itself after this long


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dataset(n: int, seed: int = 11) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(b"k:%d" % i, rng.randbytes(100)) for i in range(n)]


def slot_owners(host: str, port: int) -> dict[int, tuple[str, int]]:
    r = redis.Redis(host=host, port=port)
    try:
        owners = {}
        for start, end, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
            addr = (primary[0].decode(), int(primary[1]))
            for s in range(start, end + 1):
                owners[s] = addr
        return owners
    finally:
        r.close()


def load(host: str, port: int, data: list[tuple[bytes, bytes]]) -> None:
    owners = slot_owners(host, port)
    by_node: dict[tuple[str, int], list[bytes]] = {}
    for key, value in data:
        by_node.setdefault(owners[key_slot(key)], []).append(encode_command([b"SET", key, value]))
    threads = []
    for (h, p), cmds in by_node.items():

        def run(h: str = h, p: int = p, payload: bytes = b"".join(cmds)) -> None:
            out = subprocess.run(
                ["redis-cli", "-h", h, "-p", str(p), "--pipe"],
                input=payload,
                capture_output=True,
                timeout=900,
            )
            if b"errors: 0" not in out.stdout:
                raise SystemExit(f"load failed: {out.stdout[-300:]!r}")

        threads.append(threading.Thread(target=run))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def verify(
    host: str, port: int, data: list[tuple[bytes, bytes]], extra: dict[bytes, bytes]
) -> tuple[int, int]:
    """(keys checked, keys missing or wrong), every base key and every acknowledged write."""
    rc = RedisCluster(host=host, port=port)
    bad = 0
    items = data + list(extra.items())
    try:
        for i in range(0, len(items), 10_000):
            chunk = items[i : i + 10_000]
            pipe = rc.pipeline()  # type: ignore[no-untyped-call]
            for key, _ in chunk:
                pipe.get(key)
            for (_, value), got in zip(chunk, pipe.execute(), strict=True):
                bad += got != value
    finally:
        rc.close()
    return len(items), bad


@dataclass
class Workload:
    """A RedisCluster writer and reader (and a plain router client when `router` is given)."""

    host: str
    port: int
    data: list[tuple[bytes, bytes]]
    router: tuple[str, int] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    acked: dict[bytes, bytes] = field(default_factory=dict)
    ops: int = 0

    def _loop(self, client: Any, kind: str) -> None:
        rng = random.Random(kind)
        end = time.monotonic() + MOVE_LIMIT_S
        i = 0
        while not self.stop.is_set() and time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                if kind == "reader":
                    key, value = self.data[rng.randrange(len(self.data))]
                    if client.get(key) != value:
                        self.errors.append(f"reader: {key!r} wrong")
                else:
                    key = b"%s:%d" % (kind.encode(), i)
                    client.set(key, b"%d" % i)
                    self.acked[key] = b"%d" % i
                self.latencies.append(time.perf_counter() - t0)
                self.ops += 1
            except redis.RedisError as exc:
                self.errors.append(f"{kind}: {exc!r}")
            except AttributeError as exc:  # redis/redis-py#4015
                self.crashes.append(f"{kind}: {exc!r}")
            i += 1
        client.close()

    def __enter__(self) -> Workload:
        clients: list[tuple[Any, str]] = [
            (RedisCluster(host=self.host, port=self.port), "writer"),
            (RedisCluster(host=self.host, port=self.port), "reader"),
        ]
        if self.router:
            clients.append((redis.Redis(host=self.router[0], port=self.router[1]), "router"))
        self.threads = [threading.Thread(target=self._loop, args=c, daemon=True) for c in clients]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def pct(self, q: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")


@dataclass
class Result:
    side: str
    move: str
    seconds: float
    keys_moved: int
    errors: int
    crashes: int
    p50_ms: float
    p99_ms: float
    checked: int
    wrong: int

    def row(self) -> str:
        rate = self.keys_moved / self.seconds if self.seconds else 0
        return (
            f"| {self.side} | {self.move} | {self.seconds:.1f} | {self.keys_moved:,} "
            f"| {rate:,.0f} | {self.errors} | {self.crashes} "
            f"| {self.p50_ms:.2f} / {self.p99_ms:.1f} | {self.checked:,} / {self.wrong} |"
        )


def ours(tmp: Path, data: list[tuple[bytes, bytes]]) -> list[Result]:
    state = tmp / "state"
    path = tmp / "rs.yaml"
    topo = {
        "name": "rs",
        "engine": "valkey",
        "zones": ["az-a", "az-b", "az-c"],
        "shards": 3,
        "replicas_per_shard": 1,
        "node_type": "cache.large",
        "ports": {"base": "auto"},
        "router": {"port": "auto"},
        "bus": {"url": "embedded"},
    }
    path.write_text(yaml.safe_dump(topo))

    def cf(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cachefleet", *args, "--state-dir", str(state)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if out.returncode != 0:
            raise SystemExit(
                f"cachefleet {args[0]} failed:\n{out.stdout[-3000:]}{out.stderr[-2000:]}"
            )
        return out.stdout

    results = []
    try:
        cf("up", str(path), "--detach")
        plan = ClusterDir(state, "rs").load_plan()
        seed = plan.nodes[0]
        log(f"ours: loading {len(data):,} keys")
        load(seed.host, seed.port, data)
        for shards, move in ((5, "3 -> 5"), (3, "5 -> 3")):
            topo["shards"] = shards
            path.write_text(yaml.safe_dump(topo))
            log(f"ours: apply {move}")
            plan = ClusterDir(state, "rs").load_plan()
            seed = plan.nodes[0]
            with Workload(
                seed.host, seed.port, data, router=(plan.router_host, plan.router_port)
            ) as w:
                out = cf("apply", str(path), "--yes")
            m = re.search(r"moved ([\d,]+) slots, ([\d,]+) keys in ([\d.]+)s", out)
            assert m, out
            keys, secs = int(m.group(2).replace(",", "")), float(m.group(3))
            checked, wrong = verify(seed.host, seed.port, data, w.acked)
            results.append(
                Result(
                    "cachefleet apply",
                    move,
                    secs,
                    keys,
                    len(w.errors),
                    len(w.crashes),
                    w.pct(0.5),
                    w.pct(0.99),
                    checked,
                    wrong,
                )
            )
            for e in w.errors[:3]:
                log(f"  client error: {e}")
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cachefleet",
                "down",
                "rs",
                "--purge",
                "--state-dir",
                str(state),
            ],
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
    return results


def anchor(tmp: Path, data: list[tuple[bytes, bytes]]) -> list[Result]:
    topo = parse_topology(
        {
            "name": "anchor",
            "engine": "valkey",
            "zones": ["az-a", "az-b", "az-c"],
            "shards": 3,
            "replicas_per_shard": 1,
            # the anchor's cluster-node-timeout: long, so that the engine's own failover of a
            # source busy in MIGRATE does not break redis-cli's move (it did, at 1 s)
            "sentinels": {"down_after_ms": 15000, "failover_timeout_ms": 30000},
        }
    )
    plain = PlainCluster(topo, tmp=tmp)
    results = []
    try:
        plain.launch()
        plain.create()
        if not wait_until(plain.synced, 60, 0.1):
            raise SystemExit("anchor cluster did not converge")
        host, port = plain.addrs[0]
        log(f"anchor: loading {len(data):,} keys")
        load(host, port, data)
        # two more empty primaries, in zones a and b like cachefleet's new shards 4 and 5
        extra_hosts = [topo.zone_address("az-a"), topo.zone_address("az-b")]
        for host_x, (p, bp) in zip(
            extra_hosts, ports.allocate(extra_hosts, pairs=True), strict=True
        ):
            i = len(plain.argvs)
            plain.argvs.append(plain._argv(i, host_x, p, bp))
            plain.addrs.append((host_x, p))
            plain.procs.append(plain.spawn(i))
            wait_until(functools.partial(plain._ping, i), 20, 0.01)
            subprocess.run(
                [plain.cli, "--cluster", "add-node", f"{host_x}:{p}", f"{host}:{port}"],
                check=True,
                capture_output=True,
                timeout=60,
            )
        wait_until(plain.synced, 30, 0.1)
        # every node knows the added ones (the move's source is told to send to them)
        n = len(plain.addrs)
        wait_until(lambda: all(len(plain.nodes_view(i)) == n for i in range(n)), 60, 0.2)
        # as cachefleet's nodes: a primary drained of its last slot stays a primary (by
        # default the engine turns it into a replica, and redis-cli then sends SETSLOT to it)
        for i in range(len(plain.addrs)):
            c = plain.node(i)
            try:
                c.config_set("cluster-allow-replica-migration", "no")
            finally:
                c.close()
        for move, args in (
            ("3 -> 5", ["--cluster-use-empty-masters"]),
            (
                "5 -> 3",
                ["--cluster-weight", *(f"{_node_id(plain, i)}=0" for i in (6, 7))],
            ),
        ):
            log(f"anchor: redis-cli --cluster rebalance {move}")
            # rebalance refuses while the nodes do not agree yet (the last move's gossip)
            wait_until(functools.partial(_agreed, plain.cli, f"{host}:{port}"), 60, 0.5)
            before = _keys_on(plain, (6, 7))
            with Workload(host, port, data) as w:
                t0 = time.monotonic()
                done = subprocess.run(
                    [plain.cli, "--cluster", "rebalance", f"{host}:{port}", *args, "--cluster-yes"],
                    capture_output=True,
                    text=True,
                    timeout=3600,
                )
                secs = time.monotonic() - t0
            if done.returncode != 0:
                out = done.stdout[-2000:] + done.stderr[-1000:]
                raise SystemExit(f"redis-cli --cluster rebalance failed:\n{out}")
            after = _keys_on(plain, (6, 7))
            moved = after - before if move == "3 -> 5" else before - after
            checked, wrong = verify(host, port, data, w.acked)
            results.append(
                Result(
                    "redis-cli --cluster rebalance",
                    move,
                    secs,
                    moved,
                    len(w.errors),
                    len(w.crashes),
                    w.pct(0.5),
                    w.pct(0.99),
                    checked,
                    wrong,
                )
            )
    finally:
        plain.close()
    return results


def _agreed(cli: str, addr: str) -> bool:
    return subprocess.run([cli, "--cluster", "check", addr], capture_output=True).returncode == 0


def _node_id(plain: PlainCluster, i: int) -> str:
    return plain._ask(i, "CLUSTER", "MYID").strip()


def _keys_on(plain: PlainCluster, indexes: tuple[int, ...]) -> int:
    total = 0
    for i in indexes:
        c = plain.node(i)
        try:
            total += int(c.dbsize())
        finally:
            c.close()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--anchor-only", action="store_true", help="skip cachefleet's side")
    args = ap.parse_args()
    if not shutil.which("redis-cli"):
        raise SystemExit("bench/reshard.py needs redis-cli (Debian: redis-tools)")
    data = dataset(args.keys)
    tmp = Path(tempfile.mkdtemp(prefix="bench-reshard-"))
    try:
        rows = [] if args.anchor_only else ours(tmp, data)
        for r in rows:
            log(f"ours: {r.row()}")
        rows += anchor(tmp, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"\nOnline resharding, {args.keys:,} keys of 100 bytes, 3 shards x 1 replica "
        "(cachefleet: new shards get a replica too; anchor: two empty primaries)"
    )
    print(
        "| side | move | seconds | keys moved | keys/s | client errors | redis-py ASK crashes "
        "| p50 / p99 ms | keys checked / wrong |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r.row())
    ours_rate = {r.move: r.keys_moved / r.seconds for r in rows if r.side.startswith("cachefleet")}
    anchor_rate = {r.move: r.keys_moved / r.seconds for r in rows if r.side.startswith("redis-cli")}
    for move, rate in ours_rate.items():
        if anchor_rate.get(move):
            print(
                f"{move}: cachefleet moves keys {rate / anchor_rate[move]:.1f}x the anchor's rate"
            )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
