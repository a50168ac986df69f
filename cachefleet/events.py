"""Typed events: published on the bus topic ``events`` and appended to the event log."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

# Sentinel-style names an operator recognises.
EVENT_TYPES = frozenset(
    {
        "cluster_created",
        "cluster_stopped",
        "node_started",
        "node_exited",
        "node_replaced",
        "sdown",
        "sdown_cleared",
        "odown",
        "new_epoch",
        "vote_for_leader",
        "elected_leader",
        "failover_started",
        "switch_primary",
        "failover_completed",
        "failover_aborted",
        "no_quorum",
        "no_eligible_replica",
        "graceful_failover",
    }
)


def make_event(kind: str, cluster: str, **fields: Any) -> dict[str, Any]:
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}")
    return {"v": 1, "ts": time.time(), "type": kind, "cluster": cluster, **fields}


def append_event(path: Path, event: dict[str, Any]) -> None:
    """One JSON line, one O_APPEND write: concurrent writers never interleave."""
    line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
