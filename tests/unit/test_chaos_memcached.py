"""Memcached chaos runs: error windows, the discovery client's routing, fault targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cachefleet.chaos.memcached import DiscoveredNodes, MemcachedChaosRun, Op, error_window
from cachefleet.chaos.scenario import load_scenario
from cachefleet.errors import ScenarioError

REPO = Path(__file__).resolve().parents[2]


def op(start: float, end: float, ok: bool) -> Op:
    return Op("proxy", "get", "k", start, end, ok)


def test_the_error_window_runs_from_the_first_failure_to_the_end_of_the_last() -> None:
    assert error_window([op(0, 1, True), op(1, 2, True)]) == 0.0
    ops = [op(0, 0.1, True), op(2.0, 2.1, False), op(2.1, 2.2, True), op(2.3, 2.5, False)]
    assert error_window(ops) == pytest.approx(0.5)


def test_discovery_clients_spread_keys_over_the_listed_nodes() -> None:
    nodes = DiscoveredNodes(("127.0.0.1", 1))
    assert nodes.node_for("k") is None  # before the first answer
    nodes.nodes = [("127.0.1.1", 11301), ("127.0.2.1", 11302)]
    picked = {nodes.node_for(f"k{i}") for i in range(100)}
    assert picked == set(nodes.nodes)


def test_the_shipped_memcached_scenario_loads() -> None:
    sc = load_scenario(REPO / "scenarios" / "memcached-kill-node.yaml")
    run = MemcachedChaosRun(sc, state_dir="/nonexistent")
    assert run.topology.is_memcached and sc.faults[0].target == "node:random"


@pytest.mark.parametrize("target", ["primary:random", "router", "zone:az-a"])
def test_memcached_scenarios_target_nodes_only(tmp_path: Path, target: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "topology": str(REPO / "topologies" / "memcached.yaml"),
                "faults": [{"at_s": 1, "kind": "kill", "target": target}],
            }
        )
    )
    with pytest.raises(ScenarioError, match="node:NAME or node:random"):
        MemcachedChaosRun(load_scenario(path), state_dir="/nonexistent")
