"""`cachefleet chaos` on a cluster-mode-disabled group: writers through the primary endpoint
(SET + WAIT 1), the primary killed, every acknowledged write read back at the end."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import assert_all_gone, cli

from cachefleet.proc import live_processes
from cachefleet.state import ClusterDir

pytestmark = pytest.mark.integration


def test_kill_primary_of_a_group_loses_no_acknowledged_write(tmp_path: Path) -> None:
    name = f"gc{uuid.uuid4().hex[:8]}"
    topo = {
        "name": name, "engine": "valkey", "cluster_mode": "disabled",
        "zones": ["az-a", "az-b", "az-c"], "replicas": 2, "node_type": "cache.micro",
        "endpoints": {"primary": {"port": "auto"}, "reader": {"port": "auto"}},
        "sentinels": {"count": 3, "quorum": 2, "down_after_ms": 1000},
    }  # fmt: skip
    (tmp_path / "group.yaml").write_text(yaml.safe_dump(topo))
    scenario = {
        "name": "cmd-kill-ci", "topology": "group.yaml", "trials": 1, "seed": 5,
        "duration_s": 6,
        "workload": {"via": "endpoint", "writers": 2, "readers": 1, "keys": 300, "wait": 1},
        "faults": [{"at_s": 2, "kind": "kill", "target": "primary:1"}],
        "expect": {"lost_writes": 0, "max_unavailable_s": 5},
    }  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    state = tmp_path / "state"
    cdir = ClusterDir(state, name)
    pids: dict[str, int] = {}
    try:
        proc = cli("chaos", str(tmp_path / "s.yaml"), "--state-dir", str(state), check=False,
                   timeout=300)  # fmt: skip
        pids = live_processes(cdir) if cdir.exists() else {}
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run_dir = Path(proc.stdout.strip().rsplit("report in ", 1)[1])
        result = json.loads((run_dir / "result.json").read_text())
        (trial,) = result["trials"]
        assert trial["lost_writes"] == 0 and trial["writes_ok"] > 100
        assert trial["failovers"] and trial["split_brain_max_s"] == 0.0
        assert trial["availability"]["1"]["affected"]  # the failover counts, errors or not
        writes = [
            json.loads(line)
            for line in (run_dir / "history-1.jsonl").read_text().splitlines()
            if '"kind": "w"' in line
        ]
        # each acknowledged write names the node that took it: the old primary, then the new
        nodes = {w["node"] for w in writes if w["outcome"] == "ok"}
        assert len(nodes) == 2
    finally:
        cli("down", name, "--purge", "--state-dir", str(state), check=False)
        assert_all_gone(pids)
