"""The chaos checker on synthetic histories."""

from __future__ import annotations

import pytest

from cachefleet.chaos.checker import (
    Op,
    availability,
    lost_writes,
    percentile,
    split_brain_window,
    stale_reads,
)


def w(key: str, value: int, start: float, end: float, outcome: str = "ok", node: str = "a") -> Op:
    return Op("w", key, value, start, end, outcome, node)


def r(key: str, value: int | None, start: float, end: float) -> Op:
    return Op("r", key, value, start, end, "ok")


def test_an_acknowledged_write_missing_at_the_end_is_lost() -> None:
    history = [w("k", 1, 0.0, 0.1), w("k", 2, 0.2, 0.3)]
    lost = lost_writes(history, {"k": 1})
    assert [(x.key, x.value, x.final) for x in lost] == [("k", 2, 1)]


def test_a_missing_key_is_lost() -> None:
    assert len(lost_writes([w("k", 5, 0, 0.1)], {"k": None})) == 1


def test_an_overwritten_write_is_not_lost() -> None:
    history = [w("k", 1, 0.0, 0.1), w("k", 2, 0.2, 0.3)]
    assert lost_writes(history, {"k": 2}) == []


@pytest.mark.parametrize("outcome", ["unknown", "error"])
def test_an_indeterminate_write_is_never_counted(outcome: str) -> None:
    # nothing acknowledged: nothing can be lost, whatever the final value
    assert lost_writes([w("k", 7, 0, 1, outcome)], {"k": None}) == []
    # a later indeterminate write may legitimately be what the key holds at the end...
    history = [w("k", 1, 0.0, 0.1), w("k", 2, 0.2, 0.5, outcome)]
    assert lost_writes(history, {"k": 2}) == []
    # ...or not have been applied at all
    assert lost_writes(history, {"k": 1}) == []
    # but it does not excuse an unrelated final value
    assert len(lost_writes(history, {"k": 99})) == 1


def test_availability_window_from_fault_to_first_success() -> None:
    history = [
        w("k", 1, 0.0, 0.1),
        w("k", 2, 1.0, 1.5, "unknown"),
        w("k", 3, 1.5, 1.6, "error"),
        w("k", 4, 1.6, 2.4),
        w("other", 5, 1.1, 1.2),
    ]
    a = availability(history, 1.0, lambda k: k == "k")
    assert a.window_s == pytest.approx(1.4)
    assert a.errors == 2
    assert a.error_time_s == pytest.approx(0.6)


def test_availability_counts_only_writes_started_after_the_fault() -> None:
    # a write in flight at the fault that succeeds does not prove the shard is available
    history = [w("k", 1, 0.9, 1.05), w("k", 2, 1.1, 1.2, "unknown"), w("k", 3, 2.0, 2.1)]
    assert availability(history, 1.0, lambda k: True).window_s == pytest.approx(1.1)


def test_no_success_after_the_fault_has_no_window() -> None:
    history = [w("k", 1, 1.1, 1.2, "unknown")]
    assert availability(history, 1.0, lambda k: True).window_s is None


def test_a_clean_handover_has_no_split_brain() -> None:
    history = [w("k", 1, 0, 1.0, node="old"), w("k", 2, 0, 2.0, node="new")]
    assert split_brain_window(history, lambda k: True, [(1.5, "new")]) == 0.0
    # failed writes on the old node do not count as acknowledgements
    history.append(w("k", 3, 0, 2.5, "unknown", node="old"))
    assert split_brain_window(history, lambda k: True, [(1.5, "new")]) == 0.0


def test_handovers_back_and_forth_are_not_a_split_brain() -> None:
    # a rolling restart: a -> b at 10 s, b -> a at 20 s, each side acknowledging in turn
    acks = [(5, "a"), (9, "a"), (11, "b"), (19, "b"), (21, "a"), (29, "a")]
    history = [w("k", i, 0, float(t), node=n) for i, (t, n) in enumerate(acks)]
    assert split_brain_window(history, lambda k: True, [(10.0, "b"), (20.0, "a")]) == 0.0
    # but the old primary still acknowledging 1 s after the handover is one
    history.append(w("k", 99, 0, 11.0, node="a"))
    assert split_brain_window(history, lambda k: True, [(10.0, "b"), (20.0, "a")]) == pytest.approx(
        1.0
    )


def test_stale_read_is_found() -> None:
    history = [w("k", 1, 0.0, 0.1), w("k", 2, 0.2, 0.3), r("k", 1, 0.5, 0.6)]
    stale = stale_reads(history)
    assert [(s.key, s.read_value, s.expected_at_least) for s in stale] == [("k", 1, 2)]


def test_concurrent_read_is_not_stale() -> None:
    # the read started before the second write was acknowledged: either value is fine
    history = [w("k", 1, 0.0, 0.1), w("k", 2, 0.2, 0.5), r("k", 1, 0.4, 0.6)]
    assert stale_reads(history) == []


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0
    assert percentile([], 50) is None


def test_old_primary_acknowledging_after_the_promotion_is_a_split_brain() -> None:
    # the client only ever reached the old primary: no overlap with the new one, but the
    # old one acknowledged for 1.5 s after the new one was promoted at t=2.0
    history = [w("k", 1, 0, 1.0, node="old"), w("k", 2, 0, 3.5, node="old")]
    assert split_brain_window(history, lambda k: True, [(2.0, "new")]) == pytest.approx(1.5)
    assert split_brain_window(history, lambda k: True, [(4.0, "new")]) == 0.0
    # acknowledgements by the new primary itself are not a split brain
    assert split_brain_window([w("k", 3, 0, 3.0, node="new")], lambda k: True, [(2.0, "new")]) == 0
