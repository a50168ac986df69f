"""The sentinel's pure decisions: SDOWN/ODOWN, votes, the start of a failover, elections.

Snapshot -> decide -> act. Each tick the sentinel process builds one frozen
:class:`SentinelView` of what it knows (its probes' down-set, the hellos it heard, the layout,
its votes and elections, settling and grace times, the stall guard) and calls
:func:`next_actions`, which returns one :class:`Decision` per shard: the action to take and
its enum reason, including every reason not to act (:class:`NoFailover`). Votes
(:func:`vote_on`) and the count of an election (:func:`tally`) are decided here as well. The
I/O side (:mod:`sentinel.process`, :mod:`sentinel.executor`) only carries decisions out;
the leader's failover state machine is in :mod:`sentinel.machine`.

Everything is a pure function of immutable inputs and a monotonic ``now`` in seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from cachefleet.messages import VoteRequest
from cachefleet.topology import Sentinels

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


class VoteRefusal(enum.Enum):
    STALE_EPOCH = "stale_epoch"
    ALREADY_VOTED = "already_voted"
    STALE_LAYOUT = "stale_layout"
    NOT_SDOWN_HERE = "not_sdown_here"
    STALLED = "stalled"
    SHARD_SETTLING = "shard_settling"
    OTHER_LEADER = "other_leader"
    CANDIDATE = "candidate"  # I am running for this shard's failover myself


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
    other_leader: bool = False,
    candidate: bool = False,
) -> VoteDecision:
    """Grant or refuse one vote request. Checks, in this order:

    1. STALE_EPOCH: the request's epoch is older than the one I last voted in;
    2. same epoch and I already voted for this candidate: grant again, state unchanged;
    3. ALREADY_VOTED: same epoch, I voted for someone else;
    4. STALLED: I am in stall cool-down;
    5. STALE_LAYOUT: the candidate's layout epoch is older than mine;
    6. NOT_SDOWN_HERE: I do not see the primary SDOWN myself;
    7. SHARD_SETTLING: the shard's previous failover is still settling;
    8. OTHER_LEADER: another sentinel leads this shard's failover;
    9. CANDIDATE: I am running for it myself (in an older epoch: it may end soon);
    10. otherwise grant and record (epoch, candidate, shard).

    A refusal never changes the state.
    """
    refusal: VoteRefusal | None
    epoch = req.failover_epoch
    if epoch < state.voted_epoch:
        refusal = VoteRefusal.STALE_EPOCH
    elif epoch == state.voted_epoch and state.voted_for == req.candidate:
        return VoteDecision(granted=True, state=state, reason=None)
    elif epoch == state.voted_epoch and state.voted_for is not None:
        refusal = VoteRefusal.ALREADY_VOTED
    elif stalled:
        refusal = VoteRefusal.STALLED
    elif req.config_epoch < my_layout_epoch:
        refusal = VoteRefusal.STALE_LAYOUT
    elif not i_see_sdown:
        refusal = VoteRefusal.NOT_SDOWN_HERE
    elif shard_settling:
        refusal = VoteRefusal.SHARD_SETTLING
    elif other_leader:
        refusal = VoteRefusal.OTHER_LEADER
    elif candidate:
        refusal = VoteRefusal.CANDIDATE
    else:
        return VoteDecision(
            granted=True, state=VoteState(epoch, req.candidate, req.shard), reason=None
        )
    return VoteDecision(granted=False, state=state, reason=refusal)


def majority(configured: int) -> int:
    """Votes needed out of the *configured* sentinels (never the quorum)."""
    return configured // 2 + 1


def is_elected(grants: Collection[str], configured: int) -> bool:
    """Leader for the epoch when distinct granting sentinels (self included if it voted for
    itself) reach a majority of the configured sentinels."""
    return len(frozenset(grants)) >= majority(configured)


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


# --- Settling ------------------------------------------------------------------------------


def shard_settling(last_failover_done_at: float | None, now: float, settle_s: float) -> bool:
    """True while the shard's previous failover finished less than ``settle_s`` ago; no new
    failover of that shard starts (and no vote is granted for it) meanwhile."""
    return last_failover_done_at is not None and now - last_failover_done_at < settle_s


def in_promotion_grace(promoted_at: float | None, now: float, grace_s: float) -> bool:
    """True while a freshly promoted primary is within ``grace_s``; callers treat it as not
    down."""
    return promoted_at is not None and now - promoted_at < grace_s


# --- Timings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timings:
    """The sentinel's timings in seconds, derived (and validated) with the topology."""

    interval_s: float
    down_after_s: float
    failover_timeout_s: float
    probe_timeout_s: float
    hello_max_age_s: float
    grace_s: float
    settle_s: float
    election_timeout_s: float
    candidacy_delay_s: float
    takeover_resend_s: float

    @classmethod
    def from_settings(cls, s: Sentinels) -> Timings:
        return cls(
            interval_s=s.probe_interval_ms / 1000,
            down_after_s=s.down_after_ms / 1000,
            failover_timeout_s=s.failover_timeout_ms / 1000,
            probe_timeout_s=s.probe_timeout_ms / 1000,
            hello_max_age_s=s.hello_max_age_ms / 1000,
            grace_s=s.grace_ms / 1000,
            settle_s=s.settle_ms / 1000,
            election_timeout_s=s.election_timeout_ms / 1000,
            candidacy_delay_s=s.candidacy_delay_ms / 1000,
            takeover_resend_s=s.takeover_resend_ms / 1000,
        )


