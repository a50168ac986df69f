"""What Describe reports for a cluster, from the state dir alone (no process runs here)."""

from __future__ import annotations

import os
from pathlib import Path

from cachefleet.api.shapes import Record
from cachefleet.api.store import Store, save_record
from cachefleet.plan import build_plan
from cachefleet.state import ClusterDir
from cachefleet.topology import parse_topology


def register(home: Path, name: str) -> ClusterDir:
    raw = {"name": name, "zones": ["a"], "shards": 1, "replicas_per_shard": 0,
           "ports": {"base": 7101}, "router": {"port": 7100}}  # fmt: skip
    plan = build_plan(
        parse_topology(raw), raw, engine_binary="/bin/true", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7100,
    )  # fmt: skip
    cdir = ClusterDir(home, name)
    cdir.make()
    cdir.plan_path.write_text(plan.to_json())
    return cdir


def test_statuses_from_the_state_dir(tmp_path: Path) -> None:
    store = Store(tmp_path)
    register(tmp_path, "idle")
    failed = register(tmp_path, "broken")
    save_record(failed, Record(failure="port in use"))
    save_record(ClusterDir(tmp_path, "fresh"), Record(description="just asked for"))
    (tmp_path / "snapshots").mkdir()  # not a cluster
    assert store.names() == ["broken", "fresh", "idle"]
    assert store.view("idle", None, {}).status == "stopped"
    assert store.view("broken", None, {}).status == "create-failed"
    fresh = store.view("fresh", None, {})
    assert (fresh.status, fresh.plan, fresh.record.description) == (
        "creating",
        None,
        "just asked for",
    )
    assert store.view("idle", "deleting", {}).status == "deleting"  # what serve is doing wins


def test_a_plan_is_parsed_again_only_when_it_changes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cdir = register(tmp_path, "idle")
    first = store.view("idle", None, {"valkey": "8.1.1"})
    assert store.view("idle", None, {}).plan is first.plan  # cached
    assert first.engine_version == "8.1.1"
    register(tmp_path, "idle")
    os.utime(cdir.plan_path, (1, 1))
    assert store.view("idle", None, {}).plan is not first.plan
