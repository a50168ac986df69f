"""Events that outlive their cluster.

`down --purge` removes a cluster's directory, event log included; as the managed service
keeps a deleted group's events for 14 days, the log is first appended to
``<state-dir>/events-archive/<name>.jsonl`` (trimmed to those 14 days), which the API's
DescribeEvents and `cachefleet events NAME` read once the cluster is gone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cachefleet.events import append_event, read_events
from cachefleet.state import ClusterDir

ARCHIVE_DIR = "events-archive"
KEEP_S = 14 * 86400.0


def archive_path(home: Path, name: str) -> Path:
    return home / ARCHIVE_DIR / f"{name}.jsonl"


def _ts(event: dict[str, Any]) -> float:
    ts = event.get("ts")
    return float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else 0.0


def archive(cdir: ClusterDir, now: float | None = None) -> Path | None:
    """Keep the cluster's events (those of the last 14 days) in the archive, beside any
    kept from an earlier cluster of the same name; the archive's path, or None when there
    was nothing to keep."""
    now = time.time() if now is None else now
    path = archive_path(cdir.home, cdir.name)
    kept = [e for e in read_events(path) + read_events(cdir.events_path) if _ts(e) >= now - KEEP_S]
    if not kept:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    for event in kept:
        append_event(tmp, event)
    tmp.replace(path)
    return path


def archived(home: Path, name: str, now: float | None = None) -> list[dict[str, Any]]:
    """The archived events of a purged cluster of that name, of the last 14 days."""
    now = time.time() if now is None else now
    return [e for e in read_events(archive_path(home, name)) if _ts(e) >= now - KEEP_S]


def archived_names(home: Path) -> list[str]:
    base = home / ARCHIVE_DIR
    if not base.is_dir():
        return []
    return sorted(p.stem for p in base.glob("*.jsonl"))
