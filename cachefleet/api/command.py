"""The `serve` and `audit` subcommands and `up` of a CloudFormation template (registered by
cachefleet.cli). Imported by every command to build the parser, so it imports the API's
modules only when one of its commands runs."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

import yaml

from cachefleet.api.names import Account
from cachefleet.errors import CachefleetError
from cachefleet.state import ClusterDir, state_home

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
    # aiohttp and the HTTP front end load only for `serve`: every other command starts
    # without them (they are half of the CLI's start-up time)
    from cachefleet.api.server import serve

    account = Account(region=args.region, account=args.account)
    home = state_home(args.state_dir)
    return asyncio.run(serve(host=args.host, port=args.port, home=home, account=account, out=out))


def add_audit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="print the management API's audit log")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--state-dir", default=None)


def run_audit(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from cachefleet.api.access import AUDIT_FILE, follow_audit

    path = state_home(args.state_dir) / AUDIT_FILE
    return follow_audit(path, follow=args.follow, as_json=args.json, out=out)


def is_template_file(path: str) -> bool:
    """True for a CloudFormation template with ElastiCache resources (anything else, a
    topology or an unreadable file, is left to `up`'s own checks)."""
    if not path.endswith((".yaml", ".yml", ".json", ".template")):
        return False
    from cachefleet.api import cloudformation

    try:
        return cloudformation.is_template(cloudformation.load_template(path))
    except (OSError, CachefleetError):
        return False


def up_template(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """`up TEMPLATE`: each ElastiCache resource becomes a cluster, brought up as `up
    --detach` does (and recorded as the API records what it creates)."""
    return asyncio.run(_up_template(args.topology, args.state_dir, args.detach, out))


async def _up_template(
    path: str, state_dir: str | None, detach: bool, out: Callable[[str], None]
) -> int:
    from cachefleet.api import cloudformation
    from cachefleet.api.shapes import Record
    from cachefleet.api.store import record_path, save_record
    from cachefleet.ops import lifecycle

    account = Account()
    data = cloudformation.load_template(path)
    found = cloudformation.clusters(path, data, account)
    skipped = [
        f"{name} ({res.get('Type')})"
        for name, res in data["Resources"].items()
        if isinstance(res, dict)
        and res.get("Type") not in (cloudformation.REPLICATION_GROUP, cloudformation.CACHE_CLUSTER)
    ]
    if skipped:
        out(f"{path}: no effect here, skipped: {', '.join(skipped)}")
    if not detach:
        out("clusters from a template run detached; `cachefleet down NAME` stops each")
    home = state_home(state_dir)
    for c in found:
        name = c.topology["name"]
        cdir = ClusterDir(home, name)
        cdir.root.mkdir(parents=True, exist_ok=True)
        topology_path = cdir.root / "topology.yaml"
        topology_path.write_text(yaml.safe_dump(c.topology, sort_keys=False))
        if not record_path(cdir).exists():
            kind = "replicationgroup" if c.kind == "replication-group" else "cluster"
            save_record(
                cdir,
                Record(
                    description=c.description,
                    node_type=c.node_type,
                    created=time.time(),
                    cluster_enabled=c.cluster_enabled,
                    automatic_failover=c.automatic_failover,
                    engine=c.topology["engine"],
                    tags={account.arn(kind, name): c.tags} if c.tags else {},
                ),
            )
        out(f"{c.logical_id} ({c.kind}): cluster {name}")
        code = await lifecycle.up(str(topology_path), state_dir=str(home), detach=True, out=out)
        if code != 0:
            return code
    return 0
