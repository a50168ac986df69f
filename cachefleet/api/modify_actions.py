"""The modify actions on `cachefleet apply`: ModifyReplicationGroup,
ModifyReplicationGroupShardConfiguration, IncreaseReplicaCount and DecreaseReplicaCount.

Each request is checked (:mod:`cachefleet.api.modification`, then apply's own dry run
against the running cluster), the changed topology is written to ``<cluster>/topology.yaml``
and ``python -m cachefleet apply`` runs detached from `serve` (its output in
``<cluster>/logs/apply.out``): the group is ``modifying`` until it exits, and the change goes
on if `serve` stops (a rerun of apply resumes one that was interrupted).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cachefleet.api import modification, shapes
from cachefleet.api.names import group_id
from cachefleet.api.store import load_record, save_record
from cachefleet.api.wire import ApiError, Params
from cachefleet.errors import CachefleetError, InvalidInput
from cachefleet.state import ClusterDir

if TYPE_CHECKING:
    from cachefleet.api.server import Api

TOPOLOGY_FILE = "topology.yaml"
APPLY_LOG = "apply.out"
POLL_S = 0.5


class ModifyActions:
    def __init__(self, api: Api) -> None:
        self.api = api
        api.actions.update(
            {
                "ModifyReplicationGroup": self.modify_replication_group,
                "ModifyReplicationGroupShardConfiguration": self.modify_shard_configuration,
                "IncreaseReplicaCount": self.increase_replica_count,
                "DecreaseReplicaCount": self.decrease_replica_count,
            }
        )

    def _available(self, params: Params) -> shapes.ClusterView:
        name = group_id(params.required("ReplicationGroupId"))
        view = self.api.existing(name)
        if view.status != "available":
            raise ApiError(
                "InvalidReplicationGroupState",
                f"Replication group {name} is {view.status}, not available.",
            )
        return view

    async def modify_replication_group(self, params: Params) -> dict[str, Any]:
        view = self._available(params)
        change = modification.modify_group(params, view, self.api.versions)
        return await self._carry_out(view, change)

    async def modify_shard_configuration(self, params: Params) -> dict[str, Any]:
        view = self._available(params)
        return await self._carry_out(view, modification.modify_shards(params, view))

    async def increase_replica_count(self, params: Params) -> dict[str, Any]:
        view = self._available(params)
        change = modification.change_replicas(params, view, increase=True)
        return await self._carry_out(view, change)

    async def decrease_replica_count(self, params: Params) -> dict[str, Any]:
        view = self._available(params)
        change = modification.change_replicas(params, view, increase=False)
        return await self._carry_out(view, change)

    async def _carry_out(
        self, view: shapes.ClusterView, change: modification.Change
    ) -> dict[str, Any]:
        name = view.name
        cdir = ClusterDir(self.api.home, name)
        if change.topology is not None:
            if name in self.api.operations:  # a request that came in while this one was checked
                raise ApiError(
                    "InvalidReplicationGroupState",
                    f"Replication group {name} is {self.api.operations[name]}, not available.",
                )
            self.api.operations[name] = "modifying"
            try:
                path = await self._checked_topology(cdir, change.topology)
                self._start_apply(cdir, path, change.what)
            except BaseException:
                self.api.operations.pop(name, None)
                raise
        if change.description is not None:
            save_record(cdir, replace(load_record(cdir), description=change.description))
        return {"ReplicationGroup": shapes.replication_group(self.api.view(name), self.api.account)}

    async def _checked_topology(self, cdir: ClusterDir, topology: dict[str, Any]) -> Path:
        """Apply's dry run of the new topology against the running cluster (what apply
        refuses is refused here, before anything changes); the topology file once it passes."""
        from cachefleet.ops import apply

        proposed = cdir.root / f".{TOPOLOGY_FILE}.proposed"
        proposed.write_text(yaml.safe_dump(topology, sort_keys=False))
        printed: list[str] = []
        try:
            code = await apply.apply(
                str(proposed),
                state_dir=str(self.api.home),
                dry_run=True,
                assume_yes=True,
                as_json=True,
                out=printed.append,
            )
        except InvalidInput as exc:
            proposed.unlink(missing_ok=True)
            field = modification.FIELDS.get(exc.field, exc.field)
            raise ApiError("InvalidParameterValue", f"{field}: {exc.message}") from None
        except CachefleetError as exc:
            proposed.unlink(missing_ok=True)
            raise ApiError("InvalidParameterCombination", str(exc)) from None
        steps = _steps(printed)
        if code != 0 or not steps:
            proposed.unlink(missing_ok=True)
            raise ApiError("InvalidParameterCombination", "No modifications were requested.")
        path = cdir.root / TOPOLOGY_FILE
        proposed.replace(path)
        return path

    def _start_apply(self, cdir: ClusterDir, path: Path, what: tuple[str, ...]) -> None:
        """`cachefleet apply PATH --yes` in its own session, so that it outlives `serve`."""
        cdir.logs.mkdir(parents=True, exist_ok=True)
        log_path = cdir.logs / APPLY_LOG
        argv = [sys.executable, "-m", "cachefleet", "apply", str(path), "--yes",
                "--state-dir", str(self.api.home)]  # fmt: skip
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.api.out(f"{cdir.name}: modifying ({', '.join(what)}): apply pid {child.pid}")
        self.api.run(cdir.name, "modifying", _watch(child, log_path))


async def _watch(child: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until apply exits (and is reaped: poll() collects its exit status)."""
    while (code := child.poll()) is None:
        await asyncio.sleep(POLL_S)
    if code != 0:
        raise CachefleetError(f"apply exited {code}; its output is in {log_path}")


def _steps(printed: list[str]) -> list[Any]:
    """The steps of apply's --json plan among what its dry run printed."""
    for text in reversed(printed):
        try:
            data = json.loads(text)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("steps"), list):
            return list(data["steps"])
    return []
