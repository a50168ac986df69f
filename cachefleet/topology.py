"""The topology: a declared cache cluster (YAML) parsed once into a validated, frozen model.

Every rule lives here, including the timing invariants between settings, so the rest of the
code never re-checks a field. A bad file raises :class:`TopologyError` naming the file, the
field (dotted path) and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import yaml

from cachefleet import nodetypes
from cachefleet.buscreds import ExternalBus, parse_external_bus
from cachefleet.errors import TopologyError
from cachefleet.security import Security, parse_security

if TYPE_CHECKING:  # imported when a topology has the section (start-up time of the CLI)
    from cachefleet.alarms import AlarmSpec
    from cachefleet.cost import Reservation

ENGINES = ("valkey", "redis", "memcached")
ZONE_ADDRESSING = ("per-zone", "shared")
MAXMEMORY_POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)
READ_FROM = ("primary", "replica", "same-zone")
CLUSTER_MODES = ("enabled", "disabled")

#: Named node sizes, the short ones and the service's (cachefleet.nodetypes): name -> bytes.
NODE_TYPES = nodetypes.NODE_TYPES

MAX_ZONES = 6
MAX_SHARDS = 500
MAX_REPLICAS = 5
#: Engines listen on ``port`` and gossip on ``port + CLUSTER_BUS_OFFSET`` when ports are fixed.
CLUSTER_BUS_OFFSET = 10000
MAX_PORT = 65535

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_ZONE_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


#: Sentinel hellos are re-published at least this often (ms); one is fresh for 4 periods.
HELLO_INTERVAL_MS = 250


@dataclass(frozen=True)
class Sentinels:
    """Sentinel settings and the timings derived from them (all in ms). The multipliers live
    here, next to the invariants that :func:`parse_topology` checks between them."""

    count: int
    quorum: int
    probe_interval_ms: int = 100
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000

    @property
    def probe_timeout_ms(self) -> int:
        """A probe waits this long for a reply: never longer than half of down-after."""
        return max(self.probe_interval_ms, self.down_after_ms // 2)

    @property
    def hello_max_age_ms(self) -> int:
        """A hello older than this no longer counts (ODOWN, live sentinels)."""
        return max(1000, 4 * HELLO_INTERVAL_MS)

    @property
    def grace_ms(self) -> int:
        """A just-promoted primary is not judged down for this long."""
        return 2 * self.down_after_ms

    @property
    def settle_ms(self) -> int:
        """No new failover of a shard (and no vote for one) this long after its last."""
        return 2 * self.down_after_ms

    @property
    def election_timeout_ms(self) -> int:
        """A candidate waits this long for a majority of votes."""
        return max(500, 5 * self.probe_interval_ms)

    @property
    def candidacy_delay_ms(self) -> int:
        """Upper bound of the random delay before a sentinel asks for votes, so that
        sentinels seeing ODOWN at once rarely split the vote (as Valkey Sentinel does)."""
        return max(self.probe_interval_ms, 50)

    @property
    def takeover_resend_ms(self) -> int:
        """An unanswered TAKEOVER is sent again after this long."""
        return max(500, 2 * self.probe_interval_ms)


@dataclass(frozen=True)
class Router:
    port: int | None  # None: allocate a free port at `up`
    read_from: str = "primary"
    failover_wait_ms: int = 5000
    workers: int = 0  # 0: one worker per core
    zone: str | None = None  # the router's zone, for read_from: same-zone
    max_clients: int = 10_000  # per worker, like the engine's maxclients
    query_buffer_limit_mb: int = 64  # one client's unparsed request bytes


@dataclass(frozen=True)
class Endpoints:
    """A cluster-mode-disabled group's endpoints (None: a free port, allocated at `up`)."""

    primary_port: int | None = None  # always reaches the current primary
    reader_port: int | None = None  # spreads connections over the healthy replicas


@dataclass(frozen=True)
class Bus:
    url: str  # "embedded" or mqtt://host:port
    external: ExternalBus = field(default_factory=ExternalBus)  # its login and TLS: paths

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"

    @property
    def host_port(self) -> tuple[str, int]:
        parsed = urlparse(self.url)
        assert parsed.hostname is not None and parsed.port is not None
        return parsed.hostname, parsed.port


