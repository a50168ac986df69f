"""Topology validation, table-driven: a valid base document with one change per case."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cachefleet.errors import TopologyError
from cachefleet.topology import Topology, load_topology, parse_topology

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY_FILES = sorted((REPO / "topologies").glob("*.yaml"))

MiB = 1024**2

#: A valid document: 3 zones, 3 shards x (1 primary + 1 replica) on 7101..7106 (+10000 bus).
BASE: dict[str, Any] = {
    "name": "t1",
    "engine": "valkey",
    "zones": ["az-a", "az-b", "az-c"],
    "shards": 3,
    "replicas_per_shard": 1,
    "node_type": "cache.small",
    "ports": {"base": 7101},
    "router": {"port": 7100},
    "bus": {"url": "embedded"},
    "sentinels": {
        "count": 3,
        "quorum": 2,
        "probe_interval_ms": 100,
        "down_after_ms": 1000,
        "failover_timeout_ms": 5000,
    },
    "persistence": {"appendonly": False},
    "durability": {"min_replicas_to_write": 0, "max_lag_s": 2},
}

DELETE = object()


def doc(**changes: Any) -> dict[str, Any]:
    """BASE with changes; keys are dotted paths written with '__' (``sentinels__quorum``)."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        if value is DELETE:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return data


def parse(data: Any) -> Topology:
    return parse_topology(data, "t.yaml")


def test_base_document_is_valid() -> None:
    topo = parse(doc())
    assert topo.name == "t1"
    assert topo.zones == ("az-a", "az-b", "az-c")
    assert topo.nodes_total == 6
    assert topo.ports_base == 7101
    assert topo.router.port == 7100
    assert topo.source == "t.yaml"


