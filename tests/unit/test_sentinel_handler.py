"""The sentinel's bus handler on a real Sentinel object (no sockets opened): poisonous
messages are counted and change nothing; fuzzed input never raises."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers import message_json
from hypothesis import given, settings
from hypothesis import strategies as st

from cachefleet import bus
from cachefleet.messages import MAX_EPOCH, VoteRequest
from cachefleet.plan import Plan, build_plan
from cachefleet.state import ClusterDir
from cachefleet.topology import parse_topology
from sentinel.process import Sentinel

RAW = {
    "name": "c",
    "zones": ["az-a", "az-b", "az-c"],
    "shards": 2,
    "replicas_per_shard": 1,
    "ports": {"base": 7101},
}


def plan() -> Plan:
    t = parse_topology(RAW, "t.yaml")
    return build_plan(
        t, RAW, engine_binary="/bin/true", node_ports=None, bus=("127.0.0.1", 1), router_port=7100
    )


def layout_payload(p: Plan, epoch: int = 1) -> bytes:
    shards = []
    for i in range(1, p.topology.shards + 1):
        nodes = [
            {
                "name": n.name,
                "id": f"id-{n.name}",
                "shard": n.shard,
                "role": "primary" if n.member == 0 else "replica",
                "zone": n.zone,
                "host": n.host,
                "port": n.port,
                "bus_port": n.bus_port,
            }
            for n in p.shard_nodes(i)
        ]
        shards.append(
            {
                "id": i,
                "slots": [list(p.slot_ranges[i - 1])],
                "primary": nodes[0]["name"],
                "nodes": nodes,
            }
        )
    return bus.encode({"cluster": p.name, "epoch": epoch, "shards": shards})


def sentinel(home: Path) -> Sentinel:
    p = plan()
    cdir = ClusterDir(home, p.name)
    cdir.ensure_admin()  # as `up` does before any sentinel starts
    s = Sentinel(plan=p, cdir=cdir, sid="s1")
    s.on_message(s.layout_topic, layout_payload(p))
    assert s.layout is not None
    return s


def state(s: Sentinel) -> Any:
    return (
        dict(s.hellos),
        s.ballot.vote,
        s.ballot.failover_epoch,
        dict(s.voted),
        s.layout,
        s.bus.outbox.qsize(),
    )


def outbox(s: Sentinel) -> list[tuple[str, dict[str, Any]]]:
    out = []
    while not s.bus.outbox.empty():
        name, payload, _ = s.bus.outbox.get_nowait()
        out.append((name, json.loads(payload)))
    return out


HELLO = "cachefleet/c/sentinels/{}/hello"
VOTES = "cachefleet/c/failover/1/votes"

POISON = [
    pytest.param(HELLO.format("x"), b'{"sdown":5}', id="sdown-int-fake-id"),
    pytest.param(HELLO.format("s2"), b'{"sdown":5,"zone":"az-b","epoch":1}', id="sdown-int"),
    pytest.param(
        VOTES, b'{"type":"request","epoch":9,"shard":1,"primary":"c-0001-001"}', id="no-candidate"
    ),
    pytest.param(
        VOTES, b'{"type":"elected","candidate":"x","failover_epoch":9,"shard":1}', id="elected-x"
    ),
    pytest.param(HELLO.format("s2"), b"\x00not json", id="not-json"),
    pytest.param(HELLO.format("s2"), b"[" * 200_000, id="deep-array"),
    pytest.param(HELLO.format("s2"), b'{"a":' * 5000 + b"1" + b"}" * 5000, id="deep-object"),
    pytest.param(
        HELLO.format("x"),
        b'{"zone":"az-b","sdown":["c-0001-001"],"failover_epoch":1}',
        id="fake-sentinel-sdown",
    ),
    pytest.param("cachefleet/c/layout", b'{"epoch":99,"shards":5}', id="bad-layout"),
    pytest.param("cachefleet/c/layout", b"[]", id="layout-not-object"),
]


@pytest.mark.parametrize(("topic", "payload"), POISON)
def test_poison_is_counted_and_changes_nothing(tmp_path: Path, topic: str, payload: bytes) -> None:
    s = sentinel(tmp_path)
    before = state(s)
    s.on_message(topic, payload)
    assert state(s) == before
    assert s.rejected[topic] == 1


def test_fake_sentinels_cannot_make_up_odown(tmp_path: Path) -> None:
    s = sentinel(tmp_path)
    for sid in ("x", "y", "z"):
        body = {"zone": "az-b", "sdown": ["c-0001-001"], "failover_epoch": 1}
        s.on_message(HELLO.format(sid), bus.encode(body))
    assert s.hellos == {}
    assert s.live(0.0) == 1


def test_a_hello_from_a_configured_sentinel_is_heard(tmp_path: Path) -> None:
    s = sentinel(tmp_path)
    body = {"zone": "az-b", "sdown": ["c-0001-001"], "failover_epoch": 7, "stalled": False}
    s.on_message(HELLO.format("s2"), bus.encode(body))
    assert s.hellos["s2"].sdown == frozenset({"c-0001-001"})
    assert s.ballot.failover_epoch == 7
    s.on_message(HELLO.format("s2"), b"offline")
    assert "s2" not in s.hellos


def test_a_vote_request_is_answered_with_its_reason(tmp_path: Path) -> None:
    s = sentinel(tmp_path)
    req = VoteRequest("s2", 5, 1, "c-0001-001", 1)
    s.on_message(VOTES, bus.encode(req.to_dict()))
    [(name, body)] = outbox(s)
    assert name == VOTES
    assert (body["type"], body["voter"], body["granted"], body["reason"]) == (
        "vote",
        "s1",
        False,
        "NOT_SDOWN_HERE",
    )
    s.sdown = frozenset({"c-0001-001"})  # now I see it down too
    s.on_message(VOTES, bus.encode(req.to_dict()))
    replies = [b for _, b in outbox(s) if b["type"] == "vote"]
    assert [(r["granted"], r["reason"]) for r in replies] == [(True, None)]
    assert s.ballot.vote.voted_for == "s2"
    assert s.voted[1].leader == "s2"


TOPICS = st.sampled_from(
    [
        HELLO.format("s2"),
        HELLO.format("s3"),
        HELLO.format("s1"),
        HELLO.format("x"),
        VOTES,
        "cachefleet/c/failover/2/votes",
        "cachefleet/c/failover/3/votes",
        "cachefleet/c/layout",
    ]
)
VALUES = message_json()
PAYLOADS = st.one_of(
    VALUES.map(lambda v: json.dumps(v).encode()), st.binary(max_size=32), st.just(b"offline")
)
HOME = Path(tempfile.mkdtemp(prefix="sentinel-fuzz-"))
FUZZED = sentinel(HOME)


@settings(max_examples=800, deadline=None)
@given(topic=TOPICS, payload=PAYLOADS)
def test_handler_fuzz_never_raises_and_trusts_only_the_plan(topic: str, payload: bytes) -> None:
    s = FUZZED
    rejected = sum(s.rejected.values())
    before = state(s)
    s.on_message(topic, payload)
    if sum(s.rejected.values()) > rejected:
        assert state(s) == before
    assert set(s.hellos) <= {"s2", "s3"}
    assert 0 <= s.ballot.failover_epoch <= MAX_EPOCH
    assert s.layout is not None
    outbox(s)


def test_a_request_refused_before_i_saw_the_primary_down_is_granted_once_i_do(
    tmp_path: Path,
) -> None:
    s = sentinel(tmp_path)
    req = VoteRequest("s2", 5, 1, "c-0001-001", 1)
    s.on_message(VOTES, bus.encode(req.to_dict()))
    assert [b["reason"] for _, b in outbox(s)] == ["NOT_SDOWN_HERE"]
    s.sdown = frozenset({"c-0001-001"})  # my own probes now see it down
    s.decide_and_act(1000.0)
    replies = [b for _, b in outbox(s) if b["type"] == "vote"]
    assert [(r["candidate"], r["granted"]) for r in replies] == [("s2", True)]
    assert s.ballot.vote.voted_for == "s2"
    assert s.pending == {}