# --- The per-tick view ---------------------------------------------------------------------


@dataclass(frozen=True)
class Voted:
    """The leader of a shard's failover that I voted for, or heard was elected, and when."""

    at: float
    failover_epoch: int
    leader: str


@dataclass(frozen=True)
class ShardView:
    """What this sentinel knows about one shard."""

    id: int
    primary: str | None
    replicas: tuple[str, ...]
    done_at: float | None = None  # when its last failover completed (as seen here)
    voted: Voted | None = None
    running: bool = False  # my election or failover of this shard is in progress
    retry_at: float = 0.0  # after a lost election: no new candidacy before this
    candidacy_at: float | None = None  # my candidacy is scheduled for this time
    pending: VoteRequest | None = None  # a request I refused only for not seeing it down
    pending_at: float = 0.0


@dataclass(frozen=True)
class SentinelView:
    """One tick's snapshot of everything a start-of-failover decision depends on."""

    sentinel: str
    zone: str
    configured: int
    quorum: int
    stalled: bool
    sdown: frozenset[str]  # my down-set (promotion grace already applied)
    hellos: Mapping[str, Hello]  # the other sentinels' latest hellos
    shards: tuple[ShardView, ...]
    config_epoch: int  # the layout's epoch
    promoted_at: Mapping[str, float]

    def shard(self, shard_id: int) -> ShardView | None:
        return next((s for s in self.shards if s.id == shard_id), None)


def live_sentinels(view: SentinelView, t: Timings, now: float) -> int:
    """Sentinels I can count on: me plus every fresh, non-stalled hello."""
    fresh = sum(
        1
        for h in view.hellos.values()
        if now - h.received_at <= t.hello_max_age_s and not h.stalled
    )
    return fresh + 1


def other_leader(shard: ShardView, candidate: str, t: Timings, now: float) -> bool:
    """Someone other than `candidate` is in charge of this shard's failover: I voted for (or
    heard of) another leader less than failover_timeout ago."""
    v = shard.voted
    return v is not None and now - v.at < t.failover_timeout_s and v.leader != candidate


# --- The start of a failover ---------------------------------------------------------------


class Start(enum.Enum):
    """What the executor does for a shard this tick."""

    NONE = "none"
    SCHEDULE_CANDIDACY = "schedule_candidacy"  # draw a delay in [0, candidacy_delay_s]
    CANCEL_CANDIDACY = "cancel_candidacy"  # a scheduled candidacy no longer applies
    ASK_FOR_VOTES = "ask_for_votes"  # run for leader of this shard's failover now
    VOTE_PENDING = "vote_pending"  # answer again a request refused before I saw it down


