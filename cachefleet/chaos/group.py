"""The chaos workload of a cluster-mode-disabled group (scenario ``via: endpoint``).

Writers and readers are plain clients of the group's primary endpoint, as the group's users
are. Each write is ``SET`` + ``WAIT n`` + ``CLIENT INFO`` in one pipeline on one connection:
acknowledged only when `n` replicas have it, and ``CLIENT INFO``'s ``laddr`` names the node
that took it (the endpoint pins a connection to one node and closes it when that node stops
being the primary), so the split-brain check sees which node acknowledged what. Reads go
through the primary endpoint too (a replica's read may lag by design: the stale-read check
is about the primary). Every key is read back at the end, through the primary endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from cachefleet.chaos.checker import Op
from cachefleet.chaos.workload import CLIENT_ERRORS, FINAL_READ_S, Trial, WorkloadRun, _close

#: Keys per MGET of the final read.
READ_BATCH = 500


def laddr(reply: Any) -> str | None:
    """The node's own address (``laddr=host:port``) from a ``CLIENT INFO`` reply."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    for field in text.split():
        if field.startswith("laddr="):
            return field[len("laddr=") :] or None
    return None


class GroupWorkloadRun(WorkloadRun):
    """WorkloadRun for a group: every client goes through the primary endpoint."""

    def _client(self) -> Any:
        timeout = self.spec.op_timeout_ms / 1000
        return aredis.Redis(
            host=self.plan.router_host, port=self.plan.router_port, socket_timeout=timeout,
            socket_connect_timeout=timeout, single_connection_client=True,
            username=self.user, password=self.password, **self.tls,
        )  # fmt: skip

    async def _writer(
        self,
        index: int,
        keys: Sequence[str],
        trial: Trial,
        stop: asyncio.Event,
        counter: Iterator[int],
    ) -> None:
        w = self.spec
        client = self._client()
        deadline = (w.op_timeout_ms + w.wait_timeout_ms) / 1000
        try:
            for key in itertools.cycle(keys):
                if stop.is_set():
                    return
                value = next(counter)
                start = trial.now()
                node: str | None = None
                try:
                    pipe = client.pipeline(transaction=False)
                    pipe.set(key, value)
                    if w.wait:
                        pipe.execute_command("WAIT", w.wait, w.wait_timeout_ms)
                    pipe.execute_command("CLIENT", "INFO")
                    # an explicit deadline: a socket timeout does not bound a pipeline to a
                    # paused (SIGSTOPped) node
                    replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), deadline)
                    outcome, node = _outcome(replies, w.wait)
                except CLIENT_ERRORS:
                    outcome = "unknown"
                    await _close(client)
                    client = self._client()  # a connection of its own again, maybe elsewhere
                trial.history.append(
                    Op("w", key, value, start, trial.now(), outcome, node, worker=index)
                )
                if outcome != "ok":
                    await asyncio.sleep(0.01)
        finally:
            await _close(client)

    async def final_read(self) -> dict[str, int | None]:
        """Every key's value through the primary endpoint (retried for FINAL_READ_S)."""
        out: dict[str, int | None] = {}
        deadline = time.monotonic() + FINAL_READ_S
        client = self._client()
        try:
            for i in range(0, len(self.keys), READ_BATCH):
                batch = self.keys[i : i + READ_BATCH]
                while True:
                    try:
                        values = await asyncio.wait_for(client.mget(batch), 5.0)
                        break
                    except CLIENT_ERRORS:
                        if time.monotonic() > deadline:
                            raise
                        await _close(client)
                        client = self._client()
                        await asyncio.sleep(0.2)
                for key, raw in zip(batch, values, strict=True):
                    out[key] = int(raw) if raw is not None else None
        finally:
            with contextlib.suppress(*CLIENT_ERRORS):
                await _close(client)
        return out


def _outcome(replies: Sequence[Any], wait: int) -> tuple[str, str | None]:
    """(outcome, node) of a write pipeline's replies: SET, [WAIT,] CLIENT INFO."""
    node = laddr(replies[-1]) if not isinstance(replies[-1], Exception) else None
    if isinstance(replies[0], ResponseError):
        return "error", node
    if isinstance(replies[0], Exception):
        return "unknown", node
    if wait and not (isinstance(replies[1], int) and replies[1] >= wait):
        return "unknown", node  # applied on the primary, not confirmed replicated
    return "ok", node
