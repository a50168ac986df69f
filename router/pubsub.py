"""Pub/sub through the router: a subscribed client gets one backend connection for classic
channels and patterns (the engine broadcasts those over the cluster) and one per node for
sharded channels; every frame they send is relayed to the client as it comes."""

from __future__ import annotations

import hiredis

from cachefleet.resp import encode_command
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


class PubSub:
    """A subscribed client's backend connections and subscription counts."""

    def __init__(self, core: Core, client: ClientConn) -> None:
        self.core = core
        self.client = client
        self.classic: BackendConn | None = None
        self.sharded: dict[Addr, BackendConn] = {}
        self.counts: dict[int, int] = {}
        self.closed = False

    def _conn(self, addr: Addr) -> BackendConn:
        conn: BackendConn | None = None

        def relay(frame: bytes) -> None:
            self.client.push(frame)
            if conn is not None:
                self.track(conn, frame)

        conn = BackendConn(
            self.core, addr, resp3=self.client.resp3, on_push=relay, on_close=self._lost
        )
        return conn

    def classic_conn(self) -> BackendConn | None:
        if self.classic is None or self.classic.closed:
            addr = self.core.any_primary()
            if addr is None:
                return None
            self.classic = self._conn(addr)
        return self.classic

    def sharded_conn(self, addr: Addr) -> BackendConn:
        conn = self.sharded.get(addr)
        if conn is None or conn.closed:
            conn = self.sharded[addr] = self._conn(addr)
        return conn

    def track(self, conn: BackendConn, frame: bytes) -> None:
        if frame[:1] not in (b"*", b">"):
            return
        try:
            value = replies.parse(frame)
        except (hiredis.ProtocolError, ValueError):
            return
        if not isinstance(value, list) or len(value) != 3 or not isinstance(value[2], int):
            return
        kind = bytes(value[0]).lower() if isinstance(value[0], bytes) else b""
        if kind in _SUB_KINDS:
            self.counts[id(conn)] = value[2]
            if kind.startswith((b"un", b"pun", b"sun")) and all(
                c == 0 for c in self.counts.values()
            ):
                self.close()
                if self.client.pubsub is self:
                    self.client.pubsub = None

    def _lost(self, conn: BackendConn) -> None:
        if not self.closed:
            # The subscriptions are gone with the node: the client must resubscribe.
            self.core.client_error(self.client, "pubsub_connection_lost", str(conn.addr))
            self.client.close_after_replies()

    def close(self) -> None:
        self.closed = True
        for conn in [self.classic, *self.sharded.values()]:
            if conn is not None:
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
