"""The modify actions' validation and the topologies they become, without sockets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cachefleet.api import modification, shapes
from cachefleet.api.wire import ApiError, Params
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.plan import build_plan
from cachefleet.reshape import new_shard_zones
from cachefleet.topology import parse_topology

VERSIONS = {"redis": "7.0.15", "valkey": "8.1.8", "memcached": "1.6.18"}


def view(
    engine: str = "valkey",
    replicas: int = 1,
    cluster_enabled: bool = True,
    multi_az: bool = False,
    status: str = "available",
) -> shapes.ClusterView:
    """A group of 2 shards in zones az-a, az-b, az-c, member 0 of each shard its primary."""
    raw = {"name": "shop", "engine": engine, "zones": ["az-a", "az-b", "az-c"], "shards": 2,
           "replicas_per_shard": replicas, "node_type": "cache.t4g.small",
           "router": {"port": 7100}, "ports": {"base": 7101}}  # fmt: skip
    plan = build_plan(parse_topology(raw), raw, engine_binary="/bin/true", node_ports=None,
                      bus=("127.0.0.1", 1883), router_port=7100)  # fmt: skip
    shards = tuple(
        LayoutShard(
            id=s,
            slots=(plan.slot_ranges[s - 1],),
            nodes=tuple(
                LayoutNode(
                    name=n.name,
                    id=f"{n.name}-id",
                    shard=s,
                    zone=n.zone,
                    host=n.host,
                    port=n.port,
                    bus_port=n.bus_port,
                    role="primary" if n.member == 0 else "replica",
                )
                for n in plan.shard_nodes(s)
            ),
        )
        for s in (1, 2)
    )
    record = shapes.Record(description="the shop", cluster_enabled=cluster_enabled,
                           automatic_failover=True, multi_az=multi_az)  # fmt: skip
    layout = Layout(cluster="shop", epoch=3, shards=shards)
    return shapes.ClusterView("shop", plan, layout, status, record, 0.0, VERSIONS[engine])


def params(**fields: str) -> Params:
    return Params({"ReplicationGroupId": "shop", **fields})


def refused(call: Any, code: str, *words: str) -> str:
    with pytest.raises(ApiError) as err:
        call()
    assert err.value.code == code, err.value.message
    for w in words:
        assert w in err.value.message
    return err.value.message


# --- ModifyReplicationGroup --------------------------------------------------------------


def modify(v: shapes.ClusterView | None = None, /, **fields: str) -> modification.Change:
    return modification.modify_group(params(**fields), v or view(), VERSIONS)


def test_a_new_node_type_becomes_the_topologys_and_keeps_everything_else() -> None:
    v = view()
    change = modify(v, CacheNodeType="cache.m7g.large", ApplyImmediately="true")
    assert change.topology == {**v.plan.raw_topology, "node_type": "cache.m7g.large"}  # type: ignore[union-attr]
    assert change.what == ("CacheNodeType",) and change.description is None


def test_the_node_type_it_has_is_no_modification() -> None:
    refused(lambda: modify(CacheNodeType="cache.t4g.small"), "InvalidParameterCombination",
            "No modifications")  # fmt: skip
    refused(lambda: modify(CacheNodeType="cache.x9.huge"), "InvalidParameterValue",
            "CacheNodeType", "cache.t4g.small")  # fmt: skip
    refused(lambda: modify(ApplyImmediately="true"), "InvalidParameterCombination")


def test_a_description_alone_changes_only_the_record() -> None:
    change = modify(ReplicationGroupDescription="the new shop")
    assert change.topology is None and change.description == "the new shop"


def test_snapshot_retention_and_window_map_onto_the_backup_section() -> None:
    change = modify(SnapshotRetentionLimit="5", SnapshotWindow="04:30-05:30",
                    ReplicationGroupDescription="nightly")  # fmt: skip
    assert change.topology is not None
    assert change.topology["backup"] == {"retention": 5, "window": "04:30-05:30"}
    assert parse_topology(change.topology).backup.window == (270, 330)
    assert change.description == "nightly"
    refused(lambda: modify(SnapshotRetentionLimit="2", SnapshotWindow="25:00-26:00"),
            "InvalidParameterValue", "SnapshotWindow")  # fmt: skip
    refused(lambda: modify(SnapshotRetentionLimit="36"), "InvalidParameterValue",
            "SnapshotRetentionLimit")  # fmt: skip


def test_redis_upgrades_to_the_installed_valkey() -> None:
    change = modify(view(engine="redis"), Engine="valkey", EngineVersion="8.1")
    assert change.topology is not None and change.topology["engine"] == "valkey"
    assert change.what == ("Engine",)


@pytest.mark.parametrize(
    ("engine", "fields", "code", "words"),
    [
        ("valkey", {"Engine": "redis"}, "InvalidParameterCombination", "downgrade"),
        ("valkey", {"EngineVersion": "7.2"}, "InvalidParameterCombination", "older"),
        ("valkey", {"EngineVersion": "9.0"}, "InvalidParameterValue", "8.1.8"),
        ("redis", {"EngineVersion": "7.2"}, "InvalidParameterValue", "7.0.15"),
        ("valkey", {"EngineVersion": "eight"}, "InvalidParameterValue", "EngineVersion"),
        ("valkey", {"Engine": "memcached"}, "InvalidParameterValue", "Engine"),
    ],
)
def test_engine_versions_that_are_not_an_installed_upgrade_are_refused(
    engine: str, fields: dict[str, str], code: str, words: str
) -> None:
    refused(lambda: modify(view(engine=engine), **fields), code, words)


def test_the_installed_version_is_no_modification() -> None:
    refused(lambda: modify(EngineVersion="8.1.8"), "InvalidParameterCombination", "No modif")


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"AuthToken": "secret-token-123456"}, "InvalidParameterValue", "cachefleet auth"),
        ({"TransitEncryptionEnabled": "true"}, "InvalidParameterValue", "TLS"),
        ({"PrimaryClusterId": "shop-0001-002"}, "InvalidParameterValue", "TestFailover"),
        ({"ClusterMode": "disabled"}, "InvalidParameterValue", "cluster mode"),
        ({"CacheParameterGroupName": "mine"}, "CacheParameterGroupNotFound", "mine"),
        ({"AutomaticFailoverEnabled": "false"}, "InvalidParameterCombination", "Cluster mode"),
        ({"MultiAZEnabled": "true"}, "InvalidParameterValue", "MultiAZEnabled"),
        ({"Bogus": "1"}, "InvalidParameterValue", "Bogus"),
    ],
)
def test_what_modify_does_not_change_here_is_refused_by_name(
    fields: dict[str, str], code: str, words: str
) -> None:
    message = refused(lambda: modify(CacheNodeType="cache.m7g.large", **fields), code, words)
    assert "secret-token" not in message


def test_ignored_and_default_settings_pass() -> None:
    change = modify(CacheNodeType="cache.m7g.large", CacheParameterGroupName="default.valkey8",
                    PreferredMaintenanceWindow="sun:05:00-sun:06:00",
                    AutomaticFailoverEnabled="true",
                    **{"SecurityGroupIds.SecurityGroupId.1": "sg-1"})  # fmt: skip
    assert change.what == ("CacheNodeType",)


def test_a_group_without_a_plan_is_not_available() -> None:
    v = replace(view(), plan=None, status="creating")
    refused(lambda: modify(v, CacheNodeType="cache.m7g.large"), "InvalidReplicationGroupState")


# --- ModifyReplicationGroupShardConfiguration --------------------------------------------


def shards(v: shapes.ClusterView | None = None, /, **fields: str) -> modification.Change:
    return modification.modify_shards(params(ApplyImmediately="true", **fields), v or view())


def test_node_groups_are_added() -> None:
    change = shards(NodeGroupCount="4")
    assert change.topology is not None and change.topology["shards"] == 4
    assert change.what == ("NodeGroupCount",)


def test_node_groups_leave_from_the_highest_id() -> None:
    three = view()
    raw = {**three.plan.raw_topology, "shards": 3}  # type: ignore[union-attr]
    plan = build_plan(parse_topology(raw), raw, engine_binary="/bin/true", node_ports=None,
                      bus=("127.0.0.1", 1883), router_port=7100)  # fmt: skip
    three = replace(three, plan=plan)
    for fields in ({"NodeGroupsToRemove.NodeGroupToRemove.1": "0003"},
                   {"NodeGroupsToRetain.NodeGroupToRetain.1": "0001",
                    "NodeGroupsToRetain.NodeGroupToRetain.2": "2"}):  # fmt: skip
        change = shards(three, NodeGroupCount="2", **fields)
        assert change.topology is not None and change.topology["shards"] == 2
    refused(lambda: shards(three, NodeGroupCount="2",
                           **{"NodeGroupsToRemove.NodeGroupToRemove.1": "0001"}),
            "InvalidParameterValue", "remove 0003")  # fmt: skip
    refused(lambda: shards(three, NodeGroupCount="1",
                           **{"NodeGroupsToRetain.NodeGroupToRetain.1": "0002"}),
            "InvalidParameterValue", "retain 0001")  # fmt: skip
    refused(lambda: shards(three, NodeGroupCount="2"), "InvalidParameterCombination",
            "NodeGroupsToRemove")  # fmt: skip
    refused(lambda: shards(three, NodeGroupCount="2",
                           **{"NodeGroupsToRemove.NodeGroupToRemove.1": "0009"}),
            "NodeGroupNotFoundFault", "0009")  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"ApplyImmediately": "false"}, "InvalidParameterValue", "ApplyImmediately"),
        ({"NodeGroupCount": "2"}, "InvalidParameterValue", "2 node groups already"),
        ({"NodeGroupCount": "0"}, "InvalidParameterValue", "NodeGroupCount"),
        ({"NodeGroupsToRemove.NodeGroupToRemove.1": "0002"}, "InvalidParameterCombination",
         "reducing"),
        ({"NodeGroupsToRemove.NodeGroupToRemove.1": "0002",
          "NodeGroupsToRetain.NodeGroupToRetain.1": "0001", "NodeGroupCount": "1"},
         "InvalidParameterCombination", "not both"),
    ],
)  # fmt: skip
def test_the_services_resharding_rules(fields: dict[str, str], code: str, words: str) -> None:
    base = {"NodeGroupCount": "3", "ApplyImmediately": "true"}
    call = lambda: modification.modify_shards(params(**{**base, **fields}), view())  # noqa: E731
    refused(call, code, words)


def test_resharding_needs_cluster_mode_and_apply_immediately() -> None:
    refused(lambda: shards(view(cluster_enabled=False), NodeGroupCount="3"),
            "InvalidParameterCombination", "cluster mode")  # fmt: skip
    no_flag = Params({"ReplicationGroupId": "shop", "NodeGroupCount": "3"})
    refused(lambda: modification.modify_shards(no_flag, view()), "InvalidParameterValue",
            "ApplyImmediately=true")  # fmt: skip


def resharding(zones: dict[int, list[str]]) -> dict[str, str]:
    fields = {}
    for i, (group, names) in enumerate(zones.items(), 1):
        head = f"ReshardingConfiguration.ReshardingConfiguration.{i}"
        fields[f"{head}.NodeGroupId"] = f"{group:04d}"
        for j, z in enumerate(names, 1):
            fields[f"{head}.PreferredAvailabilityZones.AvailabilityZone.{j}"] = z
    return fields


def test_resharding_configuration_is_taken_where_it_names_the_placement() -> None:
    v = view()
    kept = {s: [n.zone for n in v.plan.shard_nodes(s)] for s in (1, 2)}  # type: ignore[union-attr]
    raw = {**v.plan.raw_topology, "shards": 3}  # type: ignore[union-attr]
    third = new_shard_zones(parse_topology(raw), 3)
    assert shards(v, NodeGroupCount="3", **resharding({**kept, 3: third})).topology
    wrong = [z for z in ("az-a", "az-b", "az-c") if z not in third][:1] + third[1:]
    refused(lambda: shards(v, NodeGroupCount="3", **resharding({**kept, 3: wrong})),
            "InvalidParameterValue", "node group 0003", ", ".join(third))  # fmt: skip
    refused(lambda: shards(v, NodeGroupCount="3", **resharding(kept)), "InvalidParameterValue",
            "one per node group")  # fmt: skip


# --- Increase/DecreaseReplicaCount --------------------------------------------------------


def replicas(v: shapes.ClusterView, *, increase: bool, **fields: str) -> modification.Change:
    p = params(ApplyImmediately="true", **fields)
    return modification.change_replicas(p, v, increase=increase)


def configure(counts: dict[int, int], **extra: str) -> dict[str, str]:
    fields = {}
    for i, (group, count) in enumerate(counts.items(), 1):
        fields[f"ReplicaConfiguration.ConfigureShard.{i}.NodeGroupId"] = f"{group:04d}"
        fields[f"ReplicaConfiguration.ConfigureShard.{i}.NewReplicaCount"] = str(count)
        for k, val in extra.items():
            fields[f"ReplicaConfiguration.ConfigureShard.{i}.{k}"] = val
    return fields


def test_increase_replica_count_by_count_or_by_node_group() -> None:
    for fields in ({"NewReplicaCount": "3"}, configure({1: 3, 2: 3})):
        change = replicas(view(), increase=True, **fields)
        assert change.topology is not None and change.topology["replicas_per_shard"] == 3
    refused(lambda: replicas(view(), increase=True, NewReplicaCount="1"), "InvalidParameterValue",
            "not more than")  # fmt: skip
    refused(lambda: replicas(view(), increase=True, NewReplicaCount="6"), "InvalidParameterValue")
    refused(lambda: replicas(view(), increase=True, **configure({1: 2, 2: 3})),
            "InvalidParameterValue", "same replica count")  # fmt: skip
    refused(lambda: replicas(view(), increase=True, **configure({1: 2, 2: 2},
            **{"PreferredAvailabilityZones.PreferredAvailabilityZone.1": "az-a"})),
            "InvalidParameterValue", "PreferredAvailabilityZones")  # fmt: skip
    refused(lambda: replicas(view(), increase=True), "MissingParameter", "NewReplicaCount")
    no_flag = Params({"ReplicationGroupId": "shop", "NewReplicaCount": "2"})
    refused(lambda: modification.change_replicas(no_flag, view(), increase=True),
            "InvalidParameterValue", "ApplyImmediately")  # fmt: skip


def test_decrease_replica_count_and_the_replicas_that_leave() -> None:
    v = view(replicas=2)
    change = replicas(v, increase=False, NewReplicaCount="1")
    assert change.topology is not None and change.topology["replicas_per_shard"] == 1
    # zones a, b, c: each shard's members are in three zones; the newest replica leaves
    leaving = ["shop-0001-003", "shop-0002-003"]
    named = {f"ReplicasToRemove.member.{i}": n for i, n in enumerate(leaving, 1)}
    for fields in ({"NewReplicaCount": "1", **named}, named):
        change = replicas(v, increase=False, **fields)
        assert change.topology is not None and change.topology["replicas_per_shard"] == 1
    other = {"ReplicasToRemove.member.1": "shop-0001-002", "ReplicasToRemove.member.2":
             "shop-0002-002"}  # fmt: skip
    refused(lambda: replicas(v, increase=False, **other), "InvalidParameterValue",
            ", ".join(leaving))  # fmt: skip
    refused(lambda: replicas(v, increase=False, **{"ReplicasToRemove.member.1": "shop-0001-003"}),
            "InvalidParameterValue", "as many")  # fmt: skip
    refused(lambda: replicas(v, increase=False, **{"ReplicasToRemove.member.1": "nope"}),
            "CacheClusterNotFound")  # fmt: skip
    refused(lambda: replicas(v, increase=False, NewReplicaCount="2"), "InvalidParameterValue",
            "not fewer")  # fmt: skip


def test_a_multi_az_group_keeps_a_replica() -> None:
    refused(lambda: replicas(view(multi_az=True), increase=False, NewReplicaCount="0"),
            "InvalidParameterCombination", "MultiAZ")  # fmt: skip
    assert replicas(view(), increase=False, NewReplicaCount="0").topology


def test_a_cluster_mode_disabled_group_counts_its_replicas_in_replicas() -> None:
    raw = {"name": "solo", "zones": ["az-a", "az-b"], "cluster_mode": "disabled",
           "replicas": 1, "ports": {"base": 7101}}  # fmt: skip
    plan = build_plan(parse_topology(raw), raw, engine_binary="/bin/true", node_ports=None,
                      bus=("127.0.0.1", 1883), router_port=7100)  # fmt: skip
    solo = shapes.ClusterView("solo", plan, None, "available", shapes.Record(), 0.0, "8.1.8")
    assert not solo.cluster_enabled
    change = replicas(solo, increase=True, NewReplicaCount="2")
    assert change.topology is not None and change.topology["replicas"] == 2
    assert "replicas_per_shard" not in change.topology
    refused(lambda: shards(solo, NodeGroupCount="2"), "InvalidParameterCombination",
            "cluster mode disabled")  # fmt: skip


def test_describe_shows_the_node_type_of_the_plan_once_it_changed() -> None:
    v = view()  # topology cache.t4g.small
    for asked, shown in [
        (None, "cache.t4g.small"),
        ("cache.t3.small", "cache.t4g.small"),  # the plan names a service type: the plan's
    ]:
        assert replace(v, record=replace(v.record, node_type=asked)).node_type == shown
    raw = {**v.plan.raw_topology, "node_type": "cache.small"}  # type: ignore[union-attr]
    old = replace(v, plan=replace(v.plan, topology=parse_topology(raw)))  # type: ignore[type-var]
    # a group made when the topology took short names only: the name asked, same size
    assert replace(old, record=replace(v.record, node_type="cache.t4g.small")).node_type == (
        "cache.t4g.small"
    )
    raw = {**raw, "node_type": "cache.medium"}  # then changed to a short name of another size
    changed = replace(v, plan=replace(v.plan, topology=parse_topology(raw)))  # type: ignore[type-var]
    assert replace(changed, record=replace(v.record, node_type="cache.t4g.small")).node_type == (
        "cache.medium"
    )
