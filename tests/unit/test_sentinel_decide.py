"""Table-driven tests for the sentinel's pure decisions (no sockets, no asyncio): SDOWN,
ODOWN, votes, the stall guard, settling, and the start of a failover (`next_actions`)."""

from __future__ import annotations

import pytest

from cachefleet.messages import VoteRequest
from sentinel.decide import (
    Hello,
    Probe,
    StallGuard,
    VoteDecision,
    VoteRefusal,
    VoteState,
    decide_vote,
    in_promotion_grace,
    is_elected,
    is_odown,
    is_sdown,
    majority,
    shard_settling,
)

NOW = 1000.0

# --- builders ------------------------------------------------------------------------------


def probe(*, last_ok: float | None, first_probe: float = 0.0) -> Probe:
    return Probe(
        node="n1",
        last_ok=last_ok,
        first_probe=first_probe,
        role="primary",
        repl_offset=0,
        link_up=True,
        link_down_since_s=0.0,
    )


def hello(
    sentinel: str, *, sdown: tuple[str, ...] = ("p1",), age: float = 0.0, stalled: bool = False
) -> Hello:
    return Hello(
        sentinel=sentinel,
        zone=f"az-{sentinel}",
        sdown=frozenset(sdown),
        received_at=NOW - age,
        stalled=stalled,
    )


def hellos(*hs: Hello) -> dict[str, Hello]:
    return {h.sentinel: h for h in hs}


def request(candidate: str = "s2", *, epoch: int = 5, config_epoch: int = 10) -> VoteRequest:
    return VoteRequest(
        candidate=candidate, failover_epoch=epoch, shard=1, primary="p1", config_epoch=config_epoch
    )


def vote(
    state: VoteState,
    req: VoteRequest,
    *,
    layout: int = 10,
    sdown: bool = True,
    stalled: bool = False,
    settling: bool = False,
) -> VoteDecision:
    return decide_vote(
        state,
        req,
        my_layout_epoch=layout,
        i_see_sdown=sdown,
        stalled=stalled,
        shard_settling=settling,
    )


# --- SDOWN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_ok", "first_probe", "now", "expected"),
    [
        pytest.param(None, 0.0, 4.999, False, id="never-replied-under-threshold"),
        pytest.param(None, 0.0, 5.0, True, id="never-replied-at-threshold"),
        pytest.param(None, 10.0, 12.0, False, id="never-replied-recently-started"),
        pytest.param(100.0, 0.0, 104.9, False, id="replied-just-under"),
        pytest.param(100.0, 0.0, 105.0, True, id="replied-then-silent"),
        pytest.param(100.0, 0.0, 200.0, True, id="long-silent"),
        pytest.param(100.0, 0.0, 100.0, False, id="just-replied"),
    ],
)
def test_is_sdown(last_ok: float | None, first_probe: float, now: float, expected: bool) -> None:
    assert is_sdown(probe(last_ok=last_ok, first_probe=first_probe), now, 5.0) is expected


# --- ODOWN ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hs", "quorum", "expected"),
    [
        pytest.param(hellos(hello("a"), hello("b")), 2, True, id="quorum-met"),
        pytest.param(hellos(hello("a"), hello("b", sdown=())), 2, False, id="quorum-not-met"),
        pytest.param(hellos(hello("a"), hello("b"), hello("c")), 2, True, id="above-quorum"),
        pytest.param(hellos(hello("a"), hello("b", age=11.0)), 2, False, id="stale-ignored"),
        pytest.param(hellos(hello("a"), hello("b", age=10.0)), 2, True, id="age-at-limit"),
        pytest.param(hellos(hello("a"), hello("b", stalled=True)), 2, False, id="stalled"),
        pytest.param(hellos(hello("a"), hello("b", sdown=("p2",))), 2, False, id="other-node"),
        pytest.param(hellos(hello("a")), 1, True, id="quorum-one"),
        pytest.param({}, 1, False, id="no-hellos"),
    ],
)
def test_is_odown(hs: dict[str, Hello], quorum: int, expected: bool) -> None:
    assert is_odown("p1", hs, NOW, quorum, 10.0) is expected


# --- votes ---------------------------------------------------------------------------------

FRESH = VoteState()
VOTED_S2 = VoteState(voted_epoch=5, voted_for="s2", voted_shard=1)
VOTED_S3 = VoteState(voted_epoch=5, voted_for="s3", voted_shard=1)


@pytest.mark.parametrize(
    ("state", "req", "kw", "reason"),
    [
        pytest.param(VOTED_S2, request(epoch=4), {}, VoteRefusal.STALE_EPOCH, id="stale-epoch"),
        pytest.param(VOTED_S3, request(), {}, VoteRefusal.ALREADY_VOTED, id="already-voted"),
        pytest.param(FRESH, request(), {"stalled": True}, VoteRefusal.STALLED, id="stalled"),
        pytest.param(
            FRESH, request(config_epoch=9), {}, VoteRefusal.STALE_LAYOUT, id="stale-layout"
        ),
        pytest.param(FRESH, request(), {"sdown": False}, VoteRefusal.NOT_SDOWN_HERE, id="no-sd"),
        pytest.param(
            FRESH, request(), {"settling": True}, VoteRefusal.SHARD_SETTLING, id="settling"
        ),
        # Order: the earlier check wins when several apply.
        pytest.param(
            VOTED_S3, request(), {"stalled": True}, VoteRefusal.ALREADY_VOTED, id="voted<stall"
        ),
        pytest.param(
            FRESH,
            request(config_epoch=1),
            {"stalled": True, "sdown": False},
            VoteRefusal.STALLED,
            id="stall<layout",
        ),
        pytest.param(
            FRESH,
            request(config_epoch=1),
            {"sdown": False, "settling": True},
            VoteRefusal.STALE_LAYOUT,
            id="layout<sdown",
        ),
        pytest.param(
            FRESH,
            request(),
            {"sdown": False, "settling": True},
            VoteRefusal.NOT_SDOWN_HERE,
            id="sdown<settling",
        ),
    ],
)
def test_vote_refusals_keep_state(
    state: VoteState, req: VoteRequest, kw: dict[str, bool], reason: VoteRefusal
) -> None:
    d = vote(state, req, **kw)
    assert (d.granted, d.reason, d.state) == (False, reason, state)


