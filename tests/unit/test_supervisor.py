"""The supervisor's restart decision: which missing processes come back now, and why not."""

from __future__ import annotations

import pytest

from cachefleet.ops.supervisor import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    STABLE_S,
    History,
    Hold,
    decide,
    record_restart,
)

EXPECTED = ["broker", "agent.az-a", "sentinel.s1", "router"]
ALL_LIVE = {name: 100 + i for i, name in enumerate(EXPECTED)}


def without(*names: str) -> dict[str, int]:
    return {k: v for k, v in ALL_LIVE.items() if k not in names}


def test_nothing_missing_nothing_restarted() -> None:
    d = decide(EXPECTED, ALL_LIVE, {}, stopping=False, now=10.0)
    assert d.restart == ()
    assert d.held == {}


def test_a_missing_process_is_restarted_at_once_the_first_time() -> None:
    d = decide(EXPECTED, without("router"), {}, stopping=False, now=10.0)
    assert [r.process for r in d.restart] == ["router"]


@pytest.mark.parametrize("missing", EXPECTED)
def test_every_kind_of_control_process_is_restarted(missing: str) -> None:
    d = decide(EXPECTED, without(missing), {}, stopping=False, now=10.0)
    assert [r.process for r in d.restart] == [missing]


def test_nothing_restarts_while_the_cluster_is_being_stopped() -> None:
    d = decide(EXPECTED, {}, {}, stopping=True, now=10.0)
    assert d.restart == ()
    assert d.held == dict.fromkeys(EXPECTED, Hold.STOPPING)


def test_a_process_that_dies_again_right_away_waits_for_its_backoff() -> None:
    history: dict[str, History] = {}
    decide(EXPECTED, without("sentinel.s1"), history, stopping=False, now=10.0)
    record_restart(history["sentinel.s1"], 10.0)
    # it died again 0.1 s later
    d = decide(EXPECTED, without("sentinel.s1"), history, stopping=False, now=10.1)
    assert d.restart == ()
    assert d.held == {"sentinel.s1": Hold.BACKOFF}
    d = decide(
        EXPECTED, without("sentinel.s1"), history, stopping=False, now=10.0 + BACKOFF_FIRST_S
    )
    assert [r.process for r in d.restart] == ["sentinel.s1"]
    assert d.restart[0].down_for_s == pytest.approx(BACKOFF_FIRST_S - 0.1)


def test_backoff_doubles_up_to_a_cap_and_resets_once_stable() -> None:
    h = History()
    waits = []
    for i in range(10):
        record_restart(h, float(i))
        waits.append(h.backoff_s)
    assert waits[0] == BACKOFF_FIRST_S
    assert waits[1] == 2 * BACKOFF_FIRST_S
    assert waits[-1] == BACKOFF_MAX_S
    assert h.restarts == 10
    history = {"router": h}
    decide(EXPECTED, ALL_LIVE, history, stopping=False, now=9.0 + STABLE_S)
    assert history["router"].backoff_s == 0.0


def test_missing_since_is_kept_across_ticks_and_cleared_when_back() -> None:
    history: dict[str, History] = {}
    decide(EXPECTED, without("broker"), history, stopping=True, now=5.0)
    d = decide(EXPECTED, without("broker"), history, stopping=False, now=7.0)
    assert d.restart[0].down_for_s == pytest.approx(2.0)
    decide(EXPECTED, ALL_LIVE, history, stopping=False, now=8.0)
    assert history["broker"].missing_since is None


def test_status_counts_restarts_since_the_cluster_was_last_started() -> None:
    from cachefleet.ops.status import restarts

    events = [
        {"type": "process_restarted", "process": "router"},
        {"type": "cluster_created"},
        {"type": "process_restarted", "process": "router"},
        {"type": "node_exited", "node": "x"},
        {"type": "process_restarted", "process": "router"},
        {"type": "process_restarted", "process": "broker"},
    ]
    assert restarts(events) == {"router": 2, "broker": 1}
