"""Snapshot actions of the API, on `cachefleet snapshot` / `restore` (cachefleet.ops.snapshot):
CreateSnapshot (``creating`` -> ``available``, the group ``snapshotting`` meanwhile),
DescribeSnapshots, CopySnapshot (``creating`` -> ``available``), DeleteSnapshot, and the
final snapshot of DeleteReplicationGroup."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cachefleet import snapshots
from cachefleet.api import creation, shapes, wire
from cachefleet.api.names import group_id
from cachefleet.api.wire import ApiError, Params, XmlList
from cachefleet.ops import snapshot as snapshot_ops
from cachefleet.snapshots import Manifest, SnapshotError

if TYPE_CHECKING:
    from cachefleet.api.server import Api

MAX_SNAPSHOT_RECORDS = 50
SOURCES = ("manual", "automated", "system")


class SnapshotActions:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.pending: dict[str, tuple[str, str]] = {}  # snapshot id -> (cluster, status)
        api.actions.update(
            {
                "CreateSnapshot": self.create_snapshot,
                "DescribeSnapshots": self.describe_snapshots,
                "DeleteSnapshot": self.delete_snapshot,
                "CopySnapshot": self.copy_snapshot,
            }
        )

    def check_name(self, raw: str, field: str) -> str:
        try:
            name = snapshots.check_id(raw)
        except SnapshotError as exc:
            raise ApiError("InvalidParameterValue", f"{field}: {exc}") from None
        if name in self.pending or snapshots.directory(self.api.home, name).exists():
            raise ApiError("SnapshotAlreadyExistsFault", f"Snapshot {name} already exists.")
        return name

    def manifest(self, name: str) -> Manifest:
        try:
            return snapshots.load(self.api.home, snapshots.check_id(name))
        except SnapshotError:
            raise ApiError("SnapshotNotFoundFault", f"Snapshot {name} not found.") from None

    def record(self, manifest: Manifest, status: str) -> dict[str, Any]:
        view = (
            self.api.view(manifest.cluster) if manifest.cluster in self.api.store.names() else None
        )
        return shapes.snapshot_record(
            manifest,
            status,
            self.api.account,
            node_type=view.node_type if view else "",
            description=view.record.description if view else "",
        )

    def pending_record(self, name: str) -> dict[str, Any]:
        cluster, status = self.pending[name]
        view = self.api.view(cluster)
        return shapes.pending_snapshot(
            name, cluster, status, self.api.account, node_type=view.node_type
        )

    async def take(self, cluster: str, name: str) -> None:
        """The snapshot itself; pending (``creating``) until its manifest is written."""
        self.pending[name] = (cluster, "creating")
        try:
            await snapshot_ops.create(
                cluster, snapshot_id=name, state_dir=str(self.api.home), out=self.api.out
            )
        finally:
            self.pending.pop(name, None)

    async def create_snapshot(self, params: Params) -> dict[str, Any]:
        raw_group = params.string("ReplicationGroupId")
        if params.string("CacheClusterId") is not None:
            raise ApiError(
                "InvalidParameterCombination",
                "Snapshots are taken of a whole replication group here: give ReplicationGroupId",
            )
        if raw_group is None:
            raise ApiError("MissingParameter", "The request must contain ReplicationGroupId")
        if params.string("KmsKeyId"):
            raise ApiError("InvalidParameterValue", "KmsKeyId needs encryption at rest")
        creation.tags_of(params)
        name = self.check_name(params.required("SnapshotName"), "SnapshotName")
        cluster = group_id(raw_group)
        view = self.api.existing(cluster)
        if view.status != "available":
            raise ApiError(
                "InvalidReplicationGroupState",
                f"Replication group {cluster} is {view.status}, not available.",
            )
        self.pending[name] = (cluster, "creating")
        self.api.run(cluster, "snapshotting", self.take(cluster, name))
        return {"Snapshot": self.pending_record(name)}

    async def describe_snapshots(self, params: Params) -> dict[str, Any]:
        raw_group = params.string("ReplicationGroupId")
        cluster_id = params.string("CacheClusterId")
        name = params.string("SnapshotName")
        source = params.string("SnapshotSource")
        params.boolean("ShowNodeGroupConfig")
        max_records = params.integer("MaxRecords")
        marker = params.string("Marker")
        if source is not None and source not in SOURCES:
            raise ApiError(
                "InvalidParameterValue",
                f"SnapshotSource: {source!r} is not one of " + ", ".join(SOURCES),
            )
        group = group_id(raw_group) if raw_group else None
        found = await asyncio.to_thread(snapshot_ops.list_snapshots, str(self.api.home))
        records = [self.record(m, "available") for m in found]
        records += [self.pending_record(n) for n in sorted(self.pending)]
        if group is not None:
            records = [r for r in records if r["ReplicationGroupId"] == group]
        if cluster_id is not None:
            owner = cluster_id.lower().rsplit("-", 2)[0]
            records = [r for r in records if r["ReplicationGroupId"] == owner]
        if source is not None:
            records = [r for r in records if r["SnapshotSource"] == source]
        if name is not None:
            records = [r for r in records if r["SnapshotName"] == name]
            if not records:
                raise ApiError("SnapshotNotFoundFault", f"Snapshot {name} not found.")
        items, next_marker = wire.page(records, marker, max_records, most=MAX_SNAPSHOT_RECORDS)
        return {"Marker": next_marker, "Snapshots": XmlList("Snapshot", items)}

    async def delete_snapshot(self, params: Params) -> dict[str, Any]:
        name = params.required("SnapshotName")
        if name in self.pending:
            raise ApiError("InvalidSnapshotState", f"Snapshot {name} is {self.pending[name][1]}.")
        manifest = self.manifest(name)
        record = self.record(manifest, "deleting")
        await asyncio.to_thread(snapshot_ops.delete, manifest.id, state_dir=str(self.api.home))
        return {"Snapshot": record}

    async def copy_snapshot(self, params: Params) -> dict[str, Any]:
        source = params.required("SourceSnapshotName")
        target = params.required("TargetSnapshotName")
        bucket = params.string("TargetBucket")
        key = params.string("KmsKeyId")
        tags = creation.tags_of(params)
        unread = params.unread()
        if unread:
            raise ApiError("InvalidParameterValue", f"{unread[0]} is not a CopySnapshot parameter")
        if bucket is not None:
            raise ApiError(
                "InvalidParameterValue",
                "TargetBucket: exporting snapshots to S3 is not supported here; "
                "`cachefleet snapshot export` writes one to a directory",
            )
        if key:
            raise ApiError("InvalidParameterValue", "KmsKeyId needs encryption at rest")
        if tags:
            raise ApiError("InvalidParameterValue", "Tags: snapshots carry no tags here")
        if source in self.pending:
            raise ApiError(
                "InvalidSnapshotState", f"Snapshot {source} is {self.pending[source][1]}."
            )
        manifest = self.manifest(source)
        name = self.check_name(target, "TargetSnapshotName")
        self.pending[name] = (manifest.cluster, "creating")
        task = asyncio.create_task(self._copy(manifest.id, name), name=f"api.copy.{name}")
        self.api.tasks.add(task)
        task.add_done_callback(self.api.tasks.discard)
        return {"Snapshot": self.record(replace(manifest, id=name, kind="manual"), "creating")}

    async def _copy(self, source: str, target: str) -> None:
        """The copy (its files checked, then linked); pending until its manifest is written."""
        try:
            await asyncio.to_thread(snapshot_ops.copy, source, target, state_dir=str(self.api.home))
            self.api.out(f"snapshot {target}: copied from {source}")
        except Exception as exc:
            self.api.out(f"copying snapshot {source} to {target} failed: {exc}")
        finally:
            self.pending.pop(target, None)
