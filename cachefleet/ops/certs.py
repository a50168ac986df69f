"""``cachefleet certs rotate NAME``: renew a TLS cluster's server certificate without downtime.

A new certificate (same CA, so no client changes anything) is put in place of the old one;
every running node is told to load it (``CONFIG SET tls-cert-file … tls-key-file …``, which
reloads TLS without dropping connections; memcached's ``refresh_certs``) and checked by a
handshake that shows the new serial; every router worker reloads it for new connections and
acknowledges the serial it serves (a cluster-mode-disabled group's endpoints pass TLS through
to the nodes: nothing to reload there). Nodes that are not running load it when they start.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable

from cachefleet import memcache
from cachefleet.errors import CachefleetError, ClusterTimeout
from cachefleet.nodes import connect, try_call
from cachefleet.plan import NodeSpec
from cachefleet.proc import live_processes
from cachefleet.security import read_ack
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import certificate_serial, client_context, issue_server_certificate, tls_files

Out = Callable[[str], None]
TIMEOUT_S = 30.0


def served_serial(host: str, port: int) -> int | None:
    """The serial of the certificate host:port presents (None: no TLS handshake)."""
    ctx = client_context(host, port)
    if ctx is None:
        return None
    try:
        with (
            socket.create_connection((host, port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as sock,
        ):
            der = sock.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return certificate_serial(der) if der else None


async def _reload(spec: NodeSpec, cdir: ClusterDir, *, memcached: bool) -> None:
    if memcached:  # memcached reloads its certificate files (same paths) on `refresh_certs`
        await memcache.call(spec.host, spec.port, b"refresh_certs\r\n", timeout=2.0)
        return
    files = tls_files(cdir.root)
    client = connect(spec.host, spec.port, timeout=2.0, auth=cdir.admin())
    try:
        await try_call(
            client, "CONFIG", "SET", "tls-cert-file", str(files.cert), "tls-key-file",
            str(files.key),
        )  # fmt: skip
    finally:
        await client.aclose()


async def rotate_certificates(name: str, *, state_dir: str | None, out: Out) -> int:
    cdir = ClusterDir(state_home(state_dir), name)
    plan = cdir.load_plan()
    topo = plan.topology
    if not topo.security.tls:
        raise CachefleetError(f"cluster {name!r} does not use TLS (security.tls: false)")
    serial = issue_server_certificate(cdir.root, name, [topo.zone_address(z) for z in topo.zones])
    out(f"new server certificate {serial:x}; nodes load it now")
    live = live_processes(cdir)
    pending = {n.name: n for n in plan.nodes if f"node.{n.name}" in live}
    deadline = time.monotonic() + TIMEOUT_S
    while pending:
        for spec in list(pending.values()):
            await _reload(spec, cdir, memcached=topo.is_memcached)
            if await asyncio.to_thread(served_serial, spec.host, spec.port) == serial:
                del pending[spec.name]
        if pending and time.monotonic() > deadline:
            raise ClusterTimeout("certificate rotation", TIMEOUT_S, f"nodes {sorted(pending)}")
        if pending:
            await asyncio.sleep(0.2)
    if topo.standalone:
        # a group's endpoints pass TLS through: a new connection gets the primary's (or a
        # replica's) certificate, which every node now serves
        return serial
    out("waiting for the routers to serve it")
    while True:
        routers = {k: v for k, v in live_processes(cdir).items() if k.split(".")[0] == "router"}
        behind = [
            k
            for k, pid in routers.items()
            if (ack := read_ack(cdir.root / "security" / f"{k}.cert")) is None
            or ack != (serial, pid)
        ]
        if not behind:
            return serial
        if time.monotonic() > deadline:
            raise ClusterTimeout("certificate rotation", TIMEOUT_S, f"routers {behind}")
        await asyncio.sleep(0.1)
