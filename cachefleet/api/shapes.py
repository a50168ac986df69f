"""Clusters into the service's records, pure.

:func:`replication_group`, :func:`cache_clusters`, :func:`event_record` and
:func:`snapshot_record` render a :class:`ClusterView` (what the state dir says about one
cluster, read by the server) or a snapshot's manifest as the service's structures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cachefleet import nodetypes
from cachefleet.api.names import Account, node_group_id
from cachefleet.api.wire import XmlList, timestamp
from cachefleet.layout import Layout
from cachefleet.plan import Plan
from cachefleet.snapshots import Manifest


@dataclass(frozen=True)
class Record:
    """What the API keeps about a cluster beside its plan (``api.json``): absent for a
    cluster made with the CLI, whose values then come from its topology."""

    description: str = ""
    node_type: str | None = None
    created: float | None = None
    cluster_enabled: bool = True
    automatic_failover: bool | None = None
    multi_az: bool = False
    failure: str | None = None  # why creation failed
    engine: str | None = None  # as asked, until the plan says
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # ARN -> tags

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "node_type": self.node_type,
            "created": self.created,
            "cluster_enabled": self.cluster_enabled,
            "automatic_failover": self.automatic_failover,
            "multi_az": self.multi_az,
            "failure": self.failure,
            "engine": self.engine,
            "tags": self.tags,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        if not isinstance(data, dict):
            return cls()
        tags = data.get("tags")
        return cls(
            description=str(data.get("description") or ""),
            node_type=data.get("node_type") if isinstance(data.get("node_type"), str) else None,
            created=float(data["created"])
            if isinstance(data.get("created"), int | float)
            else None,
            cluster_enabled=bool(data.get("cluster_enabled", True)),
            automatic_failover=data.get("automatic_failover")
            if isinstance(data.get("automatic_failover"), bool)
            else None,
            multi_az=bool(data.get("multi_az", False)),
            failure=data.get("failure") if isinstance(data.get("failure"), str) else None,
            engine=data.get("engine") if isinstance(data.get("engine"), str) else None,
            tags={
                str(k): {str(a): str(b) for a, b in v.items()}
                for k, v in (tags.items() if isinstance(tags, dict) else [])
                if isinstance(v, dict)
            },
        )


@dataclass(frozen=True)
class ClusterView:
    """One cluster as the server read it: its plan (None while a create has not written it),
    last layout, the service status and the API's record."""

    name: str
    plan: Plan | None
    layout: Layout | None
    status: str
    record: Record
    created: float
    engine_version: str = ""

    @property
    def engine(self) -> str:
        return self.plan.topology.engine if self.plan else (self.record.engine or "valkey")

    @property
    def is_memcached(self) -> bool:
        return self.engine == "memcached"

    @property
    def node_type(self) -> str:
        """The plan's node type; the one the API was asked for when the plan names its size
        (groups the API made before topologies took the service's names)."""
        asked = self.record.node_type
        if self.plan is None:
            return asked or "cache.t4g.micro"
        planned = self.plan.topology.node_type
        if asked in nodetypes.NODE_TYPES and nodetypes.size_of(asked) == planned:
            return asked
        return planned

    @property
    def cluster_enabled(self) -> bool:
        """A cluster_mode: disabled topology is a cluster-mode-disabled group; otherwise as
        the API was asked (one node group of NumCacheClusters is shown disabled)."""
        if self.plan is not None and self.plan.topology.standalone:
            return False
        return self.record.cluster_enabled

    @property
    def automatic_failover(self) -> bool:
        if self.record.automatic_failover is not None:
            return self.record.automatic_failover
        t = self.plan.topology if self.plan else None
        return bool(t and t.sentinels.count and t.replicas_per_shard)


def _endpoint(host: str, port: int) -> dict[str, Any]:
    return {"Address": host, "Port": port}


def _members(view: ClusterView) -> list[tuple[int, str, str, str, int, str]]:
    """(shard, name, zone, host, port, role) of every node: the layout's roles when there is
    one, else the plan's (member 0 primary)."""
    if view.layout is not None:
        return [
            (n.shard, n.name, n.zone, n.host, n.port, n.role)
            for s in view.layout.shards
            for n in s.nodes
        ]
    if view.plan is None:
        return []
    return [
        (n.shard, n.name, n.zone, n.host, n.port, "primary" if n.member == 0 else "replica")
        for n in view.plan.nodes
    ]


