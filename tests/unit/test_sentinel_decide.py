"""Table-driven tests for the sentinel's pure decisions (no sockets, no asyncio)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from sentinel.decide import (
    AbortReason,
    Action,
    Failover,
    FailoverState,
    Hello,
    Ineligible,
    Probe,
    Ranked,
    Replica,
    StallGuard,
    Step,
    VoteDecision,
    VoteRefusal,
    VoteRequest,
    VoteState,
    abort,
    decide_vote,
    in_promotion_grace,
    is_elected,
    is_odown,
    is_sdown,
    majority,
    rank_replicas,
    shard_settling,
    start_failover,
    step,
)

NOW = 1000.0
S = FailoverState

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
        candidate=candidate, epoch=epoch, shard=1, primary="p1", config_epoch=config_epoch
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


def replica(
    name: str,
    *,
    offset: int = 100,
    zone: str = "az-b",
    reachable: bool = True,
    sdown: bool = False,
    link_down_s: float = 0.0,
    primary: str | None = "p1",
) -> Replica:
    return Replica(
        name=name,
        zone=zone,
        repl_offset=offset,
        reachable=reachable,
        sdown=sdown,
        link_down_s=link_down_s,
        primary=primary,
    )


def rank(*rs: Replica, exclude: frozenset[str] = frozenset()) -> Ranked:
    return rank_replicas(
        rs, failed_primary="p1", failed_zone="az-a", max_link_down_s=10.0, exclude=exclude
    )


def fo_in(
    state: FailoverState,
    *,
    candidate: str | None = None,
    tried: frozenset[str] = frozenset(),
) -> Failover:
    fo = start_failover(shard=1, epoch=7, failed_primary="p1", now=NOW)
    return replace(fo, state=state, candidate=candidate, tried=tried)


def tick(
    fo: Failover,
    *,
    now: float = NOW,
    primary_sdown: bool = True,
    ranked: Ranked | None = None,
    promoted: bool = False,
    reattached: bool = False,
    published: bool = False,
) -> Step:
    return step(
        fo,
        now=now,
        timeout_s=30.0,
        primary_sdown=primary_sdown,
        ranked=ranked,
        promoted=promoted,
        replicas_reattached=reattached,
        published=published,
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


# --- replica choice ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        pytest.param(
            [replica("r1", offset=10), replica("r2", offset=30), replica("r3", offset=20)],
            ["r2", "r3", "r1"],
            id="offset-first",
        ),
        pytest.param(
            [replica("r1", zone="az-a"), replica("r2", zone="az-c")],
            ["r2", "r1"],
            id="other-zone-on-tie",
        ),
        pytest.param(
            [replica("r1", zone="az-a", offset=200), replica("r2", zone="az-c")],
            ["r1", "r2"],
            id="offset-beats-zone",
        ),
        pytest.param(
            [replica("r9"), replica("r2"), replica("r5")],
            ["r2", "r5", "r9"],
            id="name-last",
        ),
        pytest.param([replica("r1", primary=None)], ["r1"], id="unknown-primary-ok"),
        pytest.param([replica("r1", link_down_s=10.0)], ["r1"], id="link-down-at-limit"),
    ],
)
def test_rank_order(replicas: list[Replica], expected: list[str]) -> None:
    ranked = rank(*replicas)
    assert [r.name for r in ranked.chosen] == expected
    assert ranked.excluded == ()


@pytest.mark.parametrize(
    ("r", "exclude", "reason"),
    [
        pytest.param(replica("x", reachable=False), frozenset(), Ineligible.UNREACHABLE),
        pytest.param(replica("x", sdown=True), frozenset(), Ineligible.SDOWN),
        pytest.param(replica("x", primary="p9"), frozenset(), Ineligible.WRONG_PRIMARY),
        pytest.param(replica("x", link_down_s=10.5), frozenset(), Ineligible.DISCONNECTED_TOO_LONG),
        pytest.param(replica("x"), frozenset({"x"}), Ineligible.EXCLUDED),
        pytest.param(
            replica("x", reachable=False, sdown=True, primary="p9"),
            frozenset({"x"}),
            Ineligible.UNREACHABLE,
            id="first-reason-wins",
        ),
        pytest.param(
            replica("x", primary="p9", link_down_s=99.0),
            frozenset({"x"}),
            Ineligible.WRONG_PRIMARY,
            id="wrong-primary-before-link",
        ),
    ],
)
def test_rank_ineligible(r: Replica, exclude: frozenset[str], reason: Ineligible) -> None:
    ranked = rank(r, replica("ok"), exclude=exclude)
    assert [c.name for c in ranked.chosen] == ["ok"]
    assert ranked.excluded == ((r, reason),)


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


# --- failover state machine ----------------------------------------------------------------

RANKED = rank(replica("r1", offset=50), replica("r2", offset=40), replica("r3", offset=30))
LATER = NOW + 5.0


@pytest.mark.parametrize(
    ("fo", "kw", "state", "action", "candidate"),
    [
        pytest.param(fo_in(S.WAIT_START), {}, S.SELECT_REPLICA, Action.SELECT, None, id="start"),
        pytest.param(
            fo_in(S.WAIT_START),
            {"primary_sdown": False},
            S.ABORTED,
            Action.ABORT,
            None,
            id="start-recovered",
        ),
        pytest.param(
            fo_in(S.SELECT_REPLICA), {}, S.SELECT_REPLICA, Action.NONE, None, id="no-ranking"
        ),
        pytest.param(
            fo_in(S.SELECT_REPLICA),
            {"ranked": RANKED},
            S.PROMOTE,
            Action.SEND_TAKEOVER,
            "r1",
            id="select-best",
        ),
        pytest.param(
            fo_in(S.SELECT_REPLICA, tried=frozenset({"r1"})),
            {"ranked": RANKED},
            S.PROMOTE,
            Action.SEND_TAKEOVER,
            "r2",
            id="select-skips-tried",
        ),
        pytest.param(
            fo_in(S.SELECT_REPLICA, tried=frozenset({"r1", "r2", "r3"})),
            {"ranked": RANKED},
            S.ABORTED,
            Action.ABORT,
            None,
            id="all-tried",
        ),
        pytest.param(
            fo_in(S.SELECT_REPLICA),
            {"ranked": rank(replica("r1", sdown=True))},
            S.ABORTED,
            Action.ABORT,
            None,
            id="none-eligible",
        ),
        pytest.param(
            fo_in(S.PROMOTE, candidate="r1"),
            {},
            S.WAIT_PROMOTION,
            Action.CHECK_PROMOTED,
            "r1",
            id="takeover-sent",
        ),
        pytest.param(
            fo_in(S.WAIT_PROMOTION, candidate="r1"),
            {"promoted": True},
            S.RECONF_REPLICAS,
            Action.REATTACH_REPLICAS,
            "r1",
            id="promoted",
        ),
        pytest.param(
            fo_in(S.WAIT_PROMOTION, candidate="r1"),
            {},
            S.WAIT_PROMOTION,
            Action.CHECK_PROMOTED,
            "r1",
            id="still-waiting",
        ),
        pytest.param(
            fo_in(S.WAIT_PROMOTION, candidate="r1"),
            {"now": NOW + 30.0},
            S.WAIT_PROMOTION,
            Action.CHECK_PROMOTED,
            "r1",
            id="timeout-boundary",
        ),
        pytest.param(
            fo_in(S.WAIT_PROMOTION, candidate="r1"),
            {"now": NOW + 30.1},
            S.SELECT_REPLICA,
            Action.SELECT,
            None,
            id="promotion-timeout-retry",
        ),
        pytest.param(
            fo_in(S.WAIT_PROMOTION, candidate="r1"),
            {"now": NOW + 31.0, "primary_sdown": False},
            S.SELECT_REPLICA,
            Action.SELECT,
            None,
            id="no-abort-after-takeover",
        ),
        pytest.param(
            fo_in(S.RECONF_REPLICAS, candidate="r1"),
            {},
            S.RECONF_REPLICAS,
            Action.REATTACH_REPLICAS,
            "r1",
            id="reattaching",
        ),
        pytest.param(
            fo_in(S.RECONF_REPLICAS, candidate="r1"),
            {"reattached": True},
            S.PUBLISH_LAYOUT,
            Action.PUBLISH,
            "r1",
            id="reattached",
        ),
        pytest.param(
            fo_in(S.RECONF_REPLICAS, candidate="r1"),
            {"now": NOW + 31.0},
            S.PUBLISH_LAYOUT,
            Action.PUBLISH,
            "r1",
            id="reattach-timeout",
        ),
        pytest.param(
            fo_in(S.PUBLISH_LAYOUT, candidate="r1"),
            {},
            S.PUBLISH_LAYOUT,
            Action.PUBLISH,
            "r1",
            id="publishing",
        ),
        pytest.param(
            fo_in(S.PUBLISH_LAYOUT, candidate="r1"),
            {"published": True},
            S.DONE,
            Action.FINISH,
            "r1",
            id="published",
        ),
        pytest.param(
            fo_in(S.DONE, candidate="r1"),
            {"published": True, "promoted": True, "ranked": RANKED},
            S.DONE,
            Action.NONE,
            "r1",
            id="done-terminal",
        ),
        pytest.param(
            fo_in(S.ABORTED),
            {"primary_sdown": True, "ranked": RANKED},
            S.ABORTED,
            Action.NONE,
            None,
            id="aborted-terminal",
        ),
    ],
)
def test_failover_step(
    fo: Failover,
    kw: dict[str, Any],
    state: FailoverState,
    action: Action,
    candidate: str | None,
) -> None:
    kw.setdefault("now", LATER)
    s = tick(fo, **kw)
    assert (s.failover.state, s.action, s.failover.candidate) == (state, action, candidate)
    changed = state is not fo.state
    assert s.failover.entered_at == (kw["now"] if changed else fo.entered_at)
    # Immutable snapshot in, new value out.
    assert fo.entered_at == NOW


@pytest.mark.parametrize(
    ("fo", "kw", "reason"),
    [
        pytest.param(fo_in(S.WAIT_START), {"primary_sdown": False}, AbortReason.PRIMARY_RECOVERED),
        pytest.param(
            fo_in(S.SELECT_REPLICA, tried=frozenset({"r1", "r2", "r3"})),
            {"ranked": RANKED},
            AbortReason.NO_ELIGIBLE_REPLICA,
        ),
        pytest.param(
            fo_in(S.SELECT_REPLICA),
            {"ranked": Ranked(chosen=(), excluded=())},
            AbortReason.NO_ELIGIBLE_REPLICA,
        ),
    ],
)
def test_abort_reason(fo: Failover, kw: dict[str, Any], reason: AbortReason) -> None:
    s = tick(fo, **kw)
    assert (s.failover.state, s.failover.abort_reason) == (S.ABORTED, reason)


def test_promotion_timeout_adds_candidate_to_tried() -> None:
    s = tick(fo_in(S.WAIT_PROMOTION, candidate="r1", tried=frozenset({"r0"})), now=NOW + 31.0)
    assert s.failover.tried == frozenset({"r0", "r1"})
    assert s.failover.abort_reason is None


def test_full_failover_with_retry_after_promotion_timeout() -> None:
    fo = start_failover(shard=1, epoch=7, failed_primary="p1", now=NOW)
    assert fo.state is S.WAIT_START
    trace: list[tuple[FailoverState, Action, str | None]] = []

    def go(**kw: Any) -> None:
        nonlocal fo
        s = tick(fo, **kw)
        fo = s.failover
        trace.append((fo.state, s.action, fo.candidate))

    go(now=NOW + 1)
    go(now=NOW + 2, ranked=RANKED)
    go(now=NOW + 3)
    go(now=NOW + 34)  # r1 never promoted
    go(now=NOW + 35, ranked=RANKED)
    go(now=NOW + 36)
    go(now=NOW + 37, promoted=True)
    go(now=NOW + 38, reattached=True)
    go(now=NOW + 39, published=True)
    go(now=NOW + 40)
    assert trace == [
        (S.SELECT_REPLICA, Action.SELECT, None),
        (S.PROMOTE, Action.SEND_TAKEOVER, "r1"),
        (S.WAIT_PROMOTION, Action.CHECK_PROMOTED, "r1"),
        (S.SELECT_REPLICA, Action.SELECT, None),
        (S.PROMOTE, Action.SEND_TAKEOVER, "r2"),
        (S.WAIT_PROMOTION, Action.CHECK_PROMOTED, "r2"),
        (S.RECONF_REPLICAS, Action.REATTACH_REPLICAS, "r2"),
        (S.PUBLISH_LAYOUT, Action.PUBLISH, "r2"),
        (S.DONE, Action.FINISH, "r2"),
        (S.DONE, Action.NONE, "r2"),
    ]
    assert fo.tried == frozenset({"r1"})
    assert (fo.epoch, fo.shard, fo.failed_primary) == (7, 1, "p1")


@pytest.mark.parametrize(
    ("state", "aborts"),
    [
        (S.WAIT_START, True),
        (S.SELECT_REPLICA, True),
        (S.PROMOTE, False),
        (S.WAIT_PROMOTION, False),
        (S.RECONF_REPLICAS, False),
        (S.PUBLISH_LAYOUT, False),
        (S.DONE, False),
    ],
)
def test_abort_only_before_promotion(state: FailoverState, aborts: bool) -> None:
    fo = fo_in(state, candidate="r1")
    s = abort(fo, AbortReason.LOST_LEADERSHIP, LATER)
    if aborts:
        assert (s.failover.state, s.action) == (S.ABORTED, Action.ABORT)
        assert s.failover.abort_reason is AbortReason.LOST_LEADERSHIP
        assert s.failover.entered_at == LATER
    else:
        assert (s.failover, s.action) == (fo, Action.NONE)


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
