"""The cost model (pure): price table, node-hours from events, reservations, snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cachefleet import cost, nodetypes
from cachefleet.cost import (
    PriceTable,
    Reservation,
    Segment,
    StoredSnapshot,
    bill,
    billable_snapshot_byte_seconds,
    node_segments,
    snapshot_history,
)
from cachefleet.errors import InvalidInput, TopologyError
from cachefleet.topology import parse_topology

H = 3600.0
PRICES = PriceTable(
    on_demand={"cache.t4g.small": 0.032, "cache.m7g.large": 0.158},
    aliases={"cache.small": "cache.t4g.small"},
    reserved_fraction={("1y", "no-upfront"): 0.5, ("3y", "all-upfront"): 0.25},
    snapshot_gb_month=0.1,
    cross_zone_gb=0.01,
)


def ev(kind: str, ts: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "ts": ts, **fields}


def test_the_shipped_table_prices_every_node_type() -> None:
    table = cost.load_prices(cost.PACKAGE_PRICES)
    assert not [n for n in nodetypes.NODE_TYPES if table.canonical(n) is None]
    assert table.hourly("cache.small") == table.hourly("cache.t4g.small") > 0
    assert {t for t, _ in table.reserved_fraction} == set(cost.TERMS)
    assert all(0 < f < 1 for f in table.reserved_fraction.values())


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "on_demand_hourly"),
        ({"on_demand_hourly": {"a": -1}}, "on_demand_hourly.a"),
        ({"on_demand_hourly": {"a": "x"}}, "on_demand_hourly.a"),
        ({"on_demand_hourly": {"a": 1}, "aliases": {"b": "c"}}, "aliases.b"),
        ({"on_demand_hourly": {"a": 1}, "reserved_fraction": {"5y": {}}}, "reserved_fraction.5y"),
    ],
)
def test_bad_price_table(data: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        PriceTable.from_dict(data, "p.yaml")
    assert err.value.field == field


def test_price_table_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "p.yaml"
    p.write_text(
        "on_demand_hourly: {cache.t4g.micro: 1.5}\naliases: {cache.micro: cache.t4g.micro}\n"
    )
    monkeypatch.setenv(cost.PRICES_ENV, str(p))
    assert cost.load_prices().hourly("cache.micro") == 1.5


def test_reserved_section() -> None:
    base = {"name": "c", "zones": ["a"]}
    t = parse_topology(
        {
            **base,
            "reserved": [
                {"node_type": "cache.t4g.small", "count": 2, "term": "3y", "payment": "all-upfront"}
            ],
        }
    )
    assert t.reserved == (Reservation("cache.t4g.small", 2, "3y", "all-upfront"),)
    assert parse_topology(
        {**base, "reserved": [{"node_type": "cache.small", "count": 1}]}
    ).reserved[0] == Reservation("cache.small", 1, "1y", "no-upfront")
    for item, field in [
        ({"node_type": "cache.x9.huge", "count": 1}, "reserved[0].node_type"),
        ({"node_type": "cache.small", "count": 0}, "reserved[0].count"),
        ({"node_type": "cache.small", "count": 1, "term": "2y"}, "reserved[0].term"),
        ({"node_type": "cache.small", "count": 1, "payment": "half"}, "reserved[0].payment"),
        ({"node_type": "cache.small", "count": 1, "region": "x"}, "reserved[0].region"),
        ("cache.small", "reserved[0]"),
    ]:
        with pytest.raises(TopologyError) as err:
            parse_topology({**base, "reserved": [item]})
        assert err.value.field == field


def test_node_segments_follow_the_event_log() -> None:
    events = [
        ev("cluster_created", 0.0, nodes=6),
        ev("node_exited", 100.0, node="x"),  # a crash does not stop the meter
        ev("node_added", H, node="n7"),
        ev("node_removed", 2 * H, node="n7"),
        ev("cluster_stopped", 3 * H),
        ev("cluster_created", 5 * H, nodes=6),
    ]
    segs = node_segments(events, now=6 * H)
    assert segs == [
        Segment(0.0, H, 6),
        Segment(H, 2 * H, 7),
        Segment(2 * H, 3 * H, 6),
        Segment(5 * H, 6 * H, 6),
    ]
    assert node_segments([], now=H) == []
    assert node_segments([ev("cluster_created", "bad", nodes=3)], now=H) == []


def test_on_demand_only() -> None:
    b = bill(
        node_type="cache.small",
        segments=[Segment(0, 2 * H, 6)],
        reserved=(),
        prices=PRICES,
        start=0,
        end=2 * H,
    )
    (line,) = b.nodes
    assert line.priced_as == "cache.t4g.small"
    assert line.node_hours == pytest.approx(12)
    assert line.on_demand_usd == pytest.approx(12 * 0.032)
    assert b.total_usd == pytest.approx(12 * 0.032)


def test_reservations_cover_running_nodes_first_and_are_paid_unused() -> None:
    # 3 nodes for 1 h, then 1 node for 1 h; 2 reserved (by the service's name) at half price
    segs = [Segment(0, H, 3), Segment(H, 2 * H, 1)]
    r = Reservation("cache.t4g.small", 2, "1y", "no-upfront")
    other = Reservation("cache.m7g.large", 1, "3y", "all-upfront")  # matches nothing
    b = bill(
        node_type="cache.small",
        segments=segs,
        reserved=(r, other),
        prices=PRICES,
        start=0,
        end=2 * H,
    )
    (line,) = b.nodes
    assert line.node_hours == pytest.approx(4)
    assert line.reserved_hours == pytest.approx(2 + 1)  # min(3, 2) + min(1, 2)
    assert line.on_demand_hours == pytest.approx(1)
    res, unused = b.reserved
    assert res.hours == pytest.approx(4) and res.used_hours == pytest.approx(3)
    assert res.hourly_usd == pytest.approx(0.016) and res.usd == pytest.approx(4 * 0.016)
    assert unused.used_hours == 0 and unused.usd == pytest.approx(2 * 0.158 * 0.25)
    assert b.total_usd == pytest.approx(1 * 0.032 + 4 * 0.016 + 2 * 0.158 * 0.25)
    assert b.components()["reserved_nodes"] == pytest.approx(res.usd + unused.usd)


def test_window_clips_segments() -> None:
    b = bill(
        node_type="cache.small",
        segments=[Segment(0, 10 * H, 2)],
        reserved=(),
        prices=PRICES,
        start=8 * H,
        end=9 * H,
    )
    assert b.nodes[0].node_hours == pytest.approx(2)


def test_one_snapshot_is_free() -> None:
    gb = cost.GB
    one = StoredSnapshot("a", 2 * gb, 0, None)
    assert billable_snapshot_byte_seconds([one], 0, H) == 0
    two = [one, StoredSnapshot("b", gb, H, 2 * H)]
    # during [H, 2H] both are stored: the smaller one (1 GB) is billed
    assert billable_snapshot_byte_seconds(two, 0, 3 * H) == pytest.approx(gb * H)
    b = bill(
        node_type="cache.small",
        segments=[],
        reserved=(),
        prices=PRICES,
        start=0,
        end=cost.HOURS_PER_MONTH * H,
        snapshots=[one, StoredSnapshot("b", gb, 0, None)],
    )
    assert b.snapshot_gb_months == pytest.approx(1.0)
    assert b.snapshot_usd == pytest.approx(0.1)


def test_snapshot_history_from_events_and_manifests() -> None:
    events = [
        ev("snapshot_completed", 10.0, snapshot="old", bytes=100),
        ev("snapshot_deleted", 50.0, snapshot="old"),
        ev("snapshot_completed", 20.0, snapshot="kept", bytes=7),
        ev("snapshot_completed", 30.0, snapshot="vanished", bytes=9),  # no deletion seen: skipped
    ]
    got = snapshot_history(events, [("kept", 7, 20.0)])
    assert got == [StoredSnapshot("old", 100, 10.0, 50.0), StoredSnapshot("kept", 7, 20.0, None)]


def test_cross_zone_bytes_and_dict() -> None:
    b = bill(
        node_type="cache.small",
        segments=[],
        reserved=(),
        prices=PRICES,
        start=0,
        end=H,
        cross_zone_bytes=3 * cost.GB,
    )
    assert b.cross_zone_usd == pytest.approx(0.03)
    d = b.to_dict()
    assert d["cross_zone"] == {"bytes": 3 * cost.GB, "usd": 0.03}
    assert d["total_usd"] == pytest.approx(0.03)


def test_month_start_is_the_first_of_the_month_utc() -> None:
    import datetime as dt

    from cachefleet.ops.cost import month_start

    now = dt.datetime(2026, 11, 29, 15, 4, 5, tzinfo=dt.UTC).timestamp()
    assert month_start(now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp()
    first = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
    assert month_start(first) == first
