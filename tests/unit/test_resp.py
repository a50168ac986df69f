"""RESP encoding, inline-command splitting and CLUSTER NODES parsing, on byte fixtures."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachefleet.nodes import parse_cluster_nodes
from cachefleet.resp import OK, Err, Simple, Verbatim, encode, encode_command
from router.inline import InlineError, split_inline

# --- encode -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "resp2", "resp3"),
    [
        pytest.param(OK, b"+OK\r\n", b"+OK\r\n", id="ok"),
        pytest.param(Simple("PONG"), b"+PONG\r\n", b"+PONG\r\n", id="simple"),
        pytest.param(Simple("a\r\nb"), b"+a  b\r\n", b"+a  b\r\n", id="simple-no-crlf"),
        pytest.param(Err("ERR bad"), b"-ERR bad\r\n", b"-ERR bad\r\n", id="err"),
        pytest.param(Err("ERR x\ny"), b"-ERR x y\r\n", b"-ERR x y\r\n", id="err-no-lf"),
        pytest.param(ValueError("ERR boom"), b"-ERR boom\r\n", b"-ERR boom\r\n", id="exception"),
        pytest.param(0, b":0\r\n", b":0\r\n", id="int-0"),
        pytest.param(42, b":42\r\n", b":42\r\n", id="int"),
        pytest.param(-7, b":-7\r\n", b":-7\r\n", id="int-neg"),
        pytest.param("hello", b"$5\r\nhello\r\n", b"$5\r\nhello\r\n", id="str"),
        pytest.param("", b"$0\r\n\r\n", b"$0\r\n\r\n", id="str-empty"),
        pytest.param("é", b"$2\r\n\xc3\xa9\r\n", b"$2\r\n\xc3\xa9\r\n", id="str-utf8"),
        pytest.param(b"a\r\nb", b"$4\r\na\r\nb\r\n", b"$4\r\na\r\nb\r\n", id="bytes-crlf"),
        pytest.param(bytearray(b"xy"), b"$2\r\nxy\r\n", b"$2\r\nxy\r\n", id="bytearray"),
        pytest.param(None, b"$-1\r\n", b"_\r\n", id="nil"),
        pytest.param(True, b":1\r\n", b"#t\r\n", id="true"),
        pytest.param(False, b":0\r\n", b"#f\r\n", id="false"),
        pytest.param(1.5, b"$3\r\n1.5\r\n", b",1.5\r\n", id="float"),
        pytest.param(Verbatim("hi"), b"$2\r\nhi\r\n", b"=6\r\ntxt:hi\r\n", id="verbatim"),
        pytest.param([], b"*0\r\n", b"*0\r\n", id="empty-array"),
        pytest.param(
            [1, [b"a", None]],
            b"*2\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n",
            b"*2\r\n:1\r\n*2\r\n$1\r\na\r\n_\r\n",
            id="nested",
        ),
        pytest.param(
            {"a": 1, "b": [True]},
            b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n*1\r\n:1\r\n",
            b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n*1\r\n#t\r\n",
            id="map",
        ),
        pytest.param({}, b"*0\r\n", b"%0\r\n", id="empty-map"),
        pytest.param(("x",), b"*1\r\n$1\r\nx\r\n", b"*1\r\n$1\r\nx\r\n", id="tuple"),
    ],
)
def test_encode(value: Any, resp2: bytes, resp3: bytes) -> None:
    assert encode(value) == resp2
    assert encode(value, resp3=False) == resp2
    assert encode(value, resp3=True) == resp3


def test_encode_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        encode(object())


def read_all(data: bytes, **kwargs: Any) -> list[Any]:
    reader = hiredis.Reader(**kwargs)
    reader.feed(data)
    out = []
    while (item := reader.gets()) is not False:
        out.append(item)
    return out


resp2_values = st.recursive(
    st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@given(resp2_values)
def test_resp2_round_trip_through_hiredis(value: Any) -> None:
    assert read_all(encode(value)) == [value]


@given(st.text(max_size=30))
def test_str_round_trips_as_bulk(text: str) -> None:
    assert read_all(encode(text)) == [text.encode()]


def test_simple_and_error_through_hiredis() -> None:
    ok, err = read_all(encode(OK) + encode(Err("MOVED 3999 127.0.2.1:7102")))
    assert ok == b"OK"
    assert isinstance(err, hiredis.ReplyError)
    assert str(err) == "MOVED 3999 127.0.2.1:7102"


def test_resp2_map_reads_as_flat_array() -> None:
    assert read_all(encode({b"k": 1, b"v": b"x"})) == [[b"k", 1, b"v", b"x"]]


def test_resp3_values_through_hiredis() -> None:
    got = read_all(encode([{b"k": 1}, True, None, 2.5], resp3=True))
    assert got == [[{b"k": 1}, True, None, 2.5]]


def test_several_replies_stream() -> None:
    data = b"".join(encode(v) for v in (1, b"two", None, [3]))
    assert read_all(data) == [1, b"two", None, [3]]


# --- encode_command ---------------------------------------------------------------------


def test_encode_command() -> None:
    assert encode_command(["SET", "k", 1]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"
    assert encode_command([b"GET", b"\x00\r\n"]) == b"*2\r\n$3\r\nGET\r\n$3\r\n\x00\r\n\r\n"
    assert encode_command([]) == b"*0\r\n"


def test_encode_command_is_a_resp_request() -> None:
    args = ["MSET", "{t}a", "é", b"bin\xff", 12]
    assert read_all(encode_command(args)) == [[b"MSET", b"{t}a", "é".encode(), b"bin\xff", b"12"]]


# --- split_inline -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "args"),
    [
        pytest.param(b"PING", [b"PING"], id="one-word"),
        pytest.param(b"SET key value", [b"SET", b"key", b"value"], id="words"),
        pytest.param(b"  GET \t k   ", [b"GET", b"k"], id="extra-whitespace"),
        pytest.param(b'SET k "hello world"', [b"SET", b"k", b"hello world"], id="dquote"),
        pytest.param(b'SET k "a\\nb"', [b"SET", b"k", b"a\nb"], id="dquote-newline"),
        pytest.param(b'"\\r\\t\\b\\a"', [b"\r\t\b\a"], id="dquote-controls"),
        pytest.param(b'"\\x41\\x42"', [b"AB"], id="dquote-hex"),
        pytest.param(b'"\\xff\\x00"', [b"\xff\x00"], id="dquote-hex-bytes"),
        pytest.param(b'"\\xzz"', [b"xzz"], id="dquote-bad-hex"),
        pytest.param(b'"a\\"b"', [b'a"b'], id="dquote-escaped-quote"),
        pytest.param(b'"a\\\\b"', [b"a\\b"], id="dquote-escaped-backslash"),
        pytest.param(b'"\\q"', [b"q"], id="dquote-unknown-escape"),
        pytest.param(b"SET k 'a b \"c'", [b"SET", b"k", b'a b "c'], id="squote"),
        pytest.param(b"'a\\nb'", [b"a\\nb"], id="squote-no-escapes"),
        pytest.param(b"'' \"\"", [b"", b""], id="empty-quoted"),
        pytest.param(b"", [], id="empty"),
        pytest.param(b"   \t ", [], id="blank"),
    ],
)
def test_split_inline(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'GET "abc', id="dquote-open"),
        pytest.param(b"GET 'abc", id="squote-open"),
        pytest.param(b'GET "abc\\"', id="dquote-escaped-close"),
        pytest.param(b'"abc"def', id="dquote-followed-by-text"),
        pytest.param(b"'abc'def", id="squote-followed-by-text"),
        pytest.param(b'"', id="lone-quote"),
    ],
)
def test_split_inline_unbalanced_quotes(line: bytes) -> None:
    with pytest.raises(InlineError):
        split_inline(line)


@pytest.mark.parametrize(
    ("line", "args"),
    [
        pytest.param(b"'it\\'s'", [b"it's"], id="squote-escaped-quote"),
        pytest.param(b'"\\x+1"', [b"x+1"], id="hex-needs-two-hex-digits"),
        pytest.param(b'a"b c"', [b"ab c"], id="quote-inside-word"),
    ],
)
def test_split_inline_like_the_engine(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


# --- CLUSTER NODES ----------------------------------------------------------------------

P1 = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"
P2 = "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1"
P3 = "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f"
R1 = "07c37dfeb235213a872192d90877d0cd55635b91"
R2 = "6ec23923021cf3ffec47632106199cb7f496ce01"
R3 = "824fe116063bc5fcf9f4ffd895bc17aee7731ac3"

CLUSTER_NODES = f"""\
{R1} 127.0.2.1:7102@17102,default-0001-002 slave {P1} 0 1426238317239 4 connected
{P2} 127.0.2.1:7103@17103 master - 0 1426238316232 2 connected 5462-10922
{P3} 127.0.3.1:7105@17105 master - 0 1426238318243 3 connected 10923-16383 [10923->-{P2}]
{R2} 127.0.3.1:7104@17104 slave {P2} 0 1426238316232 5 connected
{R3} 127.0.1.1:7106@17106 slave,fail {P3} 1426238317741 1426238317000 6 disconnected
{P1} 127.0.1.1:7101@17101 myself,master - 0 0 1 connected 0-5460 5461 [5461-<-{P3}]

