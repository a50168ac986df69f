"""Bus messages become typed values or a MessageError naming topic and field; nothing else
ever escapes the parser, and a BusLink survives a handler that raises."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Any

import pytest
from helpers import message_json
from hypothesis import given, settings
from hypothesis import strategies as st

from cachefleet import bus
from cachefleet.messages import (
    MAX_DEPTH,
    MAX_EPOCH,
    Elected,
    Hello,
    Known,
    MessageError,
    NodeOffline,
    NodeState,
    RouterOffline,
    RouterState,
    SentinelOffline,
    VoteReply,
    VoteRequest,
    decode_object,
    parse,
)

K = Known(
    cluster="c",
    sentinels={"s1": "az-a", "s2": "az-b", "s3": "az-c"},
    nodes=frozenset({"c-0001-001", "c-0001-002", "c-0002-001", "c-0002-002"}),
    zones=frozenset({"az-a", "az-b", "az-c"}),
    shards=2,
)
HELLO_T = "cachefleet/c/sentinels/s2/hello"
VOTES_T = "cachefleet/c/failover/1/votes"


def raw(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def hello(**over: Any) -> bytes:
    base: dict[str, Any] = {
        "sentinel": "s2",
        "zone": "az-b",
        "sdown": ["c-0001-001"],
        "failover_epoch": 4,
        "config_epoch": 3,
        "stalled": False,
        "failing_over": [1],
    }
    return raw(**{**base, **over})


def request(**over: Any) -> bytes:
    base: dict[str, Any] = {
        "type": "request",
        "candidate": "s2",
        "failover_epoch": 5,
        "shard": 1,
        "primary": "c-0001-001",
        "config_epoch": 3,
    }
    return raw(**{**base, **over})


# --- good messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        pytest.param(
            HELLO_T,
            hello(),
            Hello("s2", "az-b", frozenset({"c-0001-001"}), 4, 3, False, frozenset({1})),
            id="hello",
        ),
        pytest.param(
            HELLO_T,
            raw(zone="az-b", epoch=7),
            Hello("s2", "az-b", frozenset(), 7, 0, False, frozenset()),
            id="hello-legacy-epoch",
        ),
        pytest.param(HELLO_T, b"offline", SentinelOffline("s2"), id="hello-offline"),
        pytest.param(
            VOTES_T, request(), VoteRequest("s2", 5, 1, "c-0001-001", 3), id="vote-request"
        ),
        pytest.param(
            VOTES_T,
            raw(type="vote", voter="s3", candidate="s2", failover_epoch=5, shard=1, granted=True),
            VoteReply("s3", "s2", 5, 1, True, None),
            id="vote-reply",
        ),
        pytest.param(
            VOTES_T,
            raw(type="elected", candidate="s2", failover_epoch=5, shard=1),
            Elected("s2", 5, 1),
            id="elected",
        ),
        pytest.param(
            "cachefleet/c/nodes/c-0002-002/state",
            raw(node="c-0002-002", zone="az-c", shard=2, status="up", role="replica", pid=12),
            NodeState("c-0002-002", "az-c", 2, "up", "replica", 12),
            id="node-state",
        ),
        pytest.param(
            "cachefleet/c/nodes/c-0002-002/state",
            b"offline",
            NodeOffline("c-0002-002"),
            id="node-offline",
        ),
        pytest.param(
            "cachefleet/c/routers/r1/state",
            raw(id="r1", epoch=9, connections=3, pid=44),
            RouterState("r1", 9, 3, 44),
            id="router-state",
        ),
        pytest.param(
            "cachefleet/c/routers/r1/state", b"offline", RouterOffline("r1"), id="router-offline"
        ),
    ],
)
def test_parse_good(topic: str, payload: bytes, expected: object) -> None:
    assert parse(K, topic, payload) == expected


def test_hello_round_trips_through_its_wire_form() -> None:
    h = Hello("s2", "az-b", frozenset({"c-0001-001"}), 4, 3, True, frozenset({2}), "1.2.3.4", 9)
    assert parse(K, HELLO_T, bus.encode(h.to_dict())) == h


@pytest.mark.parametrize(
    "msg",
    [
        VoteRequest("s1", 5, 2, "c-0002-001", 3),
        VoteReply("s3", "s1", 5, 2, False, "NOT_SDOWN_HERE"),
        Elected("s1", 5, 2),
    ],
)
def test_votes_round_trip(msg: VoteRequest | VoteReply | Elected) -> None:
    assert parse(K, "cachefleet/c/failover/2/votes", bus.encode(msg.to_dict())) == msg


# --- bad messages: each names its field ------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "field"),
    [
        pytest.param(HELLO_T, raw(sdown=5, zone="az-b", epoch=1), "sdown", id="sdown-int"),
        pytest.param(HELLO_T, hello(sdown=["nope"]), "sdown", id="sdown-unknown-node"),
        pytest.param(HELLO_T, hello(sdown=[[1]]), "sdown", id="sdown-nested"),
        pytest.param(HELLO_T, hello(zone="az-a"), "zone", id="wrong-zone"),
        pytest.param(HELLO_T, hello(sentinel="s3"), "sentinel", id="sentinel-mismatch"),
        pytest.param(HELLO_T, hello(failover_epoch=-1), "failover_epoch", id="epoch-negative"),
        pytest.param(HELLO_T, hello(failover_epoch=1.5), "failover_epoch", id="epoch-float"),
        pytest.param(HELLO_T, hello(failover_epoch=True), "failover_epoch", id="epoch-bool"),
        pytest.param(
            HELLO_T, hello(failover_epoch=MAX_EPOCH + 1), "failover_epoch", id="epoch-huge"
        ),
        pytest.param(HELLO_T, b'{"zone":"az-b","failover_epoch":NaN}', "failover_epoch", id="nan"),
        pytest.param(
            HELLO_T, b'{"zone":"az-b","failover_epoch":1e400}', "failover_epoch", id="inf"
        ),
        pytest.param(HELLO_T, hello(stalled="yes"), "stalled", id="stalled-str"),
        pytest.param(HELLO_T, hello(failing_over=[3]), "failing_over", id="shard-out-of-range"),
        pytest.param(HELLO_T, hello(failing_over=["1"]), "failing_over", id="shard-str"),
        pytest.param(
            "cachefleet/c/sentinels/x/hello", hello(sentinel="x"), "sentinel", id="fake-sentinel"
        ),
        pytest.param(HELLO_T, b"\xff\xfe", "", id="not-json"),
        pytest.param(HELLO_T, b"[1,2]", "", id="not-object"),
        pytest.param(HELLO_T, b"[" * 100_000, "", id="deep-nesting"),
        pytest.param(
            HELLO_T,
            b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1),
            "",
            id="depth-over-limit",
        ),
        pytest.param(
            VOTES_T,
            raw(type="request", shard=1, failover_epoch=5),
            "candidate",
            id="request-without-candidate",
        ),
        pytest.param(VOTES_T, request(candidate="x"), "candidate", id="request-fake-candidate"),
        pytest.param(VOTES_T, request(primary="x"), "primary", id="request-unknown-primary"),
        pytest.param(VOTES_T, request(shard=2), "shard", id="shard-not-topic"),
        pytest.param(VOTES_T, request(shard=0), "shard", id="shard-zero"),
        pytest.param(VOTES_T, request(type="coup"), "type", id="unknown-type"),
        pytest.param(VOTES_T, request(failover_epoch="5"), "failover_epoch", id="epoch-str"),
        pytest.param(
            VOTES_T,
            raw(type="elected", candidate="x", failover_epoch=5, shard=1),
            "candidate",
            id="elected-fake-id",
        ),
        pytest.param(
            VOTES_T,
            raw(type="vote", voter="x", candidate="s2", failover_epoch=5, shard=1, granted=True),
            "voter",
            id="vote-fake-voter",
        ),
        pytest.param(
            VOTES_T,
            raw(type="vote", voter="s3", candidate="s2", failover_epoch=5, shard=1, granted=1),
            "granted",
            id="granted-int",
        ),
        pytest.param(
            "cachefleet/c/nodes/nope/state", raw(node="nope"), "node", id="node-not-in-plan"
        ),
        pytest.param(
            "cachefleet/c/nodes/c-0001-001/state",
            raw(node="c-0001-001", zone="az-z", shard=1, status="up"),
            "zone",
            id="node-zone",
        ),
        pytest.param(
            "cachefleet/c/nodes/c-0001-001/state",
            raw(node="c-0001-001", zone="az-a", shard=1, status="dancing"),
            "status",
            id="node-status",
        ),
        pytest.param("cachefleet/c/routers/r1/state", raw(id="r2"), "id", id="router-mismatch"),
        pytest.param("cachefleet/other/sentinels/s2/hello", hello(), "", id="other-cluster"),
        pytest.param("cachefleet/c/layout", b"{}", "", id="no-typed-message"),
    ],
)
def test_parse_bad_names_the_field(topic: str, payload: bytes, field: str) -> None:
    with pytest.raises(MessageError) as info:
        parse(K, topic, payload)
    assert (info.value.topic, info.value.field) == (topic, field)


def test_oversized_payload_is_rejected_before_parsing() -> None:
    with pytest.raises(MessageError):
        decode_object("t", b" " * (2 << 20))


# --- fuzz: nothing but MessageError escapes -------------------------------------------------

TOPICS = st.sampled_from(
    [
        HELLO_T,
        "cachefleet/c/sentinels/x/hello",
        VOTES_T,
        "cachefleet/c/failover/2/votes",
        "cachefleet/c/failover/x/votes",
        "cachefleet/c/nodes/c-0001-001/state",
        "cachefleet/c/routers/r1/state",
        "cachefleet/c/x",
        "cachefleet/c",
        "",
    ]
)
JSON = message_json()
PAYLOADS = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.just(b"offline"),
)


@settings(max_examples=600, deadline=None)
@given(topic=TOPICS, payload=PAYLOADS)
def test_parse_fuzz_raises_only_message_error(topic: str, payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        parse(K, topic, payload)


# --- BusLink: a handler that raises is counted, never fatal ---------------------------------


def test_buslink_counts_handler_errors_per_topic_and_keeps_going() -> None:
    seen: list[str] = []

    def handler(topic: str, payload: bytes) -> None:
        if payload == b"bad":
            raise TypeError("'int' object is not iterable")
        seen.append(topic)

    class Log:
        def __init__(self) -> None:
            self.errors: list[dict[str, Any]] = []

        def error(self, event: str, **kw: Any) -> None:
            self.errors.append({"event": event, **kw})

    log = Log()
    link = bus.BusLink(host="127.0.0.1", port=1, name="t", on_message=handler, log=log)
    link._deliver("a/b", b"bad")
    link._deliver("a/b", b"bad")
    link._deliver("a/c", b"good")
    assert link.handler_errors == Counter({"a/b": 2})
    assert seen == ["a/c"]
    assert [e["topic"] for e in log.errors] == ["a/b", "a/b"]
    assert log.errors[-1]["count"] == 2
