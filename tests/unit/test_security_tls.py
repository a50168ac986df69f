"""The cluster CA and server certificate, the engine's TLS lines, and which addresses a
process reaches over TLS."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cachefleet import tls
from cachefleet.plan import NodeSpec
from cachefleet.tls import client_context, ensure_certificates, remember_tls, tls_files
from shard.config import tls_lines


def test_certificates_carry_every_zone_address_and_verify_against_the_ca(
    tmp_path: Path,
) -> None:
    files = ensure_certificates(tmp_path, "c", ["127.0.1.1", "127.0.2.1"])
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "127.0.1.1", "127.0.2.1"}
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    for key in (files.key, tmp_path / "tls" / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # made once: a second call keeps the same CA (clients keep trusting it)
    again = ensure_certificates(tmp_path, "c", ["127.0.9.1"])
    assert again.ca.read_bytes() == ca.public_bytes(Encoding.PEM)
    # a server context loads them; a client context trusts the CA and checks IP names
    tls.server_context(files)
    ctx = ssl.create_default_context(cafile=str(files.ca))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert ipaddress.ip_address("127.0.1.1") in [ipaddress.ip_address(i) for i in ips]


def test_tls_lines_turn_the_plain_port_off() -> None:
    node = NodeSpec("c-0001-001", 1, 0, "az-a", "127.0.1.1", 7001, 17001)
    files = tls_files(Path("/s/c"))
    lines = tls_lines(node, files)
    assert lines[:2] == ["port 0", "tls-port 7001"]
    assert "tls-replication yes" in lines and "tls-cluster yes" in lines
    assert f"tls-ca-cert-file {files.ca}" in lines


def test_only_remembered_addresses_speak_tls(tmp_path: Path) -> None:
    files = ensure_certificates(tmp_path, "c", ["127.0.1.1"])
    assert client_context("127.0.1.1", 7999) is None
    remember_tls(files.ca, [("127.0.1.1", 7999)])
    ctx = client_context("127.0.1.1", 7999)
    assert ctx is not None and ctx is client_context("127.0.1.1", 7999)
    assert client_context("127.0.1.1", 7998) is None
