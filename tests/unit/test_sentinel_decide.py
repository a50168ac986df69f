"""Table-driven tests for the sentinel's pure decisions (no sockets, no asyncio): SDOWN,
ODOWN, votes, the stall guard, settling, and the start of a failover (`next_actions`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cachefleet.messages import VoteRequest
from cachefleet.topology import Sentinels
from sentinel.decide import (
    SOFT_REFUSALS,
    Decision,
    Go,
    Hello,
    NoFailover,
    Probe,
    SentinelView,
    ShardView,
    StallGuard,
    Start,
    Tally,
    Timings,
    Voted,
    VoteDecision,
    VoteRefusal,
    VoteState,
    decide_vote,
    in_promotion_grace,
    is_elected,
    is_odown,
    is_sdown,
    live_sentinels,
    majority,
    next_actions,
    preferred_candidate,
    retry_delay,
    retry_delay_after_abort,
    shard_settling,
    tally,
    vote_on,
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


# --- the start of a failover: next_actions(view, timings, now) ------------------------------

T = Timings.from_settings(Sentinels(count=3, quorum=2))  # 0.1 s probes, 1 s down-after
OTHERS = ("s2", "s3")


def shard_view(**kw: Any) -> ShardView:
    base: dict[str, Any] = {"id": 1, "primary": "p1", "replicas": ("r1",)}
    return ShardView(**{**base, **kw})


def view_with_primary_down(
    *,
    sdown_by: tuple[str, ...] = ("s2",),
    live: tuple[str, ...] = OTHERS,
    my_sdown: tuple[str, ...] = ("p1",),
    hello_age: float = 0.0,
    stalled_hellos: tuple[str, ...] = (),
    quorum: int = 2,
    configured: int = 3,
    stalled: bool = False,
    promoted_at: dict[str, float] | None = None,
    shards: tuple[ShardView, ...] | None = None,
    **shard_kw: Any,
) -> SentinelView:
    """Me (s1) seeing shard 1's primary p1 down, `sdown_by` of the other sentinels too."""
    hs = {
        sid: Hello(
            sentinel=sid,
            zone=f"az-{sid}",
            sdown=frozenset({"p1"}) if sid in sdown_by else frozenset(),
            received_at=NOW - hello_age,
            stalled=sid in stalled_hellos,
        )
        for sid in live
    }
    return SentinelView(
        sentinel="s1",
        zone="az-s1",
        configured=configured,
        quorum=quorum,
        stalled=stalled,
        sdown=frozenset(my_sdown),
        hellos=hs,
        shards=shards if shards is not None else (shard_view(**shard_kw),),
        config_epoch=10,
        promoted_at=promoted_at or {},
    )


def only(v: SentinelView, now: float = NOW) -> Decision:
    (d,) = next_actions(v, T, now)
    return d


N, SCHED, CANCEL, ASK = (
    Start.NONE,
    Start.SCHEDULE_CANDIDACY,
    Start.CANCEL_CANDIDACY,
    Start.ASK_FOR_VOTES,
)
SOON = NOW + 0.05
VOTE = Start.VOTE_PENDING
PENDING = VoteRequest(candidate="s2", failover_epoch=11, shard=1, primary="p1", config_epoch=10)


