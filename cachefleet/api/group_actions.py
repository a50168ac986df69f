"""Replication groups through the API, on the CLI's operations: CreateReplicationGroup
(`up --detach`, or `restore` from a snapshot; ``creating`` -> ``available``),
DescribeReplicationGroups, DeleteReplicationGroup (`down --purge`, after a final snapshot;
``deleting`` -> gone) and TestFailover (`failover --shard N`; ``modifying`` meanwhile)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cachefleet.api import creation, shapes, wire
from cachefleet.api.names import group_id, node_group_id, shard_of
from cachefleet.api.store import save_record
from cachefleet.api.tag_actions import MAX_TAGS
from cachefleet.api.wire import ApiError, Params, XmlList
from cachefleet.errors import CachefleetError
from cachefleet.ops import lifecycle
from cachefleet.ops.failover import graceful_failover
from cachefleet.ops.restore import restore
from cachefleet.state import ClusterDir

if TYPE_CHECKING:
    from cachefleet.api.server import Api


class ReplicationGroupActions:
    def __init__(self, api: Api) -> None:
        self.api = api
        api.actions.update(
            {
                "CreateReplicationGroup": self.create_replication_group,
                "DescribeReplicationGroups": self.describe_replication_groups,
                "DeleteReplicationGroup": self.delete_replication_group,
                "TestFailover": self.test_failover,
            }
        )

    async def create_replication_group(self, params: Params) -> dict[str, Any]:
        req = creation.create_request(params, self.api.account)
        cdir = ClusterDir(self.api.home, req.name)
        if req.name in self.api.operations or cdir.exists() or cdir.root.exists():
            raise ApiError(
                "ReplicationGroupAlreadyExists", f"Replication group {req.name} already exists."
            )
        if len(req.tags) > MAX_TAGS:
            raise ApiError("TagQuotaPerResourceExceeded", f"At most {MAX_TAGS} tags per resource")
        if req.snapshot is not None:
            manifest = self.api.snapshots.manifest(req.snapshot)
            if manifest.engine != req.topology["engine"]:
                raise ApiError(
                    "InvalidParameterCombination",
                    f"Snapshot {req.snapshot} is of a {manifest.engine} group; Engine is "
                    f"{req.topology['engine']}",
                )
        cdir.root.mkdir(parents=True)
        topology_path = cdir.root / "topology.yaml"
        topology_path.write_text(yaml.safe_dump(req.topology, sort_keys=False))
        arn = self.api.account.arn("replicationgroup", req.name)
        record = shapes.Record(
            description=req.description,
            node_type=req.node_type,
            created=time.time(),
            cluster_enabled=req.cluster_enabled,
            automatic_failover=req.automatic_failover,
            multi_az=req.multi_az,
            engine=req.topology["engine"],
            tags={arn: req.tags} if req.tags else {},
        )
        save_record(cdir, record)
        self.api.run(
            req.name, "creating", self.api.created(cdir, self._up(topology_path, req.snapshot))
        )
        return {
            "ReplicationGroup": shapes.replication_group(self.api.view(req.name), self.api.account)
        }

    async def _up(self, topology_path: Path, snapshot: str | None) -> None:
        """`up --detach`, or `restore SNAPSHOT` (which brings the cluster up the same way,
        then loads the snapshot's keys)."""
        if snapshot is None:
            code = await lifecycle.up(
                str(topology_path), state_dir=str(self.api.home), detach=True, out=self.api.out
            )
        else:
            code = await restore(
                snapshot, str(topology_path), state_dir=str(self.api.home), out=self.api.out
            )
        if code != 0:
            raise CachefleetError(f"bringing up {topology_path} exited {code}")

    async def describe_replication_groups(self, params: Params) -> dict[str, Any]:
        raw = params.string("ReplicationGroupId")
        max_records = params.integer("MaxRecords")
        marker = params.string("Marker")
        views = [self.api.existing(group_id(raw))] if raw else self.api.groups()
        items, next_marker = wire.page(views, marker, max_records)
        return {
            "Marker": next_marker,
            "ReplicationGroups": XmlList(
                "ReplicationGroup", [shapes.replication_group(v, self.api.account) for v in items]
            ),
        }

    async def delete_replication_group(self, params: Params) -> dict[str, Any]:
        name = group_id(params.required("ReplicationGroupId"))
        final = params.string("FinalSnapshotIdentifier")
        if params.boolean("RetainPrimaryCluster"):
            raise ApiError("InvalidParameterValue", "RetainPrimaryCluster is not supported")
        view = self.api.existing(name)
        if view.status in ("creating", "deleting", "modifying", "snapshotting"):
            raise ApiError(
                "InvalidReplicationGroupState",
                f"Replication group {name} is {view.status}; it can be deleted once it is not.",
            )
        if final is not None:
            final = self.api.snapshots.check_name(final, "FinalSnapshotIdentifier")
            if view.status != "available":
                raise ApiError(
                    "InvalidReplicationGroupState",
                    f"Replication group {name} is {view.status}: a final snapshot needs it "
                    "available",
                )
            self.api.snapshots.pending[final] = (name, "creating")
        self.api.run(name, "deleting", self._down(name, final))
        return {"ReplicationGroup": shapes.replication_group(self.api.view(name), self.api.account)}

    async def _down(self, name: str, final: str | None) -> None:
        """`down --purge`, after the final snapshot when one was asked for (a snapshot that
        fails leaves the group running: nothing is deleted without its final snapshot)."""
        if final is not None:
            await self.api.snapshots.take(name, final)
        await lifecycle.down(name, state_dir=str(self.api.home), purge=True, out=self.api.out)

    async def test_failover(self, params: Params) -> dict[str, Any]:
        name = group_id(params.required("ReplicationGroupId"))
        shard = shard_of(params.required("NodeGroupId"))
        view = self.api.existing(name)
        layout = view.layout
        if layout is None or shard not in [s.id for s in layout.shards]:
            raise ApiError(
                "NodeGroupNotFoundFault",
                f"Node group {node_group_id(shard)} not found in replication group {name}.",
            )
        if view.status != "available":
            raise ApiError(
                "InvalidReplicationGroupState",
                f"Replication group {name} is {view.status}, not available.",
            )
        if not layout.shard(shard).replicas:
            raise ApiError(
                "InvalidParameterCombination",
                f"Node group {node_group_id(shard)} has no replica to fail over to.",
            )
        self.api.run(name, "modifying", self._failover(name, shard))
        return {"ReplicationGroup": shapes.replication_group(self.api.view(name), self.api.account)}

    async def _failover(self, name: str, shard: int) -> None:
        done = await graceful_failover(name, shard_id=shard, to=None, state_dir=str(self.api.home))
        self.api.out(f"{name}: {done}")
