"""``python -m sentinel --cluster NAME --id s1 --state-dir D``: run one sentinel."""

from __future__ import annotations

import argparse
import asyncio

from cachefleet.buscreds import set_bus_role
from cachefleet.log import configure
from cachefleet.state import ClusterDir, state_home
from sentinel.process import Sentinel


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sentinel")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--id", required=True, help="s1, s2, ...")
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()
    configure("sentinel", cluster=args.cluster, sentinel=args.id)
    set_bus_role("sentinel")
    plan = ClusterDir(state_home(args.state_dir), args.cluster).load_plan()
    ids = [s.id for s in plan.sentinels]
    if args.id not in ids:
        parser.error(f"sentinel {args.id!r} is not configured ({', '.join(ids)})")
    cdir = ClusterDir(state_home(args.state_dir), args.cluster)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(Sentinel(plan=plan, cdir=cdir, sid=args.id).run())
    else:
        uvloop.run(Sentinel(plan=plan, cdir=cdir, sid=args.id).run())


if __name__ == "__main__":
    main()
