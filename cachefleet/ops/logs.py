"""`cachefleet logs`: every process log of a cluster, merged by time.

Each process writes ``logs/<process>.log`` (structlog JSON lines, rotated to ``.log.1`` ..
``.log.3``; engines write their own text format there) and its raw output (a crash's
traceback) to ``logs/<process>.out``. This module reads them all, rotated files first, turns
every line into a :class:`LogRecord` (parsing is pure: :func:`parse_line`), merges them by
time and, with ``follow``, keeps printing what is appended, across rotations and restarts.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cachefleet.errors import StateError
from cachefleet.state import ClusterDir, state_home

# structlog's fields shown in the record's own columns, not repeated as key=value (a
# `process` field that names another process, as `process_restarted` does, is kept)
_OWN = ("timestamp", "level", "event", "logger")
# pid:role day Mon year HH:MM:SS.mmm level-char message (Valkey and Redis)
_ENGINE = re.compile(
    r"^(?P<pid>\d+):(?P<role>[A-Z]) (?P<when>\d{1,2} \w{3} \d{4} \d{2}:\d{2}:\d{2}\.\d{3}) "
    r"(?P<mark>[.\-*#]) (?P<msg>.*)$"
)
_ENGINE_LEVELS = {".": "debug", "-": "verbose", "*": "info", "#": "warning"}
_ROTATED = re.compile(r"^(?P<process>.+)\.log(?:\.(?P<n>\d+))?$")


@dataclass(frozen=True)
class LogRecord:
    ts: float
    process: str
    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "time": iso(self.ts),
            "process": self.process,
            "level": self.level,
            "event": self.event,
            "fields": self.fields,
        }


def iso(ts: float) -> str:
    when = datetime.fromtimestamp(ts, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_line(process: str, line: str, last_ts: float) -> LogRecord | None:
    """One log line as a record: a structlog JSON object, an engine line, or plain text (a
    traceback's line) that takes the time of the line before it. None for a blank line."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            ts = _iso_ts(data.get("timestamp"))
            fields = {k: v for k, v in data.items() if k not in _OWN}
            if fields.get("process") == process:
                del fields["process"]
            return LogRecord(
                ts=last_ts if ts is None else ts,
                process=process,
                level=str(data.get("level", "info")),
                event=str(data.get("event", "")),
                fields=fields,
            )
    m = _ENGINE.match(text)
    if m:
        try:  # engines log in local time
            ts = datetime.strptime(m["when"], "%d %b %Y %H:%M:%S.%f").astimezone().timestamp()
        except ValueError:
            ts = last_ts
        return LogRecord(ts, process, _ENGINE_LEVELS[m["mark"]], m["msg"], {"pid": int(m["pid"])})
    return LogRecord(last_ts, process, "output", text)


def _iso_ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_record(rec: LogRecord, width: int = 24) -> str:
    """One line for a terminal (the cluster's name, the same on every line, left out)."""
    rest = " ".join(f"{k}={_show(v)}" for k, v in rec.fields.items() if k != "cluster")
    head = f"{iso(rec.ts)} {rec.process:<{width}} {rec.level:<7} {rec.event}"
    return f"{head} {rest}" if rest else head


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else json.dumps(value)
    return json.dumps(value, separators=(",", ":"))


def selected(process: str, wanted: Iterable[str]) -> bool:
    """`PROCESS…` arguments: a full name (``sentinel.s1``), a kind (``sentinel``, ``node``,
    ``agent``, ``router``) or a node's name without ``node.``; nothing given: every process."""
    want = list(wanted)
    if not want:
        return True
    return any(process == w or process.startswith(w + ".") or process == f"node.{w}" for w in want)


@dataclass(frozen=True)
class LogFile:
    process: str
    path: Path
    rank: int  # older files first: .log.3 .. .log.1, then .log; the .out file apart


def log_files(logs_dir: Path) -> list[LogFile]:
    """Every log file of the cluster, oldest rotation first per process."""
    out: list[LogFile] = []
    if not logs_dir.is_dir():
        return out
    for path in sorted(logs_dir.iterdir()):
        if path.name.endswith(".out"):
            out.append(LogFile(path.name[:-4], path, 0))
            continue
        m = _ROTATED.match(path.name)
        if m:
            n = int(m["n"]) if m["n"] else 0
            out.append(LogFile(m["process"], path, -n))
    return sorted(out, key=lambda f: (f.process, f.path.suffix == ".out", f.rank))


class FileTail:
    """Whole lines appended to one file since the last read; starts over when the file was
    replaced (rotation, a restarted process) or truncated."""

    def __init__(self, path: Path, process: str) -> None:
        self.path, self.process = path, process
        self.offset = 0
        self.inode: int | None = None
        self.pending = b""
        self.last_ts = 0.0

    def read(self) -> list[LogRecord]:
        chunk = b""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != self.inode or st.st_size < self.offset:
                    if self.inode is not None:
                        chunk = self._rotated_rest()
                    self.inode, self.offset = st.st_ino, 0
                    if self.last_ts == 0.0:
                        self.last_ts = st.st_mtime
                f.seek(self.offset)
                fresh = f.read()
        except OSError:
            return []
        self.offset += len(fresh)
        chunk += fresh
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        records = []
        for raw in lines:
            rec = parse_line(self.process, raw.decode("utf-8", "replace"), self.last_ts)
            if rec is not None:
                self.last_ts = rec.ts
                records.append(rec)
        return records

    def _rotated_rest(self) -> bytes:
        """What was appended to the file we followed before it was rotated to ``.1``."""
        old = self.path.with_name(self.path.name + ".1")
        try:
            with open(old, "rb") as f:
                if os.fstat(f.fileno()).st_ino != self.inode:
                    return b""
                f.seek(self.offset)
                return f.read()
        except OSError:
            return b""


def read_file(lf: LogFile, tail: FileTail | None = None) -> Iterator[LogRecord]:
    """The records of one file, read line by line (a cluster's logs can be hundreds of MB:
    merging never holds more than one line per file). With `tail`, that tail then follows
    the file from the first byte not read here."""
    try:
        f = open(lf.path, "rb")  # noqa: SIM115 - closed when the generator ends
    except OSError:
        return
    with f:
        inode = os.fstat(f.fileno()).st_ino
        last_ts = os.fstat(f.fileno()).st_mtime
        consumed = 0
        try:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # a line still being written: not a whole record yet
                consumed += len(raw)
                rec = parse_line(lf.process, raw.decode("utf-8", "replace"), last_ts)
                if rec is not None:
                    last_ts = rec.ts
                    yield rec
        finally:
            if tail is not None:
                tail.inode, tail.offset, tail.last_ts = inode, consumed, last_ts


def merged(
    files: Iterable[LogFile], tails: dict[Path, FileTail] | None = None
) -> Iterator[LogRecord]:
    """Records of every file merged by time (each file is in time order already). With
    `tails`, a tail for each current (not rotated) file, set to follow on where this ends."""
    streams = []
    for f in files:
        tail = None
        if tails is not None and f.rank == 0:
            tail = tails[f.path] = FileTail(f.path, f.process)
        streams.append(read_file(f, tail))
    return heapq.merge(*streams, key=lambda r: r.ts)


def show_logs(
    name: str,
    *,
    state_dir: str | None,
    processes: list[str],
    follow: bool,
    as_json: bool,
    out: Callable[[str], None],
    poll_s: float = 0.25,
) -> int:
    """Print the cluster's logs merged by time; with `follow`, new lines until Ctrl-C."""
    cdir = ClusterDir(state_home(state_dir), name)
    if not cdir.root.exists():
        raise StateError(f"no cluster named {name!r} under {cdir.home}")

    def render(rec: LogRecord) -> str:
        return json.dumps(rec.to_json()) if as_json else format_record(rec)

    def wanted() -> list[LogFile]:
        return [f for f in log_files(cdir.logs) if selected(f.process, processes)]

    try:
        # Then follow the current files only (rotated ones do not grow) from where that ended.
        tails: dict[Path, FileTail] = {}
        for rec in merged(wanted(), tails):
            out(render(rec))
        if not follow:
            return 0
        while True:
            time.sleep(poll_s)
            for f in wanted():
                if f.rank == 0 and f.path not in tails:  # a process that started since
                    tails[f.path] = FileTail(f.path, f.process)
            batch = [rec for tail in tails.values() for rec in tail.read()]
            for rec in sorted(batch, key=lambda r: r.ts):
                out(render(rec))
    except KeyboardInterrupt:
        return 0
