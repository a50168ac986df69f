"""A layout from the bus is validated before anyone routes by it: slot ranges in range and
owned once, integer epochs, known roles, and, against the plan, only the plan's nodes at their
planned addresses (a forged retained layout can send no traffic elsewhere)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachefleet.layout import Layout, LayoutError, LayoutNode, LayoutShard
from cachefleet.plan import Plan, build_plan
from cachefleet.slots import split_slots
from cachefleet.topology import parse_topology


def plan() -> Plan:
    raw = {"name": "c", "engine": "valkey", "zones": ["az-a", "az-b"], "shards": 2,
           "replicas_per_shard": 1, "ports": {"base": 7000}}  # fmt: skip
    return build_plan(
        parse_topology(raw, "t.yaml"), raw, engine_binary="/bin/true", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=6999,
    )  # fmt: skip


def good() -> dict[str, Any]:
    p = plan()
    shards = []
    for i, (start, end) in enumerate(split_slots(2), start=1):
        nodes = tuple(
            LayoutNode(
                n.name,
                f"{i}{n.member}" * 20,
                i,
                n.zone,
                n.host,
                n.port,
                n.bus_port,
                "primary" if n.member == 0 else "replica",
            )
            for n in p.shard_nodes(i)
        )
        shards.append(LayoutShard(i, ((start, end),), nodes))
    return Layout("c", 5, tuple(shards)).to_dict()


def test_a_good_layout_round_trips() -> None:
    d = good()
    layout = Layout.from_dict(json.loads(json.dumps(d)), plan())
    assert layout.to_dict() == d


def broken(edit: Any) -> dict[str, Any]:
    d = copy.deepcopy(good())
    edit(d)
    return d


def set_(path: list[Any], value: Any) -> Any:
    def edit(d: Any) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return edit


BAD = {
    "slot beyond 16383": set_(["shards", 0, "slots"], [[0, 20000]]),
    "negative slot": set_(["shards", 0, "slots"], [[-5, 10]]),
    "reversed range": set_(["shards", 0, "slots"], [[10, 5]]),
    "slot owned twice": set_(["shards", 1, "slots"], [[0, 16383]]),
    "slots not a list": set_(["shards", 0, "slots"], 5),
    "float epoch": set_(["epoch"], 1.5),
    "infinite epoch": set_(["epoch"], math.inf),
    "huge epoch": set_(["epoch"], 10**30),
    "string epoch": set_(["epoch"], "7"),
    "bool epoch": set_(["epoch"], True),
    "unknown role": set_(["shards", 0, "nodes", 0, "role"], "master"),
    "port out of range": set_(["shards", 0, "nodes", 0, "port"], 70000),
    "shards not a list": set_(["shards"], {"a": 1}),
    "node not an object": set_(["shards", 0, "nodes", 0], "x"),
    "two primaries": set_(["shards", 0, "nodes", 1, "role"], "primary"),
    "missing cluster": lambda d: d.pop("cluster"),
    "repeated shard id": set_(["shards", 1, "id"], 1),
}


@pytest.mark.parametrize("edit", BAD.values(), ids=BAD.keys())
def test_malformed_layouts_are_refused(edit: Any) -> None:
    with pytest.raises(LayoutError):
        Layout.from_dict(broken(edit))


FORGED = {
    "another cluster": set_(["cluster"], "other"),
    "a host outside the plan": set_(["shards", 0, "nodes", 0, "host"], "127.0.0.9"),
    "a port outside the plan": set_(["shards", 0, "nodes", 0, "port"], 1),
    "a node the plan does not have": set_(["shards", 0, "nodes", 0, "name"], "evil"),
    "a shard the plan does not have": set_(["shards", 1, "id"], 3),
    "a node in another shard": set_(["shards", 0, "nodes", 0, "shard"], 2),
}


@pytest.mark.parametrize("edit", FORGED.values(), ids=FORGED.keys())
def test_layouts_naming_anything_outside_the_plan_are_refused(edit: Any) -> None:
    d = broken(edit)
    Layout.from_dict(d)  # well-formed on its own ...
    with pytest.raises(LayoutError):
        Layout.from_dict(d, plan())  # ... but not this cluster's


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


@given(JSON)
def test_any_json_either_parses_or_raises_layout_error(value: Any) -> None:
    with contextlib.suppress(LayoutError):
        Layout.from_dict(value, plan())


@given(st.sampled_from(["shards", "epoch", "cluster"]), JSON)
def test_a_good_layout_with_one_field_replaced_never_crashes(key: str, value: Any) -> None:
    d = good()
    d[key] = value
    with contextlib.suppress(LayoutError):
        Layout.from_dict(d, plan())
