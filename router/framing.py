"""Request framing (pure): bytes from a client in, ``(args, raw)`` requests out.

Validated the way the engine validates a query buffer (``processMultibulkBuffer`` /
``processInlineBuffer``), with the same limits and the same error texts, so a request the
router forwards byte-for-byte is read by the engine exactly as the router read it. ``raw`` is
the request's original bytes (forwarded unchanged), or ``None`` for an inline command, which
must be re-encoded. The reply side (hiredis) lives in :mod:`router.replies`.

Why not hiredis for requests: its reader reports no byte offsets (the raw bytes could not be
forwarded) and it does not bound bulk/multibulk headers.
"""

from __future__ import annotations

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
