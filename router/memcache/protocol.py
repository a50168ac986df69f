"""Memcached's text protocol, pure: client requests in, backend replies framed (no sockets).

:class:`Framer` turns a client's bytes into :class:`Request` values. It keeps its parse state
between packets (where the newline search resumes, the data block still expected, the bytes
of a too-large value still to skip), so a request sent one byte at a time costs linear time.
Limits are in bytes: a command line of at most ``max_line`` bytes, a value of at most
``max_value`` (larger ones are skipped without being held and answered like the engine).

The node side (reply framing, merging, statistics) is in :mod:`router.memcache.replies`.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field

MAX_KEY = 250  # memcached's key length limit
MAX_LINE = 64 * 1024  # a command line (a multi-get of ~250 long keys)
MAX_DATA_LEN = (1 << 31) - 1  # a length field beyond this is malformed, not just too large
UINT32 = (1 << 32) - 1
UINT64 = (1 << 64) - 1

CRLF = b"\r\n"
ERROR = b"ERROR\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"


class ProtocolError(Exception):
    """Malformed input: answered ``CLIENT_ERROR <message>`` and the connection is closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reply(self) -> bytes:
        return b"CLIENT_ERROR " + self.message.encode("ascii") + CRLF


class Kind(enum.Enum):
    """What the proxy does with a request."""

    GET = "get"  # get/gets/gat/gats: split by node, merged in key order
    KEYED = "keyed"  # one key, one node: storage, incr/decr, delete, touch, meta
    FLUSH = "flush"  # flush_all: every node
    STATS = "stats"  # aggregated over every node
    CONFIG = "config"  # config get cluster: Auto Discovery
    VERSION = "version"
    VERBOSITY = "verbosity"
    NOOP = "noop"  # mn: answered in order
    QUIT = "quit"
    TOO_LARGE = "too_large"  # a value over the limit, already skipped
    UNKNOWN = "unknown"


class Reply(enum.Enum):
    """The shape of a node's reply, which says where it ends."""

    LINE = "line"  # one line
    VALUES = "values"  # VALUE blocks then END (or one error line)
    STATS = "stats"  # STAT lines then END (or one error line)
    META = "meta"  # VA <n> ... + data block, or one line


@dataclass(slots=True)
class Request:
    kind: Kind
    tokens: list[bytes]  # the command line, split; tokens[0] is the command
    keys: list[bytes] = field(default_factory=list)
    data: bytes | None = None  # storage and ms: the value (without its CRLF)
    noreply: bool = False
    quiet: bool = False  # meta `q`: the proxy drops the replies q suppresses
    hash_key: bytes = b""  # the key that picks the node (a meta `b` key decoded)
    line: bytes = b""  # the command line as received (without its line end)

    @property
    def command(self) -> bytes:
        return self.tokens[0]

    def forward(self) -> bytes:
        """The request as sent to a node: never with noreply or q (the proxy needs every
        reply to keep a node's replies in order and drops them itself)."""
        if self.noreply:
            line = b" ".join(self.tokens[:-1]) + CRLF
        elif self.quiet:
            line = b" ".join(t for t in self.tokens if t != b"q") + CRLF
        else:
            line = (self.line or b" ".join(self.tokens)) + CRLF
        if self.data is not None:
            return line + self.data + CRLF
        return line

    @property
    def reply_shape(self) -> Reply:
        if self.kind is Kind.GET:
            return Reply.VALUES
        if self.command in META_COMMANDS:
            return Reply.META
        return Reply.LINE


STORAGE = frozenset({b"set", b"add", b"replace", b"append", b"prepend", b"cas"})
RETRIEVAL = frozenset({b"get", b"gets"})
GAT = frozenset({b"gat", b"gats"})
META_COMMANDS = frozenset({b"mg", b"ms", b"md", b"ma"})
#: Replies a meta command's `q` flag suppresses: mg a miss, the others success and not-found.
QUIET_DROPS = {
    b"mg": frozenset({b"EN"}),
    b"ms": frozenset({b"HD"}),
    b"md": frozenset({b"HD", b"NF"}),
    b"ma": frozenset({b"HD", b"NF"}),
}