class NoFailover(enum.Enum):
    """Why no failover of a shard starts this tick (checked in this order)."""

    NO_PRIMARY = "no_primary"
    GRACE = "grace"  # its primary was promoted moments ago
    PRIMARY_OK = "primary_ok"  # I do not see its primary down
    STALLED = "stalled"  # my stall guard is cooling down
    ALREADY_RUNNING = "already_running"  # my election or failover of it is in progress
    NO_QUORUM = "no_quorum"  # too few live sentinels to reach ODOWN or a majority
    NOT_ODOWN = "not_odown"  # fewer than quorum sentinels see it down
    NO_REPLICAS = "no_replicas"
    SETTLING = "settling"  # its previous failover finished moments ago
    OTHER_LEADER = "other_leader"  # another sentinel leads its failover
    RETRY_LATER = "retry_later"  # I lost an election moments ago
    CANDIDACY_DELAY = "candidacy_delay"  # my randomised candidacy delay is running


class Go(enum.Enum):
    """Why a candidacy is scheduled or started."""

    ODOWN = "odown"  # I am the shard's preferred candidate: a short random delay
    DEFER = "defer"  # another live sentinel is preferred: I run only if it has not led
    DELAY_OVER = "delay_over"
    PENDING_REQUEST = "pending_request"  # another candidate asked first: vote, not compete


@dataclass(frozen=True)
class Decision:
    shard: int
    action: Start
    reason: NoFailover | Go
    primary: str | None = None
    odown: bool = False
    live: int = 0
    wait_s: float = 0.0  # SCHEDULE_CANDIDACY: wait this long plus a random candidacy delay


def _decide_shard(view: SentinelView, sv: ShardView, t: Timings, now: float) -> Decision:
    def no(reason: NoFailover, *, odown: bool = False, live: int = 0) -> Decision:
        action = Start.CANCEL_CANDIDACY if sv.candidacy_at is not None else Start.NONE
        if reason is NoFailover.CANDIDACY_DELAY:
            action = Start.NONE
        return Decision(sv.id, action, reason, sv.primary, odown, live)

    p = sv.primary
    if p is None:
        return no(NoFailover.NO_PRIMARY)
    if in_promotion_grace(view.promoted_at.get(p), now, t.grace_s):
        return no(NoFailover.GRACE)
    if p not in view.sdown:
        return no(NoFailover.PRIMARY_OK)
    if view.stalled:
        return no(NoFailover.STALLED)
    if sv.running:
        return no(NoFailover.ALREADY_RUNNING)
    if (
        sv.pending is not None
        and sv.pending.primary == p
        and now - sv.pending_at <= t.election_timeout_s
    ):
        return Decision(sv.id, Start.VOTE_PENDING, Go.PENDING_REQUEST, p)
    live = live_sentinels(view, t, now)
    need = majority(view.configured)
    own = Hello(view.sentinel, view.zone, view.sdown, now, False)
    odown = is_odown(p, {**view.hellos, view.sentinel: own}, now, view.quorum, t.hello_max_age_s)
    if not odown:
        if live < max(view.quorum, need):
            return no(NoFailover.NO_QUORUM, live=live)
        return no(NoFailover.NOT_ODOWN, live=live)
    if not sv.replicas:
        return no(NoFailover.NO_REPLICAS, odown=True, live=live)
    if shard_settling(sv.done_at, now, t.settle_s):
        return no(NoFailover.SETTLING, odown=True, live=live)
    if other_leader(sv, view.sentinel, t, now):
        return no(NoFailover.OTHER_LEADER, odown=True, live=live)
    if now < sv.retry_at:
        return no(NoFailover.RETRY_LATER, odown=True, live=live)
    if live < need:
        return no(NoFailover.NO_QUORUM, odown=True, live=live)
    if sv.candidacy_at is None:
        if preferred_candidate(view, sv.id, t, now) == view.sentinel:
            return Decision(sv.id, Start.SCHEDULE_CANDIDACY, Go.ODOWN, p, True, live)
        wait = t.election_timeout_s + t.candidacy_delay_s
        return Decision(sv.id, Start.SCHEDULE_CANDIDACY, Go.DEFER, p, True, live, wait)
    if now < sv.candidacy_at:
        return no(NoFailover.CANDIDACY_DELAY, odown=True, live=live)
    return Decision(sv.id, Start.ASK_FOR_VOTES, Go.DELAY_OVER, p, True, live)