@pytest.mark.parametrize(
    ("v", "action", "reason"),
    [
        pytest.param(
            view_with_primary_down(primary=None), N, NoFailover.NO_PRIMARY, id="no-primary"
        ),
        pytest.param(
            view_with_primary_down(promoted_at={"p1": NOW - 1.9}), N, NoFailover.GRACE, id="grace"
        ),
        pytest.param(
            view_with_primary_down(promoted_at={"p1": NOW - 2.0}), SCHED, Go.ODOWN, id="grace-over"
        ),
        pytest.param(
            view_with_primary_down(my_sdown=()), N, NoFailover.PRIMARY_OK, id="primary-ok"
        ),
        pytest.param(
            view_with_primary_down(my_sdown=("r1",)), N, NoFailover.PRIMARY_OK, id="replica-down"
        ),
        pytest.param(view_with_primary_down(stalled=True), N, NoFailover.STALLED, id="stalled"),
        pytest.param(
            view_with_primary_down(running=True), N, NoFailover.ALREADY_RUNNING, id="running"
        ),
        pytest.param(view_with_primary_down(sdown_by=()), N, NoFailover.NOT_ODOWN, id="only-me"),
        pytest.param(
            view_with_primary_down(sdown_by=(), live=()), N, NoFailover.NO_QUORUM, id="alone"
        ),
        pytest.param(
            view_with_primary_down(hello_age=1.01), N, NoFailover.NO_QUORUM, id="stale-hellos"
        ),
        pytest.param(
            view_with_primary_down(hello_age=1.0), SCHED, Go.ODOWN, id="hello-age-at-limit"
        ),
        pytest.param(
            view_with_primary_down(stalled_hellos=("s2",)),
            N,
            NoFailover.NOT_ODOWN,
            id="stalled-witness",
        ),
        pytest.param(
            view_with_primary_down(replicas=()), N, NoFailover.NO_REPLICAS, id="no-replicas"
        ),
        pytest.param(
            view_with_primary_down(done_at=NOW - 1.9), N, NoFailover.SETTLING, id="settling"
        ),
        pytest.param(view_with_primary_down(done_at=NOW - 2.0), SCHED, Go.ODOWN, id="settled"),
        pytest.param(
            view_with_primary_down(voted=Voted(NOW - 4.9, 6, "s3")),
            N,
            NoFailover.OTHER_LEADER,
            id="other-leader",
        ),
        pytest.param(
            view_with_primary_down(voted=Voted(NOW - 5.0, 6, "s3")),
            SCHED,
            Go.ODOWN,
            id="other-leader-timed-out",
        ),
        pytest.param(
            view_with_primary_down(voted=Voted(NOW - 1.0, 6, "s1")),
            SCHED,
            Go.ODOWN,
            id="voted-for-me",
        ),
        pytest.param(
            view_with_primary_down(retry_at=SOON), N, NoFailover.RETRY_LATER, id="retry-later"
        ),
        pytest.param(view_with_primary_down(retry_at=NOW), SCHED, Go.ODOWN, id="retry-now"),
        pytest.param(
            view_with_primary_down(quorum=1, sdown_by=(), live=()),
            N,
            NoFailover.NO_QUORUM,
            id="odown-alone-no-majority",
        ),
        pytest.param(
            view_with_primary_down(quorum=1, sdown_by=(), live=("s2",)),
            SCHED,
            Go.ODOWN,
            id="quorum-one-majority-live",
        ),
        pytest.param(view_with_primary_down(), SCHED, Go.ODOWN, id="odown-schedule"),
        pytest.param(
            view_with_primary_down(candidacy_at=SOON), N, NoFailover.CANDIDACY_DELAY, id="delay"
        ),
        pytest.param(view_with_primary_down(candidacy_at=NOW), ASK, Go.DELAY_OVER, id="ask"),
        pytest.param(
            view_with_primary_down(candidacy_at=NOW - 3.0), ASK, Go.DELAY_OVER, id="ask-late"
        ),
        # A request refused only because I did not see the primary down yet is answered
        # again as soon as I do: I vote for that candidate instead of competing.
        pytest.param(
            view_with_primary_down(pending=PENDING, pending_at=NOW - 0.5),
            VOTE,
            Go.PENDING_REQUEST,
            id="vote-pending",
        ),
        pytest.param(
            view_with_primary_down(pending=PENDING, pending_at=NOW, candidacy_at=SOON),
            VOTE,
            Go.PENDING_REQUEST,
            id="vote-pending-in-my-delay",
        ),
        pytest.param(
            view_with_primary_down(pending=PENDING, pending_at=NOW - 0.51),
            SCHED,
            Go.ODOWN,
            id="pending-too-old",
        ),
        pytest.param(
            view_with_primary_down(pending=replace(PENDING, primary="r1"), pending_at=NOW),
            SCHED,
            Go.ODOWN,
            id="pending-for-another-primary",
        ),
        pytest.param(
            view_with_primary_down(pending=PENDING, pending_at=NOW, my_sdown=()),
            N,
            NoFailover.PRIMARY_OK,
            id="pending-but-not-down-here",
        ),
        pytest.param(
            view_with_primary_down(pending=PENDING, pending_at=NOW, running=True),
            N,
            NoFailover.ALREADY_RUNNING,
            id="pending-but-running",
        ),
        pytest.param(
            view_with_primary_down(pending=PENDING, pending_at=NOW, sdown_by=()),
            VOTE,
            Go.PENDING_REQUEST,
            id="pending-needs-no-odown-here",
        ),
        # A scheduled candidacy that no longer applies is cancelled, with the reason.
        pytest.param(
            view_with_primary_down(candidacy_at=SOON, my_sdown=()),
            CANCEL,
            NoFailover.PRIMARY_OK,
            id="cancel-recovered",
        ),
        pytest.param(
            view_with_primary_down(candidacy_at=SOON, voted=Voted(NOW, 6, "s2")),
            CANCEL,
            NoFailover.OTHER_LEADER,
            id="cancel-other-leader",
        ),
        pytest.param(
            view_with_primary_down(candidacy_at=SOON, stalled=True),
            CANCEL,
            NoFailover.STALLED,
            id="cancel-stalled",
        ),
        # Order: the earlier check wins when several apply.
        pytest.param(
            view_with_primary_down(primary=None, stalled=True),
            N,
            NoFailover.NO_PRIMARY,
            id="no-primary<stalled",
        ),
        pytest.param(
            view_with_primary_down(my_sdown=(), stalled=True),
            N,
            NoFailover.PRIMARY_OK,
            id="ok<stalled",
        ),
        pytest.param(
            view_with_primary_down(stalled=True, running=True),
            N,
            NoFailover.STALLED,
            id="stalled<running",
        ),
        pytest.param(
            view_with_primary_down(running=True, sdown_by=()),
            N,
            NoFailover.ALREADY_RUNNING,
            id="running<not-odown",
        ),
        pytest.param(
            view_with_primary_down(sdown_by=(), replicas=()),
            N,
            NoFailover.NOT_ODOWN,
            id="not-odown<no-replicas",
        ),
        pytest.param(
            view_with_primary_down(replicas=(), done_at=NOW),
            N,
            NoFailover.NO_REPLICAS,
            id="no-replicas<settling",
        ),
        pytest.param(
            view_with_primary_down(done_at=NOW, voted=Voted(NOW, 6, "s2")),
            N,
            NoFailover.SETTLING,
            id="settling<other-leader",
        ),
        pytest.param(
            view_with_primary_down(voted=Voted(NOW, 6, "s2"), retry_at=SOON),
            N,
            NoFailover.OTHER_LEADER,
            id="other-leader<retry",
        ),
    ],
)
def test_next_actions(v: SentinelView, action: Start, reason: NoFailover | Go) -> None:
    d = only(v)
    assert (d.shard, d.action, d.reason) == (1, action, reason)


