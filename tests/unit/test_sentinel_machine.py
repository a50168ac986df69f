"""Table-driven tests for the leader's failover (no sockets, no asyncio): replica choice
and the failover state machine, with its reasons."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from sentinel.machine import (
    AbortReason,
    Action,
    Failover,
    FailoverState,
    Ineligible,
    Ranked,
    Replica,
    Step,
    StepReason,
    abort,
    rank_replicas,
    start_failover,
    step,
)

NOW = 1000.0
S = FailoverState

# --- builders ------------------------------------------------------------------------------


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
    resend_s: float = float("inf"),
) -> Step:
    return step(
        fo,
        now=now,
        timeout_s=30.0,
        resend_s=resend_s,
        primary_sdown=primary_sdown,
        ranked=ranked,
        promoted=promoted,
        replicas_reattached=reattached,
        published=published,
    )


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


# --- reasons and TAKEOVER resend -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fo", "kw", "action", "reason"),
    [
        pytest.param(fo_in(S.WAIT_START), {}, Action.SELECT, StepReason.SELECT, id="start"),
        pytest.param(
            fo_in(S.SELECT_REPLICA), {}, Action.NONE, StepReason.AWAITING_RANKING, id="ranking"
        ),
        pytest.param(
            fo_in(S.SELECT_REPLICA),
            {"ranked": RANKED},
            Action.SEND_TAKEOVER,
            StepReason.CANDIDATE_SELECTED,
            id="selected",
        ),
        pytest.param(
            fo_in(S.PROMOTE, candidate="r1"),
            {},
            Action.CHECK_PROMOTED,
            StepReason.TAKEOVER_SENT,
            id="sent",
        ),
        pytest.param(
            replace(fo_in(S.WAIT_PROMOTION, candidate="r1"), takeover_at=LATER - 0.4),
            {"resend_s": 0.5},
            Action.CHECK_PROMOTED,
            StepReason.WAITING_PROMOTION,
            id="waiting",
        ),
        pytest.param(
            replace(fo_in(S.WAIT_PROMOTION, candidate="r1"), takeover_at=LATER - 0.6),
            {"resend_s": 0.5},
            Action.SEND_TAKEOVER,
            StepReason.TAKEOVER_RESEND,
            id="resend",
        ),
        pytest.param(
            replace(fo_in(S.WAIT_PROMOTION, candidate="r1"), takeover_at=LATER - 0.6),
            {"resend_s": 0.5, "promoted": True},
            Action.REATTACH_REPLICAS,
            StepReason.PROMOTED,
            id="promoted-no-resend",
        ),
        pytest.param(
            fo_in(S.WAIT_PROMOTION, candidate="r1"),
            {"now": NOW + 31.0, "resend_s": 0.5},
            Action.SELECT,
            StepReason.PROMOTION_TIMEOUT,
            id="timeout-before-resend",
        ),
        pytest.param(
            fo_in(S.RECONF_REPLICAS, candidate="r1"),
            {"now": NOW + 31.0},
            Action.PUBLISH,
            StepReason.REATTACH_TIMEOUT,
            id="reattach-timeout",
        ),
        pytest.param(
            fo_in(S.PUBLISH_LAYOUT, candidate="r1"),
            {"published": True},
            Action.FINISH,
            StepReason.PUBLISHED,
            id="published",
        ),
        pytest.param(
            fo_in(S.WAIT_START),
            {"primary_sdown": False},
            Action.ABORT,
            StepReason.ABORTED,
            id="aborted",
        ),
    ],
)
def test_step_reasons(fo: Failover, kw: dict[str, Any], action: Action, reason: StepReason) -> None:
    kw.setdefault("now", LATER)
    s = tick(fo, **kw)
    assert (s.action, s.reason) == (action, reason)


def test_resend_keeps_waiting_state_and_restarts_the_resend_clock() -> None:
    fo = replace(fo_in(S.WAIT_PROMOTION, candidate="r1"), takeover_at=NOW)
    s = tick(fo, now=NOW + 0.6, resend_s=0.5)
    assert (s.failover.state, s.failover.takeover_at) == (S.WAIT_PROMOTION, NOW + 0.6)
    assert s.failover.entered_at == fo.entered_at  # the promotion timeout still counts
    again = tick(s.failover, now=NOW + 0.7, resend_s=0.5)
    assert again.action is Action.CHECK_PROMOTED


def test_abort_after_promotion_is_refused_with_a_reason() -> None:
    s = abort(fo_in(S.WAIT_PROMOTION, candidate="r1"), AbortReason.LOST_LEADERSHIP, LATER)
    assert (s.action, s.reason) == (Action.NONE, StepReason.NOT_ABORTABLE)
