"""Alarms: the topology section (errors name the field) and the evaluation (pure, no sockets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cachefleet import alarms, metrics
from cachefleet.alarms import (
    AlarmSpec,
    Evaluator,
    Point,
    State,
    Transition,
    judge,
    parse_alarms,
)
from cachefleet.errors import TopologyError
from cachefleet.topology import parse_topology


def topo(**extra: Any) -> dict[str, Any]:
    return {"name": "c", "zones": ["az-a", "az-b", "az-c"], **extra}


def alarm(**fields: Any) -> dict[str, Any]:
    base = {
        "name": "mem",
        "metric": "DatabaseMemoryUsagePercentage",
        "statistic": "Maximum",
        "period_s": 10,
        "comparison": "GreaterThanOrEqualToThreshold",
        "threshold": 80,
    }
    return {**base, **fields}


# -- the section ---------------------------------------------------------------------------


def test_full_alarm_parses() -> None:
    t = parse_topology(
        topo(
            alarms=[
                alarm(
                    evaluation_periods=3,
                    datapoints_to_alarm=2,
                    dimensions={"shard": 2, "role": "primary", "zone": "az-b"},
                    treat_missing_data="breaching",
                    actions={
                        "alarm": [
                            {"http_post": "http://127.0.0.1:9000/hook"},
                            {"command": ["/bin/true", "x"], "timeout_s": 3},
                        ],
                        "ok": [{"http_post": "http://localhost/ok"}],
                    },
                )
            ]
        )
    )
    (a,) = t.alarms
    assert a.evaluation_periods == 3 and a.needed == 2
    assert a.dimensions == (("shard", "2"), ("zone", "az-b"), ("role", "primary"))
    assert a.treat_missing_data == "breaching"
    assert [x.kind for x in a.actions_for(State.ALARM)] == ["http_post", "command"]
    assert a.actions_for(State.ALARM)[1].argv == ("/bin/true", "x")
    assert a.actions_for(State.ALARM)[1].timeout_s == 3
    assert a.actions_for(State.INSUFFICIENT_DATA) == ()
    assert "Maximum(DatabaseMemoryUsagePercentage" in a.describe()


def test_defaults() -> None:
    (a,) = parse_topology(topo(alarms=[alarm()])).alarms
    assert (a.evaluation_periods, a.needed, a.treat_missing_data) == (1, 1, "missing")
    assert parse_topology(topo()).alarms == ()


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        (alarm(metric="Memory"), "alarms[0].metric", "is not a metric"),
        (alarm(statistic="p99"), "alarms[0].statistic", "is not one of"),
        (alarm(comparison="Above"), "alarms[0].comparison", "is not one of"),
        (alarm(threshold="high"), "alarms[0].threshold", "must be a number"),
        (alarm(threshold=None), "alarms[0].threshold", "is required"),
        (alarm(period_s=0), "alarms[0].period_s", "out of range"),
        (alarm(evaluation_periods=2, datapoints_to_alarm=3), "alarms[0].datapoints_to_alarm", ""),
        (alarm(treat_missing_data="zero"), "alarms[0].treat_missing_data", "is not one of"),
        (alarm(dimensions={"shard": 9}), "alarms[0].dimensions.shard", "out of range"),
        (alarm(dimensions={"role": "leader"}), "alarms[0].dimensions.role", "is not one of"),
        (alarm(dimensions={"host": "x"}), "alarms[0].dimensions.host", "unknown field"),
        (alarm(dimensions={"zone": "az-z"}), "alarms[0].dimensions.zone", "is not one of"),
        (alarm(name="a b"), "alarms[0].name", "must be"),
        (alarm(colour="red"), "alarms[0].colour", "unknown field"),
        (
            alarm(actions={"alarm": [{"http_post": "http://10.0.0.1/x"}]}),
            "alarms[0].actions.alarm[0].http_post",
            "not a loopback address",
        ),
        (
            alarm(actions={"alarm": [{"http_post": "https://127.0.0.1/x"}]}),
            "alarms[0].actions.alarm[0].http_post",
            "http://",
        ),
        (
            alarm(actions={"ok": [{"command": "rm -rf /"}]}),
            "alarms[0].actions.ok[0].command",
            "list of strings",
        ),
        (
            alarm(actions={"ok": [{"command": ["x"], "timeout_s": 0}]}),
            "alarms[0].actions.ok[0].timeout_s",
            "out of range",
        ),
        (
            alarm(actions={"ok": [{"command": ["x"], "http_post": "http://127.0.0.1/"}]}),
            "alarms[0].actions.ok[0]",
            "exactly one",
        ),
        (alarm(actions={"later": []}), "alarms[0].actions.later", "unknown field"),
        ("mem", "alarms[0]", "must be a mapping"),
    ],
)
def test_bad_alarm_names_the_field(item: Any, field: str, reason: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology(topo(alarms=[item]))
    assert err.value.field == field
    assert reason in err.value.message


def test_duplicate_names_and_not_a_list() -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology(topo(alarms=[alarm(), alarm()]))
    assert err.value.field == "alarms[1].name"
    with pytest.raises(TopologyError) as err:
        parse_topology(topo(alarms={"mem": alarm()}))
    assert err.value.field == "alarms"


def test_memcached_metrics_are_its_own() -> None:
    base = {"name": "m", "engine": "memcached", "zones": ["az-a"], "nodes": 2}
    ok = parse_topology({**base, "alarms": [alarm(metric="GetMisses", statistic="Sum")]})
    assert ok.alarms[0].metric == "GetMisses"
    with pytest.raises(TopologyError) as err:
        parse_topology({**base, "alarms": [alarm()]})
    assert err.value.field == "alarms[0].metric"
    with pytest.raises(TopologyError) as err:
        parse_topology({**base, "alarms": [alarm(metric="Evictions", dimensions={"shard": 1})]})
    assert err.value.field == "alarms[0].dimensions"


def test_alarm_metric_names_are_the_exported_ones() -> None:
    """Every metric an alarm may name is a series metrics.py exports, by the service's name."""
    engine = {m.service for m in metrics.ALL if m.service and m.labels == metrics.NODE_LABELS}
    memcached = {m.service for m in metrics.ALL if m.service and m.labels == metrics.MC_LABELS}
    assert engine == alarms.ENGINE_METRICS
    assert memcached == alarms.MEMCACHED_METRICS


