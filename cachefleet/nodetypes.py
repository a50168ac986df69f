"""Node types: the one table of the names a topology and the API accept and the memory each
gives a node.

The short names (``cache.micro`` … ``cache.large``) are this project's node sizes. The
managed service's names (``cache.t4g.small``, ``cache.m7g.large`` …) are accepted beside
them, each mapped onto the size of the same rank in the service's memory order: a node of
``cache.t4g.small`` gets the memory of ``cache.small``. A topology keeps the name as
written (changing ``cache.t3.small`` to ``cache.t4g.small`` is a change of node type, as in
the service, even where the memory is the same).
"""

from __future__ import annotations

#: The project's node sizes: name -> maxmemory in bytes.
SIZES: dict[str, int] = {
    "cache.micro": 64 * 1024**2,
    "cache.small": 256 * 1024**2,
    "cache.medium": 1024**3,
    "cache.large": 4 * 1024**3,
}

#: The service's node types -> the size their nodes get here.
SERVICE_TYPES: dict[str, str] = {
    "cache.t2.micro": "cache.micro",
    "cache.t3.micro": "cache.micro",
    "cache.t4g.micro": "cache.micro",
    "cache.t2.small": "cache.small",
    "cache.t3.small": "cache.small",
    "cache.t4g.small": "cache.small",
    "cache.t2.medium": "cache.medium",
    "cache.t3.medium": "cache.medium",
    "cache.t4g.medium": "cache.medium",
    "cache.m5.large": "cache.large",
    "cache.m6g.large": "cache.large",
    "cache.m7g.large": "cache.large",
    "cache.r5.large": "cache.large",
    "cache.r6g.large": "cache.large",
    "cache.r7g.large": "cache.large",
}

#: Every accepted name -> maxmemory in bytes (the short names first, then the service's).
NODE_TYPES: dict[str, int] = {
    **SIZES,
    **{name: SIZES[size] for name, size in SERVICE_TYPES.items()},
}


def size_of(node_type: str) -> str:
    """The project's size for an accepted name (a short name is its own size); KeyError for
    a name that is not in the table."""
    if node_type in SIZES:
        return node_type
    return SERVICE_TYPES[node_type]


def memory(node_type: str) -> int:
    """Bytes of memory a node of this type gets; KeyError for an unknown name."""
    return NODE_TYPES[node_type]


def valid_names() -> str:
    """Every accepted name, for an error message."""
    return ", ".join(NODE_TYPES)
