"""Router protocol pieces on byte fixtures: request framing (with a hypothesis property),
reply framing and redirect classification, key positions from the engine's COMMAND key
specs, routing plans, split/merge order, CROSSSLOT, SCAN cursors and slot routes."""

from __future__ import annotations

import base64
import zlib

import hiredis
import pytest
from helpers import request_pieces
from hypothesis import given, settings
from hypothesis import strategies as st

from cachefleet.layout import Layout, LayoutNode, LayoutShard
from cachefleet.resp import encode_command
from cachefleet.slots import crc16, hash_tag, key_slot
from router import replies, routes
from router.commands import (
    Action,
    key_positions,
    lookup,
    parse_command_table,
    plan,
    split,
)
from router.framing import CanonicalSplitter, ProtocolError, RequestFramer

# `COMMAND INFO get set mget mset msetnx del unlink exists touch xread eval blpop dbsize keys
# sort spublish object scan flushall rename lmpop zunionstore script` from Valkey 8.1, as
# the raw RESP2 bytes it sent (zlib + base64).
COMMAND_INFO = zlib.decompress(
    base64.b64decode(
        "eNrtWUtv4zYQvgfIf+AhwAJx01qy8zztdpsuelikSFIEPWlpaWyzpkiVpOJ4sT++Q4myZVm2ZefpIgclFkUOh9+8h4"
        "d+Z3/v0Gvv7x3gjwGY/b0LH0fwaSmgkRR8gj/7VNsv3uw5xOmtj3aK/a+NYmJgf+UzD9uWKj4nSPh4f6/P6UA7stdX"
        "+IeGIWgcOfBwqAcDJgINVIVDnNTFYXzMJIF8NRMRPOSDOoEwp1P6YPk5OMdd8D0YwUTXEVFUDGCOiOXtdH+PI8e4CM"
        "m08wFLwUDi6OJSzmJm8u/5wRxcOoPrqOMONlbM4A6tCMREyrgOr2JKCTDN5bgE2Fm+pZAGLDxdfL++I1RE5NPnz5c3"
        "NyRKgRhJzBCITAyTgnLy7cvl7TdC1SCNQZh5yLsW8rsS5K00iWjGxT1VjPY4BG7u7goD6cS58h6t1t6jZupr9/KRJQ"
        "X/pqBNkEjOwslFnHLDAj2kKtpF/baH3wzTRhqeYeqvV3G/AagH/rmdoBMpNBQzKOeBThFRiGAF8Fd3JeV+48D7K4A/"
        "yYEXD08HfXsNagzRVmanUUMEIuCFB/BmkNXYvaWY0BDmQdtESzs1WjoYoJbGKxzD10x+HHZAP73V+pkKzsSo7G4LGJ"
        "f62lrMnbt9x7wB5vDAtNGbhrgy7EW4e1bUPRcCdxhsHDcytRy/Y/0CWD/kWF0cdR2QJax7XIajPJbF8t4mqzlnlkjx"
        "ZCluOZcDGs8ceuvjjMYTliX5AccyE9wMjW71E77c3F5ffvp6k6OrDVWmr4oI/iKA+5W0Du4pL3ILnNYSUoeKJTi1he"
        "xxq796xJIgloIZqbIZQYw1CMW3iWN1hTz8Mvo56Xn4K0XOKb7fAQmpwBFigHMylOOsxLHUyZjhSA9IqiEiWpIxEKrR"
        "KCCbgkBr8xNxVdJff/726fZyXrydpSXQ0xiOv06OJ5lwhDXjiiDPiy8senBFz5mlpArh1sl2znp6PJFJXaY4U/vcVf"
        "lucXcuAnNm/dMmxrKI5tuMr/6G8TXqafbd5YtLXH5ZyRt5/OMFj5/VMtbf67UOv1qNOUsr0tsZe4vOsI6vQsKRxU7J"
        "VDdl8txaKgrHgIqZQH1hYSBTk6QmQB8HqoZVLdW0GO/UVS8V71FulJzMZ+WQqycShMi9VHW2fCInmv9f46niMz0fB3"
        "+Xar4R9Ovfv3y5vCUu/PxM/jCEaRJTNULP+SEVIyHH4gP60pCiMy08LBE0Bk1QlOweiA1O2ZdQCgPCENmfTkTPm4v2"
        "8dHTMTMHTHsdnMvXLeDjndTgc3N7dX25KTx2rg1OhCYJHgfDzGQ8BAWEiWxK0XfDH4pOHt2XeAZspqZ5ZofTHhqQTW"
        "47zl3giE57+INLGuXJVpEH1DR+s+g+XbKm4etlyYMJMj3f3f4irpa9fyCcOrV2xet6lWZLO0+t8tXecbH8B4hQ5hBn"
        "6Ff8uO+elRWF28Vz8WOJa36JgsF/BUl43hTLPkatdxwfj+MQeFK69llwAou5fRnOitK3a5SeRZgfshjehbWtsGZYKu"
        "iHMrWXPO9YbntVpDGYlxvFSzLpdQB21gF44PsLqbU9A7Pld23yP/26ELb7PMWMnHNX7881uFem/5X+9nb5/7obmWqw"
        "VGBTypKOlnvxftNWvPM3O1qANtHKl7nFeg0zs+Ox60x0K52J5Z2jzorexJvtRzxbd8fG6O+pwNJFG6mg3CLdpKCu3A"
        "2WK+nVhva2L1W3tK9n6AK8Xv/vxAazvHXbvC45neqXXyz/EUEvLRcls5Zw887ufMrSmdKeXVxtS71JmOp49b00Lgcs"
        "pDygYiFQlc6fhddyTrAVi91aFoWMYKtAau3f8bd5jt5MSrMdRixLLoodSncCyKMcB71UT55SXnVoSAGN0LDHd8rq19"
        "5fvAmZ6aHd8ilM6j+LMqlP"
    )
)


