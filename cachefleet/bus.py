"""The control bus: MQTT topics under ``cachefleet/<cluster>/``, JSON payloads with a "v"."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aiomqtt

from cachefleet.errors import BusError

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
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    return None


def client(
    host: str,
    port: int,
    name: str,
    *,
    will: tuple[str, bytes] | None = None,
) -> aiomqtt.Client:
    """An aiomqtt client with a unique identifier (name + random suffix) and optional last-will."""
    will_msg = aiomqtt.Will(will[0], will[1], qos=1, retain=True) if will else None
    return aiomqtt.Client(
        host,
        port,
        identifier=f"{name}-{uuid.uuid4().hex[:8]}",
        will=will_msg,
        keepalive=5,
        timeout=5,
    )


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
    except aiomqtt.MqttError as exc:
        raise BusError(f"bus at {host}:{port} unreachable: {exc}") from exc
    return out


async def publish_once(
    host: str, port: int, topic_name: str, payload: bytes, *, retain: bool = False
) -> None:
    try:
        async with client(host, port, "publisher") as c:
            await c.publish(topic_name, payload, qos=1, retain=retain)
    except aiomqtt.MqttError as exc:
        raise BusError(f"bus at {host}:{port} unreachable: {exc}") from exc
