"""Slot assignment at creation gives each primary only the slots of its range that nobody
holds yet (a node started from a snapshot's RDB claims the slots it has keys for)."""

from __future__ import annotations

import pytest

from cachefleet.ops.create import missing_ranges


@pytest.mark.parametrize(
    ("start", "end", "held", "runs"),
    [
        (0, 10, set(), [(0, 10)]),
        (0, 10, {0, 1, 5, 10}, [(2, 4), (6, 9)]),
        (0, 10, set(range(11)), []),
        (5, 5, set(), [(5, 5)]),
        (8192, 16383, {8192, 16383}, [(8193, 16382)]),
        (0, 3, {7, 8}, [(0, 3)]),  # held slots of other ranges do not matter
    ],
)
def test_missing_ranges(start: int, end: int, held: set[int], runs: list[tuple[int, int]]) -> None:
    assert missing_ranges(start, end, held) == runs
