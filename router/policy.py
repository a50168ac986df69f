"""Commands the router refuses, and what to use instead: one table (README lists it).

The cluster's shape, persistence and failovers belong to cachefleet; a client that changed
them on a node behind the router would break the cluster for everyone (an ``ACL SETUSER
default -@all`` fails the sentinels' probes, ``CLUSTER RESET`` drops a node's slots,
``SHUTDOWN`` loses a shard). Commands that would take over a connection shared by every
client (``MONITOR``, ``CLIENT REPLY``) are refused for the same reason. Read-only variants
(``CONFIG GET``, ``ACL WHOAMI|LIST|USERS|GETUSER|CAT``, ``CLUSTER INFO|SLOTS|SHARDS|NODES|
KEYSLOT|COUNTKEYSINSLOT|GETKEYSINSLOT``, ``CLIENT ID|GETNAME|INFO|LIST``) keep working.
"""

from __future__ import annotations

from collections.abc import Sequence

from cachefleet.resp import Err, encode

#: Sub-command key for "the command whatever its sub-command".
ANY = b"*"

_TOPOLOGY = "change the topology file and run `cachefleet up <topology>`"
_MEMBERSHIP = "nodes and slots are managed by cachefleet (`cachefleet up`, `cachefleet status`)"
_FAILOVER = "use `cachefleet failover <cluster> --shard N [--to NODE]`"
_STOP = "use `cachefleet down <cluster>`"
_PERSISTENCE = "persistence is set in the topology file (`cachefleet up <topology>`)"
_SHARED = "it would act on connections the router shares between clients; connect to a node"
_USERS = "users are not managed through the router"
_NOT_MANAGED = "not available on a cachefleet cluster"
_WAIT = (
    "the router spreads a client's writes over connections it shares, so it cannot wait for "
    "them; connect to the key's primary (see CLUSTER SLOTS) to wait for its replicas"
)

_CLUSTER_WRITES = (
    b"RESET", b"FORGET", b"MEET", b"ADDSLOTS", b"ADDSLOTSRANGE", b"DELSLOTS", b"DELSLOTSRANGE",
    b"FLUSHSLOTS", b"SETSLOT", b"SAVECONFIG", b"BUMPEPOCH", b"SET-CONFIG-EPOCH",
)  # fmt: skip

#: (command, sub-command or ANY) -> what to use instead.
REFUSED: dict[tuple[bytes, bytes], str] = {
    (b"CONFIG", b"SET"): _TOPOLOGY,
    (b"CONFIG", b"REWRITE"): _TOPOLOGY,
    (b"CONFIG", b"RESETSTAT"): _TOPOLOGY,
    (b"ACL", b"SETUSER"): _USERS,
    (b"ACL", b"DELUSER"): _USERS,
    (b"ACL", b"LOAD"): _USERS,
    (b"ACL", b"SAVE"): _USERS,
    **{(b"CLUSTER", sub): _MEMBERSHIP for sub in _CLUSTER_WRITES},
    (b"CLUSTER", b"FAILOVER"): _FAILOVER,
    (b"CLUSTER", b"REPLICATE"): _FAILOVER,
    (b"FAILOVER", ANY): _FAILOVER,
    (b"REPLICAOF", ANY): _FAILOVER,
    (b"SLAVEOF", ANY): _FAILOVER,
    (b"SHUTDOWN", ANY): _STOP,
    (b"SAVE", ANY): _PERSISTENCE,
    (b"BGSAVE", ANY): _PERSISTENCE,
    (b"BGREWRITEAOF", ANY): _PERSISTENCE,
    (b"MIGRATE", ANY): _MEMBERSHIP,
    (b"DEBUG", ANY): _NOT_MANAGED,
    (b"MODULE", ANY): _NOT_MANAGED,
    (b"CLIENT", b"KILL"): _SHARED,
    (b"CLIENT", b"PAUSE"): _SHARED,
    (b"CLIENT", b"UNPAUSE"): _SHARED,
    (b"CLIENT", b"REPLY"): _SHARED,
    (b"CLIENT", b"TRACKING"): _SHARED,
    (b"CLIENT", b"CACHING"): _SHARED,
    (b"CLIENT", b"UNBLOCK"): _SHARED,
    (b"WAIT", ANY): _WAIT,
    (b"WAITAOF", ANY): _WAIT,
    (b"MONITOR", ANY): _SHARED,
    (b"SYNC", ANY): _SHARED,
    (b"PSYNC", ANY): _SHARED,
    (b"REPLCONF", ANY): _SHARED,
}

#: Commands with at least one refused form: the only ones :func:`refusal` looks further at.
NAMES = frozenset(name for name, _ in REFUSED)


def refusal(args: Sequence[bytes]) -> bytes | None:
    """The error reply for a refused request, or None."""
    name = args[0].upper()
    if name not in NAMES:
        return None
    sub = args[1].upper() if len(args) > 1 else b""
    instead = REFUSED.get((name, ANY)) or REFUSED.get((name, sub))
    if instead is None:
        return None
    shown = name.decode() if (name, ANY) in REFUSED else f"{name.decode()} {sub.decode()}"
    return encode(Err(f"ERR router: {shown} is not supported through the router: {instead}"))


def table() -> list[tuple[str, str]]:
    """(command, what to use instead) for documentation."""
    return [
        (name.decode() if sub == ANY else f"{name.decode()} {sub.decode()}", instead)
        for (name, sub), instead in REFUSED.items()
    ]