def _table() -> dict[bytes, object]:
    reader = hiredis.Reader()
    reader.feed(COMMAND_INFO)
    return parse_command_table(reader.gets())  # type: ignore[arg-type, return-value]


TABLE = _table()

# --- request framing ---------------------------------------------------------------------


def frame_all(
    data: bytes, chunk: int | None = None
) -> tuple[list[tuple[list[bytes], bytes | None]], ProtocolError | None]:
    framer = RequestFramer()
    out: list[tuple[list[bytes], bytes | None]] = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        reqs, err = framer.feed(piece)
        out.extend(reqs)
        if err is not None:
            return out, err
    return out, None


def test_pipeline_is_framed_with_original_bytes() -> None:
    a = encode_command([b"SET", b"k", b"v"])
    b = encode_command([b"GET", b"k"])
    reqs, err = frame_all(a + b)
    assert err is None
    assert reqs == [([b"SET", b"k", b"v"], a), ([b"GET", b"k"], b)]


def test_binary_values_with_crlf_inside() -> None:
    raw = encode_command([b"SET", b"k", b"a\r\nb*3\r\n"])
    assert frame_all(raw) == ([([b"SET", b"k", b"a\r\nb*3\r\n"], raw)], None)


def test_inline_commands_are_split_and_have_no_raw_bytes() -> None:
    reqs, err = frame_all(b'PING\r\nset k "a b"\n\r\n')
    assert err is None
    assert reqs == [([b"PING"], None), ([b"set", b"k", b"a b"], None)]


def test_empty_multibulk_is_skipped() -> None:
    assert frame_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n")[0] == [
        ([b"PING"], b"*1\r\n$4\r\nPING\r\n")
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"*1\r\n$999999999999\r\n", "invalid bulk length", id="bulk-over-512mb"),
        pytest.param(b"*1\r\n$536870913\r\n", "invalid bulk length", id="bulk-512mb+1"),
        pytest.param(b"*1\r\n$-5\r\n", "invalid bulk length", id="bulk-negative"),
        pytest.param(b"*1\r\n$abc\r\n", "invalid bulk length", id="bulk-not-a-number"),
        pytest.param(b"*1\r\n$+3\r\nfoo\r\n", "invalid bulk length", id="bulk-plus-sign"),
        pytest.param(b"*1\r\n$03\r\nfoo\r\n", "invalid bulk length", id="bulk-leading-zero"),
        pytest.param(b"*3000000000\r\n", "invalid multibulk length", id="multibulk-over-int"),
        pytest.param(b"*x\r\n", "invalid multibulk length", id="multibulk-not-a-number"),
        pytest.param(b"*1\r\n:1\r\n", "expected '$', got ':'", id="not-a-bulk"),
        # Valkey 8 checks the two bytes after an argument; forwarded, such a request would
        # make the node close the shared connection it came on
        pytest.param(b"*1\r\n$4\r\nPINGxx", "invalid CRLF in request", id="bulk-no-crlf"),
        pytest.param(
            b"*2\r\n$4\r\nECHO\r\n$1\r\naXY*1\r\n$4\r\nPING\r\n",
            "invalid CRLF in request",
            id="bulk-length-lies",
        ),
        pytest.param(b'GET "unbalanced\r\n', "unbalanced quotes in request", id="bad-quotes"),
        pytest.param(b"x" * 70000, "too big inline request", id="inline-too-big"),
        pytest.param(b"*1\r\n$" + b"1" * 70000, "too big bulk count string", id="bulk-header"),
    ],
)
def test_bad_requests_are_protocol_errors(data: bytes, message: str) -> None:
    reqs, err = frame_all(b"*1\r\n$4\r\nPING\r\n" + data)
    assert reqs == [([b"PING"], b"*1\r\n$4\r\nPING\r\n")]  # what came before still runs
    assert err is not None and err.message == message
    assert err.reply == b"-ERR Protocol error: " + message.encode() + b"\r\n"


