"""Requests answered from several backend calls: multi-key requests split by slot, sent by
node and merged in order (MGET, MSET, DEL, EXISTS ...), keyless requests fanned out to every
primary (or node) and merged by the command's response policy, and SCAN walked shard after
shard."""

from __future__ import annotations

from cachefleet.resp import encode, encode_command
from router import replies, routes
from router.backend import BackendConn
from router.client import Batch, Call, ClientConn, Item, Merge
from router.commands import Command, key_positions, split
from router.core import Core, err
from router.endpoint import arity


def split_by_slot(core: Core, client: ClientConn, args: list[bytes], cmd: Command) -> None:
    """One command per slot (the engine refuses keys of several slots in one command, even on
    one node), the commands for one node written as one :class:`Batch` (an MGET over every
    slot is a few backend calls, not 16,384), and the replies merged back in request order.
    A request the engine would refuse whole (``MSET a 1 b``) is refused whole, not applied in
    part."""
    positions = key_positions(cmd, args) or []
    step = cmd.specs[0].keystep if cmd.specs else 1
    if positions and step > 1 and (len(args) - positions[0]) % step:
        client.reply_now(encode(arity(args[0].decode(errors="replace").lower())))
        return
    parts = split(cmd, args)
    policy = cmd.response_policy
    resp3 = client.resp3
    total = len(positions)
    parent = client.add(Merge(client, args, lambda: merge()))
    sources: list[tuple[Call, int]] = [(parent, 0)] * len(parts)  # who answers each part

    def merge() -> bytes:
        frames = [call.frame(i) for call, i in sources]
        if policy == "agg_sum":
            return replies.merge_sum(frames)
        if policy == "all_succeeded":
            return replies.merge_all_succeeded(frames)
        pairs = [(part.positions, f) for part, f in zip(parts, frames, strict=True)]
        return replies.merge_ordered(pairs, total, resp3)

    by_node: dict[BackendConn | None, list[int]] = {}
    for n, part in enumerate(parts):
        route = core.table[part.slot]
        conn = core.batch_target(client, route, cmd.readonly) if route is not None else None
        by_node.setdefault(conn, []).append(n)
    singles: list[Call] = []
    batches: list[tuple[BackendConn, Batch]] = []
    for conn, indices in by_node.items():
        if conn is None or len(indices) == 1:
            for n in indices:
                part = parts[n]
                call = parent.add(Call(client, list(part.args), None, part.slot, cmd.readonly, cmd))
                sources[n] = (call, 0)
                singles.append(call)
            continue
        items: list[Item] = [
            (list(parts[n].args), encode_command(parts[n].args), parts[n].slot, cmd.readonly, cmd)
            for n in indices
        ]
        batch = Batch(client, items)
        batch.version = core.version
        parent.add(batch)
        for i, n in enumerate(indices):
            sources[n] = (batch, i)
        batches.append((conn, batch))
    for conn, batch in batches:
        batch.send_to(conn)
    for call in singles:
        core.send(call)


def fanout(
    core: Core, client: ClientConn, args: list[bytes], raw: bytes | None, cmd: Command
) -> None:
    if cmd.response_policy == "special":
        core.send(client.add(Call(client, args, raw, None, cmd.readonly, cmd)))
        return
    targets = (
        routes.all_nodes(core.table)
        if cmd.request_policy == "all_nodes"
        else list(core.primary_list)
    )
    if not targets:
        client.reply_now(err("CLUSTERDOWN The cluster is down (no layout yet)"))
        return
    calls: list[Call] = []
    policy = cmd.response_policy
    resp3 = client.resp3

    def merge() -> bytes:
        frames = [c.reply or b"" for c in calls]
        match policy:
            case "agg_sum":
                return replies.merge_sum(frames)
            case "agg_min":
                return replies.merge_min(frames)
            case "one_succeeded":
                return replies.merge_one_succeeded(frames)
            case "agg_logical_and":
                return replies.merge_logical_and(frames, resp3)
            case None if frames and frames[0][:1] in (b"*", b"~"):
                return replies.merge_concat(frames, resp3)
        return replies.merge_all_succeeded(frames)

    parent = client.add(Merge(client, args, merge))
    for slot, addr in targets:
        part = parent.add(Call(client, args, raw, slot, False, cmd))
        part.target = addr
        calls.append(part)
    for c in calls:
        core.send(c)


def scan(core: Core, client: ClientConn, args: list[bytes]) -> None:
    plist = list(core.primary_list)
    try:
        cursor = int(args[1]) if len(args) > 1 else -1
    except ValueError:
        cursor = -1
    if cursor < 0 or not plist:
        core.send(client.add(Call(client, args, None)))  # the engine says what is wrong
        return
    index, engine_cursor = replies.split_scan_cursor(cursor)
    if index >= len(plist):
        client.reply_now(encode([b"0", []], client.resp3))
        return
    part_args = [args[0], str(engine_cursor).encode(), *args[2:]]
    resp3 = client.resp3
    part = Call(client, part_args, None, plist[index][0], True)

    def merge() -> bytes:
        return replies.merge_scan(part.reply or b"", index, len(plist), resp3)

    parent = client.add(Merge(client, args, merge))
    parent.add(part)
    core.send(part)
