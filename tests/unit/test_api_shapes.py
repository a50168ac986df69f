"""CreateReplicationGroup's validation and the records Describe renders, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from cachefleet.api import creation, shapes
from cachefleet.api.names import Account
from cachefleet.api.wire import ApiError, Params, XmlList
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.plan import build_plan
from cachefleet.topology import parse_topology

ACCOUNT = Account(region="us-west-2", account="111122223333")


def create(**fields: str) -> creation.CreateRequest:
    base = {"ReplicationGroupId": "Shop", "ReplicationGroupDescription": "d"}
    return creation.create_request(Params({**base, **fields}), ACCOUNT)


def test_cluster_mode_shape_becomes_a_topology_that_validates() -> None:
    req = create(
        Engine="valkey",
        CacheNodeType="cache.t4g.small",
        NumNodeGroups="3",
        ReplicasPerNodeGroup="1",
        AutomaticFailoverEnabled="true",
        **{"Tags.Tag.1.Key": "team", "Tags.Tag.1.Value": "cache"},
    )
    t = req.topology
    assert (req.name, t["engine"], t["shards"], t["replicas_per_shard"]) == ("shop", "valkey", 3, 1)
    # the topology keeps the service's name: it accepts it (cachefleet.nodetypes)
    assert t["node_type"] == "cache.t4g.small" and req.node_type == "cache.t4g.small"
    assert t["zones"] == ["us-west-2a", "us-west-2b"]
    assert req.cluster_enabled and req.automatic_failover
    assert req.tags == {"team": "cache"}
    topo = parse_topology(t)  # what `up` will accept
    assert topo.shards == 3 and topo.name == "shop"


def test_num_cache_clusters_is_one_group_of_primary_and_replicas() -> None:
    req = create(
        NumCacheClusters="3",
        AutomaticFailoverEnabled="true",
        **{
            "PreferredCacheClusterAZs.AvailabilityZone.1": "us-west-2c",
            "PreferredCacheClusterAZs.AvailabilityZone.2": "us-west-2a",
            "PreferredCacheClusterAZs.AvailabilityZone.3": "us-west-2c",
        },
    )
    assert (req.topology["shards"], req.topology["replicas_per_shard"]) == (1, 2)
    assert req.topology["zones"] == ["us-west-2c", "us-west-2a"]  # distinct, in order
    assert req.topology["engine"] == "redis"  # the service's default engine
    assert not req.cluster_enabled


def test_node_group_configuration_maps_onto_zones() -> None:
    req = create(
        NumNodeGroups="2",
        AutomaticFailoverEnabled="true",
        **{
            "NodeGroupConfiguration.NodeGroupConfiguration.1.PrimaryAvailabilityZone": "z1",
            "NodeGroupConfiguration.NodeGroupConfiguration.1.ReplicaAvailabilityZones."
            "AvailabilityZone.1": "z2",
            "NodeGroupConfiguration.NodeGroupConfiguration.2.PrimaryAvailabilityZone": "z2",
            "NodeGroupConfiguration.NodeGroupConfiguration.2.ReplicaCount": "1",
        },
    )
    assert req.topology["zones"] == ["z1", "z2"]
    assert (req.topology["shards"], req.topology["replicas_per_shard"]) == (2, 1)


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"NumNodeGroups": "2"}, "InvalidParameterCombination", "AutomaticFailoverEnabled"),
        ({"ClusterMode": "enabled"}, "InvalidParameterCombination", "AutomaticFailoverEnabled"),
        (
            {"NumCacheClusters": "1", "AutomaticFailoverEnabled": "true"},
            "InvalidParameterCombination",
            "read replica",
        ),
        ({"MultiAZEnabled": "true"}, "InvalidParameterCombination", "MultiAZEnabled"),
        (
            {"NumCacheClusters": "2", "ReplicasPerNodeGroup": "1"},
            "InvalidParameterCombination",
            "NumCacheClusters",
        ),
        (
            {"NumCacheClusters": "2", "PreferredCacheClusterAZs.AvailabilityZone.1": "a"},
            "InvalidParameterValue",
            "one per cluster",
        ),
        ({"Engine": "memcached"}, "InvalidParameterValue", "CreateCacheCluster"),
        ({"CacheNodeType": "cache.q9.tiny"}, "InvalidParameterValue", "CacheNodeType"),
        ({"NumNodeGroups": "0"}, "InvalidParameterValue", "NumNodeGroups"),
        ({"AuthToken": "secret-token-123456"}, "InvalidParameterValue", "AuthToken"),
        ({"SnapshotArns.SnapshotArn.1": "arn:s3"}, "InvalidParameterValue", "S3"),
        ({"Bogus": "1"}, "InvalidParameterValue", "Bogus"),
        ({"ReplicationGroupId": "9lives"}, "InvalidParameterValue", "ReplicationGroupId"),
    ],
)
def test_the_services_validation(fields: dict[str, str], code: str, words: str) -> None:
    with pytest.raises(ApiError) as err:
        create(**fields)
    assert err.value.code == code
    assert words in err.value.message
    assert "secret-token" not in err.value.message  # a secret is named, never echoed


def test_an_explicit_false_for_an_unsupported_feature_is_fine() -> None:
    assert create(TransitEncryptionEnabled="false").name == "shop"


def test_a_snapshot_name_seeds_the_new_group() -> None:
    assert create(SnapshotName="nightly-1").snapshot == "nightly-1"
    assert create().snapshot is None


def view(status: str = "available", failed_over: bool = False) -> shapes.ClusterView:
    raw = {
        "name": "shop",
        "zones": ["az-a", "az-b"],
        "shards": 2,
        "replicas_per_shard": 1,
        "router": {"port": 7100},
        "ports": {"base": 7101},
    }
    plan = build_plan(
        parse_topology(raw),
        raw,
        engine_binary="/bin/true",
        node_ports=None,
        bus=("127.0.0.1", 1883),
        router_port=7100,
    )
    shards = []
    for s in (1, 2):
        nodes = []
        for n in plan.shard_nodes(s):
            primary = (n.member == 0) != (failed_over and s == 2)
            nodes.append(
                LayoutNode(
                    name=n.name,
                    id=f"{n.name}-id",
                    shard=s,
                    zone=n.zone,
                    host=n.host,
                    port=n.port,
                    bus_port=n.bus_port,
                    role="primary" if primary else "replica",
                )
            )
        shards.append(LayoutShard(id=s, slots=(plan.slot_ranges[s - 1],), nodes=tuple(nodes)))
    layout = Layout(cluster="shop", epoch=3, shards=tuple(shards))
    record = shapes.Record(description="the shop", node_type="cache.t4g.small")
    return shapes.ClusterView("shop", plan, layout, status, record, 1767323045.0, "8.1.1")


def members(group: dict[str, Any]) -> list[dict[str, Any]]:
    items = group["NodeGroupMembers"]
    assert isinstance(items, XmlList)
    return list(items.items)


def test_a_replication_group_record() -> None:
    rg = shapes.replication_group(view(failed_over=True), ACCOUNT)
    assert rg["ARN"] == "arn:aws:elasticache:us-west-2:111122223333:replicationgroup:shop"
    assert rg["ConfigurationEndpoint"] == {"Address": "127.0.0.1", "Port": 7100}
    assert rg["CacheNodeType"] == "cache.t4g.small" and rg["Description"] == "the shop"
    assert rg["ReplicationGroupCreateTime"] == "2026-01-02T03:04:05.000Z"
    groups = rg["NodeGroups"].items
    assert [g["NodeGroupId"] for g in groups] == ["0001", "0002"]
    assert groups[0]["Slots"] == "0-8191"
    second = members(groups[1])
    primary = next(m for m in second if m["CurrentRole"] == "primary")
    assert primary["CacheClusterId"] == "shop-0002-002"  # the layout's roles, after a failover
    assert groups[1]["PrimaryEndpoint"] == primary["ReadEndpoint"]
    assert rg["MemberClusters"].items == [
        "shop-0001-001",
        "shop-0001-002",
        "shop-0002-001",
        "shop-0002-002",
    ]


def test_member_nodes_are_cache_clusters() -> None:
    clusters = shapes.cache_clusters(view(), ACCOUNT, show_nodes=True)
    assert [c["CacheClusterId"] for c in clusters][:2] == ["shop-0001-001", "shop-0001-002"]
    first = clusters[0]
    assert first["ReplicationGroupId"] == "shop" and first["EngineVersion"] == "8.1.1"
    node = first["CacheNodes"].items[0]
    assert node["CacheNodeId"] == "0001" and node["Endpoint"]["Port"] == 7101
    assert shapes.cache_clusters(view(), ACCOUNT, show_nodes=False)[0]["CacheNodes"] is None


def test_events_about_a_node_belong_to_its_cache_cluster() -> None:
    ev = {"v": 1, "ts": 10.0, "type": "node_replaced", "cluster": "shop", "node": "shop-0001-002"}
    assert shapes.event_record("shop", ev)[1:3] == ("cache-cluster", "shop-0001-002")
    ev = {"v": 1, "ts": 11.0, "type": "graceful_failover", "cluster": "shop", "shard": 1}
    when, kind, source, message = shapes.event_record("shop", ev)
    assert (when, kind, source) == (11.0, "replication-group", "shop")
    assert message == "graceful_failover: shard=1"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("Valkey server v=8.1.1 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", "8.1.1"),
        ("Redis server v=7.0.15 sha=00000000:0", "7.0.15"),
        ("memcached 1.6.18", "1.6.18"),
        ("nothing", None),
    ],
)
def test_engine_versions_from_the_servers(text: str, version: str | None) -> None:
    assert shapes.engine_version(text) == version


def test_a_record_survives_its_json() -> None:
    rec = shapes.Record(description="d", created=5.0, tags={"arn:x": {"a": "b"}}, failure="no")
    assert shapes.Record.from_dict(rec.to_dict()) == rec
    assert shapes.Record.from_dict("garbage") == shapes.Record()


def cache_cluster(**fields: str) -> creation.CacheClusterRequest:
    return creation.cache_cluster_request(
        Params({"CacheClusterId": "Sessions", "Engine": "memcached", **fields}), ACCOUNT
    )


def test_a_memcached_cache_cluster_becomes_a_memcached_topology() -> None:
    req = cache_cluster(NumCacheNodes="4", AZMode="cross-az", CacheNodeType="cache.t4g.small")
    t = req.topology
    assert (req.name, t["engine"], t["nodes"], t["node_type"]) == (
        "sessions",
        "memcached",
        4,
        "cache.t4g.small",
    )
    assert t["zones"] == ["us-west-2a", "us-west-2b", "us-west-2c"]
    assert parse_topology(t).memcached is not None  # what `up` will accept
    one = cache_cluster(
        NumCacheNodes="2",
        **{
            "PreferredAvailabilityZones.PreferredAvailabilityZone.1": "z9",
            "PreferredAvailabilityZones.PreferredAvailabilityZone.2": "z9",
        },
    )
    assert one.topology["zones"] == ["z9"]


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"Engine": "redis"}, "InvalidParameterValue"),
        ({"NumCacheNodes": "41"}, "InvalidParameterValue"),
        ({"AZMode": "cross-az"}, "InvalidParameterCombination"),  # one node
        (
            {"NumCacheNodes": "2", "AZMode": "single-az",
             "PreferredAvailabilityZones.PreferredAvailabilityZone.1": "a",
             "PreferredAvailabilityZones.PreferredAvailabilityZone.2": "b"},
            "InvalidParameterCombination",
        ),
        (
            {"NumCacheNodes": "3", "PreferredAvailabilityZones.PreferredAvailabilityZone.1": "a"},
            "InvalidParameterValue",
        ),
        ({"ReplicationGroupId": "shop"}, "InvalidParameterValue"),
        ({"SnapshotArns.SnapshotArn.1": "arn:s3"}, "InvalidParameterValue"),
    ],
)  # fmt: skip
def test_cache_cluster_validation(fields: dict[str, str], code: str) -> None:
    with pytest.raises(ApiError) as err:
        cache_cluster(**fields)
    assert err.value.code == code
    assert "is not a CreateCacheCluster parameter" not in err.value.message


def test_automatic_snapshots_map_onto_the_topologys_backup() -> None:
    req = create(SnapshotRetentionLimit="7", SnapshotWindow="05:00-06:00")
    assert req.topology["backup"] == {"retention": 7, "window": "05:00-06:00"}
    topo = parse_topology(req.topology)
    assert (topo.backup.retention, topo.backup.window) == (7, (300, 360))
    assert "backup" not in create().topology


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"SnapshotRetentionLimit": "36"}, "SnapshotRetentionLimit"),
        ({"SnapshotRetentionLimit": "1", "SnapshotWindow": "5am"}, "SnapshotWindow"),
    ],
)
def test_a_request_whose_topology_would_not_validate_is_refused_at_once(
    fields: dict[str, str], words: str
) -> None:
    with pytest.raises(ApiError) as err:
        create(**fields)
    assert err.value.code == "InvalidParameterValue" and words in err.value.message


def test_describe_shows_the_snapshot_retention_and_window() -> None:
    raw = {"name": "shop", "zones": ["a"], "shards": 1, "replicas_per_shard": 0,
           "backup": {"retention": 3, "window": "01:30-02:00"},
           "ports": {"base": 7101}, "router": {"port": 7100}}  # fmt: skip
    plan = build_plan(
        parse_topology(raw), raw, engine_binary="/bin/true", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7100,
    )  # fmt: skip
    v = shapes.ClusterView("shop", plan, None, "stopped", shapes.Record(), 0.0)
    rg = shapes.replication_group(v, ACCOUNT)
    assert (rg["SnapshotRetentionLimit"], rg["SnapshotWindow"]) == (3, "01:30-02:00")
