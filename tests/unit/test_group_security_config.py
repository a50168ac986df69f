"""Security on a cluster-mode-disabled group, without sockets: the group's engine config
(TLS ports and replication, users, blocked commands, the admin user replicas sync as), the
endpoints counted among the TLS addresses, allowed_sources at the endpoints, the node packet
filters, the `status` connect line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cachefleet.credentials import ADMIN_USER, Credentials
from cachefleet.ops import firewall
from cachefleet.ops.status import format_status
from cachefleet.plan import Plan, build_plan
from cachefleet.security import Secrets
from cachefleet.tls import TlsFiles, tls_addresses
from cachefleet.topology import parse_topology
from router.standalone import StandaloneRouter
from shard.config import render_engine_config
from shard.launch import without_cluster_mode

ADMIN = Credentials(ADMIN_USER, "admin-s3cret-0123456789")
TOKEN = "groupTok-0123456789abcdef"


def plan(**security: Any) -> Plan:
    raw: dict[str, Any] = {
        "name": "g",
        "engine": "redis",
        "cluster_mode": "disabled",
        "zones": ["az-a", "az-b", "az-c"],
        "replicas": 2,
        "ports": {"base": 7101},
        "security": security,
    }
    return build_plan(
        parse_topology(raw), raw, engine_binary="redis-server", node_ports=None,
        bus=("127.0.0.1", 1883), router_port=7200, reader_port=7201,
    )  # fmt: skip


def test_group_replica_config_speaks_tls_and_syncs_as_the_admin_user(tmp_path: Path) -> None:
    p = plan(tls=True, auth_token_file="t")
    node = p.nodes[1]
    tls = TlsFiles(ca=tmp_path / "ca.pem", cert=tmp_path / "s.pem", key=tmp_path / "s.key")
    secrets = Secrets(open=False, tokens=(TOKEN,))
    text = render_engine_config(p, node, tmp_path, tmp_path / "log", ADMIN, secrets, tls)
    primary = p.nodes[0]
    lines = without_cluster_mode(text, (primary.host, primary.port)).splitlines()
    assert "port 0" in lines and f"tls-port {node.port}" in lines
    assert "tls-replication yes" in lines
    assert f"replicaof {primary.host} {primary.port}" in lines
    assert f"masteruser {ADMIN_USER}" in lines and f"masterauth {ADMIN.password}" in lines
    assert not any(line.startswith("cluster-") for line in lines)
    (default,) = [line for line in lines if line.startswith("user default ")]
    assert f">{TOKEN}" in default and "nopass" not in default
    assert "-config|set" in default and "-replicaof" in default  # blocked for clients


def test_group_users_get_their_access_strings_and_the_blocked_commands(tmp_path: Path) -> None:
    user = {"name": "app", "password_files": ["p"], "access": "on ~app:* +@all"}
    p = plan(users=[user])
    secrets = Secrets(open=True, users={"app": ("app-password-0123456789",)}, default_enabled=False)
    text = render_engine_config(p, p.nodes[0], tmp_path, tmp_path / "log", ADMIN, secrets)
    lines = without_cluster_mode(text, None).splitlines()
    (app,) = [line for line in lines if line.startswith("user app ")]
    assert "~app:*" in app and "-config|set" in app and "-monitor" in app
    assert any(line.startswith("user default off") for line in lines)
    assert not any(line.startswith("replicaof") for line in lines)


def test_both_endpoints_speak_tls() -> None:
    addresses = tls_addresses(plan(tls=True))
    assert ("127.0.0.1", 7200) in addresses and ("127.0.0.1", 7201) in addresses
    assert all((n.host, n.port) in addresses for n in plan(tls=True).nodes)


def test_endpoints_admit_only_the_allowed_sources() -> None:
    router = StandaloneRouter(plan=plan(allowed_sources=["127.0.0.1/32", "10.0.0.0/8"]))
    for endpoint in (router.writer, router.reader):
        assert endpoint.admits("127.0.0.1")
        assert endpoint.admits("10.1.2.3")
        assert not endpoint.admits("127.0.0.2")
        assert not endpoint.admits("")  # no peer address: refused
    assert router.refused_sources == 4
    open_router = StandaloneRouter(plan=plan())
    assert open_router.writer.admits("127.0.0.2") and open_router.refused_sources == 0


def test_packet_filters_cover_every_group_node_port() -> None:
    p = plan(allowed_sources=["127.0.0.1/32"])
    rules = firewall.rules(p)
    for node in p.nodes:
        resets = [
            r for r in rules if r[-1] == "tcp-reset" and r[r.index("--dport") + 1] == str(node.port)
        ]
        assert len(resets) == 1 and node.host in resets[0]
    assert all(firewall.tag("g") in r for r in rules)


def test_status_connect_line_of_a_tls_group_has_no_cluster_flag() -> None:
    st = {
        "name": "g", "engine": "redis", "state": "available", "epoch": 1,
        "router": {"address": "127.0.0.1:7200", "workers": [1], "connections": 0,
                   "ops_per_sec": 0},
        "security": {"tls": True, "ca": "/s/g/tls/ca.pem", "auth": True, "users": [],
                     "allowed_sources": []},
        "endpoints": {"primary": "127.0.0.1:7200", "reader": "127.0.0.1:7201"},
        "zones": [], "shards": [],
    }  # fmt: skip
    text = format_status(st)
    assert "redis-cli --tls --cacert /s/g/tls/ca.pem --askpass -h 127.0.0.1 -p 7200" in text
    assert "TLS (CA /s/g/tls/ca.pem)" in text
