"""`events --since/--type/--tail`: which logged events are shown (pure), and the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import cli

from cachefleet.errors import InvalidInput
from cachefleet.events import EventFilter, append_event, parse_since

NOW = 1_800_000_000.0


def ev(kind: str, ts: float, **fields: object) -> dict[str, object]:
    return {"v": 1, "ts": ts, "type": kind, "cluster": "c", **fields}


LOG = [
    ev("cluster_created", NOW - 7200),
    ev("sdown", NOW - 900, node="n1"),
    ev("odown", NOW - 800, node="n1"),
    ev("switch_primary", NOW - 700, shard=1),
    ev("sdown", NOW - 30, node="n2"),
    ev("sdown_cleared", NOW - 10, node="n2"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", NOW - 600),
        ("90s", NOW - 90),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        ("0.5m", NOW - 30),
        ("2027-01-15T08:00:00Z", 1_800_000_000.0),  # NOW is 2027-01-15T08:00:00Z
        ("2027-01-15T08:00:00", 1_800_000_000.0),  # no offset: UTC
        ("2027-01-15T09:00:00+01:00", 1_800_000_000.0),
    ],
)
def test_since_takes_ages_and_iso_times(text: str, expected: float) -> None:
    assert parse_since(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "10", "-5m", "10 m", "2027-13-01"])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(InvalidInput, match="--since"):
        parse_since(text, NOW)


def kinds(events: list[dict[str, object]]) -> list[object]:
    return [e["type"] for e in events]


@pytest.mark.parametrize(
    ("since", "types", "tail", "expected"),
    [
        (None, [], None, kinds(LOG)),
        ("20m", [], None, ["sdown", "odown", "switch_primary", "sdown", "sdown_cleared"]),
        ("1m", [], None, ["sdown", "sdown_cleared"]),
        (None, ["sdown"], None, ["sdown", "sdown"]),
        (None, ["sdown", "odown"], None, ["sdown", "odown", "sdown"]),
        ("1m", ["sdown"], None, ["sdown"]),
        (None, [], 2, ["sdown", "sdown_cleared"]),
        (None, ["sdown", "odown"], 2, ["odown", "sdown"]),
        (None, [], 0, []),
        (None, [], 100, kinds(LOG)),
        ("1s", [], None, []),
    ],
)
def test_filter_selects_by_age_type_and_tail(
    since: str | None, types: list[str], tail: int | None, expected: list[str]
) -> None:
    selection = EventFilter.build(since=since, types=types, tail=tail, now=NOW)
    assert kinds(selection.backlog(LOG)) == expected


def test_events_without_a_usable_time_are_not_since_anything() -> None:
    selection = EventFilter.build(since="1h", types=[], tail=None, now=NOW)
    assert not selection.accepts({"type": "sdown"})
    assert not selection.accepts({"type": "sdown", "ts": "soon"})
    assert EventFilter().accepts({"type": "sdown"})  # no --since: shown


def test_unknown_type_and_negative_tail_are_refused() -> None:
    with pytest.raises(InvalidInput, match="'exploded' is not an event type"):
        EventFilter.build(since=None, types=["exploded"], tail=None, now=NOW)
    with pytest.raises(InvalidInput, match="--tail"):
        EventFilter.build(since=None, types=[], tail=-1, now=NOW)


def test_cli_events_filters_the_log(tmp_path: Path) -> None:
    now = time.time()
    root = tmp_path / "state" / "demo"
    root.mkdir(parents=True)
    log = root / "events.jsonl"
    append_event(log, ev("cluster_created", now - 3600))
    append_event(log, ev("sdown", now - 1800, node="old"))
    for i in range(3):
        append_event(log, ev("sdown", now - 60 + i, node=f"n{i}"))
    append_event(log, ev("odown", now - 5, node="n2"))
    base = ["events", "demo", "--state-dir", str(tmp_path / "state"), "--json"]

    out = cli(*base, "--type", "sdown", "--since", "10m", "--tail", "2").stdout
    assert [json.loads(line)["node"] for line in out.splitlines()] == ["n1", "n2"]
    out = cli(*base, "--type", "sdown", "--type", "odown", "--since", "10m").stdout
    assert [json.loads(line)["type"] for line in out.splitlines()] == ["sdown"] * 3 + ["odown"]
    text = cli("events", "demo", "--state-dir", str(tmp_path / "state"), "--tail", "1").stdout
    assert text.split()[1] == "odown"
    bad = cli(*base, "--since", "yesterday", check=False)
    assert bad.returncode != 0 and "--since" in bad.stderr