def test_query_buffer_limit() -> None:
    framer = RequestFramer(max_query=1000)
    _, err = framer.feed(b"*1\r\n$2000\r\n" + b"x" * 500)
    assert err is None
    _, err = framer.feed(b"x" * 600)
    assert err is not None and "query buffer" in err.message


def test_unauthenticated_limits() -> None:
    framer = RequestFramer(authenticated=False)
    _, err = framer.feed(b"*11\r\n")
    assert err is not None and err.message == "unauthenticated multibulk length"


def test_large_bulk_over_many_chunks_is_framed_once() -> None:
    raw = encode_command([b"SET", b"big", b"v" * 300_000])
    reqs, err = frame_all(raw, chunk=4096)
    assert err is None and reqs == [([b"SET", b"big", b"v" * 300_000], raw)]


commands = st.lists(st.binary(max_size=40), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(commands, min_size=1, max_size=20), st.data())
def test_random_split_points_never_desynchronise(
    cmds: list[list[bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_command(c) for c in cmds)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    framer = RequestFramer()
    got: list[tuple[list[bytes], bytes | None]] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        reqs, err = framer.feed(stream[prev:cut])
        assert err is None
        got.extend(reqs)
        prev = cut
    assert got == [(c, encode_command(c)) for c in cmds]
    assert framer.buffered == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=10))
def test_random_bytes_never_crash_the_framer(garbage: bytes, sizes: list[int]) -> None:
    framer = RequestFramer()
    pos = 0
    for size in [*sizes, len(garbage)]:
        reqs, err = framer.feed(garbage[pos : pos + size])
        for args, raw in reqs:
            assert all(isinstance(a, bytes) for a in args)
            assert raw is None or raw[:1] == b"*"
        if err is not None:
            assert isinstance(err.message, str)
            return
        pos += size


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, min_size=1, max_size=5), st.binary(max_size=50))
def test_good_requests_before_garbage_are_all_delivered(
    cmds: list[list[bytes]], tail: bytes
) -> None:
    stream = b"".join(encode_command(c) for c in cmds)
    reqs, _ = frame_all(stream + tail, chunk=7)
    assert [a for a, _ in reqs[: len(cmds)]] == cmds


# The C accelerator must agree with the framer on every input: the requests it takes are the
# framer's first ones, with the same bytes, and it stops at anything it cannot prove canonical.
RESP_PIECES = request_pieces(commands)


