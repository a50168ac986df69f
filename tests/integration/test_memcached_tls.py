"""A memcached cluster with ``security: {tls: true}``: Debian's memcached built with TLS, the
configuration endpoint terminating TLS, Auto Discovery and node certificates with IP SANs.

One cluster for the module (2 nodes over 2 zones); certificate rotation runs last.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import RunningCluster, cli, cluster_up, wait_for
from pymemcache.client.base import Client

from cachefleet.tls import certificate_serial, engine_has_tls

pytestmark = pytest.mark.integration

MEMCACHED = shutil.which("memcached")
if MEMCACHED is None or not engine_has_tls(MEMCACHED, "memcached"):
    pytest.skip("needs a memcached built with TLS (Debian's)", allow_module_level=True)


@pytest.fixture(scope="module")
def mc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    tmp = tmp_path_factory.mktemp("mctls")
    name = f"mt{os.getpid() % 100000}"
    topo = {
        "name": name,
        "engine": "memcached",
        "zones": ["az-a", "az-b"],
        "nodes": 2,
        "node_type": "cache.micro",
        "parameters": {"threads": 1},
        "ports": {"base": "auto"},
        "router": {"port": "auto", "workers": 1},
        "security": {"tls": True},
    }
    with cluster_up(tmp, topo) as cluster:
        yield cluster


def ca_path(c: RunningCluster) -> Path:
    return c.cdir.root / "tls" / "ca.pem"


def context(c: RunningCluster) -> ssl.SSLContext:
    """What an application builds: verify against the cluster's CA (host names included)."""
    return ssl.create_default_context(cafile=str(ca_path(c)))