INVALID = [
    # unknown fields, top level and nested
    pytest.param(doc(shardz=3), "shardz", "unknown field", id="unknown-top-level"),
    pytest.param(doc(sentinels__qourum=2), "sentinels.qourum", "unknown field", id="unknown-sent"),
    pytest.param(doc(router__prot=1), "router.prot", "unknown field", id="unknown-router"),
    pytest.param(doc(ports__bsae=1), "ports.bsae", "unknown field", id="unknown-ports"),
    pytest.param(doc(bus__uri="x"), "bus.uri", "unknown field", id="unknown-bus"),
    pytest.param(doc(persistence__aof=True), "persistence.aof", "unknown field", id="unknown-pers"),
    pytest.param(doc(durability__lag=1), "durability.lag", "unknown field", id="unknown-dur"),
    # wrong types
    pytest.param(doc(shards="3"), "shards", "must be an integer, got string '3'", id="shards-str"),
    pytest.param(doc(shards=1.5), "shards", "must be an integer", id="shards-float"),
    pytest.param(
        doc(replicas_per_shard=True),
        "replicas_per_shard",
        "must be an integer, got boolean true",
        id="replicas-bool",
    ),
    pytest.param(doc(sentinels__count=False), "sentinels.count", "boolean false", id="count-bool"),
    pytest.param(
        doc(sentinels=[1, 2]), "sentinels", "must be a mapping, got a list", id="sent-list"
    ),
    pytest.param(doc(router=["port"]), "router", "must be a mapping", id="router-list"),
    pytest.param(doc(ports="7101"), "ports", "must be a mapping", id="ports-str"),
    pytest.param(doc(ports__base="7101"), "ports.base", "integer or 'auto'", id="base-str"),
    pytest.param(doc(ports__base=True), "ports.base", "integer or 'auto'", id="base-bool"),
    pytest.param(doc(router__port="x"), "router.port", "integer or 'auto'", id="router-port-str"),
    pytest.param(doc(name=5), "name", "must be a string", id="name-int"),
    pytest.param(doc(zones="az-a"), "zones", "must be a list of zone names", id="zones-str"),
    pytest.param(doc(zones=["az-a", 7]), "zones[1]", "must be lowercase", id="zone-int"),
    pytest.param(
        doc(persistence__appendonly="yes"),
        "persistence.appendonly",
        "true or false",
        id="appendonly-str",
    ),
    pytest.param(
        doc(persistence__appendfsync="sometimes"),
        "persistence.appendfsync",
        "is not one of always, everysec, no",
        id="appendfsync",
    ),
    pytest.param(doc(backup__retention=36), "backup.retention", "out of range", id="retention"),
    pytest.param(doc(backup__window="3am"), "backup.window", "HH:MM-HH:MM", id="window"),
    pytest.param(
        doc(backup__window="03:00-04:00", backup__interval_s=60),
        "backup.interval_s",
        "not both",
        id="window-and-interval",
    ),
    pytest.param(doc(backup__source="disk"), "backup.source", "not one of", id="source"),
    pytest.param(doc(backup__keep=1), "backup.keep", "unknown field", id="backup-unknown"),
    pytest.param(doc(engine_binary=5), "engine_binary", "must be a path", id="binary-int"),
    # required
    pytest.param(doc(name=DELETE), "name", "is required", id="name-missing"),
    pytest.param(doc(zones=DELETE), "zones", "is required", id="zones-missing"),
    # out of range
    pytest.param(doc(shards=0), "shards", "0 is out of range 1..500", id="shards-0"),
    pytest.param(doc(shards=501), "shards", "501 is out of range 1..500", id="shards-501"),
    pytest.param(doc(replicas_per_shard=6), "replicas_per_shard", "out of range 0..5", id="repl-6"),
    pytest.param(doc(replicas_per_shard=-1), "replicas_per_shard", "out of range", id="repl-neg"),
    pytest.param(
        doc(zones=[f"z{i}" for i in range(7)], sentinels__count=7, sentinels__quorum=4),
        "zones",
        "7 zones given, at most 6",
        id="zones-7",
    ),
    pytest.param(doc(sentinels__count=10), "sentinels.count", "out of range 0..9", id="count-10"),
    pytest.param(doc(sentinels__quorum=0), "sentinels.quorum", "out of range 1..9", id="quorum-0"),
    pytest.param(doc(ports__base=1023), "ports.base", "out of range 1024..65535", id="base-1023"),
    pytest.param(doc(router__port=0), "router.port", "out of range", id="router-port-0"),
    pytest.param(doc(router__workers=-1), "router.workers", "out of range", id="workers-neg"),
    pytest.param(doc(router__max_clients=0), "router.max_clients", "out of range", id="maxclients"),
    pytest.param(
        doc(router__query_buffer_limit_mb=2048),
        "router.query_buffer_limit_mb",
        "out of range",
        id="query-buffer",
    ),
    pytest.param(doc(router__zone="az-x"), "router.zone", "is not one of the zones", id="rzone"),
    pytest.param(
        doc(durability__max_lag_s=0), "durability.max_lag_s", "out of range", id="max-lag-0"
    ),
    pytest.param(
        doc(sentinels__probe_interval_ms=9),
        "sentinels.probe_interval_ms",
        "out of range",
        id="probe-9",
    ),
    # zones
    pytest.param(doc(zones=[]), "zones", "zone list is empty", id="zones-empty"),
    pytest.param(
        doc(zones=["az-a", "az-b", "az-a"]), "zones", "zone 'az-a' is listed twice", id="zone-dup"
    ),
    pytest.param(doc(zones=["az-a", "AZ-B"]), "zones[1]", "'AZ-B'", id="zone-upper"),
    pytest.param(doc(zones=["-az", "az-b"]), "zones[0]", "lowercase", id="zone-leading-dash"),
    pytest.param(doc(zones=["az_a"]), "zones[0]", "lowercase", id="zone-underscore"),
    pytest.param(doc(zones=["a" * 33]), "zones[0]", "lowercase", id="zone-33-chars"),
    pytest.param(doc(zones=[""]), "zones[0]", "lowercase", id="zone-empty-name"),
    # cluster name
    pytest.param(doc(name="Default"), "name", "must be 1-40 lowercase", id="name-upper"),
    pytest.param(doc(name="1abc"), "name", "starting with a letter", id="name-digit-first"),
    pytest.param(doc(name="a_b"), "name", "lowercase", id="name-underscore"),
    pytest.param(doc(name="a" * 41), "name", "1-40", id="name-41-chars"),
    pytest.param(doc(name=""), "name", "1-40", id="name-empty"),
    # choices
    pytest.param(
        doc(engine="keydb"), "engine", "'keydb' is not one of valkey, redis, memcached", id="engine"
    ),
    pytest.param(
        doc(node_type="cache.huge"), "node_type", "'cache.huge' is not one of", id="node-type"
    ),
    pytest.param(doc(zone_addressing="none"), "zone_addressing", "is not one of", id="addressing"),
    pytest.param(doc(maxmemory_policy="lru"), "maxmemory_policy", "is not one of", id="policy"),
    pytest.param(doc(router__read_from="any"), "router.read_from", "is not one of", id="read-from"),
    # sentinel invariants
    pytest.param(
        doc(sentinels__quorum=4),
        "sentinels.quorum",
        "4 is greater than sentinels.count (3)",
        id="quorum-gt-count",
    ),
    pytest.param(
        doc(sentinels__probe_interval_ms=334),
        "sentinels.probe_interval_ms",
        "too long for down_after_ms 1000",
        id="probe-too-long",
    ),
    pytest.param(
        doc(sentinels__probe_interval_ms=400, sentinels__down_after_ms=1000),
        "sentinels.probe_interval_ms",
        "at least 3 probes",
        id="probe-400",
    ),
    pytest.param(
        doc(sentinels__failover_timeout_ms=1000),
        "sentinels.failover_timeout_ms",
        "must be greater than down_after_ms (1000)",
        id="failover-eq-down-after",
    ),
    pytest.param(
        doc(sentinels__failover_timeout_ms=900, sentinels__down_after_ms=1000),
        "sentinels.failover_timeout_ms",
        "greater than down_after_ms",
        id="failover-lt-down-after",
    ),
    # durability
    pytest.param(
        doc(durability__min_replicas_to_write=2),
        "durability.min_replicas_to_write",
        "2 is greater than replicas_per_shard (1)",
        id="min-rw-gt-replicas",
    ),
    pytest.param(
        doc(replicas_per_shard=0, durability__min_replicas_to_write=1),
        "durability.min_replicas_to_write",
        "no write would succeed",
        id="min-rw-no-replicas",
    ),
    # ports
    pytest.param(
        doc(ports__base=65000), "ports.base", "more shards than ports available", id="base-too-high"
    ),
    # 6 nodes from 55531: last bus port 55536 + 10000 = 65536
    pytest.param(
        doc(ports__base=55531),
        "ports.base",
        "more shards than ports available",
        id="base-one-too-high",
    ),
    pytest.param(
        doc(shards=500, replicas_per_shard=5, ports__base=53000),
        "ports.base",
        "3000 nodes",
        id="base-many-nodes",
    ),
    pytest.param(doc(router__port=7101), "router.port", "collides", id="router-first-node"),
    pytest.param(doc(router__port=7106), "router.port", "collides", id="router-last-node"),
    pytest.param(doc(router__port=17101), "router.port", "collides", id="router-first-bus"),
    pytest.param(doc(router__port=17106), "router.port", "collides", id="router-last-bus"),
    # bus
    pytest.param(doc(bus__url="tcp://127.0.0.1:1883"), "bus.url", "mqtt://host:port", id="bus-tcp"),
    pytest.param(doc(bus__url="mqtt://127.0.0.1"), "bus.url", "mqtt://host:port", id="bus-no-port"),
    pytest.param(
        doc(bus__url="mqtt://127.0.0.1:99999"), "bus.url", "mqtt://host:port", id="bus-bad-port"
    ),
    pytest.param(doc(bus__url="127.0.0.1:1883"), "bus.url", "mqtt://host:port", id="bus-bare"),
    pytest.param(
        doc(bus__url="mqtt://10.0.0.1:1883"),
        "bus.url",
        "not a loopback address",
        id="bus-private-ip",
    ),
    pytest.param(
        doc(bus__url="mqtt://broker.example.com:1883"),
        "bus.url",
        "not a loopback",
        id="bus-hostname",
    ),
    pytest.param(doc(bus__url=1883), "bus.url", "must be a string", id="bus-int"),
]


