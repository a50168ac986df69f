"""CloudFormation templates, pure: ``AWS::ElastiCache::ReplicationGroup`` and
``AWS::ElastiCache::CacheCluster`` resources into topologies, their properties read exactly
as the API's parameters (one validation, :mod:`cachefleet.api.creation`).

``Ref`` resolves to a template parameter's ``Default``, a pseudo parameter
(``AWS::Region``, ``AWS::AccountId``, ``AWS::StackName``) or another resource's logical id;
other intrinsic functions are refused by name, as are properties the resource type does not
have. Other resource types (subnet and parameter groups, security groups …) have no effect
here and are listed as skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cachefleet.api import creation
from cachefleet.api.names import Account
from cachefleet.api.wire import ApiError, Params
from cachefleet.errors import TopologyError

REPLICATION_GROUP = "AWS::ElastiCache::ReplicationGroup"
CACHE_CLUSTER = "AWS::ElastiCache::CacheCluster"

#: Documented properties -> how a list property's members are named in the Query API.
GROUP_PROPERTIES: dict[str, str | None] = {
    "AtRestEncryptionEnabled": None, "AuthToken": None, "AutomaticFailoverEnabled": None,
    "AutoMinorVersionUpgrade": None, "CacheNodeType": None, "CacheParameterGroupName": None,
    "CacheSecurityGroupNames": "CacheSecurityGroupName", "CacheSubnetGroupName": None,
    "ClusterMode": None, "DataTieringEnabled": None, "Engine": None, "EngineVersion": None,
    "GlobalReplicationGroupId": None, "IpDiscovery": None, "KmsKeyId": None,
    "LogDeliveryConfigurations": "LogDeliveryConfigurationRequest", "MultiAZEnabled": None,
    "NetworkType": None, "NodeGroupConfiguration": "NodeGroupConfiguration",
    "NotificationTopicArn": None, "NumCacheClusters": None, "NumNodeGroups": None,
    "Port": None, "PreferredCacheClusterAZs": "AvailabilityZone",
    "PreferredMaintenanceWindow": None, "PrimaryClusterId": None,
    "ReplicasPerNodeGroup": None, "ReplicationGroupDescription": None,
    "ReplicationGroupId": None, "SecurityGroupIds": "SecurityGroupId",
    "SnapshotArns": "SnapshotArn", "SnapshotName": None, "SnapshotRetentionLimit": None,
    "SnapshottingClusterId": None, "SnapshotWindow": None, "Tags": "Tag",
    "TransitEncryptionEnabled": None, "TransitEncryptionMode": None, "UserGroupIds": "member",
}  # fmt: skip
CLUSTER_PROPERTIES: dict[str, str | None] = {
    "AutoMinorVersionUpgrade": None, "AZMode": None, "CacheNodeType": None,
    "CacheParameterGroupName": None, "CacheSecurityGroupNames": "CacheSecurityGroupName",
    "CacheSubnetGroupName": None, "ClusterName": None, "Engine": None, "EngineVersion": None,
    "IpDiscovery": None, "LogDeliveryConfigurations": "LogDeliveryConfigurationRequest",
    "NetworkType": None, "NotificationTopicArn": None, "NumCacheNodes": None, "Port": None,
    "PreferredAvailabilityZone": None,
    "PreferredAvailabilityZones": "PreferredAvailabilityZone",
    "PreferredMaintenanceWindow": None, "SnapshotArns": "SnapshotArn", "SnapshotName": None,
    "SnapshotRetentionLimit": None, "SnapshotWindow": None, "Tags": "Tag",
    "TransitEncryptionEnabled": None, "VpcSecurityGroupIds": "SecurityGroupId",
}  # fmt: skip
#: Template property -> the API parameter it is (where the names differ).
RENAMED = {"ClusterName": "CacheClusterId", "VpcSecurityGroupIds": "SecurityGroupIds"}
#: A list inside a list's structure: NodeGroupConfiguration's zones.
NESTED_MEMBERS = {"ReplicaAvailabilityZones": "AvailabilityZone"}
#: Properties the template has that the API does not take: accepted without effect.
TEMPLATE_ONLY = ("SnapshottingClusterId",)


@dataclass(frozen=True)
class TemplateCluster:
    """One resource of a template: the topology to bring up and what the API records."""

    logical_id: str
    kind: str  # "replication-group" or "cache-cluster"
    topology: dict[str, Any]
    description: str
    node_type: str
    tags: dict[str, str] = field(default_factory=dict)
    automatic_failover: bool | None = None
    cluster_enabled: bool = True


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref X, !Sub …) as their long forms."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: str | Path) -> Any:
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.load(text, Loader=_TemplateLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TopologyError(str(path), "", f"invalid YAML: {exc}") from None


def is_template(data: Any) -> bool:
    """A CloudFormation template with at least one ElastiCache resource."""
    resources = data.get("Resources") if isinstance(data, Mapping) else None
    return isinstance(resources, Mapping) and any(
        isinstance(r, Mapping) and str(r.get("Type", "")).startswith("AWS::ElastiCache::")
        for r in resources.values()
    )


class _Resolver:
    def __init__(self, source: str, template: Mapping[str, Any], account: Account) -> None:
        self.source = source
        params = template.get("Parameters") or {}
        self.values: dict[str, Any] = {
            "AWS::Region": account.region,
            "AWS::AccountId": account.account,
            "AWS::StackName": Path(source).stem,
        }
        for name, spec in params.items() if isinstance(params, Mapping) else []:
            if isinstance(spec, Mapping) and "Default" in spec:
                self.values[str(name)] = spec["Default"]
        for name in template.get("Resources") or {}:
            self.values.setdefault(str(name), str(name))

    def __call__(self, value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            if len(value) == 1 and "Ref" in value:
                ref = value["Ref"]
                if ref not in self.values:
                    raise TopologyError(
                        self.source, where, f"Ref {ref!r}: no parameter with a Default, "
                        "pseudo parameter or resource of that name",
                    )  # fmt: skip
                return self.values[ref]
            if len(value) == 1 and str(next(iter(value))).startswith("Fn::"):
                raise TopologyError(
                    self.source, where, f"{next(iter(value))} is not supported here "
                    "(Ref to a parameter's Default is)",
                )  # fmt: skip
            return {k: self(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flatten(props: Mapping[str, Any], members: Mapping[str, str | None]) -> dict[str, str]:
    """Template properties as the Query API's form fields."""
    fields: dict[str, str] = {}
    for prop, value in props.items():
        if prop in TEMPLATE_ONLY:
            continue
        name = RENAMED.get(prop, prop)
        member = members.get(prop)
        if member is None or not isinstance(value, list):
            fields[name] = _scalar(value)
            continue
        for i, item in enumerate(value, 1):
            prefix = f"{name}.{member}.{i}"
            if not isinstance(item, Mapping):
                fields[prefix] = _scalar(item)
                continue
            for key, sub in item.items():
                inner = NESTED_MEMBERS.get(str(key))
                if inner and isinstance(sub, list):
                    for j, z in enumerate(sub, 1):
                        fields[f"{prefix}.{key}.{inner}.{j}"] = _scalar(z)
                else:
                    fields[f"{prefix}.{key}"] = _scalar(sub)
    return fields


