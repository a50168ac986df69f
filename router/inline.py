"""The inline-command splitter the engine also accepts (``PING\\r\\n`` typed into telnet)."""

from __future__ import annotations


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