"""


def test_parse_cluster_nodes() -> None:
    nodes = {n.id: n for n in parse_cluster_nodes(CLUSTER_NODES)}
    assert set(nodes) == {P1, P2, P3, R1, R2, R3}

    me = nodes[P1]
    assert me.flags == frozenset({"myself", "master"})
    assert me.is_primary
    assert not me.failing
    assert (me.host, me.port, me.bus_port) == ("127.0.1.1", 7101, 17101)
    assert me.primary_id is None
    assert me.config_epoch == 1
    assert me.connected
    assert me.slots == ((0, 5460), (5461, 5461))  # importing marker skipped

    replica = nodes[R1]
    assert not replica.is_primary
    assert replica.flags == frozenset({"slave"})
    assert replica.primary_id == P1
    assert (replica.host, replica.port, replica.bus_port) == ("127.0.2.1", 7102, 17102)
    assert replica.config_epoch == 4
    assert replica.slots == ()

    migrating = nodes[P3]
    assert migrating.slots == ((10923, 16383),)  # [10923->-id] is not a slot

    failed = nodes[R3]
    assert failed.failing
    assert not failed.connected
    assert failed.primary_id == P3

    primaries = [n for n in nodes.values() if n.is_primary]
    assert {n.id for n in primaries} == {P1, P2, P3}
    owned = sorted(s for n in primaries for a, b in n.slots for s in range(a, b + 1))
    assert owned == list(range(16384))
    assert {n.primary_id for n in nodes.values() if not n.is_primary} == {P1, P2, P3}


def test_parse_cluster_nodes_ignores_short_lines() -> None:
    assert parse_cluster_nodes("") == []
    assert parse_cluster_nodes("garbage line\n\n") == []


@pytest.mark.parametrize("flag", ["fail?", "noaddr", "handshake"])
def test_failing_flags(flag: str) -> None:
    (node,) = parse_cluster_nodes(f"{P1} 127.0.1.1:7101@17101 master,{flag} - 0 0 1 connected")
    assert node.failing
    assert node.is_primary
