"""Pub/sub through the router: a subscribed client gets one backend connection for classic
channels and patterns (the engine broadcasts those over the cluster) and one per node for
sharded channels; every frame they send is relayed to the client as it comes.

Subscriptions outlive the node that serves them. The router keeps the client's channels,
patterns and sharded channels (from the engine's confirmations), and when a subscription
connection is lost, or a new layout moves its node out of the primaries, it subscribes them
again on a serving node (swallowing the confirmations the client already had), so every
message published after the new subscription took effect reaches the client. Only when no
node can take them within the failover wait is the client disconnected, as before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import hiredis

from cachefleet.resp import encode_command
from cachefleet.slots import key_slot
from router import replies
from router.backend import BackendConn
from router.client import Call, ClientConn
from router.commands import slot_of
from router.core import Core, err
from router.transactions import CROSSSLOT

Addr = tuple[str, int]

_SUB_KINDS = frozenset(
    {b"subscribe", b"psubscribe", b"ssubscribe", b"unsubscribe", b"punsubscribe",
     b"sunsubscribe"}
)  # fmt: skip
CLASSIC = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"PING"})
SHARDED = frozenset({b"SSUBSCRIBE", b"SUNSUBSCRIBE"})
#: Extra time, beyond the failover wait, to find a node for lost subscriptions.
REHOME_GRACE_S = 2.0


def confirmation(frame: bytes) -> tuple[bytes, bytes | None, int] | None:
    """(kind, channel, count) of a (un)subscribe confirmation frame, else None."""
    if frame[:1] not in (b"*", b">"):
        return None
    try:
        value = replies.parse(frame)
    except (hiredis.ProtocolError, ValueError):
        return None
    if not isinstance(value, list) or len(value) != 3 or not isinstance(value[2], int):
        return None
    kind = bytes(value[0]).lower() if isinstance(value[0], bytes) else b""
    if kind not in _SUB_KINDS:
        return None
    name = bytes(value[1]) if isinstance(value[1], bytes) else None
    return kind, name, value[2]


class PubSub:
    """A subscribed client's backend connections, its subscriptions, and their re-homing."""

    def __init__(self, core: Core, client: ClientConn) -> None:
        self.core = core
        self.client = client
        self.classic: BackendConn | None = None
        self.sharded: dict[Addr, BackendConn] = {}
        self.counts: dict[int, int] = {}
        self.closed = False
        # what the client is subscribed to, as the engine confirmed it
        self.channels: set[bytes] = set()
        self.patterns: set[bytes] = set()
        self.schannels: dict[bytes, Addr] = {}  # sharded channel -> node serving it
        self.asked_sunsubscribe: set[bytes] = set()  # channels the client itself left
        self.swallow: dict[int, int] = {}  # conn -> re-subscription confirmations to drop
        self.rehome_task: asyncio.Task[None] | None = None
        self.rehome_deadline = 0.0
        self.homeless: set[bytes] = set()  # sharded channels waiting for a node
        self.classic_lost: Addr | None = None  # the classic node that was lost, until placed

    def _conn(self, addr: Addr) -> BackendConn:
        conn: BackendConn | None = None

        def relay(frame: bytes) -> None:
            if conn is not None and self.track(conn, frame):
                self.client.push(frame)

        auth = self.core.auth
        conn = BackendConn(
            self.core,
            addr,
            resp3=self.client.resp3,
            on_push=relay,
            on_close=self._lost,
            login=auth.login(self.client.user) if auth is not None else None,
        )
        return conn

    def classic_conn(self, exclude: Addr | None = None) -> BackendConn | None:
        """The classic subscription connection; a new one carries the client's channels and
        patterns over."""
        if self.classic is None or self.classic.closed:
            addr = self._any_primary(exclude)
            if addr is None:
                return None
            conn = self.classic = self._conn(addr)
            self._resubscribe(conn, b"SUBSCRIBE", self.channels)
            self._resubscribe(conn, b"PSUBSCRIBE", self.patterns)
        return self.classic

    def _any_primary(self, exclude: Addr | None) -> Addr | None:
        if exclude is None:
            return self.core.any_primary()
        for _, addr in self.core.primary_list:
            if addr != exclude and not self.core.is_down(addr):
                return addr
        return None

    def sharded_conn(self, addr: Addr) -> BackendConn:
        conn = self.sharded.get(addr)
        if conn is None or conn.closed:
            conn = self.sharded[addr] = self._conn(addr)
        return conn

    def _resubscribe(self, conn: BackendConn, command: bytes, names: Iterable[bytes]) -> None:
        names = sorted(names)
        if names:
            self.swallow[id(conn)] = self.swallow.get(id(conn), 0) + len(names)
            conn.send_nowait(encode_command([command, *names]))

    def track(self, conn: BackendConn, frame: bytes) -> bool:
        """Keep the subscription state from a frame; False: the client must not see it."""
        seen = confirmation(frame)
        if seen is None:
            return True
        kind, name, count = seen
        self.counts[id(conn)] = count
        if self.swallow.get(id(conn), 0) > 0 and kind in (
            b"subscribe",
            b"psubscribe",
            b"ssubscribe",
        ):
            self.swallow[id(conn)] -= 1
            if not any(self.swallow.values()) and not self.homeless:
                self.rehome_deadline = 0.0
            return False
        if name is not None:
            if kind == b"subscribe":
                self.channels.add(name)
            elif kind == b"unsubscribe":
                self.channels.discard(name)
            elif kind == b"psubscribe":
                self.patterns.add(name)
            elif kind == b"punsubscribe":
                self.patterns.discard(name)
            elif kind == b"ssubscribe":
                self.schannels[name] = conn.addr
            elif kind == b"sunsubscribe":
                if name not in self.asked_sunsubscribe and name in self.schannels:
                    # The node gave the channel's slot away: follow the slot.
                    del self.schannels[name]
                    self._rehome_sharded([name])
                    return False
                self.asked_sunsubscribe.discard(name)
                self.schannels.pop(name, None)
        left = self.homeless or self.schannels or self.channels or self.patterns
        if kind.startswith((b"un", b"pun", b"sun")) and not left:
            self.close()
            if self.client.pubsub is self:
                self.client.pubsub = None
        return True

    # -- re-homing --------------------------------------------------------------------------

    def _lost(self, conn: BackendConn) -> None:
        if self.closed:
            return
        self.counts.pop(id(conn), None)
        self.swallow.pop(id(conn), None)
        if conn is self.classic:
            self.classic = None
            self.classic_lost = conn.addr
        if self.sharded.get(conn.addr) is conn:
            del self.sharded[conn.addr]
        moved = [c for c, a in self.schannels.items() if a == conn.addr]
        for c in moved:
            del self.schannels[c]
        self.homeless.update(moved)
        self._schedule()

    def layout_changed(self) -> None:
        """A new layout: subscriptions on a node that is no longer the right primary move."""
        if self.closed:
            return
        primaries = {addr for _, addr in self.core.primary_list}
        if self.classic is not None and self.classic.addr not in primaries:
            old, self.classic = self.classic, None
            self.classic_lost = old.addr
            self._detach(old)
        for channel, addr in list(self.schannels.items()):
            route = self.core.table[key_slot(channel)]
            if route is None or route.primary != addr:
                del self.schannels[channel]
                self.homeless.add(channel)
        for addr, conn in list(self.sharded.items()):
            if addr not in self.schannels.values() and addr not in primaries:
                del self.sharded[addr]
                self._detach(conn)
        self._schedule()

    def _rehome_sharded(self, channels: list[bytes]) -> None:
        self.homeless.update(channels)
        self._schedule()

    def _detach(self, conn: BackendConn) -> None:
        conn.on_close = None
        self.counts.pop(id(conn), None)
        self.swallow.pop(id(conn), None)
        conn.close()

    def _pending(self) -> bool:
        return bool(self.homeless) or (
            self.classic is None and bool(self.channels or self.patterns)
        )

    def _schedule(self) -> None:
        if not self._pending():
            self.classic_lost = None
            return
        if not self.rehome_deadline:
            self.rehome_deadline = (
                self.core.loop.time() + self.core.failover_wait_s + REHOME_GRACE_S
            )
        if not self._place() and (self.rehome_task is None or self.rehome_task.done()):
            self.rehome_task = self.core.spawn(
                self._place_later(), f"router.client[{self.client.id}].resubscribe"
            )

    def _place(self) -> bool:
        """Subscribe what waits for a node where it can be served now; True when all is."""
        wanted = self.classic is None and (self.channels or self.patterns)
        if wanted and self.classic_conn(exclude=self.classic_lost) is not None:
            self.core.log.info(
                "pubsub_resubscribed",
                client=self.client.id,
                node=f"{self.classic.addr[0]}:{self.classic.addr[1]}" if self.classic else "",
                channels=len(self.channels),
                patterns=len(self.patterns),
            )
            self.classic_lost = None
        placed: dict[Addr, list[bytes]] = {}
        for channel in list(self.homeless):
            route = self.core.table[key_slot(channel)]
            addr = route.primary if route is not None else None
            if addr is None or self.core.is_down(addr):
                continue
            existing = self.sharded.get(addr)
            if existing is None and addr not in {a for _, a in self.core.primary_list}:
                continue
            placed.setdefault(addr, []).append(channel)
        for addr, channels in placed.items():
            conn = self.sharded_conn(addr)
            self._resubscribe(conn, b"SSUBSCRIBE", channels)
            for channel in channels:
                self.homeless.discard(channel)
                self.schannels[channel] = addr
        return not self._pending()

    async def _place_later(self) -> None:
        loop = self.core.loop
        while not self.closed and self._pending():
            left = self.rehome_deadline - loop.time()
            if left <= 0:
                self.core.client_error(
                    self.client, "pubsub_connection_lost", "no node to subscribe on"
                )
                self.client.close_after_replies()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.core.changed), min(left, 0.25))
            if self._place():
                return

    def close(self) -> None:
        self.closed = True
        if self.rehome_task is not None:
            self.rehome_task.cancel()
        for conn in [self.classic, *self.sharded.values()]:
            if conn is not None:
                conn.on_close = None
                conn.close()
        self.classic = None
        self.sharded.clear()


