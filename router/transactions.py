"""MULTI/EXEC and WATCH through the router.

MULTI is queued here (the engine's arity and unknown-command checks, so EXECABORT comes as
the engine's) and run at EXEC on a connection of the client's own: ``MULTI``, the queued
commands and ``EXEC`` in one write, all in one slot. WATCH pins that connection from the
WATCH on, so a change by anyone else aborts the EXEC as it would on the engine.
"""

from __future__ import annotations

from cachefleet.resp import encode, encode_command
from cachefleet.slots import key_slot
from router import policy, replies
from router.backend import BackendLost
from router.client import Call, ClientConn
from router.commands import key_positions, lookup, slot_of
from router.core import Core, err, outcome_unknown
from router.endpoint import arity

CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"
MAX_QUEUED_BYTES = 64 * 1024 * 1024  # a MULTI block is held here until EXEC

Queued = list[tuple[list[bytes], bytes | None]]


def outside(core: Core, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
    """MULTI, EXEC, DISCARD, WATCH or UNWATCH outside a transaction."""
    match args[0].upper():
        case b"MULTI":
            client.tx, client.tx_dirty, client.tx_bytes = [], False, 0
            client.reply_now(b"+OK\r\n")
        case b"EXEC":
            client.reply_now(err("ERR EXEC without MULTI"))
        case b"DISCARD":
            client.reply_now(err("ERR DISCARD without MULTI"))
        case b"UNWATCH":
            client.drop_watch()
            client.reply_now(b"+OK\r\n")
        case b"WATCH":
            watch(core, client, args, raw)


def watch(core: Core, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
    if len(args) < 2:
        client.reply_now(encode(arity("watch")))
        return
    slot = slot_of(args, range(1, len(args)))
    if slot is False or (client.watch is not None and client.watch[0] != slot):
        client.reply_now(CROSSSLOT)
        return
    assert isinstance(slot, int)
    call = client.add(Call(client, args, raw, slot))
    call.dedicated = True

    async def run() -> None:
        await client.wait_head(call)
        frame = await core.run_call(call)
        if frame.startswith(b"+OK"):
            addr, _ = core.route(call)
            conn = client.dedicated.get(addr) if addr else None
            if conn is not None:
                client.watch = (slot, conn)

    core.serial(client, run)


def inside(core: Core, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
    """A request of a client in MULTI: queued (or refused as the engine would)."""
    assert client.tx is not None
    match args[0].upper():
        case b"MULTI":
            client.reply_now(err("ERR MULTI calls can not be nested"))
        case b"WATCH":
            client.reply_now(err("ERR WATCH inside MULTI is not allowed"))
        case b"DISCARD":
            client.tx = None
            client.drop_watch()
            client.reply_now(b"+OK\r\n")
        case b"EXEC":
            call = client.add(Call(client, args, raw))
            queued, client.tx = client.tx, None
            core.serial(client, lambda: execute(core, call, queued))
        case _:
            cmd = lookup(core.commands or {}, args)
            refused = policy.refusal(args)
            if refused is not None:
                client.tx_dirty = True
                client.reply_now(refused)
            elif cmd is None:
                client.tx_dirty = True
                shown = " ".join(f"'{a.decode(errors='replace')}'" for a in args[1:3])
                name = args[0][:128].decode(errors="replace")
                client.reply_now(
                    err(f"ERR unknown command '{name}', with args beginning with: {shown}")
                )
            elif (cmd.arity > 0 and len(args) != cmd.arity) or len(args) < -cmd.arity:
                client.tx_dirty = True
                client.reply_now(encode(arity(args[0].decode(errors="replace").lower())))
            elif client.tx_bytes > MAX_QUEUED_BYTES:
                client.tx_dirty = True
                client.reply_now(err(f"ERR router: MULTI queue over {MAX_QUEUED_BYTES} bytes"))
            else:
                client.tx.append((args, raw))
                client.tx_bytes += len(raw) if raw is not None else sum(map(len, args))
                client.reply_now(b"+QUEUED\r\n")


async def execute(core: Core, call: Call, queued: Queued) -> None:
    client = call.client
    await client.wait_head(call)
    watched, client.watch = client.watch, None
    try:
        if client.tx_dirty:
            call.finish(err("EXECABORT Transaction discarded because of previous errors."))
            return
        slots: set[int] = set()
        for args, _ in queued:
            cmd = lookup(core.commands or {}, args)
            positions = key_positions(cmd, args) if cmd is not None else []
            slots.update(key_slot(args[i]) for i in positions or [])
        if watched is not None:
            slots.add(watched[0])
        if len(slots) > 1:
            call.finish(CROSSSLOT)
            return
        if watched is not None:
            conn = watched[1]
            if conn.closed:  # the WATCH is gone with its connection: abort as if touched
                call.finish(b"*-1\r\n")
                return
        else:
            addr, _ = core.route(Call(client, [], None, next(iter(slots), None)))
            if addr is None:
                call.finish(err("CLUSTERDOWN router: no primary for the transaction"))
                return
            conn = core.dedicated(client, addr)
        payloads = [MULTI, *(raw or encode_command(args) for args, raw in queued), EXEC]
        try:
            frames = await conn.request(*payloads)
        except BackendLost as exc:
            if exc.written:
                call.finish(outcome_unknown(exc.addr))
            else:
                where = f"{exc.addr[0]}:{exc.addr[1]}"
                call.finish(err(f"TRYAGAIN router: {where} unreachable, not executed"))
            return
        for frame in frames[1:-1]:
            moved = replies.classify(frame)
            if isinstance(moved, replies.Moved) and core.trusted(moved):
                core.note_moved(moved)
        call.finish(frames[-1])
    finally:
        if watched is not None:
            watched[1].close()
