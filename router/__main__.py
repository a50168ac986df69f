"""``python -m router --cluster NAME --state-dir D [--worker K]``: one router worker.

With ``router.workers`` > 1 the cluster runs that many worker processes (``0`` means one per
core), each started on its own by the cluster's supervisor with its own ``--worker`` number
and pid file, sharing the port with SO_REUSEPORT; the kernel spreads connections over them, and
a worker that dies is restarted alone while the others keep serving.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from cachefleet.buscreds import set_bus_role
from cachefleet.log import configure
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir, state_home
from router.memcache.server import run_memcached_router
from router.server import run_router
from router.standalone import run_standalone_router


def _run(plan: Plan, worker: int, reuse_port: bool, zone: str | None, plan_path: Path) -> None:
    if plan.topology.is_memcached:  # the configuration endpoint and proxy speak memcached
        coro = run_memcached_router(plan, worker=worker, reuse_port=reuse_port, plan_path=plan_path)
    elif plan.topology.standalone:  # cluster mode disabled: primary and reader endpoints
        coro = run_standalone_router(
            plan, worker=worker, reuse_port=reuse_port, zone=zone, plan_path=plan_path
        )
    else:
        coro = run_router(
            plan, worker=worker, reuse_port=reuse_port, zone=zone, plan_path=plan_path
        )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m router")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--state-dir", default=None)
    parser.add_argument("--zone", default=None, help="the router's zone (default: router.zone)")
    parser.add_argument("--worker", type=int, default=0, help="worker number (0-based)")
    parser.add_argument("--workers", type=int, default=1, help="how many workers share the port")
    args = parser.parse_args()
    cdir = ClusterDir(state_home(args.state_dir), args.cluster)
    plan = cdir.load_plan()
    configure("router", cluster=args.cluster, worker=args.worker)
    set_bus_role("router")
    _run(plan, args.worker, reuse_port=args.workers > 1, zone=args.zone, plan_path=cdir.plan_path)


if __name__ == "__main__":
    main()
