"""Tags through the API: Add/List/RemoveTagsFromResource on replication groups and cache
clusters, kept in the owning cluster's ``api.json`` (they go with the cluster)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cachefleet.api import creation, shapes
from cachefleet.api.store import load_record, save_record
from cachefleet.api.wire import ApiError, Params, XmlList
from cachefleet.state import ClusterDir

if TYPE_CHECKING:
    from cachefleet.api.server import Api

MAX_TAGS = 50  # per resource, as the service allows


class TagActions:
    def __init__(self, api: Api) -> None:
        self.api = api
        api.actions.update(
            {
                "AddTagsToResource": self.add_tags,
                "ListTagsForResource": self.list_tags,
                "RemoveTagsFromResource": self.remove_tags,
            }
        )

    def resource(self, arn: str) -> ClusterDir:
        """The cluster that owns the resource an ARN names."""
        kind, name = self.api.account.parse_arn(arn)
        if kind == "replicationgroup":
            self.api.existing(name)
            return ClusterDir(self.api.home, name)
        if kind == "cluster":
            for cluster in self.api.store.names():
                view = self.api.view(cluster)
                ids = [
                    c["CacheClusterId"]
                    for c in shapes.cache_clusters(view, self.api.account, show_nodes=False)
                ]
                if name in ids:
                    return ClusterDir(self.api.home, cluster)
            raise ApiError("CacheClusterNotFound", f"CacheCluster not found: {name}")
        if kind == "snapshot":
            raise ApiError("SnapshotNotFoundFault", f"Snapshot {name} not found.")
        raise ApiError("InvalidARN", f"{arn!r}: tags are kept for replication groups and clusters")

    def _tag_list(self, tags: dict[str, str]) -> dict[str, Any]:
        return {"TagList": XmlList("Tag", [{"Key": k, "Value": v} for k, v in tags.items()])}

    async def add_tags(self, params: Params) -> dict[str, Any]:
        arn = params.required("ResourceName")
        new = creation.tags_of(params)
        if not new:
            raise ApiError("MissingParameter", "The request must contain the parameter Tags")
        cdir = self.resource(arn)
        record = load_record(cdir)
        tags = {**record.tags.get(arn, {}), **new}
        if len(tags) > MAX_TAGS:
            raise ApiError("TagQuotaPerResourceExceeded", f"At most {MAX_TAGS} tags per resource")
        save_record(cdir, replace(record, tags={**record.tags, arn: tags}))
        return self._tag_list(tags)

    async def list_tags(self, params: Params) -> dict[str, Any]:
        arn = params.required("ResourceName")
        return self._tag_list(load_record(self.resource(arn)).tags.get(arn, {}))

    async def remove_tags(self, params: Params) -> dict[str, Any]:
        arn = params.required("ResourceName")
        keys = params.strings("TagKeys")
        cdir = self.resource(arn)
        record = load_record(cdir)
        tags = dict(record.tags.get(arn, {}))
        missing = [k for k in keys if k not in tags]
        if missing:
            raise ApiError("TagNotFound", f"Tag {missing[0]!r} not found on {arn}")
        for k in keys:
            del tags[k]
        save_record(cdir, replace(record, tags={**record.tags, arn: tags}))
        return self._tag_list(tags)
