"""Partition rules are installed, always removed (even when interrupted), and cleaned up after
a crashed run; without root the run says why and skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import pytest

from cachefleet.chaos.faults import (
    TAG,
    PacketFilter,
    PartitionUnavailable,
    packet_filter,
    partition_support,
)
from cachefleet.errors import CachefleetError


class FakeIptables:
    """An in-memory INPUT chain that speaks just enough of iptables -I/-D/-S."""

    def __init__(self, existing: list[list[str]] | None = None) -> None:
        self.rules: list[list[str]] = list(existing or [])
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        op, chain, spec = argv[1], argv[2], argv[3:]
        assert chain == "INPUT"
        out = ""
        if op == "-I":
            self.rules.insert(0, spec)
        elif op == "-D":
            if spec in self.rules:
                self.rules.remove(spec)
        elif op == "-S":
            out = "-P INPUT ACCEPT\n" + "".join(
                "-A INPUT " + " ".join(f'"{x}"' if " " in x else x for x in r) + "\n"
                for r in self.rules
            )
        return subprocess.CompletedProcess(argv, 0, out, "")


def test_cut_drops_both_directions_to_every_other_zone_and_heal_removes_them() -> None:
    fake = FakeIptables()
    pf = PacketFilter(run_id="r1", run=fake)
    pf.cut("127.0.1.1", ["127.0.2.1", "127.0.3.1"])
    pairs = {(r[r.index("-s") + 1], r[r.index("-d") + 1]) for r in fake.rules}
    assert pairs == {
        ("127.0.1.1", "127.0.2.1"), ("127.0.2.1", "127.0.1.1"),
        ("127.0.1.1", "127.0.3.1"), ("127.0.3.1", "127.0.1.1"),
    }  # fmt: skip
    assert all(f"{TAG}:r1" in r and r[-1] == "DROP" for r in fake.rules)
    pf.heal()
    assert fake.rules == []
    pf.heal()  # idempotent
    assert fake.rules == []


def test_rules_are_removed_when_the_run_is_interrupted() -> None:
    fake = FakeIptables()
    with pytest.raises(KeyboardInterrupt), packet_filter("r2", run=fake) as pf:
        pf.cut("127.0.2.1", ["127.0.1.1"])
        assert len(fake.rules) == 2
        raise KeyboardInterrupt
    assert fake.rules == []


def test_leftovers_of_a_crashed_run_are_cleaned_and_others_kept() -> None:
    foreign = ["-s", "10.0.0.1", "-j", "ACCEPT"]
    stale = ["-s", "127.0.1.1", "-d", "127.0.2.1", "-m", "comment", "--comment",
             f"{TAG}:old", "-j", "DROP"]  # fmt: skip
    fake = FakeIptables([foreign, stale])
    with packet_filter("new", run=fake):
        assert fake.rules == [foreign]
    assert fake.rules == [foreign]


def test_not_root_gives_a_clear_reason() -> None:
    why = partition_support(is_root=lambda: False)
    assert why is not None and "need root" in why


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("iptables") is None, reason="needs root and iptables"
)
def test_real_iptables_rules_are_installed_and_removed() -> None:
    def listed() -> str:
        return subprocess.run(["iptables", "-S", "INPUT"], capture_output=True, text=True).stdout

    with packet_filter("realtest") as pf:
        pf.cut("127.0.201.1", ["127.0.202.1"])
        assert listed().count(f"{TAG}:realtest") == 2
    assert f"{TAG}:realtest" not in listed()


def test_a_refused_rule_is_a_cachefleet_error_and_leaves_nothing_behind() -> None:
    class Refusing(FakeIptables):
        def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
            if list(argv)[1] == "-I" and len(self.rules) == 1:
                return subprocess.CompletedProcess(list(argv), 1, "", "no chain")
            return super().__call__(argv)

    fake = Refusing()
    with pytest.raises(CachefleetError) as info, packet_filter("r3", run=fake) as pf:
        pf.cut("127.0.1.1", ["127.0.2.1"])
    assert isinstance(info.value, PartitionUnavailable) and "no chain" in str(info.value)
    assert fake.rules == []
