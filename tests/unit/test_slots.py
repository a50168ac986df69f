"""Hash-slot math: CRC16 vectors from the Redis cluster spec, hash tags, splits, range sets."""

from __future__ import annotations

import binascii
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot as redis_py_key_slot

from cachefleet.slots import (
    SLOTS,
    crc16,
    hash_tag,
    key_slot,
    ranges_to_slots,
    slots_to_ranges,
    split_slots,
)


def test_slot_count() -> None:
    assert SLOTS == 16384


@pytest.mark.parametrize(
    ("data", "crc"),
    [
        (b"123456789", 0x31C3),  # the check value given in the Redis cluster spec (XMODEM)
        (b"", 0x0000),
        (b"A", 0x58E5),
    ],
)
def test_crc16_known_vectors(data: bytes, crc: int) -> None:
    assert crc16(data) == crc


@given(st.binary(max_size=64))
def test_crc16_matches_binascii(data: bytes) -> None:
    assert crc16(data) == binascii.crc_hqx(data, 0)


@pytest.mark.parametrize(
    ("key", "slot"),
    [
        ("foo", 12182),
        ("bar", 5061),
        ("somekey", 11058),  # CLUSTER KEYSLOT examples from the Redis docs
        ("foo{hash_tag}", 2515),
        ("bar{hash_tag}", 2515),
    ],
)
def test_known_slots(key: str, slot: int) -> None:
    assert key_slot(key) == slot


@pytest.mark.parametrize(
    ("key", "hashed"),
    [
        (b"{user1000}.following", b"user1000"),
        (b"{user1000}.followers", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),  # empty first tag: whole key
        (b"foo{{bar}}zap", b"{bar"),  # first '{' to the first '}' after it
        (b"foo{bar}{zap}", b"bar"),  # only the first tag counts
        (b"plain", b"plain"),
        (b"open{only", b"open{only"),
        (b"close}only{", b"close}only{"),
        (b"}{x}", b"x"),
    ],
)
def test_hash_tag(key: bytes, hashed: bytes) -> None:
    assert hash_tag(key) == hashed
    assert key_slot(key) == crc16(hashed) % SLOTS


def test_hash_tag_keys_share_a_slot() -> None:
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers")
    assert key_slot("{user1000}.following") == key_slot("user1000")
    assert key_slot("foo{}{bar}") != key_slot("bar")
    assert key_slot("foo{{bar}}zap") == key_slot("{bar")
    assert key_slot("foo{bar}{zap}") == key_slot("bar")


def test_str_and_bytes_keys_agree() -> None:
    assert key_slot("clé") == key_slot("clé".encode())


@settings(max_examples=300)
@given(st.binary(max_size=32) | st.text(alphabet="ab{}", max_size=12).map(str.encode))
def test_key_slot_matches_redis_py(key: bytes) -> None:
    slot = key_slot(key)
    assert 0 <= slot < SLOTS
    assert slot == redis_py_key_slot(key)


@pytest.mark.parametrize("shards", [0, -1, SLOTS + 1])
def test_split_slots_rejects_bad_counts(shards: int) -> None:
    with pytest.raises(ValueError):
        split_slots(shards)


def test_split_slots_three_shards() -> None:
    # 16384 = 3 * 5461 + 1: the first shard takes the extra slot
    assert split_slots(3) == [(0, 5461), (5462, 10922), (10923, 16383)]


def test_split_slots_one_shard() -> None:
    assert split_slots(1) == [(0, SLOTS - 1)]


def test_split_slots_every_shard_count_up_to_500() -> None:
    for shards in range(1, 501):
        ranges = split_slots(shards)
        assert len(ranges) == shards
        # contiguous from 0 to 16383, no gap and no overlap: every slot exactly once
        assert ranges[0][0] == 0
        assert ranges[-1][1] == SLOTS - 1
        for (_, prev_end), (start, end) in itertools.pairwise(ranges):
            assert start == prev_end + 1
            assert end >= start
        sizes = [end - start + 1 for start, end in ranges]
        assert sum(sizes) == SLOTS
        assert max(sizes) - min(sizes) <= 1
        # earlier shards get the extra slot
        assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("shards", [1, 7, 500, SLOTS])
def test_split_slots_cover_every_slot_once(shards: int) -> None:
    seen: list[int] = []
    for start, end in split_slots(shards):
        seen.extend(range(start, end + 1))
    assert sorted(seen) == list(range(SLOTS))
    assert len(seen) == len(set(seen))


def test_ranges_helpers_examples() -> None:
    assert slots_to_ranges([5, 1, 2, 3, 3, 7, 8]) == [(1, 3), (5, 5), (7, 8)]
    assert slots_to_ranges([]) == []
    assert ranges_to_slots([(0, 2), (10, 10)]) == {0, 1, 2, 10}
    assert ranges_to_slots([(0, 2), (1, 3)]) == {0, 1, 2, 3}


slot_sets = st.sets(st.integers(min_value=0, max_value=SLOTS - 1), max_size=300)


@given(slot_sets)
def test_slots_ranges_round_trip(slots: set[int]) -> None:
    ranges = slots_to_ranges(slots)
    assert ranges_to_slots(ranges) == slots
    # canonical: sorted, each non-empty, separated by at least one missing slot
    for start, end in ranges:
        assert start <= end
    for (_, prev_end), (start, _) in itertools.pairwise(ranges):
        assert start > prev_end + 1


@given(
    st.lists(
        st.tuples(st.integers(0, SLOTS - 1), st.integers(0, 64)).map(
            lambda t: (t[0], min(t[0] + t[1], SLOTS - 1))
        ),
        max_size=20,
    )
)
def test_ranges_slots_round_trip(ranges: list[tuple[int, int]]) -> None:
    slots = ranges_to_slots(ranges)
    canonical = slots_to_ranges(slots)
    assert ranges_to_slots(canonical) == slots
    assert slots_to_ranges(ranges_to_slots(canonical)) == canonical
    assert sum(end - start + 1 for start, end in canonical) == len(slots)
