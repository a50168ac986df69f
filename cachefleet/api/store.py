"""What the API reads and keeps in the state dir: the clusters there, each as a
:class:`~cachefleet.api.shapes.ClusterView`, and ``<cluster>/api.json`` (the API's record:
description, node type as asked, tags)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cachefleet.api.shapes import ClusterView, Record
from cachefleet.errors import CachefleetError
from cachefleet.plan import Plan
from cachefleet.proc import live_processes
from cachefleet.state import ClusterDir

RECORD_FILE = "api.json"
#: cachefleet.ops.apply's marker, present while a change is under way.
MODIFYING = "modifying.json"


def record_path(cdir: ClusterDir) -> Path:
    return cdir.root / RECORD_FILE


def load_record(cdir: ClusterDir) -> Record:
    try:
        return Record.from_dict(json.loads(record_path(cdir).read_text()))
    except (OSError, ValueError):
        return Record()


def save_record(cdir: ClusterDir, record: Record) -> None:
    cdir.root.mkdir(parents=True, exist_ok=True)
    path = record_path(cdir)
    tmp = path.with_name(f".api.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=1))
    tmp.replace(path)


class Store:
    """The clusters under one state dir. Plans are parsed once per file version (a Describe
    of many clusters reads only what changed)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._plans: dict[str, tuple[float, Plan]] = {}

    def names(self) -> list[str]:
        if not self.home.is_dir():
            return []
        return sorted(
            p.name
            for p in self.home.iterdir()
            if p.is_dir() and ((p / "plan.json").exists() or (p / RECORD_FILE).exists())
        )

    def plan(self, cdir: ClusterDir) -> Plan | None:
        try:
            mtime = cdir.plan_path.stat().st_mtime
        except OSError:
            return None
        cached = self._plans.get(cdir.name)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            plan = cdir.load_plan()
        except (CachefleetError, OSError, ValueError, KeyError):
            return None
        self._plans[cdir.name] = (mtime, plan)
        return plan

    def view(
        self, name: str, operation: str | None, engine_versions: dict[str, str]
    ) -> ClusterView:
        """`operation` is what the server is doing to the cluster (creating, deleting,
        modifying), which wins over what the files say."""
        cdir = ClusterDir(self.home, name)
        plan = self.plan(cdir)
        record = load_record(cdir)
        layout = cdir.load_layout() if plan is not None else None
        if operation is not None:
            status = operation
        elif record.failure is not None:
            status = "create-failed"
        elif plan is None or not live_processes(cdir):
            status = "stopped" if plan is not None else "creating"
        elif layout is None:
            status = "creating"
        elif (cdir.root / MODIFYING).exists():  # `apply` is changing it (or was interrupted)
            status = "modifying"
        else:
            status = "available"
        created = record.created
        if created is None:
            try:
                created = cdir.plan_path.stat().st_mtime
            except OSError:
                created = 0.0
        engine = plan.topology.engine if plan else "valkey"
        return ClusterView(
            name=name,
            plan=plan,
            layout=layout,
            status=status,
            record=record,
            created=created,
            engine_version=engine_versions.get(engine, ""),
        )
