"""Requests into topologies, pure: the service's validation of CreateReplicationGroup and
CreateCacheCluster, returning the topology each becomes (what `up` will accept)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cachefleet.api.names import Account, check_node_type, group_id
from cachefleet.api.wire import ApiError, Params
from cachefleet.errors import TopologyError
from cachefleet.topology import (
    MAX_MEMCACHED_NODES,
    MAX_REPLICAS,
    MAX_SHARDS,
    MAX_ZONES,
    parse_topology,
)

#: Parameters accepted and recorded but without effect here (networking and maintenance
#: settings of the real service's hosts).
IGNORED = (
    "CacheSubnetGroupName",
    "PreferredMaintenanceWindow",
    "AutoMinorVersionUpgrade",
    "NetworkType",
    "IpDiscovery",
    "CacheParameterGroupName",
    "EngineVersion",
)
#: Parameters that need a capability cachefleet does not have yet: refused, naming it.
NEEDS = {
    "AuthToken": "AUTH tokens (security)",
    "TransitEncryptionEnabled": "TLS (security)",
    "TransitEncryptionMode": "TLS (security)",
    "AtRestEncryptionEnabled": "encryption at rest",
    "KmsKeyId": "encryption at rest",
    "UserGroupIds": "user groups (security)",
    "SnapshotArns": "snapshots in S3",
    "ServerlessCacheSnapshotName": "snapshots",
    "GlobalReplicationGroupId": "global datastores",
    "PrimaryClusterId": "adopting existing cache clusters",
    "DataTieringEnabled": "data tiering",
    "NotificationTopicArn": "notifications",
    "LogDeliveryConfigurations": "log delivery",
}
_AZ = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclass(frozen=True)
class CreateRequest:
    """A validated CreateReplicationGroup: the topology to bring up and what only the API
    records (description, the node type as asked, flags, tags)."""

    name: str
    description: str
    topology: dict[str, Any]
    node_type: str
    cluster_enabled: bool
    automatic_failover: bool
    multi_az: bool
    tags: dict[str, str] = field(default_factory=dict)
    snapshot: str | None = None  # seed the new group from this snapshot (restore)


def tags_of(params: Params) -> dict[str, str]:
    tags: dict[str, str] = {}
    for tag in params.structs("Tags", "Tag"):
        key = tag.fields.get("Key")
        if not key:
            raise ApiError("InvalidParameterValue", "Tags: every tag needs a Key")
        tags[key] = tag.fields.get("Value", "")
    return tags


def refuse_missing_capabilities(params: Params) -> None:
    """A parameter that needs a capability cachefleet lacks is refused by name (an explicit
    false is fine); never silently ignored."""
    for key, capability in NEEDS.items():
        present = key in params.fields or any(k.startswith(key + ".") for k in params.fields)
        if present and params.fields.get(key, "").lower() not in ("false", "0"):
            raise ApiError(
                "InvalidParameterValue",
                f"{key} is not supported yet: it needs {capability}, which cachefleet does not "
                "offer yet",
            )
        params.read.add(key)


def checked(topology: dict[str, Any]) -> None:
    """The topology `up` will get must validate now: a request is refused before anything
    is created, with the topology's own message."""
    try:
        parse_topology(topology, "request")
    except TopologyError as exc:
        field = {"backup.window": "SnapshotWindow", "backup.retention": "SnapshotRetentionLimit"}
        name = field.get(exc.field, exc.field)
        raise ApiError("InvalidParameterValue", f"{name}: {exc.message}") from None


def _combination(message: str) -> ApiError:
    return ApiError("InvalidParameterCombination", message)


