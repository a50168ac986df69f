"""Request framing (pure): bytes from a client in, ``(args, raw)`` requests out.

Validated the way the engine validates a query buffer (``processMultibulkBuffer`` /
``processInlineBuffer``), with the same limits and the same error texts, so a request the
router forwards byte-for-byte is read by the engine exactly as the router read it. ``raw`` is
the request's original bytes (forwarded unchanged), or ``None`` for an inline command, which
must be re-encoded. The reply side (hiredis) lives in :mod:`router.replies`.

hiredis alone cannot frame requests: its reader reports no byte offsets (the raw bytes could
not be forwarded), it reads reply types the engine refuses in a request and it does not bound
headers. It is used as an accelerator only (:class:`CanonicalSplitter`): for requests written
the way every client library writes them, whose bytes are checked to be exactly that.
"""

from __future__ import annotations

import re

import hiredis

from router import speedups
from router.inline import InlineError, split_inline

PROTO_MAX_BULK_LEN = 512 * 1024 * 1024  # proto-max-bulk-len default
QUERY_BUFFER_LIMIT = 1024 * 1024 * 1024  # client-query-buffer-limit default
INT_MAX = 2**31 - 1
MAX_INLINE = 64 * 1024  # PROTO_INLINE_MAX_SIZE
UNAUTH_MULTIBULK = 10  # before AUTH, as the engine
UNAUTH_BULK = 16384

Request = tuple[list[bytes], bytes | None]


