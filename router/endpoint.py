"""The configuration endpoint and the commands the router answers itself (pure functions of
the layout and of the client's own connection state).

``CLUSTER SLOTS|SHARDS|NODES|INFO`` are built from the live layout on the bus, so a
cluster-aware client bootstraps here and then talks to the nodes directly. ``HELLO``,
``CLIENT``, ``AUTH``, ``SELECT``, ``PING`` ... concern the client's connection to the router,
not the shared connections behind it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from cachefleet.layout import Layout
from cachefleet.resp import OK, Err, Simple, Verbatim
from cachefleet.slots import SLOTS, key_slot
from router.auth import HELLO_NOAUTH, Authenticator
from router.client import ClientConn

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


def auth(
    args: Sequence[bytes], client: ClientConn | None = None, authn: Authenticator | None = None
) -> Any:
    """Without AUTH configured the router answers as a server without a password does to
    ``AUTH <password>``; with it, as the engine does (OK, or WRONGPASS leaving the
    connection as it was)."""
    if len(args) not in (2, 3):
        return Err("ERR syntax error")
    if client is None or authn is None or not authn.required:
        return NO_PASSWORD
    user = authn.authenticate(args)
    if isinstance(user, Err):
        return user
    client.user = user
    return OK


def hello(
    client: ClientConn, args: Sequence[bytes], engine: str, authn: Authenticator | None = None
) -> Any:
    proto = client.protocol
    i = 1
    if len(args) > 1:
        if not args[1].isdigit() or args[1][:1] == b"0":  # string2ll: no sign, no 0 lead
            return Err("ERR Protocol version is not an integer or out of range")
        proto = int(args[1])
        if proto not in (2, 3):
            return Err("NOPROTO unsupported protocol version")
        i = 2
    name = client.name
    user = client.user
    required = authn is not None and authn.required
    while i < len(args):
        opt = args[i].upper()
        if opt == b"AUTH" and i + 2 < len(args):
            if authn is None or not required:
                return NO_PASSWORD
            checked = authn.credentials(args[i + 1], args[i + 2])
            if isinstance(checked, Err):
                return checked
            user = checked
            i += 3
        elif opt == b"SETNAME" and i + 1 < len(args):
            name = args[i + 1]
            i += 2
        else:
            return Err(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
    if required and user is None:
        return HELLO_NOAUTH
    client.protocol, client.name, client.user = proto, name, user
    return {
        "server": engine,
        "version": "8.1.0" if engine == "valkey" else "7.0.0",
        "proto": proto,
        "id": client.id,
        "mode": "cluster",
        "role": "master",
        "modules": [],
    }


def client_info(client: ClientConn, now: float) -> str:
    """One line of CLIENT LIST / CLIENT INFO for a client of the router, in the engine's
    format (fields about the router's own connection)."""
    name = (client.name or b"").decode(errors="replace")
    flags = "P" if client.pubsub is not None else ("x" if client.tx is not None else "N")
    lib_name, lib_ver = (v.decode(errors="replace") for v in client.lib)
    return (
        f"id={client.id} addr={client.peer} laddr={client.local} fd=-1 name={name} "
        f"age={int(now - client.connected_at)} idle=0 flags={flags} db=0 sub=0 psub=0 ssub=0 "
        f"multi={len(client.tx) if client.tx is not None else -1} qbuf={client.framer.buffered} "
        f"obl=0 oll={len(client.queue)} omem={client.out_bytes} "
        f"tot-mem={client.inflight_bytes} events=r cmd=NULL user={client.user or 'default'} "
        "redir=-1 "
        f"resp={client.protocol} lib-name={lib_name} lib-ver={lib_ver}"
    )


BAD_NAME = Err("ERR Client names cannot contain spaces, newlines or special characters.")


def client_command(
    client: ClientConn, args: Sequence[bytes], clients: Collection[ClientConn] = ()
) -> Any:
    """CLIENT about the client's own connection to the router (the connections behind it
    are shared: the engine's CLIENT would describe those). CLIENT LIST lists the clients of
    the router worker that serves the connection."""
    sub = args[1].upper() if len(args) > 1 else b""
    match sub:
        case b"ID" if len(args) == 2:
            return client.id
        case b"SETNAME" if len(args) == 3:
            if any(b <= 0x20 or b >= 0x7F for b in args[2]):
                return Err(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                )
            client.name = args[2] or None
            return OK
        case b"GETNAME" if len(args) == 2:
            return client.name
        case b"SETINFO" if len(args) == 4:
            attr = args[2].upper()
            if attr not in (b"LIB-NAME", b"LIB-VER"):
                return Err(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
            name, ver = client.lib
            client.lib = (args[3], ver) if attr == b"LIB-NAME" else (name, args[3])
            return OK
        case b"INFO" if len(args) == 2:
            return Verbatim(client_info(client, time.monotonic()) + "\n")
        case b"LIST":
            now = time.monotonic()
            listed = sorted(clients or [client], key=lambda c: c.id)
            if len(args) > 3 and args[2].upper() == b"ID":
                wanted = {int(a) for a in args[3:] if a.isdigit()}
                listed = [c for c in listed if c.id in wanted]
            return Verbatim("".join(client_info(c, now) + "\n" for c in listed))
        case b"NO-EVICT" | b"NO-TOUCH":
            return OK
    return FORWARD


def reset(client: ClientConn) -> Any:
    client.protocol = 2
    client.name = None
    client.user = None  # back to the default user: unauthenticated where AUTH is required
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


@dataclass(frozen=True)
class Context:
    """What local answers may read besides the client: the layout, the engine's name, and
    every client of this router (CLIENT LIST)."""

    layout: Layout | None
    engine: str
    clients: Collection[ClientConn] = ()
    auth: Authenticator | None = None


Local = Callable[[ClientConn, Sequence[bytes], Context], Any]

#: name -> how the router answers it (FORWARD: a node answers after all).
LOCAL: dict[bytes, Local] = {
    b"PING": lambda c, a, x: ping(a),
    b"ECHO": lambda c, a, x: a[1] if len(a) == 2 else arity("echo"),
    b"QUIT": lambda c, a, x: OK,
    b"HELLO": lambda c, a, x: hello(c, a, x.engine, x.auth),
    b"AUTH": lambda c, a, x: auth(a, c, x.auth),
    b"SELECT": lambda c, a, x: select(a),
    b"READONLY": lambda c, a, x: OK,
    b"READWRITE": lambda c, a, x: OK,
    b"ASKING": lambda c, a, x: OK,
    b"RESET": lambda c, a, x: reset(c),
    b"CLIENT": lambda c, a, x: client_command(c, a, x.clients),
    b"CLUSTER": lambda c, a, x: cluster(x.layout, a),
}


def answer(client: ClientConn, args: Sequence[bytes], context: Context) -> Any:
    """The router's own answer to a local command, or FORWARD."""
    handler = LOCAL.get(args[0].upper())
    return FORWARD if handler is None else handler(client, args, context)
