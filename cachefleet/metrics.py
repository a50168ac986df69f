"""Metrics with the managed service's names: engine readings in, Prometheus samples out.

Pure: :class:`NodeReading` is one node's ``INFO`` (and ``INFO commandstats``) as numbers,
:func:`node_samples` turns two successive readings into the service's per-node metrics (rates
and ratios over the interval between them), :func:`control_samples` does the same for the
control plane, and :func:`render` writes Prometheus text. The collection loop and the HTTP
server are operator-side (``cachefleet/ops/metrics_server.py``).

Names: ``cachefleet_`` + the snake_case of the service's metric name, ``_total`` for counters,
the base unit where the name does not already say it (``_bytes``, ``_seconds``); the service's
percentages are ratios 0..1 (``_ratio``). HELP names the service's metric.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

PREFIX = "cachefleet_"
NODE_LABELS = ("cluster", "shard", "node", "zone", "role")


class Kind(enum.Enum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricDef:
    name: str  # the full Prometheus name, with _total for counters
    kind: Kind
    service: str  # the managed service's metric name ("" for cachefleet's own)
    help: str
    labels: tuple[str, ...] = NODE_LABELS

    @property
    def help_text(self) -> str:
        return f"{self.service}: {self.help}" if self.service else self.help


def _g(name: str, service: str, text: str, labels: tuple[str, ...] = NODE_LABELS) -> MetricDef:
    return MetricDef(PREFIX + name, Kind.GAUGE, service, text, labels)


def _c(name: str, service: str, text: str, labels: tuple[str, ...] = NODE_LABELS) -> MetricDef:
    return MetricDef(PREFIX + name + "_total", Kind.COUNTER, service, text, labels)


# -- per node (Valkey / Redis) ----------------------------------------------------------------
CPU = _g("cpu_utilization_ratio", "CPUUtilization", "CPU used by the node's process, all threads")
ENGINE_CPU = _g(
    "engine_cpu_utilization_ratio", "EngineCPUUtilization", "CPU used by the engine's main thread"
)
FREEABLE = _g("freeable_memory_bytes", "FreeableMemory", "maxmemory minus used memory")
USED = _g("bytes_used_for_cache", "BytesUsedForCache", "memory used by the engine (used_memory)")
MEM_PCT = _g(
    "database_memory_usage_ratio",
    "DatabaseMemoryUsagePercentage",
    "used memory over maxmemory (percent in the service, a ratio here)",
)
CONNS = _g("curr_connections", "CurrConnections", "client connections, the control plane's too")
NEW_CONNS = _c("new_connections", "NewConnections", "connections accepted")
HITS = _c("cache_hits", "CacheHits", "successful key lookups")
MISSES = _c("cache_misses", "CacheMisses", "unsuccessful key lookups")
HIT_RATE = _g(
    "cache_hit_rate_ratio",
    "CacheHitRate",
    "hits over lookups in the last interval (since start when there were none)",
)
EVICTIONS = _c("evictions", "Evictions", "keys evicted by maxmemory")
RECLAIMED = _c("reclaimed", "Reclaimed", "keys removed because they expired")
ITEMS = _g("curr_items", "CurrItems", "keys held")
LAG = _g(
    "replication_lag_seconds",
    "ReplicationLag",
    "on a replica: seconds since it last heard from its primary",
)
REPL_BYTES = _c(
    "replication_bytes", "ReplicationBytes", "on a primary: bytes of its replication stream"
)
IS_PRIMARY = _g("is_primary", "IsPrimary", "1 on the shard's primary, 0 on a replica")
NET_IN = _c("network_bytes_in", "NetworkBytesIn", "bytes read from the network")
NET_OUT = _c("network_bytes_out", "NetworkBytesOut", "bytes written to the network")
GET_CMDS = _c("get_type_cmds", "GetTypeCmds", "read-only commands")
SET_CMDS = _c("set_type_cmds", "SetTypeCmds", "write commands")
KEY_CMDS = _c("key_based_cmds", "KeyBasedCmds", "commands that take a key")
GET_LATENCY = _g(
    "get_type_cmds_latency_seconds",
    "GetTypeCmdsLatency",
    "mean time per read-only command in the engine over the last interval",
)
SET_LATENCY = _g(
    "set_type_cmds_latency_seconds",
    "SetTypeCmdsLatency",
    "mean time per write command in the engine over the last interval",
)
OPS = _g("ops_per_second", "", "commands per second (the engine's instantaneous_ops_per_sec)")
UP = _g("node_up", "", "1 when the node answered the last collection")

# -- per node (memcached) -------------------------------------------------------------------
MC_LABELS = ("cluster", "node", "zone")
MC_GET = _c("cmd_get", "CmdGet", "get commands", MC_LABELS)
MC_SET = _c("cmd_set", "CmdSet", "set commands", MC_LABELS)
MC_HITS = _c("get_hits", "GetHits", "get hits", MC_LABELS)
MC_MISSES = _c("get_misses", "GetMisses", "get misses", MC_LABELS)
MC_ITEMS = _g("curr_items", "CurrItems", "items held", MC_LABELS)
MC_EVICTIONS = _c("evictions", "Evictions", "items evicted", MC_LABELS)
MC_BYTES = _g("bytes_used_for_cache_items", "BytesUsedForCacheItems", "bytes of items", MC_LABELS)
MC_CONNS = _g("curr_connections", "CurrConnections", "open connections", MC_LABELS)
MC_UP = _g("node_up", "", "1 when the node answered the last collection", MC_LABELS)

# -- control plane ---------------------------------------------------------------------------
FAILOVERS = _c(
    "failovers", "", "failovers by outcome (completed, aborted, graceful)", ("cluster", "outcome")
)
CONFIG_EPOCH = _g("config_epoch", "", "config epoch of the published layout", ("cluster",))
RESTARTS = _c(
    "process_restarts",
    "",
    "restarts of control processes by the supervisor since the cluster started",
    ("cluster", "process"),
)
SDOWN = _g(
    "sdown",
    "",
    "1 while the sentinel holds the node subjectively down",
    ("cluster", "sentinel", "node"),
)
ROUTER_CONNS = _g(
    "router_connections", "", "client connections of a router worker", ("cluster", "router")
)
ROUTER_OPS = _g(
    "router_ops_per_second", "", "requests per second of a router worker", ("cluster", "router")
)
ROUTER_REQUESTS = _c(
    "router_requests", "", "requests a router worker has handled", ("cluster", "router")
)
ROUTER_ERRORS = _c(
    "router_errors",
    "",
    "client errors of a router worker (protocol errors, limits, refused logins)",
    ("cluster", "router"),
)
ROUTER_LATENCY = MetricDef(
    PREFIX + "router_request_duration_seconds",
    Kind.HISTOGRAM,
    "",
    "time from reading a request to queueing its reply, in a router worker",
    ("cluster", "router"),
)
SNAPSHOT_AGE = _g(
    "snapshot_age_seconds", "", "age of the cluster's newest snapshot", ("cluster", "snapshot_kind")
)
SLOTS_MIGRATED = _c("slots_migrated", "", "hash slots moved between shards by apply", ("cluster",))
MODIFYING = _g(
    "modify_in_progress", "", "1 while apply is changing the running cluster", ("cluster",)
)
COST = _c(
    "cost_usd",
    "",
    "what the cluster has cost since it was created, at the price table's prices, by component",
    ("cluster", "component"),
)
ALARM_STATE = _g(
    "alarm_state",
    "",
    "1 for the state each alarm is in (OK, ALARM, INSUFFICIENT_DATA), 0 for the others",
    ("cluster", "alarm", "state"),
)

#: Every metric, for the README's table and the tests.
ALL: tuple[MetricDef, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, MetricDef))


# -- readings ------------------------------------------------------------------------------


def _num(info: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = info.get(key, default)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


@dataclass(frozen=True)
class CommandClasses:
    """Which commands count as GetType, SetType and KeyBased, from the engine's own
    ``COMMAND`` table (flags ``readonly`` / ``write``, a first key position)."""

    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    keyed: frozenset[str] = frozenset()

    @classmethod
    def from_command_table(cls, table: Mapping[str, Mapping[str, Any]]) -> CommandClasses:
        reads, writes, keyed = set(), set(), set()
        for name, doc in table.items():
            flags = {str(f).lower() for f in doc.get("flags", ())}
            cmd = str(name).lower()
            if "readonly" in flags:
                reads.add(cmd)
            if "write" in flags:
                writes.add(cmd)
            if _num(doc, "first_key_pos") > 0:
                keyed.add(cmd)
        return cls(frozenset(reads), frozenset(writes), frozenset(keyed))


@dataclass(frozen=True)
class CmdTotals:
    calls: float = 0.0
    usec: float = 0.0


@dataclass(frozen=True)
class NodeReading:
    """One node's state at monotonic time `at`, as numbers (counters are cumulative)."""

    at: float
    primary: bool
    cpu_s: float
    main_cpu_s: float
    used_memory: float
    maxmemory: float
    connections: float
    new_connections: float
    hits: float
    misses: float
    evictions: float
    expired: float
    items: float
    lag_s: float | None  # a replica's own view (see node_samples); None on a primary
    repl_offset: float
    net_in: float
    net_out: float
    ops_per_sec: float
    reads: CmdTotals = field(default_factory=CmdTotals)
    writes: CmdTotals = field(default_factory=CmdTotals)
    keyed: CmdTotals = field(default_factory=CmdTotals)
    #: on a primary, per replica ("ip:port"): seconds since its last acknowledgement (the
    #: engine's ``slaveN: ...,lag=N``; replicas acknowledge every second)
    replica_lags: tuple[tuple[str, float], ...] = ()

    @classmethod
    def from_info(
        cls,
        info: Mapping[str, Any],
        commandstats: Mapping[str, Any],
        classes: CommandClasses,
        at: float,
    ) -> NodeReading:
        """`info`: INFO server, memory, stats, replication, cpu, clients and keyspace as
        redis-py parses it (key -> value, ``db0`` -> {keys: ...}); `commandstats`: INFO
        commandstats likewise (``cmdstat_get`` -> {calls, usec, ...})."""
        primary = str(info.get("role", "")) == "master"
        lag: float | None = None
        if not primary:
            if str(info.get("master_link_status", "")) == "up":
                lag = max(0.0, _num(info, "master_last_io_seconds_ago"))
            else:
                lag = max(0.0, _num(info, "master_link_down_since_seconds", -1.0))
                lag = lag if lag >= 0 else None
        items = sum(
            _num(v, "keys")
            for k, v in info.items()
            if k.startswith("db") and isinstance(v, Mapping)
        )
        replica_lags = tuple(
            (f"{v.get('ip')}:{v.get('port')}", _num(v, "lag"))
            for k, v in info.items()
            if primary and k.startswith("slave") and k[5:].isdigit() and isinstance(v, Mapping)
        )
        totals = {"reads": [0.0, 0.0], "writes": [0.0, 0.0], "keyed": [0.0, 0.0]}
        for key, stats in commandstats.items():
            if not key.startswith("cmdstat_") or not isinstance(stats, Mapping):
                continue
            cmd = key[len("cmdstat_") :].split("|", 1)[0].lower()
            calls, usec = _num(stats, "calls"), _num(stats, "usec")
            for group, members in (
                ("reads", classes.reads),
                ("writes", classes.writes),
                ("keyed", classes.keyed),
            ):
                if cmd in members:
                    totals[group][0] += calls
                    totals[group][1] += usec
        main = _num(info, "used_cpu_sys_main_thread", -1.0)
        cpu = _num(info, "used_cpu_sys") + _num(info, "used_cpu_user")
        main_cpu = cpu if main < 0 else main + _num(info, "used_cpu_user_main_thread")
        return cls(
            at=at,
            primary=primary,
            cpu_s=cpu,
            main_cpu_s=main_cpu,
            used_memory=_num(info, "used_memory"),
            maxmemory=_num(info, "maxmemory"),
            connections=_num(info, "connected_clients"),
            new_connections=_num(info, "total_connections_received"),
            hits=_num(info, "keyspace_hits"),
            misses=_num(info, "keyspace_misses"),
            evictions=_num(info, "evicted_keys"),
            expired=_num(info, "expired_keys"),
            items=items,
            lag_s=lag,
            repl_offset=_num(info, "master_repl_offset"),
            net_in=_num(info, "total_net_input_bytes"),
            net_out=_num(info, "total_net_output_bytes"),
            ops_per_sec=_num(info, "instantaneous_ops_per_sec"),
            reads=CmdTotals(*totals["reads"]),
            writes=CmdTotals(*totals["writes"]),
            keyed=CmdTotals(*totals["keyed"]),
            replica_lags=replica_lags,
        )

    @property
    def role(self) -> str:
        return "primary" if self.primary else "replica"

    def hit_rate(self, prev: NodeReading | None) -> float | None:
        """Hits over lookups since `prev` (since start when none happened since): None
        while the node has never been asked for a key."""
        if prev is not None:
            hits, misses = self.hits - prev.hits, self.misses - prev.misses
            if hits >= 0 and misses >= 0 and hits + misses > 0:
                return hits / (hits + misses)
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups > 0 else None


Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    metric: MetricDef
    labels: Labels
    value: float  # a histogram's: the sum of its observations
    #: a histogram's buckets: (upper bound, cumulative count), the last bound +Inf
    buckets: tuple[tuple[float, float], ...] = ()