# -- evaluation ------------------------------------------------------------------------------


def spec(**fields: Any) -> AlarmSpec:
    (a,) = parse_alarms(
        [alarm(**fields)], source="t", memcached=False, shards=3, zones=("az-a", "az-b")
    )
    return a


def mem(value: float, node: str = "n1", shard: str = "1") -> Point:
    """A DatabaseMemoryUsagePercentage sample as the collector gives it: a ratio."""
    labels = (("cluster", "c"), ("shard", shard), ("node", node), ("zone", "az-a"))
    return Point("DatabaseMemoryUsagePercentage", (*labels, ("role", "primary")), value)


def run(ev: Evaluator, feeds: list[tuple[float, list[Point]]], until: float) -> list[Transition]:
    out: list[Transition] = []
    for at, points in feeds:
        out += ev.evaluate(at)
        ev.feed(points, at)
    return out + ev.evaluate(until)


def test_fires_then_clears_with_percent_units() -> None:
    ev = Evaluator([spec(period_s=10, threshold=80)])
    t = run(ev, [(1000.0, [mem(0.5)]), (1005.0, [mem(0.6)])], until=1010.0)
    assert [(x.old, x.new) for x in t] == [(State.INSUFFICIENT_DATA, State.OK)]
    assert t[0].datapoints == (60.0,)  # Maximum, in percent
    t = run(ev, [(1012.0, [mem(0.79)]), (1015.0, [mem(0.81)])], until=1020.0)
    assert [(x.old, x.new) for x in t] == [(State.OK, State.ALARM)]
    assert "81 " in t[0].reason or "[81]" in t[0].reason
    status = ev.alarms["mem"]
    assert status.state is State.ALARM and status.since == 1020.0
    t = run(ev, [(1021.0, [mem(0.2)])], until=1030.0)
    assert [x.new for x in t] == [State.OK]


@pytest.mark.parametrize(
    ("statistic", "expected"),
    [("Average", 50.0), ("Maximum", 90.0), ("Minimum", 10.0), ("Sum", 150.0), ("SampleCount", 3.0)],
)
def test_statistics_pool_every_matching_series(statistic: str, expected: float) -> None:
    ev = Evaluator([spec(statistic=statistic, threshold=1e9)])
    ev.feed([mem(0.1, "n1"), mem(0.9, "n2")], 1001.0)
    ev.feed([mem(0.5, "n3")], 1002.0)
    ev.evaluate(1010.0)
    assert ev.alarms["mem"].datapoints == (pytest.approx(expected),)