@pytest.mark.parametrize(("data", "field", "message"), INVALID)
def test_invalid_topology_names_field(data: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(data)
    exc = info.value
    assert exc.source == "t.yaml"
    assert exc.field == field
    assert message in exc.message
    assert str(exc) == f"t.yaml: field `{field}`: {exc.message}"


def test_error_is_one_line_naming_file_field_and_reason() -> None:
    with pytest.raises(TopologyError) as info:
        parse(doc(sentinels__quorum=4))
    assert (
        str(info.value) == "t.yaml: field `sentinels.quorum`: 4 is greater than sentinels.count (3)"
    )
    assert "\n" not in str(info.value)


def test_unknown_field_error_format() -> None:
    with pytest.raises(TopologyError) as info:
        parse(doc(sentinels__qourum=2))
    assert str(info.value) == "t.yaml: field `sentinels.qourum`: unknown field"


def test_root_must_be_a_mapping() -> None:
    with pytest.raises(TopologyError) as info:
        parse(["name", "zones"])
    assert info.value.field == "<root>"
    assert "must be a mapping, got a list" in info.value.message


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(doc(name="abc\n"), id="name-trailing-newline"),
        pytest.param(doc(zones=["az-a\n", "az-b"]), id="zone-trailing-newline"),
    ],
)
def test_names_with_trailing_newline_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(TopologyError):
        parse(data)


