"""TLS in transit: a per-cluster CA and the certificate its nodes and router present, and the
client contexts every cachefleet process uses to reach them.

``<state-dir>/<cluster>/tls/`` (mode 0700) holds ``ca.pem`` (what clients verify against),
``ca.key``, ``server.pem`` and ``server.key`` (keys 0600). The server certificate carries every
zone address and 127.0.0.1 (the router's, and a cluster-mode-disabled group's endpoints',
which pass the nodes' TLS through to the client) as IP SANs, so clients verify host names. Which
addresses speak TLS is learnt when a process loads the cluster's plan
(:func:`remember_tls`), so every connection helper asks :func:`client_context` and needs no
new argument.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachefleet.plan import Plan

VALID_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def tls_dir(root: Path) -> Path:
    return root / "tls"


def tls_files(root: Path) -> TlsFiles:
    d = tls_dir(root)
    return TlsFiles(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_certificates(root: Path, cluster: str, addresses: Iterable[str]) -> TlsFiles:
    """The cluster's CA and server certificate, made once (keys 0600 in a 0700 directory)."""
    from cryptography import x509  # only TLS clusters need it
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = tls_files(root)
    if files.ca.exists() and files.cert.exists() and files.key.exists():
        return files
    d = tls_dir(root)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cachefleet {cluster} CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(
        d / "ca.key",
        ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        0o600,
    )
    _write(files.ca, ca.public_bytes(pem), 0o644)
    issue_server_certificate(root, cluster, addresses)
    return files


def issue_server_certificate(root: Path, cluster: str, addresses: Iterable[str]) -> int:
    """A new server certificate (and key) signed by the cluster's CA, every zone address and
    127.0.0.1 as IP SANs, put in place of the current one; returns its serial number. The key
    goes in first, then the certificate, each by an atomic rename."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = tls_files(root)
    d = tls_dir(root)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    ips = sorted({*addresses, "127.0.0.1"})
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} nodes")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in ips]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for path, data, mode in (
        (files.key, key_pem, 0o600),
        (files.cert, cert.public_bytes(pem), 0o644),
    ):
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        _write(tmp, data, mode)
        tmp.replace(path)
    return int(cert.serial_number)


def certificate_serial(pem_or_der: bytes) -> int:
    """The serial number of a certificate (PEM or DER)."""
    from cryptography import x509

    if pem_or_der.lstrip().startswith(b"-----"):
        return int(x509.load_pem_x509_certificate(pem_or_der).serial_number)
    return int(x509.load_der_x509_certificate(pem_or_der).serial_number)


def engine_has_tls(binary: str, engine: str = "redis") -> bool:
    """Whether an engine binary was built with TLS. Valkey/Redis: one with it fails on the
    (absent) certificate, one without says it has no TLS (or refuses ``tls-port``).
    memcached: its help lists ``--enable-ssl`` only when built with TLS."""
    if engine == "memcached":
        try:
            out = subprocess.run(
                [binary, "-h"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return "--enable-ssl" in out.stdout + out.stderr
    try:
        out = subprocess.run(
            [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent",
             "--tls-key-file", "/nonexistent", "--tls-ca-cert-file", "/nonexistent"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    text = (out.stdout + out.stderr).lower()
    return "failed to load certificate" in text or "failed to configure tls" in text


def no_tls_fix(engine: str, binary: str) -> str:
    """What `up` says when `binary` has no TLS: the fix, named."""
    if engine == "memcached":
        return (
            f"{binary} is built without TLS: use Debian's memcached (apt-get install "
            "memcached; /usr/bin/memcached is built with TLS) or set engine_binary to a "
            "memcached built with --enable-tls"
        )
    return (
        f"{binary} is built without TLS: use `engine: redis` with Debian's redis-server "
        "(apt-get install redis-server; /usr/bin/redis-server) or set engine_binary to a "
        "TLS build"
    )


def memcached_tls_args(files: TlsFiles) -> list[str]:
    """memcached's options for TLS on every listener, presenting the cluster's node
    certificate (``refresh_certs`` reloads it from the same paths)."""
    return ["-Z", "-o", f"ssl_chain_cert={files.cert},ssl_key={files.key}"]


# -- which addresses speak TLS (per process) ---------------------------------------------------

_addresses: dict[tuple[str, int], Path] = {}
_contexts: dict[Path, ssl.SSLContext] = {}


def remember_tls(ca: Path, addresses: Iterable[tuple[str, int]]) -> None:
    """These addresses (a TLS cluster's nodes and router) speak TLS, verified against `ca`."""
    for addr in addresses:
        _addresses[addr] = ca


def client_context(host: str, port: int) -> ssl.SSLContext | None:
    """The context to reach host:port with (None: plain TCP)."""
    ca = _addresses.get((host, port))
    if ca is None:
        return None
    ctx = _contexts.get(ca)
    if ctx is None:
        ctx = _contexts[ca] = ssl.create_default_context(cafile=str(ca))
    return ctx


def stream_options(host: str, port: int) -> dict[str, Any]:
    """``asyncio.open_connection`` keyword arguments for host:port (TLS, verified against the
    cluster's CA and the address as host name, when it speaks TLS)."""
    ctx = client_context(host, port)
    return {} if ctx is None else {"ssl": ctx, "server_hostname": host}


def ca_for(host: str, port: int) -> Path | None:
    return _addresses.get((host, port))


def server_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def tls_addresses(plan: Plan) -> list[tuple[str, int]]:
    """Every address of the cluster that speaks TLS: its nodes, its router (a group's
    primary and reader endpoints: they pass the nodes' TLS through) and its embedded
    broker."""
    out = [(n.host, n.port) for n in plan.nodes] + [(plan.router_host, plan.router_port)]
    if plan.reader_port is not None:
        out.append((plan.router_host, plan.reader_port))
    if plan.topology.bus.embedded:
        out.append((plan.bus_host, plan.bus_port))
    return out