class ProtocolError(Exception):
    """The client sent something the engine would refuse; the connection is closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reply(self) -> bytes:
        return b"-ERR Protocol error: " + self.message.encode() + b"\r\n"


def _int(token: bytes) -> int | None:
    """string2ll: optional '-', digits, no leading zeros, no spaces or '+'."""
    if token.isdigit():  # the common case, a plain length: one C call
        if len(token) > 19 or (token[0] == 0x30 and len(token) > 1):
            return None
        return int(token)
    digits = token[1:] if token[:1] == b"-" else token
    if not digits or not digits.isdigit() or len(digits) > 19:
        return None
    if digits[0] == 0x30 and len(digits) > 1:
        return None
    if token == b"-0":
        return None
    return int(token)


class RequestFramer:
    """Incremental and linear: ``feed`` returns the complete requests and keeps the rest, with
    the parse state of a request that is not complete yet (the arguments already read, how
    many are left, how many bytes the current argument still needs), so no byte is parsed
    twice and a large argument is joined once, when it is all there. A protocol error is
    reported after the requests that preceded it (the engine runs those too)."""

    def __init__(
        self,
        *,
        max_bulk: int = PROTO_MAX_BULK_LEN,
        max_query: int = QUERY_BUFFER_LIMIT,
        authenticated: bool = True,
    ) -> None:
        self.max_bulk = max_bulk
        self.max_query = max_query
        self.authenticated = authenticated
        self._chunks: list[bytes] = []  # unparsed bytes
        self._size = 0
        self._need = 0  # unparsed bytes needed before parsing can make progress
        # A multibulk request in progress: its arguments so far, how many are left, and its
        # bytes already parsed (the raw request is their concatenation plus the rest).
        self._args: list[bytes] = []
        self._left = 0
        self._raw: list[bytes] = []
        self._raw_size = 0

    @property
    def buffered(self) -> int:
        return self._size + self._raw_size

    @property
    def idle(self) -> bool:
        """Nothing held: the next packet starts a request."""
        return not self._size and not self._left

    def feed(self, data: bytes) -> tuple[list[Request], ProtocolError | None]:
        self._chunks.append(data)
        self._size += len(data)
        if self._size < self._need:
            if self.buffered > self.max_query:
                self._reset()
                return [], ProtocolError("query buffer limit exceeded")
            return [], None
        buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        out: list[Request] = []
        pos, n = 0, len(buf)
        error: ProtocolError | None = None
        need = 0
        while pos < n:
            try:
                if self._left:
                    pos, need = self._bulks(buf, pos, pos, out)
                elif buf[pos] == 0x2A:  # '*'
                    pos, need = self._multibulk(buf, pos, out)
                else:
                    pos, need = self._inline(buf, pos, out)
            except ProtocolError as exc:
                error = exc
                break
            if need:  # short: the rest from `pos` waits for more bytes
                break
        if error is not None:
            self._reset()
            return out, error
        if pos < n:
            self._chunks = [buf[pos:] if pos else buf]
            self._size, self._need = n - pos, need
        else:
            self._chunks, self._size, self._need = [], 0, 0
        if self.buffered > self.max_query:
            self._reset()
            error = ProtocolError("query buffer limit exceeded")
        return out, error

    def _reset(self) -> None:
        self._chunks, self._size, self._need = [], 0, 0
        self._args, self._left, self._raw, self._raw_size = [], 0, [], 0

    def _multibulk(self, buf: bytes, pos: int, out: list[Request]) -> tuple[int, int]:
        e = buf.find(b"\r\n", pos)
        if e < 0:
            if len(buf) - pos > MAX_INLINE:
                raise ProtocolError("too big mbulk count string")
            return pos, len(buf) - pos + 1
        count = _int(buf[pos + 1 : e])
        if count is None or count > INT_MAX:
            raise ProtocolError("invalid multibulk length")
        if not self.authenticated and count > UNAUTH_MULTIBULK:
            raise ProtocolError("unauthenticated multibulk length")
        if count <= 0:
            return e + 2, 0  # an empty request: skipped, as by the engine
        self._left = count
        return self._bulks(buf, e + 2, pos, out)

    def _bulks(self, buf: bytes, p: int, start: int, out: list[Request]) -> tuple[int, int]:
        """Read the arguments left of the request that began at `start` (or before this
        buffer): (end, 0) when complete, else what was read is kept aside and the result is
        (where parsing resumes, bytes needed from there)."""
        n = len(buf)
        args = self._args
        while self._left:
            if p >= n:
                return self._suspend(buf, start, p, 1)
            if buf[p] != 0x24:  # '$'
                raise ProtocolError(f"expected '$', got '{_shown(buf[p])}'")
            e = buf.find(b"\r\n", p)
            if e < 0:
                if n - p > MAX_INLINE:
                    raise ProtocolError("too big bulk count string")
                return self._suspend(buf, start, p, n - p + 1)
            size = _int(buf[p + 1 : e])
            if size is None or size < 0 or size > self.max_bulk:
                raise ProtocolError("invalid bulk length")
            if not self.authenticated and size > UNAUTH_BULK:
                raise ProtocolError("unauthenticated bulk length")
            end = e + 4 + size
            if end > n:
                return self._suspend(buf, start, p, end - p)
            if buf[end - 2] != 0x0D or buf[end - 1] != 0x0A:  # as Valkey 8 checks it
                raise ProtocolError("invalid CRLF in request")
            args.append(buf[e + 2 : e + 2 + size])
            p = end
            self._left -= 1
        if self._raw:
            self._raw.append(buf[start:p])
            raw = b"".join(self._raw)
        else:
            raw = buf[start:p] if start or p != n else buf
        out.append((args, raw))
        self._args, self._raw, self._raw_size = [], [], 0
        return p, 0

    def _suspend(self, buf: bytes, start: int, p: int, need: int) -> tuple[int, int]:
        """Keep the parsed part of the request aside; parsing resumes at `p`."""
        if p > start:
            self._raw.append(buf[start:p])
            self._raw_size += p - start
        return p, need

    def _inline(self, buf: bytes, pos: int, out: list[Request]) -> tuple[int, int]:
        e = buf.find(b"\n", pos)
        if e < 0:
            if len(buf) - pos > MAX_INLINE:
                raise ProtocolError("too big inline request")
            return pos, len(buf) - pos + 1
        line = buf[pos:e]
        if line[-1:] == b"\r":
            line = line[:-1]
        try:
            args = split_inline(line)
        except InlineError as exc:
            raise ProtocolError(str(exc)) from exc
        if args:
            out.append((args, None))
        return e + 1, 0


def _shown(byte: int) -> str:
    """A byte in an error text: printable as itself, else '?' (no CR/LF in a reply line)."""
    return chr(byte) if 0x20 <= byte < 0x7F else "?"


#: An aggregate header of 7 digits or more: hiredis would allocate its list at once, so such a
#: packet is left to :class:`RequestFramer` (which bounds it by the query buffer).
_HUGE_HEADER = re.compile(rb"[*~%|>][0-9]{7}")


class CanonicalSplitter:
    """The hot path of request framing, in C: hiredis parses the complete requests at the start
    of a packet, and each one is accepted only if its bytes are the canonical encoding of what
    was parsed (``*<argc>`` then ``$<len>`` for every argument, lengths without leading zeros,
    which hiredis enforces as the engine does, each argument followed by CRLF): a ``$`` at
    every argument header position and a CRLF after every argument prove it, so the engine
    reads the forwarded bytes exactly as they were read here. The first
    request that is not complete or not canonical, and everything after it, is left to
    :class:`RequestFramer`, which gives the engine's verdict on it. Stateless between packets:
    it is used only when the framer holds nothing.

    With the C accelerator built (and `native`), the same checks run in one C loop that
    parses the canonical encoding directly."""

    __slots__ = ("_native", "_reader")

    def __init__(self, *, native: bool = True) -> None:
        self._reader = hiredis.Reader()
        self._native = speedups.split_canonical if native else None

    def split(self, data: bytes) -> tuple[list[Request], int]:
        """The leading canonical requests of `data` and the bytes they take."""
        out: list[Request] = []
        n = len(data)
        if n < 4 or data[0] != 0x2A or _HUGE_HEADER.search(data) is not None:
            return out, 0
        if self._native is not None:
            return self._native(data)
        reader = self._reader
        reader.feed(data)
        pos = 0
        try:
            while pos < n:
                if data[pos] != 0x2A:  # '*' (an inline command, or garbage)
                    break
                args = reader.gets()
                if type(args) is not list or not args:  # incomplete (False), nil, empty, ...
                    break
                argc = len(args)
                p = pos + (4 if argc < 10 else 5 if argc < 100 else 3 + len(str(argc)))
                for a in args:
                    if type(a) is not bytes or data[p] != 0x24:  # '$'
                        break
                    size = len(a)
                    p += size + (6 if size < 10 else 7 if size < 100 else 5 + len(str(size)))
                    if data[p - 1] != 0x0A or data[p - 2] != 0x0D:  # hiredis does not look
                        break
                else:
                    out.append((args, data[pos:p] if pos or p != n else data))
                    pos = p
                    continue
                break
        except (hiredis.ProtocolError, IndexError):
            pass
        if pos != n:
            # hiredis holds the bytes after `pos`: start afresh next time.
            self._reader = hiredis.Reader()
        return out, pos
