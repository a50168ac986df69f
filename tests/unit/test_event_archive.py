"""A purged cluster's events are kept 14 days in the state dir's events archive."""

from __future__ import annotations

from pathlib import Path

from cachefleet.event_archive import KEEP_S, archive, archive_path, archived, archived_names
from cachefleet.events import append_event, make_event
from cachefleet.state import ClusterDir

NOW = 2_000_000_000.0


def cluster_with_events(home: Path, name: str, times: list[float]) -> ClusterDir:
    cdir = ClusterDir(home, name)
    cdir.root.mkdir(parents=True)
    for ts in times:
        append_event(cdir.events_path, {**make_event("cluster_created", name), "ts": ts})
    return cdir


def test_archive_keeps_the_last_14_days_and_adds_to_an_earlier_clusters(tmp_path: Path) -> None:
    first = cluster_with_events(tmp_path, "shop", [NOW - KEEP_S - 1, NOW - 100])
    assert archive(first, NOW) == archive_path(tmp_path, "shop")
    assert [e["ts"] for e in archived(tmp_path, "shop", NOW)] == [NOW - 100]
    first.purge()
    again = cluster_with_events(tmp_path, "shop", [NOW - 10])  # the same name, made again
    archive(again, NOW)
    assert [e["ts"] for e in archived(tmp_path, "shop", NOW)] == [NOW - 100, NOW - 10]
    # read later, what has aged past 14 days is no longer shown (and the next archive drops it)
    assert [e["ts"] for e in archived(tmp_path, "shop", NOW + KEEP_S - 50)] == [NOW - 10]
    assert archived_names(tmp_path) == ["shop"]


def test_nothing_to_keep_leaves_no_archive(tmp_path: Path) -> None:
    cdir = cluster_with_events(tmp_path, "empty", [])
    assert archive(cdir, NOW) is None
    assert archived_names(tmp_path) == [] and archived(tmp_path, "empty", NOW) == []
