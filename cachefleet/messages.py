"""Typed, validated bus messages: the one place a daemon's bus input becomes a value.

Every message a daemon reads (sentinel hellos, failover votes, node states, router states)
is parsed here against what the plan configures (:class:`Known`): sentinel ids, node names,
zones, the shard range, finite non-negative integer epochs. A message that does not fit
raises :class:`MessageError` naming the topic, the field and the reason; the daemon logs and
counts it and changes nothing. The layout message is validated in :mod:`cachefleet.layout`.

Wire format: JSON objects stamped by :func:`cachefleet.bus.encode`; a retained ``offline``
last-will becomes an ``...Offline`` value. Payloads larger than :data:`MAX_PAYLOAD_BYTES` or
nested deeper than :data:`MAX_DEPTH` are rejected before ``json.loads`` sees them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachefleet.errors import InvalidInput
from cachefleet.plan import Plan

MAX_PAYLOAD_BYTES = 1 << 20
MAX_DEPTH = 8
#: Epochs are integers JSON readers keep exact (2**53 - 1).
MAX_EPOCH = (1 << 53) - 1
OFFLINE = b"offline"


class MessageError(InvalidInput):
    """A bus message that is not one of ours: names the topic, the field and the reason."""

    def __init__(self, topic: str, field: str, reason: str) -> None:
        super().__init__(topic, field, reason)
        self.topic = topic
        self.reason = reason


@dataclass(frozen=True)
class Known:
    """What a message may name: the plan's cluster, sentinels (id -> zone), nodes, zones and
    shard count."""

    cluster: str
    sentinels: Mapping[str, str]
    nodes: frozenset[str]
    zones: frozenset[str]
    shards: int

    @classmethod
    def from_plan(cls, plan: Plan) -> Known:
        return cls(
            cluster=plan.name,
            sentinels={s.id: s.zone for s in plan.sentinels},
            nodes=frozenset(n.name for n in plan.nodes),
            zones=frozenset(plan.topology.zones),
            shards=plan.topology.shards,
        )


# --- messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A sentinel's retained hello: its zone, down-set and failover epoch."""

    sentinel: str
    zone: str
    sdown: frozenset[str]
    failover_epoch: int
    config_epoch: int
    stalled: bool
    failing_over: frozenset[int]
    address: str = ""
    pid: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sentinel": self.sentinel,
            "zone": self.zone,
            "address": self.address,
            "sdown": sorted(self.sdown),
            "stalled": self.stalled,
            "failover_epoch": self.failover_epoch,
            "epoch": self.failover_epoch,  # read by `status` (sentinels[].epoch)
            "config_epoch": self.config_epoch,
            "failing_over": sorted(self.failing_over),
            "pid": self.pid,
        }


@dataclass(frozen=True)
class SentinelOffline:
    sentinel: str


@dataclass(frozen=True)
class VoteRequest:
    """A candidate asks for votes to lead the failover of ``shard`` in ``failover_epoch``."""

    candidate: str
    failover_epoch: int
    shard: int
    primary: str
    config_epoch: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "request",
            "candidate": self.candidate,
            "failover_epoch": self.failover_epoch,
            "shard": self.shard,
            "primary": self.primary,
            "config_epoch": self.config_epoch,
        }


@dataclass(frozen=True)
class VoteReply:
    """A voter's answer to a request (``reason`` names the refusal)."""

    voter: str
    candidate: str
    failover_epoch: int
    shard: int
    granted: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "vote",
            "voter": self.voter,
            "candidate": self.candidate,
            "failover_epoch": self.failover_epoch,
            "shard": self.shard,
            "granted": self.granted,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Elected:
    """A candidate won ``failover_epoch`` for ``shard`` and now leads its failover."""

    candidate: str
    failover_epoch: int
    shard: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "elected",
            "candidate": self.candidate,
            "failover_epoch": self.failover_epoch,
            "shard": self.shard,
        }


VoteMessage = VoteRequest | VoteReply | Elected


@dataclass(frozen=True)
class NodeState:
    """A zone agent's retained state of one node (the fields daemons act on)."""

    node: str
    zone: str
    shard: int
    status: str
    role: str | None
    pid: int | None


@dataclass(frozen=True)
class NodeOffline:
    node: str


@dataclass(frozen=True)
class RouterState:
    """A router worker's retained state (the fields daemons act on)."""

    router: str
    config_epoch: int
    connections: int
    pid: int | None
    worker: int = 0
    ops_per_sec: float = 0.0


@dataclass(frozen=True)
class RouterOffline:
    router: str


