"""The node packet filters of allowed_sources: which rules, and removing exactly this
cluster's (iptables itself is played by a recorder)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from cachefleet.ops import firewall
from cachefleet.plan import Plan, build_plan
from cachefleet.topology import parse_topology


def plan(allowed: list[str]) -> Plan:
    topo = parse_topology(
        {
            "name": "c",
            "zones": ["az-a", "az-b"],
            "shards": 1,
            "replicas_per_shard": 1,
            "ports": {"base": 7000},
            "security": {"allowed_sources": allowed},
        }
    )
    return build_plan(
        topo, {}, engine_binary="x", node_ports=None, bus=("127.0.0.1", 1), router_port=2
    )


def test_each_node_port_accepts_the_allowed_and_own_addresses_then_resets() -> None:
    p = plan(["10.0.0.0/8"])
    rules = firewall.rules(p)
    # 2 nodes x (client port, bus port) x (4 accepts + 1 reset)
    assert len(rules) == 2 * 2 * 5
    first = rules[:5]
    sources = [r[r.index("-s") + 1] for r in first[:4]]
    assert sources == ["10.0.0.0/8", "127.0.0.1/32", "127.0.1.1/32", "127.0.2.1/32"]
    assert all(r[-2:] == ["-j", "ACCEPT"] for r in first[:4])
    assert first[4][-4:] == ["-j", "REJECT", "--reject-with", "tcp-reset"]
    assert all("cachefleet-src-c" in r for r in rules)
    assert {r[r.index("--dport") + 1] for r in rules} == {"7000", "7001", "17000", "17001"}


class Recorder:
    def __init__(self, listing: str) -> None:
        self.listing = listing
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        out = self.listing if "-S" in argv else ""
        return subprocess.CompletedProcess(list(argv), 0, out, "")


def test_remove_deletes_exactly_this_clusters_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "available", lambda: None)
    listing = "\n".join(
        [
            "-P INPUT ACCEPT",
            "-A INPUT -d 127.0.1.1/32 -p tcp -m tcp --dport 7000 -m comment --comment "
            "cachefleet-src-c -j ACCEPT",
            "-A INPUT -d 127.0.1.1/32 -p tcp -m tcp --dport 7100 -m comment --comment "
            "cachefleet-src-c2 -j ACCEPT",
            "-A INPUT -s 127.0.2.1/32 -d 127.0.1.1/32 -m comment --comment cachefleet-chaos-x "
            "-j DROP",
        ]
    )
    run = Recorder(listing)
    assert firewall.remove("c", run) == 1
    deletes = [c for c in run.calls if "-D" in c]
    assert deletes == [
        ["iptables", "-w", "-D", "INPUT", "-d", "127.0.1.1/32", "-p", "tcp", "-m", "tcp", "--dport",
         "7000", "-m", "comment", "--comment", "cachefleet-src-c", "-j", "ACCEPT"],
    ]  # fmt: skip


def test_without_root_nothing_is_installed_and_up_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "available", lambda: "not root")
    run = Recorder("")
    text = firewall.install(plan(["127.0.0.1/32"]), run)
    assert "zone address binding (not root" in text and run.calls == []
