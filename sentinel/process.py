"""A sentinel process: wiring, probing and the tick. Decisions are in :mod:`sentinel.decide`
(start of a failover, votes, elections) and :mod:`sentinel.machine` (the leader's failover);
:mod:`sentinel.executor` carries them out; :mod:`sentinel.ballot` keeps the vote on disk;
every bus message is parsed by :mod:`cachefleet.messages` before anything reads it.

Loop shape (snapshot -> decide -> act): probe tasks record observations; one tick every
``probe_interval_ms`` computes the down-set, publishes the hello when it changes, builds a
frozen :class:`~sentinel.decide.SentinelView` and executes what
:func:`~sentinel.decide.next_actions` returns for each shard.

``async with Sentinel(plan=..., cdir=..., sid=...) as s:`` starts the named tasks
(``sentinel[s1].probe[<node>]``, ``.tick``, ``.bus``, ``.candidacy[<shard>]``) in a
TaskGroup and stops them on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from types import TracebackType
from typing import Any

import structlog

from cachefleet import announce, bus, messages
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.messages import Elected, MessageError, VoteReply, VoteRequest
from cachefleet.nodes import NodeLink
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir
from sentinel import decide, machine, standalone
from sentinel.ballot import Ballot
from sentinel.decide import Decision, NoFailover, SentinelView, ShardView, Start, Timings, Voted
from sentinel.executor import Executor
from sentinel.probing import Probes

HELLO_EVERY_S = 0.25


class Sentinel:
    def __init__(self, *, plan: Plan, cdir: ClusterDir, sid: str) -> None:
        self.plan = plan
        self.cdir = cdir
        self.sid = sid
        self.zone = plan.sentinel(sid).zone
        self.address = plan.topology.zone_address(self.zone)
        self.settings = plan.topology.sentinels
        self.timings = Timings.from_settings(self.settings)
        self.known = messages.Known.from_plan(plan)
        self.log = structlog.get_logger("sentinel").bind(cluster=plan.name, sentinel=sid)

        self._layout: Layout | None = None
        # Probes and the failover executor speak as the control plane's engine user: a client
        # cannot lock them out. The executor's commands use their own connections: a probe
        # never waits behind a slow TAKEOVER and vice versa.
        auth = cdir.admin()
        self.probes = Probes(
            plan=plan, source=self.address, auth=auth, timings=self.timings, log=self.log
        )
        self.admin = {
            n.name: NodeLink(host=n.host, port=n.port, source=self.address, auth=auth)
            for n in plan.nodes
        }
        self.hellos: dict[str, decide.Hello] = {}
        self.sdown: frozenset[str] = frozenset()
        self.sdown_since: dict[str, float] = {}
        self.odown_seen: set[str] = set()
        t = self.timings
        self.guard = decide.StallGuard(
            interval_s=t.interval_s,
            threshold_s=max(3 * t.interval_s, t.down_after_s / 2),
            cooldown_s=t.down_after_s,
        )
        self.ballot = Ballot(cdir.sentinel_dir(sid) / "state.json")
        self.executor = Executor(self)
        # per shard
        self.running: dict[int, asyncio.Task[None]] = {}
        self.voted: dict[int, Voted] = {}
        self.retry_at: dict[int, float] = {}
        self.candidacy_at: dict[int, float] = {}
        self.done_at: dict[int, float] = {}
        self.last_decision: dict[int, tuple[Start, NoFailover | decide.Go]] = {}
        self.promoted_at: dict[str, float] = {}
        self.astray_since: dict[str, float] = {}  # cluster mode disabled: see realign()
        self.realigned_at: dict[str, float] = {}
        self.reported: set[tuple[str, str]] = set()
        self.rivals: dict[tuple[int, int], set[str]] = {}  # (shard, epoch) -> candidates
        self.pending: dict[int, tuple[VoteRequest, float]] = {}  # refused before I saw down
        self.rejected: Counter[str] = Counter()  # bad bus messages, per topic
        self.stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bus_stop = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self.layout_topic = bus.topic(plan.name, "layout")
        self.hello_topic = bus.topic(plan.name, "sentinels", sid, "hello")
        self.bus = bus.BusLink(
            host=plan.bus_host,
            port=plan.bus_port,
            name=f"sentinel-{sid}",
            will=(self.hello_topic, messages.OFFLINE),
            subscriptions=(
                self.layout_topic,
                bus.topic(plan.name, "sentinels", "+", "hello"),
                bus.topic(plan.name, "failover", "+", "votes"),
            ),
            on_message=self.on_message,
            on_connect=self.publish_hello,
            log=self.log,
        )

    # -- what the executor reads and calls ------------------------------------------------------

    @property
    def layout(self) -> Layout | None:
        return self._layout

    def current_primary(self, shard_id: int) -> str | None:
        if self._layout is None:
            return None
        try:
            primary = self._layout.shard(shard_id).primary
        except KeyError:
            return None
        return primary.name if primary else None

    def snapshot(self, now: float) -> SentinelView:
        shards: tuple[ShardView, ...] = ()
        if self._layout is not None:
            shards = tuple(
                ShardView(
                    id=s.id,
                    primary=s.primary.name if s.primary else None,
                    replicas=tuple(n.name for n in s.replicas),
                    done_at=self.done_at.get(s.id),
                    voted=self.voted.get(s.id),
                    running=s.id in self.running,
                    retry_at=self.retry_at.get(s.id, 0.0),
                    candidacy_at=self.candidacy_at.get(s.id),
                    pending=self.pending[s.id][0] if s.id in self.pending else None,
                    pending_at=self.pending[s.id][1] if s.id in self.pending else 0.0,
                )
                for s in self._layout.shards
            )
        return SentinelView(
            sentinel=self.sid,
            zone=self.zone,
            configured=self.settings.count,
            quorum=self.settings.quorum,
            stalled=self.guard.stalled(now),
            sdown=self.sdown,
            hellos=dict(self.hellos),
            shards=shards,
            config_epoch=self._layout.epoch if self._layout else 0,
            promoted_at=dict(self.promoted_at),
        )

    def live(self, now: float) -> int:
        return decide.live_sentinels(self.snapshot(now), self.timings, now)

    def still_down(self, shard: int, primary: str) -> bool:
        return primary in self.sdown and self.current_primary(shard) == primary

    def event(self, kind: str, **fields: Any) -> None:
        announce.emit_event(self.bus, self.cdir, kind, sentinel=self.sid, **fields)
        self.log.info(kind, **fields)

    def report_once(self, kind: str, key: str, **fields: Any) -> None:
        """One event per (kind, node) until that node's SDOWN clears."""
        if (kind, key) in self.reported:
            return
        self.reported.add((kind, key))
        self.event(kind, **fields)

    def publish_vote(self, message: VoteRequest | VoteReply | Elected) -> None:
        name = bus.topic(self.plan.name, "failover", str(message.shard), "votes")
        self.bus.publish(name, bus.encode(message.to_dict()))

    def publish_layout(self, layout: Layout) -> None:
        announce.publish_layout(self.bus, self.cdir, layout)
        self._note_switches(self._layout, layout, time.monotonic())
        self._layout = layout

    def failover_done(self, shard: int, now: float) -> None:
        self.done_at[shard] = now

    def publish_hello(self) -> None:
        hello = messages.Hello(
            sentinel=self.sid,
            zone=self.zone,
            sdown=self.sdown,
            failover_epoch=self.ballot.failover_epoch,
            config_epoch=self._layout.epoch if self._layout else 0,
            stalled=self.guard.stalled(time.monotonic()),
            failing_over=frozenset(self.running),
            address=self.address,
            pid=os.getpid(),
        )
        self.bus.publish(self.hello_topic, bus.encode(hello.to_dict()), retain=True)

    # -- bus input ------------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> None:
        now = time.monotonic()
        if topic == self.layout_topic:
            self.on_layout(topic, payload, now)
            return
        try:
            msg = messages.parse(self.known, topic, payload)
        except MessageError as exc:
            self.reject(topic, exc.field, exc.reason)
            return
        match msg:
            case messages.Hello() if msg.sentinel != self.sid:
                self.hellos[msg.sentinel] = decide.Hello(
                    sentinel=msg.sentinel,
                    zone=msg.zone,
                    sdown=msg.sdown,
                    received_at=now,
                    stalled=msg.stalled,
                )
                self.ballot.observe_epoch(msg.failover_epoch)
            case messages.SentinelOffline():
                self.hellos.pop(msg.sentinel, None)
            case VoteRequest() if msg.candidate != self.sid:
                self.on_vote_request(msg, now)
            case VoteReply():
                self.executor.on_vote_reply(msg)
            case Elected() if msg.candidate != self.sid:
                # another sentinel leads this shard's failover: leave it the job
                self.voted[msg.shard] = Voted(now, msg.failover_epoch, msg.candidate)
                self.ballot.observe_epoch(msg.failover_epoch)
            case _:
                pass

    def reject(self, topic: str, field: str, reason: str) -> None:
        """A bad message: logged with its topic, counted, and nothing else changes."""
        self.rejected[topic] += 1
        self.log.warning(
            "bus_message_rejected", topic=topic[:200], field=field, reason=reason[:200],
            count=self.rejected[topic],
        )  # fmt: skip

    def on_layout(self, topic: str, payload: bytes, now: float) -> None:
        data = bus.decode(payload)
        if data is None:
            if payload != messages.OFFLINE:
                self.reject(topic, "", "not a JSON object")
            return
        try:
            layout = Layout.from_dict(data, self.plan)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            self.reject(topic, "", f"invalid layout: {type(exc).__name__}: {exc}")
            return
        if self._layout is None or layout.epoch >= self._layout.epoch:
            self._note_switches(self._layout, layout, now)
            self._layout = layout
            self.ballot.observe_epoch(layout.epoch)

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
                self.voted.pop(shard.id, None)  # that leader's job is done

    def on_vote_request(self, req: VoteRequest, now: float) -> None:
        self.ballot.observe_epoch(req.failover_epoch)
        if req.shard in self.running:  # a rival: it matters if my election of it is lost
            key = (req.shard, req.failover_epoch)
            if key in self.rivals or len(self.rivals) < 1024:
                self.rivals.setdefault(key, set()).add(req.candidate)
        decision = decide.vote_on(self.snapshot(now), self.ballot.vote, req, self.timings, now)
        if decision.reason is decide.VoteRefusal.NOT_SDOWN_HERE:
            self.pending[req.shard] = (req, now)  # answered again once I see it down
        elif decision.granted:
            self.pending.pop(req.shard, None)
        if decision.granted and decision.state != self.ballot.vote:
            self.ballot.record(decision.state)
            self.voted[req.shard] = Voted(now, req.failover_epoch, req.candidate)
            self.event(
                "vote_for_leader", shard=req.shard, failover_epoch=req.failover_epoch,
                leader=req.candidate,
            )  # fmt: skip
        self.publish_vote(
            VoteReply(
                voter=self.sid,
                candidate=req.candidate,
                failover_epoch=req.failover_epoch,
                shard=req.shard,
                granted=decision.granted,
                reason=decision.reason.name if decision.reason else None,
            )
        )

    def rank(self, shard: LayoutShard, failed: LayoutNode, now: float) -> machine.Ranked:
        return self.probes.rank(
            shard, failed, now,
            sdown_since=self.sdown_since.get(failed.name, now), promoted_at=self.promoted_at,
        )  # fmt: skip

    # -- the tick -------------------------------------------------------------------------------

    async def tick_loop(self) -> None:
        interval = self.timings.interval_s
        scheduled = time.monotonic() + interval
        last_hello = 0.0
        while not self.stop.is_set():
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            now = time.monotonic()
            was_stalled = self.guard.stalled(now)
            self.guard = self.guard.tick(scheduled, now)
            if self.guard.stalled(now) and not was_stalled:
                self.log.warning("stalled", late_s=round(now - scheduled, 3))
            scheduled = max(scheduled + interval, now)
            changed = self.observe(now)
            if changed or now - last_hello >= HELLO_EVERY_S:
                self.publish_hello()
                last_hello = now
            self.decide_and_act(now)
            if self.plan.topology.standalone:
                self.realign(now)

    def observe(self, now: float) -> bool:
        if self._layout is None:
            return False
        sdown = frozenset(
            n.name
            for n in self._layout.nodes()
            if self.probes.is_sdown(n.name, now, self.promoted_at)
        )
        if sdown == self.sdown:
            return False
        if not self.guard.stalled(now):
            for name in sdown - self.sdown:
                self.sdown_since[name] = now
                self.event("sdown", node=name, role=self._role(name))
            for name in self.sdown - sdown:
                self.sdown_since.pop(name, None)
                self.odown_seen.discard(name)
                self.reported = {r for r in self.reported if r[1] != name}
                self.event("sdown_cleared", node=name)
        self.sdown = sdown
        return True

    def _role(self, name: str) -> str:
        if self._layout is None:
            return "unknown"
        return next((n.role for n in self._layout.nodes() if n.name == name), "unknown")

    def decide_and_act(self, now: float) -> None:
        if self.stop.is_set():
            return
        for d in decide.next_actions(self.snapshot(now), self.timings, now):
            self.carry_out(d, now)

    def carry_out(self, d: Decision, now: float) -> None:
        """Execute one decision; report what an operator must hear about (once)."""
        if self.last_decision.get(d.shard) != (d.action, d.reason):
            self.last_decision[d.shard] = (d.action, d.reason)
            self.log.info(
                "decision", shard=d.shard, primary=d.primary, action=d.action.name,
                reason=d.reason.name,
            )  # fmt: skip
        if d.odown and d.primary is not None and d.primary not in self.odown_seen:
            self.odown_seen.add(d.primary)
            self.event("odown", node=d.primary, shard=d.shard, quorum=self.settings.quorum)
        if d.primary is not None:
            if d.reason is NoFailover.NO_QUORUM:
                self.report_once(
                    "no_quorum", d.primary, shard=d.shard, node=d.primary,
                    reachable_sentinels=d.live, quorum=self.settings.quorum,
                    majority=decide.majority(self.settings.count),
                )  # fmt: skip
            elif d.reason is NoFailover.NO_REPLICAS:
                self.report_once(
                    "no_eligible_replica", d.primary, shard=d.shard, reason="NO_REPLICAS"
                )
        match d.action:
            case Start.SCHEDULE_CANDIDACY:
                delay = d.wait_s + random.uniform(0.0, self.timings.candidacy_delay_s)
                self.candidacy_at[d.shard] = now + delay
                asyncio.get_running_loop().call_later(delay, self._wake)
            case Start.VOTE_PENDING:
                if pending := self.pending.pop(d.shard, None):
                    self.on_vote_request(pending[0], now)
            case Start.CANCEL_CANDIDACY:
                self.candidacy_at.pop(d.shard, None)
            case Start.ASK_FOR_VOTES:
                assert d.primary is not None and self._tg is not None
                self.candidacy_at.pop(d.shard, None)
                self.running[d.shard] = self._tg.create_task(
                    self.run_candidacy(d.shard, d.primary),
                    name=f"sentinel[{self.sid}].candidacy[{d.shard}]",
                )
            case Start.NONE:
                pass

    def realign(self, now: float) -> None:
        """Cluster mode disabled: point every node that strays from the layout's primary
        (a resumed old primary, a replica left on the old one) back at it."""
        if self._layout is None or not self._layout.shards or self.stop.is_set():
            return
        shard = self._layout.shards[0]
        t = self.timings
        voted = self.voted.get(shard.id)
        busy = (
            bool(self.running)
            or shard.id in self.candidacy_at
            or (
                voted is not None
                and voted.failover_epoch > self._layout.epoch
                and now - voted.at < t.failover_timeout_s
            )
        )
        fresh_s = t.probe_timeout_s + t.interval_s
        seen = {}
        for node in shard.nodes:
            ob = self.probes.obs.get(node.name)
            fresh = ob is not None and ob.last_ok is not None and now - ob.last_ok <= fresh_s
            reply = ob.reply if ob is not None and fresh else None
            seen[node.name] = standalone.Seen(reply, node.name in self.sdown)
            target = shard.primary
            astray = (
                reply is not None
                and target is not None
                and standalone.is_astray(reply, (target.host, target.port))
            )
            if not astray:
                self.astray_since.pop(node.name, None)
            else:
                self.astray_since.setdefault(node.name, now)
        moves = standalone.misdirected(
            shard, seen, busy=busy, since=self.astray_since, now=now, settle_s=2 * t.interval_s
        )
        for name, (host, port) in moves.items():
            if now - self.realigned_at.get(name, float("-inf")) < t.down_after_s:
                continue
            self.realigned_at[name] = now
            was = seen[name].reply
            self.log.info(
                "realign", node=name, primary=f"{host}:{port}",
                was=str(was.role) if was else None,
            )  # fmt: skip
            if self._tg is not None:
                self._tg.create_task(
                    standalone.follow(self.admin[name], host, port),
                    name=f"sentinel[{self.sid}].realign[{name}]",
                )

    def _wake(self) -> None:
        """A candidacy delay ended: decide now rather than at the next tick."""
        self.decide_and_act(time.monotonic())

    async def run_candidacy(self, shard: int, primary: str) -> None:
        try:
            epoch, won = await self.executor.elect(shard, primary)
            if not won:
                # lost: a split vote (the lowest id among the rivals runs again first), or
                # voters that did not see the primary down yet (run again after a new delay)
                rivals = self.rivals.pop((shard, epoch), set())
                delay = decide.retry_delay(self.sid, rivals, self.timings)
                now = time.monotonic()
                self.retry_at[shard] = now + delay
                if rivals and delay == 0.0:
                    # the split's tie-break winner runs again at once: no second delay
                    self.candidacy_at[shard] = now
                    asyncio.get_running_loop().call_soon(self._wake)
                return
            self.publish_hello()
            if not await self.executor.failover(shard, primary, epoch):
                # aborted (no eligible replica, primary back): one attempt per shard per
                # failover timeout, not a new epoch every tick
                self.retry_at[shard] = time.monotonic() + decide.retry_delay_after_abort(
                    self.timings
                )
        except Exception:
            self.log.exception("failover_crashed", shard=shard)
        finally:
            self.running.pop(shard, None)
            for key in [k for k in self.rivals if k[0] == shard]:
                del self.rivals[key]
            self.publish_hello()

    # -- lifetime -------------------------------------------------------------------------------

    async def __aenter__(self) -> Sentinel:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self.log.info("sentinel_started", zone=self.zone, failover_epoch=self.ballot.failover_epoch)
        for name in self.probes.links:
            self._tasks.append(
                self._tg.create_task(
                    self.probes.probe_loop(name, self.stop),
                    name=f"sentinel[{self.sid}].probe[{name}]",
                )
            )
        self._tasks.append(
            self._tg.create_task(self.tick_loop(), name=f"sentinel[{self.sid}].tick")
        )
        self._pump = self._tg.create_task(
            self.bus.run(self._bus_stop, [(self.hello_topic, messages.OFFLINE)]),
            name=f"sentinel[{self.sid}].bus",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self.stop.set()
        for task in [*self.running.values(), *self._tasks]:
            task.cancel()
        self._bus_stop.set()
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
            self._pump.cancel()
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            await self.probes.close()
            for link in self.admin.values():
                await link.close()
            self.log.info("sentinel_stopped", rejected_messages=sum(self.rejected.values()))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        async with self:
            await self.stop.wait()
