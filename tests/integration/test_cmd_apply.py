"""`cachefleet apply` on a cluster-mode-disabled group, under a writer through the primary
endpoint: replicas 1 -> 2 -> 1, then a node type change (every node replaced, the primary
handed over gracefully). Every write acknowledged by WAIT 1 is read back after each step;
the failed writes of the handover are printed (the graceful failover window)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from helpers import RunningCluster, cli, cluster_up, wait_for
from prometheus_client.parser import text_string_to_metric_families

from cachefleet.events import read_events


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    tmp = tmp_path_factory.mktemp("cmdapply")
    name = f"ga{uuid.uuid4().hex[:8]}"
    topo = {
        "name": name,
        "engine": "valkey",
        "cluster_mode": "disabled",
        "zones": ["az-a", "az-b", "az-c"],
        "replicas": 1,
        "node_type": "cache.micro",
        "endpoints": {"primary": {"port": "auto"}, "reader": {"port": "auto"}},
    }
    with cluster_up(tmp, topo) as c:
        yield c


def endpoint(c: RunningCluster, **kw: Any) -> redis.Redis:
    plan = c.plan
    kw.setdefault("socket_timeout", 2)
    return redis.Redis(host=plan.router_host, port=plan.router_port, decode_responses=True, **kw)


class Writer(threading.Thread):
    """Unique keys through the primary endpoint, each acknowledged by WAIT 1; the times of
    failed writes are kept (the graceful failover window)."""

    def __init__(self, c: RunningCluster) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.acked: list[str] = []
        self.failed_at: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        client = endpoint(self.c)
        i = 0
        deadline = time.monotonic() + 240  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            key = f"k{i}"
            i += 1
            try:
                client.set(key, key)
                if client.execute_command("WAIT", 1, 1000) >= 1:
                    self.acked.append(key)
            except redis.RedisError:
                self.failed_at.append(time.monotonic())
                client.close()
                client = endpoint(self.c)
                time.sleep(0.01)

    def __enter__(self) -> Writer:
        self.start()
        wait_for(lambda: len(self.acked) > 50, 15, "acknowledged writes")
        return self

    def __exit__(self, *exc: Any) -> None:
        before = len(self.acked)
        wait_for(lambda: len(self.acked) > before + 20, 20, "writes after the change")
        self.stop.set()
        self.join(10)

    def window(self) -> float:
        return self.failed_at[-1] - self.failed_at[0] if self.failed_at else 0.0


def apply(c: RunningCluster, *extra: str, **change: Any) -> str:
    topo = yaml.safe_load(c.topology_path.read_text())
    topo.update(change)
    c.topology_path.write_text(yaml.safe_dump(topo))
    args = ("apply", str(c.topology_path), "--state-dir", str(c.state_dir), *extra)
    return cli(*args, timeout=300).stdout


def members(c: RunningCluster) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    (shard,) = c.status()["shards"]
    return shard["primary"], shard["replicas"]


def all_read_back(c: RunningCluster, acked: list[str]) -> None:
    values = endpoint(c, socket_timeout=10).mget(acked)
    lost = [k for k, v in zip(acked, values, strict=True) if v != k]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost: {lost[:5]}"


def in_sync(c: RunningCluster, address: str, primary: str) -> bool:
    try:
        info = c.admin(address).info("replication")
    except redis.RedisError:
        return False
    return (
        info.get("role") == "slave"
        and f"{info['master_host']}:{info['master_port']}" == primary
        and info.get("master_link_status") == "up"
    )


def scraped_nodes(c: RunningCluster) -> set[str]:
    """Nodes whose role the metrics endpoint reports."""
    address = c.status()["metrics"]["address"]
    if not address:
        return set()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.labels["node"]
        for family in text_string_to_metric_families(text)
        if family.name == "cachefleet_is_primary"
        for s in family.samples
    }


def test_plan_refusal_and_replicas_up_and_down(group: RunningCluster) -> None:
    c = group
    out = apply(c, "--dry-run", "--json", replicas=2)
    steps = json.loads(out)["steps"]
    assert [s["step"] for s in steps] == ["add_replicas"]
    assert len(c.plan.nodes) == 2  # a dry run changes nothing
    old_primary, _ = members(c)

    with Writer(c) as w:
        apply(c, "--yes")  # the file says replicas: 2 now
    primary, replicas = members(c)
    assert primary["name"] == old_primary["name"] and len(replicas) == 2
    zones = {primary["zone"]} | {r["zone"] for r in replicas}
    assert len(zones) == 3  # the new replica went to the zone nobody used
    assert all(in_sync(c, r["address"], primary["address"]) for r in replicas)
    all_read_back(c, w.acked)
    # the metrics collector reads the new replica too
    new = {r["name"] for r in replicas}
    wait_for(lambda: new <= scraped_nodes(c), 20, f"{new} in /metrics")

    before = {primary["name"], *new} | {r["name"] for r in replicas}
    seen = len(read_events(c.cdir.events_path))
    with Writer(c) as w:
        apply(c, "--yes", replicas=1)
    primary_after, replicas = members(c)
    removed = before - {n.name for n in c.plan.nodes}
    assert len(removed) == 1 and len(replicas) == 1 and len(c.plan.nodes) == 2
    # the removed member was a replica: the primary stays, unless the sentinels promoted
    # another member meanwhile (a loaded machine), which the events then show
    switches = [e for e in read_events(c.cdir.events_path)[seen:] if e["type"] == "switch_primary"]
    if primary_after["name"] != primary["name"]:
        assert switches and switches[-1]["new_primary"] == primary_after["name"], switches
    assert primary_after["name"] not in removed
    assert not [e for e in switches if e["old_primary"] in removed], switches
    all_read_back(c, w.acked)
    kinds = [e["type"] for e in read_events(c.cdir.events_path)]
    assert "node_added" in kinds and "node_removed" in kinds and "modify_completed" in kinds

    # turning cluster mode on is not an online change: refused, naming the field
    topo = yaml.safe_load(c.topology_path.read_text())
    other = c.topology_path.with_name("enabled.yaml")
    on = {k: v for k, v in topo.items() if k not in ("cluster_mode", "replicas", "endpoints")}
    other.write_text(yaml.safe_dump({**on, "shards": 1, "replicas_per_shard": 2}))
    refused = cli("apply", str(other), "--yes", "--state-dir", str(c.state_dir), check=False)
    assert refused.returncode != 0 and "cluster_mode" in refused.stderr + refused.stdout


def test_node_type_change_replaces_every_node_under_a_writer(group: RunningCluster) -> None:
    c = group
    old_primary, _ = members(c)
    old_names = {n.name for n in c.plan.nodes}
    with Writer(c) as w:
        out = apply(c, "--yes", node_type="cache.small", parameters={"hz": 25})
    assert "hand the primary" in out
    primary, replicas = members(c)
    assert {n.name for n in c.plan.nodes}.isdisjoint(old_names)
    assert len(replicas) == 1 and primary["name"] != old_primary["name"]
    assert all(n.runs.startswith("cache.small ") for n in c.plan.nodes)
    assert c.admin(primary["address"]).config_get("hz")["hz"] == "25"
    all_read_back(c, w.acked)
    # writes fail only while the primary is handed over (printed, not asserted beyond 10 s)
    print(f"graceful failover window: {len(w.failed_at)} failed writes over {w.window():.2f}s")
    assert w.window() < 10.0
    events = [e for e in read_events(c.cdir.events_path) if e["type"] == "switch_primary"]
    assert events and events[-1]["reason"] == "apply"
    assert Path(c.cdir.root / "modifying.json").exists() is False
