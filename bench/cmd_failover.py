"""Cluster mode disabled: failover of a group (one primary, two replicas, three zones) under
cachefleet's sentinels beside Redis Sentinel of the same engine, and the primary endpoint's
throughput beside the primary itself.

Failover, per trial: one writer thread does sequential SETs of unique counter values (keys
``<trial>:k:<i>``, 3000 of them, round robin), each recorded as a
``cachefleet.chaos.checker.Op``; after 1.5 s of steady writes the current primary gets SIGKILL
or SIGSTOP (``t_fault``); the writer goes on until its first successful SET started after
``t_fault`` (unavailability = the end of that SET - ``t_fault``: ``checker.availability``),
then 1 s more. Once the group is whole again (one primary, every replica linked to it) every
key is read back from the primary and lost acknowledged writes are counted by
``checker.lost_writes``. A killed node is brought back (cachefleet: by its zone agent; anchor:
by this script, same argv, once the failover is observed or after 10 s); a paused one gets
SIGCONT at the same moment. Percentiles are nearest-rank.

Sides (same engine binary, same shape, same ``down_after_ms`` and failover timeout):

* cachefleet: ``cachefleet up --detach`` of a ``cluster_mode: disabled`` group; the writer
  uses a plain redis-py client on the primary endpoint (a byte hop), reconnecting after an
  error.
* anchor: three engine nodes on the zones' addresses (two with ``replicaof``) and three
  ``--sentinel`` processes of the same binary (``down-after-milliseconds`` = ``down_after_ms``,
  quorum 2); the writer uses redis-py's ``Sentinel.master_for`` (it asks the sentinels for the
  primary on every new connection).

Throughput: ``redis-benchmark -t set,get -n N -c 50 -P 1|16`` against the primary endpoint
and against the primary node directly (ops/s; the endpoint moves bytes with ``splice``
through a pipe, zero-copy). ``--compare-forwarding ROUNDS`` measures only that, for the
endpoint's two forwarding modes (splice, and the protocol-to-protocol copy) in two groups
side by side, in alternated rounds.

Prints tables; asserts nothing. ``python bench/cmd_failover.py --trials 20`` (``make bench``
runs it with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import redis
import yaml
from anchor import ROOT, wait_until
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from cachefleet import ports
from cachefleet.chaos.checker import Op, availability, lost_writes, percentile
from cachefleet.credentials import ADMIN_USER
from cachefleet.engine import resolve_engine_binary
from cachefleet.topology import Sentinels

KEYS = 3000
STEADY_S = 1.5
AFTER_S = 1.0
MAX_WRITE_S = 20.0
ACT_AFTER_S = 10.0
READY_TIMEOUT_S = 60.0
SOCKET_TIMEOUT_S = 0.5
ERROR_SLEEP_S = 0.005
ZONES = ("az-a", "az-b", "az-c")
REPLICAS = 2
DEFAULTS = Sentinels(count=3, quorum=2)
SIGNALS = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def classify(exc: BaseException) -> str:
    """ "error" only when the SET certainly was not applied; everything else is "unknown"."""
    if isinstance(exc, redis.ResponseError):
        return "error"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError) and "connecting to" in str(exc):
        return "error"
    return "unknown"


class Writer(threading.Thread):
    def __init__(self, connect: Any, prefix: str) -> None:
        super().__init__(daemon=True)
        self.connect = connect
        self.names = [f"{prefix}:k:{i}" for i in range(KEYS)]
        self.ops: list[Op] = []
        self.t_fault: float | None = None
        self.recovered = threading.Event()
        self.stop = threading.Event()
        self.counter = 0

    def run(self) -> None:
        client = self.connect()
        deadline = time.monotonic() + MAX_WRITE_S + 5
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            key = self.names[i % KEYS]
            i += 1
            self.counter += 1
            start = time.monotonic()
            try:
                client.set(key, self.counter)
                outcome = "ok"
            except Exception as exc:
                outcome = classify(exc)
            end = time.monotonic()
            self.ops.append(Op("w", key, self.counter, start, end, outcome))
            if outcome != "ok":
                with contextlib.suppress(Exception):
                    client.close()
                client = self.connect()
                time.sleep(ERROR_SLEEP_S)
            elif self.t_fault is not None and start >= self.t_fault:
                self.recovered.set()
        with contextlib.suppress(Exception):
            client.close()


class Side(Protocol):
    label: str

    def start(self) -> None: ...
    def close(self) -> None: ...
    def primary(self) -> tuple[str, int]: ...  # (address, pid)
    def connect(self) -> redis.Redis: ...
    def failed_over(self, old: str) -> bool: ...
    def bring_back(self, old: str, pid: int, sig: signal.Signals) -> None: ...
    def ready(self) -> bool: ...


def _replication(host: str, port: int, **auth: Any) -> dict[str, Any]:
    client = redis.Redis(host=host, port=port, socket_timeout=1, decode_responses=True, **auth)
    try:
        return dict(client.info("replication"))
    finally:
        client.close()


class Ours:
    label = "cachefleet"

    def __init__(self, tmp: Path, keep: bool = False) -> None:
        self.keep = keep
        self.name = f"bench-cmd-{os.getpid()}"
        self.state = tmp / "ours"
        self.topo = tmp / f"{self.name}.yaml"
        self.topo.write_text(
            yaml.safe_dump(
                {
                    "name": self.name,
                    "engine": "valkey",
                    "cluster_mode": "disabled",
                    "zones": list(ZONES),
                    "replicas": REPLICAS,
                    "node_type": "cache.small",
                }
            )
        )
        self.started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cachefleet", *args, "--state-dir", str(self.state)],
            capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
        )  # fmt: skip

    @property
    def root(self) -> Path:
        return self.state / self.name

    def start(self) -> None:
        self.started = True
        out = self._run("up", str(self.topo), "--detach", timeout=180)
        if out.returncode != 0:
            raise SystemExit(f"cachefleet up failed: {out.stderr.strip()[-1500:]}")
        plan = json.loads((self.root / "plan.json").read_text())
        self.endpoint = (plan["router"]["host"], plan["router"]["port"])
        self.nodes = {f"{n['host']}:{n['port']}": n["name"] for n in plan["nodes"]}
        auth = (self.root / "admin.secret").read_text().strip()
        self.auth = {"username": ADMIN_USER, "password": auth}

    def close(self) -> None:
        if self.started:
            out = self._run("down", self.name, *([] if self.keep else ["--purge"]))
            if out.returncode != 0:
                log(f"cachefleet down failed: {out.stderr.strip()}")

    def _layout_primary(self) -> str:
        layout = json.loads((self.root / "layout.json").read_text())
        node = next(n for n in layout["shards"][0]["nodes"] if n["role"] == "primary")
        return f"{node['host']}:{node['port']}"

    def primary(self) -> tuple[str, int]:
        address = self._layout_primary()
        pid_file = self.root / "pids" / f"node.{self.nodes[address]}.pid"
        return address, int(pid_file.read_text().split()[0])

    def connect(self) -> redis.Redis:
        host, port = self.endpoint
        return redis.Redis(
            host=host, port=port, socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip

    def failed_over(self, old: str) -> bool:
        return self._layout_primary() != old

    def bring_back(self, old: str, pid: int, sig: signal.Signals) -> None:
        if sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        # a killed node is restarted by its zone agent

    def ready(self) -> bool:
        primary = self._layout_primary()
        for address in self.nodes:
            host, port = address.rsplit(":", 1)
            rep = _replication(host, int(port), **self.auth)
            if address == primary:
                if rep["role"] != "master":
                    return False
            elif (
                rep["role"] != "slave"
                or f"{rep['master_host']}:{rep['master_port']}" != primary
                or rep["master_link_status"] != "up"
            ):
                return False
        return True


class Anchor:
    label = "redis-sentinel"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp / "anchor"
        self.binary = resolve_engine_binary("valkey")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # address -> process
        self.argv: dict[str, list[str]] = {}
        self.sentinels: list[tuple[str, int]] = []
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def start(self) -> None:
        hosts = [f"127.0.{i + 1}.1" for i in range(len(ZONES))]
        node_ports = [ports.allocate_one() for _ in hosts]
        self.addresses = [f"{h}:{p}" for h, p in zip(hosts, node_ports, strict=True)]
        for i, (host, port) in enumerate(zip(hosts, node_ports, strict=True)):
            d = self.tmp / f"node{i}"
            d.mkdir(parents=True)
            conf = d / "node.conf"
            lines = [
                f"port {port}", f"bind {host}", f"bind-source-addr {host}",
                f"replica-announce-ip {host}", "protected-mode no", f"dir {d}", 'save ""',
                "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
                f"logfile {d / 'node.log'}",
            ]  # fmt: skip
            if i:
                lines.append(f"replicaof {hosts[0]} {node_ports[0]}")
            conf.write_text("\n".join(lines) + "\n")
            address = f"{host}:{port}"
            self.argv[address] = [self.binary, str(conf)]
            self.procs[address] = self._spawn(self.argv[address])
        for i, host in enumerate(hosts):
            port = ports.allocate_one()
            d = self.tmp / f"sentinel{i}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            conf.write_text(
                "\n".join([
                    f"port {port}", f"bind {host}", "protected-mode no", f"dir {d}",
                    f"logfile {d / 'sentinel.log'}", f"sentinel announce-ip {host}",
                    f"sentinel monitor g {hosts[0]} {node_ports[0]} {DEFAULTS.quorum}",
                    f"sentinel down-after-milliseconds g {DEFAULTS.down_after_ms}",
                    f"sentinel failover-timeout g {DEFAULTS.failover_timeout_ms}",
                    "sentinel parallel-syncs g 1",
                ]) + "\n"
            )  # fmt: skip
            self.sentinels.append((host, port))
            self.sentinel_procs.append(self._spawn([self.binary, str(conf), "--sentinel"]))
        if not wait_until(self.ready, READY_TIMEOUT_S, 0.2):
            raise SystemExit("the Redis Sentinel anchor did not come up")

    def close(self) -> None:
        for proc in [*self.procs.values(), *self.sentinel_procs]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(10)

    def _masters(self) -> set[str]:
        seen = set()
        for host, port in self.sentinels:
            client = redis.Redis(host=host, port=port, socket_timeout=1, decode_responses=True)
            try:
                got = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "g")  # type: ignore[no-untyped-call]
                seen.add(f"{got[0]}:{got[1]}")
            except redis.RedisError:
                seen.add("?")
            finally:
                client.close()
        return seen

    def primary(self) -> tuple[str, int]:
        (address,) = self._masters()
        return address, self.procs[address].pid

    def connect(self) -> redis.Redis:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            self.sentinels, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=0.5
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            "g", socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        return client

    def failed_over(self, old: str) -> bool:
        masters = self._masters()
        return len(masters) == 1 and old not in masters and "?" not in masters

    def bring_back(self, old: str, pid: int, sig: signal.Signals) -> None:
        if sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            return
        self.procs[old].wait(5)
        self.procs[old] = self._spawn(self.argv[old])  # its config as Sentinel left it

    def ready(self) -> bool:
        masters = self._masters()
        if len(masters) != 1 or "?" in masters:
            return False
        (primary,) = masters
        for address in self.addresses:
            host, port = address.rsplit(":", 1)
            rep = _replication(host, int(port))
            if address == primary:
                if rep["role"] != "master":
                    return False
            elif (
                rep["role"] != "slave"
                or f"{rep['master_host']}:{rep['master_port']}" != primary
                or rep["master_link_status"] != "up"
            ):
                return False
        return True


def trial(side: Side, variant: str, n: int) -> tuple[float | None, int, int]:
    """(unavailability s, lost acknowledged writes, acknowledged writes) of one trial."""
    sig = SIGNALS[variant]
    old, pid = side.primary()
    writer = Writer(side.connect, f"{variant}{n}")
    writer.start()
    time.sleep(STEADY_S)
    writer.t_fault = t_fault = time.monotonic()
    os.kill(pid, sig)
    acted = False
    deadline = t_fault + MAX_WRITE_S
    while time.monotonic() < deadline:
        if not acted and (
            time.monotonic() - t_fault > ACT_AFTER_S
            or (_safe(side.failed_over, old) and writer.recovered.is_set())
        ):
            side.bring_back(old, pid, sig)
            acted = True
        if acted and writer.recovered.is_set():
            break
        time.sleep(0.05)
    if not acted:
        side.bring_back(old, pid, sig)
    time.sleep(AFTER_S)
    writer.stop.set()
    writer.join(10)
    if not wait_until(side.ready, READY_TIMEOUT_S, 0.2):
        log(f"{side.label}: not whole again {READY_TIMEOUT_S:.0f} s after trial {n}")
    window = availability(writer.ops, t_fault, lambda _k: True).window_s
    final = read_back(side, {op.key for op in writer.ops})
    lost = lost_writes(writer.ops, final)
    return window, len(lost), sum(1 for op in writer.ops if op.outcome == "ok")


def _safe(check: Any, *args: Any) -> bool:
    try:
        return bool(check(*args))
    except Exception:
        return False


def read_back(side: Side, keys: set[str]) -> dict[str, int | None]:
    client = side.connect()
    out: dict[str, int | None] = {}
    try:
        ordered = sorted(keys)
        for i in range(0, len(ordered), 500):
            chunk = ordered[i : i + 500]
            for _ in range(5):
                try:
                    values = client.mget(chunk)
                    break
                except redis.RedisError:
                    time.sleep(0.2)
            else:
                continue
            for key, value in zip(chunk, values, strict=True):
                out[key] = None if value is None else int(value)
    finally:
        client.close()
    return out


def benchmark(host: str, port: int, pipeline: int, n: int) -> float:
    """redis-benchmark SET+GET ops/s (the mean of the two)."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return float("nan")
    out = subprocess.run(
        [binary, "-h", host, "-p", str(port), "-t", "set,get", "-n", str(n), "-c", "50",
         "-P", str(pipeline), "--csv", "-r", "100000"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out.stdout[out.stdout.find('"test"') :])))
    rates = [float(r["rps"]) for r in rows if r.get("rps")]
    return sum(rates) / len(rates) if rates else float("nan")