def test_dimensions_filter_series() -> None:
    ev = Evaluator([spec(dimensions={"shard": 2})])
    ev.feed([mem(0.99, "n1", shard="1"), mem(0.10, "n2", shard="2")], 1001.0)
    assert [x.new for x in ev.evaluate(1010.0)] == [State.OK]
    assert ev.alarms["mem"].datapoints == (10.0,)


def test_m_of_n_and_missing_data() -> None:
    ev = Evaluator([spec(evaluation_periods=3, datapoints_to_alarm=2)])
    ev.feed([mem(0.9)], 1001.0)
    assert ev.evaluate(1010.0) == []  # [-, -, 90]: the gaps could make it 2: kept
    ev.feed([mem(0.1)], 1011.0)
    assert ev.evaluate(1020.0) == []  # [-, 90, 10]: likewise
    assert ev.alarms["mem"].state is State.INSUFFICIENT_DATA
    assert "state kept" in ev.alarms["mem"].reason
    ev.feed([mem(0.95)], 1021.0)
    (t,) = ev.evaluate(1030.0)  # 2 of [90, 10, 95]
    assert t.new is State.ALARM and t.datapoints == (90.0, 10.0, 95.0)
    assert ev.evaluate(1040.0) == []  # [10, 95, -]: could still be 2: ALARM kept
    ev.feed([mem(0.2)], 1041.0)
    assert ev.evaluate(1050.0) == []  # [95, -, 20]: 1 breaching, 2 with the gap: kept
    ev.feed([mem(0.2)], 1051.0)
    (t,) = ev.evaluate(1060.0)  # [-, 20, 20]: at most 1 of 2 needed
    assert (t.old, t.new) == (State.ALARM, State.OK)


@pytest.mark.parametrize(
    ("treat", "current", "expected"),
    [
        ("missing", State.ALARM, State.INSUFFICIENT_DATA),
        ("ignore", State.ALARM, State.ALARM),
        ("ignore", State.OK, State.OK),
        ("breaching", State.OK, State.ALARM),
        ("notBreaching", State.ALARM, State.OK),
    ],
)
def test_treat_missing_data_when_all_missing(treat: str, current: State, expected: State) -> None:
    s = spec(evaluation_periods=2, treat_missing_data=treat)
    assert judge(s, [None, None], current)[0] is expected


def test_treat_missing_breaching_counts_gaps() -> None:
    s = spec(evaluation_periods=3, datapoints_to_alarm=2, treat_missing_data="breaching")
    assert judge(s, [10.0, None, 90.0], State.OK)[0] is State.ALARM
    assert judge(s, [10.0, None, 20.0], State.OK)[0] is State.OK
    s = spec(evaluation_periods=3, datapoints_to_alarm=2)  # missing: gaps are not breaching
    assert judge(s, [10.0, None, 90.0], State.OK)[0] is State.OK


@pytest.mark.parametrize(
    ("comparison", "value", "breach"),
    [
        ("GreaterThanThreshold", 80.0, False),
        ("GreaterThanThreshold", 80.5, True),
        ("GreaterThanOrEqualToThreshold", 80.0, True),
        ("LessThanThreshold", 80.0, False),
        ("LessThanThreshold", 79.0, True),
        ("LessThanOrEqualToThreshold", 80.0, True),
    ],
)
def test_comparisons(comparison: str, value: float, breach: bool) -> None:
    assert spec(comparison=comparison).breaches(value) is breach


def test_counters_count_their_increase_and_survive_a_restart() -> None:
    s = spec(metric="Evictions", statistic="Sum", threshold=1, period_s=10)
    ev = Evaluator([s])
    lab = (("cluster", "c"), ("node", "n1"))
    ev.feed([Point("Evictions", lab, 100.0, counter=True)], 1001.0)  # first reading: no increase
    ev.feed([Point("Evictions", lab, 100.0, counter=True)], 1003.0)
    assert [x.new for x in ev.evaluate(1010.0)] == [State.OK]
    assert ev.alarms["mem"].datapoints == (0.0,)
    ev.feed([Point("Evictions", lab, 130.0, counter=True)], 1011.0)
    ev.feed([Point("Evictions", lab, 5.0, counter=True)], 1013.0)  # node restarted: 5 since
    (t,) = ev.evaluate(1020.0)
    assert t.new is State.ALARM and ev.alarms["mem"].datapoints == (35.0,)