VALID = [
    pytest.param(
        doc(
            engine="memcached",
            nodes=3,
            shards=DELETE,
            replicas_per_shard=DELETE,
            sentinels=DELETE,
        ),
        id="memcached",
    ),
    pytest.param(doc(engine="redis"), id="redis"),
    pytest.param(doc(bus__url="mqtt://127.0.0.1:1883"), id="bus-mqtt-127"),
    pytest.param(doc(bus__url="mqtt://127.0.3.1:1883"), id="bus-mqtt-127-zone"),
    pytest.param(doc(bus__url="mqtt://localhost:1883"), id="bus-mqtt-localhost"),
    pytest.param(doc(ports__base="auto", router__port="auto"), id="ports-auto"),
    pytest.param(doc(ports__base="auto", router__port=7101), id="router-port-with-auto-base"),
    pytest.param(doc(router__port=7107), id="router-after-nodes"),
    pytest.param(doc(router__port=17107), id="router-after-bus"),
    pytest.param(doc(ports__base=55530), id="base-highest-fit"),
    pytest.param(doc(sentinels__probe_interval_ms=333), id="probe-exactly-fits"),
    pytest.param(doc(sentinels__failover_timeout_ms=1001), id="failover-just-above"),
    pytest.param(doc(sentinels__quorum=3), id="quorum-eq-count"),
    pytest.param(doc(sentinels__count=0, sentinels__quorum=DELETE), id="no-sentinels"),
    pytest.param(doc(durability__min_replicas_to_write=1), id="min-rw-eq-replicas"),
    pytest.param(doc(zones=[f"z{i}" for i in range(6)]), id="zones-6"),
    pytest.param(doc(zones=["a" * 32]), id="zone-32-chars"),
    pytest.param(doc(name="a" * 40), id="name-40-chars"),
    pytest.param(doc(name="a"), id="name-1-char"),
    pytest.param(doc(shards=500, replicas_per_shard=5, ports__base="auto"), id="max-size"),
    pytest.param(doc(replicas_per_shard=0, durability__min_replicas_to_write=0), id="no-repl"),
    pytest.param(doc(sentinels=None, router=None, persistence=None), id="null-sections"),
    pytest.param(doc(zone_addressing="shared"), id="shared-addressing"),
]


@pytest.mark.parametrize("data", VALID)
def test_valid_variants_parse(data: dict[str, Any]) -> None:
    topo = parse(data)
    assert topo.name == data["name"]
    assert topo.engine == data["engine"]


def test_memcached_engine_is_kept() -> None:
    memcached = doc(
        engine="memcached", nodes=3, shards=DELETE, replicas_per_shard=DELETE, sentinels=DELETE
    )
    assert parse(memcached).engine == "memcached"


def test_bus_url_host_port() -> None:
    topo = parse(doc(bus__url="mqtt://127.0.0.1:1883"))
    assert not topo.bus.embedded
    assert topo.bus.host_port == ("127.0.0.1", 1883)
    assert parse(doc()).bus.embedded


def test_minimal_document_gets_documented_defaults() -> None:
    topo = parse({"name": "mini", "zones": ["az-a", "az-b", "az-c"]})
    assert topo.engine == "valkey"
    assert topo.shards == 3
    assert topo.replicas_per_shard == 1
    assert topo.node_type == "cache.small"
    assert topo.maxmemory == 256 * MiB
    assert topo.maxmemory_policy == "volatile-lru"
    assert topo.zone_addressing == "per-zone"
    assert topo.ports_base is None  # auto
    assert topo.router.port is None  # auto
    assert topo.router.read_from == "primary"
    assert topo.router.failover_wait_ms == 5000
    assert topo.router.workers == 0  # one per core
    assert topo.router.max_clients == 10_000
    assert topo.router.query_buffer_limit_mb == 64
    assert topo.router.zone is None
    assert topo.bus.url == "embedded"
    assert topo.sentinels.count == 3
    assert topo.sentinels.quorum == 2
    assert topo.sentinels.probe_interval_ms == 100
    assert topo.sentinels.down_after_ms == 1000
    assert topo.sentinels.failover_timeout_ms == 5000
    assert topo.persistence.appendonly is False
    assert topo.durability.min_replicas_to_write == 0
    assert topo.durability.max_lag_s == 2
    assert topo.engine_binary is None
    assert topo.source == "t.yaml"