def _number(token: bytes, hi: int, *, signed: bool = False) -> int:
    if not token or not (token.isdigit() or (signed and token[:1] == b"-" and token[1:].isdigit())):
        raise ProtocolError("bad command line format")
    value = int(token)
    if value > hi:
        raise ProtocolError("bad command line format")
    return value


def _key(token: bytes) -> bytes:
    """A key as the engine takes it: at most 250 bytes; anything but the separators (space,
    CR, LF) is accepted, control bytes included, as memcached does (memcaslap sends them)."""
    if len(token) > MAX_KEY:
        raise ProtocolError("bad command line format")
    return token


def _noreply(tokens: list[bytes], fixed: int) -> bool:
    """True when the optional last token (after `fixed` tokens) is noreply; anything else
    extra is malformed."""
    if len(tokens) == fixed:
        return False
    if len(tokens) == fixed + 1 and tokens[-1] == b"noreply":
        return True
    raise ProtocolError("bad command line format")


def _meta_hash_key(key: bytes, flags: list[bytes]) -> bytes:
    if b"b" not in flags:
        return _key(key)
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad data chunk") from None
    if not decoded or len(decoded) > MAX_KEY:
        raise ProtocolError("bad command line format")
    return decoded


def parse_line(tokens: list[bytes]) -> tuple[Request, int | None]:
    """A request from its command line; with the length of the data block it expects."""
    cmd = tokens[0]
    n = len(tokens)
    if cmd in RETRIEVAL or cmd in GAT:
        first = 2 if cmd in GAT else 1
        if n <= first:
            raise ProtocolError("bad command line format")
        if cmd in GAT:
            _number(tokens[1], UINT32, signed=True)
        keys = [_key(k) for k in tokens[first:]]
        return Request(Kind.GET, tokens, keys=keys), None
    if cmd in STORAGE:
        fixed = 6 if cmd == b"cas" else 5
        if n < fixed:
            raise ProtocolError("bad command line format")
        noreply = _noreply(tokens, fixed)
        key = _key(tokens[1])
        _number(tokens[2], UINT32)
        _number(tokens[3], UINT32, signed=True)
        length = _number(tokens[4], MAX_DATA_LEN)
        if cmd == b"cas":
            _number(tokens[5], UINT64)
        return Request(Kind.KEYED, tokens, keys=[key], noreply=noreply, hash_key=key), length
    if cmd in (b"incr", b"decr"):
        if n < 3:
            raise ProtocolError("bad command line format")
        noreply = _noreply(tokens, 3)
        key = _key(tokens[1])
        _number(tokens[2], UINT64)
        return Request(Kind.KEYED, tokens, keys=[key], noreply=noreply, hash_key=key), None
    if cmd == b"delete":
        if n < 2:
            raise ProtocolError("bad command line format")
        # `delete <key> [0] [noreply]`: the engine accepts a zero hold time only
        fixed = 3 if n >= 3 and tokens[2] == b"0" else 2
        noreply = _noreply(tokens, fixed)
        key = _key(tokens[1])
        return Request(Kind.KEYED, tokens, keys=[key], noreply=noreply, hash_key=key), None
    if cmd == b"touch":
        if n < 3:
            raise ProtocolError("bad command line format")
        noreply = _noreply(tokens, 3)
        key = _key(tokens[1])
        _number(tokens[2], UINT32, signed=True)
        return Request(Kind.KEYED, tokens, keys=[key], noreply=noreply, hash_key=key), None
    if cmd in META_COMMANDS:
        if n < 2:
            raise ProtocolError("bad command line format")
        data_len: int | None = None
        flags = tokens[2:]
        if cmd == b"ms":
            if n < 3:
                raise ProtocolError("bad command line format")
            data_len = _number(tokens[2], MAX_DATA_LEN)
            flags = tokens[3:]
        hash_key = _meta_hash_key(tokens[1], flags)
        quiet = b"q" in flags
        req = Request(Kind.KEYED, tokens, keys=[tokens[1]], quiet=quiet, hash_key=hash_key)
        return req, data_len
    if cmd == b"mn":
        return Request(Kind.NOOP, tokens), None
    if cmd == b"flush_all":
        if n > 3:
            raise ProtocolError("bad command line format")
        noreply = tokens[-1] == b"noreply"
        if n - noreply == 2:
            _number(tokens[1], UINT32, signed=True)
        elif n - noreply != 1:
            raise ProtocolError("bad command line format")
        return Request(Kind.FLUSH, tokens, noreply=noreply), None
    if cmd == b"stats":
        return Request(Kind.STATS, tokens), None
    if cmd == b"config":
        return Request(Kind.CONFIG, tokens), None
    if cmd == b"version":
        return Request(Kind.VERSION, tokens), None
    if cmd == b"verbosity":
        noreply = tokens[-1] == b"noreply"
        return Request(Kind.VERBOSITY, tokens, noreply=noreply), None
    if cmd == b"quit":
        return Request(Kind.QUIT, tokens), None
    return Request(Kind.UNKNOWN, tokens), None


