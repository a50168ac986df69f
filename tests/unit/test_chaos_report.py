"""The chaos report files from a result (no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cachefleet.chaos import checker, report
from cachefleet.chaos.checker import Op


def result() -> dict[str, Any]:
    history = [
        Op("w", "a", 1, 0.0, 0.1, "ok", "n1"),
        Op("w", "a", 2, 2.0, 3.0, "unknown", "n1"),
        Op("w", "a", 3, 3.0, 3.2, "ok", "n2"),
        Op("w", "b", 4, 0.0, 0.1, "ok", "n3"),
        Op("w", "b", 5, 2.0, 2.1, "ok", "n3"),
        Op("w", "b", 6, 2.1, 3.9, "ok", "n3"),
    ]
    trial = {
        "trial": 1,
        "faults": [{"t": 2.0, "what": "kill primary of shard 1 (n1, az-a)"}],
        "failovers": [],
        "timeline": "timeline-1.svg",
        **checker.check_trial(
            history, {"a": 3, "b": 6}, shard_of={"a": 1, "b": 2}, shards=[1, 2],
            fault_times=[2.0], targeted=[1], promotions=[], duration_s=4.0,
        ),
    }  # fmt: skip
    agg = checker.aggregate([trial])
    return {
        "scenario": "s", "topology": "t.yaml", "seed": 1, "workload_text": "w",
        "trials": [trial], "aggregate": agg,
        "expect": checker.expectations(agg, lost_writes=0, max_unavailable_s=3,
                                       split_brain_s=None),
        "passed": True,
    }  # fmt: skip


def test_the_summary_shows_the_shards_no_fault_hit(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    report.write_markdown(path, result())
    text = path.read_text()
    assert "| unavailability of affected shards (s) | 1.20 | 1.20 | 1.20 |" in text
    # shard 2 was not hit: its longest stretch without an acknowledged write is 2.1 -> 3.9
    assert "shards no fault hit (s) | 1.80 | 1.80 | 1.80 |" in text
    assert "| 1 | t=2.0s kill primary of shard 1 (n1, az-a) | 1: 1.20 | 2: 1.80 | 0 |" in text
    assert "Shards no fault hit: 1 shard-trials, 2 acknowledged and 0 failed" in text


def test_the_timeline_has_one_lane_per_shard(tmp_path: Path) -> None:
    r = result()
    path = tmp_path / "t.svg"
    report.write_timeline(
        path, title="s trial 1", duration_s=4.0, shards=[1, 2], shard_of={"a": 1, "b": 2},
        history=[Op("w", "a", 1, 0.0, 0.1, "ok"), Op("w", "b", 2, 0.0, 2.0, "unknown")],
        faults=r["trials"][0]["faults"], failovers=[],
    )  # fmt: skip
    svg = path.read_text()
    assert "shard 1" in svg and "shard 2" in svg and "kill primary of shard 1" in svg
    assert "#d33" in svg and "#3a3" in svg
