"""The sentinel's pure decisions: SDOWN/ODOWN, vote granting, leader check, replica choice.

Everything here is a pure function of an immutable snapshot (frozen dataclasses) and a
monotonic ``now`` in seconds; each decision carries its reason as an enum. Probing, the bus,
persistence of votes and sending ``CLUSTER FAILOVER TAKEOVER`` live in the sentinel process,
which builds the snapshot, calls these functions and executes the returned action.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

# --- SDOWN ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What one sentinel observed about one node."""

    node: str
    last_ok: float | None
    first_probe: float
    role: str | None
    repl_offset: int
    link_up: bool
    link_down_since_s: float


def is_sdown(probe: Probe, now: float, down_after_s: float) -> bool:
    """Subjectively down: no valid reply for ``down_after_s`` (counted from the first probe
    when the node never replied)."""
    since = probe.first_probe if probe.last_ok is None else probe.last_ok
    return now - since >= down_after_s


# --- ODOWN ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """The latest hello of one sentinel (its down-set), as received on the bus."""

    sentinel: str
    zone: str
    sdown: frozenset[str]
    received_at: float
    stalled: bool = False


def is_odown(
    node: str, hellos: Mapping[str, Hello], now: float, quorum: int, hello_max_age_s: float
) -> bool:
    """Objectively down: at least ``quorum`` sentinels with a fresh, non-stalled hello report
    ``node`` SDOWN. The caller includes its own hello in ``hellos``."""
    count = sum(
        1
        for h in hellos.values()
        if now - h.received_at <= hello_max_age_s and not h.stalled and node in h.sdown
    )
    return count >= quorum


# --- Votes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoteState:
    """A voter's persisted ballot: at most one vote per failover epoch."""

    voted_epoch: int = 0
    voted_for: str | None = None
    voted_shard: int | None = None


@dataclass(frozen=True)
class VoteRequest:
    candidate: str
    epoch: int
    shard: int
    primary: str
    config_epoch: int


class VoteRefusal(enum.Enum):
    STALE_EPOCH = "stale_epoch"
    ALREADY_VOTED = "already_voted"
    STALE_LAYOUT = "stale_layout"
    NOT_SDOWN_HERE = "not_sdown_here"
    STALLED = "stalled"
    SHARD_SETTLING = "shard_settling"


@dataclass(frozen=True)
class VoteDecision:
    granted: bool
    state: VoteState
    reason: VoteRefusal | None


def decide_vote(
    state: VoteState,
    req: VoteRequest,
    *,
    my_layout_epoch: int,
    i_see_sdown: bool,
    stalled: bool,
    shard_settling: bool,
) -> VoteDecision:
    """Grant or refuse one vote request. Checks, in this order:

    1. STALE_EPOCH: the request's epoch is older than the one I last voted in;
    2. same epoch and I already voted for this candidate: grant again, state unchanged;
    3. ALREADY_VOTED: same epoch, I voted for someone else;
    4. STALLED: I am in stall cool-down;
    5. STALE_LAYOUT: the candidate's layout epoch is older than mine;
    6. NOT_SDOWN_HERE: I do not see the primary SDOWN myself;
    7. SHARD_SETTLING: the shard's previous failover is still settling;
    8. otherwise grant and record (epoch, candidate, shard).

    A refusal never changes the state.
    """
    refusal: VoteRefusal | None
    if req.epoch < state.voted_epoch:
        refusal = VoteRefusal.STALE_EPOCH
    elif req.epoch == state.voted_epoch and state.voted_for == req.candidate:
        return VoteDecision(granted=True, state=state, reason=None)
    elif req.epoch == state.voted_epoch and state.voted_for is not None:
        refusal = VoteRefusal.ALREADY_VOTED
    elif stalled:
        refusal = VoteRefusal.STALLED
    elif req.config_epoch < my_layout_epoch:
        refusal = VoteRefusal.STALE_LAYOUT
    elif not i_see_sdown:
        refusal = VoteRefusal.NOT_SDOWN_HERE
    elif shard_settling:
        refusal = VoteRefusal.SHARD_SETTLING
    else:
        return VoteDecision(
            granted=True, state=VoteState(req.epoch, req.candidate, req.shard), reason=None
        )
    return VoteDecision(granted=False, state=state, reason=refusal)


def majority(configured: int) -> int:
    """Votes needed out of the *configured* sentinels (never the quorum)."""
    return configured // 2 + 1


def is_elected(grants: Collection[str], configured: int) -> bool:
    """Leader for the epoch when distinct granting sentinels (self included if it voted for
    itself) reach a majority of the configured sentinels."""
    return len(frozenset(grants)) >= majority(configured)


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


