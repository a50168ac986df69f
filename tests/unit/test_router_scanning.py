"""Request framing and reply scanning stay linear and bounded: parse state is kept between
packets (no re-parse from the request's start), replies are walked without recursion, and
large values are joined once. The time bounds are generous, to catch the quadratic
behaviour (seconds to minutes) rather than to measure."""

from __future__ import annotations

import time

import pytest

from cachefleet.resp import encode_command
from router.framing import RequestFramer
from router.replies import MAX_DEPTH, ReplyScanner, reply_end


def test_a_slow_loris_multibulk_costs_constant_work_per_packet() -> None:
    framer = RequestFramer()
    assert framer.feed(b"*1000000\r\n" + b"$1\r\nx\r\n" * 150_000) == ([], None)
    started = time.perf_counter()
    for _ in range(2_000):  # the old framer re-parsed 150k arguments for each: ~90 ms each
        reqs, err = framer.feed(b"$1\r\nx\r\n")
        assert reqs == [] and err is None
    assert time.perf_counter() - started < 2.0


def test_a_large_request_in_small_packets_is_framed_in_linear_time() -> None:
    args = [b"RPUSH", b"k", *[b"v%d" % i for i in range(200_000)]]
    raw = encode_command(args)
    framer = RequestFramer()
    got = []
    started = time.perf_counter()
    for i in range(0, len(raw), 1024):
        reqs, err = framer.feed(raw[i : i + 1024])
        assert err is None
        got.extend(reqs)
    assert time.perf_counter() - started < 3.0
    assert got == [(args, raw)]
    assert framer.buffered == 0


def test_query_buffer_cap_counts_the_parsed_part_of_a_request() -> None:
    framer = RequestFramer(max_query=1000)
    assert framer.feed(b"*100\r\n" + b"$10\r\n0123456789\r\n" * 40) == ([], None)
    _, err = framer.feed(b"$10\r\n0123456789\r\n" * 40)
    assert err is not None and err.message == "query buffer limit exceeded"


def test_a_protocol_error_text_has_no_raw_line_breaks() -> None:
    _, err = RequestFramer().feed(b"*1\r\n\r\n")
    assert err is not None and err.reply == b"-ERR Protocol error: expected '$', got '?'\r\n"


def nested(depth: int) -> bytes:
    return b"*1\r\n" * depth + b":1\r\n"


@pytest.mark.parametrize("depth", [1500, MAX_DEPTH])
def test_a_deep_reply_is_walked_without_recursion(depth: int) -> None:
    reply = nested(depth)
    assert reply_end(reply, 0) == len(reply)
    scanner = ReplyScanner()
    assert scanner.feed(reply[:-3]) == []
    assert scanner.feed(reply[-3:]) == [reply]


def test_a_reply_deeper_than_the_bound_is_refused_not_a_crash() -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        ReplyScanner().feed(nested(MAX_DEPTH + 1))


def test_a_64_mb_bulk_reply_in_64_kb_packets_is_joined_once() -> None:
    value = b"x" * (64 << 20)
    reply = b"$%d\r\n" % len(value) + value + b"\r\n+OK\r\n"
    scanner = ReplyScanner()
    frames: list[bytes] = []
    started = time.perf_counter()
    for i in range(0, len(reply), 64 << 10):
        frames.extend(scanner.feed(reply[i : i + (64 << 10)]))
    assert time.perf_counter() - started < 3.0  # the old buffer copy took ~6 s
    assert [len(f) for f in frames] == [len(reply) - 5, 5]
    assert frames[1] == b"+OK\r\n" and scanner.buffered == 0


def test_a_large_array_reply_in_small_packets_is_walked_once() -> None:
    reply = b"*200000\r\n" + b"$5\r\nvalue\r\n" * 200_000
    scanner = ReplyScanner()
    frames: list[bytes] = []
    started = time.perf_counter()
    for i in range(0, len(reply), 4096):
        frames.extend(scanner.feed(reply[i : i + 4096]))
    assert time.perf_counter() - started < 3.0
    assert frames == [reply]


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 11, 64])
def test_scanner_frames_any_packet_split_like_reply_end(cut: int) -> None:
    stream = (
        b"+OK\r\n$3\r\nabc\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n%1\r\n+k\r\n$-1\r\n"
        b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n*-1\r\n>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"
    )
    expected = []
    pos = 0
    while pos < len(stream):
        end = reply_end(stream, pos)
        expected.append(stream[pos:end])
        pos = end
    scanner = ReplyScanner()
    got: list[bytes] = []
    for i in range(0, len(stream), cut):
        got.extend(scanner.feed(stream[i : i + cut]))
    assert got == expected and len(expected) == 7
