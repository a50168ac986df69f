"""CloudFormation templates into topologies, without sockets: a template written from the
resources' documented properties, YAML short forms and JSON, Refs, refusals by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cachefleet.api import cloudformation
from cachefleet.api.names import Account
from cachefleet.errors import TopologyError
from cachefleet.topology import parse_topology

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Description: a shop's caches
Parameters:
  NodeType:
    Type: String
    Default: cache.t4g.small
  Shards:
    Type: Number
    Default: 2
Resources:
  CacheSubnets:
    Type: AWS::ElastiCache::SubnetGroup
    Properties:
      Description: subnets
      SubnetIds: [subnet-1, subnet-2]
  ShopCache:
    Type: AWS::ElastiCache::ReplicationGroup
    Properties:
      ReplicationGroupId: shop
      ReplicationGroupDescription: !Sub "${AWS::StackName} cache"
      Engine: valkey
      CacheNodeType: !Ref NodeType
      NumNodeGroups: !Ref Shards
      ReplicasPerNodeGroup: 1
      AutomaticFailoverEnabled: true
      CacheSubnetGroupName: !Ref CacheSubnets
      Port: 7400
      Tags:
        - Key: team
          Value: checkout
  Sessions:
    Type: AWS::ElastiCache::CacheCluster
    Properties:
      ClusterName: sessions
      Engine: memcached
      CacheNodeType: cache.t4g.micro
      NumCacheNodes: 2
      AZMode: cross-az
      PreferredAvailabilityZones: [eu-west-3a, eu-west-3b]
      VpcSecurityGroupIds: [sg-1]
"""


def load(tmp_path: Path, text: str, name: str = "stack.yaml") -> Any:
    path = tmp_path / name
    path.write_text(text)
    return path, cloudformation.load_template(path)


def clusters(tmp_path: Path, text: str) -> list[cloudformation.TemplateCluster]:
    path, data = load(tmp_path, text)
    assert cloudformation.is_template(data)
    return cloudformation.clusters(path, data, Account(region="eu-west-3"))


def test_a_template_becomes_topologies_that_validate(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="Fn::Sub"):  # short forms are read, Sub refused
        clusters(tmp_path, TEMPLATE)
    text = TEMPLATE.replace('!Sub "${AWS::StackName} cache"', "the shop's cache")
    shop, sessions = clusters(tmp_path, text)
    assert (shop.logical_id, shop.kind, shop.description) == (
        "ShopCache", "replication-group", "the shop's cache"
    )  # fmt: skip
    t = shop.topology
    assert (t["name"], t["shards"], t["replicas_per_shard"], t["node_type"]) == (
        "shop", 2, 1, "cache.t4g.small"
    )  # fmt: skip
    assert t["router"] == {"port": 7400} and t["zones"] == ["eu-west-3a", "eu-west-3b"]
    assert shop.tags == {"team": "checkout"} and shop.node_type == "cache.t4g.small"
    assert sessions.kind == "cache-cluster"
    assert (sessions.topology["engine"], sessions.topology["nodes"]) == ("memcached", 2)
    assert sessions.topology["zones"] == ["eu-west-3a", "eu-west-3b"]
    for c in (shop, sessions):
        parse_topology(c.topology)  # what `up` will accept


def test_json_templates_and_long_form_refs(tmp_path: Path) -> None:
    doc = {
        "Parameters": {"Replicas": {"Type": "Number", "Default": 0}},
        "Resources": {
            "Small": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {
                    "ReplicationGroupDescription": "small",
                    "NumCacheClusters": 1,
                    "ReplicasPerNodeGroup": {"Ref": "Replicas"},
                },
            }
        },
    }
    path, data = load(tmp_path, json.dumps(doc), "stack.json")
    with pytest.raises(TopologyError, match="NumCacheClusters"):
        cloudformation.clusters(path, data, Account())
    del doc["Resources"]["Small"]["Properties"]["NumCacheClusters"]  # type: ignore[attr-defined]
    path, data = load(tmp_path, json.dumps(doc), "stack.json")
    (small,) = cloudformation.clusters(path, data, Account())
    assert small.topology["name"] == "small"  # the logical id, lower-cased, when unnamed


@pytest.mark.parametrize(
    ("props", "words"),
    [
        ("SnapshottingClusterIdx: x", "has no such property"),
        ("AuthToken: a-long-secret-token-123", "AuthToken"),
        ("NumNodeGroups: 2", "AutomaticFailoverEnabled"),
        ("CacheNodeType: !Ref Missing", "Ref 'Missing'"),
        ("CacheNodeType: !GetAtt Other.Name", "Fn::GetAtt"),
    ],
)
def test_bad_properties_are_named(tmp_path: Path, props: str, words: str) -> None:
    text = (
        "Resources:\n  Bad:\n    Type: AWS::ElastiCache::ReplicationGroup\n    Properties:\n"
        "      ReplicationGroupDescription: d\n      " + props + "\n"
    )
    with pytest.raises(TopologyError) as err:
        clusters(tmp_path, text)
    assert words in str(err.value) and "Resources.Bad" in str(err.value)
    assert "a-long-secret-token" not in str(err.value)


def test_a_topology_is_not_a_template(tmp_path: Path) -> None:
    _, data = load(tmp_path, "name: shop\nzones: [a]\n")
    assert not cloudformation.is_template(data)
