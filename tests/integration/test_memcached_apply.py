"""`cachefleet apply` on a memcached cluster, under real clients; allowed_sources on it.

One 3-node cluster (two router workers) for the module: 3 -> 4 -> 3 nodes while a pymemcache
`Client` works through the proxy and a pymemcache `HashClient` is fed from `config get cluster`
(as an Auto Discovery client is), then a node-type change rolled out one node at a time. A
second one-node cluster admits 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import RunningCluster, assert_all_gone, cli, cluster_up
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

from cachefleet.events import read_events
from cachefleet.ops import firewall
from cachefleet.proc import read_pid

pytestmark = pytest.mark.integration

ZONES = ["az-a", "az-b", "az-c"]
KEYS = 2000
WORKLOAD_MAX_S = 60.0  # every loop here is bounded


def topology(name: str, nodes: int, node_type: str = "cache.micro") -> dict[str, Any]:
    return {
        "name": name,
        "engine": "memcached",
        "zones": ZONES,
        "nodes": nodes,
        "node_type": node_type,
        "parameters": {"threads": 1},
        "ports": {"base": "auto"},
        "router": {"port": "auto", "workers": 2},
    }


@pytest.fixture(scope="module")
def mc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    tmp = tmp_path_factory.mktemp("mcapply")
    name = f"ma{os.getpid() % 100000}"
    with cluster_up(tmp, topology(name, 3)) as cluster:
        yield cluster


def apply(c: RunningCluster, topo: dict[str, Any], *extra: str) -> str:
    c.topology_path.write_text(yaml.safe_dump(topo))
    out = cli("apply", str(c.topology_path), "--yes", *extra, "--state-dir", str(c.state_dir))
    c.remember_pids()
    return out.stdout


def discovery(addr: tuple[str, int]) -> tuple[int, list[tuple[str, str, int]]]:
    """`config get cluster` parsed as a discovery client does: version, (host, ip, port)."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"config get cluster\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            if reply.startswith((b"SERVER_ERROR", b"ERROR")) and reply.endswith(b"\r\n"):
                raise AssertionError(f"config get cluster: {reply!r}")
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    header, rest = reply.split(b"\r\n", 1)
    body = rest[: int(header.split()[3])].decode()
    version, line = body.split("\n")[:2]
    return int(version), [(h, ip, int(p)) for h, ip, p in (e.split("|") for e in line.split())]


@dataclass
class Workload:
    """A proxy client and a discovery client, each in a thread, until stopped (bounded)."""

    router: tuple[str, int]
    stop: threading.Event = field(default_factory=threading.Event)
    proxy_ops: int = 0
    proxy_errors: list[tuple[float, str]] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    versions: list[tuple[int, int]] = field(default_factory=list)  # (version, nodes) seen
    hash_ops: int = 0
    hash_errors: list[tuple[float, str]] = field(default_factory=list)
    poll_errors: list[str] = field(default_factory=list)  # `config get cluster` failures
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._proxy, self._discovery):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _proxy(self) -> None:
        client = Client(self.router, timeout=5, connect_timeout=5, no_delay=True)
        deadline = time.monotonic() + WORKLOAD_MAX_S
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            key = f"w:{i % 500}"
            try:
                client.set(key, f"{key}:{i}")
                got = client.get(key)
                if got is not None and not got.decode().startswith(f"{key}:"):
                    self.wrong.append(f"{key} -> {got!r}")
                self.proxy_ops += 2
            except Exception as exc:  # every failure counts
                self.proxy_errors.append((time.monotonic(), repr(exc)))
                client.close()
            i += 1
        client.close()

    def _discovery(self) -> None:
        version, nodes = discovery(self.router)
        self.versions.append((version, len(nodes)))
        addrs = {(ip, port) for _, ip, port in nodes}
        client = HashClient(sorted(addrs), timeout=2, connect_timeout=2, no_delay=True)
        deadline = time.monotonic() + WORKLOAD_MAX_S
        last_poll = time.monotonic()
        i = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if time.monotonic() - last_poll > 0.2:  # as a discovery client polls
                last_poll = time.monotonic()
                try:
                    seen, nodes = discovery(self.router)
                except (OSError, AssertionError) as exc:
                    self.poll_errors.append(repr(exc))
                    continue
                if seen != version:
                    version = seen
                    self.versions.append((version, len(nodes)))
                    addrs = {(ip, port) for _, ip, port in nodes}
                    client.close()  # a client built from the new list, as discovery clients do
                    client = HashClient(sorted(addrs), timeout=2, connect_timeout=2, no_delay=True)
            key = f"d:{i % 500}"
            try:
                client.set(key, b"x")
                client.get(key)
                self.hash_ops += 2
            except Exception as exc:
                self.hash_errors.append((time.monotonic(), repr(exc)))
            i += 1
        client.close()


