"""Engine config rendering for one node (pure: plan in, text out)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cachefleet.credentials import Credentials
from cachefleet.plan import NodeSpec, Plan
from cachefleet.security import Secrets, User, user_acl_lines
from cachefleet.tls import TlsFiles, memcached_tls_args

# What the client-facing `default` user may not run, on every node: whatever would break the
# cluster or the control plane (the router refuses the same list with a clearer message, and
# names the cachefleet command to use instead). Read-only variants (CONFIG GET, CLUSTER
# INFO|SLOTS|SHARDS|NODES|KEYSLOT|COUNTKEYSINSLOT, ACL WHOAMI|LIST|CAT) stay allowed.
DENIED_TO_CLIENTS = (
    "config|set",
    "config|rewrite",
    "config|resetstat",
    "acl|setuser",
    "acl|deluser",
    "acl|load",
    "acl|save",
    "cluster|addslots",
    "cluster|addslotsrange",
    "cluster|delslots",
    "cluster|delslotsrange",
    "cluster|flushslots",
    "cluster|forget",
    "cluster|meet",
    "cluster|replicate",
    "cluster|reset",
    "cluster|saveconfig",
    "cluster|set-config-epoch",
    "cluster|setslot",
    "cluster|bumpepoch",
    "cluster|failover",
    "client|kill",
    "client|pause",
    "shutdown",
    "debug",
    "replicaof",
    "slaveof",
    "failover",
    "module",
    "migrate",
    "save",
    "bgsave",
    "bgrewriteaof",
    "monitor",
    "sync",
    "psync",
    "replconf",
)


def acl_lines(
    admin: Credentials, secrets: Secrets | None = None, users: Sequence[User] = ()
) -> list[str]:
    """The client-facing users (`default`: no password or the AUTH token; the topology's
    users with their access strings), each held to the policy above, and the control plane's
    own user, which replicas also use to sync from their primary."""
    return [
        *user_acl_lines(secrets or Secrets(), users, DENIED_TO_CLIENTS),
        f"user {admin.user} on >{admin.password} ~* &* +@all",
        f"masteruser {admin.user}",
        f"masterauth {admin.password}",
    ]


def render_engine_config(
    plan: Plan,
    node: NodeSpec,
    data_dir: Path,
    log_file: Path,
    admin: Credentials,
    secrets: Secrets | None = None,
    tls: TlsFiles | None = None,
) -> str:
    """The valkey.conf / redis.conf of one cluster-mode node.

    The engine never fails over on its own (sentinels decide), keeps serving healthy shards
    when another shard has no primary, binds and announces its zone's address, and sends
    from it (so packet filters on zone addresses cut a zone off), syncs replicas at once, and
    holds clients to the command policy (DENIED_TO_CLIENTS).
    """
    topo = plan.topology
    lines = [
        *(tls_lines(node, tls) if tls is not None else [f"port {node.port}"]),
        f"bind {node.host}",
        f"bind-source-addr {node.host}",
        "protected-mode no",
        "daemonize no",
        f"dir {data_dir}",
        f"logfile {log_file}",
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        f"cluster-port {node.bus_port}",
        f"cluster-announce-ip {node.host}",
        f"cluster-node-timeout {topo.sentinels.down_after_ms}",
        "cluster-replica-no-failover yes",
        "cluster-require-full-coverage no",
        "cluster-allow-replica-migration no",
        f"maxmemory {topo.maxmemory}",
        f"maxmemory-policy {topo.maxmemory_policy}",
        *(f"{key} {_quoted(value)}" for key, value in topo.parameters),
        f"appendonly {'yes' if topo.persistence.appendonly else 'no'}",
        f"appendfsync {topo.persistence.appendfsync}",
        'save ""',
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "repl-diskless-load disabled",
        f"min-replicas-to-write {topo.durability.min_replicas_to_write}",
        f"min-replicas-max-lag {topo.durability.max_lag_s}",
        "replica-serve-stale-data yes",
        "tcp-keepalive 60",
        # keep argv intact: pid files are only trusted while the cmdline names the state dir
        "set-proc-title no",
        *acl_lines(admin, secrets, topo.security.users),
    ]
    return "\n".join(lines) + "\n"


def tls_lines(node: NodeSpec, tls: TlsFiles) -> list[str]:
    """TLS only: the client port, replication and the cluster bus (no plain port)."""
    return [
        "port 0",
        f"tls-port {node.port}",
        f"tls-cert-file {tls.cert}",
        f"tls-key-file {tls.key}",
        f"tls-ca-cert-file {tls.ca}",
        "tls-auth-clients no",
        "tls-replication yes",
        "tls-cluster yes",
    ]


def memcached_argv(
    plan: Plan, node: NodeSpec, marker: Path, *, as_root: bool, tls: TlsFiles | None = None
) -> list[str]:
    """The command line of one memcached node (memcached reads no config file).

    Bound to its zone's address only, TCP only, memory from node_type, the topology's
    allow-listed parameters. `-P marker` (a path under the node's directory) keeps the state
    dir in argv, which is how cachefleet recognises its own processes. With `tls` (a TLS
    cluster) it listens with TLS only, presenting the cluster's node certificate."""
    topo = plan.topology
    mc = topo.memcached
    assert mc is not None
    argv = [
        plan.engine_binary,
        "-l",
        node.host,
        "-p",
        str(node.port),
        "-U",
        "0",
        "-m",
        str(topo.maxmemory // 1024**2),
        "-t",
        str(mc.threads),
        "-I",
        str(mc.max_item_size),
        "-c",
        str(mc.max_connections),
        "-n",
        str(mc.chunk_size),
        "-f",
        f"{mc.growth_factor:g}",
        "-P",
        str(marker),
    ]
    if not mc.cas:
        argv.append("-C")
    if not mc.evictions:
        argv.append("-M")
    if as_root:
        argv += ["-u", "root"]  # memcached refuses to run as root unless told to
    if tls is not None:
        argv += memcached_tls_args(tls)
    return argv


def _quoted(value: str) -> str:
    """A config value as the engine's config parser reads it (empty and $ need quotes)."""
    return f'"{value}"' if not value or not value.replace("-", "").isalnum() else value
