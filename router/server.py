"""The router process: request dispatch and start-up.

Reads bottom-up: :mod:`router.framing` and :mod:`router.replies` (pure RESP),
:mod:`router.commands` (the engine's command table: where each request goes),
:mod:`router.backend` and :mod:`router.client` (connections), :mod:`router.core` (routes, pools,
sending, redirects, failover waiting, ordering), then the features: :mod:`router.endpoint`
(configuration endpoint and local commands), :mod:`router.multikey`,
:mod:`router.transactions`, :mod:`router.pubsub`. This module maps each request to one of
them and starts the listener, the bus link and the status publisher.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import os
import resource
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachefleet import bus
from cachefleet.credentials import Credentials
from cachefleet.errors import StateError
from cachefleet.layout import Layout, LayoutError
from cachefleet.plan import Plan, PlanFile
from cachefleet.resp import Err, encode, encode_command
from cachefleet.slots import key_slot
from cachefleet.state import ClusterDir
from cachefleet.tls import server_context, tls_files
from router import endpoint, multikey, policy, pubsub, replies, transactions
from router.auth import NO_AUTH_COMMANDS, NOAUTH, Authenticator, watch_certificate
from router.backend import BackendLost
from router.client import Call, ClientConn
from router.commands import LOCAL as LOCAL_COMMANDS
from router.commands import Action, plan
from router.core import Core, err
from router.framing import Request
from router.latency import LATENCY


class Router(Core):
    def __init__(
        self, *, plan: Plan, worker: int = 0, zone: str | None = None, plan_path: Path | None = None
    ) -> None:
        settings = plan.topology.router
        super().__init__(
            cluster=plan.name,
            read_from=settings.read_from,
            zone=zone or settings.zone,
            failover_wait_s=settings.failover_wait_ms / 1000,
            worker=worker,
            max_clients=settings.max_clients,
        )
        self.plan = plan
        self.allowed_sources = plan.topology.security.allowed_sources
        self.plan_file = PlanFile(plan_path, plan) if plan_path is not None else None
        self.worker = worker
        self.id = f"router-{worker}"
        self.layouts_refused = 0

    def on_bus_message(self, topic: str, payload: bytes) -> None:
        data = bus.decode(payload)
        if data is None or not topic.endswith("/layout"):
            return
        try:
            # only this cluster's nodes at their planned addresses: a forged layout cannot
            # send any client's traffic elsewhere
            layout = self._validate(data)
        except LayoutError as exc:
            self.layouts_refused += 1
            self.log.warning("layout_refused", error=str(exc), refused=self.layouts_refused)
            return
        self.apply_layout(layout)

    def _validate(self, data: Any) -> Layout:
        try:
            return Layout.from_dict(data, self.plan)
        except LayoutError:
            # `apply` writes the plan before it publishes a layout with new nodes
            if self.plan_file is None or not self.plan_file.refresh():
                raise
            self.plan = self.plan_file.plan
            return Layout.from_dict(data, self.plan)

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch_many(self, client: ClientConn, requests: list[Request]) -> None:
        auth = self.auth
        if client.user is None and auth is not None and auth.required:
            # one by one until the client has authenticated, the rest on the fast path
            for n, (args, raw) in enumerate(requests):
                if client.closing:
                    return
                if client.user is not None:
                    super().dispatch_many(client, requests[n:])
                    return
                self.dispatch(client, args, raw)
            return
        super().dispatch_many(client, requests)

    def dispatch(self, client: ClientConn, args: list[bytes], raw: bytes | None) -> None:
        self.ops += 1
        auth = self.auth
        if (
            client.user is None
            and auth is not None
            and auth.required
            and args[0].upper() not in NO_AUTH_COMMANDS
        ):
            client.reply_now(encode(NOAUTH))
            return
        if client.pubsub is not None and pubsub.subscribed(self, client, args, raw):
            return
        if client.tx is not None:
            transactions.inside(self, client, args, raw)
            return
        fast = self.fast.get(args[0])
        if fast is not None and len(args) > fast[0]:  # GET, SET, HSET ...: the hot path
            call = Call(client, args, raw, key_slot(args[fast[0]]), fast[1], fast[2])
            client.add(call)
            self.send(call)
            return
        refused = policy.refusal(args)
        if refused is not None:
            client.reply_now(refused)
            return
        if self.commands is None:
            if args[0].upper() in LOCAL_COMMANDS:
                self.local(client, args)
                return
            client.held = collections.deque([(args, raw)])
            self.serial(client, lambda: self._wait_commands(client))
            return
        p = plan(self.commands, args)
        match p.action:
            case Action.SINGLE:
                self.send(client.add(Call(client, args, raw, p.slot, p.readonly, p.command)))
            case Action.LOCAL:
                self.local(client, args)
            case Action.CROSSSLOT:
                client.reply_now(transactions.CROSSSLOT)
            case Action.SPLIT:
                assert p.command is not None
                multikey.split_by_slot(self, client, args, p.command)
            case Action.FANOUT:
                assert p.command is not None
                multikey.fanout(self, client, args, raw, p.command)
            case Action.SCAN:
                multikey.scan(self, client, args)
            case Action.BLOCKING:
                call = client.add(Call(client, args, raw, p.slot, False, p.command))
                call.dedicated = True
                self.serial(client, lambda: self._blocking(call))
            case Action.GETKEYS:
                call = client.add(Call(client, args, raw, None, p.readonly, p.command))
                self.serial(client, lambda: self._getkeys(call))
            case Action.TRANSACTION:
                transactions.outside(self, client, args, raw)
            case Action.PUBSUB:
                pubsub.enter(self, client, args, raw)

    async def _wait_commands(self, client: ClientConn) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.commands_ready.wait(), self.failover_wait_s + 5)
        if self.commands is None and client.held:
            text = err("CLUSTERDOWN router: the engine's command table is not loaded")
            for _ in range(len(client.held)):
                client.reply_now(text)
            client.held.clear()

    async def _blocking(self, call: Call) -> None:
        """A blocking command, on a connection of the client's own, after its earlier ones."""
        await call.client.wait_head(call)
        await self.run_call(call)

    async def _getkeys(self, call: Call) -> None:
        """A command whose keys only the engine can find (COMMAND GETKEYS), then routed."""
        await call.client.wait_head(call)
        addr = self.any_primary()
        keys: list[bytes] = []
        if addr is not None:
            try:
                conn = self.pooled(addr, False, False, call.client.id)
                request = encode_command([b"COMMAND", b"GETKEYS", *call.args])
                value = replies.parse((await conn.request(request))[0])
                if isinstance(value, list):
                    keys = [bytes(k) for k in value]
            except BackendLost:
                pass
        slots = {key_slot(k) for k in keys}
        if len(slots) > 1:
            call.finish(transactions.CROSSSLOT)
            return
        call.slot = slots.pop() if slots else None
        await self.run_call(call)

    def local(self, client: ClientConn, args: list[bytes]) -> None:
        try:
            context = endpoint.Context(
                self.layout, self.plan.topology.engine, self.clients, self.auth
            )
            value = endpoint.answer(client, args, context)
        except Exception as exc:  # one bad request never takes the router down
            self.log.exception("request_failed", client=client.id)
            value = Err(f"ERR router: {exc}")
        if value is endpoint.FORWARD:
            self.send(client.add(Call(client, args, None, endpoint.forward_slot(args))))
            return
        client.reply_now(encode(value, client.resp3))
        name = args[0].upper()
        if name == b"QUIT":
            client.close_after_replies()
        elif name == b"RESET" and self.auth is not None and self.auth.required:
            # logged out: the rest of a pipeline goes one by one, through the AUTH check
            self.serial(client, _nothing)

    # -- status --------------------------------------------------------------------------------

    def state(self, ops_per_sec: float) -> dict[str, Any]:
        backends = sum(1 for conns in self.pools.values() for c in conns if c is not None)
        return {
            "id": self.id,
            "address": f"{self.plan.router_host}:{self.plan.router_port}",
            "pid": os.getpid(),
            "worker": self.worker,
            "connections": len(self.clients),
            "backend_connections": backends,
            "ops_per_sec": round(ops_per_sec, 1),
            "ops_total": self.ops,
            "client_errors": self.errors,
            "latency": LATENCY.state(),
            "epoch": self.layout.epoch if self.layout else 0,
            "read_from": self.read_from,
            "commands_loaded": self.commands is not None,
        }

    async def publish_state(self, link: bus.BusLink, stop: asyncio.Event) -> None:
        topic = bus.topic(self.plan.name, "routers", self.id, "state")
        last_ops, last_t = self.ops, time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            now = time.monotonic()
            rate = (self.ops - last_ops) / max(now - last_t, 1e-6)
            last_ops, last_t = self.ops, now
            link.publish(topic, bus.encode(self.state(rate)), retain=True)


