"""Hash-slot math: CRC16 (XMODEM) with {hash tags}, even splits and slot-range sets."""

from __future__ import annotations

import binascii
from collections.abc import Iterable

SLOTS = 16384


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _table()


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def hash_tag(key: bytes) -> bytes:
    """The part of the key that is hashed: the first non-empty {...} section, else the key."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes | str) -> int:
    """CRC16-XMODEM of the hash tag mod 16384 (``binascii.crc_hqx`` is the same CRC, in C:
    this is on the router's hot path)."""
    if isinstance(key, str):
        key = key.encode()
    start = key.find(b"{")  # hash_tag(), inlined
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) & 0x3FFF


Range = tuple[int, int]


def split_slots(shards: int) -> list[Range]:
    """Contiguous, inclusive ranges; sizes differ by at most one (earlier shards get the extra)."""
    if not 1 <= shards <= SLOTS:
        raise ValueError(f"shards must be in 1..{SLOTS}")
    base, extra = divmod(SLOTS, shards)
    ranges = []
    start = 0
    for i in range(shards):
        size = base + (1 if i < extra else 0)
        ranges.append((start, start + size - 1))
        start += size
    return ranges


def ranges_to_slots(ranges: Iterable[Range]) -> set[int]:
    out: set[int] = set()
    for start, end in ranges:
        out.update(range(start, end + 1))
    return out


def slots_to_ranges(slots: Iterable[int]) -> list[Range]:
    """Collapse slot numbers into sorted inclusive ranges."""
    ordered = sorted(set(slots))
    ranges: list[Range] = []
    for slot in ordered:
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1] = (ranges[-1][0], slot)
        else:
            ranges.append((slot, slot))
    return ranges
