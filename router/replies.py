"""Replies (pure): frame boundaries, redirect classification and the merges of split or
fanned-out requests.

Backend replies are forwarded byte-for-byte; only their boundaries are needed on the hot path
(:class:`ReplyScanner`). Replies that are merged are parsed with hiredis and re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hiredis

from cachefleet.resp import encode
from cachefleet.slots import SLOTS
from router import speedups

_LINE = frozenset(b"+-:_,#(")
_BULK = frozenset(b"$=!")
_ARRAY = frozenset(b"*~>")
_MAP = frozenset(b"%|")

Addr = tuple[str, int]


#: Deeper replies are refused (the connection is closed as for garbage). The walk keeps one
#: integer per level, so this only bounds memory; a script's table of a few thousand levels
#: is relayed as the engine sent it.
MAX_DEPTH = 1 << 16


def _scan(buf: bytes, pos: int, stack: list[int]) -> tuple[int, int]:
    """Walk elements from `pos` until the reply whose open aggregates are `stack` (elements
    left at each level; empty at a reply's start) is complete: (end, 0); or until the buffer
    runs short: (where the next element starts, bytes needed from there), with `stack`
    updated so that the walk resumes there. Iterative: no recursion, whatever the nesting."""
    n = len(buf)
    while True:
        if pos >= n:
            return pos, 1
        e = buf.find(b"\r\n", pos)
        if e < 0:
            return pos, n - pos + 1
        t = buf[pos]
        if t in _LINE:
            pos = e + 2
        elif t in _BULK:
            size = int(buf[pos + 1 : e])
            if size >= 0:
                end = e + 4 + size
                if end > n:
                    return pos, end - pos
                pos = end
            else:
                pos = e + 2
        elif t in _ARRAY or t in _MAP:
            count = int(buf[pos + 1 : e])
            pos = e + 2
            if t in _MAP:
                count *= 2
            if t == 0x7C:  # '|' attribute: its map, then the reply it annotates
                count += 1
            if count > 0:
                if len(stack) >= MAX_DEPTH:
                    raise ValueError(f"reply nested deeper than {MAX_DEPTH}")
                stack.append(count)
                continue
        else:
            raise ValueError(f"not a RESP reply type: {chr(t)!r}")
        # one element complete: close the aggregates it completes
        while stack:
            stack[-1] -= 1
            if stack[-1]:
                break
            stack.pop()
        if not stack:
            return pos, 0


def reply_end(buf: bytes, pos: int) -> int:
    """End offset of the RESP2/RESP3 reply starting at `pos`, or -1 when incomplete."""
    end, need = _scan(buf, pos, [])
    return -1 if need else end


class ReplyScanner:
    """Reply boundaries in a byte stream, linear in its length: the walk of a reply that is
    not complete yet resumes where it stopped, and a large bulk is joined once, when it is
    all there."""

    __slots__ = ("_chunks", "_native", "_need", "_scanned", "_size", "_stack")

    def __init__(self, *, native: bool = True) -> None:
        self._native = speedups.simple_frames if native else None  # the C loop, if built
        self._chunks: list[bytes] = []  # bytes not walked yet
        self._size = 0
        self._need = 0
        self._scanned: list[bytes] = []  # walked bytes of the reply in progress
        self._stack: list[int] = []

    @property
    def buffered(self) -> int:
        return self._size + sum(len(c) for c in self._scanned)

    def feed(self, data: bytes) -> list[bytes]:
        """The replies completed by `data`; ValueError on bytes that are not RESP."""
        if not self._chunks and not self._scanned:
            # The common case: whole replies in one packet.
            buf = data
        else:
            self._chunks.append(data)
            self._size += len(data)
            if self._size < self._need:
                return []
            buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks, self._size, self._need = [], 0, 0
        out: list[bytes] = []
        start, n = 0, len(buf)
        stack = self._stack
        native = self._native
        while start < n:
            if not self._scanned:
                if native is not None:
                    start = native(buf, start, out)
                    if start >= n:
                        break
                # The common replies (+OK, -ERR, :1, a bulk string) without the general walk.
                t = buf[start]
                e = buf.find(b"\r\n", start)
                if e >= 0:
                    end = -1
                    if t == 0x2B or t == 0x3A or t == 0x2D:  # + : -
                        end = e + 2
                    elif t == 0x24:  # $
                        size = int(buf[start + 1 : e])
                        end = e + 4 + size if size >= 0 else e + 2
                    if 0 <= end <= n:
                        out.append(buf[start:end] if start or end != n else buf)
                        start = end
                        continue
            end, need = _scan(buf, start, stack)
            if need:
                if end > start:
                    self._scanned.append(buf[start:end])
                if end < n:
                    self._chunks, self._size = [buf[end:] if end else buf], n - end
                self._need = need
                return out
            if self._scanned:
                self._scanned.append(buf[start:end])
                out.append(b"".join(self._scanned))
                self._scanned = []
            else:
                out.append(buf[start:end] if start or end != n else buf)
            start = end
        return out


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
