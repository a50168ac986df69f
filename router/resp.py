"""RESP2/RESP3 serialisation (pure: values in, bytes out) and request framing helpers.

Parsing of replies and requests uses hiredis' reader; this module only encodes, plus the
inline-command splitter the engine also accepts (``PING\\r\\n`` typed into telnet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class Simple(str):
    """A RESP simple string (+OK)."""


class Err(str):
    """A RESP error (-ERR ...); the text includes the error code prefix."""


class Verbatim(str):
    """Text that RESP3 sends as a verbatim string and RESP2 as a bulk string."""


OK = Simple("OK")
CRLF = b"\r\n"


def encode(value: Any, resp3: bool = False) -> bytes:
    out: list[bytes] = []
    _encode(value, resp3, out)
    return b"".join(out)


def _encode(value: Any, resp3: bool, out: list[bytes]) -> None:
    if value is None:
        out.append(b"_\r\n" if resp3 else b"$-1\r\n")
    elif isinstance(value, Err):
        out.append(b"-" + _line(value) + CRLF)
    elif isinstance(value, Exception):
        out.append(b"-" + _line(str(value)) + CRLF)
    elif isinstance(value, Simple):
        out.append(b"+" + _line(value) + CRLF)
    elif isinstance(value, bool):
        out.append(
            (b"#t\r\n" if value else b"#f\r\n") if resp3 else (b":1\r\n" if value else b":0\r\n")
        )
    elif isinstance(value, int):
        out.append(b":%d\r\n" % value)
    elif isinstance(value, float):
        text = repr(value).encode()
        out.append(b"," + text + CRLF if resp3 else b"$%d\r\n%s\r\n" % (len(text), text))
    elif isinstance(value, Verbatim) and resp3:
        data = b"txt:" + value.encode()
        out.append(b"=%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, str):
        data = value.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    elif isinstance(value, Mapping):
        if resp3:
            out.append(b"%%%d\r\n" % len(value))
        else:
            out.append(b"*%d\r\n" % (2 * len(value)))
        for k, v in value.items():
            _encode(k, resp3, out)
            _encode(v, resp3, out)
    elif isinstance(value, Sequence | set | frozenset):
        items = list(value)
        out.append(b"*%d\r\n" % len(items))
        for item in items:
            _encode(item, resp3, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as RESP")


def _line(text: str) -> bytes:
    """Errors and simple strings cannot contain CR or LF."""
    return text.replace("\r", " ").replace("\n", " ").encode()


def encode_command(args: Sequence[bytes | str | int]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class InlineError(ValueError):
    pass


_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command the way the engine does (sdssplitargs): whitespace separates
    arguments; a "double-quoted" part (\\xHH and \\n-style escapes) or a 'single-quoted' part
    (only \\' escaped) may appear anywhere in an argument, and a closing quote must be
    followed by whitespace or the end. Unbalanced quotes raise InlineError."""
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in b" \t\r\n\v\f":
            i += 1
        if i >= n:
            return args
        cur = bytearray()
        in_double = in_single = False
        while True:
            if in_double:
                if i >= n:
                    raise InlineError("unbalanced quotes in request")
                c = line[i]
                if (
                    c == 0x5C
                    and i + 3 < n
                    and line[i + 1] == ord("x")
                    and (line[i + 2] in _HEX and line[i + 3] in _HEX)
                ):
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                    continue
                if c == 0x5C and i + 1 < n:
                    cur.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                    continue
                if c == 0x22:
                    i += 1
                    if i < n and line[i] not in b" \t\r\n\v\f":
                        raise InlineError("unbalanced quotes in request")
                    break
                cur.append(c)
                i += 1
            elif in_single:
                if i >= n:
                    raise InlineError("unbalanced quotes in request")
                c = line[i]
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    cur.append(0x27)
                    i += 2
                    continue
                if c == 0x27:
                    i += 1
                    if i < n and line[i] not in b" \t\r\n\v\f":
                        raise InlineError("unbalanced quotes in request")
                    break
                cur.append(c)
                i += 1
            else:
                if i >= n or line[i] in b" \t\r\n\v\f":
                    break
                c = line[i]
                if c == 0x22:
                    in_double = True
                elif c == 0x27:
                    in_single = True
                else:
                    cur.append(c)
                i += 1
        args.append(bytes(cur))
