"""The chaos workload of cluster-mode-disabled groups: which node took a write, its outcome,
the shipped cmd-* scenarios, and a failover that only stalls writes counting as one."""

from __future__ import annotations

from pathlib import Path

from redis.exceptions import ConnectionError, ReadOnlyError

from cachefleet.chaos.checker import Op, check_trial
from cachefleet.chaos.group import _outcome, laddr
from cachefleet.chaos.scenario import load_scenario
from cachefleet.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]
INFO = b"id=7 addr=127.0.0.1:50312 laddr=127.0.0.2:7301 fd=9 name= db=0 cmd=client|info"


def test_laddr_names_the_node_that_served_the_connection() -> None:
    assert laddr(INFO) == "127.0.0.2:7301"
    assert laddr(INFO.decode()) == "127.0.0.2:7301"
    assert laddr(b"id=7 addr=127.0.0.1:1") is None


def test_outcome_of_a_write_pipeline() -> None:
    assert _outcome([True, 1, INFO], wait=1) == ("ok", "127.0.0.2:7301")
    assert _outcome([True, 0, INFO], wait=1) == ("unknown", "127.0.0.2:7301")  # not replicated
    assert _outcome([ReadOnlyError("READONLY"), 0, INFO], wait=1)[0] == "error"  # a demoted node
    assert _outcome([ConnectionError("gone"), ConnectionError("gone"), ConnectionError("gone")],
                    wait=1) == ("unknown", None)  # fmt: skip
    assert _outcome([True, INFO], wait=0) == ("ok", "127.0.0.2:7301")


def test_shipped_group_scenarios_use_the_primary_endpoint_on_a_group() -> None:
    for name in ("cmd-kill-primary", "cmd-pause-primary", "cmd-partition-zone"):
        sc = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
        assert sc.workload.via == "endpoint" and sc.workload.wait == 1
        assert load_topology(sc.topology).standalone
        assert sc.expect.lost_writes == 0


def test_a_failover_that_only_stalls_writes_counts_as_unavailability() -> None:
    # writes block across the failover (the endpoint holds the connection): no error at all
    history = [Op("w", "k", i, i * 0.1, i * 0.1 + 0.05, "ok", "n1:1") for i in range(20)]
    history.append(Op("w", "k", 20, 2.0, 3.4, "ok", "n2:1"))  # stalled 1.4 s, then served
    for i in range(21, 30):
        t = 3.4 + (i - 21) * 0.01
        history.append(Op("w", "k", i, t, t + 0.01, "ok", "n2:1"))
    got = check_trial(
        history, {"k": 29}, shard_of={"k": 1}, shards=[1], fault_times=[2.1], targeted=[1],
        promotions=[(1, 3.2, "n2:1")], duration_s=6.0,
    )  # fmt: skip
    one = got["availability"]["1"]
    assert one["errors"] == 0 and one["affected"]
    assert 1.2 < one["window_s"] < 1.4
    assert got["lost_writes"] == 0 and got["split_brain_max_s"] == 0.0
