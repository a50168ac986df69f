"""Alarms on the cluster's metrics, as the managed service's alarms behave (pure).

An alarm (``alarms:`` in the topology, :class:`AlarmSpec`) watches one metric by the service's
name (``DatabaseMemoryUsagePercentage``, ``Evictions`` ...), pooled over every series that
matches its dimensions (``node``, ``shard``, ``zone``, ``role``). Time is cut into periods of
``period_s`` aligned on the Unix epoch; a period's datapoint is the statistic (Average, Maximum,
Minimum, Sum, SampleCount) of the samples collected in it. Counters (Evictions, CacheHits ...)
count, as in the service, what happened since the previous collection, not their running total;
the service's percentages (DatabaseMemoryUsagePercentage, CPUUtilization, EngineCPUUtilization,
CacheHitRate) are in percent here too, although the Prometheus series are ratios.

Once a period has ended, the last ``evaluation_periods`` datapoints decide: ``ALARM`` when at
least ``datapoints_to_alarm`` of them breach the threshold; ``OK`` when too few could breach,
even counting the empty periods as breaching. In between (empty periods that could tip it),
and when every period is empty, ``treat_missing_data`` says: ``missing`` keeps the state
(``INSUFFICIENT_DATA`` when every period is empty), ``ignore`` keeps it always,
``breaching`` / ``notBreaching`` count an empty period as one that breaches / does not.
Every change of state is a :class:`Transition`; the operator side (``cachefleet/ops/alarms.py``)
turns it into an ``alarm_state_changed`` event and runs the actions of the new state.
"""

from __future__ import annotations

import enum
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from cachefleet.errors import TopologyError
from cachefleet.topology import Section, kind_of


class State(enum.StrEnum):
    OK = "OK"
    ALARM = "ALARM"
    INSUFFICIENT_DATA = "INSUFFICIENT_DATA"


STATISTICS = ("Average", "Maximum", "Minimum", "Sum", "SampleCount")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
COMPARISON_SIGNS = {
    "GreaterThanThreshold": ">",
    "GreaterThanOrEqualToThreshold": ">=",
    "LessThanThreshold": "<",
    "LessThanOrEqualToThreshold": "<=",
}
TREAT_MISSING = ("missing", "ignore", "breaching", "notBreaching")
DIMENSIONS = ("node", "shard", "zone", "role")
ROLES = ("primary", "replica")
#: The service's metrics whose unit is percent (the Prometheus series are ratios 0..1).
PERCENT = frozenset(
    {"DatabaseMemoryUsagePercentage", "CPUUtilization", "EngineCPUUtilization", "CacheHitRate"}
)
#: The service's metrics an alarm can watch, per engine kind (the names metrics.py exports).
ENGINE_METRICS = frozenset(
    {
        "CPUUtilization",
        "EngineCPUUtilization",
        "FreeableMemory",
        "BytesUsedForCache",
        "DatabaseMemoryUsagePercentage",
        "CurrConnections",
        "NewConnections",
        "CacheHits",
        "CacheMisses",
        "CacheHitRate",
        "Evictions",
        "Reclaimed",
        "CurrItems",
        "ReplicationLag",
        "ReplicationBytes",
        "IsPrimary",
        "NetworkBytesIn",
        "NetworkBytesOut",
        "GetTypeCmds",
        "SetTypeCmds",
        "KeyBasedCmds",
        "GetTypeCmdsLatency",
        "SetTypeCmdsLatency",
    }
)
MEMCACHED_METRICS = frozenset(
    {
        "CmdGet",
        "CmdSet",
        "GetHits",
        "GetMisses",
        "CurrItems",
        "Evictions",
        "BytesUsedForCacheItems",
        "CurrConnections",
    }
)
MAX_ALARMS = 100
MAX_PERIOD_S = 86400
MAX_EVALUATION_PERIODS = 100
ACTION_STATES = {"ok": State.OK, "alarm": State.ALARM, "insufficient_data": State.INSUFFICIENT_DATA}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# -- the declaration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    """What a transition into a state does besides its event: an HTTP POST of the transition
    (JSON) to a loopback URL, or a command (argv, no shell) with a timeout."""

    kind: str  # "http_post" | "command"
    url: str = ""
    argv: tuple[str, ...] = ()
    timeout_s: float = 10.0


@dataclass(frozen=True)
class AlarmSpec:
    name: str
    metric: str  # the service's metric name
    statistic: str
    period_s: int
    comparison: str
    threshold: float
    evaluation_periods: int = 1
    datapoints_to_alarm: int = 0  # 0: evaluation_periods
    dimensions: tuple[tuple[str, str], ...] = ()
    treat_missing_data: str = "missing"
    actions: tuple[tuple[State, tuple[Action, ...]], ...] = ()
    description: str = ""

    @property
    def needed(self) -> int:
        return self.datapoints_to_alarm or self.evaluation_periods

    def actions_for(self, state: State) -> tuple[Action, ...]:
        return next((acts for s, acts in self.actions if s is state), ())

    def breaches(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)

    def describe(self) -> str:
        where = ",".join(f"{k}={v}" for k, v in self.dimensions)
        return (
            f"{self.statistic}({self.metric}{'{' + where + '}' if where else ''}) "
            f"{COMPARISON_SIGNS[self.comparison]} {self.threshold:g} for {self.needed} of "
            f"{self.evaluation_periods} x {self.period_s}s"
        )


class _Fields(Section):
    """One mapping of ``alarms[i]``, read field by field, each error naming its dotted path
    (the topology's reader; an alarm's fields take their default when null, and a missing
    one names its choices)."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        if not isinstance(data, Mapping):
            raise TopologyError(source, path, f"must be a mapping, got {kind_of(data)}")
        super().__init__(source, path, data)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw(key)
        return default if value is None else value

    def choice(self, key: str, default: str | None, choices: Iterable[str]) -> str:
        value = self.get(key, default)
        options = tuple(choices)
        if value is None:
            raise self.fail(key, f"is required (one of {', '.join(options)})")
        if value not in options:
            raise self.fail(key, f"{value!r} is not one of {', '.join(options)}")
        return str(value)

    def number(self, key: str) -> float:
        value = self.get(key)
        if value is None:
            raise self.fail(key, "is required")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(key, f"must be a number, got {kind_of(value)}")
        return float(value)


