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
from cachefleet.state import ClusterDir
from shard.config import render_engine_config


def node_paths(cdir: ClusterDir, spec: NodeSpec) -> tuple[Path, Path]:
    """(data dir, config file) of a node."""
    node_dir = cdir.node_dir(spec.name)
    return node_dir / "data", node_dir / "node.conf"


def start_engine(plan: Plan, cdir: ClusterDir, spec: NodeSpec) -> subprocess.Popen[bytes]:
    data_dir, conf = node_paths(cdir, spec)
    data_dir.mkdir(parents=True, exist_ok=True)
    text = render_engine_config(
        plan, spec, data_dir, cdir.log_file(f"node.{spec.name}"), cdir.admin()
    )
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
