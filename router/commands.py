"""The engine's command table (pure): key positions from ``COMMAND`` key specs, flags and
request/response policy tips, and the routing plan of one request.

Nothing here is a hand-written list of keyed commands: a snapshot of the engine's own
``COMMAND`` reply (RESP2, parsed by hiredis) decides where the keys are, which commands are
read-only or blocking, which are split by slot (``request_policy:multi_shard``) and which are
fanned out (``request_policy:all_shards`` / ``all_nodes``) and how their replies merge.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachefleet.slots import key_slot
from router.replies import pairs


@dataclass(frozen=True)
class KeySpec:
    begin: str  # "index" | "keyword" | "unknown"
    find: str  # "range" | "keynum" | "unknown"
    index: int = 0
    keyword: bytes = b""
    startfrom: int = 0
    lastkey: int = 0
    keystep: int = 1
    limit: int = 0
    keynumidx: int = 0
    firstkey: int = 0
    incomplete: bool = False

    @property
    def usable(self) -> bool:
        return self.begin != "unknown" and self.find != "unknown" and not self.incomplete


@dataclass(frozen=True)
class Command:
    name: bytes  # upper case; subcommands as b"OBJECT|ENCODING"
    arity: int
    flags: frozenset[bytes]
    specs: tuple[KeySpec, ...] = ()
    tips: frozenset[bytes] = frozenset()
    subcommands: Mapping[bytes, Command] = field(default_factory=dict)

    @property
    def readonly(self) -> bool:
        return b"readonly" in self.flags

    @property
    def blocking(self) -> bool:
        return b"blocking" in self.flags

    @property
    def needs_getkeys(self) -> bool:
        return any(not s.usable for s in self.specs)

    def tip(self, prefix: bytes) -> str | None:
        for t in self.tips:
            if t.startswith(prefix):
                return t[len(prefix) :].decode()
        return None

    @property
    def request_policy(self) -> str | None:
        return self.tip(b"request_policy:")

    @property
    def response_policy(self) -> str | None:
        return self.tip(b"response_policy:")


def _spec(raw: Any) -> KeySpec:
    d = pairs(raw)
    flags = {bytes(f).lower() for f in d.get(b"flags", [])}
    bs = pairs(d.get(b"begin_search", []))
    fk = pairs(d.get(b"find_keys", []))
    bs_type, fk_type = (
        bytes(bs.get(b"type", b"unknown")).decode(),
        bytes(fk.get(b"type", b"unknown")).decode(),
    )
    bss = pairs(bs.get(b"spec", [])) if bs_type != "unknown" else {}
    fks = pairs(fk.get(b"spec", [])) if fk_type != "unknown" else {}
    return KeySpec(
        begin=bs_type if bs_type in ("index", "keyword") else "unknown",
        find=fk_type if fk_type in ("range", "keynum") else "unknown",
        index=int(bss.get(b"index", 0)),
        keyword=bytes(bss.get(b"keyword", b"")).upper(),
        startfrom=int(bss.get(b"startfrom", 0)),
        lastkey=int(fks.get(b"lastkey", 0)),
        keystep=int(fks.get(b"keystep", 1)) or 1,
        limit=int(fks.get(b"limit", 0)),
        keynumidx=int(fks.get(b"keynumidx", 0)),
        firstkey=int(fks.get(b"firstkey", 0)),
        incomplete=b"incomplete" in flags,
    )


def _command(entry: Sequence[Any]) -> Command:
    name = bytes(entry[0]).upper()
    subs: dict[bytes, Command] = {}
    if len(entry) > 9:
        for sub in entry[9] or []:
            cmd = _command(sub)
            subs[cmd.name.split(b"|", 1)[-1]] = cmd
    return Command(
        name=name,
        arity=int(entry[1]),
        flags=frozenset(bytes(f).lower() for f in entry[2]),
        specs=tuple(_spec(s) for s in entry[8]) if len(entry) > 8 else (),
        tips=frozenset(bytes(t).lower() for t in entry[7]) if len(entry) > 7 else frozenset(),
        subcommands=subs,
    )


def parse_command_table(reply: Sequence[Any]) -> dict[bytes, Command]:
    """The engine's ``COMMAND`` (or ``COMMAND INFO``) reply as name -> Command."""
    table: dict[bytes, Command] = {}
    for entry in reply:
        if entry:
            cmd = _command(entry)
            table[cmd.name] = cmd
    return table


