"""Sentinel timings: derived once from the topology, and a topology whose timings do not nest
is refused with an error naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from cachefleet.errors import TopologyError
from cachefleet.topology import Sentinels, parse_topology
from sentinel.decide import Timings


def topo(**sentinels: Any) -> dict[str, Any]:
    return {"name": "t", "zones": ["a", "b", "c"], "sentinels": sentinels}


def test_defaults_derive_the_documented_timings() -> None:
    t = Timings.from_settings(parse_topology(topo()).sentinels)
    assert t == Timings(
        interval_s=0.1,
        down_after_s=1.0,
        failover_timeout_s=5.0,
        probe_timeout_s=0.5,
        hello_max_age_s=1.0,
        grace_s=2.0,
        settle_s=2.0,
        election_timeout_s=0.5,
        candidacy_delay_s=0.1,
        takeover_resend_s=0.5,
    )


@pytest.mark.parametrize(
    ("settings", "field", "words"),
    [
        pytest.param(
            {"probe_interval_ms": 1000, "down_after_ms": 3000, "failover_timeout_ms": 5500},
            "sentinels.failover_timeout_ms",
            "no room for an election",
            id="election-longer-than-failover-timeout",
        ),
        pytest.param(
            {"probe_interval_ms": 400, "down_after_ms": 1200, "failover_timeout_ms": 1500},
            "sentinels.failover_timeout_ms",
            "no room for an election",
            id="delay-plus-election",
        ),
        pytest.param(
            {"probe_interval_ms": 10, "down_after_ms": 100, "failover_timeout_ms": 999},
            "sentinels.failover_timeout_ms",
            "two TAKEOVER attempts",
            id="takeover-resend-twice",
        ),
        pytest.param(
            {"probe_interval_ms": 400, "down_after_ms": 1000},
            "sentinels.probe_interval_ms",
            "3 probes",
            id="too-few-probes",
        ),
        pytest.param(
            {"down_after_ms": 5000, "failover_timeout_ms": 5000},
            "sentinels.failover_timeout_ms",
            "greater than down_after_ms",
            id="failover-timeout-not-above-down-after",
        ),
    ],
)
def test_timings_that_do_not_nest_are_refused(
    settings: dict[str, int], field: str, words: str
) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(topo(**settings))
    assert info.value.field == field
    assert words in info.value.message


@pytest.mark.parametrize(
    "settings",
    [
        {"probe_interval_ms": 1000, "down_after_ms": 3000, "failover_timeout_ms": 6001},
        {"probe_interval_ms": 10, "down_after_ms": 100, "failover_timeout_ms": 1000},
        {"probe_interval_ms": 100, "down_after_ms": 1000, "failover_timeout_ms": 1001},
    ],
)
def test_timings_that_nest_are_accepted(settings: dict[str, int]) -> None:
    s = parse_topology(topo(**settings)).sentinels
    assert s.candidacy_delay_ms + s.election_timeout_ms < s.failover_timeout_ms
    assert 2 * s.takeover_resend_ms <= s.failover_timeout_ms
    assert s.probe_timeout_ms < s.down_after_ms


def test_probe_timeout_is_half_of_down_after_but_at_least_one_interval() -> None:
    assert Sentinels(3, 2, 100, 1000, 5000).probe_timeout_ms == 500
    assert Sentinels(3, 2, 400, 1200, 5000).probe_timeout_ms == 600
    assert Sentinels(3, 2, 10, 30, 5000).probe_timeout_ms == 15