@pytest.mark.parametrize(
    ("state", "req", "expected"),
    [
        pytest.param(FRESH, request(), VoteState(5, "s2", 1), id="fresh-grant"),
        pytest.param(VOTED_S3, request(epoch=6), VoteState(6, "s2", 1), id="newer-epoch"),
        pytest.param(
            VoteState(5, None, None), request(), VoteState(5, "s2", 1), id="same-epoch-no-vote"
        ),
        pytest.param(FRESH, request(config_epoch=11), VoteState(5, "s2", 1), id="newer-layout-ok"),
    ],
)
def test_vote_grant(state: VoteState, req: VoteRequest, expected: VoteState) -> None:
    d = vote(state, req)
    assert (d.granted, d.reason, d.state) == (True, None, expected)


def test_vote_regrant_is_idempotent_even_if_conditions_changed() -> None:
    d = vote(VOTED_S2, request(), stalled=True, sdown=False, settling=True, layout=99)
    assert (d.granted, d.reason, d.state) == (True, None, VOTED_S2)


def test_one_vote_per_epoch() -> None:
    first = vote(FRESH, request("s2"))
    second = vote(first.state, request("s3"))
    assert first.granted and not second.granted
    assert second.reason is VoteRefusal.ALREADY_VOTED
    assert second.state == first.state


@pytest.mark.parametrize(
    ("configured", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_majority(configured: int, expected: int) -> None:
    assert majority(configured) == expected


@pytest.mark.parametrize(
    ("grants", "configured", "expected"),
    [
        pytest.param([], 1, False, id="0-of-1"),
        pytest.param(["s1"], 1, True, id="1-of-1"),
        pytest.param(["s1"], 2, False, id="1-of-2"),
        pytest.param(["s1", "s2"], 2, True, id="2-of-2"),
        pytest.param(["s1"], 3, False, id="1-of-3-never"),
        pytest.param(["s1", "s1", "s1"], 3, False, id="duplicates-count-once"),
        pytest.param(["s1", "s2"], 3, True, id="2-of-3"),
        pytest.param(["s1", "s2"], 4, False, id="2-of-4"),
        pytest.param(["s1", "s2", "s3"], 4, True, id="3-of-4"),
        pytest.param(["s1", "s2"], 5, False, id="2-of-5-even-if-quorum-2"),
        pytest.param(["s1", "s2", "s3"], 5, True, id="3-of-5"),
    ],
)
def test_is_elected(grants: list[str], configured: int, expected: bool) -> None:
    assert is_elected(grants, configured) is expected


# --- stall guard ---------------------------------------------------------------------------

GUARD = StallGuard(interval_s=1.0, threshold_s=2.0, cooldown_s=10.0)


@pytest.mark.parametrize(
    ("scheduled", "actual", "stalled_until"),
    [
        pytest.param(100.0, 100.1, 0.0, id="on-time"),
        pytest.param(100.0, 102.0, 0.0, id="late-at-threshold"),
        pytest.param(100.0, 102.5, 112.5, id="stall"),
    ],
)
def test_stall_guard_tick(scheduled: float, actual: float, stalled_until: float) -> None:
    assert GUARD.tick(scheduled, actual).stalled_until == stalled_until


@pytest.mark.parametrize(
    ("now", "expected"), [(102.5, True), (112.4, True), (112.5, False), (200.0, False)]
)
def test_stall_guard_cooldown(now: float, expected: bool) -> None:
    guard = GUARD.tick(100.0, 102.5)
    assert guard.stalled(now) is expected


def test_stall_guard_on_time_tick_keeps_cooldown() -> None:
    guard = GUARD.tick(100.0, 102.5).tick(103.5, 103.5)
    assert guard.stalled(110.0)
    assert not GUARD.stalled(0.0)


# --- settling ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("done_at", "now", "expected"),
    [
        pytest.param(None, NOW, False, id="never-failed-over"),
        pytest.param(NOW - 1.0, NOW, True, id="just-done"),
        pytest.param(NOW - 9.9, NOW, True, id="just-under"),
        pytest.param(NOW - 10.0, NOW, False, id="settled"),
    ],
)
def test_shard_settling(done_at: float | None, now: float, expected: bool) -> None:
    assert shard_settling(done_at, now, 10.0) is expected


@pytest.mark.parametrize(
    ("promoted_at", "now", "expected"),
    [
        pytest.param(None, NOW, False, id="never-promoted"),
        pytest.param(NOW, NOW, True, id="just-promoted"),
        pytest.param(NOW - 4.9, NOW, True, id="within-grace"),
        pytest.param(NOW - 5.0, NOW, False, id="grace-over"),
    ],
)
def test_in_promotion_grace(promoted_at: float | None, now: float, expected: bool) -> None:
    assert in_promotion_grace(promoted_at, now, 5.0) is expected
