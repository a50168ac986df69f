"""Carrying out a sentinel's decisions: run for leader (an election over the bus) and, once
elected, drive the failover state machine of :mod:`sentinel.machine` against the engines.

Nothing is decided here: the vote on my own request comes from :func:`decide.vote_on`, the
count of the election from :func:`decide.tally`, and every failover step (including
re-sending TAKEOVER) from :func:`machine.step`. The executor sends, waits and reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.messages import Elected, VoteReply, VoteRequest
from cachefleet.nodes import NodeLink, myself_line
from cachefleet.plan import Plan
from sentinel import decide, machine, standalone
from sentinel.ballot import Ballot
from sentinel.decide import SOFT_REFUSALS, SentinelView, Tally, Timings, VoteRefusal
from sentinel.machine import Action, FailoverState

STEP_SLEEP_S = 0.02


class Host(Protocol):
    """What the executor needs from the sentinel process that owns it."""

    sid: str
    plan: Plan
    timings: Timings
    ballot: Ballot
    log: Any

    @property
    def admin(self) -> Mapping[str, NodeLink]: ...

    @property
    def layout(self) -> Layout | None: ...

    def snapshot(self, now: float) -> SentinelView: ...

    def live(self, now: float) -> int: ...

    def still_down(self, shard: int, primary: str) -> bool: ...

    def rank(self, shard: LayoutShard, failed: LayoutNode, now: float) -> machine.Ranked: ...

    def publish_vote(self, message: VoteRequest | VoteReply | Elected) -> None: ...

    def publish_layout(self, layout: Layout) -> None: ...

    def event(self, kind: str, **fields: Any) -> None: ...

    def report_once(self, kind: str, key: str, **fields: Any) -> None: ...

    def failover_done(self, shard: int, now: float) -> None: ...


@dataclass
class Election:
    shard: int
    failover_epoch: int
    primary: str
    grants: set[str]
    hard: set[str] = field(default_factory=set)  # refused for good
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Executor:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.elections: dict[int, Election] = {}  # failover epoch -> my open election

    # -- election -----------------------------------------------------------------------------

    def on_vote_reply(self, reply: VoteReply) -> None:
        if reply.candidate != self.host.sid:
            return
        election = self.elections.get(reply.failover_epoch)
        if election is None or election.shard != reply.shard:
            return
        if reply.granted:
            election.grants.add(reply.voter)
            election.hard.discard(reply.voter)
        else:
            refusal = VoteRefusal.__members__.get((reply.reason or "").upper())
            if refusal not in SOFT_REFUSALS:
                election.hard.add(reply.voter)
        election.changed.set()

    async def elect(self, shard: int, primary: str) -> tuple[int, bool]:
        """Run for leader of `shard`'s failover: (failover epoch, won)."""
        h = self.host
        t = h.timings
        now = time.monotonic()
        layout_epoch = h.layout.epoch if h.layout else 0
        epoch = h.ballot.next_epoch(layout_epoch)
        req = VoteRequest(h.sid, epoch, shard, primary, layout_epoch)
        mine = decide.vote_on(h.snapshot(now), h.ballot.vote, req, t, now)
        if not mine.granted:
            h.log.info("candidacy_refused", shard=shard, reason=mine.reason and mine.reason.name)
            return epoch, False
        h.ballot.record(mine.state)
        h.event("new_epoch", failover_epoch=epoch, shard=shard)
        election = Election(shard, epoch, primary, {h.sid})
        self.elections[epoch] = election
        deadline = now + t.election_timeout_s
        configured = h.plan.topology.sentinels.count
        asked_at = float("-inf")
        try:
            while True:
                now = time.monotonic()
                outcome = decide.tally(election.grants, election.hard, configured, h.live(now))
                if outcome is not Tally.OPEN or now >= deadline:
                    break
                if now - asked_at >= t.interval_s:
                    # asked again each interval: a voter that refused softly (it did not see
                    # the primary down yet) may grant on a later ask; a granted vote repeats
                    h.publish_vote(req)
                    asked_at = now
                election.changed.clear()
                wait = min(deadline, asked_at + t.interval_s) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(election.changed.wait(), max(wait, 0.001))
        finally:
            self.elections.pop(epoch, None)
        votes = sorted(election.grants)
        if outcome is not Tally.ELECTED:
            live = h.live(time.monotonic())
            majority = decide.majority(h.plan.topology.sentinels.count)
            if live < majority:
                h.report_once(
                    "no_quorum", primary, shard=shard, node=primary, failover_epoch=epoch,
                    votes=len(votes), reachable_sentinels=live, majority=majority,
                )  # fmt: skip
            h.log.info(
                "election_lost", shard=shard, failover_epoch=epoch, votes=votes,
                refused=sorted(election.hard), outcome=outcome.name,
            )  # fmt: skip
            return epoch, False
        h.event("elected_leader", shard=shard, failover_epoch=epoch, votes=votes)
        h.publish_vote(Elected(h.sid, epoch, shard))
        return epoch, True

    # -- failover -----------------------------------------------------------------------------

    async def failover(self, shard_id: int, primary: str, epoch: int) -> bool:
        """Drive the failover state machine to its end: True when the layout was published."""
        h = self.host
        t = h.timings
        assert h.layout is not None
        shard = h.layout.shard(shard_id)
        failed = next(n for n in shard.nodes if n.name == primary)
        t0 = time.monotonic()
        fo = machine.start_failover(shard_id, epoch, primary, t0)
        h.event("failover_started", shard=shard_id, failover_epoch=epoch, old_primary=primary)
        ranked: machine.Ranked | None = None
        promoted = reattached = published = False
        new_id: str | None = None
        while fo.state not in (FailoverState.DONE, FailoverState.ABORTED):
            now = time.monotonic()
            result = machine.step(
                fo, now=now, timeout_s=t.failover_timeout_s,
                primary_sdown=h.still_down(shard_id, primary), ranked=ranked, promoted=promoted,
                replicas_reattached=reattached, published=published,
                resend_s=t.takeover_resend_s,
            )  # fmt: skip
            fo = result.failover
            match result.action:
                case Action.SELECT:
                    ranked = h.rank(shard, failed, now)
                    for rep, why in ranked.excluded:
                        h.log.info(
                            "replica_excluded", shard=shard_id, node=rep.name, reason=why.name
                        )
                    continue
                case Action.SEND_TAKEOVER:
                    assert fo.candidate is not None
                    reply = await self.promote(fo.candidate)
                    h.log.info(
                        "takeover_sent", node=fo.candidate, reply=str(reply),
                        reason=result.reason.name,
                    )  # fmt: skip
                    promoted = False
                    continue
                case Action.CHECK_PROMOTED:
                    assert fo.candidate is not None
                    new_id = await self.check_promoted(fo.candidate)
                    promoted = new_id is not None
                    if promoted:
                        h.event(
                            "switch_primary", shard=shard_id, failover_epoch=epoch,
                            old_primary=primary, new_primary=fo.candidate,
                            zone=h.plan.node(fo.candidate).zone,
                        )  # fmt: skip
                        continue
                case Action.REATTACH_REPLICAS:
                    await self.reattach(shard, fo.candidate, new_id)
                    reattached = True
                    continue
                case Action.PUBLISH:
                    assert fo.candidate is not None and new_id is not None
                    layout = h.layout.with_primary(shard_id, fo.candidate, new_id, epoch)
                    h.publish_layout(layout)
                    published = True
                    continue
                case Action.FINISH | Action.ABORT:
                    break
                case Action.NONE:
                    pass
            await asyncio.sleep(STEP_SLEEP_S)
        now = time.monotonic()
        if fo.state is FailoverState.DONE or published:
            h.failover_done(shard_id, now)
            h.event(
                "failover_completed", shard=shard_id, failover_epoch=epoch, config_epoch=epoch,
                old_primary=primary, new_primary=fo.candidate,
                duration_ms=round((now - t0) * 1000),
            )  # fmt: skip
        else:
            reason = fo.abort_reason.name if fo.abort_reason else "UNKNOWN"
            h.event("failover_aborted", shard=shard_id, failover_epoch=epoch, reason=reason)
            if fo.abort_reason is machine.AbortReason.NO_ELIGIBLE_REPLICA:
                excluded = {r.name: why.name for r, why in (ranked.excluded if ranked else ())}
                h.event("no_eligible_replica", shard=shard_id, excluded=excluded)
        return fo.state is FailoverState.DONE or published

    async def promote(self, name: str) -> object:
        """TAKEOVER in cluster mode; REPLICAOF NO ONE with cluster mode disabled."""
        link = self.host.admin[name]
        if self.host.plan.topology.standalone:
            return await standalone.promote(link)
        return await link.call("CLUSTER", "FAILOVER", "TAKEOVER")

    async def check_promoted(self, name: str) -> str | None:
        if self.host.plan.topology.standalone:
            return await standalone.promoted_id(self.host.admin[name])
        text = await self.host.admin[name].call("CLUSTER", "NODES")
        if not isinstance(text, bytes | str):
            return None
        raw = text.decode() if isinstance(text, bytes) else text
        me = myself_line(raw)
        if me is not None and me.is_primary and me.slots:
            return me.id
        return None

    async def reattach(
        self, shard: LayoutShard, new_primary: str | None, new_id: str | None
    ) -> None:
        if not new_primary or not new_id:
            return
        sdown = self.host.snapshot(time.monotonic()).sdown
        for node in shard.replicas:
            if node.name == new_primary or node.name in sdown:
                continue  # a down replica is reattached by the engine (or its agent) on return
            if self.host.plan.topology.standalone:
                lead = self.host.plan.node(new_primary)
                await standalone.follow(self.host.admin[node.name], lead.host, lead.port)
                continue
            await self.host.admin[node.name].call("CLUSTER", "REPLICATE", new_id, timeout=1.0)
