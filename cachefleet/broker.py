"""The embedded bus: an amqtt MQTT broker on loopback, one per cluster.

Run as ``python -m cachefleet.broker --host 127.0.0.1 --port P --state-dir D --cluster NAME``;
it stops on SIGTERM/SIGINT. Without ``--cluster`` it is a standalone broker (what a cluster's
``bus.url`` can name), with ``--username``/``--password-file`` admitting that user only and
with ``--tls-cert``/``--tls-key``/``--tls-ca`` speaking MQTT over TLS only.
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
    login: tuple[str, Path] | None = None,
) -> dict[str, object]:
    """A cluster's broker (`root`: its directory) admits only the cluster's role credentials
    and lets each role publish only its own topics; without `root`, anyone (tests), or with
    `login` (user, password file) that one user. With `tls` it speaks MQTT over TLS only."""
    plugins: dict[str, object] = {
        "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
    }
    if login is not None:  # a standalone broker with one user
        plugins = {
            "cachefleet.busauth.PasswordAuthPlugin": {
                "username": login[0],
                "password_file": str(login[1]),
            }
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
    login: tuple[str, Path] | None = None,
) -> None:
    broker = Broker(broker_config(host, port, root, tls, memcached=memcached, login=login))
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
    # without --cluster: a standalone broker, which a cluster's `bus.url` can name
    parser.add_argument("--username", default=None, help="the one user it admits")
    parser.add_argument("--password-file", default=None, help="that user's password")
    parser.add_argument("--tls-cert", default=None, help="serve MQTT over TLS only")
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--tls-ca", default=None, help="verifies client certificates")
    args = parser.parse_args()
    if (args.username is None) != (args.password_file is None):
        parser.error("--username and --password-file go together")
    if args.tls_cert is not None and (args.tls_key is None or args.tls_ca is None):
        parser.error("--tls-cert needs --tls-key and --tls-ca")
    log = configure("broker", cluster=args.cluster)
    logging.getLogger("amqtt").setLevel(logging.ERROR)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    log.info("broker_started", address=f"{args.host}:{args.port}")
    cdir = ClusterDir(state_home(args.state_dir), args.cluster) if args.cluster else None
    plan = cdir.load_plan() if cdir is not None and cdir.exists() else None
    tls = tls_files(cdir.root) if cdir and plan and plan.topology.security.tls else None
    memcached = plan is not None and plan.topology.is_memcached
    login = (args.username, Path(args.password_file)) if args.username else None
    if args.tls_cert is not None:
        tls = TlsFiles(ca=Path(args.tls_ca), cert=Path(args.tls_cert), key=Path(args.tls_key))
    root = cdir.root if cdir else None
    asyncio.run(serve(args.host, args.port, root, tls, memcached=memcached, login=login))
    log.info("broker_stopped")


if __name__ == "__main__":
    main()
