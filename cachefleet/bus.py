"""The control bus: MQTT topics under ``cachefleet/<cluster>/``, JSON payloads with a "v"."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import aiomqtt

from cachefleet.buscreds import bus_login, bus_tls_context
from cachefleet.errors import BusError
from cachefleet.tls import client_context

#: The MQTT library's own log lines (a broker that closes the connection while it stops
#: printed "failed to receive on socket: Connection reset by peer" under `up`'s Ctrl-C) go
#: nowhere: what matters reaches the caller as an MqttError, which BusLink logs with context.
_MQTT_LOG = logging.getLogger("cachefleet.bus.mqtt")
_MQTT_LOG.addHandler(logging.NullHandler())
_MQTT_LOG.propagate = False

SCHEMA_VERSION = 1


def topic(cluster: str, *parts: str) -> str:
    return "/".join(("cachefleet", cluster, *parts))


def encode(payload: dict[str, Any]) -> bytes:
    body = {"v": SCHEMA_VERSION, "ts": time.time(), **payload}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(raw: Any) -> dict[str, Any] | None:
    """A payload as a dict, or None when it is not one of ours (e.g. the "offline" will)."""
    if isinstance(raw, bytes | bytearray):
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to be ours
            return None
        return data if isinstance(data, dict) else None
    return None


def client(
    host: str,
    port: int,
    name: str,
    *,
    will: tuple[str, bytes] | None = None,
    login: tuple[str, str] | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client with a unique identifier (name + random suffix) and optional last-will.

    Its login and TLS are the cluster's: the embedded broker admits each role with its own
    credential (over TLS in a TLS cluster); an external one, the ``bus.username`` and
    ``bus.tls`` that `up` saved. `login`/`tls_context` override them (`up`'s first check)."""
    will_msg = aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None
    login = login or bus_login(host, port)
    tls = tls_context or bus_tls_context(host, port) or client_context(host, port)
    return aiomqtt.Client(
        host,
        port,
        username=login[0] if login else None,
        password=login[1] if login else None,
        tls_context=tls,
        identifier=f"{name}-{uuid.uuid4().hex[:8]}",
        will=will_msg,
        keepalive=5,
        timeout=5,
        logger=_MQTT_LOG,
    )


_REFUSED_LOGIN = (4, 5, 134, 135)  # MQTT 3.1.1 and 5 CONNACK codes: bad login / not authorized


