"""The router's refusal table: commands that would break the cluster or take over a shared
connection are refused with the cachefleet command to use instead; read-only forms pass; AUTH
is never answered OK."""

from __future__ import annotations

import pytest

from cachefleet.resp import Err
from router import endpoint, policy


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ([b"CONFIG", b"SET", b"maxmemory", b"1"], "cachefleet up"),
        ([b"config", b"rewrite"], "cachefleet up"),
        ([b"CONFIG", b"RESETSTAT"], "cachefleet up"),
        ([b"ACL", b"SETUSER", b"default", b"-@all"], "users"),
        ([b"ACL", b"DELUSER", b"x"], "users"),
        ([b"CLUSTER", b"RESET", b"HARD"], "cachefleet status"),
        ([b"CLUSTER", b"FORGET", b"abc"], "cachefleet status"),
        ([b"CLUSTER", b"MEET", b"127.0.0.1", b"1"], "cachefleet status"),
        ([b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"1"], "cachefleet status"),
        ([b"CLUSTER", b"DELSLOTS", b"0"], "cachefleet status"),
        ([b"CLUSTER", b"SETSLOT", b"0", b"STABLE"], "cachefleet status"),
        ([b"CLUSTER", b"SAVECONFIG"], "cachefleet status"),
        ([b"CLUSTER", b"BUMPEPOCH"], "cachefleet status"),
        ([b"CLUSTER", b"SET-CONFIG-EPOCH", b"9"], "cachefleet status"),
        ([b"CLUSTER", b"FAILOVER"], "cachefleet failover"),
        ([b"CLUSTER", b"REPLICATE", b"abc"], "cachefleet failover"),
        ([b"REPLICAOF", b"NO", b"ONE"], "cachefleet failover"),
        ([b"SLAVEOF", b"127.0.0.1", b"1"], "cachefleet failover"),
        ([b"SHUTDOWN", b"NOSAVE"], "cachefleet down"),
        ([b"DEBUG", b"SLEEP", b"10"], "not available"),
        ([b"MODULE", b"LOAD", b"x.so"], "not available"),
        ([b"CLIENT", b"KILL", b"ID", b"1"], "connect to a node"),
        ([b"CLIENT", b"PAUSE", b"1000"], "connect to a node"),
        ([b"MIGRATE", b"127.0.0.1", b"1", b"k", b"0", b"10"], "cachefleet status"),
        ([b"SAVE"], "persistence"),
        ([b"BGSAVE"], "persistence"),
        ([b"BGREWRITEAOF"], "persistence"),
        ([b"MONITOR"], "connect to a node"),
        ([b"SYNC"], "connect to a node"),
        ([b"PSYNC", b"?", b"-1"], "connect to a node"),
    ],
)
def test_refused_with_the_command_to_use_instead(args: list[bytes], names: str) -> None:
    reply = policy.refusal(args)
    assert reply is not None and reply.startswith(b"-ERR router: ")
    assert b"is not supported through the router" in reply and names.encode() in reply
    assert reply.count(b"\r\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        [b"CONFIG", b"GET", b"maxmemory"],
        [b"ACL", b"WHOAMI"],
        [b"ACL", b"LIST"],
        [b"CLUSTER", b"INFO"],
        [b"CLUSTER", b"SLOTS"],
        [b"CLUSTER", b"SHARDS"],
        [b"CLUSTER", b"NODES"],
        [b"CLUSTER", b"KEYSLOT", b"k"],
        [b"CLUSTER", b"COUNTKEYSINSLOT", b"1"],
        [b"CLIENT", b"ID"],
        [b"CLIENT", b"LIST"],
        [b"GET", b"k"],
        [b"FLUSHALL"],
    ],
)
def test_read_only_forms_pass(args: list[bytes]) -> None:
    assert policy.refusal(args) is None


def test_the_table_can_be_listed() -> None:
    rows = dict(policy.table())
    assert "CONFIG SET" in rows and "SHUTDOWN" in rows and "CLUSTER SETSLOT" in rows


@pytest.mark.parametrize(
    "args", [[b"AUTH", b"secret"], [b"AUTH", b"default", b"anything"], [b"AUTH", b"u", b"p"]]
)
def test_auth_is_never_ok_for_a_password_that_was_not_checked(args: list[bytes]) -> None:
    reply = endpoint.auth(args)
    assert isinstance(reply, Err)
    assert reply.startswith("ERR AUTH <password> called without any password")
