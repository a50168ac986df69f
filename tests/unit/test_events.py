"""The event log: appended whole lines, read back incrementally."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachefleet.events import EventTail, append_event, format_event, make_event, read_events


def test_tail_returns_only_new_whole_events(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    tail = EventTail(log)
    assert tail.read() == []  # no file yet
    append_event(log, make_event("sdown", "c", node="n1"))
    assert [e["node"] for e in tail.read()] == ["n1"]
    with open(log, "ab") as f:
        f.write(b'{"type": "odown", "node"')  # a writer half-way through a line
    assert tail.read() == []
    with open(log, "ab") as f:
        f.write(b': "n2"}\n')
    assert [e["node"] for e in tail.read()] == ["n2"]
    assert [e["type"] for e in read_events(log)] == ["sdown", "odown"]


def test_unknown_event_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        make_event("exploded", "c")


def test_format_names_type_and_fields() -> None:
    line = format_event({"v": 1, "ts": 0.5, "type": "switch_primary", "cluster": "c", "shard": 2})
    assert line.startswith("1970-01-01T00:00:00.500Z switch_primary")
    assert line.endswith("shard=2")