@dataclass(frozen=True)
class Metrics:
    port: int | None = None  # None: a free port, chosen once by the cluster's supervisor


@dataclass(frozen=True)
class Persistence:
    appendonly: bool = False
    appendfsync: str = "everysec"  # always | everysec | no


@dataclass(frozen=True)
class Backup:
    """Automatic snapshots: the newest `retention` are kept (0: off), taken daily in a UTC
    `window` (minutes of the day, start and end) or every `interval_s` seconds."""

    retention: int = 0
    window: tuple[int, int] | None = None
    interval_s: int | None = None
    source: str = "replica"  # replica (no fork on the primary) | primary
    encryption_key_file: str | None = None  # AES-256-GCM for snapshot files

    @property
    def automatic(self) -> bool:
        return self.retention > 0


@dataclass(frozen=True)
class Durability:
    min_replicas_to_write: int = 0
    max_lag_s: int = 2


#: The memcached options a topology may set under ``parameters`` (an allow-list): name ->
#: (type, low, high). Sizes take an integer of bytes or a string with a k/m suffix.
MEMCACHED_PARAMETERS: dict[str, tuple[str, float, float]] = {
    "threads": ("int", 1, 64),
    "max_item_size": ("size", 1024, 1024**3),
    "max_connections": ("int", 16, 1_000_000),
    "chunk_size": ("int", 48, 1024**2),
    "growth_factor": ("float", 1.01, 4.0),
    "cas": ("bool", 0, 1),
    "evictions": ("bool", 0, 1),
}
MAX_MEMCACHED_NODES = 100

#: The engine settings a topology may set under ``parameters`` (an allow-list, like a
#: parameter group): name -> (type, low, high) for "int", or the allowed words. Each can be
#: changed live (CONFIG SET) by `apply`; none of them touches the cluster's own wiring.
ENGINE_PARAMETERS: dict[str, tuple[str, ...] | tuple[str, int, int]] = {
    "maxmemory-samples": ("int", 1, 64),
    "maxmemory-eviction-tenacity": ("int", 0, 100),
    "timeout": ("int", 0, 31_536_000),
    "tcp-keepalive": ("int", 0, 86_400),
    "hz": ("int", 1, 500),
    "lfu-log-factor": ("int", 0, 255),
    "lfu-decay-time": ("int", 0, 1_000_000),
    "slowlog-log-slower-than": ("int", -1, 1_000_000_000),
    "slowlog-max-len": ("int", 0, 1_000_000),
    "latency-monitor-threshold": ("int", 0, 1_000_000),
    "hash-max-listpack-entries": ("int", 0, 1_000_000),
    "set-max-intset-entries": ("int", 0, 1_000_000),
    "zset-max-listpack-entries": ("int", 0, 1_000_000),
    "list-max-listpack-size": ("int", -5, 1_000_000),
    "notify-keyspace-events": ("", "AKE", "Ex", "Kx", "KEA", "Egx$", "Kgx$", "AK", "AE"),
    "lazyfree-lazy-eviction": ("yes", "no"),
    "lazyfree-lazy-expire": ("yes", "no"),
    "lazyfree-lazy-user-del": ("yes", "no"),
    "activedefrag": ("yes", "no"),
    "cluster-allow-reads-when-down": ("yes", "no"),
}


@dataclass(frozen=True)
class Memcached:
    """A memcached cluster's settings: its node count and the allow-listed parameters."""

    nodes: int
    threads: int = 4
    max_item_size: int = 1024**2
    max_connections: int = 1024
    chunk_size: int = 48
    growth_factor: float = 1.25
    cas: bool = True
    evictions: bool = True
    copies: int = 1  # the proxy writes each key to this many nodes and reads the next on a miss


