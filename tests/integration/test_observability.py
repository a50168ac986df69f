"""Observing a running cluster: `logs` (merged, followed), `/metrics`, `top`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import ROOT, RunningCluster, assert_all_gone, start_cluster

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
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
