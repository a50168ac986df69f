"""Memcached's text protocol, node side, pure: replies framed per request, merged, summed.

:class:`ReplyFramer` cuts a node's reply stream into one reply per request, knowing from each
request's :class:`~router.memcache.protocol.Reply` shape where its reply ends; it resumes
where it stopped, so a long reply arriving in many packets is parsed once.
"""

from __future__ import annotations

import collections

from router.memcache.protocol import Reply


class ReplyFramer:
    """A node's reply stream cut into one reply per request sent, in order. The shape of
    each expected reply is queued with :meth:`expect`; :meth:`feed` returns the replies that
    completed. Malformed replies raise ValueError (the connection is then dropped)."""

    def __init__(self, max_reply: int = 1 << 30) -> None:
        self.shapes: collections.deque[Reply] = collections.deque()
        self.buf = bytearray()
        self.pos = 0  # progress inside the current reply (which starts at 0 between feeds)
        self.max_reply = max_reply

    def expect(self, shape: Reply) -> None:
        self.shapes.append(shape)

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        start = 0
        try:
            while self.shapes:
                end = self._end(self.shapes[0])
                if end is None:
                    if len(self.buf) - start > self.max_reply:
                        raise ValueError("reply too large")
                    break
                out.append(bytes(self.buf[start:end]))
                start = self.pos = end
                self.shapes.popleft()
        finally:
            if start:  # one move of the unparsed rest per packet, however many replies
                del self.buf[:start]
                self.pos -= start
        if not self.shapes and self.buf:
            raise ValueError("reply without a request")
        return out

    def _line(self, start: int) -> int | None:
        nl = self.buf.find(b"\n", start)
        return None if nl < 0 else nl + 1

    def _end(self, shape: Reply) -> int | None:
        """Where the current reply ends, resuming at self.pos (a whole VALUE block or line
        is never parsed twice)."""
        buf = self.buf
        while True:
            nxt = self._line(self.pos)
            if nxt is None:
                return None
            line = bytes(buf[self.pos : nxt])
            if shape is Reply.LINE:
                return nxt
            if shape is Reply.VALUES and line.startswith(b"VALUE "):
                parts = line.split()
                if len(parts) < 4 or not parts[3].isdigit():
                    raise ValueError("bad VALUE line")
                block = nxt + int(parts[3]) + 2
                if len(buf) < block:
                    return None
                self.pos = block
                continue
            if shape is Reply.STATS and line.startswith(b"STAT "):
                self.pos = nxt
                continue
            if shape is Reply.META and line.startswith(b"VA "):
                parts = line.split()
                if len(parts) < 2 or not parts[1].isdigit():
                    raise ValueError("bad VA line")
                block = nxt + int(parts[1]) + 2
                return block if len(buf) >= block else None
            return nxt  # END, or an error line, or a meta status line


def value_blocks(reply: bytes) -> dict[bytes, bytes]:
    """A complete ``VALUE ... END`` reply as key -> its VALUE block (header and data)."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while True:
        nl = reply.index(b"\n", pos) + 1
        line = reply[pos:nl]
        if not line.startswith(b"VALUE "):
            return out
        parts = line.split()
        end = nl + int(parts[3]) + 2
        out[parts[1]] = reply[pos:end]
        pos = end


def is_error(reply: bytes) -> bool:
    return reply.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))


def status_word(reply: bytes) -> bytes:
    """The first word of a reply (a meta status code such as HD, EN, NF)."""
    return reply.split(b" ", 1)[0].split(b"\r", 1)[0].strip()


def merge_values(
    keys: list[bytes], parts: list[bytes], local: dict[bytes, bytes], *, limit: int = 1 << 62
) -> bytes:
    """One ``VALUE ... END`` reply from the nodes' replies, in the order the client asked
    for its keys (a key asked twice is answered twice, as the engine does). ValueError when
    it would be longer than `limit` bytes (checked before anything is joined)."""
    blocks = dict(local)
    for part in parts:
        blocks.update(value_blocks(part))
    if sum(len(blocks[k]) for k in keys if k in blocks) > limit:
        raise ValueError("reply too large")
    return b"".join(blocks[k] for k in keys if k in blocks) + b"END\r\n"


#: Statistics that describe one process, not an amount: never summed over nodes.
NOT_SUMMED = frozenset(
    {"pid", "uptime", "time", "version", "libevent", "pointer_size", "threads", "max_connections"}
)


def aggregate_stats(nodes: list[dict[str, str]], own: dict[str, str]) -> bytes:
    """A ``stats`` reply for the whole cluster: the proxy's own lines first (pid, uptime,
    version, node counts), then every integer statistic summed over the nodes that answered."""
    lines = [f"STAT {k} {v}\r\n" for k, v in own.items()]
    order: dict[str, int] = {}
    for stats in nodes:
        for key, value in stats.items():
            if key in NOT_SUMMED or key in own:
                continue
            try:
                number = int(value)
            except ValueError:
                continue
            order[key] = order.get(key, 0) + number
    lines += [f"STAT {k} {v}\r\n" for k, v in order.items()]
    return "".join(lines).encode("ascii", "replace") + b"END\r\n"
