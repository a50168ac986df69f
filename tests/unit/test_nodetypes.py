"""Node types: one table (cachefleet.nodetypes) read by the topology and by the API."""

from __future__ import annotations

from typing import Any

import pytest

from cachefleet import nodetypes
from cachefleet.api.names import check_node_type, node_size
from cachefleet.api.wire import ApiError
from cachefleet.errors import TopologyError
from cachefleet.topology import parse_topology

MiB = 1024**2


def doc(**changes: Any) -> dict[str, Any]:
    return {
        "name": "t1",
        "zones": ["az-a", "az-b"],
        "shards": 1,
        "replicas_per_shard": 1,
        "ports": {"base": 7101},
        "router": {"port": 7100},
        **changes,
    }


@pytest.mark.parametrize(
    ("name", "nbytes"),
    [
        ("cache.t4g.micro", 64 * MiB),
        ("cache.t4g.small", 256 * MiB),
        ("cache.t3.medium", 1024 * MiB),
        ("cache.m7g.large", 4096 * MiB),
        ("cache.r6g.large", 4096 * MiB),
        ("cache.small", 256 * MiB),  # the short names stay
    ],
)
def test_a_topology_takes_the_services_node_types_and_keeps_the_name(
    name: str, nbytes: int
) -> None:
    topo = parse_topology(doc(node_type=name), "t.yaml")
    assert topo.node_type == name  # as written: `status` and the API show it
    assert topo.maxmemory == nbytes


def test_a_memcached_topology_takes_them_too() -> None:
    raw = {"name": "m", "engine": "memcached", "zones": ["az-a"], "nodes": 2,
           "node_type": "cache.t4g.micro", "ports": {"base": 7201},
           "router": {"port": 7200}}  # fmt: skip
    assert parse_topology(raw).maxmemory == 64 * MiB


def test_an_unknown_node_type_names_the_field_and_every_valid_name() -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology(doc(node_type="cache.x9.huge"), "t.yaml")
    assert err.value.field == "node_type"
    text = str(err.value)
    assert "'cache.x9.huge'" in text and "t.yaml" in text
    for name in ("cache.micro", "cache.large", "cache.t4g.small", "cache.m7g.large"):
        assert name in text


def test_the_service_names_follow_the_services_memory_order() -> None:
    order = list(nodetypes.SIZES)
    for name, size in nodetypes.SERVICE_TYPES.items():
        assert size in nodetypes.SIZES, name
        assert nodetypes.memory(name) == nodetypes.SIZES[size]
    for family in ("t2", "t3", "t4g"):
        ranks = [order.index(nodetypes.size_of(f"cache.{family}.{s}"))
                 for s in ("micro", "small", "medium")]  # fmt: skip
        assert ranks == sorted(ranks) and len(set(ranks)) == 3


def test_the_api_reads_the_same_table() -> None:
    for name in nodetypes.NODE_TYPES:
        assert check_node_type(name) == name
        assert node_size(name) == nodetypes.size_of(name)
    with pytest.raises(ApiError) as err:
        check_node_type("cache.x9.huge")
    assert err.value.code == "InvalidParameterValue"
    assert "CacheNodeType" in err.value.message and "cache.t4g.small" in err.value.message
    with pytest.raises(KeyError):
        nodetypes.size_of("cache.x9.huge")
