"""Alarms on a live cluster: a writer fills a cache.micro node, the memory and evictions alarms
fire (event, HTTP POST to a loopback hook, command), and clear once the keys are deleted. The
same cluster answers `cost`, serves the router's request-duration histogram, and is in the
merged exposition of `serve`'s /metrics."""

from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RunningCluster, assert_all_gone, cli, router_client, start_cluster, wait_for
from prometheus_client.parser import text_string_to_metric_families

from cachefleet import ports
from cachefleet.events import read_events
from cachefleet.ops.alarms import read_states
from cachefleet.ops.metrics_all import all_clusters
from cachefleet.ops.metrics_file import metrics_address

pytestmark = pytest.mark.integration

VALUE = "x" * (56 * 1024)
KEYS = 1300  # about 73 MB of values: more than a cache.micro node's 64 MB


class Hook:
    """A loopback HTTP endpoint that keeps the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                hook.bodies.append(json.loads(self.rfile.read(size)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = ports.allocate_one()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alarm"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, hook: Hook
) -> Iterator[tuple[RunningCluster, Path]]:
    tmp = tmp_path_factory.mktemp("alarms")
    marker = tmp / "fired.json"
    write_stdin = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())"
    alarms = [
        {
            "name": "memory-high",
            "metric": "DatabaseMemoryUsagePercentage",
            "statistic": "Maximum",
            "period_s": 1,
            "evaluation_periods": 2,
            "datapoints_to_alarm": 1,
            "comparison": "GreaterThanOrEqualToThreshold",
            "threshold": 70,
            "dimensions": {"shard": 1, "role": "primary"},
            "actions": {
                "alarm": [
                    {"http_post": hook.url},
                    {"command": [sys.executable, "-c", write_stdin, str(marker)], "timeout_s": 20},
                ],
                "ok": [{"http_post": hook.url}],
            },
        },
        {
            "name": "evictions",
            "metric": "Evictions",
            "statistic": "Sum",
            "period_s": 2,
            "comparison": "GreaterThanThreshold",
            "threshold": 0,
            "treat_missing_data": "notBreaching",
        },
    ]
    c = start_cluster(
        tmp,
        zones=["az-a"],
        shards=1,
        replicas_per_shard=0,
        maxmemory_policy="allkeys-lru",
        alarms=alarms,
    )
    yield c, marker
    c.down()
    assert_all_gone(c.seen_pids)


def states(c: RunningCluster) -> dict[str, str]:
    return {name: s.get("state", "") for name, s in read_states(c.cdir).items()}


def alarm_events(c: RunningCluster, name: str) -> list[str]:
    return [
        e["new_state"]
        for e in read_events(c.cdir.events_path)
        if e.get("type") == "alarm_state_changed" and e.get("alarm") == name
    ]


def test_memory_alarm_fires_when_full_and_clears_after(
    cluster: tuple[RunningCluster, Path], hook: Hook
) -> None:
    c, marker = cluster
    wait_for(lambda: states(c).get("memory-high") == "OK", 30, "memory-high OK at rest")
    assert alarm_events(c, "memory-high") == ["OK"]
    r = router_client(c)
    try:
        for start in range(0, KEYS, 50):
            pipe = r.pipeline(transaction=False)
            for i in range(start, min(KEYS, start + 50)):
                pipe.set(f"fill:{i}", VALUE)
            pipe.execute()
        wait_for(lambda: states(c).get("memory-high") == "ALARM", 30, "memory-high ALARM")
        wait_for(lambda: states(c).get("evictions") == "ALARM", 30, "evictions ALARM")
        fired = wait_for(lambda: marker.exists() and marker.read_text(), 20, "the command ran")
        payload = json.loads(fired)
        assert (payload["alarm"], payload["new_state"]) == ("memory-high", "ALARM")
        assert payload["cluster"] == c.name and ">= 70" in payload["reason"]
        wait_for(lambda: any(b["new_state"] == "ALARM" for b in hook.bodies), 20, "the POST")

        for start in range(0, KEYS, 100):
            r.delete(*(f"fill:{i}" for i in range(start, min(KEYS, start + 100))))
        wait_for(lambda: states(c).get("memory-high") == "OK", 30, "memory-high OK again")
        wait_for(lambda: states(c).get("evictions") == "OK", 30, "evictions OK again")
    finally:
        r.close()
    assert alarm_events(c, "memory-high") == ["OK", "ALARM", "OK"]
    # OK actions run on the first evaluation too (INSUFFICIENT_DATA -> OK), as in the service
    posted = ["OK", "ALARM", "OK"]
    wait_for(lambda: [b["new_state"] for b in hook.bodies] == posted, 20, "the POSTs")

    shown = json.loads(cli("alarms", c.name, "--json", "--state-dir", str(c.state_dir)).stdout)
    by_name = {a["name"]: a for a in shown["alarms"]}
    assert by_name["memory-high"]["state"] == "OK" and by_name["memory-high"]["since"]
    assert "DatabaseMemoryUsagePercentage" in by_name["memory-high"]["condition"]
    text = cli("alarms", c.name, "--state-dir", str(c.state_dir)).stdout
    assert "memory-high" in text and "evictions" in text


def test_scrape_has_alarm_states_router_histogram_and_cost(
    cluster: tuple[RunningCluster, Path],
) -> None:
    c, _ = cluster
    address = metrics_address(c.cdir)
    assert address is not None
    r = router_client(c)
    try:
        for i in range(200):
            r.set(f"k{i}", "v")
    finally:
        r.close()

    def scrape() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {f.name: f for f in text_string_to_metric_families(text)}

    def histogram_count() -> float:
        fam = scrape().get("cachefleet_router_request_duration_seconds")
        if fam is None:
            return 0.0
        return sum(s.value for s in fam.samples if s.name.endswith("_count"))

    assert wait_for(lambda: histogram_count() >= 200, 20, "router histogram counts the requests")
    families = scrape()
    hist = families["cachefleet_router_request_duration_seconds"]
    assert hist.type == "histogram"
    inf = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"]
    assert inf and all(s.labels["cluster"] == c.name for s in inf)
    assert "cachefleet_router_requests" in families
    state = {
        (s.labels["alarm"], s.labels["state"]): s.value
        for s in families["cachefleet_alarm_state"].samples
    }
    assert state[("memory-high", "OK")] == 1 and state[("memory-high", "ALARM")] == 0
    cost_usd = {s.labels["component"]: s.value for s in families["cachefleet_cost_usd"].samples}
    assert cost_usd["on_demand_nodes"] > 0

    # `serve`'s /metrics: every cluster of the state directory, merged from their endpoints
    merged = asyncio.run(all_clusters(c.state_dir)).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(merged)}
    (up,) = parsed["cachefleet_cluster_scrape_up"].samples
    assert (up.labels["cluster"], up.value) == (c.name, 1.0)
    assert {s.labels["cluster"] for s in parsed["cachefleet_node_up"].samples} == {c.name}

    bill = json.loads(cli("cost", c.name, "--json", "--state-dir", str(c.state_dir)).stdout)
    (line,) = bill["nodes"]
    assert line["node_type"] == "cache.micro" and line["priced_as"] == "cache.t4g.micro"
    running_h = (time.time() - bill["start"]) / 3600
    assert line["node_hours"] == pytest.approx(running_h, rel=0.2)  # one node since `up`
    assert bill["total_usd"] > 0
    text = cli("cost", c.name, "--since", "1h", "--state-dir", str(c.state_dir)).stdout
    assert "node-hours" in text and "total" in text
