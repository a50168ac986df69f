"""An external broker's section of the topology (bus.username, bus.password_file, bus.tls),
its login read once into the state dir, and what every process then connects with."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from cachefleet.broker import broker_config
from cachefleet.buscreds import (
    ExternalBus,
    bus_login,
    bus_tls_context,
    load_bus_login,
    read_bus_login,
    remember_bus,
    save_bus_login,
)
from cachefleet.errors import TopologyError
from cachefleet.tls import ensure_certificates
from cachefleet.topology import parse_topology

URL = "mqtt://127.0.0.1:18830"


def doc(bus: dict[str, Any]) -> dict[str, Any]:
    return {"name": "c", "zones": ["az-a"], "shards": 1, "replicas_per_shard": 0, "bus": bus}


def error(bus: dict[str, Any]) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse_topology(doc(bus), "/etc/cf/t.yaml")
    return info.value


def test_the_section_holds_paths_relative_to_the_topology_file() -> None:
    bus = {
        "url": URL,
        "username": "cf",
        "password_file": "bus.pw",
        "tls": {"ca_file": "ca.pem", "cert_file": "/abs/c.pem", "key_file": "c.key"},
    }
    ext = parse_topology(doc(bus), "/etc/cf/t.yaml").bus.external
    assert ext == ExternalBus(
        "cf", "/etc/cf/bus.pw", "/etc/cf/ca.pem", "/abs/c.pem", "/etc/cf/c.key"
    )
    assert parse_topology(doc({"url": URL}), "/etc/cf/t.yaml").bus.external == ExternalBus()


@pytest.mark.parametrize(
    ("bus", "field", "text"),
    [
        ({"username": "cf", "password_file": "p"}, "bus.username", "external broker"),
        ({"url": "embedded", "tls": {"ca_file": "c"}}, "bus.tls", "external broker"),
        ({"url": URL, "username": "cf"}, "bus.password_file", "required"),
        ({"url": URL, "password_file": "p"}, "bus.username", "required"),
        ({"url": URL, "username": "c f", "password_file": "p"}, "bus.username", "spaces"),
        ({"url": URL, "username": "", "password_file": "p"}, "bus.username", "1-64"),
        ({"url": URL, "username": "cf", "password_file": 3}, "bus.password_file", "path"),
        ({"url": URL, "tls": {}}, "bus.tls.ca_file", "required"),
        ({"url": URL, "tls": "yes"}, "bus.tls", "mapping"),
        ({"url": URL, "tls": {"ca_file": "c", "cert_file": "x"}}, "bus.tls.key_file", "key"),
        ({"url": URL, "tls": {"ca_file": "c", "key_file": "x"}}, "bus.tls.cert_file", "cert"),
        ({"url": URL, "tls": {"ca_file": "c", "verify": False}}, "bus.tls.verify", "unknown"),
    ],
)
def test_mistakes_name_their_field(bus: dict[str, Any], field: str, text: str) -> None:
    exc = error(bus)
    assert exc.field == field and text in str(exc)


def test_secrets_are_read_once_into_the_state_dir_privately(tmp_path: Path) -> None:
    certs = ensure_certificates(tmp_path / "ca", "broker", [])
    (tmp_path / "pw").write_text("s3cret password!\n")
    ext = ExternalBus("cf", str(tmp_path / "pw"), str(certs.ca), str(certs.cert), str(certs.key))
    login = read_bus_login(ext, "t.yaml")
    assert login.credentials == ("cf", "s3cret password!")
    assert "s3cret" not in repr(login)
    root = tmp_path / "cluster"
    root.mkdir()
    save_bus_login(root, login)
    (tmp_path / "pw").write_text("changed-later\n")  # the state dir's copy is what counts
    assert (root / "bus.login").stat().st_mode & 0o777 == 0o600
    assert (root / "bus-tls").stat().st_mode & 0o777 == 0o700
    assert (root / "bus-tls" / "client.key").stat().st_mode & 0o777 == 0o600
    saved = load_bus_login(root)
    assert saved.credentials == ("cf", "s3cret password!")
    assert saved.tls.ca_file == str(root / "bus-tls" / "ca.pem")
    remember_bus("127.0.0.1", 18830, root, external=True)
    assert bus_login("127.0.0.1", 18830) == ("cf", "s3cret password!")
    ctx = bus_tls_context("127.0.0.1", 18830)
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname
    remember_bus("127.0.0.1", 18830, root)  # the same address as an embedded broker
    assert bus_tls_context("127.0.0.1", 18830) is None


def test_an_external_broker_without_a_login_is_plain_and_anonymous(tmp_path: Path) -> None:
    remember_bus("127.0.0.1", 18831, tmp_path, external=True)
    assert bus_login("127.0.0.1", 18831) is None
    assert bus_tls_context("127.0.0.1", 18831) is None


@pytest.mark.parametrize(
    ("content", "field"),
    [(None, "bus.password_file"), ("", "bus.password_file"), ("a\x01b", "bus.password_file")],
)
def test_bad_password_files_name_the_field(tmp_path: Path, content: str | None, field: str) -> None:
    pw = tmp_path / "pw"
    if content is not None:
        pw.write_text(content)
    with pytest.raises(TopologyError) as info:
        read_bus_login(ExternalBus("cf", str(pw)), "t.yaml")
    assert info.value.field == field


def test_bad_tls_files_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TopologyError) as info:
        read_bus_login(ExternalBus(ca_file=str(tmp_path / "junk.pem")), "t.yaml")
    assert info.value.field == "bus.tls.ca_file"
    certs = ensure_certificates(tmp_path / "ca", "broker", [])
    ext = ExternalBus(ca_file=str(certs.ca), cert_file=str(certs.cert), key_file=str(certs.ca))
    with pytest.raises(TopologyError) as info:
        read_bus_login(ext, "t.yaml")
    assert info.value.field == "bus.tls.cert_file"


def test_a_standalone_broker_admits_its_one_user() -> None:
    config = broker_config("127.0.0.1", 1, login=("cf", Path("/p")))
    assert config["plugins"] == {
        "cachefleet.busauth.PasswordAuthPlugin": {"username": "cf", "password_file": "/p"}
    }
