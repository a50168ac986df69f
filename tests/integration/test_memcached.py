"""A memcached cluster: real memcached nodes, Auto Discovery and the proxy, real clients.

One cluster for the module (3 nodes over 3 zones); the test that kills a node runs last.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import RunningCluster, assert_all_gone, cli, cluster_up, wait_for
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheServerError

from cachefleet.events import read_events
from cachefleet.proc import read_pid

pytestmark = pytest.mark.integration

ZONES = ["az-a", "az-b", "az-c"]


@pytest.fixture(scope="module")
def mc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    tmp = tmp_path_factory.mktemp("memcached")
    name = f"m{os.getpid() % 100000}"
    topo = {
        "name": name,
        "engine": "memcached",
        "zones": ZONES,
        "nodes": 3,
        "node_type": "cache.micro",
        "parameters": {"threads": 1, "max_item_size": "1m"},
        "ports": {"base": "auto"},
        "router": {"port": "auto", "workers": 1},
    }
    with cluster_up(tmp, topo) as cluster:
        yield cluster


def raw(addr: tuple[str, int], data: bytes, *, until: bytes = b"END\r\n") -> bytes:
    """Send bytes, read until the reply ends with `until` or the peer closes (bounded)."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(data)
        out = b""
        while not out.endswith(until):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def discovery(addr: tuple[str, int]) -> tuple[int, list[tuple[str, str, int]]]:
    """`config get cluster` parsed as a discovery client does: version, (host, ip, port)."""
    reply = raw(addr, b"config get cluster\r\n")
    header, rest = reply.split(b"\r\n", 1)
    length = int(header.split()[3])
    body = rest[:length].decode()
    version, line = body.split("\n")[:2]
    nodes = [(h, ip, int(p)) for h, ip, p in (e.split("|") for e in line.split())]
    return int(version), nodes