def node_status(view: ClusterView) -> str:
    return {"create-failed": "incompatible-parameters", "stopped": "stopped"}.get(
        view.status, view.status
    )


def _backup(plan: Plan | None) -> dict[str, Any]:
    """Automatic snapshots: the topology's backup retention and daily window (UTC)."""
    if plan is None:
        return {}
    backup = plan.topology.backup
    out: dict[str, Any] = {"SnapshotRetentionLimit": backup.retention}
    if backup.window is not None:
        a, b = backup.window
        out["SnapshotWindow"] = f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"
    return out


def replication_group(view: ClusterView, account: Account) -> dict[str, Any]:
    members = _members(view)
    groups = []
    shards = sorted({m[0] for m in members})
    for shard in shards:
        nodes = [m for m in members if m[0] == shard]
        primary = next((m for m in nodes if m[5] == "primary"), None)
        slots = ""
        if view.layout is not None:
            slots = ",".join(f"{a}-{b}" for a, b in view.layout.shard(shard).slots)
        elif view.plan is not None:
            a, b = view.plan.slot_ranges[shard - 1]
            slots = f"{a}-{b}"
        groups.append(
            {
                "NodeGroupId": node_group_id(shard),
                "Status": view.status if view.status != "create-failed" else "creating",
                "PrimaryEndpoint": _endpoint(primary[3], primary[4]) if primary else None,
                "Slots": slots,
                "NodeGroupMembers": XmlList(
                    "NodeGroupMember",
                    [
                        {
                            "CacheClusterId": name,
                            "CacheNodeId": "0001",
                            "ReadEndpoint": _endpoint(host, port),
                            "PreferredAvailabilityZone": zone,
                            "CurrentRole": role,
                        }
                        for _, name, zone, host, port, role in nodes
                    ],
                ),
            }
        )
    plan = view.plan
    return {
        "ReplicationGroupId": view.name,
        "Description": view.record.description,
        "Status": view.status,
        "PendingModifiedValues": {},
        "MemberClusters": XmlList("ClusterId", [m[1] for m in members]),
        "NodeGroups": XmlList("NodeGroup", groups),
        "AutomaticFailover": "enabled" if view.automatic_failover else "disabled",
        "MultiAZ": "enabled" if view.record.multi_az else "disabled",
        "ConfigurationEndpoint": _endpoint(plan.router_host, plan.router_port) if plan else None,
        **_backup(plan),
        "ClusterEnabled": view.cluster_enabled,
        "CacheNodeType": view.node_type,
        "AuthTokenEnabled": False,
        "TransitEncryptionEnabled": False,
        "AtRestEncryptionEnabled": False,
        "ARN": account.arn("replicationgroup", view.name),
        "ReplicationGroupCreateTime": timestamp(view.created),
        "ClusterMode": "enabled" if view.cluster_enabled else "disabled",
        "Engine": view.engine,
    }


def cache_clusters(
    view: ClusterView, account: Account, *, show_nodes: bool
) -> list[dict[str, Any]]:
    """The service's cache clusters of one cluster: each member node of a replication group
    (a one-node cache cluster), or a memcached cluster as one cache cluster of N nodes."""
    created = timestamp(view.created)
    status = node_status(view)
    base = {
        "CacheNodeType": view.node_type,
        "Engine": view.engine,
        "EngineVersion": view.engine_version,
        "CacheClusterStatus": status,
    }
    plan = view.plan
    if plan is None and view.is_memcached:  # being created: no nodes yet
        return [
            {
                "CacheClusterId": view.name,
                **base,
                "NumCacheNodes": 0,
                "CacheClusterCreateTime": created,
                "ARN": account.arn("cluster", view.name),
            }
        ]
    if plan is not None and plan.topology.is_memcached:
        nodes = [
            {
                "CacheNodeId": n.node_id,
                "CacheNodeStatus": status,
                "CacheNodeCreateTime": created,
                "Endpoint": _endpoint(n.host, n.port),
                "CustomerAvailabilityZone": n.zone,
            }
            for n in plan.nodes
        ]
        return [
            {
                "CacheClusterId": view.name,
                "ConfigurationEndpoint": _endpoint(plan.router_host, plan.router_port),
                **base,
                "NumCacheNodes": len(plan.nodes),
                "PreferredAvailabilityZone": "Multiple"
                if len(plan.topology.zones) > 1
                else plan.topology.zones[0],
                "CacheClusterCreateTime": created,
                "CacheNodes": XmlList("CacheNode", nodes) if show_nodes else None,
                "ARN": account.arn("cluster", view.name),
            }
        ]
    out = []
    for _, name, zone, host, port, _role in _members(view):
        node = {
            "CacheNodeId": "0001",
            "CacheNodeStatus": status,
            "CacheNodeCreateTime": created,
            "Endpoint": _endpoint(host, port),
            "CustomerAvailabilityZone": zone,
        }
        out.append(
            {
                "CacheClusterId": name,
                **base,
                "NumCacheNodes": 1,
                "PreferredAvailabilityZone": zone,
                "CacheClusterCreateTime": created,
                "CacheNodes": XmlList("CacheNode", [node]) if show_nodes else None,
                "ReplicationGroupId": view.name,
                "ARN": account.arn("cluster", name),
            }
        )
    return out


