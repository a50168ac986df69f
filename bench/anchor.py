"""The anchor the benchmarks compare against: a plain Redis Cluster of the topology's shape
(same zones' addresses, shards and replicas per shard, same engine binary), created with
``redis-cli --cluster create`` and failed over by the engine itself.

Used by ``bench/up_time.py`` (time from starting the engines to every replica in sync) and
``bench/failover.py`` (the engine's own replica failover beside cachefleet's sentinels).
Every node runs with diskless sync without delay and ``cluster-node-timeout`` = the topology's
``down_after_ms``, so the figures compare orchestration, not engine tuning.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cachefleet import ports  # noqa: E402
from cachefleet.engine import resolve_cli_binary, resolve_engine_binary  # noqa: E402
from cachefleet.plan import place  # noqa: E402
from cachefleet.topology import Topology  # noqa: E402

Addr = tuple[str, int]


def wait_until(check: Callable[[], bool], timeout: float, interval: float) -> bool:
    """Poll `check` (exceptions count as not yet) until true or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class PlainCluster:
    """Engine processes started here and joined into one cluster; `close` kills them all.

    `full_coverage`: the engine's ``cluster-require-full-coverage`` (None: the engine's
    default, yes). `logs`: each node writes ``node.log`` in its directory."""

    def __init__(
        self,
        topology: Topology,
        *,
        tmp: Path | None = None,
        full_coverage: bool | None = None,
        logs: bool = False,
    ) -> None:
        self.topo = topology
        self.binary = resolve_engine_binary(topology.engine, topology.engine_binary)
        cli = resolve_cli_binary()
        if not cli:
            raise RuntimeError("redis-cli or valkey-cli is needed for the plain cluster")
        self.cli = cli
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-plain-", dir=tmp))
        self.full_coverage = full_coverage
        self.logs = logs
        self.placed = place(topology)
        self.argvs: list[list[str]] = []
        self.addrs: list[Addr] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- processes --------------------------------------------------------------------------

    def _argv(self, i: int, host: str, port: int, bus_port: int) -> list[str]:
        d = self.tmp / str(i)
        d.mkdir(exist_ok=True)
        args: dict[str, object] = {
            "port": port, "bind": host, "bind-source-addr": host,
            "cluster-announce-ip": host, "cluster-enabled": "yes", "cluster-port": bus_port,
            "cluster-config-file": "nodes.conf", "dir": d, "save": "", "appendonly": "no",
            "repl-diskless-sync": "yes", "repl-diskless-sync-delay": 0,
            "cluster-node-timeout": self.topo.sentinels.down_after_ms,
        }  # fmt: skip
        if self.full_coverage is not None:
            args["cluster-require-full-coverage"] = "yes" if self.full_coverage else "no"
        if self.logs:
            args["logfile"] = d / "node.log"
        return [self.binary] + [x for k, v in args.items() for x in (f"--{k}", str(v))]

    def spawn(self, i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argvs[i], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def launch(self) -> None:
        """Start every engine process (ports allocated now) and wait until each answers."""
        hosts = [self.topo.zone_address(z) for _, _, z in self.placed]
        got = ports.allocate(hosts, pairs=True)
        for i, host in enumerate(hosts):
            port, bus_port = got[i]
            self.argvs.append(self._argv(i, host, port, bus_port))
            self.addrs.append((host, port))
            self.procs.append(self.spawn(i))
        for i in range(len(self.addrs)):
            if not wait_until(functools.partial(self._ping, i), 20.0, 0.01):
                raise RuntimeError(f"engine at {self.addrs[i]} did not answer")

    def create(self) -> None:
        """`redis-cli --cluster create`, which takes the primaries first, then the replicas."""
        order = sorted(range(len(self.placed)), key=lambda i: self.placed[i][1] != 0)
        create = [f"{self.addrs[i][0]}:{self.addrs[i][1]}" for i in order]
        subprocess.run(
            [self.cli, "--cluster", "create", *create,
             "--cluster-replicas", str(self.topo.replicas_per_shard), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def restart(self, i: int) -> None:
        """Start node i again with the same argv and nodes.conf: it rejoins as a replica."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[i].wait(timeout=10)
        self.procs[i] = self.spawn(i)

    def index_of_pid(self, pid: int) -> int:
        return next(i for i, p in enumerate(self.procs) if p.pid == pid)

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- what the nodes say -------------------------------------------------------------------

    def _ping(self, i: int) -> bool:
        c = self.node(i)
        try:
            return bool(c.ping())
        finally:
            c.close()

    def node(self, i: int) -> redis.Redis:
        host, port = self.addrs[i]
        return redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1)

    def _ask(self, i: int, *command: str) -> str:
        c = self.node(i)
        try:
            raw = c.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            c.close()
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def nodes_view(self, i: int) -> list[list[str]]:
        """Node i's CLUSTER NODES, one list of fields per line."""
        text = self._ask(i, "CLUSTER", "NODES")
        return [line.split() for line in text.splitlines() if line.strip()]

    def role_of(self, i: int) -> str:
        return next((f[2] for f in self.nodes_view(i) if "myself" in f[2]), "")

    def synced(self) -> bool:
        """cluster_state:ok on every node and every replica's link to its primary up (the end
        condition `cachefleet up` also waits for)."""
        for i in range(len(self.addrs)):
            if "cluster_state:ok" not in self._ask(i, "CLUSTER", "INFO"):
                return False
            c = self.node(i)
            try:
                repl = c.info("replication")
            finally:
                c.close()
            if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                return False
        return True

    def whole(self) -> bool:
        """Synced, every process running, and every node agreeing on one configuration with
        no failure flags and the topology's replicas per primary."""
        n = len(self.addrs)
        if any(p.poll() is not None for p in self.procs) or not self.synced():
            return False
        views = set()
        for i in range(n):
            rows = self.nodes_view(i)
            if len(rows) != n:
                return False
            view = []
            for f in rows:
                flags = set(f[2].split(",")) - {"myself"}
                if flags & {"fail", "fail?", "handshake", "noaddr"} or f[7] != "connected":
                    return False
                view.append((f[0], "master" in flags, f[3], " ".join(f[8:])))
            views.add(tuple(sorted(view)))
        if len(views) != 1:
            return False
        (agreed,) = views
        primaries = {v[0] for v in agreed if v[1]}
        replicas = [v for v in agreed if not v[1]]
        per = self.topo.replicas_per_shard
        return len(primaries) == self.topo.shards and all(
            sum(r[2] == m for r in replicas) == per for m in primaries
        )

    def primaries(self) -> list[tuple[Addr, set[int]]]:
        """The live primaries (as node 0 sees them) with their slots, in slot order."""
        found: list[tuple[int, Addr, set[int]]] = []
        for f in self.nodes_view(0):
            flags = f[2].split(",")
            if "master" not in flags or "fail" in flags:
                continue
            slots: set[int] = set()
            for s in f[8:]:
                if s.startswith("["):
                    continue  # a slot in migration
                a, _, b = s.partition("-")
                slots.update(range(int(a), int(b or a) + 1))
            if slots:
                host, port = f[1].split("@")[0].rsplit(":", 1)
                found.append((min(slots), (host, int(port)), slots))
        return [(addr, slots) for _, addr, slots in sorted(found)]