def events_of(c: RunningCluster, kinds: set[str]) -> list[dict[str, Any]]:
    return [e for e in read_events(c.cdir.events_path) if e.get("type") in kinds]


def test_dry_run_prints_the_new_node_and_changes_nothing(mc: RunningCluster) -> None:
    before = discovery(mc.router)
    out = apply(mc, topology(mc.name, 4), "--dry-run", "--json")
    data = json.loads(out[out.index("{") :])
    (step,) = data["steps"]
    assert step["step"] == "add_nodes" and step["nodes"] == [f"{mc.name}-0004"]
    assert "az-a" in step["text"] and "misses" in step["text"]
    assert data["summary"]["nodes_added"] == 1
    assert discovery(mc.router) == before and len(mc.plan.nodes) == 3
    mc.topology_path.write_text(yaml.safe_dump(topology(mc.name, 3)))
    marker = mc.cdir.root / "modifying.json"  # what an apply under way leaves
    marker.write_text("{}")
    try:
        assert mc.status()["state"] == "modifying"
    finally:
        marker.unlink()


def test_three_to_four_to_three_nodes_under_proxy_and_discovery_clients(
    mc: RunningCluster,
) -> None:
    proxy = Client(mc.router, timeout=5)
    keys = [f"k:{i}" for i in range(KEYS)]
    assert proxy.set_many({k: k for k in keys}) == []
    v0, nodes0 = discovery(mc.router)
    assert len(nodes0) == 3
    work = Workload(mc.router)
    work.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        out = apply(mc, topology(mc.name, 4))
        up_s = time.monotonic() - t0
        v1, nodes1 = discovery(mc.router)
        new = [n for n in nodes1 if n[0] == f"{mc.name}-0004"]
        assert v1 == v0 + 1 and len(nodes1) == 4 and new, out
        assert new[0][1] == "127.0.1.1"  # node 4 is in zone 4 mod 3: az-a
        assert new[0][2] not in {p for _, _, p in nodes0}  # (ports.base auto: a free one)
        got = proxy.get_many(keys)
        moved = 1 - len(got) / KEYS
        assert all(got[k] == k.encode() for k in got)
        time.sleep(0.5)
        t1 = time.monotonic()
        out = apply(mc, topology(mc.name, 3))
        down_s = time.monotonic() - t1
        v2, nodes2 = discovery(mc.router)
        assert v2 == v1 + 1 and nodes2 == nodes0, out
        time.sleep(0.5)
    finally:
        work.finish()
        proxy.close()
    gone = f"{mc.name}-0004"
    assert read_pid(mc.cdir.pid_file(f"node.{gone}")) is None
    assert not mc.cdir.node_dir(gone).exists()
    kinds = [e["type"] for e in events_of(mc, {"node_added", "node_removed", "modify_started",
             "modify_completed", "discovery_version"})][-8:]  # fmt: skip
    assert kinds == [
        "modify_started", "node_added", "discovery_version", "modify_completed",
        "modify_started", "discovery_version", "node_removed", "modify_completed",
    ]  # fmt: skip
    print(
        f"\nkeys moved 3 -> 4: {moved:.1%} of {KEYS} (ideal 25%); apply took {up_s:.1f}s up, "
        f"{down_s:.1f}s down; proxy {work.proxy_ops} ops, {len(work.proxy_errors)} errors; "
        f"discovery client {work.hash_ops} ops, {len(work.hash_errors)} errors, versions "
        f"{work.versions}"
    )
    assert 0.10 < moved < 0.40
    # the proxy: nodes join after they serve and leave after the ring forgot them
    assert work.proxy_errors == [] and work.wrong == []
    # the discovery client saw the version move and the node list grow and shrink
    assert [n for _, n in work.versions][-3:] == [3, 4, 3] and work.poll_errors == []
    assert [v for v, _ in work.versions][-3:] == [v0, v1, v2]
    assert work.hash_ops > 0 and work.proxy_ops > 0


