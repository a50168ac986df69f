"""`cachefleet top`: rows from the collector's samples and the table (pure)."""

from __future__ import annotations

from cachefleet.metrics import (
    CommandClasses,
    NodeReading,
    down_sample,
    memcached_samples,
    node_samples,
)
from cachefleet.ops.top import Row, render_table, table_rows
from cachefleet.plan import Plan, build_plan
from cachefleet.topology import parse_topology

TOPO = {
    "name": "c",
    "zones": ["az-a", "az-b"],
    "shards": 2,
    "replicas_per_shard": 1,
    "ports": {"base": 30000},
}


def plan() -> Plan:
    return build_plan(
        parse_topology(TOPO),
        TOPO,
        engine_binary="valkey-server",
        node_ports=None,
        bus=("127.0.0.1", 1883),
        router_port=6379,
    )


def reading(info: dict[str, object], at: float) -> NodeReading:
    return NodeReading.from_info(info, {}, CommandClasses(), at)


def test_rows_per_node_with_a_down_node() -> None:
    p = plan()
    primary = p.node("c-0001-001")
    replica = p.node("c-0001-002")
    samples = node_samples(
        reading(
            {"role": "master", "used_memory": 2 * 1024**2, "maxmemory": 8 * 1024**2,
             "connected_clients": 4, "instantaneous_ops_per_sec": 1500,
             "keyspace_hits": 9, "keyspace_misses": 1},
            1.0,
        ),
        None, cluster="c", shard=1, node=primary.name, zone=primary.zone,
    )  # fmt: skip
    samples += node_samples(
        reading({"role": "slave", "master_link_status": "up", "master_last_io_seconds_ago": 3}, 1),
        None, cluster="c", shard=1, node=replica.name, zone=replica.zone,
    )  # fmt: skip
    samples.append(down_sample("c", "c-0002-001", "az-b", "primary", 2))
    rows = table_rows(p, samples)
    assert [r.node for r in rows] == ["c-0001-001", "c-0001-002", "c-0002-001", "c-0002-002"]
    assert rows[0] == Row(
        node="c-0001-001", shard=1, zone=primary.zone, role="primary", ops_per_sec=1500,
        memory=2 * 1024**2, max_memory_ratio=0.25, connections=4, lag_s=None, hit_rate=0.9,
    )  # fmt: skip
    assert (rows[1].role, rows[1].lag_s) == ("replica", 3)
    assert rows[2].role == rows[3].role == "down"


def test_memcached_rows() -> None:
    p = plan()
    n = p.nodes[0]
    stats = {"get_hits": "3", "get_misses": "1", "bytes": "2048", "curr_connections": "2"}
    rows = table_rows(p, memcached_samples(stats, cluster="c", node=n.name, zone=n.zone))
    assert rows[0].role == "node"
    assert (rows[0].memory, rows[0].connections, rows[0].hit_rate) == (2048, 2, 0.75)


def test_table_aligns_columns_and_fits_the_width() -> None:
    rows = [
        Row("c-0001-001", 1, "az-a", "primary", 1500, 2 * 1024**2, 0.25, 4, None, 0.9),
        Row("c-0001-002", 1, "az-b", "replica", 0, 1024**2, 0.125, 2, 3, None),
        Row("c-0002-001", 2, "az-b", "down"),
    ]
    text = render_table("title", rows, width=200)
    lines = text.splitlines()
    assert lines[0] == "title"
    assert lines[2].split() == [
        "NODE", "SHARD", "ZONE", "ROLE", "OPS/S", "MEMORY", "MEM%", "CONNS", "LAG", "HIT%",
    ]  # fmt: skip
    assert lines[3].split() == [
        "c-0001-001", "1", "az-a", "primary", "1500", "2.0MiB", "25.0", "4", "-", "90.0",
    ]  # fmt: skip
    assert lines[4].split()[-2:] == ["3s", "-"]
    assert lines[5].split() == ["c-0002-001", "2", "az-b", "down", "-", "-", "-", "-", "-", "-"]
    assert len({len(line) for line in lines[2:]}) == 1  # aligned
    assert all(len(line) <= 30 for line in render_table("t", rows, width=30).splitlines())
