"""``python -m shard --cluster NAME --zone ZONE --state-dir D``: run one zone agent."""

from __future__ import annotations

import argparse
import asyncio

from cachefleet.log import configure
from cachefleet.state import ClusterDir, state_home
from shard.agent import ZoneAgent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m shard")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()
    configure("agent", cluster=args.cluster, zone=args.zone)
    cdir = ClusterDir(state_home(args.state_dir), args.cluster)
    plan = cdir.load_plan()
    if args.zone not in plan.topology.zones:
        parser.error(f"zone {args.zone!r} is not in the topology ({', '.join(plan.topology.zones)})")
    asyncio.run(ZoneAgent(plan=plan, cdir=cdir, zone=args.zone).run())


if __name__ == "__main__":
    main()