def _loopback_url(f: _Fields, key: str, url: Any) -> str:
    if not isinstance(url, str):
        raise f.fail(key, f"must be an http:// URL, got {kind_of(url)}")
    parsed = urlparse(url)
    try:
        port_ok = parsed.port is None or parsed.port > 0
    except ValueError:
        port_ok = False
    if parsed.scheme != "http" or not parsed.hostname or not port_ok:
        raise f.fail(key, f"{url!r} must be an http://host[:port]/path URL")
    host = parsed.hostname
    if not (host == "localhost" or re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", host)):
        raise f.fail(key, f"{host!r} is not a loopback address (127.0.0.0/8 or localhost)")
    return url


def _action(source: str, path: str, data: Any) -> Action:
    f = _Fields(source, path, data)
    kinds = [k for k in ("http_post", "command") if k in f.data]
    if len(kinds) != 1:
        raise f.fail("", "must have exactly one of http_post (a loopback URL) or command (argv)")
    timeout = f.number("timeout_s") if "timeout_s" in f.data else 10.0
    if not 0 < timeout <= 300:
        raise f.fail("timeout_s", f"{timeout:g} is out of range (0, 300]")
    if kinds[0] == "http_post":
        url = _loopback_url(f, "http_post", f.get("http_post"))
        f.done()
        return Action("http_post", url=url, timeout_s=timeout)
    argv = f.get("command")
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
    ):
        raise f.fail("command", f"must be a non-empty list of strings (argv), got {kind_of(argv)}")
    f.done()
    return Action("command", argv=tuple(argv), timeout_s=timeout)


def _dimensions(f: _Fields, shards: int) -> tuple[tuple[str, str], ...]:
    data = f.get("dimensions", {})
    if not isinstance(data, Mapping):
        raise f.fail("dimensions", f"must be a mapping of {', '.join(DIMENSIONS)}")
    dims = _Fields(f.source, f"{f.path}.dimensions", data)
    out = []
    for key in DIMENSIONS:
        if key not in data:
            continue
        if key == "shard":
            out.append((key, str(dims.integer(key, None, 1, max(1, shards)))))
        elif key == "role":
            out.append((key, dims.choice(key, None, ROLES)))
        else:
            value = dims.get(key)
            if not isinstance(value, str) or not value:
                raise dims.fail(key, f"must be a {key} name, got {kind_of(value)}")
            out.append((key, value))
    dims.done()
    return tuple(out)


