"""RESP2/RESP3 serialisation, pure: values in, bytes out.

The one encoder every process uses to talk to an engine or to answer a client; parsing
lives with its users (the router's framer, the node-admin module's hiredis reader).
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
