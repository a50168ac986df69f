"""Who may publish what on the control bus, and the bus credentials' store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cachefleet import buscreds
from cachefleet.broker import broker_config
from cachefleet.buscreds import (
    BUS_ROLES,
    bus_login,
    bus_publish_allowed,
    bus_secrets_path,
    ensure_bus_secrets,
    remember_bus,
    set_bus_role,
    topic_matches,
)
from cachefleet.tls import tls_files


@pytest.mark.parametrize(
    ("topic", "pattern", "ok"),
    [
        ("nodes/n1/state", "nodes/+/state", True),
        ("nodes/n1/other", "nodes/+/state", False),
        ("nodes/n1/state/x", "nodes/+/state", False),
        ("layout", "#", True),
        ("a/b/c", "a/#", True),
        ("events", "events", True),
        ("events2", "events", False),
    ],
)
def test_topic_matching(topic: str, pattern: str, ok: bool) -> None:
    assert topic_matches(topic, pattern) is ok


@pytest.mark.parametrize(
    ("role", "topic", "ok"),
    [
        ("agent", "nodes/c-0001-001/state", True),
        ("agent", "agents/az-a/state", True),
        ("agent", "events", True),
        ("agent", "layout", False),
        ("agent", "sentinels/s1/hello", False),
        ("agent", "failover/1/votes", False),
        ("sentinel", "layout", True),
        ("sentinel", "failover/1/votes", True),
        ("sentinel", "sentinels/s1/hello", True),
        ("sentinel", "nodes/c-0001-001/state", False),
        ("sentinel", "agents/az-a/commands", False),
        ("router", "routers/router-0/state", True),
        ("router", "layout", False),
        ("router", "events", False),
        ("cli", "layout", True),
        ("cli", "agents/az-a/commands", True),
        ("intruder", "events", False),
        (None, "events", False),
    ],
)
def test_each_role_publishes_its_own_topics(role: str | None, topic: str, ok: bool) -> None:
    assert bus_publish_allowed(role, "c", f"cachefleet/c/{topic}") is ok


def test_memcached_agents_publish_the_layout_and_only_there() -> None:
    topic = "cachefleet/c/layout"
    assert bus_publish_allowed("agent", "c", topic, agents_publish_layout=True)
    assert not bus_publish_allowed("agent", "c", topic)
    assert not bus_publish_allowed("router", "c", topic, agents_publish_layout=True)


def test_no_role_publishes_on_another_clusters_bus() -> None:
    assert not bus_publish_allowed("cli", "c", "cachefleet/other/layout")
    assert not bus_publish_allowed("cli", "c", "elsewhere")


def test_store_is_made_once_private_and_per_role(tmp_path: Path) -> None:
    first = ensure_bus_secrets(tmp_path)
    assert set(first) == set(BUS_ROLES) and len(set(first.values())) == len(BUS_ROLES)
    assert stat.S_IMODE(bus_secrets_path(tmp_path).stat().st_mode) == 0o600
    assert ensure_bus_secrets(tmp_path) == first
    assert not list(tmp_path.glob(".bus.secrets.*"))


def test_login_is_the_process_role_for_a_remembered_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buscreds, "_bus_stores", {})
    monkeypatch.setattr(buscreds, "_bus_role", "cli")
    assert bus_login("127.0.0.1", 1) is None
    remember_bus("127.0.0.1", 1, tmp_path)
    roles = ensure_bus_secrets(tmp_path)
    assert bus_login("127.0.0.1", 1) == ("cli", roles["cli"])
    set_bus_role("sentinel")
    assert bus_login("127.0.0.1", 1) == ("sentinel", roles["sentinel"])
    with pytest.raises(ValueError):
        set_bus_role("root")


def test_a_clusters_broker_loads_the_role_plugins(tmp_path: Path) -> None:
    plugins = broker_config("127.0.0.1", 1, tmp_path / "c")["plugins"]
    assert isinstance(plugins, dict)
    assert plugins["cachefleet.busauth.RoleAuthPlugin"] == {"root": str(tmp_path / "c")}
    assert plugins["cachefleet.busauth.RoleTopicPlugin"] == {
        "cluster": "c",
        "agents_publish_layout": False,
    }
    assert not any("Anonymous" in p for p in plugins)


def test_a_tls_clusters_broker_listens_with_tls_only(tmp_path: Path) -> None:
    files = tls_files(tmp_path / "c")
    config = broker_config("127.0.0.1", 1, tmp_path / "c", files)
    listeners = config["listeners"]
    assert isinstance(listeners, dict)
    listener = listeners["default"]
    assert listener["ssl"] is True
    assert listener["certfile"] == str(files.cert) and listener["keyfile"] == str(files.key)
    plain = broker_config("127.0.0.1", 1, tmp_path / "c")["listeners"]
    assert isinstance(plain, dict) and "ssl" not in plain["default"]
