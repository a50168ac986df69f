"""The rendered valkey.conf of each node, parsed into directives (no engine started)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cachefleet.credentials import ADMIN_USER, Credentials
from cachefleet.plan import NodeSpec, Plan, build_plan
from cachefleet.topology import parse_topology
from shard.config import render_engine_config

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "topologies" / "default.yaml"
DATA_DIR = Path("/tmp/cf-state/default/nodes/n1")
LOG_FILE = Path("/tmp/cf-state/default/logs/n1.log")


def default_raw() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_YAML.read_text())
    assert isinstance(data, dict)
    return data


def make_plan(data: dict[str, Any] | None = None) -> Plan:
    data = default_raw() if data is None else data
    topology = parse_topology(data, str(DEFAULT_YAML))
    return build_plan(
        topology,
        data,
        engine_binary="/bin/true",
        node_ports=None,
        bus=("127.0.0.1", 1883),
        router_port=7100,
    )


def directives(text: str) -> dict[str, str]:
    """valkey.conf lines -> {directive: value}; every directive but `user` appears once."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("user "):
            continue
        name, _, value = line.partition(" ")
        assert name not in out, f"directive {name} repeated"
        out[name] = value.strip()
    return out


def render(plan: Plan, node: NodeSpec) -> dict[str, str]:
    text = render_engine_config(plan, node, DATA_DIR, LOG_FILE, ADMIN)
    assert text.endswith("\n")
    return directives(text)


PLAN = make_plan()
ADMIN = Credentials(ADMIN_USER, "s3cret")


def users(text: str) -> dict[str, list[str]]:
    return {
        line.split()[1]: line.split()[2:] for line in text.splitlines() if line.startswith("user ")
    }


def test_clients_get_a_default_user_that_cannot_break_the_cluster() -> None:
    text = render_engine_config(PLAN, PLAN.nodes[0], DATA_DIR, LOG_FILE, ADMIN)
    rules = users(text)["default"]
    assert rules[:5] == ["on", "nopass", "~*", "&*", "+@all"]
    for command in ("config|set", "cluster|reset", "cluster|failover", "shutdown", "acl|setuser",
                    "replicaof", "debug", "client|kill", "monitor", "psync"):  # fmt: skip
        assert f"-{command}" in rules
    assert not any(r.startswith("-config|get") or r == "-cluster|slots" for r in rules)


def test_the_control_plane_has_its_own_user_and_replicas_sync_with_it() -> None:
    text = render_engine_config(PLAN, PLAN.nodes[0], DATA_DIR, LOG_FILE, ADMIN)
    assert users(text)[ADMIN_USER] == ["on", ">s3cret", "~*", "&*", "+@all"]
    conf = directives(text)
    assert conf["masteruser"] == ADMIN_USER
    assert conf["masterauth"] == "s3cret"
    assert "s3cret" not in repr(ADMIN)


@pytest.mark.parametrize("node", PLAN.nodes, ids=lambda n: n.name)
def test_cluster_mode_and_addresses(node: NodeSpec) -> None:
    conf = render(PLAN, node)
    assert conf["cluster-enabled"] == "yes"
    assert conf["cluster-replica-no-failover"] == "yes"
    assert conf["cluster-require-full-coverage"] == "no"
    zone_address = f"127.0.{['az-a', 'az-b', 'az-c'].index(node.zone) + 1}.1"
    assert conf["bind"] == zone_address
    assert conf["bind-source-addr"] == zone_address
    assert conf["cluster-announce-ip"] == zone_address
    assert conf["port"] == str(node.port)
    assert conf["cluster-port"] == str(node.bus_port) == str(node.port + 10000)
    assert conf["dir"] == str(DATA_DIR)
    assert conf["logfile"] == str(LOG_FILE)


def test_default_yaml_ports() -> None:
    conf = {n.name: render(PLAN, n) for n in PLAN.nodes}
    assert sorted(int(c["port"]) for c in conf.values()) == list(range(7101, 7107))
    assert sorted(int(c["cluster-port"]) for c in conf.values()) == list(range(17101, 17107))


def test_memory_and_replication_settings() -> None:
    conf = render(PLAN, PLAN.nodes[0])
    assert conf["maxmemory"] == str(256 * 1024**2)  # cache.small
    assert conf["maxmemory-policy"] == "volatile-lru"
    assert conf["appendonly"] == "no"
    assert conf["repl-diskless-sync-delay"] == "0"
    assert conf["min-replicas-to-write"] == "0"
    assert conf["min-replicas-max-lag"] == "2"
    assert conf["cluster-node-timeout"] == "1000"  # sentinels.down_after_ms


def test_appendonly_yes_when_persistence_enabled() -> None:
    data = default_raw()
    data["persistence"]["appendonly"] = True
    conf = render(make_plan(data), make_plan(data).nodes[0])
    assert conf["appendonly"] == "yes"


def test_durability_settings_flow_into_config() -> None:
    data = copy.deepcopy(default_raw())
    data["durability"] = {"min_replicas_to_write": 1, "max_lag_s": 3}
    plan = make_plan(data)
    for node in plan.nodes:
        conf = render(plan, node)
        assert conf["min-replicas-to-write"] == "1"
        assert conf["min-replicas-max-lag"] == "3"


@pytest.mark.parametrize(
    ("node_type", "nbytes"),
    [("cache.micro", 64 * 1024**2), ("cache.medium", 1024**3), ("cache.large", 4 * 1024**3)],
)
def test_maxmemory_follows_node_type(node_type: str, nbytes: int) -> None:
    data = default_raw()
    data["node_type"] = node_type
    data["maxmemory_policy"] = "allkeys-lru"
    plan = make_plan(data)
    conf = render(plan, plan.nodes[-1])
    assert conf["maxmemory"] == str(nbytes)
    assert conf["maxmemory-policy"] == "allkeys-lru"


def test_shared_addressing_binds_127_0_0_1() -> None:
    data = default_raw()
    data["zone_addressing"] = "shared"
    plan = make_plan(data)
    for node in plan.nodes:
        conf = render(plan, node)
        assert conf["bind"] == conf["bind-source-addr"] == conf["cluster-announce-ip"]
        assert conf["bind"] == "127.0.0.1"
