"""Fuzz inputs for the router and the bus handlers: pure, seeded generators (bytes out).

Three kinds of RESP input: grammar-aware commands (real command names with arguments
in the fuzzer's own key space, including the inputs that broke the router before: forged
MOVED/ASK replies from Lua, deep replies, odd MSET arity, commands the router refuses),
mutations of those frames (truncated, lengths lied about, bytes flipped, CR/LF inserted,
nested arrays, inline forms), and random bytes. Nothing here can legitimately change what a
well-behaved client beside the fuzzer sees: keys live under ``fz:``, scripts finish at once,
and FLUSHALL/FLUSHDB (which would, by design) are not generated.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from cachefleet.resp import encode_command

Gen = Callable[[random.Random], bytes]

SCRIPTS = [
    "return 1",
    "return redis.call('GET', KEYS[1])",
    "return redis.call('SET', KEYS[1], ARGV[1])",
    "return redis.error_reply('MOVED 0 127.0.0.1:1')",
    "return redis.error_reply('MOVED 99999 127.0.0.9:1')",
    "return redis.error_reply('MOVED -1 127.0.0.1:70000')",
    "return redis.error_reply('ASK 5 127.0.0.1:6379')",
    "return redis.error_reply('ASK 3 example.invalid:1')",
    "return redis.error_reply('TRYAGAIN')",
    "return redis.error_reply('CLUSTERDOWN forged')",
    "return redis.error_reply('MOVED')",
    "local t = {} local c = t for i = 1, 1500 do c[1] = {} c = c[1] end return t",
    "local t = {} for i = 1, 2000 do t[i] = i end return t",
    "return {1, {2, {3, 'x'}}, redis.error_reply('ERR nested')}",
    "return string.rep('x', 100000)",
]

REFUSED = [
    ["CONFIG", "SET", "maxmemory", "100"],
    ["CONFIG", "SET", "requirepass", "x"],
    ["CONFIG", "REWRITE"],
    ["CLUSTER", "RESET", "SOFT"],
    ["CLUSTER", "FAILOVER", "TAKEOVER"],
    ["CLUSTER", "FORGET", "0" * 40],
    ["CLUSTER", "SETSLOT", "0", "NODE", "0" * 40],
    ["ACL", "SETUSER", "default", "-@all"],
    ["SHUTDOWN", "NOSAVE"],
    ["DEBUG", "SLEEP", "5"],
    ["DEBUG", "SEGFAULT"],
    ["REPLICAOF", "NO", "ONE"],
    ["CLIENT", "KILL", "TYPE", "normal"],
    ["CLIENT", "PAUSE", "10000"],
    ["MONITOR"],
    ["SYNC"],
    ["MIGRATE", "127.0.0.1", "1", "fz:a", "0", "1000"],
    ["BGSAVE"],
    ["MODULE", "LIST"],
    ["AUTH", "default", "wrong"],
    ["AUTH", "x"],
]


def key(rng: random.Random) -> str:
    tag = rng.choice(["", "{fz}", f"{{fz{rng.randrange(50)}}}"])
    return f"fz:{tag}{rng.randrange(1000)}"


_VALUES = [
    "".join(random.Random(n).choice("abcxyz\r\n\0 ") for _ in range(n))
    for n in (0, 1, 5, 50, 500, 5000)
]


def value(rng: random.Random) -> str:
    return rng.choice(_VALUES)


def command(rng: random.Random) -> list[str]:
    """One real command in the fuzzer's key space."""
    k = key(rng)
    choice = rng.randrange(30)
    keys = [key(rng) for _ in range(rng.randrange(0, 8))]
    match choice:
        case 0:
            return ["GET", k]
        case 1:
            return ["SET", k, value(rng), *rng.choice([[], ["EX", "10"], ["PX", "-1"], ["NX"]])]
        case 2:
            return ["MGET", *keys]
        case 3:  # odd arity on purpose, sometimes
            return ["MSET", *[x for kk in keys for x in (kk, value(rng))][: rng.randrange(9)]]
        case 4:
            return ["DEL", *keys]
        case 5:
            return ["EXISTS", *keys]
        case 6:
            return ["INCR", k]
        case 7:
            return ["HSET", k, "f", value(rng)]
        case 8:
            return ["LPUSH", k, value(rng)]
        case 9:
            return ["LRANGE", k, "0", str(rng.randrange(-5, 5))]
        case 10:
            script = rng.choice(SCRIPTS)
            return ["EVAL", script, "1", k, value(rng)]
        case 11:
            return rng.choice([["MULTI"], ["EXEC"], ["DISCARD"], ["WATCH", k], ["UNWATCH"]])
        case 12:
            return rng.choice(
                [["SUBSCRIBE", "fz"], ["UNSUBSCRIBE"], ["PSUBSCRIBE", "fz*"], ["SSUBSCRIBE", k],
                 ["PUBLISH", "fz", value(rng)], ["SPUBLISH", k, "x"], ["PUNSUBSCRIBE"]]
            )  # fmt: skip
        case 13:
            return rng.choice([["HELLO", "3"], ["HELLO", "2"], ["HELLO", "03"], ["HELLO", "9"]])
        case 14:
            return rng.choice(
                [["CLUSTER", "SLOTS"], ["CLUSTER", "SHARDS"], ["CLUSTER", "NODES"],
                 ["CLUSTER", "INFO"], ["CLUSTER", "KEYSLOT", k], ["CLUSTER", "MYID"]]
            )  # fmt: skip
        case 15:
            return rng.choice(REFUSED)
        case 16:
            return rng.choice(
                [["CLIENT", "SETNAME", "fz"], ["CLIENT", "GETNAME"], ["CLIENT", "ID"],
                 ["CLIENT", "INFO"], ["CLIENT", "LIST"], ["CLIENT", "SETINFO", "LIB-NAME", "fz"],
                 ["CLIENT", "REPLY", "OFF"], ["CLIENT", "TRACKING", "ON"]]
            )  # fmt: skip
        case 17:
            return ["WAIT", "1", "10"]
        case 18:
            return ["BLPOP", k, "0.01"]
        case 19:
            return ["SCAN", str(rng.randrange(100000)), "MATCH", "fz:*", "COUNT", "10"]
        case 20:
            return ["PING", *([value(rng)] if rng.random() < 0.5 else [])]
        case 21:
            return ["ECHO", value(rng)]
        case 22:
            return ["DBSIZE"]
        case 23:
            return ["TYPE", k]
        case 24:
            return ["SELECT", str(rng.randrange(-1, 17))]
        case 25:
            return ["XADD", k, "*", "f", "v"]
        case 26:
            return ["XREAD", "COUNT", "1", "STREAMS", k, "0"]
        case 27:
            return ["CONFIG", "GET", rng.choice(["maxmemory", "*", "requirepass"])]
        case 28:
            return ["NOSUCHCOMMAND" * rng.randrange(1, 3), k]
        case _:
            return ["OBJECT", "ENCODING", k]


