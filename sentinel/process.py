"""A sentinel process: probes every node, shares its down-set, votes, and — when elected —
promotes a replica. I/O lives here; every decision is a call into :mod:`sentinel.decide`.

Loop shape (snapshot → decide → act): the probe tasks record observations; one tick every
``probe_interval_ms`` builds the down-set, publishes it when it changes, checks ODOWN for each
shard's primary and starts an election when allowed; an elected sentinel drives the failover
state machine (``decide.step``) and executes each returned action.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from cachefleet import bus
from cachefleet.events import append_event, make_event
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.nodes import NodeLink, Replication, Role, myself_line
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir
from sentinel import decide
from sentinel.decide import Action, FailoverState, Hello, VoteRequest, VoteState

HELLO_EVERY_S = 0.25
TAKEOVER_RESEND_S = 0.5


@dataclass
class Observation:
    first_probe: float
    last_ok: float | None = None
    reply: Replication | None = None


@dataclass
class Election:
    shard: int
    epoch: int
    primary: str
    grants: set[str]
    done: asyncio.Event
    refused: set[str] = field(default_factory=set)


class Sentinel:
    def __init__(self, *, plan: Plan, cdir: ClusterDir, sid: str) -> None:
        self.plan = plan
        self.cdir = cdir
        self.sid = sid
        self.zone = plan.sentinel(sid).zone
        self.address = plan.topology.zone_address(self.zone)
        cfg = plan.topology.sentinels
        self.configured = cfg.count
        self.quorum = cfg.quorum
        self.interval = cfg.probe_interval_ms / 1000
        self.down_after = cfg.down_after_ms / 1000
        self.failover_timeout = cfg.failover_timeout_ms / 1000
        self.probe_timeout = max(self.interval, self.down_after / 2)
        self.hello_max_age = max(1.0, 4 * HELLO_EVERY_S)
        self.grace = 2 * self.down_after  # a just-promoted primary is not judged down
        self.settle = 2 * self.down_after  # no new failover of a shard right after one
        self.election_timeout = max(0.5, 5 * self.interval)
        self.log = structlog.get_logger("sentinel").bind(cluster=plan.name, sentinel=sid)

        self.layout: Layout | None = None
        self.obs: dict[str, Observation] = {}
        self.probers = {
            n.name: NodeLink(host=n.host, port=n.port, source=self.address) for n in plan.nodes
        }
        # The failover executor's commands use their own connections: a probe never waits
        # behind a slow TAKEOVER and vice versa.
        self.admin = {
            n.name: NodeLink(host=n.host, port=n.port, source=self.address) for n in plan.nodes
        }
        self.hellos: dict[str, Hello] = {}
        self.hello_epochs: dict[str, int] = {}
        self.my_sdown: frozenset[str] = frozenset()
        self.sdown_since: dict[str, float] = {}
        self.odown_seen: set[str] = set()
        self.guard = decide.StallGuard(
            interval_s=self.interval,
            threshold_s=max(3 * self.interval, self.down_after / 2),
            cooldown_s=self.down_after,
        )
        self.state_path = cdir.sentinel_dir(sid) / "state.json"
        self.vote, self.epoch = self._load_state()
        self.elections: dict[int, Election] = {}
        self.failovers: dict[int, asyncio.Task[None]] = {}
        self.voted_at: dict[int, tuple[float, int, str]] = {}  # shard -> (when, epoch, leader)
        self.next_try: dict[int, float] = {}
        self.done_at: dict[int, float] = {}
        self.promoted_at: dict[str, float] = {}
        self.reported: set[tuple[str, str]] = set()
        self.stop = asyncio.Event()
        self.hello_topic = bus.topic(plan.name, "sentinels", sid, "hello")
        self.bus = bus.BusLink(
            host=plan.bus_host,
            port=plan.bus_port,
            name=f"sentinel-{sid}",
            will=(self.hello_topic, b"offline"),
            subscriptions=(
                bus.topic(plan.name, "layout"),
                bus.topic(plan.name, "sentinels", "+", "hello"),
                bus.topic(plan.name, "failover", "+", "votes"),
            ),
            on_message=self.on_message,
            on_connect=self.publish_hello,
            log=self.log,
        )

    # -- persistence ----------------------------------------------------------------------

    def _load_state(self) -> tuple[VoteState, int]:
        try:
            data = json.loads(self.state_path.read_text())
            vote = VoteState(data["voted_epoch"], data["voted_for"], data["voted_shard"])
            return vote, int(data["epoch"])
        except (OSError, ValueError, KeyError):
            return VoteState(), 0

    def _save_state(self) -> None:
        """Durable before a vote leaves this process: a restarted sentinel never votes twice."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        body = {
            "voted_epoch": self.vote.voted_epoch,
            "voted_for": self.vote.voted_for,
            "voted_shard": self.vote.voted_shard,
            "epoch": self.epoch,
        }
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.state_path)

    # -- events and hello -----------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        ev = make_event(kind, self.plan.name, sentinel=self.sid, **fields)
        append_event(self.cdir.events_path, ev)
        self.bus.publish(bus.topic(self.plan.name, "events"), bus.encode(ev))
        self.log.info(kind, **fields)

    def publish_hello(self) -> None:
        body = {
            "sentinel": self.sid,
            "zone": self.zone,
            "address": self.address,
            "sdown": sorted(self.my_sdown),
            "stalled": self.guard.stalled(time.monotonic()),
            "epoch": self.epoch,
            "layout_epoch": self.layout.epoch if self.layout else 0,
            "failing_over": sorted(self.failovers),
            "pid": os.getpid(),
        }
        self.bus.publish(self.hello_topic, bus.encode(body), retain=True)

    # -- bus input --------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        data = bus.decode(payload)
        now = time.monotonic()
        if parts[-1] == "layout" and data:
            try:
                layout = Layout.from_dict(data)
            except (KeyError, ValueError, TypeError):
                return
            if self.layout is None or layout.epoch >= self.layout.epoch:
                self._note_switches(self.layout, layout, now)
                self.layout = layout
                self.epoch = max(self.epoch, layout.epoch)
        elif parts[-1] == "hello" and len(parts) >= 2:
            sid = parts[-2]
            if sid == self.sid:
                return
            if data is None:
                self.hellos.pop(sid, None)  # offline will
                return
            self.hellos[sid] = Hello(
                sentinel=sid,
                zone=str(data.get("zone", "")),
                sdown=frozenset(data.get("sdown", [])),
                received_at=now,
                stalled=bool(data.get("stalled")),
            )
            self.hello_epochs[sid] = int(data.get("epoch", 0))
            self.epoch = max(self.epoch, self.hello_epochs[sid])
        elif parts[-1] == "votes" and data:
            if data.get("type") == "request":
                self.on_vote_request(data, now)
            elif data.get("type") == "vote":
                self.on_vote(data)
            elif data.get("type") == "elected" and data.get("candidate") != self.sid:
                # another sentinel leads this shard's failover: leave it the job
                shard = int(data["shard"])
                self.voted_at[shard] = (now, int(data["epoch"]), str(data["candidate"]))
                self.epoch = max(self.epoch, int(data["epoch"]))

    def _note_switches(self, old: Layout | None, new: Layout, now: float) -> None:
        """Every sentinel, not only the leader, learns that a shard just failed over: the
        shard settles and its new primary gets its grace period."""
        if old is None:
            return
        for shard in new.shards:
            try:
                before = old.shard(shard.id).primary
            except KeyError:
                continue
            after = shard.primary
            if after is not None and (before is None or before.name != after.name):
                self.done_at[shard.id] = now
                self.promoted_at[after.name] = now
                self.voted_at.pop(shard.id, None)  # that leader's job is done

    def _leader_in_charge(self, shard: int, candidate: str, now: float) -> bool:
        """I voted another sentinel leader of this shard's failover less than
        failover_timeout ago: give it that long before backing anyone else (like Sentinel's
        failover-timeout), so one failure never gets two failovers."""
        if shard in self.failovers:
            return True  # I am running for (or leading) this shard's failover myself
        voted = self.voted_at.get(shard)
        if voted is None or now - voted[0] >= self.failover_timeout:
            return False
        return voted[2] != candidate

    def current_primary(self, shard_id: int) -> str | None:
        if self.layout is None:
            return None
        try:
            primary = self.layout.shard(shard_id).primary
        except KeyError:
            return None
        return primary.name if primary else None

    def on_vote_request(self, data: dict[str, Any], now: float) -> None:
        req = VoteRequest(
            candidate=str(data["candidate"]),
            epoch=int(data["epoch"]),
            shard=int(data["shard"]),
            primary=str(data["primary"]),
            config_epoch=int(data["config_epoch"]),
        )
        if req.candidate == self.sid:
            return
        self.epoch = max(self.epoch, req.epoch)
        decision = decide.decide_vote(
            self.vote,
            req,
            my_layout_epoch=self.layout.epoch if self.layout else 0,
            # only a vote against the shard's *current* primary, which I see down myself
            i_see_sdown=req.primary in self.my_sdown
            and self.current_primary(req.shard) == req.primary,
            stalled=self.guard.stalled(now),
            shard_settling=decide.shard_settling(self.done_at.get(req.shard), now, self.settle)
            or self._leader_in_charge(req.shard, req.candidate, now),
        )
        if decision.granted and decision.state != self.vote:
            self.vote = decision.state
            self._save_state()
            self.voted_at[req.shard] = (now, req.epoch, req.candidate)
            self.event("vote_for_leader", shard=req.shard, epoch=req.epoch, leader=req.candidate)
        self.bus.publish(
            bus.topic(self.plan.name, "failover", str(req.shard), "votes"),
            bus.encode(
                {
                    "type": "vote",
                    "voter": self.sid,
                    "candidate": req.candidate,
                    "epoch": req.epoch,
                    "shard": req.shard,
                    "granted": decision.granted,
                    "reason": decision.reason.name if decision.reason else None,
                }
            ),
        )

    def on_vote(self, data: dict[str, Any]) -> None:
        if data.get("candidate") != self.sid:
            return
        election = self.elections.get(int(data["epoch"]))
        if election is None:
            return
        voter = str(data["voter"])
        (election.grants if data.get("granted") else election.refused).add(voter)
        answered = len(election.grants) + len(election.refused)
        # elected, or every sentinel that can answer has: no point waiting out the timeout
        if decide.is_elected(election.grants, self.configured) or answered >= self.live_sentinels(
            time.monotonic()
        ):
            election.done.set()

    # -- probing ----------------------------------------------------------------------------

    async def probe_loop(self, name: str) -> None:
        prober = self.probers[name]
        self.obs[name] = Observation(first_probe=time.monotonic())
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                reply = await prober.probe(self.probe_timeout)
            except Exception:  # a sentinel that stops probing would silently leave the quorum
                self.log.exception("probe_failed", node=name)
                await prober.close()
                reply = None
            if reply is not None:
                ob = self.obs[name]
                ob.last_ok, ob.reply = time.monotonic(), reply
            next_at = max(next_at + self.interval, time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def probe_view(self, name: str) -> decide.Probe:
        ob = self.obs.get(name) or Observation(first_probe=time.monotonic())
        r = ob.reply
        return decide.Probe(
            node=name,
            last_ok=ob.last_ok,
            first_probe=ob.first_probe,
            role=r.role if r else None,
            repl_offset=r.offset if r else 0,
            link_up=bool(r and r.link_up),
            link_down_since_s=r.link_down_s if r else 0.0,
        )

    def is_sdown(self, name: str, now: float) -> bool:
        if decide.in_promotion_grace(self.promoted_at.get(name), now, self.grace):
            return False
        return decide.is_sdown(self.probe_view(name), now, self.down_after)

    # -- the tick -----------------------------------------------------------------------------

    async def tick_loop(self) -> None:
        scheduled = time.monotonic() + self.interval
        last_hello = 0.0
        while not self.stop.is_set():
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            now = time.monotonic()
            was_stalled = self.guard.stalled(now)
            self.guard = self.guard.tick(scheduled, now)
            if self.guard.stalled(now) and not was_stalled:
                self.log.warning("stalled", late_s=round(now - scheduled, 3))
            scheduled = max(scheduled + self.interval, now)
            changed = self.observe(now)
            if changed or now - last_hello >= HELLO_EVERY_S:
                self.publish_hello()
                last_hello = now
            if not self.guard.stalled(now):
                self.consider_failovers(now)

    def observe(self, now: float) -> bool:
        if self.layout is None:
            return False
        sdown = frozenset(n.name for n in self.layout.nodes() if self.is_sdown(n.name, now))
        if sdown == self.my_sdown:
            return False
        if not self.guard.stalled(now):
            for name in sdown - self.my_sdown:
                self.sdown_since[name] = now
                self.event("sdown", node=name, role=self._role(name))
            for name in self.my_sdown - sdown:
                self.sdown_since.pop(name, None)
                self.odown_seen.discard(name)
                self.reported = {r for r in self.reported if r[1] != name}
                self.event("sdown_cleared", node=name)
        self.my_sdown = sdown
        return True

    def _role(self, name: str) -> str:
        if self.layout is None:
            return "unknown"
        return next((n.role for n in self.layout.nodes() if n.name == name), "unknown")

    def live_sentinels(self, now: float) -> int:
        fresh = sum(
            1
            for h in self.hellos.values()
            if now - h.received_at <= self.hello_max_age and not h.stalled
        )
        return fresh + 1

    def consider_failovers(self, now: float) -> None:
        if self.layout is None:
            return
        own = Hello(self.sid, self.zone, self.my_sdown, now, False)
        hellos = {**self.hellos, self.sid: own}
        majority = decide.majority(self.configured)
        for shard in self.layout.shards:
            primary = shard.primary
            if primary is None or primary.name not in self.my_sdown:
                continue
            if shard.id in self.failovers:
                continue
            if now - self.sdown_since.get(primary.name, now) < 0:
                continue
            if not decide.is_odown(primary.name, hellos, now, self.quorum, self.hello_max_age):
                self._check_quorum(shard.id, primary.name, now, max(self.quorum, majority))
                continue
            if primary.name not in self.odown_seen:
                self.odown_seen.add(primary.name)
                self.event("odown", node=primary.name, shard=shard.id, quorum=self.quorum)
            if not shard.replicas:
                self.report_once(
                    "no_eligible_replica", primary.name, shard=shard.id, reason="NO_REPLICAS"
                )
                continue
            if decide.shard_settling(self.done_at.get(shard.id), now, self.settle):
                continue
            voted = self.voted_at.get(shard.id)
            if voted and now - voted[0] < self.failover_timeout:
                continue  # another sentinel is leading this shard's failover
            if now < self.next_try.get(shard.id, 0.0):
                continue
            if not self._check_quorum(shard.id, primary.name, now, majority):
                continue
            self.next_try[shard.id] = now + self.failover_timeout
            self.failovers[shard.id] = asyncio.create_task(
                self.run_candidacy(shard.id, primary.name),
                name=f"sentinel[{self.sid}].failover[{shard.id}]",
            )

    def _check_quorum(self, shard: int, primary: str, now: float, needed: int) -> bool:
        """Enough sentinels reachable to reach `needed`? If not, say so (once per episode):
        a minority never promotes."""
        live = self.live_sentinels(now)
        if live >= needed:
            return True
        self.report_once(
            "no_quorum", primary, shard=shard, node=primary, reachable_sentinels=live,
            quorum=self.quorum, majority=decide.majority(self.configured),
        )  # fmt: skip
        return False

    def report_once(self, kind: str, key: str, **fields: Any) -> None:
        """One event per (kind, node) until that node's SDOWN clears."""
        if (kind, key) in self.reported:
            return
        self.reported.add((kind, key))
        self.event(kind, **fields)

    # -- election and failover ----------------------------------------------------------------

    async def run_candidacy(self, shard: int, primary: str) -> None:
        try:
            await asyncio.sleep(random.uniform(0, 0.1))  # de-synchronise competing candidates
            now = time.monotonic()
            voted = self.voted_at.get(shard)
            if voted and now - voted[0] < self.failover_timeout:
                return
            if primary not in self.my_sdown or self.guard.stalled(now):
                return
            if self.current_primary(shard) != primary:
                return  # the shard failed over meanwhile
            elected, epoch = await self.elect(shard, primary)
            if not elected:
                # a lost round is usually a voter that saw the primary down a few ms later
                # than us: retry soon, jittered so that competing candidates drift apart
                self.next_try[shard] = time.monotonic() + random.uniform(0.05, 0.25)
                return
            await self.failover(shard, primary, epoch)
        except Exception:
            self.log.exception("failover_crashed", shard=shard)
        finally:
            self.failovers.pop(shard, None)
            self.publish_hello()

    async def elect(self, shard: int, primary: str) -> tuple[bool, int]:
        layout_epoch = self.layout.epoch if self.layout else 0
        epoch = max(self.epoch, self.vote.voted_epoch, layout_epoch) + 1
        self.epoch = epoch
        req = VoteRequest(self.sid, epoch, shard, primary, layout_epoch)
        decision = decide.decide_vote(
            self.vote, req, my_layout_epoch=layout_epoch, i_see_sdown=True,
            stalled=False, shard_settling=False,
        )  # fmt: skip
        if not decision.granted:
            return False, epoch
        self.vote = decision.state
        self._save_state()
        self.event("new_epoch", epoch=epoch, shard=shard)
        election = Election(shard, epoch, primary, {self.sid}, asyncio.Event())
        self.elections[epoch] = election
        self.bus.publish(
            bus.topic(self.plan.name, "failover", str(shard), "votes"),
            bus.encode(
                {
                    "type": "request",
                    "candidate": self.sid,
                    "epoch": epoch,
                    "shard": shard,
                    "primary": primary,
                    "config_epoch": layout_epoch,
                }
            ),
        )
        if decide.is_elected(election.grants, self.configured):
            election.done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(election.done.wait(), self.election_timeout)
        self.elections.pop(epoch, None)
        if not decide.is_elected(election.grants, self.configured):
            live = self.live_sentinels(time.monotonic())
            if live < decide.majority(self.configured):
                self.report_once(
                    "no_quorum", primary, shard=shard, node=primary, epoch=epoch,
                    votes=len(election.grants), reachable_sentinels=live,
                    majority=decide.majority(self.configured),
                )  # fmt: skip
            self.log.info("election_lost", shard=shard, epoch=epoch, votes=sorted(election.grants))
            return False, epoch
        self.event("elected_leader", shard=shard, epoch=epoch, votes=sorted(election.grants))
        self.bus.publish(
            bus.topic(self.plan.name, "failover", str(shard), "votes"),
            bus.encode({"type": "elected", "candidate": self.sid, "epoch": epoch, "shard": shard}),
        )
        return True, epoch

    def replicas_view(self, shard: LayoutShard, failed: LayoutNode, now: float) -> decide.Ranked:
        by_addr = {(n.host, n.port): n.name for n in self.plan.nodes}
        replicas = []
        for node in shard.replicas:
            ob = self.obs.get(node.name)
            reply = ob.reply if ob else None
            fresh = bool(
                ob and ob.last_ok and now - ob.last_ok <= self.probe_timeout + self.interval
            )
            primary = by_addr.get(reply.primary_addr) if reply and reply.primary_addr else None
            replicas.append(
                decide.Replica(
                    name=node.name,
                    zone=node.zone,
                    repl_offset=reply.offset if reply else 0,
                    reachable=fresh and reply is not None and reply.role is Role.REPLICA,
                    sdown=self.is_sdown(node.name, now),
                    link_down_s=reply.link_down_s if reply else float("inf"),
                    primary=primary,
                )
            )
        since = self.sdown_since.get(failed.name, now)
        return decide.rank_replicas(
            replicas,
            failed_primary=failed.name,
            failed_zone=failed.zone,
            max_link_down_s=(now - since) + 10 * self.down_after,
        )

    async def failover(self, shard_id: int, primary: str, epoch: int) -> None:
        assert self.layout is not None
        shard = self.layout.shard(shard_id)
        failed = next(n for n in shard.nodes if n.name == primary)
        t0 = time.monotonic()
        fo = decide.start_failover(shard_id, epoch, primary, t0)
        self.event("failover_started", shard=shard_id, epoch=epoch, failed_primary=primary)
        ranked: decide.Ranked | None = None
        promoted = reattached = published = False
        new_id: str | None = None
        sent_at = 0.0
        while fo.state not in (FailoverState.DONE, FailoverState.ABORTED):
            now = time.monotonic()
            still_down = primary in self.my_sdown and self.current_primary(shard_id) == primary
            result = decide.step(
                fo, now=now, timeout_s=self.failover_timeout,
                primary_sdown=still_down, ranked=ranked, promoted=promoted,
                replicas_reattached=reattached, published=published,
            )  # fmt: skip
            fo = result.failover
            match result.action:
                case Action.SELECT:
                    ranked = self.replicas_view(shard, failed, now)
                    for rep, why in ranked.excluded:
                        self.log.info(
                            "replica_excluded", shard=shard_id, node=rep.name, reason=why.name
                        )
                    continue
                case Action.SEND_TAKEOVER:
                    assert fo.candidate is not None
                    reply = await self.admin[fo.candidate].call("CLUSTER", "FAILOVER", "TAKEOVER")
                    self.log.info("takeover_sent", node=fo.candidate, reply=str(reply))
                    sent_at = time.monotonic()
                    promoted = False
                    continue
                case Action.CHECK_PROMOTED:
                    assert fo.candidate is not None
                    new_id = await self.check_promoted(fo.candidate)
                    promoted = new_id is not None
                    if not promoted and time.monotonic() - sent_at > TAKEOVER_RESEND_S:
                        # not taken yet (lost on the way, or refused): ask again until the
                        # failover timeout moves on to the next candidate
                        reply = await self.admin[fo.candidate].call(
                            "CLUSTER", "FAILOVER", "TAKEOVER"
                        )
                        self.log.info("takeover_resent", node=fo.candidate, reply=str(reply))
                        sent_at = time.monotonic()
                    if promoted:
                        self.event(
                            "switch_primary", shard=shard_id, epoch=epoch, old_primary=primary,
                            new_primary=fo.candidate, zone=self.plan.node(fo.candidate).zone,
                        )  # fmt: skip
                        continue
                case Action.REATTACH_REPLICAS:
                    await self.reattach(shard, fo.candidate, new_id)
                    reattached = True
                    continue
                case Action.PUBLISH:
                    assert fo.candidate is not None and new_id is not None
                    await self.publish_layout(shard_id, fo.candidate, new_id, epoch)
                    published = True
                    continue
                case Action.FINISH:
                    break
                case Action.ABORT:
                    break
                case Action.NONE:
                    pass
            await asyncio.sleep(0.02)
        now = time.monotonic()
        if fo.state == FailoverState.DONE or published:
            self.done_at[shard_id] = now
            self.event(
                "failover_completed", shard=shard_id, epoch=epoch, new_primary=fo.candidate,
                duration_ms=round((now - t0) * 1000),
            )  # fmt: skip
        else:
            reason = fo.abort_reason.name if fo.abort_reason else "UNKNOWN"
            self.event("failover_aborted", shard=shard_id, epoch=epoch, reason=reason)
            if fo.abort_reason == decide.AbortReason.NO_ELIGIBLE_REPLICA:
                excluded = {r.name: why.name for r, why in (ranked.excluded if ranked else ())}
                self.event("no_eligible_replica", shard=shard_id, excluded=excluded)

    async def check_promoted(self, name: str) -> str | None:
        text = await self.admin[name].call("CLUSTER", "NODES")
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
        for node in shard.replicas:
            if node.name == new_primary:
                continue
            if node.name in self.my_sdown:
                continue  # it is reattached by the engine (or its agent) when it returns
            await self.admin[node.name].call("CLUSTER", "REPLICATE", new_id, timeout=1.0)

    async def publish_layout(
        self, shard_id: int, new_primary: str, new_id: str, epoch: int
    ) -> None:
        assert self.layout is not None
        layout = self.layout.with_primary(shard_id, new_primary, new_id, epoch)
        payload = bus.encode(layout.to_dict())
        self.bus.publish(bus.topic(self.plan.name, "layout"), payload, retain=True)
        self.layout = layout
        self.promoted_at[new_primary] = time.monotonic()
        tmp = self.cdir.root / f"layout.{self.sid}.tmp"
        tmp.write_text(json.dumps(layout.to_dict(), indent=1))
        tmp.replace(self.cdir.root / "layout.json")

    # -- lifetime -----------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.log.info("sentinel_started", zone=self.zone, epoch=self.epoch)
        async with asyncio.TaskGroup() as tg:
            for name in self.probers:
                tg.create_task(self.probe_loop(name), name=f"sentinel[{self.sid}].probe[{name}]")
            tick = tg.create_task(self.tick_loop(), name=f"sentinel[{self.sid}].tick")
            bus_stop = asyncio.Event()
            pump = tg.create_task(
                self.bus.run(bus_stop, [(self.hello_topic, b"offline")]),
                name=f"sentinel[{self.sid}].bus",
            )
            await self.stop.wait()
            for task in self.failovers.values():
                task.cancel()
            tick.cancel()
            bus_stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), 2.0)
            pump.cancel()
        for prober in [*self.probers.values(), *self.admin.values()]:
            await prober.close()
        self.log.info("sentinel_stopped")
