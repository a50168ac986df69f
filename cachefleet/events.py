"""Typed events: published on the bus topic ``events`` and appended to the event log."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachefleet.errors import StateError
from cachefleet.state import ClusterDir, state_home

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
        "process_restarted",
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


class EventTail:
    """Reads the events appended to an event log since the last call (whole lines only)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._pending = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        self.offset += len(chunk)
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        events = []
        for line in lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events


def format_event(event: dict[str, Any]) -> str:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(event.get("ts", 0))))
    ms = int(float(event.get("ts", 0)) * 1000) % 1000
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("v", "ts", "type", "cluster"))
    return f"{ts}.{ms:03d}Z {event.get('type', '?'):<20} {rest}"


def follow_events(
    name: str,
    *,
    state_dir: str | None,
    follow: bool,
    as_json: bool,
    out: Callable[[str], None],
    poll_s: float = 0.2,
) -> int:
    """Print the event log; with `follow`, keep printing new events until interrupted."""
    cdir = ClusterDir(state_home(state_dir), name)
    if not cdir.root.exists():
        raise StateError(f"no cluster named {name!r} under {cdir.home}")
    tail = EventTail(cdir.events_path)
    try:
        while True:
            for event in tail.read():
                out(json.dumps(event) if as_json else format_event(event))
            if not follow:
                return 0
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 0