@pytest.mark.parametrize(
    ("zones", "count", "quorum"),
    [
        pytest.param(["local"], 1, 1, id="one-zone"),
        pytest.param(["a", "b"], 3, 2, id="two-zones"),
        pytest.param(["a", "b", "c", "d", "e"], 5, 3, id="five-zones"),
        pytest.param(["a", "b", "c", "d", "e", "f"], 6, 4, id="six-zones"),
    ],
)
def test_default_sentinels_follow_zones(zones: list[str], count: int, quorum: int) -> None:
    topo = parse({"name": "mini", "zones": zones})
    assert (topo.sentinels.count, topo.sentinels.quorum) == (count, quorum)
    # quorum is a majority of the configured sentinels
    assert topo.sentinels.quorum > topo.sentinels.count / 2


def test_zone_address_per_zone() -> None:
    topo = parse(doc())
    assert [topo.zone_address(z) for z in topo.zones] == ["127.0.1.1", "127.0.2.1", "127.0.3.1"]


def test_zone_address_per_zone_six_zones() -> None:
    topo = parse(doc(zones=[f"z{i}" for i in range(6)]))
    assert topo.zone_address("z5") == "127.0.6.1"


def test_zone_address_shared() -> None:
    topo = parse(doc(zone_addressing="shared"))
    assert {topo.zone_address(z) for z in topo.zones} == {"127.0.0.1"}


@pytest.mark.parametrize(
    ("node_type", "nbytes"),
    [
        ("cache.micro", 64 * MiB),
        ("cache.small", 256 * MiB),
        ("cache.medium", 1024 * MiB),
        ("cache.large", 4096 * MiB),
    ],
)
def test_maxmemory_from_node_type(node_type: str, nbytes: int) -> None:
    assert parse(doc(node_type=node_type)).maxmemory == nbytes


def test_topology_files_exist() -> None:
    assert {p.name for p in TOPOLOGY_FILES} >= {"default.yaml", "dev.yaml", "large.yaml"}


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name)
def test_every_shipped_topology_loads(path: Path) -> None:
    topo = load_topology(path)
    assert topo.name == path.stem
    assert topo.source == str(path)
    assert topo.zones


def test_default_yaml_matches_its_comments() -> None:
    topo = load_topology(REPO / "topologies" / "default.yaml")
    assert topo.zones == ("az-a", "az-b", "az-c")
    assert (topo.shards, topo.replicas_per_shard, topo.ports_base) == (3, 1, 7101)
    assert topo.router.port == 7100


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.field == ""
    assert info.value.source == str(path)
    assert info.value.message == "file not found"
    assert str(info.value) == f"{path}: file not found"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("name: [unclosed\nzones: [a]\n", id="unclosed-flow"),
        pytest.param("name: a\n  zones: : b\n", id="bad-indent"),
        pytest.param("name: 'x\n", id="unterminated-quote"),
    ],
)
def test_load_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.field == ""
    assert info.value.message.startswith("invalid YAML")
    assert str(info.value).startswith(f"{path}: invalid YAML")


def test_load_invalid_topology_names_path_and_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: c\nzones: [az-a]\nshards: 0\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert (info.value.source, info.value.field) == (str(path), "shards")


def test_topology_is_frozen() -> None:
    topo = parse(doc())
    with pytest.raises(AttributeError):
        topo.shards = 4  # type: ignore[misc]


def test_backup_defaults_and_a_nightly_window() -> None:
    assert parse(doc()).backup.automatic is False
    nightly = parse(doc(backup__retention=7)).backup
    assert nightly.automatic and nightly.window == (180, 240) and nightly.interval_s is None
    fast = parse(doc(backup__retention=2, backup__interval_s=5, backup__source="primary")).backup
    assert (fast.window, fast.interval_s, fast.source) == (None, 5, "primary")
    assert parse(doc(persistence__appendfsync="always")).persistence.appendfsync == "always"
