"""A router worker's request-duration histogram (one per process: a worker is a process).

Counted by the connection code of either proxy (:mod:`router.client`, RESP;
:mod:`router.memcache.conns`, memcached) when a reply is queued for its client, and published
with the worker's state every second. Counting costs one bisect on a fixed list per reply
queue entry; nothing is allocated per request.
"""

from __future__ import annotations

#: Upper bounds (seconds) of the buckets: from reading the packet that carried a request to
#: queueing its reply for the client.
LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Latency:
    """A count per bound plus one for +Inf (not cumulative) and the sum of durations."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.total = 0.0

    def state(self) -> dict[str, object]:
        return {
            "le": list(LATENCY_BOUNDS),
            "counts": list(self.counts),
            "sum": round(self.total, 6),
        }


#: This worker's histogram.
LATENCY = Latency()