@dataclass(frozen=True)
class Topology:
    name: str
    engine: Literal["valkey", "redis", "memcached"]
    zones: tuple[str, ...]
    shards: int
    replicas_per_shard: int
    node_type: str
    sentinels: Sentinels
    router: Router
    bus: Bus
    persistence: Persistence = field(default_factory=Persistence)
    backup: Backup = field(default_factory=Backup)
    durability: Durability = field(default_factory=Durability)
    metrics: Metrics = field(default_factory=Metrics)
    ports_base: int | None = None  # None: allocate free ports at `up`
    zone_addressing: str = "per-zone"
    maxmemory_policy: str = "volatile-lru"
    engine_binary: str | None = None
    source: str = "<topology>"
    memcached: Memcached | None = None  # set exactly when engine is memcached
    cluster_mode: str = "enabled"  # disabled: one primary with read replicas, no slots
    endpoints: Endpoints | None = None  # set exactly when cluster_mode is disabled
    security: Security = field(default_factory=Security)  # secret files by path only
    parameters: tuple[tuple[str, str], ...] = ()  # allow-listed engine settings, sorted
    alarms: tuple[AlarmSpec, ...] = ()  # cachefleet.alarms
    reserved: tuple[Reservation, ...] = ()  # reserved nodes (cachefleet.cost)

    @property
    def standalone(self) -> bool:
        """Cluster mode disabled: engines without cluster mode, one shard (id 1), no slots."""
        return self.cluster_mode == "disabled"

    @property
    def maxmemory(self) -> int:
        return NODE_TYPES[self.node_type]

    @property
    def is_memcached(self) -> bool:
        return self.memcached is not None

    @property
    def nodes_total(self) -> int:
        return self.shards * (1 + self.replicas_per_shard)

    def zone_address(self, zone: str) -> str:
        """Zone *i* (1-based) owns 127.0.i.1, unless every zone shares 127.0.0.1."""
        if self.zone_addressing == "shared":
            return "127.0.0.1"
        return f"127.0.{self.zones.index(zone) + 1}.1"


