"""The chaos checker on synthetic histories."""

from __future__ import annotations

import pytest

from cachefleet.chaos.checker import (
    Op,
    aggregate,
    availability,
    check_trial,
    expectations,
    lost_writes,
    percentile,
    service,
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


def test_service_reports_the_longest_time_without_an_acknowledged_write() -> None:
    history = [w("k", 1, 0.9, 1.0), w("k", 2, 1.0, 1.2), w("k", 3, 1.2, 2.7), w("k", 4, 2.7, 2.8)]
    s = service(history, lambda k: True, 1.0, 3.0)
    assert (s.ok, s.failed) == (4, 0)
    assert s.max_gap_s == pytest.approx(1.5)  # 1.2 -> 2.7: the shard stalled without an error
    # nothing acknowledged at all: the whole stretch is one gap
    stalled = service([w("k", 1, 1.0, 2.0, "unknown")], lambda k: True, 1.0, 3.0)
    assert (stalled.ok, stalled.failed, stalled.max_gap_s) == (0, 1, pytest.approx(2.0))


def trial_history() -> list[Op]:
    """Shard 1 loses its primary at t=2 and is back at t=3.5; shard 2 keeps serving."""
    ops = []
    value = 0
    t = 0.0
    while t < 6.0:
        value += 1
        ops.append(w("b", value, t, t + 0.05, node="n2"))
        if t < 2.0 or t >= 3.5:
            ops.append(w("a", value, t, t + 0.05, node="n1" if t < 2 else "n1r"))
        elif t < 3.4:
            ops.append(w("a", value, t, t + 0.1, "unknown", node="n1"))
        t = round(t + 0.1, 3)
    return ops


def test_check_trial_separates_the_hit_shard_from_the_others() -> None:
    history = trial_history()
    final = {"a": max(o.value for o in history if o.key == "a" and o.outcome == "ok"),
             "b": max(o.value for o in history if o.key == "b")}  # fmt: skip
    got = check_trial(
        history, final, shard_of={"a": 1, "b": 2}, shards=[1, 2], fault_times=[2.0],
        targeted=[1], promotions=[(1, 3.3, "n1r")], duration_s=6.0,
    )  # fmt: skip
    a, b = got["availability"]["1"], got["availability"]["2"]
    assert a["affected"] and a["targeted"] and a["window_s"] == pytest.approx(1.55)
    assert not b["affected"] and not b["targeted"] and b["errors"] == 0
    assert b["max_gap_s"] < 0.2 and b["ok_writes"] > 30
    assert a["max_gap_s"] > 1.5
    assert got["lost_writes"] == 0 and got["split_brain_max_s"] == 0.0
    # an ack by the old primary after the promotion is a split brain, and a lost final value
    late = [*history, w("a", 10_000, 3.3, 3.45, node="n1")]
    got = check_trial(
        late, {**final, "a": 5}, shard_of={"a": 1, "b": 2}, shards=[1, 2], fault_times=[2.0],
        targeted=[1], promotions=[(1, 3.3, "n1r")], duration_s=6.0,
    )  # fmt: skip
    assert got["split_brain_s"]["1"] == pytest.approx(0.15)
    assert got["lost_writes"] == 1


def test_a_shard_that_never_recovers_counts_the_rest_of_the_trial() -> None:
    history = [w("a", 1, 0.0, 0.1), w("a", 2, 2.0, 2.5, "unknown")]
    got = check_trial(
        history, {"a": 1}, shard_of={"a": 1}, shards=[1], fault_times=[2.0], targeted=[1],
        promotions=[], duration_s=8.0,
    )  # fmt: skip
    assert got["availability"]["1"]["window_s"] == pytest.approx(6.0)
    assert got["availability"]["1"]["recovered"] is False


def shard(
    window: float | None, *, targeted: bool, gap: float, ok: int = 10, failed: int = 0
) -> dict:
    return {"window_s": window, "affected": window is not None, "targeted": targeted,
            "max_gap_s": gap, "ok_writes": ok, "failed_writes": failed}  # fmt: skip


def test_aggregate_reports_failover_times_and_the_shards_no_fault_hit() -> None:
    trials = [
        {"availability": {"1": shard(1.0, targeted=True, gap=1.1),
                          "2": shard(None, targeted=False, gap=0.01)},
         "lost_writes": 0, "split_brain_max_s": 0.0, "stale_reads": 0, "ops": 100,
         "indeterminate": 3},
        {"availability": {"1": shard(None, targeted=False, gap=0.02),
                          "2": shard(2.0, targeted=True, gap=2.1),
                          "3": shard(None, targeted=False, gap=0.5, failed=2)},
         "lost_writes": 2, "split_brain_max_s": 0.4, "stale_reads": 1, "ops": 50,
         "indeterminate": 1},
    ]  # fmt: skip
    agg = aggregate(trials)
    assert (agg["failover_p50_s"], agg["failover_max_s"]) == (1.0, 2.0)
    assert (agg["lost_writes"], agg["trials_with_loss"], agg["ops"]) == (2, 1, 150)
    other = agg["other_shards"]
    assert other["shard_trials"] == 3
    assert (other["ok_writes"], other["failed_writes"]) == (30, 2)
    assert other["max_gap_max_s"] == 0.5 and other["max_gap_p50_s"] == 0.02
    checks = expectations(agg, lost_writes=0, max_unavailable_s=3.0, split_brain_s=None)
    assert checks == {
        "lost_writes": {"limit": 0, "got": 2, "met": False},
        "max_unavailable_s": {"limit": 3.0, "got": 2.0, "met": True},
    }


def test_a_key_whose_slot_moved_to_another_shard_is_not_a_split_brain() -> None:
    # apply moved the key's slot to shard 4 ("other"): its acknowledgements there are right
    history = [w("k", 1, 0, 1.0, node="old"), w("k", 2, 0, 3.5, node="other")]
    promotions = [(2.0, "new")]
    assert split_brain_window(history, lambda k: True, promotions) == pytest.approx(1.5)
    members = {"old", "new"}
    assert split_brain_window(history, lambda k: True, promotions, members) == 0.0
    history.append(w("k", 3, 0, 2.5, node="old"))  # the shard's old primary still is one
    assert split_brain_window(history, lambda k: True, promotions, members) == pytest.approx(0.5)