def clusters(path: str | Path, data: Any, account: Account) -> list[TemplateCluster]:
    """Every ElastiCache cluster a template declares, validated as the API would; a bad
    property raises TopologyError naming the resource and property."""
    source = str(path)
    resolve = _Resolver(source, data, account)
    out: list[TemplateCluster] = []
    for logical, resource in (data.get("Resources") or {}).items():
        kind = resource.get("Type") if isinstance(resource, Mapping) else None
        if kind not in (REPLICATION_GROUP, CACHE_CLUSTER):
            continue
        where = f"Resources.{logical}.Properties"
        props = resolve(resource.get("Properties") or {}, where)
        if not isinstance(props, Mapping):
            raise TopologyError(source, where, "must be a mapping")
        known = GROUP_PROPERTIES if kind == REPLICATION_GROUP else CLUSTER_PROPERTIES
        for prop in props:
            if prop not in known:
                raise TopologyError(source, f"{where}.{prop}", f"{kind} has no such property")
        fields = _flatten(props, known)
        try:
            if kind == REPLICATION_GROUP:
                fields.setdefault("ReplicationGroupId", str(logical))
                fields.setdefault("ReplicationGroupDescription", str(logical))
                req = creation.create_request(Params(fields), account)
                out.append(
                    TemplateCluster(
                        logical_id=str(logical), kind="replication-group",
                        topology=req.topology, description=req.description,
                        node_type=req.node_type, tags=req.tags,
                        automatic_failover=req.automatic_failover,
                        cluster_enabled=req.cluster_enabled,
                    )
                )  # fmt: skip
            else:
                fields.setdefault("CacheClusterId", str(logical))
                cc = creation.cache_cluster_request(Params(fields), account)
                out.append(
                    TemplateCluster(
                        logical_id=str(logical), kind="cache-cluster", topology=cc.topology,
                        description="", node_type=cc.node_type, tags=cc.tags,
                    )
                )  # fmt: skip
        except ApiError as exc:
            raise TopologyError(source, f"Resources.{logical}", exc.message) from None
    names = [c.topology["name"] for c in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise TopologyError(source, "Resources", f"two resources are named {dup!r}")
    return out
