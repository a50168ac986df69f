"""The embedded bus: an amqtt MQTT broker on loopback, one per cluster.

Run as ``python -m cachefleet.broker --host 127.0.0.1 --port P --state-dir D --cluster NAME``;
it stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from amqtt.broker import Broker

from cachefleet.log import configure
from cachefleet.state import ClusterDir, state_home
from cachefleet.tls import TlsFiles, tls_files


def broker_config(
    host: str,
    port: int,
    root: Path | None = None,
    tls: TlsFiles | None = None,
    *,
    memcached: bool = False,
) -> dict[str, object]:
    """A cluster's broker (`root`: its directory) admits only the cluster's role credentials
    and lets each role publish only its own topics; without `root`, anyone (tests). With
    `tls` (a TLS cluster) it speaks MQTT over TLS only."""
    plugins: dict[str, object] = {
        "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
    }
    if root is not None:
        plugins = {
            "cachefleet.busauth.RoleAuthPlugin": {"root": str(root)},
            "cachefleet.busauth.RoleTopicPlugin": {
                "cluster": root.name,
                "agents_publish_layout": memcached,
            },
        }
    listener: dict[str, object] = {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}
    if tls is not None:
        listener.update(ssl=True, certfile=str(tls.cert), keyfile=str(tls.key), cafile=str(tls.ca))
    return {"listeners": {"default": listener}, "plugins": plugins}


async def serve(
    host: str,
    port: int,
    root: Path | None = None,
    tls: TlsFiles | None = None,
    *,
    memcached: bool = False,
) -> None:
    broker = Broker(broker_config(host, port, root, tls, memcached=memcached))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m cachefleet.broker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cluster", default="")
    parser.add_argument("--state-dir", default="")
    args = parser.parse_args()
    log = configure("broker", cluster=args.cluster)
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    log.info("broker_started", address=f"{args.host}:{args.port}")
    cdir = ClusterDir(state_home(args.state_dir), args.cluster) if args.cluster else None
    plan = cdir.load_plan() if cdir is not None and cdir.exists() else None
    tls = tls_files(cdir.root) if cdir and plan and plan.topology.security.tls else None
    memcached = plan is not None and plan.topology.is_memcached
    asyncio.run(serve(args.host, args.port, cdir.root if cdir else None, tls, memcached=memcached))
    log.info("broker_stopped")


if __name__ == "__main__":
    main()
