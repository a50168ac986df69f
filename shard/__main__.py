"""``python -m shard --cluster NAME --zone ZONE --state-dir D``: run one zone agent.

The zone's engines are started first, before the agent's heavier imports, so they are up
(and through the engine's 2 s writable delay) as early as possible.
"""

from __future__ import annotations

import argparse
import subprocess

from cachefleet.buscreds import set_bus_role
from cachefleet.proc import alive_and_ours, read_pid
from cachefleet.state import ClusterDir, state_home
from shard.launch import node_paths, start_engine


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shard")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument(
        "--cluster-start",
        action="store_true",
        help="the whole cluster is (re)starting (`up`): start every node of the zone at once",
    )
    args = parser.parse_args()
    cdir = ClusterDir(state_home(args.state_dir), args.cluster)
    plan = cdir.load_plan()
    if args.zone not in plan.topology.zones:
        parser.error(
            f"zone {args.zone!r} is not in the topology ({', '.join(plan.topology.zones)})"
        )

    # When the whole cluster starts, every node starts here at once. An agent restarted alone
    # (by the supervisor) starts only nodes that were never part of the cluster: a node with an
    # identity (nodes.conf) that is not running may have been a primary, and the agent decides
    # when it may come back (never empty while it still owns its shard's slots).
    prestarted: dict[str, subprocess.Popen[bytes]] = {}
    for spec in plan.zone_nodes(args.zone):
        data_dir, conf = node_paths(cdir, spec)
        pid = read_pid(cdir.pid_file(f"node.{spec.name}"))
        if pid is not None and alive_and_ours(pid, str(conf)):
            continue  # left running by an earlier agent: adopted below
        # (a cluster-mode-disabled node has no nodes.conf: it was a member once there is a layout)
        member = (data_dir / "nodes.conf").exists() or (
            plan.topology.standalone and cdir.layout_path.exists()
        )
        if member and not args.cluster_start:
            continue
        prestarted[spec.name] = start_engine(plan, cdir, spec)

    import asyncio

    from cachefleet.log import configure
    from shard.agent import ZoneAgent
    from shard.memcached import MemcachedAgent
    from shard.standalone import StandaloneAgent

    configure("agent", cluster=args.cluster, zone=args.zone)
    set_bus_role("agent")
    agent = MemcachedAgent if plan.topology.is_memcached else ZoneAgent
    if plan.topology.standalone:
        agent = StandaloneAgent
    asyncio.run(agent(plan=plan, cdir=cdir, zone=args.zone, prestarted=prestarted).run())


if __name__ == "__main__":
    main()