async def _nothing() -> None:
    pass


def router_auth(root: Path, worker: int) -> Authenticator:
    """The credentials of the cluster whose directory is `root`: the secrets store, and the
    control plane's own user (absent in a directory made by hand: then not accepted)."""
    try:
        admin: Credentials | None = ClusterDir(root.parent, root.name).admin()
    except StateError:
        admin = None
    process = "router" if worker == 0 else f"router.{worker}"
    return Authenticator(root=root, process=process, admin=admin)


def raise_nofile_limit() -> None:
    """As many file descriptors as allowed: each client and backend connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def state_link(
    plan: Plan, worker: int, router_id: str, on_message: Callable[[str, bytes], None], log: Any
) -> tuple[bus.BusLink, str]:
    """A worker's bus link: layouts in, its state out (``offline`` as its will)."""
    state_topic = bus.topic(plan.name, "routers", router_id, "state")
    link = bus.BusLink(
        host=plan.bus_host,
        port=plan.bus_port,
        name=f"router-{worker}",
        will=(state_topic, b"offline"),
        subscriptions=(bus.topic(plan.name, "layout"),),
        on_message=on_message,
        log=log,
    )
    return link, state_topic


def listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def run_router(
    plan: Plan,
    *,
    worker: int = 0,
    reuse_port: bool = False,
    zone: str | None = None,
    plan_path: Path | None = None,
) -> None:
    raise_nofile_limit()
    # The hot path allocates short-lived containers (batches, tuples, lists) by the million:
    # with the default thresholds the cyclic collector runs every 700 of them and its older
    # generations walk every long-lived object. What exists at start is frozen out of its
    # walks, and collections are made rarer (reference counting frees almost everything).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    router = Router(plan=plan, worker=worker, zone=zone, plan_path=plan_path)
    if plan_path is not None:  # the cluster's directory: its secrets store
        router.auth = router_auth(plan_path.parent, worker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = listen_socket(plan.router_host, plan.router_port, reuse_port=reuse_port)
    max_query = plan.topology.router.query_buffer_limit_mb * 1024 * 1024
    # a TLS cluster's router terminates TLS for its clients (and speaks TLS to the nodes)
    tls = (
        server_context(tls_files(plan_path.parent))
        if plan.topology.security.tls and plan_path is not None
        else None
    )
    server = await loop.create_server(
        lambda: ClientConn(router, max_query=max_query), sock=sock, ssl=tls
    )
    link, state_topic = state_link(plan, worker, router.id, router.on_bus_message, router.log)
    router.log.info(
        "router_started",
        address=f"{plan.router_host}:{plan.router_port}",
        read_from=router.read_from,
        zone=router.zone,
        worker=worker,
    )
    async with server, asyncio.TaskGroup() as tg:
        tg.create_task(link.run(stop, final=[(state_topic, b"offline")]), name="router.bus")
        tg.create_task(router.load_commands(stop), name="router.commands")
        tg.create_task(router.publish_state(link, stop), name="router.state")
        tg.create_task(router.watch_requests(stop), name="router.request_deadlines")
        if router.auth is not None:
            tg.create_task(router.auth.watch(stop, router.log), name="router.credentials")
        if tls is not None and plan_path is not None:
            process = "router" if worker == 0 else f"router.{worker}"
            ack = plan_path.parent / "security" / f"{process}.cert"
            files = tls_files(plan_path.parent)
            tg.create_task(
                watch_certificate(tls, files, ack, stop, router.log), name="router.certificate"
            )
        await stop.wait()
        server.close()
        for task in list(router.tasks):
            task.cancel()
        for conns in router.pools.values():
            for conn in conns:
                if conn is not None:
                    conn.close()
        for client in list(router.clients):
            if client.transport is not None:
                client.transport.close()
    router.log.info("router_stopped", last_epoch=router.layout.epoch if router.layout else None)