def lookup(table: Mapping[bytes, Command], args: Sequence[bytes]) -> Command | None:
    cmd = table.get(args[0].upper())
    if cmd is not None and cmd.subcommands and len(args) > 1:
        return cmd.subcommands.get(args[1].upper(), cmd)
    return cmd


def _int(token: bytes) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None


def key_positions(cmd: Command, args: Sequence[bytes]) -> list[int] | None:
    """Argument indexes of the keys, by the engine's algorithm (getKeysUsingKeySpecs);
    None when a spec is incomplete or unknown (ask the engine: COMMAND GETKEYS)."""
    if cmd.needs_getkeys:
        return None
    argc = len(args)
    out: list[int] = []
    for spec in cmd.specs:
        if spec.begin == "index":
            first = spec.index
        else:
            first = 0
            if spec.startfrom > 0:
                candidates = range(spec.startfrom, argc - 1)
            else:
                candidates = range(argc + spec.startfrom, 1, -1)
            for i in candidates:
                if 1 <= i < argc and args[i].upper() == spec.keyword:
                    first = i + 1
                    break
            if not first:
                continue
        step = spec.keystep
        if spec.find == "range":
            if spec.lastkey >= 0:
                last = first + spec.lastkey
            elif not spec.limit:
                last = argc + spec.lastkey
            else:
                last = first + ((argc - first) // spec.limit + spec.lastkey)
        else:
            if spec.keynumidx >= argc - first:
                continue
            numkeys = _int(args[first + spec.keynumidx])
            if numkeys is None or numkeys < 0:
                continue
            first += spec.firstkey
            last = first + numkeys - 1
        if last >= argc or last < first or first >= argc:
            continue
        out.extend(range(first, last + 1, step))
    return out


class Action(enum.Enum):
    LOCAL = "local"  # answered by the router itself
    SINGLE = "single"  # one slot (or keyless: any primary)
    SPLIT = "split"  # multi_shard: split by slot, merged in order
    FANOUT = "fanout"  # all_shards / all_nodes
    SCAN = "scan"
    CROSSSLOT = "crossslot"
    BLOCKING = "blocking"  # dedicated backend connection
    GETKEYS = "getkeys"  # key positions must come from COMMAND GETKEYS
    TRANSACTION = "transaction"  # MULTI / EXEC / DISCARD / WATCH / UNWATCH
    PUBSUB = "pubsub"


#: Answered by the router (configuration endpoint and connection state).
LOCAL = frozenset(
    {b"PING", b"ECHO", b"HELLO", b"AUTH", b"QUIT", b"CLUSTER", b"SELECT", b"READONLY",
     b"READWRITE", b"CLIENT", b"RESET", b"ASKING", b"MONITOR", b"SYNC", b"PSYNC", b"REPLCONF"}
)  # fmt: skip
TRANSACTION = frozenset({b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH"})
PUBSUB = frozenset(
    {b"SUBSCRIBE", b"PSUBSCRIBE", b"UNSUBSCRIBE", b"PUNSUBSCRIBE", b"SSUBSCRIBE",
     b"SUNSUBSCRIBE"}
)  # fmt: skip
#: Blocking only with a BLOCK argument.
BLOCK_OPTION = frozenset({b"XREAD", b"XREADGROUP"})


@dataclass(frozen=True)
class RoutePlan:
    action: Action
    slot: int | None = None
    readonly: bool = False
    command: Command | None = None


LOCAL_PLAN = RoutePlan(Action.LOCAL)
CROSSSLOT_PLAN = RoutePlan(Action.CROSSSLOT)


def slot_of(args: Sequence[bytes], positions: Sequence[int]) -> int | bool | None:
    """The one slot of the keys at `positions`; None when keyless; False when they span
    several slots (CROSSSLOT)."""
    slot: int | None = None
    for i in positions:
        s = key_slot(args[i])
        if slot is None:
            slot = s
        elif s != slot:
            return False
    return slot


def is_blocking(cmd: Command, args: Sequence[bytes]) -> bool:
    if not cmd.blocking:
        return False
    if cmd.name in BLOCK_OPTION:
        return any(a.upper() == b"BLOCK" for a in args[1:])
    return True


def plan(table: Mapping[bytes, Command], args: Sequence[bytes]) -> RoutePlan:
    """Where one request goes (pure)."""
    name = args[0].upper()
    if name in LOCAL:
        return LOCAL_PLAN
    if name in TRANSACTION:
        return RoutePlan(Action.TRANSACTION)
    if name in PUBSUB:
        return RoutePlan(Action.PUBSUB)
    cmd = lookup(table, args)
    if cmd is None:  # unknown: forwarded, the engine answers
        return RoutePlan(Action.SINGLE)
    if name == b"SCAN":
        return RoutePlan(Action.SCAN, command=cmd, readonly=True)
    positions = key_positions(cmd, args)
    if positions is None:
        return RoutePlan(Action.GETKEYS, command=cmd, readonly=cmd.readonly)
    if not positions:
        policy = cmd.request_policy
        if policy in ("all_shards", "all_nodes") and not cmd.blocking:
            return RoutePlan(Action.FANOUT, command=cmd)
        if is_blocking(cmd, args):
            return RoutePlan(Action.BLOCKING, command=cmd)
        return RoutePlan(Action.SINGLE, readonly=cmd.readonly, command=cmd)
    slot = slot_of(args, positions)
    if slot is False:
        if cmd.request_policy == "multi_shard":
            return RoutePlan(Action.SPLIT, command=cmd)
        return CROSSSLOT_PLAN
    assert slot is not True
    if is_blocking(cmd, args):
        return RoutePlan(Action.BLOCKING, slot=slot, command=cmd)
    return RoutePlan(Action.SINGLE, slot=slot, readonly=cmd.readonly, command=cmd)


@dataclass(frozen=True)
class Part:
    """One slot's share of a split request: its args and, for each of its keys, the key's
    position among the request's keys (for MGET's ordered merge)."""

    slot: int
    args: tuple[bytes, ...]
    positions: tuple[int, ...]


def split(cmd: Command, args: Sequence[bytes]) -> list[Part]:
    """Split a multi_shard request (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) by slot, keeping
    each key's arguments (MSET's value) with it; parts in order of first appearance."""
    positions = key_positions(cmd, args) or []
    step = cmd.specs[0].keystep if cmd.specs else 1
    head = args[: positions[0]] if positions else args[:1]
    groups: dict[int, tuple[list[bytes], list[int]]] = {}
    for n, i in enumerate(positions):
        slot = key_slot(args[i])
        group = groups.setdefault(slot, ([], []))
        group[0].extend(args[i : i + step])
        group[1].append(n)
    return [Part(slot, (*head, *a), tuple(p)) for slot, (a, p) in groups.items()]


def fast_paths(table: Mapping[bytes, Command]) -> dict[bytes, tuple[int, bool, Command]]:
    """Name (as upper, lower and title case) -> (key index, readonly, command) for the
    commands whose only key is at a fixed index and that need nothing but their slot
    (GET, SET, HSET, INCR, ...): the router's hot path skips :func:`plan` for them."""
    out: dict[bytes, tuple[int, bool, Command]] = {}
    for name, cmd in table.items():
        if name in LOCAL or name in TRANSACTION or name in PUBSUB or cmd.subcommands:
            continue
        if cmd.blocking or cmd.request_policy is not None or len(cmd.specs) != 1:
            continue
        spec = cmd.specs[0]
        if not (spec.usable and spec.begin == "index" and spec.find == "range"):
            continue
        if spec.lastkey != 0 or spec.index < 1:
            continue
        entry = (spec.index, cmd.readonly, cmd)
        for variant in (name, name.lower(), name.title()):
            out[variant] = entry
    return out