def parse_alarms(
    data: Any, *, source: str, memcached: bool, shards: int, zones: Sequence[str]
) -> tuple[AlarmSpec, ...]:
    """The topology's ``alarms:`` list; TopologyError naming the field otherwise."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise TopologyError(source, "alarms", f"must be a list of alarms, got {kind_of(data)}")
    if len(data) > MAX_ALARMS:
        raise TopologyError(source, "alarms", f"{len(data)} alarms, at most {MAX_ALARMS}")
    known = MEMCACHED_METRICS if memcached else ENGINE_METRICS
    out: list[AlarmSpec] = []
    for i, item in enumerate(data):
        f = _Fields(source, f"alarms[{i}]", item)
        name = f.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise f.fail(
                "name", f"must be 1-64 letters, digits, '.', '_' or '-', got {kind_of(name)}"
            )
        if any(a.name == name for a in out):
            raise f.fail("name", f"{name!r} is used by another alarm")
        metric = f.get("metric")
        if metric not in known:
            engine = "memcached" if memcached else "this engine"
            raise f.fail(
                "metric", f"{metric!r} is not a metric of {engine} ({', '.join(sorted(known))})"
            )
        evaluation_periods = f.integer("evaluation_periods", 1, 1, MAX_EVALUATION_PERIODS)
        to_alarm = f.integer("datapoints_to_alarm", evaluation_periods, 1, MAX_EVALUATION_PERIODS)
        if to_alarm > evaluation_periods:
            raise f.fail(
                "datapoints_to_alarm",
                f"{to_alarm} is more than evaluation_periods ({evaluation_periods})",
            )
        dims = _dimensions(f, shards)
        zone = dict(dims).get("zone")
        if zone is not None and zone not in zones:
            raise f.fail(
                "dimensions.zone", f"{zone!r} is not one of the zones ({', '.join(zones)})"
            )
        if memcached and any(k in ("shard", "role") for k, _ in dims):
            raise f.fail("dimensions", "memcached nodes have no shard or role")
        actions_data = f.get("actions", {})
        if not isinstance(actions_data, Mapping):
            raise f.fail("actions", "must be a mapping of ok, alarm, insufficient_data to lists")
        acts = _Fields(source, f"{f.path}.actions", actions_data)
        actions = []
        for key, state in ACTION_STATES.items():
            listed = acts.get(key, [])
            if not isinstance(listed, list):
                raise acts.fail(key, f"must be a list of actions, got {kind_of(listed)}")
            parsed = tuple(
                _action(source, f"{acts.path}.{key}[{j}]", a) for j, a in enumerate(listed)
            )
            if parsed:
                actions.append((state, parsed))
        acts.done()
        description = f.get("description", "")
        if not isinstance(description, str):
            raise f.fail("description", f"must be a string, got {kind_of(description)}")
        out.append(
            AlarmSpec(
                name=name,
                metric=str(metric),
                statistic=f.choice("statistic", None, STATISTICS),
                period_s=f.integer("period_s", 60, 1, MAX_PERIOD_S),
                comparison=f.choice("comparison", None, COMPARISONS),
                threshold=f.number("threshold"),
                evaluation_periods=evaluation_periods,
                datapoints_to_alarm=to_alarm,
                dimensions=dims,
                treat_missing_data=f.choice("treat_missing_data", "missing", TREAT_MISSING),
                actions=tuple(actions),
                description=description,
            )
        )
        f.done()
    return tuple(out)


# -- evaluation ----------------------------------------------------------------------------


@dataclass
class _Acc:
    """The samples of one period, reduced as they come."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def statistic(self, name: str) -> float:
        if name == "SampleCount":
            return float(self.count)
        if name == "Sum":
            return self.total
        if name == "Maximum":
            return self.high
        if name == "Minimum":
            return self.low
        return self.total / self.count


@dataclass(frozen=True)
class Point:
    """One sample as an alarm sees it: the service's metric name, the series' labels, and
    whether the value is a running counter (then the alarm sees its increase)."""

    metric: str
    labels: tuple[tuple[str, str], ...]
    value: float
    counter: bool = False


@dataclass(frozen=True)
class Transition:
    alarm: str
    old: State
    new: State
    reason: str
    at: float  # Unix time
    datapoints: tuple[float | None, ...] = ()  # oldest first; None: no data in that period

    def to_event(self) -> dict[str, Any]:
        return {
            "alarm": self.alarm,
            "old_state": self.old.value,
            "new_state": self.new.value,
            "reason": self.reason,
            "datapoints": [None if d is None else round(d, 6) for d in self.datapoints],
        }


