"""`cachefleet logs`: lines of every kind become records; files merge by time; tails follow
rotation."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from cachefleet.ops.logs import (
    FileTail,
    LogRecord,
    format_record,
    log_files,
    merged,
    parse_line,
    selected,
)


def structlog_line(ts: str, event: str, **fields: object) -> str:
    return json.dumps({"event": event, "level": "info", "logger": "x", "timestamp": ts, **fields})


def test_structlog_json_line() -> None:
    line = structlog_line("2026-11-29T06:15:08.107653Z", "supervisor_started", cluster="c", n=3)
    rec = parse_line("supervisor", line, 0.0)
    assert rec == LogRecord(
        ts=datetime.fromisoformat("2026-11-29T06:15:08.107653+00:00").timestamp(),
        process="supervisor",
        level="info",
        event="supervisor_started",
        fields={"cluster": "c", "n": 3},
    )


def test_engine_line_in_local_time() -> None:
    line = "24797:M 29 Nov 2026 06:15:07.386 # WARNING: Changing databases number\n"
    rec = parse_line("node.c-0001-001", line, 0.0)
    assert rec is not None
    expected = datetime(2026, 11, 29, 6, 15, 7, 386000).astimezone().timestamp()
    assert rec.ts == pytest.approx(expected)
    assert (rec.level, rec.event, rec.fields) == (
        "warning",
        "WARNING: Changing databases number",
        {"pid": 24797},
    )
    info = parse_line("n", "1:S 1 Dec 2026 00:00:00.000 * Ready to accept connections", 0.0)
    assert info is not None and info.level == "info"


@pytest.mark.parametrize(
    "line", ["Traceback (most recent call last):", '{"not closed', '["a", "list"]', "  File x"]
)
def test_text_takes_the_time_of_the_line_before(line: str) -> None:
    rec = parse_line("router", line, 123.5)
    assert rec == LogRecord(123.5, "router", "output", line)


def test_blank_lines_are_skipped() -> None:
    assert parse_line("router", "  \n", 1.0) is None


def test_human_line_leaves_out_the_cluster() -> None:
    rec = LogRecord(0.25, "sentinel.s1", "info", "decision", {"cluster": "c", "reason": "OK"})
    assert format_record(rec, width=12) == (
        "1970-01-01T00:00:00.250Z sentinel.s1  info    decision reason=OK"
    )


@pytest.mark.parametrize(
    ("process", "wanted", "expected"),
    [
        ("sentinel.s1", [], True),
        ("sentinel.s1", ["sentinel"], True),
        ("sentinel.s1", ["sentinel.s1"], True),
        ("sentinel.s1", ["sentinel.s2"], False),
        ("router.1", ["router"], True),
        ("router", ["router"], True),
        ("node.c-0001-001", ["c-0001-001"], True),
        ("node.c-0001-001", ["node"], True),
        ("node.c-0001-001", ["agent"], False),
        ("supervisor", ["sup"], False),
    ],
)
def test_process_selection(process: str, wanted: list[str], expected: bool) -> None:
    assert selected(process, wanted) is expected


def test_files_oldest_rotation_first_and_merged_by_time(tmp_path: Path) -> None:
    def write(name: str, *lines: str) -> None:
        (tmp_path / name).write_text("".join(line + "\n" for line in lines))

    write("router.log.2", structlog_line("2026-01-01T00:00:01Z", "a"))
    write("router.log.1", structlog_line("2026-01-01T00:00:03Z", "c"))
    write("router.log", structlog_line("2026-01-01T00:00:05Z", "e"))
    write("sentinel.s1.log", structlog_line("2026-01-01T00:00:02Z", "b"))
    write("sentinel.s1.out", "Traceback", "  boom")
    os.utime(tmp_path / "sentinel.s1.out", (0, 1_767_225_604))  # 2026-01-01T00:00:04Z
    write("ignored.txt", "x")
    files = log_files(tmp_path)
    assert [f.path.name for f in files] == [
        "router.log.2",
        "router.log.1",
        "router.log",
        "sentinel.s1.log",
        "sentinel.s1.out",
    ]
    assert [(r.process, r.event) for r in merged(files)] == [
        ("router", "a"),
        ("sentinel.s1", "b"),
        ("router", "c"),
        ("sentinel.s1", "Traceback"),
        ("sentinel.s1", "  boom"),
        ("router", "e"),
    ]


def test_tail_reads_whole_lines_and_follows_a_rotation(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    tail = FileTail(log, "router")
    assert tail.read() == []  # not there yet
    log.write_text(structlog_line("2026-01-01T00:00:01Z", "one") + "\n" + '{"event": "tw')
    assert [r.event for r in tail.read()] == ["one"]
    with open(log, "a") as f:
        f.write('o", "timestamp": "2026-01-01T00:00:02Z"}\n')
        f.write(structlog_line("2026-01-01T00:00:03Z", "three") + "\n")
    log.rename(tmp_path / "router.log.1")  # rotated before the tail read "three"
    log.write_text(structlog_line("2026-01-01T00:00:04Z", "four") + "\n")
    assert [r.event for r in tail.read()] == ["two", "three", "four"]
    with open(log, "a") as f:
        f.write(structlog_line("2026-01-01T00:00:05Z", "five") + "\n")
    assert [r.event for r in tail.read()] == ["five"]


def test_follow_goes_on_exactly_where_the_backlog_ended(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    log.write_text(
        structlog_line("2026-01-01T00:00:01Z", "one") + "\n" + '{"event": "two", "timest'
    )
    (tmp_path / "router.log.1").write_text(structlog_line("2026-01-01T00:00:00Z", "zero") + "\n")
    tails: dict[Path, FileTail] = {}
    assert [r.event for r in merged(log_files(tmp_path), tails)] == ["zero", "one"]
    assert list(tails) == [log]  # rotated files are not followed
    with open(log, "a") as f:
        f.write('amp": "2026-01-01T00:00:02Z"}\n')
        f.write(structlog_line("2026-01-01T00:00:03Z", "three") + "\n")
    assert [r.event for r in tails[log].read()] == ["two", "three"]
