"""The `cachefleet` command line: parse, call one operation, print, exit with its code.

Each command imports its operation when it runs: the CLI starts in a fraction of the time it
would take to load every operation's dependencies (chaos, metrics, HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable

from cachefleet import __version__
from cachefleet.api import command as api_command
from cachefleet.errors import CachefleetError, ScenarioError, TopologyError
from cachefleet.events import EventFilter, follow_events
from cachefleet.snapshots import Manifest
from cachefleet.topology import load_topology


def _out(msg: str) -> None:
    """Print a line. Printing must never stop an operation: when stdout is gone (`make run |
    tee log` and Ctrl-C closed the pipe), further output goes nowhere and the work goes on."""
    try:
        print(msg, flush=True)
    except (BrokenPipeError, OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _progress(msg: str) -> None:
    """A live line on stderr (chaos progress); like _out, a closed stream stops nothing."""
    with contextlib.suppress(OSError):
        print(msg, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachefleet", description="Self-hosted managed in-memory cache clusters."
    )
    parser.add_argument("--version", action="version", version=f"cachefleet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="create (or restart) a cluster from a topology file")
    p.add_argument("topology", help="topology YAML file")
    p.add_argument("--detach", action="store_true", help="return once the cluster is available")
    p.add_argument("--state-dir", default=None, help="state directory (default ~/.cachefleet)")

    p = sub.add_parser(
        "apply",
        help="change a running cluster to match its topology file, online "
        "(shards, replicas, node type, parameters, engine); like `up` when it is not running",
    )
    p.add_argument("topology", help="topology YAML file (the desired state)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser(
        "status",
        help="show a cluster's shards, nodes and endpoints; "
        "exit 0 when available, 1 when degraded/failing over, 3 when stopped",
    )
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("down", help="stop every process of a cluster")
    p.add_argument("name")
    p.add_argument("--purge", action="store_true", help="also delete the cluster's state dir")
    p.add_argument(
        "--final-snapshot", default=None, metavar="ID", help="snapshot the cluster first"
    )
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("failover", help="graceful failover of one shard (plain CLUSTER FAILOVER)")
    p.add_argument("name")
    p.add_argument(
        "--shard", type=int, default=None, help="shard id (1-based; none for cluster mode disabled)"
    )
    p.add_argument("--to", default=None, help="replica to promote (node name or engine id)")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("auth", help="change the AUTH token online (rotate, then set)")
    p.add_argument("name")
    p.add_argument("--token-file", required=True, help="file holding the new token")
    p.add_argument(
        "--strategy",
        choices=("rotate", "set"),
        required=True,
        help="rotate: accept the new token beside the old one; set: only the new one",
    )
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("certs", help="TLS certificates of a cluster")
    certs = p.add_subparsers(dest="certs_command", required=True)
    q = certs.add_parser("rotate", help="renew the server certificate without downtime")
    q.add_argument("name")
    q.add_argument("--state-dir", default=None)

    p = sub.add_parser("snapshot", help="create, list or delete snapshots (backups)")
    snap = p.add_subparsers(dest="snapshot_command", required=True)
    q = snap.add_parser("create", help="snapshot a running cluster, shard by shard")
    q.add_argument("name")
    q.add_argument("--id", default=None, help="snapshot id (default NAME-<UTC time>)")
    q.add_argument("--state-dir", default=None)
    q = snap.add_parser("list", help="the snapshots in the state dir")
    q.add_argument("--cluster", default=None, help="only this cluster's")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--state-dir", default=None)
    q = snap.add_parser("delete", help="delete a snapshot")
    q.add_argument("id")
    q.add_argument("--state-dir", default=None)
    q = snap.add_parser("export", help="copy a snapshot to DIR/ID (manifest + RDB files)")
    q.add_argument("id")
    q.add_argument("directory")
    q.add_argument("--state-dir", default=None)
    q = snap.add_parser("import", help="make an exported snapshot known again")
    q.add_argument("path", help="the exported snapshot's directory")
    q.add_argument("--state-dir", default=None)

    p = sub.add_parser("restore", help="a new cluster seeded from a snapshot (any shard count)")
    p.add_argument("snapshot", help="snapshot id")
    p.add_argument("topology", help="topology YAML of the new cluster")
    p.add_argument("--key-file", default=None, help="key of an encrypted snapshot")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("events", help="print a cluster's events")
    p.add_argument("name")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--since", default=None, help="only events since an ISO time or an age (10m)")
    p.add_argument(
        "--type", action="append", default=[], dest="types", help="only this type (repeatable)"
    )
    p.add_argument("--tail", type=int, default=None, help="only the last N logged events")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("logs", help="print a cluster's process logs, merged by time")
    p.add_argument("name")
    p.add_argument(
        "processes",
        nargs="*",
        metavar="PROCESS",
        help="only these processes: a name (sentinel.s1), a kind (sentinel, node) or a node",
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("top", help="a live table of a cluster's nodes (q quits)")
    p.add_argument("name")
    p.add_argument(
        "--iterations", "-n", type=int, default=None, help="stop after N refreshes (default: q)"
    )
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("alarms", help="a cluster's alarms with their state")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("cost", help="what the cluster costs at the managed service's prices")
    p.add_argument("name")
    p.add_argument("--since", default=None, help="from this time (ISO, or 10m/2h/30d ago)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state-dir", default=None)

    p = sub.add_parser("chaos", help="run a chaos scenario and write its report")
    p.add_argument("scenario", help="scenario YAML (see scenarios/)")
    p.add_argument("--trials", type=int, default=None, help="override the scenario's trials")
    p.add_argument(
        "--allow-skip",
        action="store_true",
        help="exit 0 when the scenario cannot run here (e.g. partitions without root)",
    )
    p.add_argument("--state-dir", default=None)

    api_command.add_parser(sub)
    api_command.add_audit_parser(sub)

    p = sub.add_parser("validate", help="check a topology file; print a one-line summary")
    p.add_argument("topology")
    return parser


def _up(args: argparse.Namespace) -> int:
    from cachefleet.ops import lifecycle

    if api_command.is_template_file(args.topology):  # a CloudFormation template
        return api_command.up_template(args, _out)
    return asyncio.run(
        lifecycle.up(args.topology, state_dir=args.state_dir, detach=args.detach, out=_out)
    )


def _apply(args: argparse.Namespace) -> int:
    from cachefleet.ops import apply

    return asyncio.run(
        apply.apply(
            args.topology,
            state_dir=args.state_dir,
            dry_run=args.dry_run,
            assume_yes=args.yes,
            as_json=args.json,
            out=_out,
            confirm=apply.confirm_on_terminal,
        )
    )


def _status(args: argparse.Namespace) -> int:
    from cachefleet.ops.status import exit_code, format_status, status

    st = asyncio.run(status(args.name, state_dir=args.state_dir))
    _out(json.dumps(st, indent=2) if args.json else format_status(st))
    return exit_code(st["state"])


def _down(args: argparse.Namespace) -> int:
    from cachefleet.ops import lifecycle

    if args.final_snapshot:
        from cachefleet.ops import snapshot as snapshot_ops

        # like DeleteReplicationGroup's FinalSnapshotIdentifier
        asyncio.run(
            snapshot_ops.create(
                args.name, snapshot_id=args.final_snapshot, state_dir=args.state_dir, out=_out
            )
        )
    return asyncio.run(
        lifecycle.down(args.name, state_dir=args.state_dir, purge=args.purge, out=_out)
    )


def _failover(args: argparse.Namespace) -> int:
    from cachefleet.ops.failover import graceful_failover

    done = graceful_failover(args.name, shard_id=args.shard, to=args.to, state_dir=args.state_dir)
    _out(asyncio.run(done))
    return 0


def _auth(args: argparse.Namespace) -> int:
    from cachefleet.ops.auth import change_token

    secrets = asyncio.run(
        change_token(
            args.name,
            token_file=args.token_file,
            strategy=args.strategy,
            state_dir=args.state_dir,
            out=_out,
        )
    )
    accepted = "the old and the new token" if len(secrets.tokens) > 1 else "only the new token"
    _out(f"cluster {args.name}: every node and router accepts {accepted}")
    return 0


def _certs(args: argparse.Namespace) -> int:
    from cachefleet.ops.certs import rotate_certificates

    serial = asyncio.run(rotate_certificates(args.name, state_dir=args.state_dir, out=_out))
    _out(f"cluster {args.name}: every node and router serves certificate {serial:x}")
    return 0


def _events(args: argparse.Namespace) -> int:
    selection = EventFilter.build(
        since=args.since, types=args.types, tail=args.tail, now=time.time()
    )
    from cachefleet.event_archive import archived
    from cachefleet.events import format_event
    from cachefleet.state import ClusterDir, state_home

    home = state_home(args.state_dir)
    kept = archived(home, args.name)
    if kept and not ClusterDir(home, args.name).root.exists():  # purged: its kept events
        for event in selection.backlog(kept):
            _out(json.dumps(event) if args.json else format_event(event))
        return 0
    return follow_events(
        args.name,
        state_dir=args.state_dir,
        follow=args.follow,
        as_json=args.json,
        out=_out,
        selection=selection,
    )


def _logs(args: argparse.Namespace) -> int:
    from cachefleet.ops.logs import show_logs

    return show_logs(
        args.name,
        state_dir=args.state_dir,
        processes=args.processes,
        follow=args.follow,
        as_json=args.json,
        out=_out,
    )


def _top(args: argparse.Namespace) -> int:
    from cachefleet.ops.top import top

    return top(args.name, state_dir=args.state_dir, out=_out, iterations=args.iterations)


def _alarms(args: argparse.Namespace) -> int:
    from cachefleet.ops.alarms import list_alarms

    return list_alarms(args.name, state_dir=args.state_dir, as_json=args.json, out=_out)


def _cost(args: argparse.Namespace) -> int:
    from cachefleet.ops.cost import show_cost

    return show_cost(
        args.name, state_dir=args.state_dir, since=args.since, as_json=args.json, out=_out
    )


def _chaos(args: argparse.Namespace) -> int:
    from cachefleet.chaos.runner import run_scenario

    code, _ = asyncio.run(
        run_scenario(
            args.scenario,
            state_dir=args.state_dir,
            trials=args.trials,
            out=_out,
            progress=_progress,
            allow_skip=args.allow_skip,
        )
    )
    return code


def _snapshot(args: argparse.Namespace) -> int:
    from cachefleet.ops import snapshot as snapshot_ops

    match args.snapshot_command:
        case "create":
            asyncio.run(
                snapshot_ops.create(
                    args.name, snapshot_id=args.id, state_dir=args.state_dir, out=_out
                )
            )
        case "list":
            found = snapshot_ops.list_snapshots(args.state_dir, args.cluster)
            if args.json:
                _out(json.dumps([_snapshot_row(m) for m in found], indent=1))
            else:
                head = f"{'id':<32} {'cluster':<20} {'created':<26} shards"
                _out(f"{head} {'keys':>10} {'bytes':>12} kind")
                for m in found:
                    r = _snapshot_row(m)
                    _out(
                        f"{r['id']:<32} {r['cluster']:<20} {r['created']:<26} {r['shards']:>6} "
                        f"{r['keys']:>10} {r['bytes']:>12} {r['kind']}"
                    )
        case "delete":
            snapshot_ops.delete(args.id, state_dir=args.state_dir)
            _out(f"snapshot {args.id} deleted")
        case "export":
            target = snapshot_ops.export(args.id, args.directory, state_dir=args.state_dir)
            _out(f"snapshot {args.id} exported to {target}")
        case "import":
            manifest = snapshot_ops.import_(args.path, state_dir=args.state_dir)
            _out(f"snapshot {manifest.id} imported ({len(manifest.shards)} shards)")
    return 0


def _snapshot_row(m: Manifest) -> dict[str, object]:
    return {
        "id": m.id,
        "cluster": m.cluster,
        "created": m.created,
        "shards": len(m.shards),
        "keys": m.keys,
        "bytes": m.bytes,
        "kind": m.kind,
        "status": "available",
        "encrypted": m.key_id is not None,
        "engine": m.engine,
        "engine_version": m.engine_version,
    }


def _restore(args: argparse.Namespace) -> int:
    from cachefleet.ops.restore import restore

    return asyncio.run(
        restore(
            args.snapshot,
            args.topology,
            state_dir=args.state_dir,
            out=_out,
            key_file=args.key_file,
        )
    )


def _validate(args: argparse.Namespace) -> int:
    topo = load_topology(args.topology)
    shape = (
        f"{topo.shards} nodes"
        if topo.is_memcached
        else f"{topo.shards} shards x {1 + topo.replicas_per_shard} nodes"
    )
    _out(
        f"{args.topology}: ok: cluster {topo.name}, {topo.engine}, {len(topo.zones)} zones, {shape}"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _up,
    "apply": _apply,
    "status": _status,
    "down": _down,
    "failover": _failover,
    "auth": _auth,
    "certs": _certs,
    "events": _events,
    "logs": _logs,
    "top": _top,
    "alarms": _alarms,
    "cost": _cost,
    "chaos": _chaos,
    "snapshot": _snapshot,
    "restore": _restore,
    "validate": _validate,
    "serve": lambda args: api_command.run(args, _out),
    "audit": lambda args: api_command.run_audit(args, _out),
}


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "logs" and not any(x.startswith("-") for x in extra):
        args.processes += extra  # `logs NAME -f sentinel router`: names after the options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except (TopologyError, ScenarioError) as exc:
        print(f"cachefleet: error: {exc}", file=sys.stderr)
        code = 2
    except CachefleetError as exc:
        print(f"cachefleet: error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