def tls_request(c: RunningCluster, addr: tuple[str, int], data: bytes) -> tuple[bytes, bytes]:
    """(reply up to END, or the VERSION line, and the peer's certificate DER) over a verified
    TLS connection."""
    with (
        socket.create_connection(addr, timeout=5) as raw,
        context(c).wrap_socket(raw, server_hostname=addr[0]) as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        s.sendall(data)
        out = b""
        for _ in range(1000):  # bounded
            if out.endswith((b"END\r\n", b"ERROR\r\n")) or (
                out.startswith(b"VERSION ") and out.endswith(b"\r\n")
            ):
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out, der


def plain_reply(addr: tuple[str, int]) -> bytes:
    """What a plain-text client gets: never a memcached reply."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"version\r\n")
        out = b""
        try:
            for _ in range(100):
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def test_up_says_tls_and_status_prints_the_ca(mc: RunningCluster) -> None:
    assert f"TLS (CA {ca_path(mc)})" in mc.up_output
    st = mc.status()
    assert st["security"]["tls"] is True
    assert st["security"]["ca"] == str(ca_path(mc))
    assert all(n["healthy"] for n in st["nodes"])  # health probes speak TLS
    text = cli("status", mc.name, "--state-dir", str(mc.state_dir)).stdout
    assert f"CA {ca_path(mc)}" in text and "openssl s_client" in text


def test_set_and_get_through_the_configuration_endpoint_over_tls(mc: RunningCluster) -> None:
    client = Client(mc.router, tls_context=context(mc), timeout=5)
    try:
        for i in range(50):
            assert client.set(f"k{i}", f"v{i}".encode())
        assert client.get_many([f"k{i}" for i in range(50)]) == {
            f"k{i}": f"v{i}".encode() for i in range(50)
        }
    finally:
        client.close()


def test_a_plain_text_client_is_refused(mc: RunningCluster) -> None:
    assert not plain_reply(mc.router).startswith(b"VERSION")
    client = Client(mc.router, timeout=3)
    with pytest.raises(Exception):  # noqa: B017 - closed, reset or garbage: any failure
        client.set("plain", b"x")
        client.get("plain")
    client.close()
    for n in mc.plan.nodes:  # the nodes too
        assert not plain_reply((n.host, n.port)).startswith(b"VERSION")


def test_auto_discovery_over_tls_lists_the_nodes(mc: RunningCluster) -> None:
    reply, _ = tls_request(mc, mc.router, b"config get cluster\r\n")
    header, rest = reply.split(b"\r\n", 1)
    assert header.startswith(b"CONFIG cluster 0 ")
    body = rest[: int(header.split()[3])].decode()
    entries = body.split("\n")[1].split()
    listed = {(ip, int(port)) for _, ip, port in (e.split("|") for e in entries)}
    assert listed == {(n.host, n.port) for n in mc.plan.nodes}


def test_a_node_presents_a_certificate_for_its_address(mc: RunningCluster) -> None:
    for n in mc.plan.nodes:
        reply, _ = tls_request(mc, (n.host, n.port), b"stats\r\n")  # verified: IP SAN
        assert b"STAT pid " in reply
        with (
            socket.create_connection((n.host, n.port), timeout=5) as raw,
            context(mc).wrap_socket(raw, server_hostname=n.host) as s,
        ):
            sans = {
                v for k, v in (s.getpeercert() or {}).get("subjectAltName", ()) if k == "IP Address"
            }
        assert n.host in sans
    # a name the certificate does not carry fails verification
    n = mc.plan.nodes[0]
    with (
        socket.create_connection((n.host, n.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context(mc).wrap_socket(raw, server_hostname="10.9.9.9").close()


def test_the_supervisor_scrapes_the_nodes_over_tls(mc: RunningCluster) -> None:
    st = wait_for(lambda: (s := mc.status())["metrics"]["address"] and s, 30, "metrics address")
    address = st["metrics"]["address"]

    def up_nodes() -> set[str]:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return set(re.findall(r'^cachefleet_node_up\{[^}]*node="([^"]+)"[^}]*\} 1\.0$', text, re.M))

    names = {n.name for n in mc.plan.nodes}
    wait_for(lambda: up_nodes() >= names, 30, "every node up in /metrics")


def test_certs_rotate_renews_the_nodes_and_the_endpoint(mc: RunningCluster) -> None:
    before = {n.name: certificate_serial(tls_request(mc, (n.host, n.port), b"version\r\n")[1])
              for n in mc.plan.nodes}  # fmt: skip
    out = cli("certs", "rotate", mc.name, "--state-dir", str(mc.state_dir))
    serial = int(re.search(r"new server certificate ([0-9a-f]+)", out.stdout).group(1), 16)  # type: ignore[union-attr]
    for n in mc.plan.nodes:
        reply, der = tls_request(mc, (n.host, n.port), b"version\r\n")
        assert reply.startswith(b"VERSION ")
        assert certificate_serial(der) == serial != before[n.name]
    _, der = tls_request(mc, mc.router, b"version\r\n")
    assert certificate_serial(der) == serial
    client = Client(mc.router, tls_context=context(mc), timeout=5)
    try:
        assert client.set("after-rotate", b"1") and client.get("after-rotate") == b"1"
    finally:
        client.close()


def test_openssl_line_of_status_works(mc: RunningCluster) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    host, port = mc.router
    out = subprocess.run(
        ["openssl", "s_client", "-quiet", "-CAfile", str(ca_path(mc)), "-verify_ip", host,
         "-verify_return_error", "-connect", f"{host}:{port}"],
        input=b"version\r\nquit\r\n", capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert b"VERSION " in out.stdout, out.stderr


def test_tls_on_a_memcached_without_it_is_refused_and_names_the_fix(tmp_path: Path) -> None:
    fake = tmp_path / "memcached-notls"  # answers -h as a build without TLS does
    fake.write_text("#!/bin/sh\necho 'memcached 1.6.18'\necho '-p, --port=<num> TCP port'\n")
    fake.chmod(0o755)
    name = f"mn{os.getpid() % 100000}"
    topo = {
        "name": name,
        "engine": "memcached",
        "engine_binary": str(fake),
        "zones": ["az-a"],
        "nodes": 1,
        "node_type": "cache.micro",
        "security": {"tls": True},
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(topo))
    state = tmp_path / "state"
    proc = cli("up", str(path), "--detach", "--state-dir", str(state), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "security.tls" in text and "built without TLS" in text
    assert "apt-get install memcached" in text
    assert not (state / name).exists()
