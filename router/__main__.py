"""``python -m router --cluster NAME --state-dir D``: run the cluster's router.

With ``router.workers`` > 1 the process forks that many workers (itself included) that share
the port with SO_REUSEPORT; the kernel spreads connections over them. ``0`` means one per
core. Workers die with the parent (PR_SET_PDEATHSIG) and the parent stops them on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys

from cachefleet.log import configure
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir, state_home
from router.server import run_router

PR_SET_PDEATHSIG = 1


def _run(plan: Plan, worker: int, reuse_port: bool) -> None:
    coro = run_router(plan, worker=worker, reuse_port=reuse_port)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m router")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--state-dir", default=None)
    args = parser.parse_args()
    plan = ClusterDir(state_home(args.state_dir), args.cluster).load_plan()
    workers = plan.topology.router.workers or (os.cpu_count() or 1)
    if workers <= 1:
        configure("router", cluster=args.cluster)
        _run(plan, 0, reuse_port=False)
        return
    children: list[int] = []
    for worker in range(1, workers):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            configure("router", cluster=args.cluster, worker=worker)
            try:
                _run(plan, worker, reuse_port=True)
            finally:
                os._exit(0)
        children.append(pid)
    configure("router", cluster=args.cluster, worker=0)
    try:
        _run(plan, 0, reuse_port=True)
    finally:
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