@pytest.mark.parametrize(
    ("v", "odown"),
    [
        pytest.param(view_with_primary_down(), True, id="odown"),
        pytest.param(view_with_primary_down(replicas=()), True, id="odown-no-replicas"),
        pytest.param(view_with_primary_down(sdown_by=()), False, id="not-odown"),
        pytest.param(view_with_primary_down(stalled=True), False, id="stalled-not-judged"),
    ],
)
def test_decision_says_odown(v: SentinelView, odown: bool) -> None:
    assert only(v).odown is odown


def test_one_decision_per_shard() -> None:
    v = view_with_primary_down(
        shards=(
            shard_view(id=1),
            shard_view(id=2, primary="p2", replicas=("r2",)),
            shard_view(id=3, primary=None),
        )
    )
    got = [(d.shard, d.action, d.reason) for d in next_actions(v, T, NOW)]
    assert got == [
        (1, SCHED, Go.ODOWN),
        (2, N, NoFailover.PRIMARY_OK),
        (3, N, NoFailover.NO_PRIMARY),
    ]
    assert next_actions(view_with_primary_down(shards=()), T, NOW) == ()


@pytest.mark.parametrize(
    ("live", "age", "stalled", "expected"),
    [
        pytest.param((), 0.0, (), 1, id="me-alone"),
        pytest.param(OTHERS, 0.0, (), 3, id="all"),
        pytest.param(OTHERS, 1.01, (), 1, id="stale"),
        pytest.param(OTHERS, 0.0, ("s3",), 2, id="one-stalled"),
    ],
)
def test_live_sentinels(
    live: tuple[str, ...], age: float, stalled: tuple[str, ...], expected: int
) -> None:
    v = view_with_primary_down(live=live, hello_age=age, stalled_hellos=stalled)
    assert live_sentinels(v, T, NOW) == expected


# --- votes from the view: vote_on -----------------------------------------------------------

REQ_S2 = VoteRequest(candidate="s2", failover_epoch=11, shard=1, primary="p1", config_epoch=10)
REQ_S1 = replace(REQ_S2, candidate="s1")


