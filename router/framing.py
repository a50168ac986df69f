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
    """Incremental: ``feed`` returns the complete requests and keeps the rest. A protocol
    error is reported after the requests that preceded it (the engine runs those too)."""

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
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 0  # bytes needed before parsing can make progress

    @property
    def buffered(self) -> int:
        return self._size

    def feed(self, data: bytes) -> tuple[list[Request], ProtocolError | None]:
        self._chunks.append(data)
        self._size += len(data)
        if self._size < self._need:
            if self._size > self.max_query:
                return [], ProtocolError("query buffer limit exceeded")
            return [], None
        buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        out: list[Request] = []
        pos, n = 0, len(buf)
        error: ProtocolError | None = None
        need = 0
        while pos < n:
            try:
                if buf[pos] == 0x2A:  # '*'
                    end, need = self._multibulk(buf, pos, out)
                else:
                    end, need = self._inline(buf, pos, out)
            except ProtocolError as exc:
                error = exc
                break
            if end < 0:
                break
            pos = end
        rest = buf[pos:] if pos else buf
        if error is not None or not rest:
            self._chunks, self._size, self._need = [], 0, 0
        else:
            self._chunks, self._size, self._need = [rest], len(rest), need
            if self._size > self.max_query:
                error = ProtocolError("query buffer limit exceeded")
        return out, error

    def _multibulk(self, buf: bytes, pos: int, out: list[Request]) -> tuple[int, int]:
        n = len(buf)
        e = buf.find(b"\r\n", pos)
        if e < 0:
            if n - pos > MAX_INLINE:
                raise ProtocolError("too big mbulk count string")
            return -1, n - pos + 1
        count = _int(buf[pos + 1 : e])
        if count is None or count > INT_MAX:
            raise ProtocolError("invalid multibulk length")
        if not self.authenticated and count > UNAUTH_MULTIBULK:
            raise ProtocolError("unauthenticated multibulk length")
        if count <= 0:
            return e + 2, 0  # an empty request: skipped, as by the engine
        p = e + 2
        args: list[bytes] = []
        for _ in range(count):
            if p >= n:
                return -1, n - pos + 1
            if buf[p] != 0x24:  # '$'
                raise ProtocolError(f"expected '$', got '{chr(buf[p])}'")
            e = buf.find(b"\r\n", p)
            if e < 0:
                if n - p > MAX_INLINE:
                    raise ProtocolError("too big bulk count string")
                return -1, n - pos + 1
            size = _int(buf[p + 1 : e])
            if size is None or size < 0 or size > self.max_bulk:
                raise ProtocolError("invalid bulk length")
            if not self.authenticated and size > UNAUTH_BULK:
                raise ProtocolError("unauthenticated bulk length")
            start = e + 2
            end = start + size + 2
            if end > n:
                return -1, end - pos
            args.append(buf[start : start + size])
            p = end
        out.append((args, buf[pos:p]))
        return p, 0

    def _inline(self, buf: bytes, pos: int, out: list[Request]) -> tuple[int, int]:
        e = buf.find(b"\n", pos)
        if e < 0:
            if len(buf) - pos > MAX_INLINE:
                raise ProtocolError("too big inline request")
            return -1, len(buf) - pos + 1
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
