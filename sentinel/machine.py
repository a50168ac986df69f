"""The elected leader's failover, pure: replica choice and the failover state machine.

``step(failover, ...)`` advances one tick and returns the next action for the executor
(:mod:`sentinel.executor`) with an enum reason; re-sending an unanswered TAKEOVER is decided
here too. No I/O, no clock: ``now`` is passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

# --- Replica choice ------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    name: str
    zone: str
    repl_offset: int
    reachable: bool
    sdown: bool
    link_down_s: float
    primary: str | None


class Ineligible(enum.Enum):
    UNREACHABLE = "unreachable"
    SDOWN = "sdown"
    WRONG_PRIMARY = "wrong_primary"
    DISCONNECTED_TOO_LONG = "disconnected_too_long"
    EXCLUDED = "excluded"


@dataclass(frozen=True)
class Ranked:
    chosen: tuple[Replica, ...]
    excluded: tuple[tuple[Replica, Ineligible], ...]


def _ineligible(
    r: Replica, failed_primary: str, max_link_down_s: float, exclude: frozenset[str]
) -> Ineligible | None:
    if not r.reachable:
        return Ineligible.UNREACHABLE
    if r.sdown:
        return Ineligible.SDOWN
    if r.primary is not None and r.primary != failed_primary:
        return Ineligible.WRONG_PRIMARY
    if r.link_down_s > max_link_down_s:
        return Ineligible.DISCONNECTED_TOO_LONG
    if r.name in exclude:
        return Ineligible.EXCLUDED
    return None


def rank_replicas(
    replicas: Iterable[Replica],
    *,
    failed_primary: str,
    failed_zone: str,
    max_link_down_s: float,
    exclude: frozenset[str] = frozenset(),
) -> Ranked:
    """Eligible replicas best first (largest offset, then a zone other than the failed
    primary's, then name); the rest with the first reason (enum order) that excludes them."""
    chosen: list[Replica] = []
    excluded: list[tuple[Replica, Ineligible]] = []
    for r in replicas:
        why = _ineligible(r, failed_primary, max_link_down_s, exclude)
        if why is None:
            chosen.append(r)
        else:
            excluded.append((r, why))
    chosen.sort(key=lambda r: (-r.repl_offset, r.zone == failed_zone, r.name))
    return Ranked(chosen=tuple(chosen), excluded=tuple(excluded))


# --- Failover state machine ----------------------------------------------------------------


class FailoverState(enum.Enum):
    WAIT_START = "wait_start"
    SELECT_REPLICA = "select_replica"
    PROMOTE = "promote"
    WAIT_PROMOTION = "wait_promotion"
    RECONF_REPLICAS = "reconf_replicas"
    PUBLISH_LAYOUT = "publish_layout"
    DONE = "done"
    ABORTED = "aborted"


class Action(enum.Enum):
    NONE = "none"
    SELECT = "select"
    SEND_TAKEOVER = "send_takeover"
    CHECK_PROMOTED = "check_promoted"
    REATTACH_REPLICAS = "reattach_replicas"
    PUBLISH = "publish"
    ABORT = "abort"
    FINISH = "finish"


class StepReason(enum.Enum):
    """Why ``step`` returned its action."""

    SELECT = "select_replica"
    AWAITING_RANKING = "awaiting_ranking"
    CANDIDATE_SELECTED = "candidate_selected"
    TAKEOVER_SENT = "takeover_sent"
    TAKEOVER_RESEND = "takeover_resend"
    WAITING_PROMOTION = "waiting_promotion"
    PROMOTION_TIMEOUT = "promotion_timeout"
    PROMOTED = "promoted"
    REATTACHING = "reattaching"
    REATTACHED = "reattached"
    REATTACH_TIMEOUT = "reattach_timeout"
    PUBLISHING = "publishing"
    PUBLISHED = "published"
    ABORTED = "aborted"
    NOT_ABORTABLE = "not_abortable"
    FINISHED = "finished"


class AbortReason(enum.Enum):
    NO_ELIGIBLE_REPLICA = "no_eligible_replica"
    PROMOTION_TIMEOUT = "promotion_timeout"
    PRIMARY_RECOVERED = "primary_recovered"
    LOST_LEADERSHIP = "lost_leadership"


_ABORTABLE = frozenset({FailoverState.WAIT_START, FailoverState.SELECT_REPLICA})


@dataclass(frozen=True)
class Failover:
    shard: int
    epoch: int
    failed_primary: str
    state: FailoverState
    entered_at: float
    candidate: str | None = None
    tried: frozenset[str] = frozenset()
    abort_reason: AbortReason | None = None
    takeover_at: float = 0.0  # when TAKEOVER was last asked for (the executor sends it)


@dataclass(frozen=True)
class Step:
    failover: Failover
    action: Action
    reason: StepReason


def start_failover(shard: int, epoch: int, failed_primary: str, now: float) -> Failover:
    return Failover(
        shard=shard,
        epoch=epoch,
        failed_primary=failed_primary,
        state=FailoverState.WAIT_START,
        entered_at=now,
    )


def _to(fo: Failover, state: FailoverState, now: float, action: Action, reason: StepReason) -> Step:
    return Step(replace(fo, state=state, entered_at=now), action, reason)


def abort(fo: Failover, reason: AbortReason, now: float) -> Step:
    """Abort from outside the tick (e.g. LOST_LEADERSHIP); only possible before PROMOTE."""
    if fo.state not in _ABORTABLE:
        return Step(fo, Action.NONE, StepReason.NOT_ABORTABLE)
    return Step(
        replace(fo, state=FailoverState.ABORTED, entered_at=now, abort_reason=reason),
        Action.ABORT,
        StepReason.ABORTED,
    )


def step(
    fo: Failover,
    *,
    now: float,
    timeout_s: float,
    primary_sdown: bool,
    ranked: Ranked | None,
    promoted: bool,
    replicas_reattached: bool,
    published: bool,
    resend_s: float = float("inf"),
) -> Step:
    """Advance the leader's failover by one tick and say what the executor must do.

    While waiting for the promotion, a TAKEOVER unanswered for ``resend_s`` is asked for
    again (lost on the way, or refused while the replica still saw its primary), until the
    failover timeout moves on to the next candidate.
    """
    S = FailoverState
    R = StepReason
    match fo.state:
        case S.WAIT_START:
            if not primary_sdown:
                return abort(fo, AbortReason.PRIMARY_RECOVERED, now)
            return _to(fo, S.SELECT_REPLICA, now, Action.SELECT, R.SELECT)
        case S.SELECT_REPLICA:
            if ranked is None:
                return Step(fo, Action.NONE, R.AWAITING_RANKING)
            candidate = next((r.name for r in ranked.chosen if r.name not in fo.tried), None)
            if candidate is None:
                return abort(fo, AbortReason.NO_ELIGIBLE_REPLICA, now)
            return Step(
                replace(fo, state=S.PROMOTE, entered_at=now, candidate=candidate, takeover_at=now),
                Action.SEND_TAKEOVER,
                R.CANDIDATE_SELECTED,
            )
        case S.PROMOTE:
            return _to(fo, S.WAIT_PROMOTION, now, Action.CHECK_PROMOTED, R.TAKEOVER_SENT)
        case S.WAIT_PROMOTION:
            if promoted:
                return _to(fo, S.RECONF_REPLICAS, now, Action.REATTACH_REPLICAS, R.PROMOTED)
            if now - fo.entered_at > timeout_s:
                tried = fo.tried | ({fo.candidate} if fo.candidate is not None else set())
                return Step(
                    replace(
                        fo, state=S.SELECT_REPLICA, entered_at=now, candidate=None, tried=tried
                    ),
                    Action.SELECT,
                    R.PROMOTION_TIMEOUT,
                )
            if now - fo.takeover_at > resend_s:
                return Step(replace(fo, takeover_at=now), Action.SEND_TAKEOVER, R.TAKEOVER_RESEND)
            return Step(fo, Action.CHECK_PROMOTED, R.WAITING_PROMOTION)
        case S.RECONF_REPLICAS:
            if replicas_reattached or now - fo.entered_at > timeout_s:
                why = R.REATTACHED if replicas_reattached else R.REATTACH_TIMEOUT
                return _to(fo, S.PUBLISH_LAYOUT, now, Action.PUBLISH, why)
            return Step(fo, Action.REATTACH_REPLICAS, R.REATTACHING)
        case S.PUBLISH_LAYOUT:
            if published:
                return _to(fo, S.DONE, now, Action.FINISH, R.PUBLISHED)
            return Step(fo, Action.PUBLISH, R.PUBLISHING)
        case S.DONE | S.ABORTED:
            return Step(fo, Action.NONE, R.FINISHED)
