"""Router counters and histogram from its bus state, the newer control-plane series, and the
merge of several clusters' expositions (`serve`'s /metrics). Pure."""

from __future__ import annotations

import math
from typing import Any

import pytest
from helpers import message_json
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from cachefleet import metrics
from cachefleet.metrics import EventCounts, RouterStats, control_samples, render
from cachefleet.ops.metrics_all import merge
from cachefleet.ops.metrics_all import render as render_all


def state(**extra: Any) -> dict[str, Any]:
    return {
        "id": "r1",
        "ops_total": 12,
        "client_errors": 2,
        "latency": {"le": [0.001, 0.01], "counts": [5, 4, 3], "sum": 0.25},
        **extra,
    }


def test_router_stats_from_state() -> None:
    s = RouterStats.from_state(state())
    assert s is not None
    assert (s.requests, s.errors, s.total_s) == (12, 2, 0.25)
    assert s.buckets() == ((0.001, 5.0), (0.01, 9.0), (math.inf, 12.0))
    old = RouterStats.from_state({"ops_total": 3})  # a router without the histogram
    assert old is not None and old.counts == () and old.requests == 3


@pytest.mark.parametrize(
    "bad",
    [
        state(ops_total=-1),
        state(ops_total=True),
        state(client_errors="2"),
        state(latency=[1, 2]),
        state(latency={"le": [0.01, 0.001], "counts": [1, 1, 1], "sum": 1}),
        state(latency={"le": [0.001], "counts": [1], "sum": 1}),
        state(latency={"le": [0.001], "counts": [1, -1], "sum": 1}),
        state(latency={"le": [float("nan")], "counts": [1, 1], "sum": 1}),
        state(latency={"le": [0.001], "counts": [1, 1], "sum": -1}),
        state(latency={"le": [0.001] * 65, "counts": [0] * 66, "sum": 0}),
        "not a mapping",
    ],
)
def test_router_stats_refuse_bad_input(bad: Any) -> None:
    assert RouterStats.from_state(bad) is None


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "ops_total": message_json(),
            "client_errors": message_json(),
            "latency": message_json()
            | st.fixed_dictionaries(
                {}, optional={"le": message_json(), "counts": message_json(), "sum": message_json()}
            ),
        },
    )
    | message_json()
)
def test_router_stats_never_raise_and_render(data: Any) -> None:
    stats = RouterStats.from_state(data)
    if stats is not None and stats.counts:
        lab = (("router", "r"),)
        text = render([metrics.Sample(metrics.ROUTER_LATENCY, lab, stats.total_s, stats.buckets())])
        assert b"_bucket" in text


def families(samples: list[metrics.Sample]) -> dict[str, Any]:
    text = render(samples).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_control_samples_render_histogram_and_new_series() -> None:
    counts = EventCounts()
    counts.feed(
        [
            {"type": "modify_started"},
            {"type": "slots_migrated", "slots": 100},
            {"type": "slots_migrated", "slots": 28},
        ]
    )
    stats = RouterStats.from_state(state())
    assert stats is not None
    got = families(
        control_samples(
            cluster="c",
            config_epoch=3,
            counts=counts,
            sdown={},
            routers={"r1": (4, 10.0)},
            router_stats={"r1": stats},
            snapshot_ages={"automatic": 42.0},
        )
    )
    hist = got["cachefleet_router_request_duration_seconds"]
    assert hist.type == "histogram"
    by_le = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert by_le == {"0.001": 5.0, "0.01": 9.0, "+Inf": 12.0}
    assert [s.value for s in hist.samples if s.name.endswith("_count")] == [12.0]
    assert [s.value for s in hist.samples if s.name.endswith("_sum")] == [0.25]
    assert got["cachefleet_router_requests"].samples[0].value == 12
    assert got["cachefleet_router_errors"].samples[0].value == 2
    assert got["cachefleet_slots_migrated"].samples[0].value == 128
    assert got["cachefleet_modify_in_progress"].samples[0].value == 1
    age = got["cachefleet_snapshot_age_seconds"].samples[0]
    assert (age.labels["snapshot_kind"], age.value) == ("automatic", 42.0)
    counts.feed([{"type": "modify_completed"}])
    assert counts.modifying is False


def test_merge_of_several_clusters() -> None:
    def one(cluster: str) -> str:
        stats = RouterStats.from_state(state())
        assert stats is not None
        samples = control_samples(
            cluster=cluster,
            config_epoch=1,
            counts=EventCounts(),
            sdown={},
            routers={},
            router_stats={"r1": stats},
        )
        return render(samples).decode()

    text = render_all(merge([one("a"), one("b"), "garbage {{{"])).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert text.count("# TYPE cachefleet_router_request_duration_seconds histogram") == 1
    clusters = {s.labels["cluster"] for s in parsed["cachefleet_config_epoch"].samples}
    assert clusters == {"a", "b"}
    hist = parsed["cachefleet_router_request_duration_seconds"]
    assert len([s for s in hist.samples if s.name.endswith("_count")]) == 2
