"""`metrics: {port: auto|N}` in the topology."""

from __future__ import annotations

from typing import Any

import pytest

from cachefleet.errors import TopologyError
from cachefleet.topology import parse_topology


def topo(**extra: Any) -> dict[str, Any]:
    return {"name": "c", "zones": ["az-a", "az-b", "az-c"], **extra}


@pytest.mark.parametrize(
    ("section", "port"),
    [(None, None), ({}, None), ({"port": "auto"}, None), ({"port": 9464}, 9464)],
)
def test_metrics_port(section: dict[str, Any] | None, port: int | None) -> None:
    data = topo() if section is None else topo(metrics=section)
    assert parse_topology(data).metrics.port == port


@pytest.mark.parametrize(
    ("section", "field", "reason"),
    [
        ({"port": 0}, "metrics.port", "out of range"),
        ({"port": 70000}, "metrics.port", "out of range"),
        ({"port": "9464"}, "metrics.port", "integer or 'auto'"),
        ({"port": True}, "metrics.port", "integer or 'auto'"),
        ({"interval": 5}, "metrics.interval", "unknown field"),
        ([9464], "metrics", "must be a mapping"),
    ],
)
def test_bad_metrics_section_names_the_field(section: Any, field: str, reason: str) -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology(topo(metrics=section))
    assert err.value.field == field
    assert reason in err.value.message
