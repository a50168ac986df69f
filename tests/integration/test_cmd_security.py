"""Security on a cluster-mode-disabled group: TLS passed through the primary and reader
endpoints to the nodes (the client verifies the node's certificate, which carries the
endpoints' address), the AUTH token and users enforced by the engines themselves (NOAUTH,
WRONGPASS, NOPERM as the engine says them), the blocked commands, allowed_sources at the
endpoints (and, as root, on the node ports), token and certificate rotation, and a failover
under TLS with writes going on through the primary endpoint. One group serves every test, in
order (the failover last)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import RunningCluster, cli, cluster_up, wait_for

from cachefleet.ops import firewall
from cachefleet.ops.certs import served_serial
from cachefleet.tls import certificate_serial, engine_has_tls, tls_files

pytestmark = pytest.mark.integration

TLS_ENGINE = shutil.which("redis-server")
if TLS_ENGINE is None or not engine_has_tls(TLS_ENGINE):
    pytest.skip("needs an engine built with TLS (Debian's redis-server)", allow_module_level=True)

TOKEN = "groupTok-0123456789abcdef"
TOKEN_B = "groupTok-B-fedcba987654321"
APP_PW = "app-password-0123456789"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    tmp = tmp_path_factory.mktemp("cmdsec")
    name = f"s{uuid.uuid4().hex[:8]}"
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "app.pw").write_text(APP_PW + "\n")
    topo = {
        "name": name,
        "engine": "redis",
        "cluster_mode": "disabled",
        "zones": ["az-a", "az-b", "az-c"],
        "replicas": 1,
        "node_type": "cache.micro",
        "endpoints": {"primary": {"port": "auto"}, "reader": {"port": "auto"}},
        "security": {
            "tls": True,
            "auth_token_file": "token",
            "users": [
                {
                    "name": "app",
                    "password_files": ["app.pw"],
                    "access": "on ~app:* +@all -@dangerous",
                }
            ],
            "allowed_sources": ["127.0.0.1/32"],
        },
    }
    with cluster_up(tmp, topo) as c:
        yield c
    if firewall.available() is None:
        listed = os.popen("iptables -w -S INPUT").read()
        assert firewall.tag(name) not in listed


def ca(c: RunningCluster) -> str:
    return str(tls_files(c.cdir.root).ca)


def endpoint(c: RunningCluster, kind: str, **kw: Any) -> redis.Redis:
    """A TLS client of an endpoint, verifying the certificate against the group's CA and the
    endpoint's address (what the node's certificate must carry)."""
    plan = c.plan
    port = plan.router_port if kind == "primary" else plan.reader_port
    assert port is not None
    kw.setdefault("socket_timeout", 5)
    return redis.Redis(
        host=plan.router_host, port=port, ssl=True, ssl_ca_certs=ca(c),
        ssl_cert_reqs="required", ssl_check_hostname=True, decode_responses=True, **kw,
    )  # fmt: skip


def test_status_names_the_ca_and_a_tls_redis_cli_line(group: RunningCluster) -> None:
    assert f"redis-cli --tls --cacert {ca(group)} --askpass" in group.up_output
    assert "security: TLS (CA" in group.up_output
    text = cli("status", group.name, "--state-dir", str(group.state_dir)).stdout
    assert f"--tls --cacert {ca(group)}" in text
    assert "redis-cli -c" not in text  # a group: no cluster redirects
    sec = group.status()["security"]
    assert sec["tls"] and sec["auth"] and sec["users"] == ["app"]


def test_token_writes_through_primary_and_reads_through_reader(group: RunningCluster) -> None:
    w = endpoint(group, "primary", password=TOKEN)
    assert w.set("greeting", "hello")
    assert w.execute_command("WAIT", 1, 2000) == 1
    assert w.info("replication")["role"] == "master"
    r = endpoint(group, "reader", password=TOKEN)
    assert r.get("greeting") == "hello"
    assert r.info("replication")["role"] == "slave"
    # the handshake was with a node: its certificate is the one the endpoint presents
    serial = certificate_serial(tls_files(group.cdir.root).cert.read_bytes())
    assert served_serial(*group.router) == serial


def _raw(c: RunningCluster, port: int, request: bytes) -> bytes:
    """`request` sent as is over TLS through an endpoint: the first reply, as the engine
    wrote it."""
    ctx = ssl.create_default_context(cafile=ca(c))
    host = c.plan.router_host
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.sendall(request)
        return sock.recv(256)


def test_no_token_gets_noauth_and_a_wrong_one_wrongpass(group: RunningCluster) -> None:
    plan = group.plan
    assert plan.reader_port is not None
    for port in (plan.router_port, plan.reader_port):
        assert _raw(group, port, b"GET greeting\r\n").startswith(b"-NOAUTH")
        wrong = b"AUTH not-the-token-0123456789\r\n"
        assert _raw(group, port, wrong).startswith(b"-WRONGPASS")
        assert _raw(group, port, f"AUTH {TOKEN}\r\nPING\r\n".encode()).startswith(b"+OK")
    with pytest.raises(redis.AuthenticationError):  # redis-py's HELLO 3, refused alike
        endpoint(group, "primary").get("greeting")
    with pytest.raises(redis.AuthenticationError):
        endpoint(group, "reader", password="not-the-token-0123456789").ping()


def test_user_gets_the_engines_noperm(group: RunningCluster) -> None:
    app = endpoint(group, "primary", username="app", password=APP_PW)
    assert app.set("app:1", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.set("other:1", "x")  # outside ~app:*
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.flushall()  # -@dangerous
    reader = endpoint(group, "reader", username="app", password=APP_PW)
    wait_for(lambda: reader.get("app:1") == "x", 5, "the write on the replica")
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.get("other:1")


def test_blocked_commands_are_refused_config_get_allowed(group: RunningCluster) -> None:
    w = endpoint(group, "primary", password=TOKEN)
    with pytest.raises(redis.exceptions.NoPermissionError):
        w.config_set("maxmemory-policy", "noeviction")
    with pytest.raises(redis.exceptions.NoPermissionError):
        w.execute_command("REPLICAOF", "NO", "ONE")
    assert "maxmemory" in w.config_get("maxmemory")


def _handshake_from(source: str, address: tuple[str, int], cafile: str) -> bool:
    """A TLS handshake with `address` from `source`: completed or not (reset, refused)."""
    ctx = ssl.create_default_context(cafile=cafile)
    try:
        with (
            socket.create_connection(address, timeout=5, source_address=(source, 0)) as raw,
            ctx.wrap_socket(raw, server_hostname=address[0]),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def test_allowed_sources_refuse_another_loopback_address(group: RunningCluster) -> None:
    plan = group.plan
    assert plan.reader_port is not None
    for port in (plan.router_port, plan.reader_port):
        assert _handshake_from("127.0.0.1", (plan.router_host, port), ca(group))
        assert not _handshake_from("127.0.0.2", (plan.router_host, port), ca(group))
    assert endpoint(group, "primary", password=TOKEN).ping()  # the endpoints serve on
    if firewall.available() is not None:
        assert "nodes rely on their zone address binding" in group.up_output
        return
    assert "iptables rules on every node port" in group.up_output
    node = plan.nodes[0]
    assert _handshake_from("127.0.0.1", (node.host, node.port), ca(group))
    assert not _handshake_from("127.0.0.2", (node.host, node.port), ca(group))


def test_token_rotation_and_certificate_rotation(group: RunningCluster, tmp_path: Path) -> None:
    new = tmp_path / "token"
    new.write_text(TOKEN_B + "\n")
    args = ("--token-file", str(new), "--state-dir", str(group.state_dir))
    cli("auth", group.name, *args, "--strategy", "rotate")
    assert endpoint(group, "primary", password=TOKEN).ping()
    assert endpoint(group, "reader", password=TOKEN_B).ping()
    cli("auth", group.name, *args, "--strategy", "set")
    assert endpoint(group, "primary", password=TOKEN_B).ping()
    with pytest.raises(redis.AuthenticationError):
        endpoint(group, "primary", password=TOKEN).ping()
    before = served_serial(*group.router)
    cli("certs", "rotate", group.name, "--state-dir", str(group.state_dir))
    serial = certificate_serial(tls_files(group.cdir.root).cert.read_bytes())
    assert serial != before
    plan = group.plan
    assert plan.reader_port is not None
    assert served_serial(plan.router_host, plan.router_port) == serial
    assert served_serial(plan.router_host, plan.reader_port) == serial


def test_graceful_failover_under_tls(group: RunningCluster) -> None:
    old = group.status()["shards"][0]["primary"]
    w = endpoint(group, "primary", password=TOKEN_B)
    assert w.set("graceful", "1")
    out = cli("failover", group.name, "--state-dir", str(group.state_dir)).stdout
    assert f"primary {old['name']}" in out

    def moved() -> bool:
        try:
            c = endpoint(group, "primary", password=TOKEN_B, socket_timeout=2)
            return bool(c.info("replication")["role"] == "master" and c.get("graceful") == "1")
        except redis.RedisError:
            return False

    wait_for(moved, 10, "the primary endpoint on the new primary")
    assert group.status()["shards"][0]["primary"]["name"] != old["name"]


def test_killed_primary_fails_over_under_tls(group: RunningCluster) -> None:
    st = group.status()
    old = st["shards"][0]["primary"]
    w = endpoint(group, "primary", password=TOKEN_B, socket_timeout=2)
    assert w.set("before", "1")
    assert w.execute_command("WAIT", 1, 2000) == 1
    pid = int(group.cdir.pid_file(f"node.{old['name']}").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    written = None
    for i in range(300):  # bounded: about 30 s
        try:
            c = endpoint(group, "primary", password=TOKEN_B, socket_timeout=2)
            c.set(f"after:{i}", "1")
            if c.info("replication")["role"] == "master" and c.get("before") == "1":
                written = i
                break
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            pass
        time.sleep(0.1)
    assert written is not None, group.diagnosis()
    elapsed = time.monotonic() - t0
    new = wait_for(
        lambda: (p := group.status()["shards"][0]["primary"]) and p["name"] != old["name"] and p,
        20,
        "a new primary in status",
    )
    assert new["name"] != old["name"]
    # the old primary comes back as the new one's replica, syncing over TLS as the admin user
    host, port = old["address"].rsplit(":", 1)
    auth = group.cdir.admin()
    node = redis.Redis(
        host=host, port=int(port), username=auth.user, password=auth.password, ssl=True,
        ssl_ca_certs=ca(group), socket_timeout=2, decode_responses=True,
    )  # fmt: skip

    def follows() -> bool:
        try:
            info = node.info("replication")
        except redis.RedisError:
            return False
        return info["role"] == "slave" and info.get("master_link_status") == "up"

    wait_for(follows, 30, f"{old['name']} replicating {new['name']}")
    assert node.get("before") == "1"
    print(f"writes through the primary endpoint resumed {elapsed:.2f}s after the SIGKILL")
