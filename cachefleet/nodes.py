"""Talking to engine nodes: the one place engine replies become typed values.

Everything that reads an engine's state goes through here: ``INFO replication`` becomes a
:class:`Replication`, ``CLUSTER NODES`` a list of :class:`NodeLine`. The engine's own words
(``master``, ``slave``) stop in this module; callers see :class:`Role`.

Two kinds of connection:
* :func:`connect` (redis-py, decoded replies) for operations and agents;
* :class:`NodeLink`, a raw pipelined hiredis connection bound to a source address, each
  request under its own deadline, for sentinels and chaos probes, where a hung node must cost
  one timed-out probe and a busy event loop must never wait for a reply it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hiredis

from cachefleet.credentials import Credentials
from cachefleet.resp import encode_command
from cachefleet.tls import ca_for, client_context

if TYPE_CHECKING:  # redis-py loads with the first connect(): the raw links do without it
    import redis.asyncio as aredis


class Role(enum.StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    UNKNOWN = "unknown"  # the node answered PING but not INFO (e.g. -NOAUTH)


def parse_info(text: str) -> dict[str, str]:
    """``INFO`` text as key -> value (section headers and blank lines skipped)."""
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
    return out


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class Replication:
    """``INFO replication`` of one node."""

    role: Role
    offset: int  # the primary's master_repl_offset, or how far a replica has processed
    link_up: bool  # a replica's link to its primary (always True for a primary)
    link_down_s: float  # seconds the replica's link has been down (inf: never came up)
    primary_addr: tuple[str, int] | None  # whom a replica follows
    syncing: bool  # a full sync is in progress
    connected_replicas: int
    # the replication history: this node's stream id and the one it continued from (a
    # promoted replica's replid2 is its old primary's replid); "" when not reported
    replid: str = ""
    replid2: str = ""

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Replication:
        """From INFO fields, as text values (``parse_info``) or redis-py's decoded mapping."""
        if info.get("role") == "master":
            return cls(
                role=Role.PRIMARY,
                offset=_int(info.get("master_repl_offset")),
                link_up=True,
                link_down_s=0.0,
                primary_addr=None,
                syncing=False,
                connected_replicas=_int(info.get("connected_slaves")),
                replid=str(info.get("master_replid") or ""),
                replid2=str(info.get("master_replid2") or ""),
            )
        link_up = info.get("master_link_status") == "up"
        down_s = 0.0
        if not link_up:
            try:
                down_s = float(info.get("master_link_down_since_seconds", 0) or 0)
            except (TypeError, ValueError):
                down_s = 0.0
            if down_s < 0:  # the engine reports -1 when the link never came up
                down_s = float("inf")
        host, port = info.get("master_host"), _int(info.get("master_port"), -1)
        return cls(
            role=Role.REPLICA,
            offset=_int(info.get("slave_repl_offset", info.get("master_repl_offset"))),
            link_up=link_up,
            link_down_s=down_s,
            primary_addr=(str(host), port) if host and port >= 0 else None,
            syncing=bool(_int(info.get("master_sync_in_progress"))),
            connected_replicas=_int(info.get("connected_slaves")),
            replid=str(info.get("master_replid") or ""),
            replid2=str(info.get("master_replid2") or ""),
        )

    @classmethod
    def from_text(cls, text: str) -> Replication:
        return cls.from_info(parse_info(text))

    @classmethod
    def unknown(cls) -> Replication:
        return cls(Role.UNKNOWN, 0, False, float("inf"), None, False, 0)

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY


@dataclass(frozen=True)
class NodeLine:
    """One line of CLUSTER NODES."""

    id: str
    host: str
    port: int
    bus_port: int
    flags: frozenset[str]
    primary_id: str | None
    config_epoch: int
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def role(self) -> Role:
        return Role.PRIMARY if self.is_primary else Role.REPLICA

    @property
    def is_myself(self) -> bool:
        return "myself" in self.flags

    @property
    def serving(self) -> bool:
        """A primary that holds slots: the member that serves its shard."""
        return self.is_primary and bool(self.slots)

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_cluster_nodes(text: str) -> list[NodeLine]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split(",")[0]
        hostport, _, bus = addr.partition("@")
        host, _, port = hostport.rpartition(":")
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):
                continue  # migrating/importing marker
            a, _, b = item.partition("-")
            slots.append((int(a), int(b or a)))
        out.append(
            NodeLine(
                id=parts[0],
                host=host,
                port=int(port) if port else 0,
                bus_port=int(bus) if bus else 0,
                flags=frozenset(parts[2].split(",")),
                primary_id=None if parts[3] == "-" else parts[3],
                config_epoch=int(parts[6]),
                connected=parts[7] == "connected",
                slots=tuple(slots),
            )
        )
    return out


def myself_line(text: str) -> NodeLine | None:
    return next((line for line in parse_cluster_nodes(text) if line.is_myself), None)


# -- redis-py connections -------------------------------------------------------------------


def connect(
    host: str, port: int, *, timeout: float = 2.0, auth: Credentials | None = None
) -> aredis.Redis:
    import redis.asyncio as aredis

    ca = ca_for(host, port)  # a TLS cluster's node or router
    return aredis.Redis(
        host=host,
        port=port,
        ssl=ca is not None,
        ssl_ca_certs=str(ca) if ca is not None else None,
        username=auth.user if auth else None,
        password=auth.password if auth else None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        retry_on_timeout=False,
        protocol=2,
    )