def labels_of(**values: Any) -> Labels:
    return tuple((k, str(v)) for k, v in values.items())


def _rate(cur: float, prev: float, dt: float) -> float | None:
    """A counter's rate; None across a restart (the counter went back) or no time."""
    if dt <= 0 or cur < prev:
        return None
    return (cur - prev) / dt


def _mean_latency(cur: CmdTotals, prev: CmdTotals | None) -> float | None:
    if prev is None:
        return cur.usec / cur.calls / 1e6 if cur.calls > 0 else None
    calls, usec = cur.calls - prev.calls, cur.usec - prev.usec
    if calls <= 0 or usec < 0:
        return None
    return usec / calls / 1e6


def node_samples(
    cur: NodeReading,
    prev: NodeReading | None,
    *,
    cluster: str,
    shard: int,
    node: str,
    zone: str,
    lag_s: float | None = None,
) -> list[Sample]:
    """The service's metrics of one Valkey/Redis node. Rates (CPU, hit rate, latency) are over
    the interval since `prev`; without it (first reading, or the node restarted) they are
    left out rather than guessed. A replica's lag is `lag_s`, its primary's view, when given
    (:func:`replica_lags`); else its own: seconds since it last heard from the primary, or
    since its link went down."""
    lab = labels_of(cluster=cluster, shard=shard, node=node, zone=zone, role=cur.role)
    out = [
        Sample(UP, lab, 1.0),
        Sample(USED, lab, cur.used_memory),
        Sample(CONNS, lab, cur.connections),
        Sample(NEW_CONNS, lab, cur.new_connections),
        Sample(HITS, lab, cur.hits),
        Sample(MISSES, lab, cur.misses),
        Sample(EVICTIONS, lab, cur.evictions),
        Sample(RECLAIMED, lab, cur.expired),
        Sample(ITEMS, lab, cur.items),
        Sample(IS_PRIMARY, lab, 1.0 if cur.primary else 0.0),
        Sample(NET_IN, lab, cur.net_in),
        Sample(NET_OUT, lab, cur.net_out),
        Sample(GET_CMDS, lab, cur.reads.calls),
        Sample(SET_CMDS, lab, cur.writes.calls),
        Sample(KEY_CMDS, lab, cur.keyed.calls),
        Sample(OPS, lab, cur.ops_per_sec),
    ]
    if cur.maxmemory > 0:
        out.append(Sample(FREEABLE, lab, max(0.0, cur.maxmemory - cur.used_memory)))
        out.append(Sample(MEM_PCT, lab, cur.used_memory / cur.maxmemory))
    if cur.primary:
        out.append(Sample(REPL_BYTES, lab, cur.repl_offset))
    elif lag_s is not None or cur.lag_s is not None:
        out.append(Sample(LAG, lab, lag_s if lag_s is not None else cur.lag_s or 0.0))
    rate = cur.hit_rate(prev)
    if rate is not None:
        out.append(Sample(HIT_RATE, lab, rate))
    if prev is not None:
        dt = cur.at - prev.at
        for metric, now_v, then_v in (
            (CPU, cur.cpu_s, prev.cpu_s),
            (ENGINE_CPU, cur.main_cpu_s, prev.main_cpu_s),
        ):
            r = _rate(now_v, then_v, dt)
            if r is not None:
                out.append(Sample(metric, lab, r))
    for metric, totals, before in (
        (GET_LATENCY, cur.reads, prev.reads if prev else None),
        (SET_LATENCY, cur.writes, prev.writes if prev else None),
    ):
        mean = _mean_latency(totals, before)
        if mean is not None:
            out.append(Sample(metric, lab, mean))
    return out


