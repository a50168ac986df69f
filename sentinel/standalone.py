"""Failover of a cluster-mode-disabled group: the same detection, votes, candidate ranking
and state machine as a shard; only the engine commands differ, and they are here.

* promote: ``REPLICAOF NO ONE`` on the chosen replica (it keeps its data and replication
  history, so the others resync partially from it);
* promoted: the replica reports ``role:master`` (its run id becomes the layout's node id);
* reattach: ``REPLICAOF host port`` on every other replica that is not down.

A node that comes back still believing it leads (a primary paused, then resumed; or one
that restarted with its data) is not demoted by any engine rule here, so the sentinels do it:
:func:`misdirected` (pure) names every node the layout calls a replica that is a primary or
follows another node, once no failover of the group is under way, the layout's primary is
up and has been seen as a primary, and the node has been so for a few probe intervals. Its
agent's config names the current primary too, so a restart lands in the same place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cachefleet.layout import LayoutShard
from cachefleet.nodes import NodeLink, Replication, Role, parse_info


@dataclass(frozen=True)
class Seen:
    """What probes say of one node: its replication state, None without a valid reply."""

    reply: Replication | None
    sdown: bool


def misdirected(
    shard: LayoutShard,
    seen: Mapping[str, Seen],
    *,
    busy: bool,
    since: Mapping[str, float],
    now: float,
    settle_s: float,
) -> dict[str, tuple[str, int]]:
    """node name -> the address it must replicate: layout replicas that are primaries or
    follow anyone but the layout's primary, for at least `settle_s` (`since`: when each was
    first seen so). Nothing while a failover is under way (`busy`) or while the layout's
    primary is down or not a primary itself."""
    primary = shard.primary
    if busy or primary is None:
        return {}
    lead = seen.get(primary.name)
    if lead is None or lead.sdown or lead.reply is None or lead.reply.role is not Role.PRIMARY:
        return {}
    target = (primary.host, primary.port)
    names = {(n.host, n.port): n.name for n in shard.nodes}
    out = {}
    for node in shard.replicas:
        s = seen.get(node.name)
        if s is None or s.sdown or s.reply is None or not is_astray(s.reply, target):
            continue
        # Whom the node follows now (itself when it leads): if that one was promoted from
        # the layout's primary, the nodes know of a failover this layout does not (it has not
        # reached me yet): moving them back under the old primary would wipe the new writes.
        upstream = s.reply
        if s.reply.role is Role.REPLICA and s.reply.primary_addr is not None:
            up = seen.get(names.get(s.reply.primary_addr, ""))
            upstream = up.reply if up is not None and up.reply is not None else s.reply
        if succeeded(upstream, lead.reply):
            continue
        if now - since.get(node.name, now) >= settle_s:
            out[node.name] = target
    return out


def succeeded(node: Replication, old: Replication) -> bool:
    """`node` leads a history that continues `old`'s (it was promoted from `old`'s
    replicas): it is newer than `old`, never to be put back under it."""
    return bool(old.replid) and node.replid2 == old.replid


def is_astray(reply: Replication, target: tuple[str, int]) -> bool:
    """A node that should replicate `target` but leads, or follows someone else."""
    if reply.role is Role.PRIMARY:
        return True
    return reply.role is Role.REPLICA and reply.primary_addr != target


async def promote(link: NodeLink) -> object:
    return await link.call("REPLICAOF", "NO", "ONE")


async def promoted_id(link: NodeLink) -> str | None:
    """The node's run id once it reports role:master; None before."""
    text = await link.call("INFO", "server", "replication")  # needs Redis/Valkey 7+
    if not isinstance(text, bytes | str):
        return None
    info = parse_info(text.decode() if isinstance(text, bytes) else text)
    if Replication.from_info(info).role is not Role.PRIMARY:
        return None
    return info.get("run_id") or ""


async def follow(link: NodeLink, host: str, port: int) -> object:
    return await link.call("REPLICAOF", host, str(port), timeout=1.0)
