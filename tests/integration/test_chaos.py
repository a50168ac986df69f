"""`cachefleet chaos` end to end: real cluster, real faults, real report files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import assert_all_gone, base_topology, cli

from cachefleet.chaos.faults import TAG
from cachefleet.proc import live_processes
from cachefleet.state import ClusterDir

pytestmark = pytest.mark.integration


def write_scenario(tmp_path: Path, name: str, topo: dict[str, Any], **scenario: Any) -> Path:
    topo_path = tmp_path / f"{topo['name']}.yaml"
    topo_path.write_text(yaml.safe_dump(topo))
    data = {"name": name, "topology": str(topo_path), **scenario}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_kill_primary_with_wait_loses_nothing_and_writes_every_report(tmp_path: Path) -> None:
    topo = base_topology("chaoskp")
    scenario = write_scenario(
        tmp_path, "kill-primary-ci", topo, trials=3, seed=11, duration_s=6,
        workload={"via": "direct", "writers": 2, "readers": 1, "keys": 300, "wait": 1},
        faults=[{"at_s": 2, "kind": "kill", "target": "primary:random"}],
        expect={"lost_writes": 0},
    )  # fmt: skip
    state = tmp_path / "state"
    cdir = ClusterDir(state, "chaoskp")
    try:
        proc = cli("chaos", str(scenario), "--state-dir", str(state), check=False, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_dir = Path(proc.stdout.strip().rsplit("report in ", 1)[1])
        assert run_dir.parent == cdir.root / "chaos"
        result = json.loads((run_dir / "result.json").read_text())
        report = (run_dir / "report.md").read_text()
        timelines = [p.read_text() for p in sorted(run_dir.glob("timeline-*.svg"))]
    finally:
        pids = live_processes(cdir) if cdir.exists() else {}
        cli("down", "chaoskp", "--purge", "--state-dir", str(state), check=False)
        assert_all_gone(pids)
    assert len(result["trials"]) == 3
    assert result["aggregate"]["lost_writes"] == 0
    assert result["passed"] is True
    for trial in result["trials"]:
        assert trial["writes_ok"] > 100
        assert trial["failovers"], f"trial {trial['trial']} saw no failover"
        affected = [v for v in trial["availability"].values() if v["affected"]]
        assert affected and all(v["window_s"] is not None for v in affected)
    assert result["aggregate"]["failover_p50_s"] is not None
    assert "| unavailability of affected shards (s) |" in report
    assert "Lost acknowledged writes: **0**" in report
    assert len(timelines) == 3
    svg = timelines[0]
    assert svg.startswith("<svg") and "shard 1" in svg and "kill primary" in svg
    assert "t=2.0s kill primary of shard" in proc.stderr  # the live line per fault
    assert "primary now" in proc.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None, reason="partitions need root"
)
def test_partition_zone_measures_the_split_brain_window_and_heals(tmp_path: Path) -> None:
    topo = base_topology("chaospz", durability={"min_replicas_to_write": 1, "max_lag_s": 2})
    scenario = write_scenario(
        tmp_path, "partition-zone-ci", topo, trials=1, seed=12, duration_s=9,
        workload={"via": "direct", "writers": 2, "readers": 1, "keys": 300},
        faults=[{"at_s": 2, "kind": "partition", "target": "primary-zone:1", "duration_s": 5}],
        expect={"split_brain_s": 3},  # the promised bound: durability.max_lag_s (2) + 1 s
    )  # fmt: skip
    state = tmp_path / "state"
    cdir = ClusterDir(state, "chaospz")
    try:
        proc = cli("chaos", str(scenario), "--state-dir", str(state), check=False, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_dir = Path(proc.stdout.strip().rsplit("report in ", 1)[1])
        result = json.loads((run_dir / "result.json").read_text())
    finally:
        pids = live_processes(cdir) if cdir.exists() else {}
        cli("down", "chaospz", "--purge", "--state-dir", str(state), check=False)
        assert_all_gone(pids)
    rules = subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True).stdout
    assert TAG not in rules, "partition rules must be removed at the end"
    trial = result["trials"][0]
    assert any("partition zone" in f["what"] for f in trial["faults"])
    assert any("heal" in f["what"] for f in trial["faults"])
    # the window was measured and checked against the scenario's bound (exit 0 above)
    assert result["expect"]["split_brain_s"] == {
        "limit": 3.0, "got": trial["split_brain_max_s"], "met": True
    }  # fmt: skip
    assert trial["failovers"], "the majority side promotes a replica of the cut-off primary"
    print("split-brain window measured:", trial["split_brain_s"])