def down_sample(
    cluster: str, node: str, zone: str, role: str | None = None, shard: int | None = None
) -> Sample:
    """``node_up 0`` for a node that did not answer: of a Valkey/Redis node (with its shard
    and last known role) or, without them, of a memcached node."""
    if role is None or shard is None:
        return Sample(MC_UP, labels_of(cluster=cluster, node=node, zone=zone), 0.0)
    lab = labels_of(cluster=cluster, shard=shard, node=node, zone=zone, role=role)
    return Sample(UP, lab, 0.0)


def replica_lags(readings: Iterable[NodeReading]) -> dict[str, float]:
    """Replica address -> lag in seconds, as the primaries that hold a link to it see it."""
    return {addr: lag for r in readings if r.primary for addr, lag in r.replica_lags}


def memcached_samples(
    stats: Mapping[str, str], *, cluster: str, node: str, zone: str
) -> list[Sample]:
    """A memcached node's ``stats`` (name -> value text) as the service's memcached metrics."""
    lab = labels_of(cluster=cluster, node=node, zone=zone)
    pairs = (
        (MC_GET, "cmd_get"),
        (MC_SET, "cmd_set"),
        (MC_HITS, "get_hits"),
        (MC_MISSES, "get_misses"),
        (MC_ITEMS, "curr_items"),
        (MC_EVICTIONS, "evictions"),
        (MC_BYTES, "bytes"),
        (MC_CONNS, "curr_connections"),
    )
    return [Sample(MC_UP, lab, 1.0)] + [
        Sample(m, lab, _num(stats, key)) for m, key in pairs if key in stats
    ]


