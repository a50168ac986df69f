"""How the chaos workload deals keys to writers (pure)."""

from __future__ import annotations

from cachefleet.chaos.workload import assign_keys, chaos_keys, shard_of_keys
from cachefleet.slots import key_slot

RANGES = {1: [(0, 5460)], 2: [(5461, 10922)], 3: [(10923, 16383)]}


def test_every_writer_keeps_to_one_shard_and_every_key_has_one_writer() -> None:
    keys = chaos_keys(600)
    shard_of = shard_of_keys(keys, RANGES)
    assert set(shard_of.values()) == {1, 2, 3}
    writers = assign_keys(keys, shard_of, 2)
    assert sorted(s for s, _ in writers) == [1, 1, 2, 2, 3, 3]
    for shard, mine in writers:
        assert mine and all(shard_of[k] == shard for k in mine)
    dealt = [k for _, mine in writers for k in mine]
    assert sorted(dealt) == sorted(keys) and len(dealt) == len(set(dealt))


def test_shard_of_follows_the_slot_ranges() -> None:
    keys = chaos_keys(50)
    for key, shard in shard_of_keys(keys, RANGES).items():
        ((a, b),) = RANGES[shard]
        assert a <= key_slot(key) <= b


def test_a_shard_with_fewer_keys_than_writers_gets_only_as_many_writers() -> None:
    shard_of = {"x": 1, "y": 2, "z": 2, "u": 2}
    writers = assign_keys(["x", "y", "z", "u"], shard_of, 2)
    assert writers == [(1, ("x",)), (2, ("y", "u")), (2, ("z",))]
