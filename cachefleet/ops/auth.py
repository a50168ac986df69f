"""``cachefleet auth NAME --token-file F --strategy rotate|set``: change the AUTH token online.

With the managed service's semantics: ``rotate`` makes the new token accepted beside the old
one, ``set`` makes it the only one. It returns once every node and every router worker
enforces the change, in an order that never refuses a client holding a valid token:

1. every running node learns the new token beside what it accepts now (``ACL SETUSER
   default >new``), so the router may log new backend connections in with it;
2. the secrets store is rewritten (nodes started from now on render it) and every router
   worker acknowledges the new generation (it then authenticates clients against it and
   logs new backend connections in with the newest token);
3. every running node is set to exactly the new list (``resetpass``), then checked with a
   plain ``AUTH`` per token: the accepted ones pass, the dropped ones are refused.

Connections already authenticated stay so (the engine does not drop them either), which is
what lets clients switch tokens under load without a failed request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import hiredis

from cachefleet.errors import CachefleetError, ClusterTimeout, TopologyError
from cachefleet.nodes import connect, try_call
from cachefleet.plan import NodeSpec
from cachefleet.proc import live_processes
from cachefleet.resp import encode_command
from cachefleet.security import (
    RotationError,
    Secrets,
    ack_path,
    default_setuser,
    load_secrets,
    read_ack,
    read_secret,
    rotated,
    save_secrets,
)
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import client_context

Out = Callable[[str], None]
TIMEOUT_S = 30.0


class AuthChangeError(CachefleetError):
    """A token change that cannot be made (bad token, strategy, cluster)."""


async def _setuser(spec: NodeSpec, cdir: ClusterDir, args: list[str]) -> bool:
    client = connect(spec.host, spec.port, timeout=1.0, auth=cdir.admin())
    try:
        return await try_call(client, "ACL", "SETUSER", *args) is not None
    finally:
        await client.aclose()


async def _auth_replies(host: str, port: int, tokens: list[str]) -> list[bool] | None:
    """``AUTH default <token>`` for each token on a fresh connection: accepted or not
    (None: the node did not answer)."""

    async def run() -> list[bool]:
        tls = client_context(host, port)
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=host if tls is not None else None
        )
        try:
            writer.write(b"".join(encode_command(["AUTH", "default", t]) for t in tokens))
            parser = hiredis.Reader(notEnoughData=Ellipsis)
            out: list[bool] = []
            while len(out) < len(tokens):
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError("closed")
                parser.feed(chunk)
                reply = parser.gets()
                while reply is not Ellipsis:
                    out.append(not isinstance(reply, hiredis.ReplyError))
                    reply = parser.gets()
            return out
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(run(), 2.0)
    except (OSError, TimeoutError, hiredis.ProtocolError):
        return None


def _enforced(accepted: list[bool], tokens: list[str], wanted: Secrets) -> bool:
    return all(ok == wanted.check("default", t) for ok, t in zip(accepted, tokens, strict=True))


async def _nodes_match(
    nodes: list[NodeSpec], cdir: ClusterDir, wanted: Secrets, probe: list[str], out: Out
) -> None:
    """Phase 3: every running node accepts exactly `wanted`'s tokens (checked with AUTH)."""
    deadline = time.monotonic() + TIMEOUT_S
    live = live_processes(cdir)
    # a node that is not running renders the store when it starts: nothing to wait for
    stopped = sorted(n.name for n in nodes if f"node.{n.name}" not in live)
    if stopped:
        out(f"  not running, will start with the new secrets: {', '.join(stopped)}")
    pending = {n.name: n for n in nodes if n.name not in stopped}
    unreachable: set[str] = set()
    while pending:
        for spec in list(pending.values()):
            await _setuser(spec, cdir, default_setuser(wanted))
            accepted = await _auth_replies(spec.host, spec.port, probe)
            if accepted is None:
                unreachable.add(spec.name)
            elif _enforced(accepted, probe, wanted):
                unreachable.discard(spec.name)
                del pending[spec.name]
        if not pending:
            break
        if time.monotonic() > deadline:
            if set(pending) <= unreachable:  # down: it renders the store when it starts
                out(f"  not running, will start with the new token: {', '.join(sorted(pending))}")
                break
            raise ClusterTimeout("token change", TIMEOUT_S, f"nodes {sorted(pending)} disagree")
        await asyncio.sleep(0.2)


async def _routers_ack(cdir: ClusterDir, generation: int) -> None:
    """Phase 2: every running router worker acknowledged `generation`."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        routers = {k: v for k, v in live_processes(cdir).items() if k.split(".")[0] == "router"}
        behind = [
            name
            for name, pid in routers.items()
            if (ack := read_ack(ack_path(cdir.root, name))) is None
            or ack[0] < generation
            or ack[1] != pid
        ]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise ClusterTimeout("token change", TIMEOUT_S, f"routers {behind} did not reload")
        await asyncio.sleep(0.1)


async def change_token(
    name: str, *, token_file: str, strategy: str, state_dir: str | None, out: Out
) -> Secrets:
    cdir = ClusterDir(state_home(state_dir), name)
    plan = cdir.load_plan()
    if plan.topology.is_memcached:
        raise AuthChangeError(f"cluster {name!r} runs memcached, which has no AUTH")
    try:
        token = read_secret(token_file, "", token_file)
    except TopologyError as exc:
        raise AuthChangeError(f"{token_file}: {exc.message}") from None
    current = load_secrets(cdir.root)
    try:
        wanted = rotated(current, token, strategy)
    except RotationError as exc:
        raise AuthChangeError(str(exc)) from None
    nodes = list(plan.nodes)
    added = [t for t in wanted.tokens if t not in current.tokens]
    if added and not current.open:
        out(f"adding the new token on {len(nodes)} nodes")
        for spec in nodes:
            await _setuser(spec, cdir, default_setuser(wanted, adding=added))
    save_secrets(cdir.root, wanted)
    if not plan.topology.standalone:  # a group's endpoints pass AUTH on: the nodes enforce it
        out(f"waiting for the routers to enforce generation {wanted.generation}")
        await _routers_ack(cdir, wanted.generation)
    probe = list(dict.fromkeys([*current.tokens, *wanted.tokens]))
    verb = "accepting both tokens" if strategy == "rotate" else "accepting only the new token"
    out(f"{verb} on every node")
    await _nodes_match(nodes, cdir, wanted, probe, out)
    return wanted
