"""Replies (pure): frame boundaries, redirect classification and the merges of split or
fanned-out requests.

Backend replies are forwarded byte-for-byte; only their boundaries are needed on the hot path
(:func:`reply_end`). Replies that are merged are parsed with hiredis and re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

from cachefleet.resp import encode
from cachefleet.slots import SLOTS

_LINE = frozenset(b"+-:_,#(")
_BULK = frozenset(b"$=!")
_ARRAY = frozenset(b"*~>")
_MAP = frozenset(b"%|")

Addr = tuple[str, int]


def reply_end(buf: bytes, pos: int) -> int:
    """End offset of the RESP2/RESP3 reply starting at `pos`, or -1 when incomplete."""
    if pos >= len(buf):
        return -1
    e = buf.find(b"\r\n", pos)
    if e < 0:
        return -1
    t = buf[pos]
    if t in _LINE:
        return e + 2
    if t in _BULK:
        size = int(buf[pos + 1 : e])
        if size < 0:
            return e + 2
        end = e + 4 + size
        return end if end <= len(buf) else -1
    if t in _ARRAY or t in _MAP:
        count = int(buf[pos + 1 : e])
        p = e + 2
        if count < 0:
            return p
        if t in _MAP:
            count *= 2
        for _ in range(count):
            p = reply_end(buf, p)
            if p < 0:
                return -1
        if t == 0x7C:  # '|' attribute: the reply it annotates follows
            return reply_end(buf, p)
        return p
    raise ValueError(f"not a RESP reply type: {chr(t)!r}")


def pairs(raw: Any) -> dict[bytes, Any]:
    """A RESP3 map, or a RESP2 flat list of alternating names and values, as a dict."""
    if isinstance(raw, dict):
        return {bytes(k): v for k, v in raw.items()}
    return {bytes(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}


def is_error(frame: bytes) -> bool:
    return frame[:1] in (b"-", b"!")


# -- redirects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moved:
    slot: int
    addr: Addr


@dataclass(frozen=True)
class Ask:
    slot: int
    addr: Addr


@dataclass(frozen=True)
class TryAgain:
    pass


@dataclass(frozen=True)
class ClusterDown:
    pass


Redirect = Moved | Ask | TryAgain | ClusterDown


def _addr(text: bytes, default_host: str) -> Addr:
    host, _, port = text.rpartition(b":")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range: {number}")
    return (host.decode("ascii") or default_host, number)


def classify(frame: bytes, default_host: str = "127.0.0.1") -> Redirect | None:
    """A reply as a redirect value, or None for an ordinary reply (errors included). A
    MOVED/ASK whose slot or address is not well formed is an ordinary error."""
    if frame[:1] != b"-":
        return None
    if frame.startswith((b"-MOVED ", b"-ASK ")):
        parts = frame[1:].split()
        if len(parts) != 3:
            return None
        try:
            slot, addr = int(parts[1]), _addr(parts[2], default_host)
        except (ValueError, UnicodeDecodeError):
            return None
        if not 0 <= slot < SLOTS or not parts[1].isdigit():
            return None
        return Moved(slot, addr) if parts[0] == b"MOVED" else Ask(slot, addr)
    if frame.startswith(b"-TRYAGAIN"):
        return TryAgain()
    if frame.startswith(b"-CLUSTERDOWN"):
        return ClusterDown()
    return None


# -- merges ---------------------------------------------------------------------------------


def parse(frame: bytes) -> Any:
    reader = hiredis.Reader(notEnoughData=Ellipsis)
    reader.feed(frame)
    return reader.gets()


def first_error(frames: Sequence[bytes]) -> bytes | None:
    return next((f for f in frames if is_error(f)), None)


def merge_ordered(parts: Sequence[tuple[Sequence[int], bytes]], total: int, resp3: bool) -> bytes:
    """MGET split by slot: each part's array elements go back to their request positions."""
    err = first_error([f for _, f in parts])
    if err is not None:
        return err
    out: list[Any] = [None] * total
    for positions, frame in parts:
        values = parse(frame)
        for pos, value in zip(positions, values, strict=True):
            out[pos] = value
    return encode(out, resp3)


def merge_sum(frames: Sequence[bytes]) -> bytes:
    err = first_error(frames)
    if err is not None:
        return err
    return b":%d\r\n" % sum(int(parse(f)) for f in frames)


def merge_min(frames: Sequence[bytes]) -> bytes:
    err = first_error(frames)
    if err is not None:
        return err
    return b":%d\r\n" % min(int(parse(f)) for f in frames)


def merge_all_succeeded(frames: Sequence[bytes]) -> bytes:
    return first_error(frames) or frames[0]


def merge_one_succeeded(frames: Sequence[bytes]) -> bytes:
    return next((f for f in frames if not is_error(f)), frames[-1])


def merge_logical_and(frames: Sequence[bytes], resp3: bool) -> bytes:
    err = first_error(frames)
    if err is not None:
        return err
    rows = [parse(f) for f in frames]
    merged = [int(all(bool(r[i]) for r in rows)) for i in range(len(rows[0]))]
    return encode(merged, resp3)


def merge_concat(frames: Sequence[bytes], resp3: bool) -> bytes:
    err = first_error(frames)
    if err is not None:
        return err
    out: list[Any] = []
    for f in frames:
        out.extend(parse(f))
    return encode(out, resp3)


# -- SCAN across shards -----------------------------------------------------------------------

SHARD_BITS = 10  # up to 1024 shards (topologies allow 500)


def scan_cursor(shard_index: int, engine_cursor: int) -> int:
    """The router's cursor: the engine's cursor with the shard index in the low bits."""
    return (engine_cursor << SHARD_BITS) | shard_index


def split_scan_cursor(cursor: int) -> tuple[int, int]:
    return cursor & ((1 << SHARD_BITS) - 1), cursor >> SHARD_BITS


def merge_scan(frame: bytes, shard_index: int, shards: int, resp3: bool) -> bytes:
    """One shard's SCAN reply with its cursor rewritten: the next shard starts at 0 when this
    one is done; 0 after the last shard."""
    if is_error(frame):
        return frame
    cursor, keys = parse(frame)
    engine_next = int(cursor)
    if engine_next != 0:
        nxt = scan_cursor(shard_index, engine_next)
    elif shard_index + 1 < shards:
        nxt = scan_cursor(shard_index + 1, 0)
    else:
        nxt = 0
    return encode([str(nxt).encode(), list(keys)], resp3)