# -- control plane -------------------------------------------------------------------------

FAILOVER_OUTCOMES = {
    "failover_completed": "completed",
    "failover_aborted": "aborted",
    "graceful_failover": "graceful",
}


@dataclass
class EventCounts:
    """What the control-plane series count from the event log, fed incrementally."""

    failovers: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    slots_migrated: int = 0
    modifying: bool = False

    def feed(self, events: Iterable[Mapping[str, Any]]) -> None:
        for event in events:
            kind = event.get("type")
            if kind == "slots_migrated":
                n = event.get("slots")
                self.slots_migrated += n if isinstance(n, int) and n > 0 else 0
            elif kind in ("modify_started", "modify_completed", "modify_failed"):
                self.modifying = kind == "modify_started"
            elif kind == "cluster_created":
                self.restarts = {}  # restarts count since the cluster was last started
            elif kind == "process_restarted":
                name = str(event.get("process"))
                self.restarts[name] = self.restarts.get(name, 0) + 1
            elif isinstance(kind, str) and kind in FAILOVER_OUTCOMES:
                outcome = FAILOVER_OUTCOMES[kind]
                self.failovers[outcome] = self.failovers.get(outcome, 0) + 1


@dataclass(frozen=True)
class RouterStats:
    """The counters a router worker publishes with its state (all cumulative): requests,
    client errors, and its request-duration histogram (`bounds` in seconds, `counts` one per
    bound plus one for +Inf, not cumulative)."""

    requests: int = 0
    errors: int = 0
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    total_s: float = 0.0

    @classmethod
    def from_state(cls, data: Any) -> RouterStats | None:
        """From a router's decoded state message; None when its fields are not what a router
        writes (the bus is input like any other)."""
        if not isinstance(data, Mapping):
            return None

        def count(value: Any) -> int | None:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 62
            return value if ok else None

        requests, errors = count(data.get("ops_total", 0)), count(data.get("client_errors", 0))
        if requests is None or errors is None:
            return None
        hist = data.get("latency")
        if hist is None:
            return cls(requests, errors)
        if not isinstance(hist, Mapping):
            return None
        bounds, counts, total = hist.get("le"), hist.get("counts"), hist.get("sum")
        if not isinstance(bounds, list) or not isinstance(counts, list) or len(bounds) > 64:
            return None
        if len(counts) != len(bounds) + 1 or not all(count(c) is not None for c in counts):
            return None
        if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
            return None
        if any(not math.isfinite(b) or b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
            return None
        if isinstance(total, bool) or not isinstance(total, int | float) or not total >= 0:
            return None
        return cls(requests, errors, tuple(map(float, bounds)), tuple(counts), float(total))

    def buckets(self) -> tuple[tuple[float, float], ...]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return tuple(out)


def control_samples(
    *,
    cluster: str,
    config_epoch: int | None,
    counts: EventCounts,
    sdown: Mapping[str, Iterable[str]],
    routers: Mapping[str, tuple[int, float]],
    router_stats: Mapping[str, RouterStats] | None = None,
    snapshot_ages: Mapping[str, float] | None = None,
) -> list[Sample]:
    """`sdown`: sentinel -> nodes it holds down; `routers`: router -> (connections, ops/s);
    `router_stats`: router -> its counters; `snapshot_ages`: snapshot kind -> seconds since
    the newest of that kind was taken."""
    out = [
        Sample(FAILOVERS, labels_of(cluster=cluster, outcome=o), float(counts.failovers.get(o, 0)))
        for o in sorted(set(FAILOVER_OUTCOMES.values()))
    ]
    one = labels_of(cluster=cluster)
    out.append(Sample(SLOTS_MIGRATED, one, float(counts.slots_migrated)))
    out.append(Sample(MODIFYING, one, 1.0 if counts.modifying else 0.0))
    for kind, age in sorted((snapshot_ages or {}).items()):
        out.append(Sample(SNAPSHOT_AGE, labels_of(cluster=cluster, snapshot_kind=kind), age))
    for router, stats in sorted((router_stats or {}).items()):
        lab = labels_of(cluster=cluster, router=router)
        out.append(Sample(ROUTER_REQUESTS, lab, float(stats.requests)))
        out.append(Sample(ROUTER_ERRORS, lab, float(stats.errors)))
        if stats.counts:
            out.append(Sample(ROUTER_LATENCY, lab, stats.total_s, stats.buckets()))
    if config_epoch is not None:
        out.append(Sample(CONFIG_EPOCH, labels_of(cluster=cluster), float(config_epoch)))
    out += [
        Sample(RESTARTS, labels_of(cluster=cluster, process=p), float(n))
        for p, n in sorted(counts.restarts.items())
    ]
    for sentinel, nodes in sorted(sdown.items()):
        out += [
            Sample(SDOWN, labels_of(cluster=cluster, sentinel=sentinel, node=n), 1.0)
            for n in sorted(nodes)
        ]
    for router, (conns, ops) in sorted(routers.items()):
        lab = labels_of(cluster=cluster, router=router)
        out += [Sample(ROUTER_CONNS, lab, float(conns)), Sample(ROUTER_OPS, lab, ops)]
    return out


# -- exposition ------------------------------------------------------------------------------


class _Families(Collector):
    def __init__(self, samples: Iterable[Sample]) -> None:
        self.samples = list(samples)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily] = {}
        for s in self.samples:
            fam = families.get(s.metric.name)
            if fam is None:
                names = [k for k, _ in s.labels]
                if s.metric.kind is Kind.COUNTER:
                    fam = CounterMetricFamily(s.metric.name, s.metric.help_text, labels=names)
                elif s.metric.kind is Kind.HISTOGRAM:
                    fam = HistogramMetricFamily(s.metric.name, s.metric.help_text, labels=names)
                else:
                    fam = GaugeMetricFamily(s.metric.name, s.metric.help_text, labels=names)
                families[s.metric.name] = fam
            values = [v for _, v in s.labels]
            if isinstance(fam, HistogramMetricFamily):
                buckets = [(_le(b), c) for b, c in s.buckets]
                fam.add_metric(values, buckets, s.value)
            else:
                fam.add_metric(values, s.value)
        return families.values()


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def render(samples: Iterable[Sample]) -> bytes:
    """Prometheus text exposition (format 0.0.4) of the samples, one family per metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(samples))
    return generate_latest(registry)