@dataclass
class AlarmStatus:
    """An alarm's state as ``cachefleet alarms`` shows it."""

    spec: AlarmSpec
    state: State = State.INSUFFICIENT_DATA
    reason: str = "not evaluated yet"
    since: float | None = None  # Unix time of the last transition
    evaluated_at: float | None = None
    datapoints: tuple[float | None, ...] = ()
    periods: dict[int, _Acc] = field(default_factory=dict)  # period index -> samples
    evaluated_through: int | None = None  # the last period index evaluated

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "state": self.state.value,
            "reason": self.reason,
            "since": self.since,
            "evaluated_at": self.evaluated_at,
            "datapoints": [None if d is None else round(d, 6) for d in self.datapoints],
            "condition": self.spec.describe(),
        }


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class Evaluator:
    """Samples in (:meth:`feed`), transitions out (:meth:`evaluate`). Pure: time is passed in."""

    def __init__(self, specs: Iterable[AlarmSpec], restored: Mapping[str, Any] | None = None):
        self.alarms = {s.name: AlarmStatus(s) for s in specs}
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        #: when the first collection was fed: periods that ended before it were not watched,
        #: and are not judged (a restarted supervisor does not flap its restored states)
        self.first_at: float | None = None
        for name, saved in (restored or {}).items():
            status = self.alarms.get(name)
            if status is None or not isinstance(saved, Mapping):
                continue
            try:
                status.state = State(str(saved.get("state")))
            except ValueError:
                continue
            status.reason = str(saved.get("reason", status.reason))
            since = saved.get("since")
            status.since = float(since) if isinstance(since, int | float) else None

    def feed(self, points: Iterable[Point], at: float) -> None:
        """The samples of one collection taken at Unix time `at`."""
        if self.first_at is None:
            self.first_at = at
        wanted = {s.spec.metric for s in self.alarms.values()}
        seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for p in points:
            if p.metric not in wanted:
                continue
            value = p.value
            if p.counter:
                key = (p.metric, p.labels)
                seen[key] = value
                before = self.counters.get(key)
                if before is None:
                    continue  # the first reading of a counter has no increase yet
                value = value - before if value >= before else value  # a restart: from zero
            elif p.metric in PERCENT:
                value *= 100.0
            labels = dict(p.labels)
            for status in self.alarms.values():
                spec = status.spec
                if spec.metric != p.metric:
                    continue
                if any(labels.get(k) != v for k, v in spec.dimensions):
                    continue
                index = math.floor(at / spec.period_s)
                if status.evaluated_through is not None and index <= status.evaluated_through:
                    continue  # a late sample of a period already judged
                status.periods.setdefault(index, _Acc()).add(value)
        self.counters.update(seen)

    def evaluate(self, now: float) -> list[Transition]:
        """Judge every alarm on its periods that have ended by `now`."""
        out: list[Transition] = []
        for status in self.alarms.values():
            spec = status.spec
            last = math.floor(now / spec.period_s) - 1  # the last period that has ended
            if status.evaluated_through is not None and last <= status.evaluated_through:
                continue
            if self.first_at is None or (last + 1) * spec.period_s <= self.first_at:
                continue  # it ended before anything was watched
            first = last - spec.evaluation_periods + 1
            points: list[float | None] = []
            for i in range(first, last + 1):
                acc = status.periods.get(i)
                points.append(acc.statistic(spec.statistic) if acc and acc.count else None)
            for i in [i for i in status.periods if i <= first]:
                del status.periods[i]  # the next window starts after `first`
            status.evaluated_through = last
            status.evaluated_at = now
            status.datapoints = tuple(points)
            new, reason = judge(spec, points, status.state)
            status.reason = reason
            if new is not status.state:
                out.append(Transition(spec.name, status.state, new, reason, now, tuple(points)))
                status.state = new
                status.since = now
        return out

    def statuses(self) -> list[AlarmStatus]:
        return list(self.alarms.values())


def judge(spec: AlarmSpec, points: Sequence[float | None], current: State) -> tuple[State, str]:
    """The state that `points` (the last evaluation_periods datapoints, oldest first) call for,
    and the reason, worded as the service words it."""
    missing = sum(1 for p in points if p is None)
    known = [p for p in points if p is not None]
    breaching = sum(1 for p in known if spec.breaches(p))
    treat = spec.treat_missing_data
    if treat == "breaching":
        breaching += missing
    shown = "[" + ", ".join("-" if p is None else _fmt(p) for p in points) + "]"
    sign = COMPARISON_SIGNS[spec.comparison]
    threshold = _fmt(spec.threshold)
    if breaching >= spec.needed:
        return State.ALARM, (
            f"{breaching} of the last {len(points)} datapoints {shown} were {sign} {threshold} "
            f"({spec.needed} needed)"
        )
    if not known and treat == "missing":
        return State.INSUFFICIENT_DATA, f"no datapoints in the last {len(points)} periods"
    if not known and treat == "ignore":
        return current, f"no datapoints in the last {len(points)} periods: state kept"
    if treat in ("missing", "ignore") and breaching + missing >= spec.needed:
        # the empty periods could have breached: too few datapoints to change the state
        return current, (
            f"{breaching} of the last {len(points)} datapoints {shown} were {sign} {threshold} "
            f"and {missing} missing ({spec.needed} needed to alarm): state kept"
        )
    return State.OK, (
        f"{breaching} of the last {len(points)} datapoints {shown} were {sign} {threshold} "
        f"({spec.needed} needed to alarm)"
    )
