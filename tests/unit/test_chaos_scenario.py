"""Scenario files are validated like topologies; the shipped ones all load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cachefleet.chaos.scenario import load_scenario, parse_scenario
from cachefleet.errors import CachefleetError, ScenarioError

ROOT = Path(__file__).resolve().parents[2]


def fault(**f: Any) -> dict[str, Any]:
    return doc(faults=[{"at_s": 2, "kind": "kill", "target": "router", **f}])


def doc(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "s",
        "topology": "topologies/default.yaml",
        "duration_s": 8,
        "faults": [{"at_s": 2, "kind": "kill", "target": "primary:1"}],
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (doc(topology="nope.yaml"), "topology", "no such file"),
        (doc(trials=0), "trials", "out of range"),
        (fault(kind="explode"), "faults[0].kind", "not one of"),
        (fault(target="moon"), "faults[0].target", "is not one of"),
        (fault(at_s=20), "faults[0].at_s", "out of range"),
        (fault(kind="partition"), "faults[0].target", "cuts off a zone"),
        (fault(when=1), "faults[0].when", "unknown field"),
        (doc(workload={"via": "router", "wait": 1}), "workload.wait", "use via: direct"),
        (doc(workload={"writers": 4, "keys": 2}), "workload.keys", "cannot be shared"),
        (doc(expect={"lost_writes": -1}), "expect.lost_writes", "non-negative"),
        (doc(colour="red"), "colour", "unknown field"),
    ],
)  # fmt: skip
def test_bad_scenarios_name_the_field(data: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data, "sc.yaml", ROOT)
    assert info.value.field == field
    assert message in info.value.message


def test_defaults_and_sorted_faults() -> None:
    sc = parse_scenario(
        doc(faults=[{"at_s": 5, "kind": "pause", "target": "primary:2", "duration_s": 2},
                    {"at_s": 1, "kind": "partition", "target": "zone:az-b"}]),
        "sc.yaml", ROOT,
    )  # fmt: skip
    assert [f.at_s for f in sc.faults] == [1.0, 5.0]
    assert sc.needs_root
    assert sc.workload.via == "direct" and sc.workload.wait == 0
    assert sc.trials == 1


def test_shipped_scenarios_load() -> None:
    names = set()
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        sc = load_scenario(path)
        assert sc.topology.exists()
        names.add(sc.name)
    assert {"kill-primary", "pause-primary", "kill-zone", "partition-zone",
            "kill-sentinel-then-primary", "kill-router", "rolling-restart",
            "scale-out-under-kill"} <= names  # fmt: skip
    scale = load_scenario(ROOT / "scenarios" / "scale-out-under-kill.yaml")
    apply = next(f for f in scale.faults if f.kind == "apply")
    assert apply.topology is not None and apply.topology.name == "scaleout-5-shards.yaml"


def test_a_bad_scenario_file_is_a_scenario_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(missing)
    assert info.value.source == str(missing) and "file not found" in info.value.message
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ScenarioError, match="invalid YAML"):
        load_scenario(bad)
    assert issubclass(ScenarioError, CachefleetError)