def enter(core: Core, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
    """The first (P|S)SUBSCRIBE: in order, after the client's earlier replies."""
    call = client.add(Call(client, args, raw))

    async def run() -> None:
        await client.wait_head(call)
        if client.pubsub is None:
            client.pubsub = PubSub(core, client)
        call.finish(b"")
        subscribed(core, client, args, raw)

    core.serial(client, run)


def subscribed(core: Core, client: ClientConn, args: list[bytes], raw: bytes | None) -> bool:
    """Handle a request of a subscribed client; False: not a pub/sub request. RESP3 clients
    may run ordinary commands while subscribed: their PING and errors are replies in request
    order, and a (un)subscribe waits for the replies before it, so pushes never overtake
    them."""
    ps = client.pubsub
    assert isinstance(ps, PubSub)
    name = args[0].upper()
    if name not in CLASSIC and name not in SHARDED:
        if name in (b"QUIT", b"RESET") or client.resp3:
            return False
        client.push(
            err(
                f"ERR Can't execute '{args[0][:128].decode(errors='replace').lower()}': only "
                "(P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed "
                "in this context"
            )
        )
        return True
    if client.resp3 and name == b"PING":
        return False
    if client.queue:  # replies still due before this one: keep the order
        call = client.add(Call(client, args, raw))

        async def run() -> None:
            await client.wait_head(call)
            call.finish(b"")
            if client.pubsub is ps and not ps.closed:
                relay(core, client, ps, args, raw)

        core.serial(client, run)
        return True
    relay(core, client, ps, args, raw)
    return True


def relay(core: Core, client: ClientConn, ps: PubSub, args: list[bytes], raw: bytes | None) -> None:
    """Send a pub/sub request on the subscription connections; their frames come back as
    pushes."""
    name = args[0].upper()
    payload = raw or encode_command(args)
    if name in CLASSIC:
        conn = ps.classic_conn()
        if conn is None:
            client.push(err("CLUSTERDOWN The cluster is down (no layout yet)"))
        else:
            conn.send_nowait(payload)
        return
    if name == b"SUNSUBSCRIBE":
        ps.asked_sunsubscribe.update(args[1:] if len(args) > 1 else ps.schannels)
    if len(args) == 1:
        for conn in list(ps.sharded.values()):
            conn.send_nowait(payload)
        if not ps.sharded:
            head = b">3\r\n" if client.resp3 else b"*3\r\n"
            null = b"_\r\n" if client.resp3 else b"$-1\r\n"
            client.push(head + b"$12\r\nsunsubscribe\r\n" + null + b":0\r\n")
        return
    slot = slot_of(args, range(1, len(args)))
    if slot is False:
        client.push(CROSSSLOT)
        return
    assert isinstance(slot, int)
    route = core.table[slot]
    if route is None or route.primary is None:
        client.push(err(f"CLUSTERDOWN Hash slot {slot} not served"))
        return
    ps.sharded_conn(route.primary).send_nowait(payload)
