"""The `serve` subcommand: its arguments and its entry point (registered by cachefleet.cli)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from cachefleet.api.access import AUDIT_FILE, follow_audit
from cachefleet.api.names import Account
from cachefleet.api.server import serve
from cachefleet.state import state_home

DEFAULT_PORT = 9470


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="the management plane: the ElastiCache Query API for every cluster"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--region", default=Account.region, help="the region ARNs name")
    p.add_argument("--account", default=Account.account, help="the account id ARNs name")
    p.add_argument("--state-dir", default=None)


def run(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    account = Account(region=args.region, account=args.account)
    home = state_home(args.state_dir)
    return asyncio.run(serve(host=args.host, port=args.port, home=home, account=account, out=out))


def add_audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="print the management API's audit log")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--state-dir", default=None)


def run_audit(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    path = state_home(args.state_dir) / AUDIT_FILE
    return follow_audit(path, follow=args.follow, as_json=args.json, out=out)
