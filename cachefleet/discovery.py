"""Memcached Auto Discovery: the node list a configuration endpoint serves, and its version.

The managed service's format, byte for byte: ``config get cluster`` is answered with ::

    CONFIG cluster 0 <n>\r\n<version>\n<host>|<ip>|<port> <host>|<ip>|<port> ...\n\r\nEND\r\n

where ``n`` counts the version line and the node line, each with its ``\n``; entries are sorted
by host name. Clients from before memcached 1.4.14 ask ``get AmazonElastiCache:cluster`` and
get the same payload as the value. A node's host name is its node name, its ip the zone
address it is bound to.

The version is the config epoch of the cluster's layout (one shard of one node per memcached
node). It goes up by one whenever the node list changes: a node added or removed, an address
changed, or a node replaced (it comes back empty at the same address; discovery clients are
told, as they are on the managed service, where a replaced node gets a new address).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from cachefleet import bus
from cachefleet.announce import emit_event, publish_layout
from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir

MAGIC_KEY = b"AmazonElastiCache:cluster"


@dataclass(frozen=True)
class Entry:
    host: str  # the node's name
    ip: str
    port: int


def entries(layout: Layout) -> list[Entry]:
    """The discovery entries of a memcached layout, sorted by host name."""
    return sorted((Entry(n.name, n.host, n.port) for n in layout.nodes()), key=lambda e: e.host)


def payload(version: int, nodes: list[Entry]) -> bytes:
    """``<version>\\n<host>|<ip>|<port> ...\\n``."""
    line = " ".join(f"{e.host}|{e.ip}|{e.port}" for e in sorted(nodes, key=lambda e: e.host))
    return f"{version}\n{line}\n".encode("ascii")


def config_reply(version: int, nodes: list[Entry]) -> bytes:
    """The reply to ``config get cluster``."""
    body = payload(version, nodes)
    return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)


def value_block(version: int, nodes: list[Entry]) -> bytes:
    """The ``VALUE`` block for the key ``AmazonElastiCache:cluster`` (without ``END``)."""
    body = payload(version, nodes)
    return b"VALUE %s 0 %d\r\n%s\r\n" % (MAGIC_KEY, len(body), body)


def memcached_layout(plan: Plan, epoch: int) -> Layout:
    """Every planned memcached node as the single member of its own shard, serving no slots."""
    shards = tuple(
        LayoutShard(
            id=n.shard,
            slots=(),
            nodes=(
                LayoutNode(
                    name=n.name,
                    id=n.node_id,
                    shard=n.shard,
                    zone=n.zone,
                    host=n.host,
                    port=n.port,
                    bus_port=n.bus_port,
                    role="primary",
                ),
            ),
        )
        for n in plan.nodes
    )
    return Layout(cluster=plan.name, epoch=epoch, shards=shards)


def bump_version(pub: bus.Publisher, cdir: ClusterDir, reason: str, **fields: object) -> int | None:
    """Publish the layout of the cluster's current plan (plan.json: nodes may have been added
    or removed since the caller started) with the next version and emit
    ``discovery_version``; the new version, or None before the cluster was first published
    (`up` publishes version 1). Serialised by a lock file: zone agents that replace nodes and
    a scaling `up` at the same moment each get their own version."""
    fd = os.open(cdir.root / "discovery.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        current = cdir.load_layout()
        if current is None:
            return None
        layout = memcached_layout(cdir.load_plan(), current.epoch + 1)
        publish_layout(pub, cdir, layout)
        emit_event(pub, cdir, "discovery_version", version=layout.epoch, reason=reason, **fields)
        return layout.epoch
    finally:
        os.close(fd)