def create_request(params: Params, account: Account) -> CreateRequest:
    name = group_id(params.required("ReplicationGroupId"))
    description = params.required("ReplicationGroupDescription")
    engine = (params.string("Engine") or "redis").lower()
    if engine not in ("redis", "valkey"):
        raise ApiError(
            "InvalidParameterValue",
            f"Engine: {engine!r} is not a replication group engine (redis, valkey); "
            "memcached clusters are made with CreateCacheCluster",
        )
    node_type = check_node_type(params.string("CacheNodeType") or "cache.t4g.micro")
    refuse_missing_capabilities(params)
    for key in IGNORED:
        params.string(key)
    params.strings("SecurityGroupIds", "SecurityGroupId")
    params.strings("CacheSecurityGroupNames", "CacheSecurityGroupName")

    num_groups = params.integer("NumNodeGroups", lo=1, hi=MAX_SHARDS)
    replicas = params.integer("ReplicasPerNodeGroup", lo=0, hi=MAX_REPLICAS)
    num_clusters = params.integer("NumCacheClusters", lo=1, hi=1 + MAX_REPLICAS)
    failover = params.boolean("AutomaticFailoverEnabled") or False
    multi_az = params.boolean("MultiAZEnabled") or False
    mode = params.string("ClusterMode")
    if mode is not None and mode not in ("enabled", "disabled", "compatible"):
        raise ApiError(
            "InvalidParameterValue",
            f"ClusterMode: {mode!r} is not one of enabled, disabled, compatible",
        )
    azs = params.strings("PreferredCacheClusterAZs", "AvailabilityZone")
    groups = params.structs("NodeGroupConfiguration", "NodeGroupConfiguration")
    port = params.integer("Port", lo=1024, hi=65535)
    snapshot = params.string("SnapshotName")
    retention = params.integer("SnapshotRetentionLimit", lo=0, hi=35)
    window = params.string("SnapshotWindow")
    tags = tags_of(params)
    unread = params.unread()
    if unread:
        raise ApiError(
            "InvalidParameterValue", f"{unread[0]} is not a CreateReplicationGroup parameter"
        )

    if num_clusters is not None and (num_groups not in (None, 1) or replicas is not None):
        raise _combination(
            "NumCacheClusters is for a single node group; use NumNodeGroups and "
            "ReplicasPerNodeGroup for several"
        )
    if groups and num_groups is not None and len(groups) != num_groups:
        raise ApiError(
            "InvalidParameterValue",
            f"NodeGroupConfiguration has {len(groups)} entries but NumNodeGroups is {num_groups}",
        )
    shards = num_groups or len(groups) or 1
    cluster_enabled = mode == "enabled" or shards > 1 or num_groups is not None
    if cluster_enabled and mode == "disabled":
        raise _combination("ClusterMode disabled allows one node group only")
    zones: list[str] = []
    group_replicas: set[int] = set()
    for i, g in enumerate(groups, 1):
        if g.fields.get("Slots"):
            raise ApiError(
                "InvalidParameterValue",
                f"NodeGroupConfiguration {i}: Slots are not supported yet; slots are split "
                "evenly over the node groups",
            )
        count = g.integer("ReplicaCount", lo=0, hi=MAX_REPLICAS)
        replica_azs = g.strings("ReplicaAvailabilityZones", "AvailabilityZone")
        if count is None and replica_azs:
            count = len(replica_azs)
        if count is not None:
            group_replicas.add(count)
        zones += [z for z in (g.string("PrimaryAvailabilityZone"), *replica_azs) if z]
    if len(group_replicas) > 1:
        raise ApiError(
            "InvalidParameterValue",
            "NodeGroupConfiguration: every node group must have the same ReplicaCount here",
        )
    if num_clusters is not None:
        per_shard = num_clusters - 1
    elif group_replicas:
        per_shard = group_replicas.pop()
        if replicas is not None and replicas != per_shard:
            raise _combination(
                f"ReplicasPerNodeGroup {replicas} differs from NodeGroupConfiguration's "
                f"ReplicaCount {per_shard}"
            )
    else:
        per_shard = replicas or 0
    if azs:
        if num_clusters is not None and len(azs) != num_clusters:
            raise ApiError(
                "InvalidParameterValue",
                f"PreferredCacheClusterAZs names {len(azs)} zones for {num_clusters} cache "
                "clusters: give one per cluster",
            )
        zones += azs
    if cluster_enabled and not failover:
        raise _combination("Cluster mode enabled replication groups need AutomaticFailoverEnabled")
    if failover and not cluster_enabled and per_shard < 1:
        raise _combination(
            "AutomaticFailoverEnabled needs at least one read replica (NumCacheClusters >= 2)"
        )
    if multi_az and not failover:
        raise _combination("MultiAZEnabled needs AutomaticFailoverEnabled")

    distinct = list(dict.fromkeys(zones))
    for z in distinct:
        if not _AZ.fullmatch(z):
            raise ApiError("InvalidParameterValue", f"AvailabilityZone {z!r} is not a zone name")
    if not distinct:
        distinct = [f"{account.region}{c}" for c in "abc"[: min(3, 1 + per_shard)]]
    if len(distinct) > MAX_ZONES:
        raise ApiError(
            "InvalidParameterValue",
            f"{len(distinct)} zones named; at most {MAX_ZONES} are supported",
        )
    topology: dict[str, Any] = {
        "name": name,
        "engine": engine,
        "zones": distinct,
        "shards": shards,
        "replicas_per_shard": per_shard,
        "node_type": node_type,
        "ports": {"base": "auto"},
        "router": {"port": port if port is not None else "auto"},
        "bus": {"url": "embedded"},
    }
    if retention or window:
        topology["backup"] = {"retention": retention or 0}
        if window:
            topology["backup"]["window"] = window
    checked(topology)
    return CreateRequest(
        name=name,
        description=description,
        topology=topology,
        node_type=node_type,
        cluster_enabled=cluster_enabled,
        automatic_failover=failover,
        multi_az=multi_az,
        tags=tags,
        snapshot=snapshot,
    )


