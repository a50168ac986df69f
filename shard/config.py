"""Engine config rendering for one node (pure: plan in, text out)."""

from __future__ import annotations

from pathlib import Path

from cachefleet.plan import NodeSpec, Plan


def render_engine_config(plan: Plan, node: NodeSpec, data_dir: Path, log_file: Path) -> str:
    """The valkey.conf / redis.conf of one cluster-mode node.

    The engine never fails over on its own (sentinels decide), keeps serving healthy shards
    when another shard has no primary, binds and announces its zone's address, and sends
    from it (so packet filters on zone addresses cut a zone off), and syncs replicas at once.
    """
    topo = plan.topology
    lines = [
        f"port {node.port}",
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
        f"appendonly {'yes' if topo.persistence.appendonly else 'no'}",
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
    ]
    return "\n".join(lines) + "\n"