async def check(
    host: str,
    port: int,
    *,
    login: tuple[str, str] | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> None:
    """Connect once and leave; a BusError that says what the broker refused (the login, the
    TLS handshake) and which topology field to look at."""
    url = f"mqtt://{host}:{port}"
    try:
        async with client(host, port, "check", login=login, tls_context=tls_context):
            return
    except aiomqtt.MqttCodeError as exc:
        if _code(exc.rc) in _REFUSED_LOGIN:
            raise BusError(
                f"the broker at {url} refused the login ({exc}): check bus.username and "
                "the password in bus.password_file"
            ) from exc
        raise BusError(f"bus at {url} refused the connection: {exc}") from exc
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        text = str(exc)
        if isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text:
            raise BusError(
                f"TLS to the broker at {url} failed ({text}): check bus.tls (the broker's "
                "certificate must be signed by bus.tls.ca_file and carry the address of bus.url)"
            ) from exc
        raise BusError(f"bus at {url} unreachable: {text}") from exc


def _code(rc: Any) -> int | None:
    try:
        return int(rc)
    except (TypeError, ValueError):
        value = getattr(rc, "value", None)
        return value if isinstance(value, int) else None


async def read_retained(
    host: str, port: int, topic_filter: str, *, timeout: float = 2.0
) -> dict[str, bytes]:
    """Every retained message under `topic_filter` the broker sends within `timeout`.

    Returns once no new message has arrived for a short quiet period (retained messages
    come in a burst right after SUBSCRIBE).
    """
    out: dict[str, bytes] = {}
    try:
        async with client(host, port, "reader") as c:
            await c.subscribe(topic_filter, qos=1)
            deadline = time.monotonic() + timeout
            quiet = 0.25
            it = c.messages.__aiter__()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = await asyncio.wait_for(it.__anext__(), min(left, quiet))
                except TimeoutError:
                    if out:
                        break
                    continue
                if isinstance(msg.payload, bytes | bytearray):
                    out[str(msg.topic)] = bytes(msg.payload)
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        raise BusError(f"bus at {host}:{port} unreachable: {exc}") from exc
    return out


class Publisher(Protocol):
    """Anything that queues a message for the bus without blocking the caller."""

    def publish(self, topic_name: str, payload: bytes, *, retain: bool = False) -> None: ...


class Outbox:
    """Messages of one operation, sent over one short-lived connection by :meth:`flush`."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.messages: list[tuple[str, bytes, bool]] = []

    def publish(self, topic_name: str, payload: bytes, *, retain: bool = False) -> None:
        self.messages.append((topic_name, payload, retain))

    async def flush(self) -> None:
        """Send what was queued, in order; raises BusError when the bus is unreachable."""
        messages, self.messages = self.messages, []
        if not messages:
            return
        try:
            async with client(self.host, self.port, "publisher") as c:
                for name, payload, retain in messages:
                    await c.publish(name, payload, qos=1, retain=retain)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise BusError(f"bus at {self.host}:{self.port} unreachable: {exc}") from exc


class BusLink:
    """One long-lived MQTT session of a process: a last-will, subscriptions, an outbox that
    never blocks the caller, and reconnection with capped, jittered back-off.

    ``on_connect`` runs after every (re)connect, so retained state can be re-published;
    ``on_message(topic, payload)`` is called for every message received; an exception it
    raises is logged and counted in ``handler_errors`` and the session goes on.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        name: str,
        will: tuple[str, bytes] | None = None,
        subscriptions: tuple[str, ...] = (),
        on_message: Callable[[str, bytes], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        log: Any = None,
    ) -> None:
        self.host, self.port, self.name = host, port, name
        self.will = will
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connect = on_connect
        self.log = log
        self.outbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue(maxsize=10000)
        self.connected = asyncio.Event()
        #: exceptions raised by ``on_message``, per topic (logged, never fatal)
        self.handler_errors: Counter[str] = Counter()

    def publish(self, topic_name: str, payload: bytes, *, retain: bool = False) -> None:
        try:
            self.outbox.put_nowait((topic_name, payload, retain))
        except asyncio.QueueFull:
            if self.log is not None:
                self.log.warning("bus_outbox_full", dropped=topic_name)

    async def run(self, stop: asyncio.Event, final: list[tuple[str, bytes]] | None = None) -> None:
        """Until `stop`: stay connected, deliver messages both ways. On stop, flush the outbox
        and publish `final` (retained), e.g. "offline" states."""
        backoff = 0.2
        while not stop.is_set():
            try:
                async with client(self.host, self.port, self.name, will=self.will) as c:
                    backoff = 0.2
                    for sub in self.subscriptions:
                        await c.subscribe(sub, qos=1)
                    self.connected.set()
                    if self.on_connect is not None:
                        self.on_connect()
                    await self._pump(c, stop)
                    while not self.outbox.empty():
                        name, payload, retain = self.outbox.get_nowait()
                        await c.publish(name, payload, qos=1, retain=retain)
                    for name, payload in final or []:
                        await c.publish(name, payload, qos=1, retain=True)
                    return
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if self.log is not None:
                    self.log.warning(
                        "bus_disconnected", error=str(exc), retry_in_s=round(backoff, 2)
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0) * random.uniform(0.8, 1.2)

    def _deliver(self, topic_name: str, payload: bytes) -> None:
        """Hand one message to ``on_message``; what it raises is logged and counted per topic,
        never allowed to end the session (a retained bad message would crash-loop the
        process otherwise)."""
        assert self.on_message is not None
        try:
            self.on_message(topic_name, payload)
        except Exception as exc:
            self.handler_errors[topic_name] += 1
            if self.log is not None:
                self.log.error(
                    "bus_handler_failed",
                    topic=topic_name,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                    count=self.handler_errors[topic_name],
                )

    async def _pump(self, c: aiomqtt.Client, stop: asyncio.Event) -> None:
        async def reader() -> None:
            async for msg in c.messages:
                if self.on_message is not None and isinstance(msg.payload, bytes | bytearray):
                    self._deliver(str(msg.topic), bytes(msg.payload))

        read_task = asyncio.ensure_future(reader())
        stop_task = asyncio.ensure_future(stop.wait())
        try:
            while True:
                get_task = asyncio.ensure_future(self.outbox.get())
                done, _ = await asyncio.wait(
                    {get_task, stop_task, read_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if get_task in done:
                    name, payload, retain = get_task.result()
                    await c.publish(name, payload, qos=1, retain=retain)
                    continue
                get_task.cancel()
                if read_task in done:
                    read_task.result()  # re-raise the MqttError that ended the reader
                    raise aiomqtt.MqttError("message stream ended")
                return
        finally:
            read_task.cancel()
            stop_task.cancel()
