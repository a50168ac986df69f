"""The management API driven by the real clients: boto3 (with its waiters) and the aws CLI
against `cachefleet serve` on a free port, creating real clusters.

One two-shard cluster made through the API is shared by the tests that only read it or fail
it over (in file order: describe, cache clusters, failover, events, tags, a restarted serve,
delete); each test says what a user would see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError, WaiterError
from helpers import ROOT, assert_all_gone, cli, node_client, wait_for
from pymemcache.client.base import Client as MemcacheClient
from redis.cluster import RedisCluster

from cachefleet import ports
from cachefleet.plan import build_plan
from cachefleet.proc import live_processes
from cachefleet.state import ClusterDir
from cachefleet.topology import parse_topology

NAME = "shop"
AWS = str(Path(sys.executable).parent / "aws")


@dataclass
class Serve:
    state_dir: Path
    port: int
    proc: subprocess.Popen[str] | None = None
    seen_pids: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.state_dir.parent / "serve.log", "a")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cachefleet", "serve", "--port", str(self.port),
             "--state-dir", str(self.state_dir)],
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        )  # fmt: skip
        log.close()
        wait_for(lambda: not ports.port_free("127.0.0.1", self.port), 20, "serve to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.proc = None

    def client(self) -> Any:
        return boto3.client(
            "elasticache",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret",
        )

    def remember(self) -> None:
        for cdir in self.clusters():
            self.seen_pids.update({f"{cdir.name}.{k}": v for k, v in live_processes(cdir).items()})

    def clusters(self) -> list[ClusterDir]:
        if not self.state_dir.is_dir():
            return []
        return [ClusterDir(self.state_dir, p.name) for p in self.state_dir.iterdir() if p.is_dir()]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    root = tmp_path_factory.mktemp("api")
    s = Serve(state_dir=root / "state", port=ports.allocate_one())
    s.start()
    try:
        yield s
    finally:
        s.remember()
        s.stop()
        for cdir in s.clusters():
            cli("down", cdir.name, "--purge", "--state-dir", str(s.state_dir), check=False)
        assert_all_gone(s.seen_pids)


@pytest.fixture(scope="module")
def shop(serve: Serve) -> dict[str, Any]:
    """A cluster-mode group of 2 shards x 1 replica in two zones, made with boto3; the create
    response, as the tests that follow share it."""
    ec = serve.client()
    created = ec.create_replication_group(
        ReplicationGroupId=NAME,
        ReplicationGroupDescription="the shop's cache",
        Engine="valkey",
        CacheNodeType="cache.t4g.micro",
        NumNodeGroups=2,
        ReplicasPerNodeGroup=1,
        AutomaticFailoverEnabled=True,
        NodeGroupConfiguration=[
            {"NodeGroupId": "0001", "PrimaryAvailabilityZone": "us-east-1a",
             "ReplicaAvailabilityZones": ["us-east-1b"]},
            {"NodeGroupId": "0002", "PrimaryAvailabilityZone": "us-east-1b",
             "ReplicaAvailabilityZones": ["us-east-1a"]},
        ],
        Tags=[{"Key": "team", "Value": "checkout"}],
    )  # fmt: skip
    ec.get_waiter("replication_group_available").wait(
        ReplicationGroupId=NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 90}
    )
    serve.remember()
    return dict(created["ReplicationGroup"])


def aws(serve: Serve, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The aws CLI against serve, with throwaway credentials and no user config."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(serve.state_dir.parent / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(serve.state_dir.parent / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    cmd = [AWS, "elasticache", *args, "--endpoint-url", serve.url, "--output", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} exited {out.returncode}: {out.stderr}")
    return out


def group(serve: Serve) -> dict[str, Any]:
    groups = serve.client().describe_replication_groups(ReplicationGroupId=NAME)
    return dict(groups["ReplicationGroups"][0])


def primary_of(g: dict[str, Any], node_group: str) -> dict[str, Any]:
    ng = next(n for n in g["NodeGroups"] if n["NodeGroupId"] == node_group)
    return dict(next(m for m in ng["NodeGroupMembers"] if m["CurrentRole"] == "primary"))


def test_create_answers_creating_and_the_waiter_sees_available(
    serve: Serve, shop: dict[str, Any]
) -> None:
    assert shop["Status"] == "creating"
    aws(serve, "wait", "replication-group-available", "--replication-group-id", NAME)
    assert shop["ARN"] == f"arn:aws:elasticache:us-east-1:000000000000:replicationgroup:{NAME}"
    g = group(serve)
    assert g["Status"] == "available"
    assert [n["NodeGroupId"] for n in g["NodeGroups"]] == ["0001", "0002"]
    assert len(g["MemberClusters"]) == 4 and g["ClusterEnabled"] is True
    assert g["CacheNodeType"] == "cache.t4g.micro" and g["Description"] == "the shop's cache"
    zones = {m["PreferredAvailabilityZone"] for n in g["NodeGroups"] for m in n["NodeGroupMembers"]}
    assert zones == {"us-east-1a", "us-east-1b"}


def test_the_configuration_endpoint_is_the_router_and_serves_a_cluster_client(
    serve: Serve, shop: dict[str, Any]
) -> None:
    endpoint = group(serve)["ConfigurationEndpoint"]
    plan = ClusterDir(serve.state_dir, NAME).load_plan()
    assert (endpoint["Address"], endpoint["Port"]) == (plan.router_host, plan.router_port)
    client = RedisCluster(host=endpoint["Address"], port=endpoint["Port"], decode_responses=True)
    try:
        for i in range(20):
            client.set(f"k{i}", str(i))
        assert [client.get(f"k{i}") for i in range(20)] == [str(i) for i in range(20)]
    finally:
        client.close()


def test_a_cluster_made_through_the_api_is_an_ordinary_cluster_for_the_cli(
    serve: Serve, shop: dict[str, Any]
) -> None:
    out = cli("status", NAME, "--json", "--state-dir", str(serve.state_dir))
    st = json.loads(out.stdout)
    assert st["state"] == "available" and len(st["shards"]) == 2


def test_member_nodes_are_cache_clusters_with_node_info(serve: Serve, shop: dict[str, Any]) -> None:
    ec = serve.client()
    clusters = ec.describe_cache_clusters(ShowCacheNodeInfo=True)["CacheClusters"]
    assert sorted(c["CacheClusterId"] for c in clusters) == sorted(group(serve)["MemberClusters"])
    first = clusters[0]
    assert first["ReplicationGroupId"] == NAME and first["Engine"] == "valkey"
    endpoint = first["CacheNodes"][0]["Endpoint"]
    assert node_client(f"{endpoint['Address']}:{endpoint['Port']}").ping()
    one = ec.describe_cache_clusters(CacheClusterId=first["CacheClusterId"])["CacheClusters"]
    assert len(one) == 1 and "CacheNodes" not in one[0]


def test_test_failover_moves_the_primary_on_the_engines(serve: Serve, shop: dict[str, Any]) -> None:
    before = primary_of(group(serve), "0002")
    out = aws(serve, "test-failover", "--replication-group-id", NAME, "--node-group-id", "0002")
    assert json.loads(out.stdout)["ReplicationGroup"]["ReplicationGroupId"] == NAME

    def moved() -> dict[str, Any] | None:
        g = group(serve)
        now = primary_of(g, "0002")
        return now if g["Status"] == "available" and now != before else None

    after = wait_for(moved, 30, "node group 0002's primary to change")
    old = before["ReadEndpoint"]
    new = after["ReadEndpoint"]
    assert node_client(f"{new['Address']}:{new['Port']}").info("replication")["role"] == "master"
    old_info = node_client(f"{old['Address']}:{old['Port']}").info("replication")
    assert old_info["role"] == "slave"
    assert (old_info["master_host"], old_info["master_port"]) == (new["Address"], new["Port"])


def test_events_show_the_failover_and_filter_by_source_and_time(
    serve: Serve, shop: dict[str, Any]
) -> None:
    out = aws(serve, "describe-events", "--duration", "60")
    events = json.loads(out.stdout)["Events"]
    assert any("graceful_failover" in e["Message"] and "shard=2" in e["Message"] for e in events)
    assert any(e["Message"].startswith("cluster_created") for e in events)
    ec = serve.client()
    mine = ec.describe_events(SourceType="replication-group", SourceIdentifier=NAME)["Events"]
    assert mine and all(e["SourceIdentifier"] == NAME for e in mine)
    assert not ec.describe_events(SourceType="replication-group", SourceIdentifier="other")[
        "Events"
    ]
    future = time.time() + 3600
    assert not ec.describe_events(StartTime=future, EndTime=future + 60)["Events"]
    with pytest.raises(ClientError) as err:
        ec.describe_events(SourceType="no-such-type")
    assert err.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_tags_are_added_listed_removed_and_kept_in_the_state_dir(
    serve: Serve, shop: dict[str, Any]
) -> None:
    ec = serve.client()
    arn = shop["ARN"]
    assert ec.list_tags_for_resource(ResourceName=arn)["TagList"] == [
        {"Key": "team", "Value": "checkout"}
    ]
    ec.add_tags_to_resource(ResourceName=arn, Tags=[{"Key": "env", "Value": "dev"}])
    ec.remove_tags_from_resource(ResourceName=arn, TagKeys=["team"])
    assert ec.list_tags_for_resource(ResourceName=arn)["TagList"] == [
        {"Key": "env", "Value": "dev"}
    ]
    kept = json.loads((serve.state_dir / NAME / "api.json").read_text())["tags"]
    assert kept == {arn: {"env": "dev"}}
    node_arn = arn.replace(f"replicationgroup:{NAME}", f"cluster:{NAME}-0001-001")
    ec.add_tags_to_resource(ResourceName=node_arn, Tags=[{"Key": "role", "Value": "x"}])
    assert ec.list_tags_for_resource(ResourceName=node_arn)["TagList"] == [
        {"Key": "role", "Value": "x"}
    ]
    for bad_arn, code in [
        (arn.replace(NAME, "nope"), "ReplicationGroupNotFoundFault"),
        (node_arn.replace("0001-001", "0009-001"), "CacheClusterNotFound"),
        ("not-an-arn", "InvalidARN"),
    ]:
        with pytest.raises(ClientError) as err:
            ec.list_tags_for_resource(ResourceName=bad_arn)
        assert err.value.response["Error"]["Code"] == code
    with pytest.raises(ClientError) as err:
        ec.remove_tags_from_resource(ResourceName=arn, TagKeys=["absent"])
    assert err.value.response["Error"]["Code"] == "TagNotFound"


@pytest.mark.parametrize(
    ("call", "code", "status"),
    [
        (lambda ec: ec.describe_replication_groups(ReplicationGroupId="nope"),
         "ReplicationGroupNotFoundFault", 404),
        (lambda ec: ec.create_replication_group(
            ReplicationGroupId=NAME, ReplicationGroupDescription="again", NumCacheClusters=1),
         "ReplicationGroupAlreadyExists", 400),
        (lambda ec: ec.create_replication_group(
            ReplicationGroupId="other", ReplicationGroupDescription="x", NumNodeGroups=2),
         "InvalidParameterCombination", 400),
        (lambda ec: ec.test_failover(ReplicationGroupId=NAME, NodeGroupId="0007"),
         "NodeGroupNotFoundFault", 404),
        (lambda ec: ec.describe_cache_clusters(CacheClusterId="nope-0001-001"),
         "CacheClusterNotFound", 404),
        (lambda ec: ec.delete_replication_group(
            ReplicationGroupId=NAME, FinalSnapshotIdentifier="not a name!"),
         "InvalidParameterValue", 400),
        (lambda ec: ec.describe_snapshots(SnapshotName="nope"), "SnapshotNotFoundFault", 404),
        (lambda ec: ec.delete_snapshot(SnapshotName="nope"), "SnapshotNotFoundFault", 404),
        (lambda ec: ec.create_replication_group(
            ReplicationGroupId="other", ReplicationGroupDescription="x", SnapshotName="nope"),
         "SnapshotNotFoundFault", 404),
        (lambda ec: ec.copy_snapshot(SourceSnapshotName="a", TargetSnapshotName="b"),
         "SnapshotNotFoundFault", 404),
        (lambda ec: ec.copy_snapshot(
            SourceSnapshotName="a", TargetSnapshotName="b", TargetBucket="my-bucket"),
         "InvalidParameterValue", 400),
        (lambda ec: ec.create_cache_cluster(CacheClusterId="solo", Engine="redis"),
         "InvalidParameterValue", 400),
        (lambda ec: ec.create_cache_cluster(
            CacheClusterId="solo", Engine="memcached", NumCacheNodes=1, AZMode="cross-az"),
         "InvalidParameterCombination", 400),
        (lambda ec: ec.modify_replication_group(
            ReplicationGroupId=NAME, ApplyImmediately=True, CacheNodeType="cache.x9.huge"),
         "InvalidParameterValue", 400),
        (lambda ec: ec.modify_replication_group(ReplicationGroupId=NAME, ApplyImmediately=True),
         "InvalidParameterCombination", 400),
        (lambda ec: ec.modify_replication_group(ReplicationGroupId="nope", CacheNodeType="x"),
         "ReplicationGroupNotFoundFault", 404),
        (lambda ec: ec.increase_replica_count(
            ReplicationGroupId=NAME, NewReplicaCount=2, ApplyImmediately=False),
         "InvalidParameterValue", 400),
        (lambda ec: ec.decrease_replica_count(
            ReplicationGroupId=NAME, NewReplicaCount=3, ApplyImmediately=True),
         "InvalidParameterValue", 400),
    ],
)  # fmt: skip
def test_errors_are_the_services_codes_and_statuses(
    serve: Serve, shop: dict[str, Any], call: Any, code: str, status: int
) -> None:
    with pytest.raises(ClientError) as err:
        call(serve.client())
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert err.value.response["ResponseMetadata"]["RequestId"]
    assert not (serve.state_dir / "other").exists()  # a refused create leaves nothing


def test_a_create_that_fails_is_create_failed_and_can_be_deleted(serve: Serve) -> None:
    ec = serve.client()
    # serve's own port for the configuration endpoint: `up` refuses before starting anything
    ec.create_replication_group(
        ReplicationGroupId="clash", ReplicationGroupDescription="x", Port=serve.port
    )
    failed = wait_for(
        lambda: (
            ec.describe_replication_groups(ReplicationGroupId="clash")["ReplicationGroups"][0][
                "Status"
            ]
            == "create-failed"
        ),
        30,
        "create-failed",
    )
    assert failed
    with pytest.raises(WaiterError):
        ec.get_waiter("replication_group_available").wait(
            ReplicationGroupId="clash", WaiterConfig={"Delay": 1, "MaxAttempts": 2}
        )
    ec.delete_replication_group(ReplicationGroupId="clash")
    ec.get_waiter("replication_group_deleted").wait(
        ReplicationGroupId="clash", WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    assert not (serve.state_dir / "clash").exists()


def test_the_aws_cli_reports_the_error_code_and_fails(serve: Serve) -> None:
    out = aws(
        serve, "create-replication-group", "--replication-group-id", "bad",
        "--replication-group-description", "x", "--num-node-groups", "2", check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "InvalidParameterCombination" in out.stderr


def test_an_unknown_action_over_plain_get_is_invalid_action(serve: Serve) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{serve.url}/?Action=LaunchRockets&Version=2015-02-02", timeout=10)
    assert err.value.code == 400
    body = err.value.read().decode()
    assert "<Code>InvalidAction</Code>" in body and "<RequestId>" in body
    ok = urllib.request.urlopen(
        f"{serve.url}/?Action=DescribeCacheEngineVersions&Version=2015-02-02", timeout=10
    )
    assert b"<CacheEngineVersion>" in ok.read()


def snapshot_status(ec: Any, name: str) -> str | None:
    try:
        found = ec.describe_snapshots(SnapshotName=name)["Snapshots"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "SnapshotNotFoundFault":
            return None
        raise
    return str(found[0]["SnapshotStatus"])


def test_a_snapshot_seeds_a_new_group_whose_final_snapshot_outlives_it(
    serve: Serve, shop: dict[str, Any]
) -> None:
    ec = serve.client()
    taken = ec.create_snapshot(ReplicationGroupId=NAME, SnapshotName="shop-copy")["Snapshot"]
    assert taken["SnapshotStatus"] == "creating"
    wait_for(lambda: snapshot_status(ec, "shop-copy") == "available", 60, "the snapshot")
    snap = ec.describe_snapshots(ReplicationGroupId=NAME)["Snapshots"][0]
    assert [n["NodeGroupId"] for n in snap["NodeSnapshots"]] == ["0001", "0002"]
    assert snap["Engine"] == "valkey" and snap["NumNodeGroups"] == 2
    copied = ec.copy_snapshot(SourceSnapshotName="shop-copy", TargetSnapshotName="shop-copy-2")
    assert copied["Snapshot"]["SnapshotStatus"] == "creating"
    wait_for(lambda: snapshot_status(ec, "shop-copy-2") == "available", 30, "the copy")
    copy = ec.describe_snapshots(SnapshotName="shop-copy-2")["Snapshots"][0]
    assert copy["NodeSnapshots"] == snap["NodeSnapshots"] and copy["SnapshotSource"] == "manual"
    with pytest.raises(ClientError) as err:
        ec.copy_snapshot(SourceSnapshotName="shop-copy", TargetSnapshotName="shop-copy-2")
    assert err.value.response["Error"]["Code"] == "SnapshotAlreadyExistsFault"

    ec.create_replication_group(
        ReplicationGroupId="copy", ReplicationGroupDescription="restored",
        Engine="valkey", NumNodeGroups=1, ReplicasPerNodeGroup=0,
        AutomaticFailoverEnabled=True, SnapshotName="shop-copy",
    )  # fmt: skip
    ec.get_waiter("replication_group_available").wait(
        ReplicationGroupId="copy", WaiterConfig={"Delay": 1, "MaxAttempts": 90}
    )
    serve.remember()
    endpoint = ec.describe_replication_groups(ReplicationGroupId="copy")["ReplicationGroups"][0][
        "ConfigurationEndpoint"
    ]
    client = RedisCluster(host=endpoint["Address"], port=endpoint["Port"], decode_responses=True)
    try:  # the keys the configuration-endpoint test wrote into shop
        assert [client.get(f"k{i}") for i in range(20)] == [str(i) for i in range(20)]
    finally:
        client.close()

    ec.delete_replication_group(ReplicationGroupId="copy", FinalSnapshotIdentifier="copy-final")
    ec.get_waiter("replication_group_deleted").wait(
        ReplicationGroupId="copy", WaiterConfig={"Delay": 1, "MaxAttempts": 90}
    )
    assert snapshot_status(ec, "copy-final") == "available"
    for name in ("shop-copy", "shop-copy-2", "copy-final"):
        assert ec.delete_snapshot(SnapshotName=name)["Snapshot"]["SnapshotStatus"] == "deleting"
        assert snapshot_status(ec, name) is None


def test_a_memcached_cache_cluster_is_created_scaled_and_deleted(serve: Serve) -> None:
    ec = serve.client()
    made = ec.create_cache_cluster(
        CacheClusterId="sessions", Engine="memcached", CacheNodeType="cache.t4g.micro",
        NumCacheNodes=2, AZMode="cross-az",
    )["CacheCluster"]  # fmt: skip
    assert made["CacheClusterStatus"] == "creating"
    ec.get_waiter("cache_cluster_available").wait(
        CacheClusterId="sessions", WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    serve.remember()

    def nodes() -> list[dict[str, Any]]:
        found = ec.describe_cache_clusters(CacheClusterId="sessions", ShowCacheNodeInfo=True)
        return list(found["CacheClusters"][0]["CacheNodes"])

    first = nodes()
    assert [n["CacheNodeId"] for n in first] == ["0001", "0002"]
    assert {n["CustomerAvailabilityZone"] for n in first} == {"us-east-1a", "us-east-1b"}
    endpoint = first[1]["Endpoint"]
    mc = MemcacheClient((endpoint["Address"], endpoint["Port"]), timeout=5)
    try:
        mc.set("greeting", "hello")
        assert mc.get("greeting") == b"hello"
    finally:
        mc.close()
    lone = ec.describe_cache_clusters(ShowCacheClustersNotInReplicationGroups=True)
    assert [c["CacheClusterId"] for c in lone["CacheClusters"]] == ["sessions"]

    ec.modify_cache_cluster(CacheClusterId="sessions", NumCacheNodes=3, ApplyImmediately=True)
    wait_for(lambda: len(nodes()) == 3, 60, "a third node")
    ec.get_waiter("cache_cluster_available").wait(
        CacheClusterId="sessions", WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    serve.remember()
    with pytest.raises(ClientError) as err:  # nodes leave from the end
        ec.modify_cache_cluster(
            CacheClusterId="sessions", NumCacheNodes=2, CacheNodeIdsToRemove=["0001"]
        )
    assert err.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as err:  # a member of a replication group
        ec.delete_cache_cluster(CacheClusterId=f"{NAME}-0001-001")
    assert err.value.response["Error"]["Code"] == "InvalidCacheClusterState"

    pids = {k: v for k, v in serve.seen_pids.items() if k.startswith("sessions.")}
    assert (
        ec.delete_cache_cluster(CacheClusterId="sessions")["CacheCluster"]["CacheClusterStatus"]
        == "deleting"
    )
    ec.get_waiter("cache_cluster_deleted").wait(
        CacheClusterId="sessions", WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    assert not (serve.state_dir / "sessions").exists()
    assert_all_gone(pids)


GROW = "grow"


@pytest.fixture(scope="module")
def grow(serve: Serve) -> dict[str, Any]:
    """A cluster-mode group of one node group and no replica, scaled online by the tests
    that follow (in file order: replicas, node groups, settings, then deleted)."""
    ec = serve.client()
    created = ec.create_replication_group(
        ReplicationGroupId=GROW, ReplicationGroupDescription="scaled online", Engine="valkey",
        CacheNodeType="cache.t4g.micro", NumNodeGroups=1, ReplicasPerNodeGroup=0,
        AutomaticFailoverEnabled=True,
    )  # fmt: skip
    ec.get_waiter("replication_group_available").wait(
        ReplicationGroupId=GROW, WaiterConfig={"Delay": 1, "MaxAttempts": 90}
    )
    serve.remember()
    return dict(created["ReplicationGroup"])


def grown(serve: Serve) -> dict[str, Any]:
    groups = serve.client().describe_replication_groups(ReplicationGroupId=GROW)
    return dict(groups["ReplicationGroups"][0])


def wait_modified(serve: Serve) -> dict[str, Any]:
    serve.client().get_waiter("replication_group_available").wait(
        ReplicationGroupId=GROW, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    serve.remember()
    return grown(serve)


def test_increase_replica_count_adds_a_replica_of_each_primary(
    serve: Serve, grow: dict[str, Any]
) -> None:
    out = aws(serve, "increase-replica-count", "--replication-group-id", GROW,
              "--new-replica-count", "1", "--apply-immediately")  # fmt: skip
    assert json.loads(out.stdout)["ReplicationGroup"]["Status"] == "modifying"
    with pytest.raises(ClientError) as err:  # one change at a time
        serve.client().modify_replication_group(
            ReplicationGroupId=GROW, CacheNodeType="cache.t4g.small", ApplyImmediately=True
        )
    assert err.value.response["Error"]["Code"] == "InvalidReplicationGroupState"
    g = wait_modified(serve)
    assert len(g["MemberClusters"]) == 2
    members = g["NodeGroups"][0]["NodeGroupMembers"]
    assert sorted(m["CurrentRole"] for m in members) == ["primary", "replica"]
    primary = next(m["ReadEndpoint"] for m in members if m["CurrentRole"] == "primary")
    replica = next(m["ReadEndpoint"] for m in members if m["CurrentRole"] == "replica")
    info = node_client(f"{replica['Address']}:{replica['Port']}").info("replication")
    assert info["role"] == "slave" and info["master_port"] == primary["Port"]
    assert info["master_link_status"] == "up"
    # apply ran detached from serve, its output in the cluster's directory
    assert "change applied" in (serve.state_dir / GROW / "logs" / "apply.out").read_text()


def test_refused_modifies_change_nothing(serve: Serve, grow: dict[str, Any]) -> None:
    ec = serve.client()
    refused = [
        # the service requires ApplyImmediately for resharding
        (lambda: ec.modify_replication_group_shard_configuration(
            ReplicationGroupId=GROW, NodeGroupCount=2, ApplyImmediately=False),
         "InvalidParameterValue"),
        (lambda: ec.modify_replication_group_shard_configuration(
            ReplicationGroupId=GROW, NodeGroupCount=1, ApplyImmediately=True),
         "InvalidParameterValue"),
        (lambda: ec.decrease_replica_count(
            ReplicationGroupId=GROW, ApplyImmediately=True, ReplicasToRemove=[f"{GROW}-0001-001"]),
         "InvalidParameterValue"),  # the primary is not one that leaves
        (lambda: ec.modify_replication_group(
            ReplicationGroupId=GROW, ApplyImmediately=True, AuthToken="x" * 20),
         "InvalidParameterValue"),
        (lambda: ec.modify_replication_group(
            ReplicationGroupId=GROW, ApplyImmediately=True, CacheParameterGroupName="mine"),
         "CacheParameterGroupNotFound"),
    ]  # fmt: skip
    for call, code in refused:
        assert code_of(call) == code
    g = grown(serve)
    assert g["Status"] == "available" and len(g["NodeGroups"]) == 1
    assert not (serve.state_dir / GROW / ".topology.yaml.proposed").exists()


def test_node_groups_scale_from_one_to_two_and_every_key_stays(
    serve: Serve, grow: dict[str, Any]
) -> None:
    endpoint = grown(serve)["ConfigurationEndpoint"]
    keys = {f"item:{i}": str(i) for i in range(300)}
    client = RedisCluster(host=endpoint["Address"], port=endpoint["Port"], decode_responses=True)
    try:
        for k, v in keys.items():
            client.set(k, v)
    finally:
        client.close()
    ec = serve.client()
    answer = ec.modify_replication_group_shard_configuration(
        ReplicationGroupId=GROW, NodeGroupCount=2, ApplyImmediately=True
    )
    assert answer["ReplicationGroup"]["Status"] == "modifying"
    g = wait_modified(serve)
    assert [n["NodeGroupId"] for n in g["NodeGroups"]] == ["0001", "0002"]
    assert all(len(n["NodeGroupMembers"]) == 2 and n["Slots"] for n in g["NodeGroups"])
    client = RedisCluster(host=endpoint["Address"], port=endpoint["Port"], decode_responses=True)
    try:  # through the router, after the move
        assert {k: client.get(k) for k in keys} == keys
    finally:
        client.close()
    st = json.loads(cli("status", GROW, "--json", "--state-dir", str(serve.state_dir)).stdout)
    assert len(st["shards"]) == 2


def test_modify_replication_group_sets_the_backup_window_and_description(
    serve: Serve, grow: dict[str, Any]
) -> None:
    ec = serve.client()
    ec.modify_replication_group(
        ReplicationGroupId=GROW, ReplicationGroupDescription="scaled twice",
        SnapshotRetentionLimit=2, SnapshotWindow="05:00-06:00", ApplyImmediately=True,
    )  # fmt: skip
    g = wait_modified(serve)
    assert (g["Description"], g["SnapshotRetentionLimit"], g["SnapshotWindow"]) == (
        "scaled twice", 2, "05:00-06:00"
    )  # fmt: skip
    stored = yaml.safe_load((serve.state_dir / GROW / "topology.yaml").read_text())
    assert stored["backup"] == {"retention": 2, "window": "05:00-06:00"}
    assert stored["shards"] == 2 and stored["replicas_per_shard"] == 1


def test_a_deleted_groups_events_are_still_described(serve: Serve, grow: dict[str, Any]) -> None:
    ec = serve.client()
    ec.delete_replication_group(ReplicationGroupId=GROW)
    ec.get_waiter("replication_group_deleted").wait(
        ReplicationGroupId=GROW, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    assert not (serve.state_dir / GROW).exists()
    found = ec.describe_events(SourceType="replication-group", SourceIdentifier=GROW, Duration=60)
    messages = [e["Message"] for e in found["Events"]]
    assert any(m.startswith("cluster_created") for m in messages)
    assert any(m.startswith("modify_completed") for m in messages)
    assert any(m.startswith("cluster_stopped") and "purged=True" in m for m in messages)
    out = cli("events", GROW, "--state-dir", str(serve.state_dir)).stdout
    assert "cluster_created" in out and "purged=True" in out


TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  NodeType: {Type: String, Default: cache.t4g.micro}
Resources:
  Subnets:
    Type: AWS::ElastiCache::SubnetGroup
    Properties: {Description: subnets, SubnetIds: [subnet-1]}
  Catalog:
    Type: AWS::ElastiCache::ReplicationGroup
    Properties:
      ReplicationGroupId: catalog
      ReplicationGroupDescription: product catalog
      Engine: valkey
      CacheNodeType: !Ref NodeType
      NumCacheClusters: 1
      CacheSubnetGroupName: !Ref Subnets
      Tags: [{Key: source, Value: cloudformation}]
"""