def preferred_candidate(view: SentinelView, shard: int, t: Timings, now: float) -> str:
    """The live sentinel that runs first for `shard`'s failover: the live ids in order,
    rotated by shard so leadership spreads. The others wait a round before running, and vote
    for it meanwhile: sentinels that see ODOWN at once then never split the vote, however
    slow the bus is (a random delay alone only helps when the bus is faster than it)."""
    fresh = [
        sid
        for sid, h in view.hellos.items()
        if now - h.received_at <= t.hello_max_age_s and not h.stalled
    ]
    live = sorted({view.sentinel, *fresh})
    return live[(shard - 1) % len(live)]


def next_actions(view: SentinelView, t: Timings, now: float) -> tuple[Decision, ...]:
    """One decision per shard of the layout: schedule, cancel or start a candidacy for the
    failover of its primary, or the reason not to."""
    return tuple(_decide_shard(view, sv, t, now) for sv in view.shards)


# --- Votes, from the view ------------------------------------------------------------------


def vote_on(
    view: SentinelView, ballot: VoteState, req: VoteRequest, t: Timings, now: float
) -> VoteDecision:
    """Grant or refuse `req` (another sentinel's, or my own when I run) from what the view
    knows: I see the shard's *current* primary down, the shard is not settling, and nobody
    else leads its failover. A sentinel still in its candidacy delay is not running: it
    votes for the first request it sees instead of competing."""
    sv = view.shard(req.shard)
    if sv is None:
        sv = ShardView(id=req.shard, primary=None, replicas=())
    return decide_vote(
        ballot,
        req,
        my_layout_epoch=view.config_epoch,
        i_see_sdown=req.primary in view.sdown and sv.primary == req.primary,
        stalled=view.stalled,
        shard_settling=shard_settling(sv.done_at, now, t.settle_s),
        other_leader=other_leader(sv, req.candidate, t, now),
        candidate=sv.running and req.candidate != view.sentinel,
    )


#: Refusals that may turn into a grant when the request is asked again.
SOFT_REFUSALS = frozenset({VoteRefusal.NOT_SDOWN_HERE, VoteRefusal.STALLED, VoteRefusal.CANDIDATE})


class Tally(enum.Enum):
    ELECTED = "elected"
    LOST = "lost"  # the hard refusals leave no majority
    OPEN = "open"


def tally(
    grants: Collection[str], hard_refusals: Collection[str], configured: int, live: int
) -> Tally:
    """The count of one election: elected with a majority of the configured sentinels; lost
    once the sentinels that refused for good leave no majority among those that can answer."""
    if is_elected(grants, configured):
        return Tally.ELECTED
    can_answer = min(configured, max(live, len(frozenset(grants))))
    if can_answer - len(frozenset(hard_refusals) - frozenset(grants)) < majority(configured):
        return Tally.LOST
    return Tally.OPEN


def retry_delay_after_abort(t: Timings) -> float:
    """After a failover I led was aborted (before promotion), the shard waits a failover
    timeout before anyone of mine runs for it again, as Sentinel does."""
    return t.failover_timeout_s


def retry_delay(me: str, rivals: Collection[str], t: Timings) -> float:
    """After a lost election, how long before I may run again. Candidates that split a vote
    (each voted for itself in the same epoch) must not collide again: the lowest sentinel id
    among them runs again at once, the others wait for its next election and vote in it."""
    others = frozenset(rivals) - {me}
    if not others or me < min(others):
        return 0.0
    return t.election_timeout_s + t.candidacy_delay_s