@settings(max_examples=1000, deadline=None)
@given(st.lists(RESP_PIECES, min_size=1, max_size=6))
def test_canonical_splitter_agrees_with_the_framer(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    splitter = CanonicalSplitter()
    fast, used = splitter.split(data)
    assert used == sum(len(raw) for _, raw in fast if raw is not None)
    slow, _ = RequestFramer().feed(data)
    assert fast == slow[: len(fast)]
    # and it is reusable afterwards, whatever it was fed
    again, _ = splitter.split(encode_command([b"GET", b"k"]))
    assert again == [([b"GET", b"k"], encode_command([b"GET", b"k"]))]


def test_canonical_splitter_takes_a_whole_pipeline() -> None:
    cmds = [[b"SET", b"k%d" % i, b"v" * i] for i in range(200)]
    data = b"".join(encode_command(c) for c in cmds)
    fast, used = CanonicalSplitter().split(data)
    assert used == len(data) and [a for a, _ in fast] == cmds


# --- replies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        b"+OK\r\n",
        b"-ERR x\r\n",
        b":42\r\n",
        b"$3\r\nfoo\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
        b"%1\r\n+k\r\n~2\r\n_\r\n#t\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n",
        b",1.5\r\n",
        b"(123\r\n",
        b"=8\r\ntxt:abcd\r\n",
        b"|1\r\n+a\r\n+b\r\n:1\r\n",
    ],
)
def test_reply_end_on_every_type_and_every_prefix(reply: bytes) -> None:
    assert replies.reply_end(reply + b"+NEXT\r\n", 0) == len(reply)
    for cut in range(len(reply)):
        assert replies.reply_end(reply[:cut], 0) == -1


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b"-MOVED 3999 127.0.2.1:7002\r\n", replies.Moved(3999, ("127.0.2.1", 7002))),
        (b"-ASK 12 127.0.0.1:7003\r\n", replies.Ask(12, ("127.0.0.1", 7003))),
        (b"-MOVED 5 :7004\r\n", replies.Moved(5, ("127.0.0.1", 7004))),
        (b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n", replies.TryAgain()),
        (b"-CLUSTERDOWN The cluster is down\r\n", replies.ClusterDown()),
        (b"-ERR unknown command\r\n", None),
        (b"+MOVED\r\n", None),
        (b"$5\r\nMOVED\r\n", None),
    ],
)
def test_classify_redirects(frame: bytes, expected: replies.Redirect | None) -> None:
    assert replies.classify(frame) == expected


def test_mget_merge_restores_request_order() -> None:
    cmd = TABLE[b"MGET"]
    args = [b"MGET", b"a", b"b", b"{a}x", b"c", b"a"]
    parts = split(cmd, args)  # type: ignore[arg-type]
    assert [p.args[1:] for p in parts] == [(b"a", b"{a}x", b"a"), (b"b",), (b"c",)]
    assert [p.positions for p in parts] == [(0, 2, 4), (1,), (3,)]
    frames = {
        key_slot(b"a"): b"*3\r\n$2\r\nva\r\n$-1\r\n$2\r\nva\r\n",
        key_slot(b"b"): b"*1\r\n$2\r\nvb\r\n",
        key_slot(b"c"): b"*1\r\n$-1\r\n",
    }
    merged = replies.merge_ordered([(p.positions, frames[p.slot]) for p in parts], 5, False)
    assert merged == b"*5\r\n$2\r\nva\r\n$2\r\nvb\r\n$-1\r\n$-1\r\n$2\r\nva\r\n"
    resp3 = replies.merge_ordered([(p.positions, frames[p.slot]) for p in parts], 5, True)
    assert resp3.count(b"_\r\n") == 2


def test_mset_split_keeps_values_with_their_keys() -> None:
    parts = split(TABLE[b"MSET"], [b"MSET", b"a", b"1", b"b", b"2", b"{a}z", b"3"])  # type: ignore[arg-type]
    assert [p.args for p in parts] == [
        (b"MSET", b"a", b"1", b"{a}z", b"3"),
        (b"MSET", b"b", b"2"),
    ]


def test_sum_and_error_merges() -> None:
    assert replies.merge_sum([b":1\r\n", b":2\r\n"]) == b":3\r\n"
    assert replies.merge_sum([b":1\r\n", b"-ERR x\r\n"]) == b"-ERR x\r\n"
    assert replies.merge_all_succeeded([b"+OK\r\n", b"+OK\r\n"]) == b"+OK\r\n"
    assert replies.merge_concat([b"*1\r\n$1\r\na\r\n", b"*0\r\n"], False) == b"*1\r\n$1\r\na\r\n"


@pytest.mark.parametrize(("index", "shards"), [(0, 3), (1, 3), (2, 3), (499, 500)])
def test_scan_cursor_encodes_the_shard(index: int, shards: int) -> None:
    assert replies.split_scan_cursor(replies.scan_cursor(index, 12345)) == (index, 12345)
    more = replies.merge_scan(b"*2\r\n$2\r\n17\r\n*0\r\n", index, shards, False)
    assert replies.split_scan_cursor(int(replies.parse(more)[0])) == (index, 17)
    done = replies.merge_scan(b"*2\r\n$1\r\n0\r\n*0\r\n", index, shards, False)
    nxt = int(replies.parse(done)[0])
    if index + 1 < shards:
        assert replies.split_scan_cursor(nxt) == (index + 1, 0) and nxt != 0
    else:
        assert nxt == 0