class Framer:
    """A client's byte stream into requests, in linear time and bounded memory."""

    def __init__(self, *, max_line: int = MAX_LINE, max_value: int = 1024 * 1024) -> None:
        self.max_line = max_line
        self.max_value = max_value
        self.buf = bytearray()
        self.scan = 0  # the newline search resumes here
        self.waiting: tuple[Request, int] | None = None  # a request and its data length
        self.skip = 0  # bytes of a too-large value still to drop
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Request]:
        """Every request completed by `data`. On malformed input, the requests before it and
        then :attr:`error` set: the connection is done, nothing after it is parsed."""
        out: list[Request] = []
        if self.error is not None:
            return out
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
            if self.skip == 0:
                out.append(Request(Kind.TOO_LARGE, [b""]))
        self.buf += data
        pos = 0
        buf = self.buf
        try:
            while True:
                if self.waiting is not None:
                    req, length = self.waiting
                    if len(buf) - pos < length + 2:
                        break
                    if buf[pos + length : pos + length + 2] != CRLF:
                        raise ProtocolError("bad data chunk")
                    req.data = bytes(buf[pos : pos + length])
                    pos += length + 2
                    self.waiting = None
                    out.append(req)
                    continue
                nl = buf.find(b"\n", max(pos, self.scan))
                if nl < 0:
                    if len(buf) - pos > self.max_line:
                        raise ProtocolError("line too long")
                    self.scan = len(buf)
                    break
                if nl - pos > self.max_line:
                    raise ProtocolError("line too long")
                end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
                line = bytes(buf[pos:end])
                tokens = line.split(b" ")
                if b"" in tokens:  # runs of spaces separate like one, as in the engine
                    tokens = [t for t in tokens if t]
                pos = nl + 1
                self.scan = pos
                if not tokens:
                    out.append(Request(Kind.UNKNOWN, [b""]))
                    continue
                req, expected = parse_line(tokens)
                req.line = line
                if expected is None:
                    out.append(req)
                elif expected > self.max_value:
                    # like the engine: the value is read and dropped, SERVER_ERROR replied
                    available = len(buf) - pos
                    if available >= expected + 2:
                        pos += expected + 2
                        out.append(Request(Kind.TOO_LARGE, [b""]))
                    else:
                        self.skip = expected + 2 - available
                        pos = len(buf)
                        break
                else:
                    self.waiting = (req, expected)
        except ProtocolError as exc:
            self.error = exc
            buf.clear()
            pos = 0
        finally:
            if pos:
                del buf[:pos]
                self.scan = max(0, self.scan - pos)
        return out