def test_a_cloudformation_template_comes_up_as_an_api_visible_group(serve: Serve) -> None:
    template = serve.state_dir.parent / "stack.yaml"
    template.write_text(TEMPLATE)
    out = cli("up", str(template), "--detach", "--state-dir", str(serve.state_dir))
    assert "Subnets (AWS::ElastiCache::SubnetGroup)" in out.stdout  # skipped, and said so
    serve.remember()
    ec = serve.client()
    g = ec.describe_replication_groups(ReplicationGroupId="catalog")["ReplicationGroups"][0]
    assert (g["Status"], g["Description"], g["CacheNodeType"]) == (
        "available", "product catalog", "cache.t4g.micro"
    )  # fmt: skip
    assert ec.list_tags_for_resource(ResourceName=g["ARN"])["TagList"] == [
        {"Key": "source", "Value": "cloudformation"}
    ]
    again = cli("up", str(template), "--detach", "--state-dir", str(serve.state_dir))
    assert "already running" in again.stdout  # like `up` of a running topology
    bad = template.with_name("bad.yaml")
    bad.write_text(TEMPLATE.replace("NumCacheClusters: 1", "NumCacheClusters: 1\n      Shards: 2"))
    refused = cli("up", str(bad), "--detach", "--state-dir", str(serve.state_dir), check=False)
    assert refused.returncode == 2 and "Resources.Catalog.Properties.Shards" in refused.stderr
    ec.delete_replication_group(ReplicationGroupId="catalog")
    ec.get_waiter("replication_group_deleted").wait(
        ReplicationGroupId="catalog", WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


def register_stopped_clusters(state_dir: Path, count: int) -> list[str]:
    """Clusters left stopped in the state dir (plan.json, no process), as `down` leaves them."""
    names = []
    for i in range(count):
        name = f"idle{i:02d}"
        raw = {"name": name, "zones": ["az-a"], "shards": 1, "replicas_per_shard": 0,
               "ports": {"base": 40000 + 2 * i}, "router": {"port": 45000 + i}}  # fmt: skip
        plan = build_plan(
            parse_topology(raw), raw, engine_binary="/bin/false", node_ports=None,
            bus=("127.0.0.1", 46000 + i), router_port=45000 + i,
        )  # fmt: skip
        cdir = ClusterDir(state_dir, name)
        cdir.make()
        cdir.plan_path.write_text(plan.to_json())
        names.append(name)
    return names


def test_describe_pages_through_many_groups_and_shows_stopped_ones(
    serve: Serve, shop: dict[str, Any]
) -> None:
    idle = register_stopped_clusters(serve.state_dir, 21)
    try:
        ec = serve.client()
        first = ec.describe_replication_groups(MaxRecords=20)
        assert len(first["ReplicationGroups"]) == 20 and first["Marker"]
        pages = list(
            ec.get_paginator("describe_replication_groups").paginate(
                PaginationConfig={"PageSize": 20}
            )
        )
        assert len(pages) == 2
        groups = [g for p in pages for g in p["ReplicationGroups"]]
        assert sorted(g["ReplicationGroupId"] for g in groups) == sorted([*idle, NAME])
        assert {g["Status"] for g in groups if g["ReplicationGroupId"] in idle} == {"stopped"}
        out = aws(serve, "describe-replication-groups", "--max-items", "5")
        data = json.loads(out.stdout)
        assert len(data["ReplicationGroups"]) == 5 and data["NextToken"]
    finally:
        for name in idle:
            ClusterDir(serve.state_dir, name).purge()


def test_a_restarted_serve_picks_up_the_cluster_that_kept_running(
    serve: Serve, shop: dict[str, Any]
) -> None:
    serve.stop()
    out = cli("status", NAME, "--json", "--state-dir", str(serve.state_dir))
    assert json.loads(out.stdout)["state"] == "available"  # serve is not needed to keep it
    serve.start()
    assert group(serve)["Status"] == "available"


def test_delete_goes_through_deleting_to_gone(serve: Serve, shop: dict[str, Any]) -> None:
    ec = serve.client()
    serve.remember()
    pids = {k: v for k, v in serve.seen_pids.items() if k.startswith(f"{NAME}.")}
    deleted = ec.delete_replication_group(ReplicationGroupId=NAME)["ReplicationGroup"]
    assert deleted["Status"] == "deleting"
    with pytest.raises(ClientError) as err:
        ec.test_failover(ReplicationGroupId=NAME, NodeGroupId="0001")
    assert err.value.response["Error"]["Code"] == "InvalidReplicationGroupState"
    ec.get_waiter("replication_group_deleted").wait(
        ReplicationGroupId=NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )
    assert not (serve.state_dir / NAME).exists()
    assert_all_gone(pids)
    with pytest.raises(WaiterError):  # nothing left to become available
        ec.get_waiter("replication_group_available").wait(
            ReplicationGroupId=NAME, WaiterConfig={"Delay": 1, "MaxAttempts": 1}
        )


CREDENTIALS = {
    "keys": {
        "AKIDREADER": {
            "secret": "reader-secret",
            "policy": {
                "Statement": [
                    {"Effect": "Allow", "Action": "elasticache:Describe*", "Resource": "*"}
                ]
            },
        },
        "AKIDOPS": {
            "secret": "ops-secret",
            "policy": {
                "Statement": [
                    {"Effect": "Allow", "Action": "elasticache:*", "Resource": "*"},
                    {
                        "Effect": "Deny",
                        "Action": "elasticache:DeleteReplicationGroup",
                        "Resource": "arn:aws:elasticache:*:*:replicationgroup:prod-*",
                    },
                ]
            },
        },
    }
}


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Serve]:
    """A serve whose state dir has a credentials.yaml (no cluster is needed to check access)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "credentials.yaml").write_text(yaml.safe_dump(CREDENTIALS))
    s = Serve(state_dir=state, port=ports.allocate_one())
    s.start()
    yield s
    s.stop()


def client_as(s: Serve, key: str, secret: str) -> Any:
    return boto3.client(
        "elasticache", endpoint_url=s.url, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
    )  # fmt: skip


def code_of(call: Any) -> str:
    with pytest.raises(ClientError) as err:
        call()
    return str(err.value.response["Error"]["Code"])


def test_signatures_and_policies_decide_who_may_do_what(guarded: Serve) -> None:
    reader = client_as(guarded, "AKIDREADER", "reader-secret")
    ops = client_as(guarded, "AKIDOPS", "ops-secret")
    assert reader.describe_replication_groups()["ReplicationGroups"] == []
    assert code_of(lambda: reader.list_tags_for_resource(ResourceName="x")) == "AccessDenied"
    assert (
        code_of(lambda: reader.delete_replication_group(ReplicationGroupId="dev")) == "AccessDenied"
    )
    # allowed by the policy, so the request reaches the action, which finds no such group
    assert (
        code_of(lambda: ops.delete_replication_group(ReplicationGroupId="dev"))
        == "ReplicationGroupNotFoundFault"
    )
    assert (
        code_of(lambda: ops.delete_replication_group(ReplicationGroupId="prod-eu"))
        == "AccessDenied"
    )
    wrong = client_as(guarded, "AKIDOPS", "not-the-secret")
    assert code_of(lambda: wrong.describe_replication_groups()) == "SignatureDoesNotMatch"
    stranger = client_as(guarded, "AKIDSTRANGER", "x")
    assert code_of(lambda: stranger.describe_replication_groups()) == "InvalidClientTokenId"
    with pytest.raises(urllib.error.HTTPError) as err:  # unsigned
        urllib.request.urlopen(f"{guarded.url}/?Action=DescribeEvents", timeout=10)
    assert err.value.code == 403


def test_every_call_is_audited_with_secrets_redacted(guarded: Serve) -> None:
    ops = client_as(guarded, "AKIDOPS", "ops-secret")
    ops.describe_cache_engine_versions()
    token = "a-very-secret-auth-token-0123456789"
    refused = lambda: ops.create_replication_group(  # noqa: E731
        ReplicationGroupId="tok", ReplicationGroupDescription="d", AuthToken=token
    )
    assert code_of(refused) == "InvalidParameterValue"
    reader = client_as(guarded, "AKIDREADER", "reader-secret")
    assert code_of(lambda: reader.test_failover(ReplicationGroupId="a", NodeGroupId="1")) == (
        "AccessDenied"
    )
    text = (guarded.state_dir / "audit.jsonl").read_text()
    assert token not in text
    records = [json.loads(line) for line in text.splitlines()]
    by_action = {r["action"]: r for r in records}
    ok = by_action["DescribeCacheEngineVersions"]
    assert (ok["outcome"], ok["access_key_id"], ok["error_code"]) == ("success", "AKIDOPS", None)
    assert ok["source"] == "127.0.0.1" and ok["request_id"]
    create = by_action["CreateReplicationGroup"]
    assert create["params"]["AuthToken"] == "*** redacted ***"
    assert (create["outcome"], create["error_code"]) == ("error", "InvalidParameterValue")
    denied = by_action["TestFailover"]
    assert (denied["access_key_id"], denied["error_code"]) == ("AKIDREADER", "AccessDenied")
    out = cli("audit", "--json", "--state-dir", str(guarded.state_dir))
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["request_id"] for r in printed] == [r["request_id"] for r in records]
    plain = cli("audit", "--state-dir", str(guarded.state_dir)).stdout
    assert "TestFailover" in plain and "AccessDenied" in plain and token not in plain
