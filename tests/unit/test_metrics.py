"""Engine INFO and control-plane state to the managed service's metrics (pure)."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis._parsers.helpers import parse_info

from cachefleet import metrics as m
from cachefleet.metrics import (
    CommandClasses,
    EventCounts,
    NodeReading,
    control_samples,
    memcached_samples,
    node_samples,
    render,
)

CLASSES = CommandClasses.from_command_table(
    {
        "get": {"flags": ["readonly", "fast"], "first_key_pos": 1},
        "set": {"flags": ["write", "denyoom"], "first_key_pos": 1},
        "mget": {"flags": ["readonly", "fast"], "first_key_pos": 1},
        "ping": {"flags": ["fast"], "first_key_pos": 0},
        "client": {"flags": [], "first_key_pos": 0},
        "INFO": {"flags": ["loading", "stale"], "first_key_pos": 0},
    }
)

PRIMARY_INFO = """# Replication
role:master
connected_slaves:1
master_repl_offset:{offset}
# CPU
used_cpu_sys:{sys}
used_cpu_user:1.0
used_cpu_sys_main_thread:{main}
used_cpu_user_main_thread:0.5
# Memory
used_memory:{used}
maxmemory:67108864
# Clients
connected_clients:7
# Stats
total_connections_received:{new}
keyspace_hits:{hits}
keyspace_misses:{misses}
evicted_keys:4
expired_keys:9
total_net_input_bytes:1000
total_net_output_bytes:2000
instantaneous_ops_per_sec:250
# Keyspace
db0:keys=120,expires=3,avg_ttl=0
"""

STATS = """cmdstat_get:calls={gets},usec={get_usec},usec_per_call=1.00,rejected_calls=0
cmdstat_mget:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0
cmdstat_set:calls={sets},usec={set_usec},usec_per_call=2.00,rejected_calls=0
cmdstat_client|list:calls=3,usec=30,usec_per_call=10.00,rejected_calls=0
cmdstat_ping:calls=1000,usec=100,usec_per_call=0.10,rejected_calls=0
"""


def reading(at: float, **kw: float) -> NodeReading:
    v: dict[str, float] = dict(
        offset=5000, sys=2.0, main=1.0, used=16777216, new=10, hits=30, misses=10,
        gets=100, get_usec=100, sets=50, set_usec=100,
    )  # fmt: skip
    v.update(kw)
    info = parse_info(PRIMARY_INFO.format(**v).replace("\n", "\r\n"))
    stats = parse_info(STATS.format(**v).replace("\n", "\r\n"))
    return NodeReading.from_info(info, stats, CLASSES, at)


def values(samples: list[m.Sample]) -> dict[str, float]:
    return {s.metric.name: s.value for s in samples}


KW = dict(cluster="c", shard=2, node="c-0002-001", zone="az-b")


def test_every_name_follows_the_conventions() -> None:
    for metric in m.ALL:
        assert re.fullmatch(r"cachefleet_[a-z0-9_]+", metric.name), metric.name
        assert metric.name.endswith("_total") == (metric.kind is m.Kind.COUNTER), metric.name
        if metric.service:
            snake = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", metric.service)
            stem = snake.lower().removesuffix("_percentage")
            assert metric.name.startswith(f"cachefleet_{stem}"), (metric.name, stem)
            assert metric.help_text.startswith(metric.service + ":")


def test_first_reading_gives_levels_and_counters_not_rates() -> None:
    got = values(node_samples(reading(10.0), None, **KW))
    assert got["cachefleet_bytes_used_for_cache"] == 16777216
    assert got["cachefleet_freeable_memory_bytes"] == 67108864 - 16777216
    assert got["cachefleet_database_memory_usage_ratio"] == 0.25
    assert got["cachefleet_curr_connections"] == 7
    assert got["cachefleet_new_connections_total"] == 10
    assert got["cachefleet_cache_hits_total"] == 30
    assert got["cachefleet_cache_misses_total"] == 10
    assert got["cachefleet_cache_hit_rate_ratio"] == 0.75  # since start
    assert got["cachefleet_evictions_total"] == 4
    assert got["cachefleet_reclaimed_total"] == 9
    assert got["cachefleet_curr_items"] == 120
    assert got["cachefleet_is_primary"] == 1
    assert got["cachefleet_replication_bytes_total"] == 5000
    assert got["cachefleet_network_bytes_in_total"] == 1000
    assert got["cachefleet_network_bytes_out_total"] == 2000
    assert got["cachefleet_get_type_cmds_total"] == 110  # get + mget
    assert got["cachefleet_set_type_cmds_total"] == 50
    assert got["cachefleet_key_based_cmds_total"] == 160  # not ping, not client|list
    assert got["cachefleet_ops_per_second"] == 250
    assert "cachefleet_cpu_utilization_ratio" not in got  # a rate needs two readings
    assert "cachefleet_replication_lag_seconds" not in got  # a primary has no lag


def test_second_reading_gives_rates_over_the_interval() -> None:
    before = reading(10.0)
    after = reading(12.0, sys=2.5, main=1.2, hits=38, misses=12, gets=200, get_usec=400)
    got = values(node_samples(after, before, **KW))
    assert got["cachefleet_cpu_utilization_ratio"] == pytest.approx(0.25)
    assert got["cachefleet_engine_cpu_utilization_ratio"] == pytest.approx(0.1)
    assert got["cachefleet_cache_hit_rate_ratio"] == pytest.approx(0.8)  # 8 of 10 lookups
    assert got["cachefleet_get_type_cmds_latency_seconds"] == pytest.approx(3e-6)  # 300us/100
    assert "cachefleet_set_type_cmds_latency_seconds" not in got  # no writes in between


def test_a_restarted_node_gives_no_negative_rate() -> None:
    got = values(node_samples(reading(12.0, sys=0.1, main=0.05), reading(10.0), **KW))
    assert "cachefleet_cpu_utilization_ratio" not in got
    assert "cachefleet_engine_cpu_utilization_ratio" not in got


def test_replica_lag_and_labels() -> None:
    text = "role:slave\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:2\r\n"
    rep = NodeReading.from_info(parse_info(text), {}, CLASSES, 1.0)
    samples = node_samples(rep, None, **KW)
    got = values(samples)
    assert got["cachefleet_replication_lag_seconds"] == 2
    assert got["cachefleet_is_primary"] == 0
    assert "cachefleet_replication_bytes_total" not in got
    assert "cachefleet_cache_hit_rate_ratio" not in got  # never asked for a key
    assert dict(samples[0].labels) == {
        "cluster": "c", "shard": "2", "node": "c-0002-001", "zone": "az-b", "role": "replica",
    }  # fmt: skip
    down = "role:slave\r\nmaster_link_status:down\r\nmaster_link_down_since_seconds:7\r\n"
    rep = NodeReading.from_info(parse_info(down), {}, CLASSES, 1.0)
    assert values(node_samples(rep, None, **KW))["cachefleet_replication_lag_seconds"] == 7


def test_memcached_stats() -> None:
    stats = {"cmd_get": "10", "cmd_set": "4", "get_hits": "7", "get_misses": "3",
             "curr_items": "4", "evictions": "0", "bytes": "512", "curr_connections": "2",
             "pid": "1"}  # fmt: skip
    got = values(memcached_samples(stats, cluster="c", node="n", zone="az-a"))
    assert got == {
        "cachefleet_cmd_get_total": 10, "cachefleet_cmd_set_total": 4,
        "cachefleet_get_hits_total": 7, "cachefleet_get_misses_total": 3,
        "cachefleet_curr_items": 4, "cachefleet_evictions_total": 0,
        "cachefleet_bytes_used_for_cache_items": 512, "cachefleet_curr_connections": 2,
        "cachefleet_node_up": 1,
    }  # fmt: skip


def test_control_plane_counts_from_events() -> None:
    counts = EventCounts()
    counts.feed(
        [
            {"type": "process_restarted", "process": "router"},
            {"type": "cluster_created"},
            {"type": "process_restarted", "process": "sentinel.s1"},
            {"type": "process_restarted", "process": "sentinel.s1"},
            {"type": "failover_completed", "shard": 1},
            {"type": "graceful_failover", "shard": 2},
            {"type": "failover_aborted", "shard": 1},
            {"type": "failover_completed", "shard": 3},
            {"type": "sdown"},
        ]
    )
    samples = control_samples(
        cluster="c",
        config_epoch=7,
        counts=counts,
        sdown={"s1": ["c-0001-001"], "s2": []},
        routers={"router": (3, 120.5)},
    )
    got = {(s.metric.name, s.labels): s.value for s in samples}
    assert got[("cachefleet_failovers_total", (("cluster", "c"), ("outcome", "completed")))] == 2
    assert got[("cachefleet_failovers_total", (("cluster", "c"), ("outcome", "aborted")))] == 1
    assert got[("cachefleet_failovers_total", (("cluster", "c"), ("outcome", "graceful")))] == 1
    assert got[("cachefleet_config_epoch", (("cluster", "c"),))] == 7
    assert (
        got[("cachefleet_process_restarts_total", (("cluster", "c"), ("process", "sentinel.s1")))]
        == 2
    )
    assert (
        "cachefleet_process_restarts_total",
        (("cluster", "c"), ("process", "router")),
    ) not in got
    sd = (("cluster", "c"), ("sentinel", "s1"), ("node", "c-0001-001"))
    assert got[("cachefleet_sdown", sd)] == 1
    assert got[("cachefleet_router_connections", (("cluster", "c"), ("router", "router")))] == 3
    assert (
        got[("cachefleet_router_ops_per_second", (("cluster", "c"), ("router", "router")))] == 120.5
    )


def test_render_is_valid_prometheus_text_with_help_and_types() -> None:
    samples = node_samples(reading(12.0, sys=2.5), reading(10.0), **KW)
    samples += control_samples(
        cluster="c", config_epoch=3, counts=EventCounts(), sdown={}, routers={}
    )
    text = render(samples).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hits = families["cachefleet_cache_hits"]  # the parser strips _total from counter families
    assert hits.type == "counter"
    assert hits.documentation.startswith("CacheHits:")
    assert hits.samples[0].name == "cachefleet_cache_hits_total"
    assert hits.samples[0].labels == {
        "cluster": "c", "shard": "2", "node": "c-0002-001", "zone": "az-b", "role": "primary",
    }  # fmt: skip
    assert families["cachefleet_replication_bytes"].samples[0].value == 5000
    assert families["cachefleet_cpu_utilization_ratio"].type == "gauge"
    assert "# HELP cachefleet_config_epoch " in text


def test_replica_lag_is_the_primarys_view_when_it_has_one() -> None:
    primary_text = (
        "role:master\r\nconnected_slaves:2\r\n"
        "slave0:ip=127.0.2.1,port=7102,state=online,offset=900,lag=1\r\n"
        "slave1:ip=127.0.3.1,port=7103,state=online,offset=800,lag=0\r\n"
    )
    primary = NodeReading.from_info(parse_info(primary_text), {}, CLASSES, 1.0)
    assert primary.replica_lags == (("127.0.2.1:7102", 1.0), ("127.0.3.1:7103", 0.0))
    lags = m.replica_lags([primary])
    assert lags == {"127.0.2.1:7102": 1.0, "127.0.3.1:7103": 0.0}
    idle = "role:slave\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:9\r\n"
    rep = NodeReading.from_info(parse_info(idle), {}, CLASSES, 1.0)
    got = values(node_samples(rep, None, **KW, lag_s=lags["127.0.2.1:7102"]))
    assert got["cachefleet_replication_lag_seconds"] == 1  # not the 9 s of an idle link
    assert m.replica_lags([rep]) == {}


def test_a_node_that_did_not_answer_is_down_with_its_last_labels() -> None:
    down = m.down_sample("c", "c-0002-001", "az-b", "replica", 2)
    assert (down.metric.name, down.value) == ("cachefleet_node_up", 0)
    assert dict(down.labels) == {
        "cluster": "c", "shard": "2", "node": "c-0002-001", "zone": "az-b", "role": "replica",
    }  # fmt: skip
    mc = m.down_sample("c", "c-0001", "az-a")
    assert dict(mc.labels) == {"cluster": "c", "node": "c-0001", "zone": "az-a"}
    assert mc.value == 0
