"""The console's actions: a test failover of a shard, a snapshot, run as tasks of the serving
process with the CLI's operations; their outcome shows in the page's action list and, as the
CLI's would, in the event log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from cachefleet import bus
from cachefleet.announce import emit_event
from cachefleet.errors import BusError
from cachefleet.plan import Plan
from cachefleet.state import ClusterDir

log = logging.getLogger("cachefleet.console")
ACTIONS_KEPT = 20


@dataclass
class Action:
    id: int
    kind: str  # failover / snapshot
    target: str  # "shard 2", "" for the whole cluster
    started: float
    state: str = "running"  # running / done / failed
    message: str = ""
    ended: float | None = None


class Actions:
    """The actions started from this process's console: at most one of a kind and target at
    a time, the last ``ACTIONS_KEPT`` remembered for the page."""

    def __init__(self) -> None:
        self.recent: deque[Action] = deque(maxlen=ACTIONS_KEPT)
        self.tasks: set[asyncio.Task[None]] = set()
        self._next = 1

    def running(self, kind: str, target: str) -> Action | None:
        return next(
            (a for a in self.recent if (a.kind, a.target, a.state) == (kind, target, "running")),
            None,
        )

    def start(self, kind: str, target: str, work: Callable[[], Awaitable[str]]) -> Action:
        action = Action(self._next, kind, target, time.time())
        self._next += 1
        self.recent.append(action)

        async def body() -> None:
            try:
                action.message = await work()
                action.state = "done"
            except asyncio.CancelledError:
                action.state, action.message = "failed", "stopped with the console"
                raise
            except Exception as exc:  # shown on the page; never the end of the server
                log.warning("console %s %s failed: %s", kind, target, exc)
                action.state, action.message = "failed", f"{exc}"
            finally:
                action.ended = time.time()

        task = asyncio.create_task(body(), name=f"console.{kind}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return action

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in reversed(self.recent)]

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _flush(outbox: bus.Outbox) -> None:
    with contextlib.suppress(BusError):  # the event log has it; the bus may be down
        await outbox.flush()


async def run_failover(cdir: ClusterDir, shard: int | None) -> str:
    """The CLI's ``failover NAME --shard N``; it publishes the layout and the
    ``graceful_failover`` event itself."""
    from cachefleet.ops.failover import graceful_failover

    return await graceful_failover(cdir.name, shard_id=shard, to=None, state_dir=str(cdir.home))


async def run_snapshot(cdir: ClusterDir, plan: Plan) -> str:
    """The CLI's ``snapshot create NAME``, with the events an automatic snapshot has."""
    from cachefleet.ops import snapshot as snapshot_ops

    outbox = bus.Outbox(plan.bus_host, plan.bus_port)
    emit_event(outbox, cdir, "snapshot_started", snapshot_kind="manual")
    await _flush(outbox)
    t0 = time.monotonic()
    try:
        m = await snapshot_ops.create(
            cdir.name, snapshot_id=None, state_dir=str(cdir.home), out=lambda _msg: None
        )
    except Exception as exc:
        emit_event(outbox, cdir, "snapshot_failed", snapshot_kind="manual", error=str(exc))
        await _flush(outbox)
        raise
    emit_event(
        outbox,
        cdir,
        "snapshot_completed",
        snapshot=m.id,
        snapshot_kind="manual",
        keys=m.keys,
        bytes=m.bytes,
        seconds=round(time.monotonic() - t0, 3),
    )
    await _flush(outbox)
    return f"snapshot {m.id}: {len(m.shards)} shard(s), {m.keys} keys, {m.bytes} bytes"
