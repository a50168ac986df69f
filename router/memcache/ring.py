"""Consistent hashing, ketama-style: which node holds a key.

Each node is placed on a 32-bit ring at 160 points: for i in 0..39, the MD5 digest of
``"<node name>-<i>"`` gives four points (its 16 bytes read as four little-endian 32-bit
integers). A key's hash is the first four bytes of its MD5 digest, little-endian; the key
belongs to the node of the first point at or after that hash (wrapping around). Nodes are
named, not addressed, so a node replaced at another address keeps its keys, and adding a
node to N moves about 1/(N+1) of the keys (only those now closest to one of its points).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

DIGESTS_PER_NODE = 40  # x 4 points = 160 points per node


def key_hash(key: bytes) -> int:
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest()[:4], "little")


def node_points(name: str) -> list[int]:
    points = []
    for i in range(DIGESTS_PER_NODE):
        digest = hashlib.md5(f"{name}-{i}".encode(), usedforsecurity=False).digest()
        points += [int.from_bytes(digest[j : j + 4], "little") for j in range(0, 16, 4)]
    return points


class Ring:
    def __init__(self, names: Iterable[str]) -> None:
        pairs = sorted((p, name) for name in set(names) for p in node_points(name))
        self.points = [p for p, _ in pairs]
        self.owners = [name for _, name in pairs]

    def __len__(self) -> int:
        return len(set(self.owners))

    def node(self, key: bytes) -> str:
        """The node holding `key` (the ring must not be empty)."""
        i = bisect.bisect_left(self.points, key_hash(key))
        return self.owners[i if i < len(self.points) else 0]

    def nodes(self, key: bytes, n: int) -> list[str]:
        """The first `n` distinct nodes clockwise from `key`: where its copies live (the
        first is :meth:`node`)."""
        start = bisect.bisect_left(self.points, key_hash(key))
        out: list[str] = []
        total = len(self.points)
        for i in range(total):
            owner = self.owners[(start + i) % total]
            if owner not in out:
                out.append(owner)
                if len(out) == n:
                    break
        return out
