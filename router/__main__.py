"""``python -m router --cluster NAME --state-dir D``: run the cluster's router."""

from __future__ import annotations

import argparse
import asyncio

from cachefleet.log import configure
from cachefleet.state import ClusterDir, state_home
from router.server import run_router


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m router")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()
    configure("router", cluster=args.cluster)
    plan = ClusterDir(state_home(args.state_dir), args.cluster).load_plan()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(run_router(plan))
    else:
        uvloop.run(run_router(plan))


if __name__ == "__main__":
    main()