Message = (
    Hello
    | SentinelOffline
    | VoteRequest
    | VoteReply
    | Elected
    | NodeState
    | NodeOffline
    | RouterState
    | RouterOffline
)

NODE_STATUSES = frozenset({"starting", "up", "down", "unresponsive", "stopped"})


# --- decoding ----------------------------------------------------------------------------


def _depth_ok(raw: bytes, limit: int) -> bool:
    """Linear scan: no object/array nesting deeper than `limit` (strings skipped)."""
    depth = 0
    in_str = esc = False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


def decode_object(topic: str, payload: bytes) -> dict[str, Any]:
    """The payload as a JSON object, bounded in size and depth, or MessageError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError(topic, "", f"{len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}")
    if not _depth_ok(payload, MAX_DEPTH):
        raise MessageError(topic, "", f"nested deeper than {MAX_DEPTH}")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MessageError(topic, "", f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(data, dict):
        raise MessageError(topic, "", f"not a JSON object but {type(data).__name__}")
    return data


class _Fields:
    """Typed reads of one decoded object; each failure names its field."""

    def __init__(self, topic: str, data: Mapping[str, Any]) -> None:
        self.topic, self.data = topic, data

    def fail(self, name: str, reason: str) -> MessageError:
        return MessageError(self.topic, name, reason)

    def integer(self, name: str, lo: int, hi: int, default: int | None = None) -> int:
        value = self.data.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self.fail(name, f"{value} is out of range {lo}..{hi}")
        return value

    def epoch(self, name: str, *, fallback: str | None = None, default: int | None = None) -> int:
        if name not in self.data and fallback is not None and fallback in self.data:
            return self.integer(fallback, 0, MAX_EPOCH)
        return self.integer(name, 0, MAX_EPOCH, default)

    def optional_int(self, name: str) -> int | None:
        if self.data.get(name) is None:
            return None
        return self.integer(name, 0, MAX_EPOCH)

    def rate(self, name: str) -> float:
        """A finite, non-negative number (0 when absent)."""
        value = self.data.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, "must be a number")
        if not 0 <= value < float("inf"):
            raise self.fail(name, "must be finite and not negative")
        return float(value)

    def boolean(self, name: str, default: bool | None = None) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {type(value).__name__}")
        return value

    def string(self, name: str, default: str | None = None, max_len: int = 256) -> str:
        value = self.data.get(name, default)
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, got {type(value).__name__}")
        if len(value) > max_len:
            raise self.fail(name, f"longer than {max_len} characters")
        return value

    def optional_string(self, name: str) -> str | None:
        return None if self.data.get(name) is None else self.string(name)

    def one_of(self, name: str, allowed: Mapping[str, Any] | frozenset[str]) -> str:
        value = self.string(name)
        if value not in allowed:
            raise self.fail(name, f"{value!r} is not configured")
        return value

    def names(self, name: str, allowed: frozenset[str]) -> frozenset[str]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.fail(name, f"must be a list, got {type(value).__name__}")
        for item in value:
            if not isinstance(item, str) or item not in allowed:
                raise self.fail(name, f"{str(item)[:64]!r} is not a node of the plan")
        return frozenset(value)

    def shard_ids(self, name: str, shards: int) -> frozenset[int]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.fail(name, f"must be a list, got {type(value).__name__}")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= shards:
                raise self.fail(name, f"{str(item)[:64]!r} is not a shard id 1..{shards}")
        return frozenset(value)


def _topic_parts(known: Known, topic: str) -> list[str]:
    prefix = f"cachefleet/{known.cluster}/"
    if not topic.startswith(prefix):
        raise MessageError(topic, "", "not a topic of this cluster")
    return topic[len(prefix) :].split("/")


def parse_hello(known: Known, topic: str, payload: bytes) -> Hello | SentinelOffline:
    """``sentinels/<id>/hello``: only configured sentinel ids, in their configured zone."""
    parts = _topic_parts(known, topic)
    if len(parts) != 3 or parts[0] != "sentinels" or parts[2] != "hello":
        raise MessageError(topic, "", "not a sentinel hello topic")
    sid = parts[1]
    if sid not in known.sentinels:
        raise MessageError(topic, "sentinel", f"{sid[:64]!r} is not a configured sentinel")
    if payload == OFFLINE:
        return SentinelOffline(sid)
    f = _Fields(topic, decode_object(topic, payload))
    if f.string("sentinel", sid) != sid:
        raise f.fail("sentinel", "does not match the topic")
    zone = f.string("zone")
    if zone != known.sentinels[sid]:
        raise f.fail("zone", f"{zone[:64]!r} is not sentinel {sid}'s zone")
    return Hello(
        sentinel=sid,
        zone=zone,
        sdown=f.names("sdown", known.nodes),
        failover_epoch=f.epoch("failover_epoch", fallback="epoch"),
        config_epoch=f.epoch("config_epoch", fallback="layout_epoch", default=0),
        stalled=f.boolean("stalled", False),
        failing_over=f.shard_ids("failing_over", known.shards),
        address=f.string("address", ""),
        pid=f.integer("pid", 0, 1 << 31, 0),
    )


def parse_vote(known: Known, topic: str, payload: bytes) -> VoteMessage:
    """``failover/<shard>/votes``: request, vote or elected, from configured sentinels only,
    for the shard of the topic."""
    parts = _topic_parts(known, topic)
    if len(parts) != 3 or parts[0] != "failover" or parts[2] != "votes":
        raise MessageError(topic, "", "not a failover votes topic")
    f = _Fields(topic, decode_object(topic, payload))
    kind = f.string("type")
    shard = f.integer("shard", 1, known.shards)
    if parts[1] != str(shard):
        raise f.fail("shard", f"{shard} does not match the topic")
    candidate = f.one_of("candidate", known.sentinels)
    epoch = f.epoch("failover_epoch", fallback="epoch")
    match kind:
        case "request":
            return VoteRequest(
                candidate=candidate,
                failover_epoch=epoch,
                shard=shard,
                primary=f.one_of("primary", known.nodes),
                config_epoch=f.epoch("config_epoch"),
            )
        case "vote":
            return VoteReply(
                voter=f.one_of("voter", known.sentinels),
                candidate=candidate,
                failover_epoch=epoch,
                shard=shard,
                granted=f.boolean("granted"),
                reason=f.optional_string("reason"),
            )
        case "elected":
            return Elected(candidate=candidate, failover_epoch=epoch, shard=shard)
        case _:
            raise f.fail("type", f"{kind[:64]!r} is not request, vote or elected")


def parse_node_state(known: Known, topic: str, payload: bytes) -> NodeState | NodeOffline:
    """``nodes/<name>/state``: only nodes of the plan, in range shard and known zone."""
    parts = _topic_parts(known, topic)
    if len(parts) != 3 or parts[0] != "nodes" or parts[2] != "state":
        raise MessageError(topic, "", "not a node state topic")
    name = parts[1]
    if name not in known.nodes:
        raise MessageError(topic, "node", f"{name[:64]!r} is not a node of the plan")
    if payload == OFFLINE:
        return NodeOffline(name)
    f = _Fields(topic, decode_object(topic, payload))
    if f.string("node") != name:
        raise f.fail("node", "does not match the topic")
    status = f.string("status", "starting")
    if status not in NODE_STATUSES:
        raise f.fail("status", f"{status[:64]!r} is not one of {', '.join(sorted(NODE_STATUSES))}")
    return NodeState(
        node=name,
        zone=f.one_of("zone", known.zones),
        shard=f.integer("shard", 1, known.shards),
        status=status,
        role=f.optional_string("role"),
        pid=f.optional_int("pid"),
    )


def parse_router_state(known: Known, topic: str, payload: bytes) -> RouterState | RouterOffline:
    """``routers/<id>/state``."""
    parts = _topic_parts(known, topic)
    if len(parts) != 3 or parts[0] != "routers" or parts[2] != "state":
        raise MessageError(topic, "", "not a router state topic")
    rid = parts[1]
    if payload == OFFLINE:
        return RouterOffline(rid)
    f = _Fields(topic, decode_object(topic, payload))
    if f.string("id", rid) != rid:
        raise f.fail("id", "does not match the topic")
    return RouterState(
        router=rid,
        config_epoch=f.epoch("config_epoch", fallback="epoch", default=0),
        connections=f.integer("connections", 0, 1 << 31, 0),
        pid=f.optional_int("pid"),
        worker=f.integer("worker", 0, 1024, 0),
        ops_per_sec=f.rate("ops_per_sec"),
    )


def parse(known: Known, topic: str, payload: bytes) -> Message:
    """Any of the messages above, by topic; MessageError for anything else."""
    parts = _topic_parts(known, topic)
    kind = (parts[0], parts[-1]) if len(parts) == 3 else (parts[0], "")
    match kind:
        case ("sentinels", "hello"):
            return parse_hello(known, topic, payload)
        case ("failover", "votes"):
            return parse_vote(known, topic, payload)
        case ("nodes", "state"):
            return parse_node_state(known, topic, payload)
        case ("routers", "state"):
            return parse_router_state(known, topic, payload)
        case _:
            raise MessageError(topic, "", "no typed message for this topic")