@pytest.mark.parametrize(
    ("v", "req", "granted", "reason"),
    [
        pytest.param(view_with_primary_down(), REQ_S2, True, None, id="grant"),
        pytest.param(
            view_with_primary_down(candidacy_at=SOON),
            REQ_S2,
            True,
            None,
            id="in-my-delay-vote-for-it",
        ),
        pytest.param(
            view_with_primary_down(my_sdown=()), REQ_S2, False, VoteRefusal.NOT_SDOWN_HERE, id="ok"
        ),
        pytest.param(
            view_with_primary_down(),
            replace(REQ_S2, primary="r1"),
            False,
            VoteRefusal.NOT_SDOWN_HERE,
            id="not-the-current-primary",
        ),
        pytest.param(
            view_with_primary_down(),
            replace(REQ_S2, shard=9),
            False,
            VoteRefusal.NOT_SDOWN_HERE,
            id="unknown-shard",
        ),
        pytest.param(
            view_with_primary_down(stalled=True), REQ_S2, False, VoteRefusal.STALLED, id="stalled"
        ),
        pytest.param(
            view_with_primary_down(),
            replace(REQ_S2, config_epoch=9),
            False,
            VoteRefusal.STALE_LAYOUT,
            id="stale-layout",
        ),
        pytest.param(
            view_with_primary_down(done_at=NOW - 1.0),
            REQ_S2,
            False,
            VoteRefusal.SHARD_SETTLING,
            id="settling",
        ),
        pytest.param(
            view_with_primary_down(running=True),
            REQ_S2,
            False,
            VoteRefusal.CANDIDATE,
            id="i-run-myself",
        ),
        pytest.param(
            view_with_primary_down(voted=Voted(NOW - 1.0, 10, "s3")),
            REQ_S2,
            False,
            VoteRefusal.OTHER_LEADER,
            id="s3-leads",
        ),
        pytest.param(
            view_with_primary_down(voted=Voted(NOW - 1.0, 10, "s2")),
            REQ_S2,
            True,
            None,
            id="s2-leads-again",
        ),
        pytest.param(view_with_primary_down(running=True), REQ_S1, True, None, id="my-own"),
    ],
)
def test_vote_on(
    v: SentinelView, req: VoteRequest, granted: bool, reason: VoteRefusal | None
) -> None:
    d = vote_on(v, VoteState(), req, T, NOW)
    assert (d.granted, d.reason) == (granted, reason)
    if granted:
        assert d.state == VoteState(11, req.candidate, 1)


def test_a_sentinel_in_its_candidacy_delay_votes_for_another_and_stands_down() -> None:
    """Split votes are rare: the first request seen wins the vote of a sentinel that has
    not asked yet, and that sentinel then cancels its own candidacy."""
    waiting = view_with_primary_down(candidacy_at=SOON)
    d = vote_on(waiting, VoteState(), REQ_S2, T, NOW)
    assert d.granted
    after = view_with_primary_down(candidacy_at=SOON, voted=Voted(NOW, 11, "s2"))
    assert (only(after).action, only(after).reason) == (CANCEL, NoFailover.OTHER_LEADER)
    # and a third candidate in the same epoch is refused
    third = vote_on(after, d.state, replace(REQ_S2, candidate="s3"), T, NOW)
    assert (third.granted, third.reason) == (False, VoteRefusal.ALREADY_VOTED)


# --- the count of an election: tally --------------------------------------------------------


@pytest.mark.parametrize(
    ("grants", "hard", "configured", "live", "expected"),
    [
        pytest.param({"s1"}, set(), 3, 3, Tally.OPEN, id="asked"),
        pytest.param({"s1", "s2"}, set(), 3, 3, Tally.ELECTED, id="majority"),
        pytest.param({"s1"}, {"s2"}, 3, 3, Tally.OPEN, id="one-refused-one-left"),
        pytest.param({"s1"}, {"s2", "s3"}, 3, 3, Tally.LOST, id="both-refused"),
        pytest.param({"s1"}, {"s2"}, 3, 2, Tally.LOST, id="refused-and-one-dead"),
        pytest.param({"s1"}, set(), 3, 1, Tally.LOST, id="alone"),
        pytest.param({"s1", "s2"}, {"s3"}, 3, 3, Tally.ELECTED, id="elected-despite-refusal"),
        pytest.param({"s1", "s2"}, {"s2"}, 3, 3, Tally.ELECTED, id="grant-overrides-refusal"),
        pytest.param({"s1"}, {"s2"}, 5, 5, Tally.OPEN, id="5-one-refused"),
        pytest.param({"s1"}, {"s2", "s3"}, 5, 5, Tally.OPEN, id="5-two-refused"),
        pytest.param({"s1"}, {"s2", "s3", "s4"}, 5, 5, Tally.LOST, id="5-three-refused"),
        pytest.param({"s1"}, set(), 1, 1, Tally.ELECTED, id="single-sentinel"),
    ],
)
def test_tally(
    grants: set[str], hard: set[str], configured: int, live: int, expected: Tally
) -> None:
    assert tally(grants, hard, configured, live) is expected


# --- after a lost election: retry_delay ------------------------------------------------------


