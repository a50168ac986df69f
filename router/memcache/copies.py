"""Replicated pools (``memcached.copies`` > 1): each key on its first N distinct ring nodes.

Writes (storage commands, incr/decr, delete, touch, ``ms``/``md``/``ma``) go to every copy;
the client gets the first copy's reply, or the next copy's when the first is down. ``cas``
goes to the first copy only (cas tokens are per node) and, once stored, the value is ``set``
on the other copies. Reads (``get``/``gets``/``gat``/``gats``, ``mg``) ask the first copy and
ask the next one for the keys it misses or when it is down; only a key whose every copy is
down gets ``SERVER_ERROR``. Copies are kept alike best-effort: a copy that was down while a
write happened misses it (and a counter can differ between copies).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from router.memcache.protocol import CRLF, QUIET_DROPS, Reply, Request
from router.memcache.replies import is_error, merge_values, status_word, value_blocks

if TYPE_CHECKING:
    from router.memcache.conns import Client
    from router.memcache.proxy import Proxy

Replies = dict[str, bytes | None]


def _gather(
    proxy: Proxy, sends: dict[str, bytes], shape: Reply, then: Callable[[Replies], None]
) -> None:
    """Send each node its request; `then` once every node has answered (None: lost)."""
    if not sends:
        then({})
        return
    got: Replies = {}

    def waiter(name: str) -> Callable[[bytes | None], None]:
        def done(reply: bytes | None) -> None:
            got[name] = reply
            if len(got) == len(sends):
                then(got)

        return done

    for name, payload in sends.items():
        proxy.send_to(name, payload, shape, waiter(name))


def keyed(proxy: Proxy, client: Client, req: Request) -> None:
    assert proxy.ring is not None
    names = proxy.ring.nodes(req.hash_key, proxy.copies)
    if req.command == b"mg":
        _read_meta(proxy, client, req, names)
        return
    slot = None if req.noreply else client.slot()
    drops = QUIET_DROPS.get(req.command, frozenset()) if req.quiet else frozenset()

    def answer(reply: bytes | None) -> None:
        if slot is None:
            return
        if reply is None:
            client.fill(slot, proxy.down(names[0]))
        elif drops and status_word(reply) in drops:
            client.fill(slot, b"")
        else:
            client.fill(slot, reply)

    if req.command == b"cas":

        def stored(replies: Replies) -> None:
            reply = replies[names[0]]
            if reply == b"STORED\r\n" and req.data is not None:
                _, key, flags, exptime, length = req.tokens[:5]
                line = b" ".join((b"set", key, flags, exptime, length)) + CRLF
                for other in names[1:]:
                    proxy.send_to(other, line + req.data + CRLF, Reply.LINE, lambda _r: None)
            answer(reply)

        _gather(proxy, {names[0]: req.forward()}, req.reply_shape, stored)
        return

    def first_answer(replies: Replies) -> None:
        answer(next((replies[n] for n in names if replies[n] is not None), None))

    _gather(proxy, dict.fromkeys(names, req.forward()), req.reply_shape, first_answer)


def _read_meta(proxy: Proxy, client: Client, req: Request, names: list[str]) -> None:
    slot = client.slot()
    drops = QUIET_DROPS[b"mg"] if req.quiet else frozenset()
    answers: list[bytes | None] = []

    def ask(i: int) -> None:
        def done(reply: bytes | None) -> None:
            answers.append(reply)
            missed = reply is None or status_word(reply) == b"EN"
            if missed and i + 1 < len(names):
                ask(i + 1)
                return
            final = reply
            if final is None:  # the last copy is down: a miss seen earlier still counts
                final = next((a for a in answers if a is not None), None)
            if final is None:
                client.fill(slot, proxy.down(names[0]))
            elif drops and status_word(final) in drops:
                client.fill(slot, b"")
            else:
                client.fill(slot, final)

        proxy.send_to(names[i], req.forward(), Reply.META, done)

    ask(0)


def get(
    proxy: Proxy, client: Client, req: Request, keys: list[bytes], local: dict[bytes, bytes]
) -> None:
    """A get over replicated pools: rounds over the copies, each asking for what is still
    missing; merged in the order asked."""
    assert proxy.ring is not None
    ring = proxy.ring
    slot = client.slot()
    head = req.tokens[:2] if req.command in (b"gat", b"gats") else req.tokens[:1]
    chains = {key: ring.nodes(key, proxy.copies) for key in dict.fromkeys(keys)}
    blocks: dict[bytes, bytes] = dict(local)
    answered: set[bytes] = set()  # keys a live copy answered (hit or miss)
    dead: list[str] = []

    def round_(i: int) -> None:
        wanted: dict[str, list[bytes]] = {}
        for key, chain in chains.items():
            if key not in blocks and i < len(chain):
                wanted.setdefault(chain[i], []).append(key)
        if i > 0 and not wanted:
            finish()
            return
        sends = {n: b" ".join([*head, *ks]) + CRLF for n, ks in wanted.items()}

        def then(replies: Replies) -> None:
            for name, reply in replies.items():
                if reply is None or is_error(reply):
                    dead.append(name)
                    continue
                blocks.update(value_blocks(reply))
                answered.update(wanted[name])
            if i + 1 < proxy.copies:
                round_(i + 1)
            else:
                finish()

        _gather(proxy, sends, Reply.VALUES, then)

    def finish() -> None:
        lost = [k for k in chains if k not in blocks and k not in answered]
        if lost:
            client.fill(slot, proxy.down(dead[0] if dead else chains[lost[0]][0]))
            return
        try:
            client.fill(slot, merge_values(req.keys, [], blocks, limit=proxy.max_merged))
        except ValueError:
            client.fill(slot, b"SERVER_ERROR the reply is larger than the proxy sends at once\r\n")

    round_(0)