def compare_forwarding(rounds: int, n: int) -> None:
    """The primary endpoint's two ways of moving bytes (router.standalone.FORWARD), each in a
    group of its own started side by side, measured in alternated rounds (so that load from
    elsewhere on the machine hits both alike); the best round of each is printed."""
    modes = ("splice", "copy")
    tmp = Path(tempfile.mkdtemp(prefix="cf-cmd-fwd-"))
    groups: dict[str, Ours] = {}
    best: dict[tuple[str, int], float] = {}
    try:
        for mode in modes:
            os.environ["CACHEFLEET_FORWARD"] = mode  # inherited by the group's router
            (tmp / mode).mkdir()
            groups[mode] = Ours(tmp / mode)
            groups[mode].start()
        os.environ.pop("CACHEFLEET_FORWARD", None)
        for r in range(rounds):
            for pipeline in (1, 16):
                for mode in (*modes, "direct"):
                    side = groups["copy" if mode == "direct" else mode]
                    if mode == "direct":
                        host, port = side.primary()[0].rsplit(":", 1)
                        rate = benchmark(host, int(port), pipeline, n)
                    else:
                        rate = benchmark(*side.endpoint, pipeline, n)
                    log(f"round {r + 1} -P {pipeline} {mode}: {rate:,.0f} ops/s")
                    if rate == rate:  # not NaN
                        best[(mode, pipeline)] = max(best.get((mode, pipeline), 0.0), rate)
    finally:
        for side in groups.values():
            side.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nPrimary endpoint by forwarding mode: redis-benchmark -t set,get -n {n} -c 50, "
          f"best of {rounds} alternated rounds (ops/s, mean of SET and GET)")  # fmt: skip
    print("| pipeline | splice | copy | direct | splice / direct | copy / direct |")
    print("|---|---|---|---|---|---|")
    for pipeline in (1, 16):
        got = {m: best.get((m, pipeline), float("nan")) for m in (*modes, "direct")}
        print(f"| -P {pipeline} | {got['splice']:,.0f} | {got['copy']:,.0f} | "
              f"{got['direct']:,.0f} | {got['splice'] / got['direct']:.2f} | "
              f"{got['copy'] / got['direct']:.2f} |")  # fmt: skip


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--variants", default="kill,pause")
    parser.add_argument("--only", choices=("cachefleet", "redis-sentinel"), default=None)
    parser.add_argument("--n", type=int, default=200_000, help="redis-benchmark requests")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs (a temp dir)")
    parser.add_argument(
        "--compare-forwarding", type=int, default=0, metavar="ROUNDS",
        help="only the endpoint's throughput: a group per forwarding mode (splice, copy), "
        "ROUNDS alternated rounds, best of each",
    )  # fmt: skip
    args = parser.parse_args()
    if args.compare_forwarding:
        compare_forwarding(args.compare_forwarding, args.n)
        return
    tmp = Path(tempfile.mkdtemp(prefix="cf-cmd-bench-"))
    results: dict[tuple[str, str], list[tuple[float | None, int, int]]] = {}
    throughput: list[tuple[int, float, float]] = []
    try:
        sides: list[Side] = []
        if args.only in (None, "cachefleet"):
            sides.append(Ours(tmp, args.keep))
        if args.only in (None, "redis-sentinel"):
            sides.append(Anchor(tmp))
        for side in sides:
            side.start()
            try:
                for variant in args.variants.split(","):
                    for n in range(args.trials):
                        got = trial(side, variant, n)
                        results.setdefault((side.label, variant), []).append(got)
                        log(f"{side.label} {variant} #{n + 1}: unavailable {fmt(got[0])} s, "
                            f"lost {got[1]} of {got[2]} acknowledged")  # fmt: skip
                if isinstance(side, Ours) and not args.no_throughput:
                    address, _ = side.primary()
                    host, port = address.rsplit(":", 1)
                    for pipeline in (1, 16):
                        via = benchmark(*side.endpoint, pipeline, args.n)
                        direct = benchmark(host, int(port), pipeline, args.n)
                        throughput.append((pipeline, via, direct))
            finally:
                side.close()
    finally:
        if args.keep:
            log(f"logs kept under {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    shape = f"3 zones, 1 primary + {REPLICAS} replicas, down_after {DEFAULTS.down_after_ms} ms"
    print(f"\nFailover of a cluster-mode-disabled group ({shape}), {args.trials} trials each")
    print("| side | fault | unavailability p50 (s) | p99 (s) | lost acknowledged writes | "
          "acknowledged |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for (label, variant), rows in results.items():
        windows = [w for w, _, _ in rows if w is not None]
        missing = len(rows) - len(windows)
        note = f" ({missing} never recovered)" if missing else ""
        print(f"| {label} | {variant} | {fmt(percentile(windows, 50))} | "
              f"{fmt(percentile(windows, 99))}{note} | {sum(r[1] for r in rows)} | "
              f"{sum(r[2] for r in rows)} |")  # fmt: skip
    if throughput:
        print(f"\nPrimary endpoint vs the primary directly: redis-benchmark -t set,get "
              f"-n {args.n} -c 50 (ops/s, mean of SET and GET)")  # fmt: skip
        print("| pipeline | primary endpoint | direct | ratio |")
        print("|---|---|---|---|")
        for pipeline, via, direct in throughput:
            print(f"| -P {pipeline} | {via:,.0f} | {direct:,.0f} | {via / direct:.2f} |")


if __name__ == "__main__":
    main()