@pytest.mark.parametrize(
    ("me", "rivals", "expected"),
    [
        pytest.param("s1", set(), 0.0, id="no-rivals-at-once"),
        pytest.param("s1", {"s2", "s3"}, 0.0, id="lowest-runs-again-first"),
        pytest.param("s2", {"s1"}, 0.6, id="higher-waits-a-round"),
        pytest.param("s3", {"s1", "s2", "s3"}, 0.6, id="self-in-rivals"),
        pytest.param("s2", {"s2"}, 0.0, id="only-self"),
    ],
)
def test_retry_delay(me: str, rivals: set[str], expected: float) -> None:
    assert retry_delay(me, rivals, T) == pytest.approx(expected)


def test_soft_refusals_are_those_that_can_change_on_a_later_ask() -> None:
    assert {VoteRefusal.NOT_SDOWN_HERE, VoteRefusal.STALLED, VoteRefusal.CANDIDATE} == SOFT_REFUSALS


def test_a_split_vote_resolves_to_the_lowest_id_in_the_next_epoch() -> None:
    """s1, s2 and s3 all ran in epoch 11 (each voted for itself): s1 runs again at once in
    epoch 12; s2, whose election has ended and who waits, grants it."""
    assert retry_delay("s1", {"s2", "s3"}, T) == 0.0
    s2_ballot = VoteState(11, "s2", 1)
    s2_view = replace(view_with_primary_down(retry_at=NOW + 0.6), sentinel="s2")
    d = vote_on(s2_view, s2_ballot, replace(REQ_S1, failover_epoch=12), T, NOW)
    assert (d.granted, d.state) == (True, VoteState(12, "s1", 1))
    # while s2's own election of epoch 11 is still open it refuses softly: s1 asks again
    running = replace(s2_view, shards=(shard_view(running=True),))
    r = vote_on(running, s2_ballot, replace(REQ_S1, failover_epoch=12), T, NOW)
    assert (r.granted, r.reason) == (False, VoteRefusal.CANDIDATE)
    assert r.reason in SOFT_REFUSALS


# --- who runs first: preferred_candidate -----------------------------------------------------


@pytest.mark.parametrize(
    ("shard", "live", "stalled", "age", "expected"),
    [
        pytest.param(1, OTHERS, (), 0.0, "s1", id="shard1-s1"),
        pytest.param(2, OTHERS, (), 0.0, "s2", id="shard2-s2"),
        pytest.param(3, OTHERS, (), 0.0, "s3", id="shard3-s3"),
        pytest.param(4, OTHERS, (), 0.0, "s1", id="rotates"),
        pytest.param(2, ("s3",), (), 0.0, "s3", id="s2-dead"),
        pytest.param(2, OTHERS, ("s2",), 0.0, "s3", id="s2-stalled"),
        pytest.param(2, OTHERS, (), 1.01, "s1", id="hellos-stale-only-me"),
        pytest.param(3, (), (), 0.0, "s1", id="alone"),
    ],
)
def test_preferred_candidate(
    shard: int, live: tuple[str, ...], stalled: tuple[str, ...], age: float, expected: str
) -> None:
    v = view_with_primary_down(live=live, stalled_hellos=stalled, hello_age=age)
    assert preferred_candidate(v, shard, T, NOW) == expected


@pytest.mark.parametrize(
    ("shard", "live", "reason", "wait"),
    [
        pytest.param(1, OTHERS, Go.ODOWN, 0.0, id="preferred-runs-first"),
        pytest.param(2, OTHERS, Go.DEFER, 0.6, id="others-wait-a-round"),
        pytest.param(2, ("s3",), Go.DEFER, 0.6, id="next-live-preferred"),
        pytest.param(3, ("s2",), Go.ODOWN, 0.0, id="rotation-wraps-to-me"),
        pytest.param(2, ("s2", "s3"), Go.DEFER, 0.6, id="s2-preferred"),
    ],
)
def test_schedule_waits_unless_preferred(
    shard: int, live: tuple[str, ...], reason: Go, wait: float
) -> None:
    v = view_with_primary_down(live=live, sdown_by=live, shards=(shard_view(id=shard),))
    d = only(v)
    assert (d.action, d.reason) == (SCHED, reason)
    assert d.wait_s == pytest.approx(wait)


def test_an_aborted_failover_is_retried_after_a_failover_timeout() -> None:
    assert retry_delay_after_abort(T) == 5.0
    v = view_with_primary_down(retry_at=NOW + retry_delay_after_abort(T) - 0.01)
    assert only(v).reason is NoFailover.RETRY_LATER
