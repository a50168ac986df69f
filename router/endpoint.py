"""The configuration endpoint and the commands the router answers itself (pure functions of
the layout and of the client's own connection state).

``CLUSTER SLOTS|SHARDS|NODES|INFO`` are built from the live layout on the bus, so a
cluster-aware client bootstraps here and then talks to the nodes directly. ``HELLO``,
``CLIENT``, ``AUTH``, ``SELECT``, ``PING`` ... concern the client's connection to the router,
not the shared connections behind it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cachefleet.layout import Layout
from cachefleet.resp import OK, Err, Simple, Verbatim
from cachefleet.slots import SLOTS, key_slot
from router.transport import ClientConn

#: The request is not answered here: forward it to a node.
FORWARD = object()


def arity(cmd: str) -> Err:
    return Err(f"ERR wrong number of arguments for '{cmd}' command")


# -- CLUSTER ------------------------------------------------------------------------------------


def cluster_slots(layout: Layout | None) -> list[Any]:
    out: list[Any] = []
    if layout is None:
        return out
    for shard in layout.shards:
        primary = shard.primary
        if primary is None:
            continue
        members = [primary, *shard.replicas]
        for start, end in shard.slots:
            out.append([start, end, *[[n.host, n.port, n.id, []] for n in members]])
    return out


def cluster_shards(layout: Layout | None) -> list[Any]:
    out: list[Any] = []
    if layout is None:
        return out
    for shard in layout.shards:
        flat = [x for r in shard.slots for x in r]
        nodes = [
            {
                "id": n.id,
                "port": n.port,
                "ip": n.host,
                "endpoint": n.host,
                "role": "master" if n.role == "primary" else "replica",
                "replication-offset": 0,
                "health": "online",
            }
            for n in shard.nodes
        ]
        out.append({"slots": flat, "nodes": nodes})
    return out


def cluster_nodes(layout: Layout | None) -> str:
    if layout is None:
        return ""
    lines = []
    for shard in layout.shards:
        primary = shard.primary
        slots = " ".join(f"{a}-{b}" if a != b else str(a) for a, b in shard.slots)
        for n in shard.nodes:
            role = "master" if n.role == "primary" else "slave"
            master = "-" if n.role == "primary" or primary is None else primary.id
            parts = [
                n.id,
                f"{n.host}:{n.port}@{n.bus_port}",
                role,
                master,
                "0",
                "0",
                str(layout.epoch),
                "connected",
            ]
            if n.role == "primary" and slots:
                parts.append(slots)
            lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def cluster_info(layout: Layout | None) -> str:
    assigned = served = shards = known = epoch = 0
    if layout is not None:
        for shard in layout.shards:
            count = sum(end - start + 1 for start, end in shard.slots)
            assigned += count
            if shard.primary is not None:
                served += count
                shards += 1
        known = len(layout.nodes())
        epoch = layout.epoch
    fields = {
        "cluster_enabled": 1,
        "cluster_state": "ok" if layout is not None and served == SLOTS else "fail",
        "cluster_slots_assigned": assigned,
        "cluster_slots_ok": served,
        "cluster_slots_pfail": 0,
        "cluster_slots_fail": assigned - served,
        "cluster_known_nodes": known,
        "cluster_size": shards,
        "cluster_current_epoch": epoch,
        "cluster_my_epoch": epoch,
    }
    return "".join(f"{k}:{v}\r\n" for k, v in fields.items())


def cluster(layout: Layout | None, args: Sequence[bytes]) -> Any:
    sub = args[1].upper() if len(args) > 1 else b""
    match sub:
        case b"SLOTS":
            return cluster_slots(layout)
        case b"SHARDS":
            return cluster_shards(layout)
        case b"NODES":
            return Verbatim(cluster_nodes(layout))
        case b"INFO":
            return Verbatim(cluster_info(layout))
        case b"KEYSLOT" if len(args) == 3:
            return key_slot(args[2])
        case b"MYID":
            return Err("ERR the router is not a cluster node; ask a node (see CLUSTER NODES)")
    return FORWARD


def forward_slot(args: Sequence[bytes]) -> int | None:
    """The slot a forwarded CLUSTER COUNTKEYSINSLOT/GETKEYSINSLOT is about."""
    if (
        len(args) > 2
        and args[0].upper() == b"CLUSTER"
        and args[1].upper() in (b"COUNTKEYSINSLOT", b"GETKEYSINSLOT")
        and args[2].isdigit()
        and int(args[2]) < SLOTS
    ):
        return int(args[2])
    return None


# -- connection state ---------------------------------------------------------------------------


NO_PASSWORD = Err(
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)


def auth(args: Sequence[bytes]) -> Any:
    """The router checks no password, so it never answers OK to one: it answers as a server
    without ``requirepass`` does to ``AUTH <password>``."""
    if len(args) not in (2, 3):
        return Err("ERR syntax error")
    return NO_PASSWORD


def hello(client: ClientConn, args: Sequence[bytes], engine: str) -> Any:
    proto = client.protocol
    i = 1
    if len(args) > 1:
        try:
            proto = int(args[1])
        except ValueError:
            return Err("ERR Protocol version is not an integer or out of range")
        if proto not in (2, 3):
            return Err("NOPROTO unsupported protocol version")
        i = 2
    name = client.name
    while i < len(args):
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < len(args):
            return NO_PASSWORD
        elif opt == b"SETNAME" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            return Err(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    client.protocol, client.name = proto, name
    return {
        "server": engine,
        "version": "8.1.0" if engine == "valkey" else "7.0.0",
        "proto": proto,
        "id": client.id,
        "mode": "cluster",
        "role": "master",
        "modules": [],
    }


def client_command(client: ClientConn, args: Sequence[bytes]) -> Any:
    sub = args[1].upper() if len(args) > 1 else b""
    match sub:
        case b"ID":
            return client.id
        case b"SETNAME" if len(args) == 3:
            client.name = args[2]
            return OK
        case b"GETNAME":
            return client.name
        case b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH":
            return OK
    return FORWARD


def reset(client: ClientConn) -> Any:
    client.protocol = 2
    client.name = None
    client.tx = None
    client.drop_state()
    return Simple("RESET")


def ping(args: Sequence[bytes]) -> Any:
    if len(args) > 2:
        return arity("ping")
    return Simple("PONG") if len(args) == 1 else args[1]


def select(args: Sequence[bytes]) -> Any:
    if len(args) != 2:
        return arity("select")
    return OK if args[1] == b"0" else Err("ERR SELECT is not allowed in cluster mode")


Local = Callable[[ClientConn, Sequence[bytes], Layout | None, str], Any]

#: name -> how the router answers it (FORWARD: a node answers after all).
LOCAL: dict[bytes, Local] = {
    b"PING": lambda c, a, lay, e: ping(a),
    b"ECHO": lambda c, a, lay, e: a[1] if len(a) == 2 else arity("echo"),
    b"QUIT": lambda c, a, lay, e: OK,
    b"HELLO": lambda c, a, lay, e: hello(c, a, e),
    b"AUTH": lambda c, a, lay, e: auth(a),
    b"SELECT": lambda c, a, lay, e: select(a),
    b"READONLY": lambda c, a, lay, e: OK,
    b"READWRITE": lambda c, a, lay, e: OK,
    b"ASKING": lambda c, a, lay, e: OK,
    b"RESET": lambda c, a, lay, e: reset(c),
    b"CLIENT": lambda c, a, lay, e: client_command(c, a),
    b"CLUSTER": lambda c, a, lay, e: cluster(lay, a),
}


def answer(client: ClientConn, args: Sequence[bytes], layout: Layout | None, engine: str) -> Any:
    """The router's own answer to a local command, or FORWARD."""
    handler = LOCAL.get(args[0].upper())
    return FORWARD if handler is None else handler(client, args, layout, engine)
