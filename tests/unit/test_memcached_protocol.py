"""The memcached text protocol, pure: client framing, node reply framing, merging, stats."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.memcache.protocol import Framer, Kind, Reply
from router.memcache.replies import ReplyFramer, aggregate_stats, merge_values, value_blocks


def feed_all(data: bytes, *, chunk: int | None = None, **kw: int) -> tuple[Framer, list]:
    framer = Framer(**kw)
    out = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        out += framer.feed(data[i : i + step])
    return framer, out


@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_requests_are_framed_whatever_the_packet_boundaries(chunk: int | None) -> None:
    data = (
        b"get a b c\r\n"
        b"set k 5 0 3\r\nabc\r\n"
        b"cas k 0 0 2 99 noreply\r\nxy\r\n"
        b"incr n 7\r\n"
        b"delete k noreply\r\n"
        b"touch k 10\r\n"
        b"gats 100 a b\r\n"
        b"ms m 2 T0 q\r\nhi\r\n"
        b"mg m v\r\n"
        b"mn\r\n"
        b"flush_all 0\r\n"
        b"config get cluster\r\n"
        b"version\n"  # a bare LF ends a line, as the engine accepts
    )
    framer, reqs = feed_all(data, chunk=chunk)
    assert framer.error is None
    kinds = [(r.kind, r.command) for r in reqs]
    assert kinds == [
        (Kind.GET, b"get"),
        (Kind.KEYED, b"set"),
        (Kind.KEYED, b"cas"),
        (Kind.KEYED, b"incr"),
        (Kind.KEYED, b"delete"),
        (Kind.KEYED, b"touch"),
        (Kind.GET, b"gats"),
        (Kind.KEYED, b"ms"),
        (Kind.KEYED, b"mg"),
        (Kind.NOOP, b"mn"),
        (Kind.FLUSH, b"flush_all"),
        (Kind.CONFIG, b"config"),
        (Kind.VERSION, b"version"),
    ]
    assert reqs[0].keys == [b"a", b"b", b"c"]
    assert reqs[1].data == b"abc" and reqs[1].hash_key == b"k"
    assert reqs[2].noreply and reqs[4].noreply
    assert reqs[6].keys == [b"a", b"b"]
    assert reqs[7].quiet and reqs[7].data == b"hi"


def test_forwarded_requests_drop_noreply_and_quiet_flags() -> None:
    _, reqs = feed_all(b"set k 1 2 3 noreply\r\nabc\r\nmg k v q\r\ndelete k\r\n")
    assert reqs[0].forward() == b"set k 1 2 3\r\nabc\r\n"
    assert reqs[1].forward() == b"mg k v\r\n"
    assert reqs[2].forward() == b"delete k\r\n"
    assert [r.reply_shape for r in reqs] == [Reply.LINE, Reply.META, Reply.LINE]


def test_keys_take_any_byte_but_the_separators_like_the_engine() -> None:
    _, reqs = feed_all(b"get \x10\x01k\r\n")
    assert reqs[0].keys == [b"\x10\x01k"]


def test_meta_base64_keys_hash_on_the_decoded_key() -> None:
    _, reqs = feed_all(b"mg Zm9v b v\r\n")
    assert reqs[0].hash_key == b"foo"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"set k 0 0 abc\r\n", "bad command line format"),
        (b"set k 0 0\r\n", "bad command line format"),
        (b"set k 0 0 3 extra\r\nabc\r\n", "bad command line format"),
        (b"set k 0 0 3\r\nabcd\r\n", "bad data chunk"),
        (b"get\r\n", "bad command line format"),
        (b"get " + b"k" * 251 + b"\r\n", "bad command line format"),
        (b"incr k -1\r\n", "bad command line format"),
        (b"touch k\r\n", "bad command line format"),
        (b"mg !!! b\r\n", "bad data chunk"),
        (b"get " + b"k " * 40000 + b"\r\n", "line too long"),
    ],
)
def test_malformed_input_is_a_client_error(data: bytes, message: str) -> None:
    framer, reqs = feed_all(data)
    assert reqs == []
    assert framer.error is not None and framer.error.message == message
    assert framer.error.reply == f"CLIENT_ERROR {message}\r\n".encode()
    assert framer.feed(b"get k\r\n") == []  # nothing after the error is parsed


def test_requests_before_the_malformed_one_are_kept() -> None:
    framer, reqs = feed_all(b"get a\r\nset x y\r\nget b\r\n")
    assert [r.keys for r in reqs] == [[b"a"]]
    assert framer.error is not None


def test_unknown_commands_and_empty_lines_are_errors_not_malformed() -> None:
    framer, reqs = feed_all(b"bogus 1 2\r\n\r\nget a\r\n")
    assert framer.error is None
    assert [r.kind for r in reqs] == [Kind.UNKNOWN, Kind.UNKNOWN, Kind.GET]


def test_a_value_over_the_limit_is_skipped_without_being_held() -> None:
    big = b"x" * 5000
    framer, reqs = feed_all(
        b"set k 0 0 5000\r\n" + big + b"\r\nget k\r\n", chunk=512, max_value=1024
    )
    assert [r.kind for r in reqs] == [Kind.TOO_LARGE, Kind.GET]
    assert len(framer.buf) == 0


def test_a_line_without_newline_is_bounded_in_bytes() -> None:
    framer = Framer(max_line=100)
    assert framer.feed(b"get " + b"a" * 50) == []
    framer.feed(b"a" * 60)
    assert framer.error is not None and framer.error.message == "line too long"


def test_framing_is_linear_in_the_bytes_received() -> None:
    """A 4 MB value sent 16 bytes at a time, and a long line sent one byte at a time: each
    feed resumes where the last stopped (a quadratic framer takes minutes here)."""
    value = b"v" * (4 * 1024 * 1024)
    data = b"set k 0 0 %d\r\n%s\r\n" % (len(value), value)
    framer = Framer(max_value=len(value))
    t0 = time.perf_counter()
    got = []
    view = memoryview(data)
    for i in range(0, len(data), 4096):
        got += framer.feed(bytes(view[i : i + 4096]))
    line = b"get " + b"k " * 20000 + b"\r\n"
    for i in range(len(line)):
        got += framer.feed(line[i : i + 1])
    elapsed = time.perf_counter() - t0
    assert [r.kind for r in got] == [Kind.KEYED, Kind.GET]
    assert got[0].data == value and len(got[1].keys) == 20000
    assert elapsed < 10  # generous: a hang guard, not a timing figure


def test_node_replies_are_cut_by_their_shapes_across_packets() -> None:
    stream = (
        b"VALUE a 0 3\r\nabc\r\nVALUE b 1 5\r\nEND\r\n\r\nEND\r\n"  # data may hold END
        b"STORED\r\n"
        b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n"
        b"VA 5 t\r\nEND\r\n\r\n"
        b"EN\r\n"
        b"SERVER_ERROR out of memory\r\n"
    )
    shapes = [Reply.VALUES, Reply.LINE, Reply.STATS, Reply.META, Reply.META, Reply.VALUES]
    for chunk in (1, 5, len(stream)):
        framer = ReplyFramer()
        for s in shapes:
            framer.expect(s)
        replies = []
        for i in range(0, len(stream), chunk):
            replies += framer.feed(stream[i : i + chunk])
        assert replies == [
            b"VALUE a 0 3\r\nabc\r\nVALUE b 1 5\r\nEND\r\n\r\nEND\r\n",
            b"STORED\r\n",
            b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n",
            b"VA 5 t\r\nEND\r\n\r\n",
            b"EN\r\n",
            b"SERVER_ERROR out of memory\r\n",
        ]


def test_a_reply_nobody_asked_for_is_refused() -> None:
    with pytest.raises(ValueError):
        ReplyFramer().feed(b"STORED\r\n")


def test_multi_get_parts_merge_in_the_order_asked() -> None:
    part1 = b"VALUE b 0 1\r\n2\r\nEND\r\n"
    part2 = b"VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n"
    assert value_blocks(part2) == {b"a": b"VALUE a 0 1\r\n1\r\n", b"c": b"VALUE c 0 1\r\n3\r\n"}
    merged = merge_values([b"a", b"x", b"b", b"c", b"a"], [part1, part2], {})
    assert merged == (
        b"VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE c 0 1\r\n3\r\nVALUE a 0 1\r\n1\r\nEND\r\n"
    )


def test_stats_sum_amounts_and_keep_the_proxy_own_lines() -> None:
    nodes = [
        {"pid": "10", "uptime": "5", "curr_items": "3", "get_hits": "7", "version": "1.6"},
        {"pid": "11", "uptime": "9", "curr_items": "4", "get_hits": "1", "rusage_user": "0.5"},
    ]
    out = aggregate_stats(nodes, {"pid": "99", "cluster_nodes": "2"})
    assert out == (
        b"STAT pid 99\r\nSTAT cluster_nodes 2\r\nSTAT curr_items 7\r\nSTAT get_hits 8\r\nEND\r\n"
    )


def test_a_merged_reply_over_the_limit_is_refused_before_it_is_built() -> None:
    part = b"VALUE a 0 10\r\n0123456789\r\nEND\r\n"
    assert merge_values([b"a"] * 3, [part], {}, limit=100).count(b"VALUE") == 3
    with pytest.raises(ValueError):
        merge_values([b"a"] * 10, [part], {}, limit=100)


@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [
                    b"get a b\r\n",
                    b"set k 0 0 3\r\n",
                    b"abc\r\n",
                    b"mg k v q\r\n",
                    b"\r\n",
                    b"cas k 1 2 3 4 noreply\r\n",
                    b"ms k 2 b\r\n",
                    b"gat -1 k\r\n",
                    b"\n",
                ]
            ),
        ),
        max_size=30,
    )
)
def test_any_bytes_end_in_requests_or_one_client_error(chunks: list[bytes]) -> None:  # fmt: skip
    framer = Framer(max_line=256, max_value=64)
    for chunk in chunks:
        for req in framer.feed(chunk):
            assert req.kind in Kind
            assert req.forward().endswith(b"\r\n") or req.kind is Kind.TOO_LARGE
    assert framer.error is None or framer.error.reply.startswith(b"CLIENT_ERROR ")
    assert len(framer.buf) <= 256 + 64 + 2 + 40


@given(st.lists(st.binary(max_size=60), max_size=20), st.lists(st.sampled_from(list(Reply))))
def test_any_node_bytes_are_framed_or_refused_with_value_error(
    chunks: list[bytes], shapes: list[Reply]
) -> None:
    framer = ReplyFramer(max_reply=1000)
    for shape in shapes:
        framer.expect(shape)
    try:
        for chunk in chunks:
            framer.feed(chunk)
    except ValueError:
        pass
