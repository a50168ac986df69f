"""Starting one engine process: render its config, start it detached, record its pid.

Kept free of asyncio/redis/MQTT imports so an agent can start its nodes before it has loaded
anything heavy (the engines then come up while the agent is still importing).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cachefleet.plan import NodeSpec, Plan
from cachefleet.proc import write_pid
from cachefleet.security import load_secrets
from cachefleet.state import ClusterDir
from cachefleet.tls import tls_files
from shard.config import memcached_argv, render_engine_config


def node_paths(cdir: ClusterDir, spec: NodeSpec) -> tuple[Path, Path]:
    """(data dir, config file) of a node. A memcached node has no config file: the second
    path is then its pid file, named in its argv (`-P`) all the same."""
    node_dir = cdir.node_dir(spec.name)
    if spec.bus_port == 0:
        return node_dir / "data", node_dir / "memcached.pid"
    return node_dir / "data", node_dir / "node.conf"


def start_memcached(plan: Plan, cdir: ClusterDir, spec: NodeSpec) -> subprocess.Popen[bytes]:
    data_dir, marker = node_paths(cdir, spec)
    data_dir.mkdir(parents=True, exist_ok=True)
    tls = tls_files(cdir.root) if plan.topology.security.tls else None
    argv = memcached_argv(plan, spec, marker, as_root=os.geteuid() == 0, tls=tls)
    log = open(cdir.log_file(f"node.{spec.name}"), "ab")  # noqa: SIM115 - handed to the child
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()
    write_pid(cdir.pid_file(f"node.{spec.name}"), child.pid)
    return child


def without_cluster_mode(config: str, primary: tuple[str, int] | None) -> str:
    """A node config for a cluster-mode-disabled group: the cluster-mode config without its
    ``cluster-*`` lines, plus ``replicaof`` the current primary (None: the node starts as the
    primary). Replicas sync as the control plane's user (its masteruser/masterauth)."""
    lines = [line for line in config.splitlines() if not line.startswith("cluster-")]
    if primary is not None:
        lines.append(f"replicaof {primary[0]} {primary[1]}")
    return "\n".join(lines) + "\n"


def standalone_primary(plan: Plan, cdir: ClusterDir, spec: NodeSpec) -> tuple[str, int] | None:
    """Whom a node of a cluster-mode-disabled group replicates when it starts: the last
    published layout's primary (the plan's first member before there is a layout); None when
    that is the node itself."""
    layout = cdir.load_layout()
    current = layout.shard(1).primary if layout is not None and layout.shards else None
    if current is not None:
        return None if current.name == spec.name else (current.host, current.port)
    first = next(n for n in plan.shard_nodes(spec.shard) if n.member == 0)
    return None if first.name == spec.name else (first.host, first.port)


def start_engine(plan: Plan, cdir: ClusterDir, spec: NodeSpec) -> subprocess.Popen[bytes]:
    if plan.topology.is_memcached:
        return start_memcached(plan, cdir, spec)
    data_dir, conf = node_paths(cdir, spec)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = cdir.log_file(f"node.{spec.name}")
    text = render_engine_config(
        plan,
        spec,
        data_dir,
        log_file,
        cdir.admin(),
        load_secrets(cdir.root),
        tls_files(cdir.root) if plan.topology.security.tls else None,
    )
    if plan.topology.standalone:
        text = without_cluster_mode(text, standalone_primary(plan, cdir, spec))
    # the file holds the control plane's password: readable by its owner only
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    child = subprocess.Popen(
        [plan.engine_binary, str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    write_pid(cdir.pid_file(f"node.{spec.name}"), child.pid)
    return child
