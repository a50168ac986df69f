"""memcached TLS: the topology accepts it, the node's command line, the binary check."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from cachefleet.plan import build_plan
from cachefleet.tls import TlsFiles, engine_has_tls, memcached_tls_args, no_tls_fix
from cachefleet.topology import parse_topology
from shard.config import memcached_argv

TOPO: dict[str, Any] = {
    "name": "sessions",
    "engine": "memcached",
    "zones": ["az-a", "az-b"],
    "nodes": 2,
    "node_type": "cache.micro",
    "ports": {"base": 11301},
    "router": {"port": 11300},
    "security": {"tls": True},
}
FILES = TlsFiles(ca=Path("/s/tls/ca.pem"), cert=Path("/s/tls/server.pem"), key=Path("/s/tls/k"))


def test_a_memcached_cluster_may_ask_for_tls() -> None:
    assert parse_topology(TOPO).security.tls


def test_a_tls_node_listens_with_the_clusters_certificate() -> None:
    topo = parse_topology(TOPO)
    plan = build_plan(
        topo, TOPO, engine_binary="/usr/bin/memcached", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=11300,
    )  # fmt: skip
    node = plan.nodes[0]
    plain = memcached_argv(plan, node, Path("/s/m.pid"), as_root=False)
    assert "-Z" not in plain
    argv = memcached_argv(plan, node, Path("/s/m.pid"), as_root=False, tls=FILES)
    assert argv[: len(plain)] == plain and argv[len(plain) :] == memcached_tls_args(FILES)
    assert memcached_tls_args(FILES) == [
        "-Z", "-o", "ssl_chain_cert=/s/tls/server.pem,ssl_key=/s/tls/k",
    ]  # fmt: skip


def test_the_fix_is_named_per_engine() -> None:
    assert "apt-get install memcached" in no_tls_fix("memcached", "/opt/mc")
    assert "/opt/mc" in no_tls_fix("memcached", "/opt/mc")
    assert "redis-server" in no_tls_fix("valkey", "/x/valkey-server")


def test_a_binary_without_tls_is_told_apart(tmp_path: Path) -> None:
    fake = tmp_path / "memcached"
    fake.write_text("#!/bin/sh\necho '-p, --port=<num> TCP port'\n")
    fake.chmod(0o755)
    assert not engine_has_tls(str(fake), "memcached")
    assert not engine_has_tls(str(tmp_path / "missing"), "memcached")
    real = shutil.which("memcached")
    if real is None:
        pytest.skip("no memcached installed")
    assert engine_has_tls(real, "memcached")  # Debian's is built with TLS
