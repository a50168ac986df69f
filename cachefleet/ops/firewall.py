"""`allowed_sources` at the nodes: tagged iptables rules on every node port (client and cluster
bus), installed by `up` and removed by `down`, where the operator is root and iptables exists.

Each port accepts the allowed blocks and the cluster's own addresses (every zone address, so
nodes, agents and sentinels reach each other, and 127.0.0.1, the router's and the CLI's), and
resets every other source. Rules carry the comment ``cachefleet-src-<cluster>``, so `down`
removes exactly this cluster's rules, and a rerun of `up` replaces them. Without root, nodes
rely on binding to their zone's address, and `up` says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence

from cachefleet.plan import Plan

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    # -w everywhere: chaos partitions may hold the xtables lock at the same moment
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)


def tag(cluster: str) -> str:
    return f"cachefleet-src-{cluster}"


def available() -> str | None:
    """Why node packet filters cannot be installed here (None: they can)."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("iptables") is None:
        return "no iptables"
    return None


def rules(plan: Plan) -> list[list[str]]:
    """The rules for `plan`'s nodes, in the order they are appended (accepts, then the reset)."""
    topo = plan.topology
    own = {f"{topo.zone_address(z)}/32" for z in topo.zones} | {"127.0.0.1/32"}
    sources = sorted(set(topo.security.allowed_sources) | own)
    comment = ["-m", "comment", "--comment", tag(plan.name)]
    out: list[list[str]] = []
    for node in plan.nodes:
        for port in (node.port, node.bus_port):
            if not port:
                continue
            match = ["-p", "tcp", "-d", node.host, "--dport", str(port)]
            out += [["INPUT", *match, "-s", s, *comment, "-j", "ACCEPT"] for s in sources]
            out.append(["INPUT", *match, *comment, "-j", "REJECT", "--reject-with", "tcp-reset"])
    return out


def remove(cluster: str, run: Runner = _run) -> int:
    """Delete every rule tagged for `cluster`; how many there were."""
    if available() is not None:
        return 0
    listed = run(["iptables", "-w", "-S", "INPUT"])
    removed = 0
    for line in listed.stdout.splitlines():
        if f" {tag(cluster)} " not in f"{line} ":
            continue
        spec = line.split()[2:]  # "-A INPUT <spec>"
        if run(["iptables", "-w", "-D", "INPUT", *spec]).returncode == 0:
            removed += 1
    return removed


def install(plan: Plan, run: Runner = _run) -> str:
    """Install `plan`'s node rules when it declares allowed_sources; what is enforced."""
    if not plan.topology.security.allowed_sources:
        return ""
    why = available()
    if why is not None:
        return f"nodes rely on their zone address binding ({why}: no packet filters)"
    remove(plan.name, run)
    for rule in rules(plan):
        proc = run(["iptables", "-w", "-A", *rule])
        if proc.returncode != 0:
            remove(plan.name, run)
            return f"nodes rely on their zone address binding (iptables: {proc.stderr.strip()})"
    return describe(plan, run)


def describe(plan: Plan, run: Runner = _run) -> str:
    """How `plan`'s nodes enforce allowed_sources right now (for `up`)."""
    why = available()
    if why is not None:
        return f"nodes rely on their zone address binding ({why}: no packet filters)"
    listed = run(["iptables", "-w", "-S", "INPUT"]).stdout
    if any(f" {tag(plan.name)} " in f"{line} " for line in listed.splitlines()):
        return "iptables rules on every node port admit only these sources and the cluster's own"
    return "nodes rely on their zone address binding (no packet filters installed)"