# --- key positions and plans ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "positions"),
    [
        ([b"GET", b"k"], [1]),
        ([b"SET", b"k", b"v", b"EX", b"10"], [1]),
        ([b"MGET", b"a", b"b", b"c"], [1, 2, 3]),
        ([b"MSET", b"a", b"1", b"b", b"2"], [1, 3]),
        ([b"RENAME", b"a", b"b"], [1, 2]),
        ([b"XREAD", b"COUNT", b"2", b"STREAMS", b"s1", b"s2", b"0", b"0"], [4, 5]),
        ([b"xread", b"block", b"0", b"streams", b"s", b"$"], [4]),
        ([b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"], [3, 4]),
        ([b"EVAL", b"return 1", b"0"], []),
        ([b"BLPOP", b"a", b"b", b"0"], [1, 2]),
        ([b"LMPOP", b"2", b"a", b"b", b"LEFT"], [2, 3]),
        ([b"ZUNIONSTORE", b"d", b"2", b"a", b"b"], [1, 3, 4]),
        ([b"OBJECT", b"ENCODING", b"k"], [2]),
        ([b"SPUBLISH", b"chan", b"msg"], [1]),
        ([b"DBSIZE"], []),
    ],
)
def test_key_positions_from_engine_key_specs(args: list[bytes], positions: list[int]) -> None:
    cmd = lookup(TABLE, args)  # type: ignore[arg-type]
    assert cmd is not None
    assert key_positions(cmd, args) == positions


def test_incomplete_key_specs_ask_the_engine() -> None:
    cmd = lookup(TABLE, [b"SORT", b"k", b"BY", b"w_*"])  # type: ignore[arg-type]
    assert cmd is not None and key_positions(cmd, [b"SORT", b"k"]) is None
    assert plan(TABLE, [b"SORT", b"k"]).action is Action.GETKEYS  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "action"),
    [
        ([b"GET", b"k"], Action.SINGLE),
        ([b"get", b"{user1}a"], Action.SINGLE),
        ([b"MGET", b"{t}a", b"{t}b"], Action.SINGLE),  # one slot: forwarded unchanged
        ([b"MGET", b"a", b"b"], Action.SPLIT),
        ([b"DEL", b"a", b"b"], Action.SPLIT),
        ([b"UNLINK", b"a", b"b"], Action.SPLIT),
        ([b"EXISTS", b"a", b"b"], Action.SPLIT),
        ([b"TOUCH", b"a", b"b"], Action.SPLIT),
        ([b"MSET", b"a", b"1", b"b", b"2"], Action.SPLIT),
        ([b"MSETNX", b"a", b"1", b"b", b"2"], Action.CROSSSLOT),
        ([b"RENAME", b"a", b"b"], Action.CROSSSLOT),
        ([b"EVAL", b"s", b"2", b"a", b"b"], Action.CROSSSLOT),
        ([b"EVAL", b"s", b"2", b"{x}a", b"{x}b"], Action.SINGLE),
        ([b"BLPOP", b"a", b"b", b"0"], Action.CROSSSLOT),
        ([b"BLPOP", b"a", b"0"], Action.BLOCKING),
        ([b"XREAD", b"STREAMS", b"s", b"0"], Action.SINGLE),
        ([b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"], Action.BLOCKING),
        ([b"DBSIZE"], Action.FANOUT),
        ([b"KEYS", b"*"], Action.FANOUT),
        ([b"FLUSHALL"], Action.FANOUT),
        ([b"SCAN", b"0"], Action.SCAN),
        ([b"PING"], Action.LOCAL),
        ([b"CLUSTER", b"SLOTS"], Action.LOCAL),
        ([b"MULTI"], Action.TRANSACTION),
        ([b"SUBSCRIBE", b"c"], Action.PUBSUB),
        ([b"NOSUCHCOMMAND", b"x"], Action.SINGLE),  # forwarded: the engine answers
    ],
)
def test_routing_plan(args: list[bytes], action: Action) -> None:
    assert plan(TABLE, args).action is action  # type: ignore[arg-type]


def test_readonly_flag_and_slot() -> None:
    p = plan(TABLE, [b"GET", b"{user1}x"])  # type: ignore[arg-type]
    assert p.readonly and p.slot == key_slot(b"user1")
    assert not plan(TABLE, [b"SET", b"k", b"v"]).readonly  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key",
    [b"", b"foo", b"{user1000}.following", b"{}x", b"{{a}}", b"a{b", b"x}{y}", b"\xff\x00"],
)
def test_key_slot_matches_reference(key: bytes) -> None:
    assert key_slot(key) == crc16(hash_tag(key)) % 16384


