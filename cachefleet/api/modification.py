"""The modify actions, pure: ModifyReplicationGroup, ModifyReplicationGroupShardConfiguration,
IncreaseReplicaCount and DecreaseReplicaCount checked as the service checks them and turned
into the group's topology with the change, which `cachefleet apply` then carries out.

Each function takes the request and the group as the server read it (a
:class:`~cachefleet.api.shapes.ClusterView` with its plan) and returns a :class:`Change`:
the topology to apply (the one in plan.json, changed) and what only the API records.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachefleet.api.creation import checked
from cachefleet.api.names import check_node_type, node_group_id, shard_of
from cachefleet.api.shapes import ClusterView
from cachefleet.api.wire import ApiError, Params
from cachefleet.errors import InvalidInput
from cachefleet.plan import Plan
from cachefleet.reshape import check_changeable, new_shard_zones, reshape
from cachefleet.topology import MAX_REPLICAS, MAX_SHARDS, parse_topology

#: ModifyReplicationGroup parameters without effect here (maintenance and networking of the
#: service's hosts), read and left alone as CreateReplicationGroup leaves them.
IGNORED = (
    "PreferredMaintenanceWindow",
    "AutoMinorVersionUpgrade",
    "NotificationTopicStatus",
    "IpDiscovery",
)
#: Parameters refused by name, with what to do instead: what they change is not changed
#: through ModifyReplicationGroup here.
REFUSED = {
    "AuthToken": "the AUTH token is rotated with `cachefleet auth`",
    "AuthTokenUpdateStrategy": "the AUTH token is rotated with `cachefleet auth`",
    "TransitEncryptionEnabled": "TLS is fixed for the life of a cluster",
    "TransitEncryptionMode": "TLS is fixed for the life of a cluster",
    "UserGroupIdsToAdd": "user groups are not supported",
    "UserGroupIdsToRemove": "user groups are not supported",
    "RemoveUserGroups": "user groups are not supported",
    "NotificationTopicArn": "notifications are not supported",
    "LogDeliveryConfigurations": "log delivery is not supported (see `cachefleet logs`)",
    "PrimaryClusterId": "the primary is chosen by failover (TestFailover moves it)",
    "NodeGroupId": "the primary is chosen by failover (TestFailover moves it)",
    "SnapshottingClusterId": "the snapshot node is the topology's backup.source",
    "ClusterMode": "the cluster mode is fixed for the life of a cluster",
    "Durability": "durability is the topology's durability section",
}
#: Topology fields, as the API names them in errors.
FIELDS = {
    "node_type": "CacheNodeType",
    "engine": "Engine",
    "engine_binary": "EngineVersion",
    "backup.window": "SnapshotWindow",
    "backup.retention": "SnapshotRetentionLimit",
    "shards": "NodeGroupCount",
    "replicas_per_shard": "NewReplicaCount",
    "replicas": "NewReplicaCount",
}
_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


@dataclass(frozen=True)
class Change:
    """What a modify changes: `topology` for apply (None when only the API's record
    changes), a new description, and what changes (for the log and the events)."""

    topology: dict[str, Any] | None
    description: str | None = None
    what: tuple[str, ...] = ()


def _invalid(message: str) -> ApiError:
    return ApiError("InvalidParameterValue", message)


def _combination(message: str) -> ApiError:
    return ApiError("InvalidParameterCombination", message)


def _plan(params: Params, view: ClusterView) -> Plan:
    params.required("ReplicationGroupId")  # the server found `view` by it
    if view.plan is None:
        raise ApiError(
            "InvalidReplicationGroupState",
            f"Replication group {view.name} is {view.status}, not available.",
        )
    return view.plan


def _no_unread(params: Params, action: str) -> None:
    unread = params.unread()
    if unread:
        raise _invalid(f"{unread[0]} is not a {action} parameter")


def _finish(plan: Plan, raw: dict[str, Any], what: list[str]) -> dict[str, Any]:
    """The changed topology, validated as `up` and `apply` will validate it."""
    checked(raw)
    new = parse_topology(raw, "request")
    try:
        check_changeable(plan.topology, new)
    except InvalidInput as exc:
        name = FIELDS.get(exc.field, exc.field)
        raise _invalid(f"{name}: {exc.message}") from None
    if new == parse_topology(plan.raw_topology, "request") and not what:
        raise _combination("No modifications were requested.")
    return raw


def _stored(plan: Plan) -> dict[str, Any]:
    """The topology plan.json holds, to change. A relative backup key file was relative to
    the file it came from: the resolved path is kept, as the copy is written elsewhere."""
    raw = copy.deepcopy(plan.raw_topology)
    key_file = plan.topology.backup.encryption_key_file
    if isinstance(raw.get("backup"), dict) and key_file and key_file.startswith("/"):
        raw["backup"]["encryption_key_file"] = key_file
    return raw


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _engine_change(
    params: Params, view: ClusterView, raw: dict[str, Any], versions: Mapping[str, str]
) -> list[str]:
    """Engine and EngineVersion: an upgrade onto the server installed here (redis -> valkey,
    or the version of the installed binary); a downgrade or a version not installed is
    refused, naming what is installed."""
    engine = params.string("Engine")
    wanted = params.string("EngineVersion")
    current = view.engine
    target = engine.lower() if engine is not None else current
    if target not in ("redis", "valkey"):
        raise _invalid(f"Engine: {engine!r} is not one of redis, valkey")
    if current == "valkey" and target == "redis":
        raise _combination("Engine: valkey -> redis is a downgrade, which is not supported")
    installed = versions.get(target)
    if target != current and installed is None:
        raise _invalid(f"Engine: no {target} server is installed here")
    what = []
    if target != current:
        raw["engine"] = target
        what.append("Engine")
    if wanted is not None:
        if not _VERSION.fullmatch(wanted):
            raise _invalid(f"EngineVersion: {wanted!r} is not a version like 8.1")
        running = versions.get(current)
        if installed is None or _version(installed)[: len(_version(wanted))] != _version(wanted):
            if target == current and running and _version(wanted) < _version(running):
                raise _combination(
                    f"EngineVersion: {wanted} is older than the running {running}: "
                    "downgrades are not supported"
                )
            raise _invalid(
                f"EngineVersion: {target} {wanted} is not available here; the installed "
                f"{target} is {installed or 'none'} (see DescribeCacheEngineVersions)"
            )
        if raw.get("engine_binary"):
            raise _invalid(
                "EngineVersion: this group's topology names its engine_binary; change it "
                "with `cachefleet apply`"
            )
    return what


def modify_group(params: Params, view: ClusterView, versions: Mapping[str, str]) -> Change:
    """ModifyReplicationGroup. Changes are made at once (there is no maintenance window
    here), whatever ApplyImmediately says."""
    plan = _plan(params, view)
    for key, why in REFUSED.items():
        present = key in params.fields or any(k.startswith(key + ".") for k in params.fields)
        if present and params.fields.get(key, "").lower() not in ("false", "0"):
            raise _invalid(f"{key} cannot be modified here: {why}")
        params.read.add(key)
    for key in IGNORED:
        params.string(key)
    params.strings("SecurityGroupIds", "SecurityGroupId")
    params.strings("CacheSecurityGroupNames", "CacheSecurityGroupName")
    params.boolean("ApplyImmediately")
    description = params.string("ReplicationGroupDescription")
    node_type = params.string("CacheNodeType")
    retention = params.integer("SnapshotRetentionLimit", lo=0, hi=35)
    window = params.string("SnapshotWindow")
    failover = params.boolean("AutomaticFailoverEnabled")
    multi_az = params.boolean("MultiAZEnabled")
    parameter_group = params.string("CacheParameterGroupName")
    raw = _stored(plan)
    what = _engine_change(params, view, raw, versions)
    _no_unread(params, "ModifyReplicationGroup")

    if node_type is not None and check_node_type(node_type) != view.node_type:
        raw["node_type"] = node_type
        what.append("CacheNodeType")
    if retention is not None or window is not None:
        backup = dict(raw.get("backup") or {})
        if retention is not None:
            backup["retention"] = retention
        if window is not None:
            backup["window"] = window
        raw["backup"] = backup
        checked(raw)
        if parse_topology(raw).backup != plan.topology.backup:
            what.append("SnapshotRetentionLimit" if retention is not None else "SnapshotWindow")
    if failover is not None and failover != view.automatic_failover:
        if view.cluster_enabled and not failover:
            raise _combination(
                "Cluster mode enabled replication groups need AutomaticFailoverEnabled"
            )
        raise _invalid(
            "AutomaticFailoverEnabled: cannot change here (the group's sentinels are fixed "
            "at creation)"
        )
    if multi_az is not None and multi_az != view.record.multi_az:
        raise _invalid("MultiAZEnabled: cannot change here (the group's zones are fixed)")
    if parameter_group is not None and not parameter_group.startswith("default."):
        raise ApiError(
            "CacheParameterGroupNotFound",
            f"CacheParameterGroup {parameter_group} not found. Only the default parameter "
            "groups exist here; engine settings are the topology's parameters",
        )
    changed = description is not None and description != view.record.description
    if not what:
        if not changed:
            raise _combination("No modifications were requested.")
        return Change(topology=None, description=description, what=("Description",))
    return Change(
        topology=_finish(plan, raw, what),
        description=description if changed else None,
        what=tuple(what),
    )


def _cluster_mode(view: ClusterView, action: str) -> None:
    if not view.cluster_enabled:
        raise _combination(
            f"{action} is for cluster mode enabled replication groups; "
            f"{view.name} has cluster mode disabled"
        )


def _apply_immediately(params: Params, action: str) -> None:
    if params.boolean("ApplyImmediately") is not True:
        raise _invalid(f"ApplyImmediately: {action} needs ApplyImmediately=true")


def _group_ids(params: Params, name: str, member: str, current: int) -> list[int]:
    ids = [shard_of(raw) for raw in params.strings(name, member)]
    for shard in ids:
        if not 1 <= shard <= current:
            raise ApiError(
                "NodeGroupNotFoundFault", f"{name}: node group {node_group_id(shard)} not found"
            )
    return ids


def _ids(shards: list[int]) -> str:
    return ", ".join(node_group_id(s) for s in shards)


def modify_shards(params: Params, view: ClusterView) -> Change:
    """ModifyReplicationGroupShardConfiguration: node groups added (their slots taken
    evenly from the others) or removed (theirs given to the rest). Node groups leave from
    the highest id here; NodeGroupsToRemove / NodeGroupsToRetain are taken when they name
    exactly those."""
    action = "ModifyReplicationGroupShardConfiguration"
    plan = _plan(params, view)
    count = params.integer("NodeGroupCount", lo=1, hi=MAX_SHARDS)
    if count is None:
        raise ApiError("MissingParameter", "The request must contain the parameter NodeGroupCount")
    _apply_immediately(params, action)
    current = plan.topology.shards
    remove = _group_ids(params, "NodeGroupsToRemove", "NodeGroupToRemove", current)
    retain = _group_ids(params, "NodeGroupsToRetain", "NodeGroupToRetain", current)
    resharding = params.structs("ReshardingConfiguration", "ReshardingConfiguration")
    _no_unread(params, action)
    _cluster_mode(view, action)
    if count == current:
        raise _invalid(f"NodeGroupCount: the group has {current} node groups already")
    if remove and retain:
        raise _combination("Give NodeGroupsToRemove or NodeGroupsToRetain, not both")
    leaving = list(range(count + 1, current + 1))
    staying = list(range(1, count + 1))
    if count > current and (remove or retain):
        raise _combination(
            "NodeGroupsToRemove and NodeGroupsToRetain are for reducing the node groups"
        )
    if count < current:
        if not remove and not retain:
            raise _combination(
                f"NodeGroupCount {count} is fewer than the {current} node groups: name "
                "NodeGroupsToRemove or NodeGroupsToRetain"
            )
        if remove and sorted(remove) != leaving:
            raise _invalid(
                f"NodeGroupsToRemove: here node groups leave from the highest id: remove "
                f"{_ids(leaving)}"
            )
        if retain and sorted(retain) != staying:
            raise _invalid(
                f"NodeGroupsToRetain: here node groups leave from the highest id: retain "
                f"{_ids(staying)}"
            )
    raw = _stored(plan)
    raw["shards"] = count
    checked(raw)
    if resharding:
        _check_resharding(resharding, plan, parse_topology(raw), count)
    return Change(topology=_finish(plan, raw, ["NodeGroupCount"]), what=("NodeGroupCount",))


def _check_resharding(resharding: list[Params], plan: Plan, new: Any, count: int) -> None:
    """ReshardingConfiguration: one entry per node group; each node group's zones are the
    ones it has (kept) or gets by the topology's placement (added): a wish for others is
    refused, naming the zones it would get."""
    if len(resharding) != count:
        raise _invalid(
            f"ReshardingConfiguration: {len(resharding)} entries for NodeGroupCount {count}: "
            "give one per node group"
        )
    for i, entry in enumerate(resharding, 1):
        raw_id = entry.string("NodeGroupId")
        shard = shard_of(raw_id) if raw_id else i
        wanted = entry.strings("PreferredAvailabilityZones", "AvailabilityZone")
        if not 1 <= shard <= count:
            raise _invalid(f"ReshardingConfiguration {i}: node group {raw_id} is not kept")
        members = plan.shard_nodes(shard)
        zones = [n.zone for n in members] if members else new_shard_zones(new, shard)
        if wanted and sorted(wanted) != sorted(zones):
            raise _invalid(
                f"ReshardingConfiguration {i}: node group {node_group_id(shard)}'s nodes are "
                f"placed in {', '.join(zones)} here (zones of existing nodes are fixed, and "
                "new ones follow the topology's placement)"
            )


def _replica_count(params: Params, current: int, increase: bool) -> int | None:
    """NewReplicaCount, or the one count of every ReplicaConfiguration entry (None when the
    request gives neither)."""
    count = params.integer("NewReplicaCount", lo=0, hi=MAX_REPLICAS)
    shards = params.structs("ReplicaConfiguration", "ConfigureShard")
    counts: set[int] = set()
    for i, shard in enumerate(shards, 1):
        shard_of(shard.required("NodeGroupId"))
        c = shard.integer("NewReplicaCount", lo=0, hi=MAX_REPLICAS)
        if c is None:
            raise ApiError(
                "MissingParameter", f"ReplicaConfiguration {i}: NewReplicaCount is required"
            )
        if shard.strings("PreferredAvailabilityZones", "PreferredAvailabilityZone"):
            raise _invalid(
                f"ReplicaConfiguration {i}: PreferredAvailabilityZones is not supported: new "
                "replicas are placed by the topology's placement (least used zone first)"
            )
        if shard.strings("PreferredOutpostArns", "PreferredOutpostArn"):
            raise _invalid(f"ReplicaConfiguration {i}: Outposts are not supported")
        counts.add(c)
    if count is not None and shards:
        raise _combination("Give NewReplicaCount or ReplicaConfiguration, not both")
    if len(counts) > 1:
        raise _invalid(
            "ReplicaConfiguration: every node group has the same replica count here; give one "
            "NewReplicaCount"
        )
    if counts:
        count = counts.pop()
    if count is not None:
        if increase and count <= current:
            raise _invalid(
                f"NewReplicaCount: {count} is not more than the {current} replicas per node "
                "group now"
            )
        if not increase and count >= current:
            raise _invalid(
                f"NewReplicaCount: {count} is not fewer than the {current} replicas per node "
                "group now"
            )
    return count


def change_replicas(params: Params, view: ClusterView, *, increase: bool) -> Change:
    """IncreaseReplicaCount / DecreaseReplicaCount: every node group gets the new count of
    replicas. DecreaseReplicaCount's ReplicasToRemove is taken when it names the replicas
    that leave by the topology's rule (a replica sharing a zone first, the newest first)."""
    action = "IncreaseReplicaCount" if increase else "DecreaseReplicaCount"
    plan = _plan(params, view)
    _apply_immediately(params, action)
    current = plan.topology.replicas_per_shard
    count = _replica_count(params, current, increase)
    to_remove = [] if increase else [r.lower() for r in params.strings("ReplicasToRemove")]
    _no_unread(params, action)
    if count is None and not to_remove:
        raise ApiError(
            "MissingParameter",
            "The request must contain NewReplicaCount or ReplicaConfiguration"
            + ("" if increase else " or ReplicasToRemove"),
        )
    if count is None:  # ReplicasToRemove alone: as many from every node group
        per_shard = {s: 0 for s in range(1, plan.topology.shards + 1)}
        names = {n.name: n.shard for n in plan.nodes}
        for name in to_remove:
            if name not in names:
                raise ApiError("CacheClusterNotFound", f"ReplicasToRemove: {name} not found")
            per_shard[names[name]] += 1
        if len(set(per_shard.values())) != 1:
            raise _invalid(
                "ReplicasToRemove: every node group has the same replica count here; remove "
                "as many replicas from each"
            )
        count = current - next(iter(per_shard.values()))
    if not increase and count < 1 and view.record.multi_az:
        raise _combination("MultiAZEnabled groups need at least one replica per node group")
    raw = _stored(plan)
    # a cluster_mode: disabled topology counts its replicas in `replicas`
    raw["replicas" if plan.topology.standalone else "replicas_per_shard"] = count
    checked(raw)
    if to_remove:
        leaving = _leaving(plan, view, parse_topology(raw))
        if sorted(to_remove) != leaving:
            raise _invalid(
                "ReplicasToRemove: here the replicas that leave are chosen by zone (one "
                f"sharing a zone first, the newest first): {', '.join(leaving)}; give those, "
                "or NewReplicaCount alone"
            )
    what = "NewReplicaCount"
    return Change(topology=_finish(plan, raw, [what]), what=(what,))


def _leaving(plan: Plan, view: ClusterView, new: Any) -> list[str]:
    """The replicas `apply` removes to bring every node group to the new count."""
    primaries = {}
    if view.layout is not None:
        primaries = {s.id: s.primary.name for s in view.layout.shards if s.primary is not None}
    r = reshape(plan, new, plan.engine_binary, primaries, lambda hosts: [(0, 0)] * len(hosts))
    return sorted(n.name for n in r.removed)
