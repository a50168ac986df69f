"""The one way any process tells the cluster something: events and layouts.

An event is appended to the cluster's event log and published on ``events``; a layout is
published retained on ``layout`` and written to ``layout.json``. Daemons pass their long-lived
:class:`~cachefleet.bus.BusLink`, operations a :class:`~cachefleet.bus.Outbox` they flush once.
"""

from __future__ import annotations

from typing import Any

from cachefleet import bus
from cachefleet.events import append_event, make_event
from cachefleet.layout import Layout
from cachefleet.state import ClusterDir


def emit_event(pub: bus.Publisher, cdir: ClusterDir, kind: str, **fields: Any) -> dict[str, Any]:
    event = make_event(kind, cdir.name, **fields)
    append_event(cdir.events_path, event)
    pub.publish(bus.topic(cdir.name, "events"), bus.encode(event))
    return event


def publish_layout(pub: bus.Publisher, cdir: ClusterDir, layout: Layout) -> None:
    pub.publish(bus.topic(cdir.name, "layout"), bus.encode(layout.to_dict()), retain=True)
    cdir.save_layout(layout)