def node_of(
    c: RunningCluster, key: str, nodes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The node holding `key`, found by asking every node directly."""
    for node in nodes or c.status()["nodes"]:
        host, port = node["address"].rsplit(":", 1)
        client = Client((host, int(port)), timeout=3)
        try:
            if client.get(key) is not None:
                return dict(node)
        finally:
            client.close()
    raise AssertionError(f"no node holds {key!r}")


def test_status_lists_the_nodes_round_robin_over_the_zones(mc: RunningCluster) -> None:
    st = mc.status()
    assert st["engine"] == "memcached" and st["state"] == "available"
    assert "shards" not in st and st["sentinels"] == []
    assert [(n["id"], n["name"], n["zone"], n["healthy"]) for n in st["nodes"]] == [
        ("0001", f"{mc.name}-0001", "az-a", True),
        ("0002", f"{mc.name}-0002", "az-b", True),
        ("0003", f"{mc.name}-0003", "az-c", True),
    ]
    assert [n["address"].split(":")[0] for n in st["nodes"]] == [
        "127.0.1.1",
        "127.0.2.1",
        "127.0.3.1",
    ]
    assert st["router"]["address"] == f"{mc.router[0]}:{mc.router[1]}"
    text = cli("status", mc.name, "--state-dir", str(mc.state_dir)).stdout
    assert "(memcached): available" in text and f"node 0002 {mc.name}-0002" in text


def test_discovery_answers_in_the_managed_service_format_byte_for_byte(
    mc: RunningCluster,
) -> None:
    st = mc.status()
    entries = " ".join(
        f"{n['name']}|{n['address'].replace(':', '|')}"
        for n in sorted(st["nodes"], key=lambda n: n["name"])
    )
    payload = f"{st['epoch']}\n{entries}\n".encode()
    assert raw(mc.router, b"config get cluster\r\n") == (
        b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(payload), payload)
    )
    assert raw(mc.router, b"get AmazonElastiCache:cluster\r\n") == (
        b"VALUE AmazonElastiCache:cluster 0 %d\r\n%s\r\nEND\r\n" % (len(payload), payload)
    )
    assert raw(mc.router, b"version\r\n", until=b"\r\n").startswith(b"VERSION 1.")


def test_a_hash_client_fed_from_discovery_reaches_every_node(mc: RunningCluster) -> None:
    _, nodes = discovery(mc.router)
    assert len(nodes) == 3
    client = HashClient([(ip, port) for _, ip, port in nodes], timeout=5, connect_timeout=5)
    try:
        data = {f"hc:{i}": f"value-{i}" for i in range(300)}
        assert client.set_many(data) == []
        got = client.get_many(list(data))
        assert {k: v.decode() for k, v in got.items()} == data
    finally:
        client.close()
    for _, ip, port in nodes:  # the data is on the nodes themselves, spread over all three
        direct = Client((ip, port), timeout=3)
        try:
            assert int(direct.stats()[b"curr_items"]) > 30
        finally:
            direct.close()


def test_an_existing_auto_discovery_library_reads_the_node_list(mc: RunningCluster) -> None:
    """elasticache-auto-discovery (PyPI), unchanged: it splits the reply on \\n and reads the
    node line, so it depends on the exact layout of the bytes."""
    ead = pytest.importorskip("elasticache_auto_discovery")
    found = ead.discover(f"{mc.router[0]}:{mc.router[1]}", time_to_timeout=5)
    _, nodes = discovery(mc.router)
    assert [(h.decode(), ip.decode(), int(p)) for h, ip, p in found] == nodes


def test_the_proxy_serves_a_plain_client(mc: RunningCluster) -> None:
    client = Client(mc.router, timeout=5, connect_timeout=5)
    try:
        keys = [f"px:{i}" for i in range(60)]
        assert client.set_many({k: k.upper() for k in keys}) == []
        got = client.get_many(keys)  # one `get` line split over the nodes, merged in order
        assert {k: v.decode() for k, v in got.items()} == {k: k.upper() for k in keys}
        nodes = mc.status()["nodes"]
        assert len({node_of(mc, k, nodes)["name"] for k in keys[:12]}) > 1

        assert client.set("counter", "10")
        assert client.incr("counter", 5) == 15
        assert client.decr("counter", 20) == 0
        assert client.incr("missing-counter", 1) is None

        value, token = client.gets("px:1")
        assert value == b"PX:1"
        assert client.cas("px:1", "new", token) is True
        assert client.cas("px:1", "newer", token) is False  # the token moved on
        assert client.get("px:1") == b"new"

        client.set("quiet", "1", noreply=True)
        assert client.get("quiet") == b"1"
        assert client.add("quiet", "2", noreply=False) is False
        assert client.replace("quiet", "3", noreply=False) is True
        assert client.append("quiet", "4", noreply=False) is True
        assert client.prepend("quiet", "2", noreply=False) is True
        assert client.get("quiet") == b"234"
        assert client.touch("quiet", 100, noreply=False) is True
        assert client.delete("quiet", noreply=False) is True
        assert client.get("quiet") is None

        # gat, meta commands and an aggregated stats, on the raw protocol
        assert raw(mc.router, b"gat 100 px:2 nope\r\n") == b"VALUE px:2 0 4\r\nPX:2\r\nEND\r\n"
        assert raw(mc.router, b"ms meta 3 T0\r\nabc\r\nmg meta v\r\nmg none v q\r\nmn\r\n",
                   until=b"MN\r\n") == b"HD\r\nVA 3\r\nabc\r\nMN\r\n"  # fmt: skip
        stats = client.stats()
        assert int(stats[b"cluster_nodes"]) == 3 and int(stats[b"curr_items"]) >= 60
        assert client.version().startswith(b"1.")
    finally:
        client.close()


def test_malformed_input_costs_only_that_connection(mc: RunningCluster) -> None:
    with socket.create_connection(mc.router, timeout=5) as bad:
        bad.sendall(b"get ok\r\nset k 0 0 notanumber\r\n")
        got = b""
        while True:
            chunk = bad.recv(4096)
            if not chunk:
                break  # the proxy closed this connection after its error
            got += chunk
    assert got == b"END\r\nCLIENT_ERROR bad command line format\r\n"
    assert raw(mc.router, b"bogus\r\n", until=b"\r\n") == b"ERROR\r\n"  # unknown: not fatal
    client = Client(mc.router, timeout=5)
    try:
        assert client.set("after", "fine") and client.get("after") == b"fine"
    finally:
        client.close()


def test_a_paused_node_gets_server_error_not_a_hang(mc: RunningCluster) -> None:
    client = Client(mc.router, timeout=10)
    try:
        client.set("paused-key", "v")
        node = node_of(mc, "paused-key")
        pid = read_pid(mc.cdir.pid_file(f"node.{node['name']}"))
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(MemcacheServerError, match="unavailable"):
                client.get("paused-key")
            assert time.monotonic() - t0 < 8  # bounded by the proxy's request deadline
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: _get_or_none(mc, "paused-key") == b"v", 10, "the node answering again")
    finally:
        client.close()


def _get_or_none(c: RunningCluster, key: str) -> bytes | None:
    client = Client(c.router, timeout=3)
    try:
        value: bytes | None = client.get(key)
        return value
    except MemcacheServerError:
        return None
    finally:
        client.close()


def test_a_pymemcache_based_auto_discovery_client_follows_scaling(mc: RunningCluster) -> None:
    """django-elastipymemcache's AWSElastiCacheClient (a pymemcache HashClient that polls
    `config get cluster`, from PyPI, unchanged; skipped when it is not installed) sees the
    nodes, then the node `up` adds and, once it is removed again, the three."""
    aws = pytest.importorskip("django_elastipymemcache.client")
    client = aws.AWSElastiCacheClient(
        f"{mc.router[0]}:{mc.router[1]}", discovery_interval=0.2, timeout=5, connect_timeout=5
    )
    try:
        _, before = discovery(mc.router)
        assert sorted(client.clients) == sorted(f"{ip}:{port}" for _, ip, port in before)
        assert client.set("aws:k", "v") and client.get("aws:k") == b"v"
        topo = yaml.safe_load(mc.topology_path.read_text())
        scaled = mc.topology_path.with_name("scaled-aws.yaml")
        scaled.write_text(yaml.safe_dump({**topo, "nodes": 4}))
        cli("up", str(scaled), "--detach", "--state-dir", str(mc.state_dir))

        def sees(n: int) -> bool:
            time.sleep(0.25)  # past the client's discovery interval
            client.get("aws:poll")  # discovery runs before an operation
            return len(client.clients) == n

        wait_for(lambda: sees(4), 10, "the client discovering the fourth node")
        cli("up", str(mc.topology_path), "--detach", "--state-dir", str(mc.state_dir))
        wait_for(lambda: sees(3), 10, "the client dropping the fourth node")
    finally:
        client.close()
        mc.remember_pids()


def test_up_with_more_nodes_adds_one_and_with_fewer_removes_it(mc: RunningCluster) -> None:
    version, before = discovery(mc.router)
    topo = yaml.safe_load(mc.topology_path.read_text())
    scaled = mc.topology_path.with_name("scaled.yaml")
    scaled.write_text(yaml.safe_dump({**topo, "nodes": 4}))
    cli("up", str(scaled), "--detach", "--state-dir", str(mc.state_dir))
    grown, after = discovery(mc.router)
    assert grown == version + 1
    assert after[:3] == before and after[3][0] == f"{mc.name}-0004"
    assert after[3][1] == "127.0.1.1"  # node 4 (i = 3) in zone 3 mod 3: az-a
    assert mc.status()["nodes"][3]["healthy"]
    client = HashClient([(ip, port) for _, ip, port in after], timeout=5, connect_timeout=5)
    try:
        data = {f"grown:{i}": str(i) for i in range(200)}
        assert client.set_many(data) == []
        assert len(client.get_many(list(data))) == 200
    finally:
        client.close()
    added = [e for e in read_events(mc.cdir.events_path) if e["type"] == "node_added"]
    assert added[-1]["node"] == f"{mc.name}-0004" and added[-1]["zone"] == "az-a"

    cli("up", str(mc.topology_path), "--detach", "--state-dir", str(mc.state_dir))
    shrunk, again = discovery(mc.router)
    assert shrunk == version + 2 and again == before
    assert [n["name"] for n in mc.status()["nodes"]] == [name for name, _, _ in before]
    removed = [e for e in read_events(mc.cdir.events_path) if e["type"] == "node_removed"]
    assert removed[-1]["node"] == f"{mc.name}-0004"
    mc.remember_pids()


def test_a_killed_node_comes_back_empty_at_its_address_and_the_version_moves(
    mc: RunningCluster,
) -> None:
    """Runs last in this module: it empties one node."""
    version, before = discovery(mc.router)
    client = Client(mc.router, timeout=5)
    try:
        client.set("victim", "gone-soon")
        node = node_of(mc, "victim")
        pid = read_pid(mc.cdir.pid_file(f"node.{node['name']}"))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: discovery(mc.router)[0] > version, 15, "a new discovery version")
        new_version, after = discovery(mc.router)
        assert new_version == version + 1
        assert after == before  # replaced at the same address
        wait_for(lambda: mc.status()["state"] == "available", 15, "the cluster available")
        assert client.get("victim") is None  # the replacement is empty
        assert client.set("victim", "back") and client.get("victim") == b"back"
    finally:
        client.close()
    events = read_events(mc.cdir.events_path)
    replaced = [e for e in events if e["type"] == "node_replaced"]
    assert replaced and replaced[-1]["node"] == node["name"] and replaced[-1]["empty"] is True
    bumps = [e for e in events if e["type"] == "discovery_version"]
    assert bumps[-1]["version"] == version + 1 and bumps[-1]["node"] == node["name"]


def test_with_two_copies_no_key_is_lost_when_a_node_is_replaced_empty(tmp_path: Path) -> None:
    name = f"c{os.getpid() % 100000}"
    topo = {
        "name": name,
        "engine": "memcached",
        "zones": ZONES[:2],
        "nodes": 2,
        "node_type": "cache.micro",
        "parameters": {"threads": 1},
        "memcached": {"copies": 2},
        "ports": {"base": "auto"},
        "router": {"port": "auto", "workers": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    out = cli("up", str(path), "--detach", "--state-dir", str(tmp_path / "state"))
    cluster = RunningCluster(name, tmp_path / "state", path, out.stdout)
    cluster.remember_pids()
    try:
        version, nodes = discovery(cluster.router)
        client = Client(cluster.router, timeout=5)
        data = {f"copy:{i}": str(i) for i in range(100)}
        assert client.set_many(data, noreply=False) == []
        for _, ip, port in nodes:  # every key on both nodes
            direct = Client((ip, port), timeout=3)
            assert len(direct.get_many(list(data))) == 100
            direct.close()
        pid = read_pid(cluster.cdir.pid_file(f"node.{name}-0001"))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: discovery(cluster.router)[0] > version, 15, "the replacement")
        got = client.get_many(list(data))  # the empty replacement's keys come from the copy
        assert {k: v.decode() for k, v in got.items()} == data
        client.close()
    finally:
        cluster.down()
        assert_all_gone(cluster.seen_pids)


def test_a_chaos_run_kills_a_node_under_proxy_and_discovery_clients(tmp_path: Path) -> None:
    name = f"k{os.getpid() % 100000}"
    topo = {
        "name": name,
        "engine": "memcached",
        "zones": ZONES[:2],
        "nodes": 2,
        "node_type": "cache.micro",
        "parameters": {"threads": 1},
        "ports": {"base": "auto"},
        "router": {"port": "auto", "workers": 1},
    }
    (tmp_path / "topo.yaml").write_text(yaml.safe_dump(topo))
    scenario = {
        "name": "mc-kill",
        "topology": "topo.yaml",
        "trials": 1,
        "duration_s": 3,
        "workload": {"writers": 1, "keys": 50},
        "faults": [{"at_s": 1, "kind": "kill", "target": f"node:{name}-0002"}],
        "expect": {"max_unavailable_s": 10},
    }
    (tmp_path / "mc-kill.yaml").write_text(yaml.safe_dump(scenario))
    state = tmp_path / "state"
    out = cli("chaos", str(tmp_path / "mc-kill.yaml"), "--state-dir", str(state), timeout=120)
    assert "chaos mc-kill: passed" in out.stdout
    (run_dir,) = (state / name / "chaos").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    (trial,) = result["trials"]
    assert trial["faults"][0]["node"] == f"{name}-0002"
    assert trial["version_after"] == trial["version_before"] + 1
    assert trial["proxy"]["ops"] > 0 and trial["discovery"]["ops"] > 0
    cli("down", name, "--purge", "--state-dir", str(state))


def test_memcached_topology_errors_name_the_field(tmp_path: Path) -> None:
    bad = {"name": "bad", "engine": "memcached", "zones": ZONES, "nodes": 3, "shards": 2}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    out = cli("validate", str(path), check=False)
    assert out.returncode != 0 and "shards" in out.stderr


def test_failover_of_a_memcached_cluster_says_why_it_does_not_apply(mc: RunningCluster) -> None:
    out = cli("failover", mc.name, "--shard", "1", "--state-dir", str(mc.state_dir), check=False)
    assert out.returncode == 1
    assert "is a memcached cluster: its nodes have no replicas" in out.stderr
