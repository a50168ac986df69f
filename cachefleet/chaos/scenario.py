"""Chaos scenario files: which topology, workload, faults on a schedule, trials, expectations.

Validated like topologies: a bad file raises ScenarioError naming the file and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cachefleet.errors import ScenarioError, TopologyError
from cachefleet.topology import Section

FAULT_KINDS = ("kill", "pause", "partition", "rolling-restart", "apply")
TARGET_RE = re.compile(
    r"^(primary:(\d+|random)|replica:(\d+|random)|node:[a-z0-9-]+|sentinel:(s\d+|random)|"
    r"router|bus|zone:([a-z0-9-]+|random)|primary-zone:(\d+|random)|nodes)$"
)
#: direct: RedisCluster to the nodes; router: plain clients through the router; endpoint:
#: plain clients through a cluster-mode-disabled group's primary endpoint
VIA = ("direct", "router", "endpoint")


@dataclass(frozen=True)
class Fault:
    at_s: float
    kind: str
    target: str
    duration_s: float  # pause/partition: undone after this; 0 = until the end of the trial
    interval_s: float  # rolling-restart: time between nodes
    topology: Path | None = None  # apply: the topology the cluster is changed to


@dataclass(frozen=True)
class Workload:
    via: str
    writers: int
    readers: int
    keys: int
    wait: int
    wait_timeout_ms: int
    op_timeout_ms: int


@dataclass(frozen=True)
class Expect:
    lost_writes: int | None
    max_unavailable_s: float | None
    split_brain_s: float | None


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    topology: Path
    trials: int
    seed: int
    duration_s: float
    settle_s: float
    workload: Workload
    faults: tuple[Fault, ...]
    expect: Expect

    @property
    def needs_root(self) -> bool:
        return any(f.kind == "partition" for f in self.faults)


def _number(sec: Section, key: str, default: float | None, lo: float, hi: float) -> float:
    value = sec.raw(key, default)
    if value is None:
        raise sec.fail(key, "is required")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise sec.fail(key, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise sec.fail(key, f"{value} is out of range {lo:g}..{hi:g}")
    return float(value)


def _optional_number(sec: Section, key: str, lo: float, hi: float) -> float | None:
    if sec.raw(key, None) is None:
        return None
    return _number(sec, key, None, lo, hi)


def parse_scenario(data: Any, source: str, base_dir: Path) -> Scenario:
    """The scenario in `data` (read from `source`); ScenarioError names the field at fault."""
    try:
        return _parse(data, source, base_dir)
    except TopologyError as exc:  # the shared field reader speaks of topologies
        raise ScenarioError(exc.source, exc.field, exc.message) from None


def _parse(data: Any, source: str, base_dir: Path) -> Scenario:
    root = Section(source, "", data)
    name = root.string("name", None)
    topo_raw = root.string("topology", None)
    topology = (base_dir / topo_raw).resolve()
    if not topology.exists():
        raise root.fail("topology", f"{topo_raw!r}: no such file (relative to the scenario)")
    trials = root.integer("trials", 1, 1, 1000)
    seed = root.integer("seed", 1, 0, 2**31)
    duration = _number(root, "duration_s", 8.0, 1.0, 3600.0)
    settle = _number(root, "settle_s", 1.0, 0.0, 60.0)

    w = root.section("workload")
    workload = Workload(
        via=w.choice("via", "direct", VIA),
        writers=w.integer("writers", 1, 1, 32),  # per shard
        readers=w.integer("readers", 1, 0, 32),
        keys=w.integer("keys", 600, 1, 1_000_000),
        wait=w.integer("wait", 0, 0, 5),
        wait_timeout_ms=w.integer("wait_timeout_ms", 1000, 1, 60000),
        op_timeout_ms=w.integer("op_timeout_ms", 500, 10, 60000),
    )
    if workload.wait and workload.via == "router":
        raise w.fail("wait", "WAIT needs the write's own connection: use via: direct (or endpoint)")
    if workload.keys < workload.writers:
        raise w.fail("keys", f"{workload.keys} keys cannot be shared by {workload.writers} writers")
    w.done()

    faults_raw = root.raw("faults", [])
    if not isinstance(faults_raw, list):
        raise root.fail("faults", "must be a list of faults")
    faults = []
    for i, item in enumerate(faults_raw):
        f = Section(source, f"faults[{i}]", item)
        kind = f.choice("kind", None, FAULT_KINDS)
        target = f.string("target", "nodes" if kind in ("rolling-restart", "apply") else None)
        change: Path | None = None
        if kind == "apply":  # `cachefleet apply` to another topology, under the workload
            raw = f.string("topology", None)
            change = (base_dir / raw).resolve()
            if not change.exists():
                raise f.fail("topology", f"{raw!r}: no such file (relative to the scenario)")
        elif f.has("topology"):
            raise f.fail("topology", "is only for kind: apply")
        if not TARGET_RE.match(target):
            raise f.fail(
                "target",
                f"{target!r} is not one of primary:N|random, replica:N|random, node:NAME, "
                "sentinel:ID|random, router, bus, zone:NAME|random, primary-zone:N|random, nodes",
            )
        if kind == "partition" and not target.startswith(("zone:", "primary-zone:")):
            raise f.fail("target", "a partition cuts off a zone: use zone:NAME or primary-zone:N")
        at = _number(f, "at_s", None, 0.0, duration)
        fault = Fault(
            at_s=at,
            kind=kind,
            target=target,
            duration_s=_number(f, "duration_s", 0.0, 0.0, 3600.0),
            interval_s=_number(f, "interval_s", 4.0, 0.5, 600.0),
            topology=change,
        )
        f.done()
        faults.append(fault)

    e = root.section("expect")
    lost = e.raw("lost_writes", None)
    if lost is not None and (isinstance(lost, bool) or not isinstance(lost, int) or lost < 0):
        raise e.fail("lost_writes", f"must be a non-negative integer, got {lost!r}")
    expect = Expect(
        lost_writes=lost,
        max_unavailable_s=_optional_number(e, "max_unavailable_s", 0.0, 3600.0),
        split_brain_s=_optional_number(e, "split_brain_s", 0.0, 3600.0),
    )
    e.done()
    root.done()
    return Scenario(
        name=name,
        source=source,
        topology=topology,
        trials=trials,
        seed=seed,
        duration_s=duration,
        settle_s=settle,
        workload=workload,
        faults=tuple(sorted(faults, key=lambda x: x.at_s)),
        expect=expect,
    )


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ScenarioError(source, "", "file not found") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(source, "", f"invalid YAML: {exc}") from None
    return parse_scenario(data, source, p.resolve().parent)