class Section:
    """Reads one mapping of the YAML, tracking the dotted path and the fields consumed."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        self.source = source
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise TopologyError(source, path or "<root>", f"must be a mapping, got {kind_of(data)}")
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> TopologyError:
        return TopologyError(self.source, self.dotted(key), message)

    def dotted(self, key: str) -> str:
        """The field's dotted path; the section's own path for the key ""."""
        if not key:
            return self.path or "<root>"
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.data

    def section(self, key: str) -> Section:
        return Section(self.source, self.dotted(key), self.raw(key))

    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int:
        value = self.raw(key, None)
        if value is None:  # absent or explicitly empty: the default
            value = default
        if value is None:
            raise self.fail(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {kind_of(value)}")
        if not lo <= value <= hi:
            raise self.fail(key, f"{value} is out of range {lo}..{hi}")
        return value

    def int_or_auto(self, key: str, default: int | str, lo: int, hi: int) -> int | None:
        value = self.raw(key, default)
        if value == "auto":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer or 'auto', got {kind_of(value)}")
        if not lo <= value <= hi:
            raise self.fail(key, f"{value} is out of range {lo}..{hi}")
        return value

    def string(self, key: str, default: str | None) -> str:
        value = self.raw(key, default)
        if value is None:
            raise self.fail(key, "is required")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {kind_of(value)}")
        return value

    def choice(self, key: str, default: str | None, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {kind_of(value)}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used, key=str)
        if unknown:
            raise self.fail(str(unknown[0]), "unknown field")


def kind_of(value: Any) -> str:
    """What a wrong value is, for an error message: "string 'x'", "a list", …"""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value!r}".lower()
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _is_loopback_host(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


def _check_sentinel_timings(sent: Section, t: Sentinels) -> None:
    """The derived timings must nest: a candidacy delay and an election fit inside the
    failover timeout and an unanswered TAKEOVER is resent before the timeout moves on.
    (The probe timeout, half of down-after, stays below down-after by construction.)"""
    if t.candidacy_delay_ms + t.election_timeout_ms >= t.failover_timeout_ms:
        raise sent.fail(
            "failover_timeout_ms",
            f"{t.failover_timeout_ms} ms leaves no room for an election: the candidacy delay "
            f"({t.candidacy_delay_ms} ms) plus the election timeout ({t.election_timeout_ms} "
            "ms, 5 x probe_interval_ms) must be shorter",
        )
    if 2 * t.takeover_resend_ms > t.failover_timeout_ms:
        raise sent.fail(
            "failover_timeout_ms",
            f"{t.failover_timeout_ms} ms is shorter than two TAKEOVER attempts "
            f"({t.takeover_resend_ms} ms each)",
        )


def parse_topology(data: Any, source: str = "<topology>") -> Topology:
    """Validate a parsed YAML document and return the model, or raise TopologyError."""
    root = Section(source, "", data)

    name = root.string("name", None)
    if not _NAME_RE.fullmatch(name):
        raise root.fail(
            "name",
            f"{name!r} must be 1-40 lowercase letters, digits or '-', starting with a letter",
        )
    engine = root.choice("engine", "valkey", ENGINES)

    zones_raw = root.raw("zones", None)
    if zones_raw is None:
        raise root.fail("zones", "is required")
    if not isinstance(zones_raw, list):
        raise root.fail("zones", f"must be a list of zone names, got {kind_of(zones_raw)}")
    if not zones_raw:
        raise root.fail("zones", "zone list is empty: give at least one zone")
    if len(zones_raw) > MAX_ZONES:
        raise root.fail("zones", f"{len(zones_raw)} zones given, at most {MAX_ZONES} are supported")
    for i, zone in enumerate(zones_raw):
        if not isinstance(zone, str) or not _ZONE_RE.fullmatch(zone):
            raise root.fail(
                f"zones[{i}]", f"{zone!r} must be lowercase letters, digits or '-' (max 32)"
            )
    if len(set(zones_raw)) != len(zones_raw):
        dup = next(z for z in zones_raw if zones_raw.count(z) > 1)
        raise root.fail("zones", f"zone {dup!r} is listed twice")
    zones = tuple(zones_raw)
    zone_addressing = root.choice("zone_addressing", "per-zone", ZONE_ADDRESSING)

    memcached: Memcached | None = None
    node_type = root.choice("node_type", "cache.small", tuple(NODE_TYPES))
    if engine == "memcached":
        # A memcached cluster is a set of independent nodes (Node i is "shard" i+1 of one
        # member in the plan): no shards, replicas or sentinels to declare.
        for field_name in ("shards", "replicas_per_shard"):
            if root.has(field_name):
                raise root.fail(field_name, "memcached clusters have nodes, not shards or replicas")
        nodes = root.integer("nodes", None, 1, MAX_MEMCACHED_NODES)
        memcached = _memcached_parameters(root, nodes, NODE_TYPES[node_type])
        shards, replicas = nodes, 0
    else:
        for field_name in ("nodes", "memcached"):
            if root.has(field_name):
                raise root.fail(field_name, "is only for engine: memcached")
    cluster_mode = root.choice("cluster_mode", "enabled", CLUSTER_MODES)
    if cluster_mode == "disabled":
        shards, replicas = _standalone_shape(root, engine)
    elif not memcached:
        if root.has("replicas"):
            raise root.fail(
                "replicas", "is only for cluster_mode: disabled (use replicas_per_shard)"
            )
        if root.has("endpoints"):
            raise root.fail("endpoints", "is only for cluster_mode: disabled")
        shards = root.integer("shards", 3, 1, MAX_SHARDS)
        replicas = root.integer("replicas_per_shard", 1, 0, MAX_REPLICAS)
    policy = root.choice("maxmemory_policy", "volatile-lru", MAXMEMORY_POLICIES)
    parameters = () if memcached else _engine_parameters(root.section("parameters"))

    engine_binary = root.raw("engine_binary", None)
    if engine_binary is not None and not isinstance(engine_binary, str):
        raise root.fail("engine_binary", f"must be a path, got {kind_of(engine_binary)}")

    nodes_total = shards * (1 + replicas)
    ports = root.section("ports")
    base = ports.int_or_auto("base", "auto", 1024, MAX_PORT)
    ports.done()
    bus_offset = 0 if memcached else CLUSTER_BUS_OFFSET  # memcached nodes have no cluster bus
    if base is not None and base + nodes_total - 1 > MAX_PORT:
        raise ports.fail("base", f"{nodes_total} nodes need ports {base}..{base + nodes_total - 1}")
    if base is not None and base + nodes_total - 1 + bus_offset > MAX_PORT:
        room = MAX_PORT - CLUSTER_BUS_OFFSET - base + 1
        raise ports.fail(
            "base",
            f"more shards than ports available: {nodes_total} nodes need ports "
            f"{base}..{base + nodes_total - 1} plus cluster-bus ports +{CLUSTER_BUS_OFFSET}, "
            f"only {max(room, 0)} fit below {MAX_PORT}",
        )

    endpoints = _endpoints(root, base, nodes_total) if cluster_mode == "disabled" else None
    router_s = root.section("router")
    if endpoints is not None and router_s.has("port"):
        raise router_s.fail("port", "a cluster-mode-disabled group has endpoints.primary.port")
    router_zone = router_s.raw("zone", None)
    if router_zone is not None and router_zone not in zones:
        raise router_s.fail("zone", f"{router_zone!r} is not one of the zones ({', '.join(zones)})")
    router_port = router_s.int_or_auto("port", "auto", 1, MAX_PORT)
    if router_port is not None and base is not None:
        taken = range(base, base + nodes_total)
        bus_taken = range(base + CLUSTER_BUS_OFFSET, base + CLUSTER_BUS_OFFSET + nodes_total)
        if router_port in taken or (not memcached and router_port in bus_taken):
            raise router_s.fail("port", f"{router_port} collides with the node ports of ports.base")
    router = Router(
        port=router_port,
        read_from=router_s.choice("read_from", "primary", READ_FROM),
        failover_wait_ms=router_s.integer("failover_wait_ms", 5000, 0, 60000),
        workers=router_s.integer("workers", 0, 0, 64),
        zone=router_zone,
        max_clients=router_s.integer("max_clients", 10_000, 1, 1_000_000),
        query_buffer_limit_mb=router_s.integer("query_buffer_limit_mb", 64, 1, 1024),
    )
    router_s.done()

    bus_s = root.section("bus")
    url = bus_s.string("url", "embedded")
    if url != "embedded":
        parsed = urlparse(url)
        try:
            port_ok = parsed.port is not None and parsed.port > 0
        except ValueError:
            port_ok = False
        if parsed.scheme != "mqtt" or not parsed.hostname or not port_ok:
            raise bus_s.fail("url", f"{url!r} must be 'embedded' or mqtt://host:port")
        if not _is_loopback_host(parsed.hostname):
            raise bus_s.fail("url", f"{parsed.hostname!r} is not a loopback address (127.0.0.0/8)")
    external_bus = parse_external_bus(bus_s, embedded=url == "embedded")
    bus_s.done()

    sent = root.section("sentinels")
    default_count = max(3, len(zones)) if len(zones) > 1 else 1
    if memcached:
        default_count = 0  # nothing to fail over: a failed node is replaced by its zone agent
    count = sent.integer("count", default_count, 0, 9)
    if memcached and count:
        raise sent.fail("count", "memcached nodes have no replicas to fail over: use 0 sentinels")
    quorum = sent.integer("quorum", count // 2 + 1 if count else 0, 0 if count == 0 else 1, 9)
    if quorum > count:
        raise sent.fail("quorum", f"{quorum} is greater than sentinels.count ({count})")
    probe = sent.integer("probe_interval_ms", 100, 10, 5000)
    down_after = sent.integer("down_after_ms", 1000, 100, 600000)
    failover_timeout = sent.integer("failover_timeout_ms", 5000, 500, 600000)
    if probe * 3 > down_after:
        raise sent.fail(
            "probe_interval_ms",
            f"{probe} ms is too long for down_after_ms {down_after}: "
            "need at least 3 probes per down-after period",
        )
    if failover_timeout <= down_after:
        raise sent.fail(
            "failover_timeout_ms",
            f"{failover_timeout} must be greater than down_after_ms ({down_after})",
        )
    sentinels = Sentinels(count, quorum, probe, down_after, failover_timeout)
    _check_sentinel_timings(sent, sentinels)
    sent.done()

    pers = root.section("persistence")
    persistence = Persistence(
        appendonly=pers.boolean("appendonly", False),
        appendfsync=pers.choice("appendfsync", "everysec", ("always", "everysec", "no")),
    )
    if memcached and persistence.appendonly:
        raise pers.fail("appendonly", "memcached keeps no data on disk")
    pers.done()
    backup = _backup(root.section("backup"), memcached is not None)

    dur = root.section("durability")
    min_rw = dur.integer("min_replicas_to_write", 0, 0, MAX_REPLICAS)
    if min_rw > replicas:
        what = "replicas" if cluster_mode == "disabled" else "replicas_per_shard"
        raise dur.fail(
            "min_replicas_to_write",
            f"{min_rw} is greater than {what} ({replicas}): no write would succeed",
        )
    max_lag = dur.integer("max_lag_s", 2, 1, 3600)
    fence_bound_ms = down_after + failover_timeout
    if min_rw > 0 and max_lag * 1000 > fence_bound_ms:
        raise dur.fail(
            "max_lag_s",
            f"{max_lag} s lets a primary cut off from its replicas keep accepting writes longer "
            f"than sentinels.down_after_ms + failover_timeout_ms ({fence_bound_ms} ms); "
            "lower it or raise those",
        )
    dur.done()

    met = root.section("metrics")
    metrics = Metrics(port=met.int_or_auto("port", "auto", 1, MAX_PORT))
    met.done()
    security = parse_security(root.section("security"), engine, cluster_mode)
    alarms: tuple[AlarmSpec, ...] = ()
    if root.raw("alarms") is not None:
        from cachefleet.alarms import parse_alarms

        alarms = parse_alarms(
            root.raw("alarms"),
            source=source,
            memcached=memcached is not None,
            shards=shards,
            zones=zones,
        )
    reserved: tuple[Reservation, ...] = ()
    if root.raw("reserved") is not None:
        from cachefleet.cost import parse_reserved

        reserved = parse_reserved(root.raw("reserved"), source=source)

    root.done()

    return Topology(
        name=name,
        engine=engine,  # type: ignore[arg-type]
        zones=zones,
        shards=shards,
        replicas_per_shard=replicas,
        node_type=node_type,
        sentinels=sentinels,
        router=router,
        bus=Bus(url, external_bus),
        persistence=persistence,
        backup=backup,
        durability=Durability(min_rw, max_lag),
        metrics=metrics,
        security=security,
        ports_base=base,
        zone_addressing=zone_addressing,
        maxmemory_policy=policy,
        engine_binary=engine_binary,
        source=source,
        memcached=memcached,
        cluster_mode=cluster_mode,
        endpoints=endpoints,
        parameters=parameters,
        alarms=alarms,
        reserved=reserved,
    )


def _standalone_shape(root: Section, engine: str) -> tuple[int, int]:
    """(shards, replicas) of a cluster-mode-disabled group: one shard, `replicas` 0..5."""
    if engine == "memcached":
        raise root.fail("cluster_mode", "memcached clusters have no cluster mode")
    for field_name in ("shards", "replicas_per_shard"):
        if root.has(field_name):
            raise root.fail(
                field_name, "a cluster-mode-disabled group has one shard: use replicas (0..5)"
            )
    return 1, root.integer("replicas", 1, 0, MAX_REPLICAS)


def _endpoints(root: Section, base: int | None, nodes_total: int) -> Endpoints:
    """endpoints.primary.port and endpoints.reader.port: optional, distinct, clear of the
    node ports of ports.base."""
    ends = root.section("endpoints")
    found: dict[str, int | None] = {}
    for kind in ("primary", "reader"):
        sec = ends.section(kind)
        port = sec.int_or_auto("port", "auto", 1, MAX_PORT)
        if port is not None and base is not None:
            taken = range(base, base + nodes_total)
            bus_taken = range(base + CLUSTER_BUS_OFFSET, base + CLUSTER_BUS_OFFSET + nodes_total)
            if port in taken or port in bus_taken:
                raise sec.fail("port", f"{port} collides with the node ports of ports.base")
        sec.done()
        found[kind] = port
    ends.done()
    if found["primary"] is not None and found["primary"] == found["reader"]:
        raise ends.fail("reader", "the reader endpoint needs a port of its own")
    return Endpoints(primary_port=found["primary"], reader_port=found["reader"])


_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")


def _backup(bk: Section, memcached: bool) -> Backup:
    retention = bk.integer("retention", 0, 0, 35)  # the managed service keeps up to 35
    window_text = bk.raw("window", None)
    interval = bk.raw("interval_s", None)
    source = bk.choice("source", "replica", ("replica", "primary"))
    key_file = bk.raw("encryption_key_file", None)
    if key_file is not None and (not isinstance(key_file, str) or not key_file):
        raise bk.fail("encryption_key_file", "must be a path to a key file")
    if key_file is not None and not Path(key_file).is_absolute() and not bk.source.startswith("<"):
        key_file = str(Path(bk.source).parent / key_file)  # relative to the topology file
    window: tuple[int, int] | None = None
    if window_text is not None:
        match = _WINDOW.fullmatch(window_text) if isinstance(window_text, str) else None
        if match is None:
            raise bk.fail("window", f"must be 'HH:MM-HH:MM' (UTC), got {window_text!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        window = (h1 * 60 + m1, h2 * 60 + m2)
        if window[0] == window[1]:
            raise bk.fail("window", "is empty")
    if interval is not None:
        interval = bk.integer("interval_s", None, 1, 7 * 86400)
        if window is not None:
            raise bk.fail("interval_s", "give either window or interval_s, not both")
    if retention and window is None and interval is None:
        window = (3 * 60, 4 * 60)  # the service's default style: a nightly hour
    if memcached and retention:
        raise bk.fail("retention", "memcached clusters have no snapshots")
    bk.done()
    return Backup(
        retention=retention,
        window=window,
        interval_s=interval,
        source=source,
        encryption_key_file=key_file,
    )


def _size(section: Section, key: str, value: Any) -> int:
    """Bytes from an integer or a string with a k/m/g suffix (as memcached's -I takes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"(\d{1,10})([kmg]?)b?", value.strip().lower())
        if m:
            return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]
    raise section.fail(key, f"must be a size such as 1048576, 512k or 1m, got {kind_of(value)}")


