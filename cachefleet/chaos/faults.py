"""Fault injection: signals to the cluster's processes, and zone partitions with packet filters.

Partitions drop traffic between one zone's address and every other zone's address (both
directions) with iptables rules on the loopback interface, each tagged with a comment
``cachefleet-chaos:<run-id>`` so that they are always removed at the end of a run — on
success, on error, on Ctrl-C — and so that a later run can clean up after a crashed one.
Traffic from 127.0.0.1 (clients, the bus) is not cut: the clients and the bus sit on a
third site that sees both sides, which is what lets a run observe a split brain at all.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cachefleet.errors import CachefleetError

TAG = "cachefleet-chaos"

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10)


class PartitionUnavailable(CachefleetError):
    """Packet filters cannot be used here (not root, no iptables, shared zone address)."""


def partition_support(is_root: Callable[[], bool] | None = None) -> str | None:
    """None when partitions can run, else why not (one line, for a clear skip)."""
    root = is_root() if is_root else os.geteuid() == 0
    if not root:
        return "zone partitions need root (they install iptables rules); run as root or skip"
    if shutil.which("iptables") is None:
        return "zone partitions need iptables (apt-get install iptables)"
    return None


@dataclass
class PacketFilter:
    """Installs and removes tagged DROP rules; every rule it adds is remembered."""

    run_id: str
    run: Runner = _run
    installed: list[list[str]] = field(default_factory=list)

    @property
    def comment(self) -> str:
        return f"{TAG}:{self.run_id}"

    def _rule(self, src: str, dst: str) -> list[str]:
        return ["INPUT", "-s", src, "-d", dst, "-m", "comment", "--comment", self.comment,
                "-j", "DROP"]  # fmt: skip

    def cut(self, zone_address: str, others: Sequence[str]) -> None:
        for other in others:
            for src, dst in ((zone_address, other), (other, zone_address)):
                rule = self._rule(src, dst)
                proc = self.run(["iptables", "-I", *rule])
                if proc.returncode != 0:
                    raise PartitionUnavailable(f"iptables refused a rule: {proc.stderr.strip()}")
                self.installed.append(rule)

    def heal(self) -> None:
        """Remove every rule this filter installed (idempotent)."""
        while self.installed:
            rule = self.installed.pop()
            self.run(["iptables", "-D", *rule])

    def clean_leftovers(self) -> int:
        """Remove rules left by any earlier run (crashed or killed); returns how many."""
        proc = self.run(["iptables", "-S", "INPUT"])
        removed = 0
        for line in proc.stdout.splitlines():
            if TAG not in line or not line.startswith("-A INPUT"):
                continue
            spec = shlex.split(line)[2:]  # comments may be quoted
            self.run(["iptables", "-D", "INPUT", *spec])
            removed += 1
        return removed


@contextmanager
def packet_filter(run_id: str, run: Runner = _run) -> Iterator[PacketFilter]:
    """A PacketFilter whose rules are removed however the block ends (errors, Ctrl-C, SIGTERM
    turned into KeyboardInterrupt by the runner)."""
    pf = PacketFilter(run_id=run_id, run=run)
    pf.clean_leftovers()
    try:
        yield pf
    finally:
        pf.heal()


def signal_pid(pid: int, sig: signal.Signals) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