SOURCE_TYPES = (
    "cache-cluster",
    "cache-parameter-group",
    "cache-security-group",
    "cache-subnet-group",
    "replication-group",
    "serverless-cache",
    "serverless-cache-snapshot",
    "user",
    "user-group",
)
_HIDDEN = ("v", "ts", "type", "cluster")


def event_record(cluster: str, event: dict[str, Any]) -> tuple[float, str, str, str]:
    """(time, source type, source id, message) of one logged event: events about one node
    are the node's cache cluster's, the rest the replication group's."""
    ts = event.get("ts")
    when = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else 0.0
    node = event.get("node")
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in _HIDDEN)
    message = f"{event.get('type', 'event')}" + (f": {rest}" if rest else "")
    if isinstance(node, str) and node:
        return when, "cache-cluster", node, message
    return when, "replication-group", cluster, message


def event_xml(record: tuple[float, str, str, str]) -> dict[str, Any]:
    when, kind, source, message = record
    return {
        "SourceIdentifier": source,
        "SourceType": kind,
        "Message": message,
        "Date": timestamp(when),
    }


def engine_version(text: str) -> str | None:
    """The version in a server's ``--version`` line (``… v=8.1.1 …``)."""
    m = re.search(r"\bv=(\d+\.\d+\.\d+)", text) or re.search(r"\b(\d+\.\d+\.\d+)\b", text)
    return m.group(1) if m else None


def engine_version_record(engine: str, version: str) -> dict[str, Any]:
    major = version.split(".")[0]
    return {
        "Engine": engine,
        "EngineVersion": version,
        "CacheParameterGroupFamily": f"{engine}{major}",
        "CacheEngineDescription": {
            "valkey": "Valkey",
            "redis": "Redis",
            "memcached": "Memcached",
        }.get(engine, engine),
        "CacheEngineVersionDescription": f"{engine} {version} (the installed server)",
    }


def snapshot_record(
    manifest: Manifest, status: str, account: Account, *, node_type: str, description: str
) -> dict[str, Any]:
    """A snapshot as the service describes one: one NodeSnapshot per node group."""
    try:
        created = timestamp(datetime.fromisoformat(manifest.created).timestamp())
    except ValueError:
        created = None
    return {
        "SnapshotName": manifest.id,
        "ReplicationGroupId": manifest.cluster,
        "ReplicationGroupDescription": description,
        "SnapshotStatus": status,
        "SnapshotSource": "automated" if manifest.kind == "automated" else "manual",
        "CacheNodeType": node_type,
        "Engine": manifest.engine,
        "EngineVersion": manifest.engine_version,
        "NumNodeGroups": len(manifest.shards),
        "NodeSnapshots": XmlList(
            "NodeSnapshot",
            [
                {
                    "CacheClusterId": s.source,
                    "NodeGroupId": node_group_id(s.shard),
                    "CacheNodeId": "0001",
                    "CacheSize": f"{s.bytes} bytes",
                    "SnapshotCreateTime": created,
                }
                for s in manifest.shards
            ],
        ),
        "ARN": account.arn("snapshot", manifest.id),
    }


def pending_snapshot(
    snapshot_id: str, cluster: str, status: str, account: Account, *, node_type: str
) -> dict[str, Any]:
    """A snapshot still being taken: no manifest yet, only what the request said."""
    return {
        "SnapshotName": snapshot_id,
        "ReplicationGroupId": cluster,
        "SnapshotStatus": status,
        "SnapshotSource": "manual",
        "CacheNodeType": node_type,
        "ARN": account.arn("snapshot", snapshot_id),
    }