def test_a_node_type_change_restarts_the_nodes_one_at_a_time(mc: RunningCluster) -> None:
    topo = topology(mc.name, 3, node_type="cache.small")
    plan_out = cli("apply", str(_write(mc, topo)), "--dry-run", "--state-dir", str(mc.state_dir))
    assert "loses its items" in plan_out.stdout and "node_type cache.micro -> cache.small" in (
        plan_out.stdout
    )
    pids = {n.name: read_pid(mc.cdir.pid_file(f"node.{n.name}")) for n in mc.plan.nodes}
    v0, _ = discovery(mc.router)
    work = Workload(mc.router)
    work.start()
    try:
        out = apply(mc, topo)
    finally:
        work.finish()
    after = {n.name: read_pid(mc.cdir.pid_file(f"node.{n.name}")) for n in mc.plan.nodes}
    assert all(after[n] != pids[n] for n in pids), out
    st = mc.status()
    assert all(n["healthy"] for n in st["nodes"])
    for n in st["nodes"]:
        host, port = n["address"].rsplit(":", 1)
        client = Client((host, int(port)), timeout=3)
        try:
            assert int(client.stats(b"settings")[b"maxbytes"]) == 256 * 1024**2, n
        finally:
            client.close()
    again = cli("apply", str(mc.topology_path), "--dry-run", "--state-dir", str(mc.state_dir))
    assert "no changes" in again.stdout
    # one node down at a time: errors only on the restarting node's keys, briefly
    window = (
        max(t for t, _ in work.proxy_errors) - min(t for t, _ in work.proxy_errors)
        if work.proxy_errors
        else 0.0
    )
    print(
        f"\nnode-type change: proxy {work.proxy_ops} ops, {len(work.proxy_errors)} errors over "
        f"{window:.2f}s; discovery version {v0} -> {discovery(mc.router)[0]}"
    )
    assert len(work.proxy_errors) < max(work.proxy_ops // 4, 10)
    assert work.wrong == []


def test_copies_change_restarts_the_router_workers_one_at_a_time(mc: RunningCluster) -> None:
    topo = {**topology(mc.name, 3, node_type="cache.small"), "memcached": {"copies": 2}}
    before = _routers(mc)
    work = Workload(mc.router)
    work.start()
    try:
        out = apply(mc, topo)
    finally:
        work.finish()
    assert "restart routers" in out and all(p != before[n] for n, p in _routers(mc).items())
    proxy = Client(mc.router, timeout=5)
    try:
        assert proxy.set("copied", b"twice")
    finally:
        proxy.close()
    holders = 0
    for n in mc.status()["nodes"]:
        host, port = n["address"].rsplit(":", 1)
        client = Client((host, int(port)), timeout=3)
        try:
            holders += client.get("copied") == b"twice"
        finally:
            client.close()
    assert holders == 2
    # two workers restarted one at a time: the port stayed open
    kinds = sorted({e.split("(")[0] for _, e in work.proxy_errors})
    print(f"\ncopies 1 -> 2: proxy {work.proxy_ops} ops, {len(work.proxy_errors)} errors {kinds}")
    assert not [e for e in work.proxy_errors if "Refused" in e[1]]
    # a worker that starts again serves the node list at once (from the saved layout)
    assert work.poll_errors == []


def _routers(c: RunningCluster) -> dict[str, int | None]:
    return {p.stem: read_pid(p) for p in sorted(c.cdir.pid_file("router").parent.glob("router*"))}


def _write(c: RunningCluster, topo: dict[str, Any]) -> Path:
    c.topology_path.write_text(yaml.safe_dump(topo))
    return c.topology_path


def _ask_from(source: str, addr: tuple[str, int]) -> bytes:
    """`version` from `source` (a loopback address): the reply, b"" when closed or reset."""
    with socket.create_connection(addr, timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(b"version\r\n")
        try:
            return sock.recv(64)
        except ConnectionResetError:
            return b""


def test_allowed_sources_on_a_memcached_cluster(tmp_path: Path) -> None:
    name = f"mas{os.getpid() % 100000}"
    topo = {**topology(name, 1), "security": {"allowed_sources": ["127.0.0.1/32"]}}
    topo["router"] = {"port": "auto", "workers": 1}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    state = tmp_path / "state"
    out = cli("up", str(path), "--detach", "--state-dir", str(state))
    c = RunningCluster(name, state, path, out.stdout)
    c.remember_pids()
    try:
        assert _ask_from("127.0.0.1", c.router).startswith(b"VERSION ")
        assert _ask_from("127.0.0.2", c.router) == b""
        assert _ask_from("127.0.0.1", c.router).startswith(b"VERSION ")  # it serves on
        assert "admits 127.0.0.1/32 only" in out.stdout
        node = c.plan.nodes[0]
        if firewall.available() is not None:
            assert "nodes rely on their zone address binding" in out.stdout
        else:
            assert "iptables rules on every node port" in out.stdout
            assert _ask_from("127.0.0.1", (node.host, node.port)).startswith(b"VERSION ")
            with pytest.raises(OSError):
                _ask_from("127.0.0.2", (node.host, node.port))
        assert c.status()["state"] == "available"
    finally:
        c.down()
    assert_all_gone(c.seen_pids)
    if firewall.available() is None:
        listed = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True)
        assert firewall.tag(name) not in listed.stdout