def _engine_parameters(params: Section) -> tuple[tuple[str, str], ...]:
    """The allow-listed engine settings, each checked and rendered as the engine's word."""
    out = []
    for key in sorted(params.data, key=str):
        rule = ENGINE_PARAMETERS.get(key) if isinstance(key, str) else None
        if rule is None:
            raise params.fail(str(key), "is not an engine parameter that can be set")
        value = params.raw(key)
        if rule[0] == "int":
            out.append((key, str(params.integer(key, None, int(rule[1]), int(rule[2])))))
        elif isinstance(value, bool) and rule == ("yes", "no"):
            out.append((key, "yes" if value else "no"))
        elif isinstance(value, str) and value in rule:
            out.append((key, value))
        else:
            words = ", ".join(repr(w) for w in rule)
            raise params.fail(key, f"must be one of {words}, got {value!r}")
    params.done()
    return tuple(out)


def _memcached_parameters(root: Section, nodes: int, maxmemory: int) -> Memcached:
    """The allow-listed memcached parameters, each checked against its range."""
    params = root.section("parameters")
    values: dict[str, Any] = {}
    for key in sorted(params.data, key=str):
        spec = MEMCACHED_PARAMETERS.get(str(key))
        if spec is None:
            allowed = ", ".join(sorted(MEMCACHED_PARAMETERS))
            raise params.fail(str(key), f"is not an allowed memcached parameter ({allowed})")
        kind, lo, hi = spec
        raw = params.raw(str(key))
        if kind == "bool":
            values[key] = params.boolean(str(key), True)
            continue
        if kind == "size":
            value: float = _size(params, str(key), raw)
        elif kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise params.fail(str(key), f"must be a number, got {kind_of(raw)}")
            value = float(raw)
        else:
            value = params.integer(str(key), None, int(lo), int(hi))
        if not lo <= value <= hi:
            raise params.fail(str(key), f"{raw} is out of range {lo:g}..{hi:g}")
        values[key] = value
    params.done()
    pool = root.section("memcached")
    values["copies"] = pool.integer("copies", 1, 1, 3)
    if values["copies"] > nodes:
        raise pool.fail(
            "copies", f"{values['copies']} copies need at least as many nodes ({nodes})"
        )
    pool.done()
    settings = Memcached(nodes=nodes, **values)
    if settings.max_item_size > maxmemory // 2:
        raise params.fail(
            "max_item_size",
            f"{settings.max_item_size} bytes is more than half of node_type's memory "
            f"({maxmemory} bytes): memcached refuses that",
        )
    return settings


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise TopologyError(source, "", "file not found") from None
    except OSError as exc:
        raise TopologyError(source, "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise TopologyError(source, "", f"invalid YAML{where}: {problem}") from None
    return parse_topology(data, source)