def test_late_samples_and_periods_already_judged() -> None:
    ev = Evaluator([spec()])
    assert ev.evaluate(1010.0) == []  # nothing fed yet: nothing judged
    ev.feed([], 1011.0)
    assert ev.evaluate(1020.0) == []  # [1010, 1020) judged: empty, INSUFFICIENT_DATA
    assert ev.alarms["mem"].evaluated_at == 1020.0
    ev.feed([mem(0.99)], 1015.0)  # a late sample of a period already judged is dropped
    assert ev.evaluate(1029.0) == []
    assert ev.alarms["mem"].state is State.INSUFFICIENT_DATA
    assert ev.evaluate(1029.5) == []  # the same period is judged once


def test_other_metrics_are_ignored_and_state_restored() -> None:
    ev = Evaluator([spec()], restored={"mem": {"state": "ALARM", "reason": "r", "since": 5.0}})
    assert ev.alarms["mem"].state is State.ALARM and ev.alarms["mem"].since == 5.0
    ev.feed([Point("CurrConnections", (("node", "n1"),), 99.0)], 1001.0)
    (t,) = ev.evaluate(1010.0)
    assert (t.old, t.new) == (State.ALARM, State.INSUFFICIENT_DATA)
    bad = Evaluator([spec()], restored={"mem": {"state": "ON"}, "gone": {"state": "OK"}})
    assert bad.alarms["mem"].state is State.INSUFFICIENT_DATA


def test_a_restored_state_is_not_judged_on_periods_nobody_watched() -> None:
    ev = Evaluator([spec(evaluation_periods=2)], restored={"mem": {"state": "ALARM"}})
    assert ev.evaluate(1010.0) == []  # nothing fed yet
    ev.feed([mem(0.95)], 1025.0)  # the first pass after a restart
    assert ev.evaluate(1025.0) == []  # [1010, 1020) ended before it
    assert ev.evaluate(1030.0) == []  # [-, 95]: could be 2 of 2: still ALARM
    assert ev.alarms["mem"].state is State.ALARM
    ev.feed([mem(0.1)], 1035.0)
    ev.feed([mem(0.1)], 1045.0)
    (t,) = ev.evaluate(1050.0)  # [10, 10]
    assert (t.old, t.new) == (State.ALARM, State.OK)


def test_transition_event_fields() -> None:
    t = Transition("mem", State.OK, State.ALARM, "why", 1.0, (None, 81.23456789))
    assert t.to_event() == {
        "alarm": "mem",
        "old_state": "OK",
        "new_state": "ALARM",
        "reason": "why",
        "datapoints": [None, 81.234568],
    }


def test_apply_restarts_the_supervisor_when_alarms_change() -> None:
    from cachefleet.reshape import restarts

    old = parse_topology(topo())
    new = parse_topology(topo(alarms=[alarm()]))
    assert restarts(old, new) == ["supervisor"]
    assert restarts(new, new) == []


def test_a_command_action_gets_the_transition_and_is_killed_at_its_timeout(
    tmp_path: Path,
) -> None:
    import asyncio
    import sys
    import time as time_module

    from cachefleet.alarms import Action
    from cachefleet.ops.alarms import AlarmRunner
    from cachefleet.state import ClusterDir

    class Quiet:
        def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
            pass

    class Log:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def info(self, event: str, **kw: Any) -> None:
            self.seen.append(event)

        warning = info

    cdir = ClusterDir(tmp_path, "c")
    cdir.root.mkdir()
    log = Log()
    runner = AlarmRunner(specs=[spec()], cdir=cdir, publisher=Quiet(), log=log)
    t = Transition("mem", State.OK, State.ALARM, "why", 1.0, (90.0,))
    out = tmp_path / "got.json"
    copy = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())"
    asyncio.run(runner._command(Action("command", argv=(sys.executable, "-c", copy, str(out))), t))
    got = json.loads(out.read_text())
    assert (got["cluster"], got["alarm"], got["new_state"]) == ("c", "mem", "ALARM")
    started = time_module.monotonic()
    sleeper = Action("command", argv=("/bin/sh", "-c", "sleep 30 & sleep 30"), timeout_s=0.3)
    asyncio.run(runner._command(sleeper, t))
    assert time_module.monotonic() - started < 10
    assert log.seen == ["alarm_action", "alarm_action_timeout"]
