"""Helpers shared by the tests: the real CLI, real clusters in temp state dirs, polling."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from hypothesis import strategies as st

from cachefleet.plan import Plan
from cachefleet.proc import live_processes, running
from cachefleet.resp import encode_command
from cachefleet.state import ClusterDir

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cachefleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cachefleet {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def base_topology(name: str, **overrides: Any) -> dict[str, Any]:
    topo: dict[str, Any] = {
        "name": name,
        "engine": "valkey",
        "zones": ["az-a", "az-b", "az-c"],
        "shards": 3,
        "replicas_per_shard": 1,
        "node_type": "cache.micro",
        "ports": {"base": "auto"},
        "router": {"port": "auto"},
        "bus": {"url": "embedded"},
    }
    topo.update(overrides)
    return topo


@dataclass
class RunningCluster:
    name: str
    state_dir: Path
    topology_path: Path
    up_output: str
    seen_pids: dict[str, int] = field(default_factory=dict)

    @property
    def cdir(self) -> ClusterDir:
        return ClusterDir(self.state_dir, self.name)

    @property
    def plan(self) -> Plan:
        return self.cdir.load_plan()

    @property
    def router(self) -> tuple[str, int]:
        plan = self.plan
        return plan.router_host, plan.router_port

    def status(self) -> dict[str, Any]:
        # `status` exits 1 while the cluster is not available: the JSON is the answer here.
        out = cli("status", self.name, "--json", "--state-dir", str(self.state_dir), check=False)
        if out.returncode not in (0, 1, 3):
            raise AssertionError(f"status exited {out.returncode}\n{out.stdout}\n{out.stderr}")
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def admin(self, address: str) -> redis.Redis:
        """A connection to one node as the control plane's engine user (clients' `default`
        user may not run cluster-changing commands such as CLUSTER SETSLOT or MIGRATE)."""
        host, port = address.rsplit(":", 1)
        auth = self.cdir.admin()
        return redis.Redis(
            host=host, port=int(port), username=auth.user, password=auth.password,
            socket_timeout=10, decode_responses=True,
        )  # fmt: skip

    def remember_pids(self) -> None:
        self.seen_pids.update(live_processes(self.cdir))

    def diagnosis(self, events: int = 60, log_lines: int = 20) -> str:
        """The last events and the end of every process's log: printed when a test on this
        cluster fails, so a failure that does not repeat can still be explained."""
        out = [f"--- cluster {self.name}: last {events} events"]
        with contextlib.suppress(OSError):
            out += self.cdir.events_path.read_text().splitlines()[-events:]
        for log in sorted(self.cdir.logs.glob("*.log")) if self.cdir.logs.exists() else []:
            with contextlib.suppress(OSError):
                out.append(f"--- {log.name}: last {log_lines} lines")
                out += log.read_text(errors="replace").splitlines()[-log_lines:]
        return "\n".join(out)

    def down(self, purge: bool = True) -> subprocess.CompletedProcess[str]:
        self.remember_pids()
        args = ["down", self.name, "--state-dir", str(self.state_dir)]
        return cli(*args, *(["--purge"] if purge else []))


def router_client(c: RunningCluster, **kw: Any) -> redis.Redis:
    """A plain (not cluster-aware) client of the router, as an application would use it."""
    host, port = c.router
    kw.setdefault("socket_timeout", 10)
    return redis.Redis(host=host, port=port, decode_responses=True, **kw)


def node_client(address: str, timeout: float = 10) -> redis.Redis:
    """A client of one node, as the clients' `default` user."""
    host, port = address.rsplit(":", 1)
    return redis.Redis(host=host, port=int(port), socket_timeout=timeout, decode_responses=True)


def start_cluster(tmp_path: Path, **overrides: Any) -> RunningCluster:
    name = overrides.pop("name", None) or f"t{uuid.uuid4().hex[:8]}"
    return up_topology(tmp_path, base_topology(name, **overrides))


def up_topology(tmp_path: Path, topo: dict[str, Any]) -> RunningCluster:
    """`up --detach` of a topology given whole (any engine or mode), in tmp_path/state."""
    name = str(topo["name"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    state = tmp_path / "state"
    out = cli("up", str(path), "--detach", "--state-dir", str(state))
    cluster = RunningCluster(name, state, path, out.stdout)
    cluster.remember_pids()
    return cluster


@contextlib.contextmanager
def cluster_up(tmp_path: Path, topo: dict[str, Any]) -> Iterator[RunningCluster]:
    """A cluster for the block: started from `topo`, then stopped, purged and checked by
    pid to have left nothing running."""
    cluster = up_topology(tmp_path, topo)
    try:
        yield cluster
    finally:
        cluster.down()
        assert_all_gone(cluster.seen_pids)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy (a generous bound to catch hangs)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def assert_all_gone(pids: dict[str, int]) -> None:
    alive = [f"{name}={pid}" for name, pid in pids.items() if running(pid)]
    assert not alive, f"processes left running: {alive}"


# Words and field names of the bus messages, for property tests of their parsers and handlers.
MESSAGE_WORDS = ["s1", "s2", "s3", "x", "az-b", "c-0001-001", "request", "vote", "elected"]
MESSAGE_FIELDS = [
    "type", "candidate", "voter", "shard", "failover_epoch", "epoch", "primary", "config_epoch",
    "granted", "sdown", "zone", "stalled", "failing_over", "node", "status", "id", "pid",
    "sentinel", "reason", "shards", "cluster", "x",
]  # fmt: skip


def message_json() -> st.SearchStrategy[Any]:
    """JSON values shaped like bus messages: known field names and words, any values."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True)
        | st.text(max_size=20)
        | st.sampled_from(MESSAGE_WORDS),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.sampled_from(MESSAGE_FIELDS), children, max_size=8)
        ),
        max_leaves=20,
    )


#: Requests that are not in the canonical form, or not whole (property tests of the request
#: framing and its C accelerator feed them between canonical ones).
ODD_REQUESTS = [
    b"*2\r\n+abc\r\n$1\r\na\r\n",  # a simple string where a bulk belongs
    b"*2\r\n=7\r\ntxt:abc\r\n+ab\r\n",  # lengths that could add up to canonical
    b"*2\r\n(123\r\n$1\r\na\r\n",
    b"*2\r\n$4\r\nECHO\r\n$1\r\naXY",  # no CRLF after an argument
    b"*1\r\n$4\r\nPING\n\r",
    b"*1\r\n$03\r\nabc\r\n",
    b"*01\r\n$3\r\nabc\r\n",
    b"*1\r\n$+3\r\nabc\r\n",
    b"*1\r\n$ 3\r\nabc\r\n",
    b"*1\r\n$3 \r\nabc\r\n",
    b"*1\r\n*1\r\n$1\r\na\r\n",
    b"*0\r\n",
    b"*-1\r\n",
    b"*1\r\n$-1\r\n",
    b"*12345678\r\n",
    b"*999999\r\n$1\r\na\r\n",
    b"*1\r\n$99999999999999999999\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n",  # incomplete
    b"PING\r\n",
    b"~1\r\n$1\r\na\r\n",
]


def request_pieces(arguments: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
    """Pieces of a client's byte stream: canonical requests, odd ones, random bytes."""
    return st.one_of(
        st.lists(arguments, min_size=1, max_size=4).map(
            lambda cs: b"".join(encode_command(c) for c in cs)
        ),
        st.sampled_from(ODD_REQUESTS),
        st.binary(max_size=30),
    )