def frame(rng: random.Random) -> bytes:
    return encode_command(command(rng))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One structural or byte-level mutation of a frame."""
    b = bytearray(data)
    match rng.randrange(10):
        case 0 if b:
            return bytes(b[: rng.randrange(len(b))])  # truncated
        case 1:  # a length that lies
            return data.replace(b"$", rng.choice([b"$9", b"$-5", b"$536870912", b"$x"]), 1)
        case 2:
            return data.replace(b"*", rng.choice([b"*99999", b"*-3", b"*0", b"*1048577"]), 1)
        case 3:
            for _ in range(rng.randrange(1, 4)):
                if b:
                    b[rng.randrange(len(b))] = rng.randrange(256)
            return bytes(b)
        case 4:
            i = rng.randrange(len(b) + 1)
            return bytes(b[:i] + b"\r\n" + b[i:])
        case 5:  # nested arrays are not a request
            return b"*1\r\n" * rng.randrange(1, 2000) + data
        case 6:  # inline form, with quotes
            return rng.choice(
                [b'GET "fz:1', b"SET fz:2 'x", b"PING\r\n", b"  \r\n", b'"\\x4g"\r\n']
            )
        case 7:
            return data * rng.randrange(2, 20)
        case 8:
            return b"$" + str(rng.randrange(10**12)).encode() + b"\r\n"
        case _:
            return data + rng.randbytes(rng.randrange(1, 30))


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(1, 200))


def hostile(rng: random.Random) -> bytes:
    """One input that may break the framing (and so end its connection): 75% mutated frames,
    25% noise."""
    return mutate(frame(rng), rng) if rng.random() < 0.75 else random_bytes(rng)


def batch(rng: random.Random, size: int) -> list[bytes]:
    """What one connection sends: well-framed commands (every one of them is parsed and
    answered, whatever it asks), then one hostile input, which may end the connection: a
    malformed input in the middle would hide the rest of the batch from the router."""
    return [frame(rng) for _ in range(size - 1)] + [hostile(rng)]


# -- bus messages ---------------------------------------------------------------------------


FIELDS = ["epoch", "sdown", "candidate", "type", "shard", "shards", "slots", "nodes", "cluster",
          "zone", "stalled", "failing_over", "voter", "granted", "v"]  # fmt: skip


def json_value(rng: random.Random, depth: int = 0) -> object:
    r = rng.randrange(9 if depth < 4 else 6)
    match r:
        case 0:
            return None
        case 1:
            return rng.choice([True, False])
        case 2:
            return rng.choice([0, -1, 1, 2**63, 16384, 20000, 10**30])
        case 3:
            return rng.choice([1.5, float("inf"), float("nan"), -0.0])
        case 4:
            return rng.choice(["", "s1", "x", "primary", "127.0.0.1", "offline", "a" * 300])
        case 5:
            return rng.choice([[], [0, 20000], [[0, 16383]], [[5, 1]]])
        case 6 | 7:
            return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
        case _:
            fields = FIELDS
            return {rng.choice(fields): json_value(rng, depth + 1) for _ in range(rng.randrange(6))}


def bus_payload(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.7:
        return json.dumps(json_value(rng)).encode()
    if r < 0.8:
        return b"[" * rng.randrange(1000, 100000)
    if r < 0.9:
        return b"offline"
    return random_bytes(rng)


def bus_topic(rng: random.Random, cluster: str) -> str:
    sid = rng.choice(["s1", "s2", "s3", "x", "s99"])
    return "/".join(
        [
            "cachefleet",
            cluster,
            *rng.choice(
                [
                    ["sentinels", sid, "hello"],
                    ["failover", str(rng.randrange(-1, 5)), "votes"],
                    ["nodes", "n", "state"],
                    ["routers", "0", "state"],
                    ["events"],
                    ["layout"],  # sent unretained (see the runner)
                ]
            ),
        ]
    )