@given(st.binary(max_size=30))
def test_key_slot_matches_reference_everywhere(key: bytes) -> None:
    assert key_slot(key) == crc16(hash_tag(key)) % 16384


def test_known_slots() -> None:
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{foo}bar") == key_slot(b"foo")


# --- routes ------------------------------------------------------------------------------------


def _layout() -> Layout:
    def node(name: str, shard: int, zone: str, i: int, role: str) -> LayoutNode:
        return LayoutNode(
            name, name * 8, shard, zone, f"127.0.{i}.1", 7000 + shard * 10 + i, 17000, role
        )

    return Layout(
        cluster="c",
        epoch=3,
        shards=(
            LayoutShard(
                1,
                ((0, 8191),),
                (node("a", 1, "az-a", 1, "primary"), node("b", 1, "az-b", 2, "replica")),
            ),
            LayoutShard(
                2,
                ((8192, 16383),),
                (node("c", 2, "az-b", 2, "primary"), node("d", 2, "az-a", 1, "replica")),
            ),
        ),
    )


def test_routes_from_layout_and_read_from() -> None:
    table = routes.from_layout(_layout())
    r = table[100]
    assert r is not None and r.primary == ("127.0.1.1", 7011)
    assert routes.primaries(table) == [(0, ("127.0.1.1", 7011)), (8192, ("127.0.2.1", 7022))]
    assert routes.pick(r, readonly=True, read_from="primary", zone=None, salt=1) == (
        r.primary,
        False,
    )
    assert routes.pick(r, readonly=False, read_from="replica", zone=None, salt=1) == (
        r.primary,
        False,
    )
    assert routes.pick(r, readonly=True, read_from="replica", zone=None, salt=1) == (
        ("127.0.2.1", 7012),
        True,
    )
    assert routes.pick(r, readonly=True, read_from="same-zone", zone="az-b", salt=0) == (
        ("127.0.2.1", 7012),
        True,
    )
    assert routes.pick(r, readonly=True, read_from="same-zone", zone="az-a", salt=0) == (
        r.primary,
        False,
    )


def test_routes_from_cluster_shards() -> None:
    def n(port: int, ip: bytes, role: bytes, health: bytes) -> list[object]:
        return [b"id", b"x", b"port", port, b"ip", ip, b"role", role, b"health", health]

    reply = [
        [
            b"slots",
            [0, 99, 200, 299],
            b"nodes",
            [
                n(7001, b"127.0.1.1", b"master", b"online"),
                n(7002, b"127.0.2.1", b"replica", b"online"),
                n(7003, b"127.0.3.1", b"replica", b"fail"),
            ],
        ],
    ]
    table = routes.from_cluster_shards(reply, {("127.0.2.1", 7002): "az-b"})
    r = table[250]
    assert r is not None and r.primary == ("127.0.1.1", 7001)
    assert r.replicas == (("127.0.2.1", 7002),)
    assert table[150] is None and table[99] is r


def test_fast_paths_agree_with_the_full_plan() -> None:
    from router.commands import fast_paths

    fast = fast_paths(TABLE)  # type: ignore[arg-type]
    assert b"GET" in fast and b"get" in fast and b"SET" in fast
    assert b"MGET" not in fast and b"BLPOP" not in fast and b"EVAL" not in fast
    for name, (index, readonly, _) in fast.items():
        args = [name, *[b"{k%d}" % i for i in range(1, index + 3)]]
        p = plan(TABLE, args)  # type: ignore[arg-type]
        assert p.action is Action.SINGLE
        assert p.slot == key_slot(args[index]) and p.readonly == readonly


@pytest.mark.parametrize("name", [b"MONITOR", b"SYNC", b"PSYNC", b"ASKING", b"CLIENT"])
def test_connection_state_commands_never_reach_shared_connections(name: bytes) -> None:
    assert plan(TABLE, [name, b"x"]).action is Action.LOCAL  # type: ignore[arg-type]
