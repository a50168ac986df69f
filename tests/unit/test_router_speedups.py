"""The C accelerator (router/_speedups.pyx) against the pure-Python reference: on any input,
canonical or hostile, whole or cut anywhere, both give the same requests, the same replies and
the same errors. Skipped where the accelerator was not built (no C compiler at install)."""

from __future__ import annotations

import pytest
from helpers import request_pieces
from hypothesis import given, settings
from hypothesis import strategies as st

from cachefleet.resp import encode_command
from router.framing import CanonicalSplitter, RequestFramer
from router.replies import ReplyScanner

pytest.importorskip("router._speedups", reason="the C accelerator was not built")

args = st.lists(st.binary(max_size=20), min_size=1, max_size=5)

REQUEST_PIECES = request_pieces(args)


@settings(max_examples=2000, deadline=None)
@given(st.lists(REQUEST_PIECES, min_size=1, max_size=6))
def test_native_split_is_the_reference_split(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    native = CanonicalSplitter().split(data)
    reference = CanonicalSplitter(native=False).split(data)
    assert native == reference
    # and what it takes is what the engine-faithful framer reads first
    framed, _ = RequestFramer().feed(data)
    assert native[0] == framed[: len(native[0])]


REPLY_PIECES = st.one_of(
    st.binary(max_size=12).map(lambda v: b"$%d\r\n%s\r\n" % (len(v), v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: b":%d\r\n" % i),
    st.sampled_from(
        [
            b"+OK\r\n",
            b"+\r\n",
            b"-ERR wrong\r\n",
            b"-MOVED 3999 127.0.0.1:6381\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$03\r\nabc\r\n",  # not canonical: left to the Python walk, which reads it
            b"$-2\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"*-1\r\n",
            b"%1\r\n+k\r\n$1\r\nv\r\n",
            b"_\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"+no end",
            b"$5\r\nab",
        ]
    ),
)


def scan(scanner: ReplyScanner, stream: bytes, cuts: list[int]) -> tuple[list[bytes], str]:
    frames: list[bytes] = []
    pos = 0
    try:
        for cut in [*cuts, len(stream)]:
            if cut > pos:
                frames.extend(scanner.feed(stream[pos:cut]))
                pos = cut
    except ValueError as exc:
        return frames, str(exc)
    return frames, ""


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(REPLY_PIECES, min_size=1, max_size=12),
    st.lists(st.integers(0, 400), max_size=6).map(sorted),
)
def test_native_reply_cutting_is_the_reference_walk(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    assert scan(ReplyScanner(), stream, cuts) == scan(ReplyScanner(native=False), stream, cuts)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=4).map(sorted))
def test_native_reply_cutting_on_garbage_is_the_reference_walk(
    stream: bytes, cuts: list[int]
) -> None:
    assert scan(ReplyScanner(), stream, cuts) == scan(ReplyScanner(native=False), stream, cuts)


def test_a_whole_buffer_reply_is_passed_on_without_a_copy() -> None:
    packet = b"$3\r\nabc\r\n"
    (frame,) = ReplyScanner().feed(packet)
    assert frame is packet
    request = encode_command([b"GET", b"k"])
    ((_, raw),), used = CanonicalSplitter().split(request)
    assert raw is request and used == len(request)
