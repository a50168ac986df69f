"""Typed events: published on the bus topic ``events`` and appended to the event log."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cachefleet.errors import InvalidInput, StateError
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
        # memcached clusters: nodes added or removed, Auto Discovery's new version
        "node_added",
        "node_removed",
        "discovery_version",
        # snapshots (backups)
        "snapshot_started",
        "snapshot_completed",
        "snapshot_failed",
        "snapshot_deleted",
        # apply: a running cluster changed online
        "modify_started",
        "modify_completed",
        "modify_failed",
        "slots_migrated",
        "parameter_changed",
        # alarms on the cluster's metrics (cachefleet.alarms)
        "alarm_state_changed",
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


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_since(text: str, now: float) -> float:
    """``--since``: a relative age (``90s``, ``10m``, ``2h``, ``1d``) or an ISO 8601 time
    (UTC unless it names an offset), as a Unix timestamp."""
    raw = text.strip()
    m = _RELATIVE.fullmatch(raw)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise InvalidInput(
            "--since", "", f"{raw!r} is neither a relative age (10m, 2h, 1d) nor an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass(frozen=True)
class EventFilter:
    """Which events `events` prints: not older than `since`, of one of `types` (all when
    empty); `tail` keeps the last N of those already logged (follow prints every new one)."""

    since: float | None = None
    types: frozenset[str] = frozenset()
    tail: int | None = None

    @classmethod
    def build(
        cls, *, since: str | None, types: Collection[str], tail: int | None, now: float
    ) -> EventFilter:
        unknown = sorted(set(types) - EVENT_TYPES)
        if unknown:
            raise InvalidInput(
                "--type",
                "",
                f"{unknown[0]!r} is not an event type ({', '.join(sorted(EVENT_TYPES))})",
            )
        if tail is not None and tail < 0:
            raise InvalidInput("--tail", "", f"{tail} must not be negative")
        return cls(
            since=None if since is None else parse_since(since, now),
            types=frozenset(types),
            tail=tail,
        )

    def accepts(self, event: dict[str, Any]) -> bool:
        if self.types and event.get("type") not in self.types:
            return False
        if self.since is not None:
            ts = event.get("ts")
            if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < self.since:
                return False
        return True

    def backlog(self, events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events already in the log that are shown: accepted ones, the last `tail`."""
        kept = [e for e in events if self.accepts(e)]
        if self.tail is not None:
            kept = kept[len(kept) - self.tail :] if self.tail else []
        return kept


def follow_events(
    name: str,
    *,
    state_dir: str | None,
    follow: bool,
    as_json: bool,
    out: Callable[[str], None],
    poll_s: float = 0.2,
    selection: EventFilter | None = None,
) -> int:
    """Print the event log; with `follow`, keep printing new events until interrupted."""
    cdir = ClusterDir(state_home(state_dir), name)
    if not cdir.root.exists():
        raise StateError(f"no cluster named {name!r} under {cdir.home}")
    selection = selection or EventFilter()
    tail = EventTail(cdir.events_path)
    try:
        batch = selection.backlog(tail.read())
        while True:
            for event in batch:
                out(json.dumps(event) if as_json else format_event(event))
            if not follow:
                return 0
            time.sleep(poll_s)
            batch = [e for e in tail.read() if selection.accepts(e)]
    except KeyboardInterrupt:
        return 0