# What a call to a node can raise that means "no usable reply". ValueError covers a reply that
# is not UTF-8: clients put bytes of their choosing in some of it (INFO errorstats counts a
# script's error_reply prefix; CLIENT LIST shows names), and one client must not be able to
# break a daemon that reads it.
def _no_reply() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError  # loaded already: a client exists

    return (TimeoutError, RedisError, OSError, ValueError)


async def try_call(client: aredis.Redis, *args: Any) -> Any | None:
    try:
        return await client.execute_command(*args)  # type: ignore[no-untyped-call]
    except _no_reply():
        return None


# INFO sections whose text no client controls (not errorstats, keyspace or clients lists).
STATE_SECTIONS = ("server", "memory", "stats", "replication")


async def info(client: aredis.Redis, *sections: str) -> Mapping[str, Any] | None:
    """INFO of the given sections (several need Redis/Valkey 7+), None without a usable
    reply."""
    try:
        result: Mapping[str, Any] = await client.info(*sections)  # type: ignore[arg-type]
        return result
    except _no_reply():
        return None


async def replication(client: aredis.Redis) -> Replication | None:
    data = await info(client, "replication")
    return None if data is None else Replication.from_info(data)


async def cluster_nodes(client: aredis.Redis) -> list[NodeLine] | None:
    text = await try_call(client, "CLUSTER", "NODES")
    return parse_cluster_nodes(text) if isinstance(text, str) else None


async def myself(client: aredis.Redis) -> NodeLine | None:
    text = await try_call(client, "CLUSTER", "NODES")
    return myself_line(text) if isinstance(text, str) else None


# -- raw pipelined link ---------------------------------------------------------------------

_LINK_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, hiredis.ProtocolError)


class NodeLink:
    """A raw connection to one node (from `source` when given), kept open between requests
    and dropped on any error or timeout."""

    def __init__(
        self, *, host: str, port: int, source: str | None = None, auth: Credentials | None = None
    ) -> None:
        self.host, self.port, self.source, self.auth = host, port, source, auth
        self._lock = asyncio.Lock()  # one request in flight per connection
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def probe(self, timeout: float) -> Replication | None:
        """PING + INFO replication, pipelined: None when the node gives no valid reply in
        time. Like Sentinel, -LOADING and -MASTERDOWN still count as alive."""
        try:
            pong, text = await asyncio.wait_for(
                self._request([("PING",), ("INFO", "replication")]), timeout
            )
        except (*_LINK_ERRORS, ValueError):
            await self.close()
            return None
        if isinstance(pong, hiredis.ReplyError) and not str(pong).startswith(
            ("LOADING", "MASTERDOWN")
        ):
            return None
        if isinstance(text, hiredis.ReplyError) or not isinstance(text, bytes | str):
            return Replication.unknown()
        return Replication.from_text(text.decode() if isinstance(text, bytes) else text)

    async def call(self, *args: Any, timeout: float = 2.0) -> Any:
        """One command. A connection kept from before may be dead (the node restarted since):
        when it fails at once, the command is sent once more on a fresh connection — it never
        reached the node. None when there is no reply."""
        for attempt in range(2):
            reused = self._writer is not None
            try:
                return await asyncio.wait_for(self._request([args]), timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if not reused or attempt:
                    return None
            except _LINK_ERRORS:
                await self.close()
                return None
        return None

    async def request(self, *args: Any, timeout: float) -> Any:
        """One command; its reply, an error reply as a hiredis.ReplyError value. Connection
        errors and timeouts raise (and drop the connection)."""
        try:
            return await asyncio.wait_for(self._request([args]), timeout)
        except (*_LINK_ERRORS, ValueError):
            await self.close()
            raise

    async def _request(self, commands: list[tuple[Any, ...]]) -> Any:
        want = len(commands)
        async with self._lock:
            if self._writer is None or self._writer.is_closing():
                local = (self.source, 0) if self.source else None
                tls = client_context(self.host, self.port)
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, local_addr=local, ssl=tls,
                    server_hostname=self.host if tls is not None else None,
                )  # fmt: skip
                if self.auth is not None:
                    commands = [("AUTH", self.auth.user, self.auth.password), *commands]
            assert self._reader is not None
            parser = hiredis.Reader(notEnoughData=Ellipsis)
            self._writer.write(b"".join(encode_command(list(c)) for c in commands))
            await self._writer.drain()
            replies: list[Any] = []
            while len(replies) < len(commands):
                reply = parser.gets()
                if reply is Ellipsis:
                    chunk = await self._reader.read(65536)
                    if not chunk:
                        raise asyncio.IncompleteReadError(b"", None)
                    parser.feed(chunk)
                    continue
                replies.append(reply)
            if len(replies) > want:  # the AUTH of a new connection went first
                auth_reply = replies.pop(0)
                if isinstance(auth_reply, hiredis.ReplyError):
                    raise ConnectionError(f"AUTH refused: {auth_reply}")
            return replies if want > 1 else replies[0]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None
