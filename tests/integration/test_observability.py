"""Observing a running cluster: `logs` (merged, followed), `/metrics`, `top`."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from helpers import (
    ROOT,
    RunningCluster,
    assert_all_gone,
    cli,
    router_client,
    start_cluster,
    wait_for,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cachefleet.proc import live_processes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    c = start_cluster(tmp_path_factory.mktemp("observe"), shards=2)
    yield c
    c.down()
    assert_all_gone(c.seen_pids)


def cachefleet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cachefleet", *args]


class LineReader:
    """A child's stdout, line by line, without ever blocking the test for longer than asked."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: [self.lines.put(x) for x in stdout], daemon=True).start()

    def until(self, check: object, timeout: float) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(self.lines.get(timeout=0.2))
            except queue.Empty:
                continue
            if callable(check) and check(seen[-1]):
                return seen
        raise AssertionError(f"not seen within {timeout}s; last lines: {seen[-5:]}")


def test_logs_merges_every_process_by_time(cluster: RunningCluster) -> None:
    out = subprocess.run(
        cachefleet_cmd("logs", cluster.name, "--json", "--state-dir", str(cluster.state_dir)),
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    records = [json.loads(line) for line in out.splitlines()]
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps)
    kinds = {r["process"].split(".")[0] for r in records}
    assert {"broker", "agent", "sentinel", "router", "supervisor", "node"} <= kinds
    assert any(r["event"] == "supervisor_started" for r in records)
    human = subprocess.run(
        cachefleet_cmd("logs", cluster.name, "sentinel.s1", "--state-dir", str(cluster.state_dir)),
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    assert human and all(" sentinel.s1 " in line for line in human.splitlines())


def test_logs_follow_shows_a_restart_as_it_happens(cluster: RunningCluster) -> None:
    argv = cachefleet_cmd(
        "logs", cluster.name, "-f", "--json", "supervisor", "sentinel.s2",
        "--state-dir", str(cluster.state_dir),
    )  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        reader = LineReader(proc)
        reader.until(lambda line: "sentinel_started" in line, 30)  # the backlog
        time.sleep(0.5)
        killed_at = time.time()
        os.kill(live_processes(cluster.cdir)["sentinel.s2"], signal.SIGKILL)
        lines = reader.until(
            lambda line: '"sentinel_started"' in line and json.loads(line)["ts"] > killed_at, 30
        )
        fresh = [json.loads(line) for line in lines]
        assert any(
            r["process"] == "supervisor"
            and r["event"] == "process_restarted"
            and r["fields"]["process"] == "sentinel.s2"
            for r in fresh
        )
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise AssertionError(
                f"logs -f still running 30 s after SIGINT; stderr: {err[-2000:]}"
            ) from None
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def scrape(address: str) -> dict[str, Metric]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def total(families: dict[str, Metric], family: str, sample: str) -> float:
    return sum(s.value for s in families[family].samples if s.name == sample)


ENGINE_FAMILIES = [  # the parser names counter families without their _total
    "cachefleet_cpu_utilization_ratio",
    "cachefleet_engine_cpu_utilization_ratio",
    "cachefleet_freeable_memory_bytes",
    "cachefleet_bytes_used_for_cache",
    "cachefleet_database_memory_usage_ratio",
    "cachefleet_curr_connections",
    "cachefleet_new_connections",
    "cachefleet_cache_hits",
    "cachefleet_cache_misses",
    "cachefleet_cache_hit_rate_ratio",
    "cachefleet_evictions",
    "cachefleet_reclaimed",
    "cachefleet_curr_items",
    "cachefleet_replication_lag_seconds",
    "cachefleet_replication_bytes",
    "cachefleet_is_primary",
    "cachefleet_network_bytes_in",
    "cachefleet_network_bytes_out",
    "cachefleet_get_type_cmds",
    "cachefleet_set_type_cmds",
    "cachefleet_key_based_cmds",
    "cachefleet_get_type_cmds_latency_seconds",
    "cachefleet_set_type_cmds_latency_seconds",
]


def test_metrics_endpoint_serves_the_service_names_and_moves_with_traffic(
    cluster: RunningCluster,
) -> None:
    st = wait_for(
        lambda: (s := cluster.status())["metrics"]["address"] and s["metrics"]["running"] and s,
        30,
        "the metrics address in status",
    )
    address = st["metrics"]["address"]
    text_status = cli("status", cluster.name, "--state-dir", str(cluster.state_dir), check=False)
    assert f"metrics: http://{address}/metrics" in text_status.stdout

    plan = cluster.plan
    client = router_client(cluster)
    try:
        for i in range(200):  # reads and writes on every shard, so every rate has an interval
            client.set(f"warm:{i}", "x")
            client.get(f"warm:{i}")
        before = wait_for(
            lambda: (f := scrape(address)) and all(name in f for name in ENGINE_FAMILIES) and f,
            30,
            "every engine metric in a scrape",
        )
        node_up = before["cachefleet_node_up"].samples
        assert {s.labels["node"] for s in node_up} == {n.name for n in plan.nodes}
        for s in node_up:
            spec = plan.node(s.labels["node"])
            assert s.labels == {
                "cluster": cluster.name,
                "shard": str(spec.shard),
                "node": spec.name,
                "zone": spec.zone,
                "role": s.labels["role"],
            }
            assert s.labels["role"] in ("primary", "replica")
        primaries = [s for s in before["cachefleet_is_primary"].samples if s.value == 1]
        assert sorted(int(s.labels["shard"]) for s in primaries) == [1, 2]
        assert before["cachefleet_cache_hits"].documentation.startswith("CacheHits:")
        assert before["cachefleet_cache_hits"].type == "counter"
        assert total(before, "cachefleet_config_epoch", "cachefleet_config_epoch") == st["epoch"]
        assert "cachefleet_failovers" in before and "cachefleet_router_connections" in before

        hits_before = total(before, "cachefleet_cache_hits", "cachefleet_cache_hits_total")
        sets_before = total(before, "cachefleet_set_type_cmds", "cachefleet_set_type_cmds_total")
        for i in range(500):
            client.set(f"k:{i}", "v")
            assert client.get(f"k:{i}") == "v"
        after = wait_for(
            lambda: (
                (f := scrape(address))
                and total(f, "cachefleet_cache_hits", "cachefleet_cache_hits_total")
                >= hits_before + 500
                and f
            ),
            15,
            "cache hits to count 500 more reads",
        )
        sets_after = total(after, "cachefleet_set_type_cmds", "cachefleet_set_type_cmds_total")
        assert sets_after >= sets_before + 500
    finally:
        client.close()


def test_top_draws_every_node_in_a_terminal_and_quits_on_q(cluster: RunningCluster) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        cachefleet_cmd("top", cluster.name, "--state-dir", str(cluster.state_dir)),
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, close_fds=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    os.close(slave)
    screen = b""

    def read_until(check: object, timeout: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
            if callable(check) and check():
                return
        raise AssertionError(f"top did not show it within {timeout}s:\n{screen[-3000:]!r}")

    try:
        names = [n.name.encode() for n in cluster.plan.nodes]
        read_until(lambda: screen.count(b"\x1b[2J") >= 2 and all(n in screen for n in names), 30)
        last = screen.decode(errors="replace").split("\x1b[2J")[-1]
        header = next(line for line in last.splitlines() if line.startswith("NODE"))
        assert header.split() == [
            "NODE", "SHARD", "ZONE", "ROLE", "OPS/S", "MEMORY", "MEM%", "CONNS", "LAG", "HIT%",
        ]  # fmt: skip
        rows = [line.split() for line in last.splitlines() if line.startswith(cluster.name)]
        assert sorted(r[3] for r in rows) == ["primary", "primary", "replica", "replica"]
        for r in rows:
            assert r[2] == cluster.plan.node(r[0]).zone
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        os.close(master)


def test_metrics_keep_their_address_when_the_supervisor_is_restarted(
    cluster: RunningCluster,
) -> None:
    first = wait_for(
        lambda: (s := cluster.status())["metrics"]["running"] and s, 30, "a running supervisor"
    )
    address, pid = first["metrics"]["address"], first["processes"]["supervisor"]
    os.kill(pid, signal.SIGKILL)  # the zone agents start another one
    st = wait_for(
        lambda: (s := cluster.status())["processes"].get("supervisor") not in (None, pid) and s,
        30,
        "a new supervisor",
    )
    assert st["metrics"]["address"] == address
    families = wait_for(lambda: _try_scrape(address), 30, "the new supervisor's /metrics")
    assert "cachefleet_node_up" in families
    cluster.remember_pids()


def _try_scrape(address: str) -> dict[str, Metric] | None:
    try:
        families = scrape(address)
    except OSError:
        return None
    return families if "cachefleet_node_up" in families else None


def test_top_into_a_pipe_prints_plain_tables(cluster: RunningCluster) -> None:
    out = cli("top", cluster.name, "-n", "2", "--state-dir", str(cluster.state_dir)).stdout
    assert "\x1b" not in out
    assert out.count("cachefleet top - ") == 2
    assert all(n.name in out for n in cluster.plan.nodes)


def test_a_paused_replica_shows_as_down_and_sdown_in_the_metrics(cluster: RunningCluster) -> None:
    st = wait_for(lambda: (s := cluster.status())["metrics"]["running"] and s, 30, "metrics")
    address = st["metrics"]["address"]
    replica = st["shards"][0]["replicas"][0]["name"]
    pid = live_processes(cluster.cdir)[f"node.{replica}"]

    def node_up(families: dict[str, Metric]) -> float | None:
        return next(
            (s.value for s in families["cachefleet_node_up"].samples
             if s.labels["node"] == replica),
            None,
        )  # fmt: skip

    os.kill(pid, signal.SIGSTOP)
    try:
        families = wait_for(
            lambda: (
                (f := scrape(address))
                and node_up(f) == 0
                and "cachefleet_sdown" in f
                and any(s.labels["node"] == replica for s in f["cachefleet_sdown"].samples)
                and f
            ),
            20,
            "the paused replica down in the metrics and SDOWN by a sentinel",
        )
        down = next(
            s for s in families["cachefleet_node_up"].samples if s.labels["node"] == replica
        )
        assert down.labels["role"] == "replica"  # its last known role
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: node_up(scrape(address)) == 1, 20, "the replica up again")


def test_a_failover_moves_the_control_plane_series(cluster: RunningCluster) -> None:
    st = wait_for(lambda: (s := cluster.status())["state"] == "available" and s, 30, "available")
    address = st["metrics"]["address"]

    def graceful(families: dict[str, Metric]) -> float:
        return next(
            s.value for s in families["cachefleet_failovers"].samples
            if s.labels["outcome"] == "graceful"
        )  # fmt: skip

    before = scrape(address)
    old_primary = st["shards"][0]["primary"]["name"]
    cli("failover", cluster.name, "--shard", "1", "--state-dir", str(cluster.state_dir))
    after = wait_for(
        lambda: (f := scrape(address)) and graceful(f) == graceful(before) + 1 and f,
        15,
        "the graceful failover counted",
    )
    epoch = after["cachefleet_config_epoch"].samples[0].value
    assert epoch > before["cachefleet_config_epoch"].samples[0].value
    roles = wait_for(
        lambda: {
            s.labels["node"]: s.value for s in scrape(address)["cachefleet_is_primary"].samples
            if s.labels["shard"] == "1" and s.labels["node"] == old_primary and s.value == 0
        },
        15,
        "the old primary reported as a replica",
    )  # fmt: skip
    assert roles == {old_primary: 0}