# --- Stall guard ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StallGuard:
    """A tick much later than scheduled means this sentinel was stalled: it keeps observing
    but neither votes nor promotes until the cool-down ends."""

    interval_s: float
    threshold_s: float
    cooldown_s: float
    stalled_until: float = 0.0

    def tick(self, scheduled: float, actual: float) -> StallGuard:
        if actual - scheduled > self.threshold_s:
            return replace(self, stalled_until=actual + self.cooldown_s)
        return self

    def stalled(self, now: float) -> bool:
        return now < self.stalled_until


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


@dataclass(frozen=True)
class Step:
    failover: Failover
    action: Action
    reason: str


def start_failover(shard: int, epoch: int, failed_primary: str, now: float) -> Failover:
    return Failover(
        shard=shard,
        epoch=epoch,
        failed_primary=failed_primary,
        state=FailoverState.WAIT_START,
        entered_at=now,
    )


def _to(fo: Failover, state: FailoverState, now: float, action: Action, reason: str) -> Step:
    return Step(replace(fo, state=state, entered_at=now), action, reason)


def abort(fo: Failover, reason: AbortReason, now: float) -> Step:
    """Abort from outside the tick (e.g. LOST_LEADERSHIP); only possible before PROMOTE."""
    if fo.state not in _ABORTABLE:
        return Step(fo, Action.NONE, "not abortable after promotion started")
    return Step(
        replace(fo, state=FailoverState.ABORTED, entered_at=now, abort_reason=reason),
        Action.ABORT,
        reason.value,
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
) -> Step:
    """Advance the leader's failover by one tick and say what the executor must do."""
    S = FailoverState
    match fo.state:
        case S.WAIT_START:
            if not primary_sdown:
                return abort(fo, AbortReason.PRIMARY_RECOVERED, now)
            return _to(fo, S.SELECT_REPLICA, now, Action.SELECT, "select replica")
        case S.SELECT_REPLICA:
            if ranked is None:
                return Step(fo, Action.NONE, "awaiting replica ranking")
            candidate = next((r.name for r in ranked.chosen if r.name not in fo.tried), None)
            if candidate is None:
                return abort(fo, AbortReason.NO_ELIGIBLE_REPLICA, now)
            return Step(
                replace(fo, state=S.PROMOTE, entered_at=now, candidate=candidate),
                Action.SEND_TAKEOVER,
                "candidate selected",
            )
        case S.PROMOTE:
            return _to(fo, S.WAIT_PROMOTION, now, Action.CHECK_PROMOTED, "takeover sent")
        case S.WAIT_PROMOTION:
            if promoted:
                return _to(
                    fo, S.RECONF_REPLICAS, now, Action.REATTACH_REPLICAS, "candidate promoted"
                )
            if now - fo.entered_at > timeout_s:
                tried = fo.tried | ({fo.candidate} if fo.candidate is not None else set())
                return Step(
                    replace(
                        fo, state=S.SELECT_REPLICA, entered_at=now, candidate=None, tried=tried
                    ),
                    Action.SELECT,
                    "promotion timeout, next candidate",
                )
            return Step(fo, Action.CHECK_PROMOTED, "waiting for promotion")
        case S.RECONF_REPLICAS:
            if replicas_reattached or now - fo.entered_at > timeout_s:
                why = "replicas reattached" if replicas_reattached else "reattach timeout"
                return _to(fo, S.PUBLISH_LAYOUT, now, Action.PUBLISH, why)
            return Step(fo, Action.REATTACH_REPLICAS, "reattaching replicas")
        case S.PUBLISH_LAYOUT:
            if published:
                return _to(fo, S.DONE, now, Action.FINISH, "layout published")
            return Step(fo, Action.PUBLISH, "publishing layout")
        case S.DONE | S.ABORTED:
            return Step(fo, Action.NONE, "finished")


# --- Settling ------------------------------------------------------------------------------


def shard_settling(last_failover_done_at: float | None, now: float, settle_s: float) -> bool:
    """True while the shard's previous failover finished less than ``settle_s`` ago; no new
    failover of that shard starts (and no vote is granted for it) meanwhile."""
    return last_failover_done_at is not None and now - last_failover_done_at < settle_s


def in_promotion_grace(promoted_at: float | None, now: float, grace_s: float) -> bool:
    """True while a freshly promoted primary is within ``grace_s``; callers treat it as not
    down."""
    return promoted_at is not None and now - promoted_at < grace_s
