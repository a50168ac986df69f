"""A cluster whose control bus is an external broker (``bus.url``) that asks for a password
and speaks MQTT over TLS only, verifying the client's certificate: the cluster comes up and
fails over through it, its secrets stay private, and a wrong password is refused at `up`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from helpers import RunningCluster, base_topology, cli, wait_for

from cachefleet import ports
from cachefleet.tls import ensure_certificates, tls_files

pytestmark = pytest.mark.integration

PASSWORD = "bus-password-0123456789"


def _up(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A standalone broker: one user, MQTT over TLS only (certificates from its own CA)."""
    d = tmp_path_factory.mktemp("broker")
    files = ensure_certificates(d, "external-broker", [])  # 127.0.0.1 as an IP SAN
    (d / "broker.pw").write_text(PASSWORD + "\n")
    port = ports.allocate_one()
    log = (d / "broker.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachefleet.broker", "--port", str(port),
         "--username", "cachefleet", "--password-file", str(d / "broker.pw"),
         "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(files.ca)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    try:
        assert _up(port), "the external broker did not start"
        yield {"port": port, "dir": d, "files": files}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def bus_section(broker: dict[str, Any], tmp: Path, password: str) -> dict[str, Any]:
    (tmp / "bus.pw").write_text(password + "\n")
    files = broker["files"]
    return {
        "url": f"mqtt://127.0.0.1:{broker['port']}",
        "username": "cachefleet",
        "password_file": "bus.pw",  # relative to the topology file
        # the broker's CA signs the client certificate it verifies too
        "tls": {"ca_file": str(files.ca), "cert_file": str(files.cert), "key_file": str(files.key)},
    }


def test_a_cluster_on_an_external_tls_broker_with_a_password_comes_up_and_fails_over(
    broker: dict[str, Any], tmp_path: Path, cluster_factory: Any
) -> None:
    c: RunningCluster = cluster_factory(
        zones=["az-a", "az-b"], shards=1, bus=bus_section(broker, tmp_path, PASSWORD)
    )
    before = c.status()
    assert before["state"] == "available"
    # the login and TLS files were read once into the state dir, private to the user
    root = c.cdir.root
    for path in (root / "bus.login", root / "bus-tls" / "client.key"):
        assert path.stat().st_mode & 0o077 == 0, path
    assert json.loads((root / "bus.login").read_text())["password"] == PASSWORD
    assert (root / "bus-tls").stat().st_mode & 0o077 == 0
    out = cli("status", c.name, "--json", "--state-dir", str(c.state_dir), check=False).stdout
    assert PASSWORD not in out and PASSWORD not in c.cdir.plan_path.read_text()

    host, port = c.router
    app = redis.Redis(host=host, port=port, socket_timeout=10)
    assert app.set("k", "before")
    old = before["shards"][0]["primary"]
    replica = before["shards"][0]["replicas"][0]
    # agents, sentinels and the router meet on the external broker: a failover needs them all
    os.kill(int(c.cdir.pid_file(f"node.{old['name']}").read_text()), signal.SIGKILL)

    def promoted() -> bool:
        shard = c.status()["shards"][0]
        return shard["primary"] is not None and shard["primary"]["name"] == replica["name"]

    wait_for(promoted, 30, "the replica promoted through the external bus")

    def writes() -> bool:
        try:
            return bool(app.set("k", "after"))
        except redis.RedisError:
            return False

    wait_for(writes, 20, "writes through the router after the failover")
    assert app.get("k") == b"after"
    app.close()


def test_a_wrong_bus_password_is_refused_at_up_before_anything_starts(
    broker: dict[str, Any], tmp_path: Path
) -> None:
    name = f"xb{os.getpid() % 100000}"
    topo = base_topology(
        name, zones=["az-a"], shards=1, replicas_per_shard=0,
        bus=bus_section(broker, tmp_path, "not-the-password-000"),
    )  # fmt: skip
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(topo))
    state = tmp_path / "state"
    proc = cli("up", str(path), "--detach", "--state-dir", str(state), check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "refused the login" in text and "bus.password_file" in text, text
    assert "not-the-password" not in text
    assert not (state / name).exists()  # nothing made, nothing started
    ps = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    assert not ps.stdout.strip()


def test_a_bus_ca_that_did_not_sign_the_broker_is_refused_at_up(
    broker: dict[str, Any], tmp_path: Path
) -> None:
    other = tls_files(tmp_path)
    ensure_certificates(tmp_path, "someone-else", [])
    bus = bus_section(broker, tmp_path, PASSWORD)
    bus["tls"] = {"ca_file": str(other.ca)}
    topo = base_topology(f"xc{os.getpid() % 100000}", zones=["az-a"], shards=1, bus=bus)
    topo["replicas_per_shard"] = 0
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(topo))
    proc = cli("up", str(path), "--detach", "--state-dir", str(tmp_path / "s"), check=False)
    assert proc.returncode != 0
    assert "bus.tls" in proc.stdout + proc.stderr
