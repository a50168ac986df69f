"""Memcached cache clusters through the API, on `up`/`down` like the CLI: CreateCacheCluster
(``creating`` -> ``available``), ModifyCacheCluster (``NumCacheNodes``: nodes added or removed
online, as `up` with another ``nodes:`` does; ``modifying`` meanwhile), DeleteCacheCluster
(``deleting`` -> gone). DescribeCacheClusters lists them beside the member nodes of
replication groups."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import yaml

from cachefleet.api import creation, shapes
from cachefleet.api.store import save_record
from cachefleet.api.tag_actions import MAX_TAGS
from cachefleet.api.wire import ApiError, Params
from cachefleet.errors import CachefleetError
from cachefleet.ops import lifecycle
from cachefleet.state import ClusterDir

if TYPE_CHECKING:
    from cachefleet.api.server import Api

BUSY = ("creating", "deleting", "modifying", "snapshotting")


class CacheClusterActions:
    def __init__(self, api: Api) -> None:
        self.api = api
        api.actions.update(
            {
                "CreateCacheCluster": self.create_cache_cluster,
                "ModifyCacheCluster": self.modify_cache_cluster,
                "DeleteCacheCluster": self.delete_cache_cluster,
            }
        )

    def memcached(self, raw: str) -> shapes.ClusterView:
        """A memcached cluster by id; a member node of a replication group is refused as the
        service does (it belongs to its group)."""
        name = raw.lower()
        if name in self.api.operations or name in self.api.store.names():
            view = self.api.view(name)
            if view.is_memcached:
                return view
        for cluster in self.api.store.names():
            plan = self.api.view(cluster).plan
            if plan is not None and any(n.name == name for n in plan.nodes):
                raise ApiError(
                    "InvalidCacheClusterState",
                    f"Cache cluster {name} is a member of replication group {cluster}; "
                    "change it through its replication group",
                )
        raise ApiError("CacheClusterNotFound", f"CacheCluster not found: {raw}")

    def record(self, name: str) -> dict[str, Any]:
        found = shapes.cache_clusters(self.api.view(name), self.api.account, show_nodes=False)
        return {"CacheCluster": found[0]}

    async def up(self, cdir: ClusterDir, topology: dict[str, Any]) -> None:
        path = cdir.root / "topology.yaml"
        path.write_text(yaml.safe_dump(topology, sort_keys=False))
        code = await lifecycle.up(
            str(path), state_dir=str(self.api.home), detach=True, out=self.api.out
        )
        if code != 0:
            raise CachefleetError(f"bringing up {cdir.name} exited {code}")

    async def create_cache_cluster(self, params: Params) -> dict[str, Any]:
        req = creation.cache_cluster_request(params, self.api.account)
        cdir = ClusterDir(self.api.home, req.name)
        if req.name in self.api.operations or cdir.root.exists():
            raise ApiError("CacheClusterAlreadyExists", f"Cache cluster {req.name} already exists.")
        if len(req.tags) > MAX_TAGS:
            raise ApiError("TagQuotaPerResourceExceeded", f"At most {MAX_TAGS} tags per resource")
        cdir.root.mkdir(parents=True)
        arn = self.api.account.arn("cluster", req.name)
        save_record(
            cdir,
            shapes.Record(
                node_type=req.node_type,
                engine="memcached",
                created=time.time(),
                tags={arn: req.tags} if req.tags else {},
            ),
        )
        self.api.run(req.name, "creating", self.api.created(cdir, self.up(cdir, req.topology)))
        return self.record(req.name)

    async def modify_cache_cluster(self, params: Params) -> dict[str, Any]:
        view = self.memcached(params.required("CacheClusterId"))
        nodes = params.integer("NumCacheNodes", lo=1, hi=creation.MAX_CACHE_NODES)
        remove = params.strings("CacheNodeIdsToRemove", "CacheNodeId")
        params.boolean("ApplyImmediately")
        unread = params.unread()
        if unread:
            raise ApiError(
                "InvalidParameterValue",
                f"{unread[0]} cannot be modified yet here (ModifyCacheCluster changes "
                "NumCacheNodes)",
            )
        if view.status != "available" or view.plan is None:
            raise ApiError(
                "InvalidCacheClusterState", f"Cache cluster {view.name} is {view.status}."
            )
        current = len(view.plan.nodes)
        if nodes is None or nodes == current:
            raise ApiError(
                "InvalidParameterCombination", "NumCacheNodes must change the node count"
            )
        # `up` removes nodes from the end; the ids named must be exactly those
        last = [f"{i:04d}" for i in range(nodes + 1, current + 1)]
        if nodes < current and sorted(remove) != last:
            raise ApiError(
                "InvalidParameterValue",
                f"CacheNodeIdsToRemove must name the {current - nodes} removed node(s): "
                f"{', '.join(last)} (nodes are removed from the end)",
            )
        if nodes > current and remove:
            raise ApiError(
                "InvalidParameterCombination", "CacheNodeIdsToRemove is for removing nodes"
            )
        topology = {**view.plan.raw_topology, "nodes": nodes}
        cdir = ClusterDir(self.api.home, view.name)
        self.api.run(view.name, "modifying", self.up(cdir, topology))
        return self.record(view.name)

    async def delete_cache_cluster(self, params: Params) -> dict[str, Any]:
        view = self.memcached(params.required("CacheClusterId"))
        if params.string("FinalSnapshotIdentifier"):
            raise ApiError("InvalidParameterCombination", "Memcached clusters have no snapshots")
        if view.status in BUSY:
            raise ApiError(
                "InvalidCacheClusterState", f"Cache cluster {view.name} is {view.status}."
            )
        self.api.run(view.name, "deleting", self.down(view.name))
        return self.record(view.name)

    async def down(self, name: str) -> None:
        await lifecycle.down(name, state_dir=str(self.api.home), purge=True, out=self.api.out)