#: A memcached cluster's node count, as the service allows it.
MAX_CACHE_NODES = min(40, MAX_MEMCACHED_NODES)


@dataclass(frozen=True)
class CacheClusterRequest:
    """A validated CreateCacheCluster (memcached): the topology and the API's record."""

    name: str
    topology: dict[str, Any]
    node_type: str
    tags: dict[str, str] = field(default_factory=dict)


def cache_cluster_request(params: Params, account: Account) -> CacheClusterRequest:
    name = group_id(params.required("CacheClusterId"), "CacheClusterId")
    if params.string("ReplicationGroupId") is not None:
        raise ApiError(
            "InvalidParameterValue",
            "ReplicationGroupId: adding a node to a replication group is not supported yet "
            "(it needs online replica scaling)",
        )
    engine = (params.string("Engine") or "").lower()
    if engine != "memcached":
        raise ApiError(
            "InvalidParameterValue",
            f"Engine: {engine or 'redis'!r}: cache clusters outside a replication group are "
            "memcached clusters here; make Redis or Valkey clusters with "
            "CreateReplicationGroup",
        )
    node_type = check_node_type(params.string("CacheNodeType") or "cache.t4g.micro")
    nodes = params.integer("NumCacheNodes", lo=1, hi=MAX_CACHE_NODES) or 1
    mode = params.string("AZMode")
    if mode is not None and mode not in ("single-az", "cross-az"):
        raise ApiError("InvalidParameterValue", f"AZMode: {mode!r} is not single-az or cross-az")
    one = params.string("PreferredAvailabilityZone")
    many = params.strings("PreferredAvailabilityZones", "PreferredAvailabilityZone")
    refuse_missing_capabilities(params)
    for key in (*IGNORED, "OutpostMode", "PreferredOutpostArn"):
        params.string(key)
    params.strings("SecurityGroupIds", "SecurityGroupId")
    params.strings("CacheSecurityGroupNames", "CacheSecurityGroupName")
    params.strings("PreferredOutpostArns", "PreferredOutpostArn")
    port = params.integer("Port", lo=1024, hi=65535)
    tags = tags_of(params)
    unread = params.unread()
    if unread:
        raise ApiError(
            "InvalidParameterValue", f"{unread[0]} is not a CreateCacheCluster parameter"
        )
    if one is not None and many:
        raise _combination("Give PreferredAvailabilityZone or PreferredAvailabilityZones")
    if many and len(many) != nodes:
        raise ApiError(
            "InvalidParameterValue",
            f"PreferredAvailabilityZones names {len(many)} zones for {nodes} nodes: give one "
            "per node",
        )
    zones = list(dict.fromkeys(many or ([one] if one else [])))
    if mode == "single-az" and len(zones) > 1:
        raise _combination("AZMode single-az allows one availability zone")
    if mode == "cross-az" and nodes < 2:
        raise _combination("AZMode cross-az needs at least two nodes")
    if not zones:
        count = min(3, nodes) if mode == "cross-az" else 1
        zones = [f"{account.region}{c}" for c in "abc"[:count]]
    for z in zones:
        if not _AZ.fullmatch(z):
            raise ApiError("InvalidParameterValue", f"AvailabilityZone {z!r} is not a zone name")
    if len(zones) > MAX_ZONES:
        raise ApiError(
            "InvalidParameterValue", f"{len(zones)} zones named; at most {MAX_ZONES} are supported"
        )
    topology: dict[str, Any] = {
        "name": name,
        "engine": "memcached",
        "zones": zones,
        "nodes": nodes,
        "node_type": node_type,
        "ports": {"base": "auto"},
        "router": {"port": port if port is not None else "auto"},
        "bus": {"url": "embedded"},
    }
    checked(topology)
    return CacheClusterRequest(name=name, topology=topology, node_type=node_type, tags=tags)
