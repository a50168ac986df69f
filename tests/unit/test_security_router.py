"""Client authentication at the router without sockets: the real router over in-memory
transports (the harness of test_router_core), with a real secrets store in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

from test_router_core import Harness, cmds, layout, settle

from cachefleet.credentials import Credentials
from cachefleet.security import Secrets, ack_path, read_ack, rotated, save_secrets
from router.auth import Authenticator

TOKEN = "token-A-0123456789abcdef"
NEW = "token-B-0123456789abcdef"
APP = "app-password-0123456789"
NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


def authenticator(root: Path, secrets: Secrets | None = None) -> Authenticator:
    save_secrets(root, secrets or Secrets(open=False, tokens=(TOKEN,), users={"app": (APP,)}))
    return Authenticator(root=root, process="router", admin=Credentials("cachefleet", "adm" * 8))


def secured(root: Path) -> Harness:
    h = Harness(layout())
    h.auth = authenticator(root)
    return h


async def test_unauthenticated_commands_get_noauth_and_reach_no_node(tmp_path: Path) -> None:
    h = secured(tmp_path)
    c, t = h.client()
    c.data_received(cmds([b"GET", b"a"], [b"SET", b"b", b"1"], [b"CLUSTER", b"SLOTS"]))
    await settle()
    assert t.written == NOAUTH * 3
    assert not h.nodes
    c.data_received(cmds([b"HELLO", b"3"]))
    await settle()
    assert t.written.startswith(NOAUTH * 3 + b"-NOAUTH HELLO must be called")
    assert c.protocol == 2


async def test_auth_then_commands_run_on_a_connection_logged_in_as_the_user(
    tmp_path: Path,
) -> None:
    h = secured(tmp_path)
    c, t = h.client()
    c.data_received(cmds([b"AUTH", b"wrong-password-0123"], [b"GET", b"a"]))
    await settle()
    assert t.written == WRONGPASS + NOAUTH
    t.written.clear()
    # AUTH and the first request in one packet: the rest of the packet runs authenticated
    c.data_received(cmds([b"AUTH", TOKEN.encode()], [b"GET", b"a"]))
    await settle()
    assert t.written == b"+OK\r\n" and c.user == "default"
    node = h.node(("127.0.2.1", 7021))  # b"a" is a shard-2 key
    assert node.requests() == [[b"AUTH", b"default", TOKEN.encode()], [b"GET", b"a"]]

    app, app_t = h.client()
    app.data_received(cmds([b"AUTH", b"app", APP.encode()], [b"GET", b"foo"]))
    await settle()
    assert app_t.written == b"+OK\r\n" and app.user == "app"
    # another pool: its own connection, logged in as app
    assert node.requests() == [[b"AUTH", b"app", APP.encode()], [b"GET", b"foo"]]
    assert len(node.conns) == 2


async def test_hello_auth_authenticates_and_switches_protocol(tmp_path: Path) -> None:
    h = secured(tmp_path)
    c, t = h.client()
    c.data_received(cmds([b"HELLO", b"3", b"AUTH", b"app", b"nope-nope-nope-nope"]))
    await settle()
    assert t.written == WRONGPASS and c.protocol == 2 and c.user is None
    t.written.clear()
    c.data_received(cmds([b"HELLO", b"3", b"AUTH", b"app", APP.encode(), b"SETNAME", b"n"]))
    await settle()
    assert c.protocol == 3 and c.user == "app" and c.name == b"n"
    assert t.written.startswith(b"%7\r\n")  # the HELLO map, in RESP3


async def test_reset_forgets_the_login(tmp_path: Path) -> None:
    h = secured(tmp_path)
    c, t = h.client()
    c.data_received(cmds([b"AUTH", TOKEN.encode()], [b"RESET"], [b"GET", b"a"]))
    await settle()
    assert t.written == b"+OK\r\n+RESET\r\n" + NOAUTH


async def test_the_control_planes_user_is_accepted(tmp_path: Path) -> None:
    h = secured(tmp_path)
    c, t = h.client()
    c.data_received(cmds([b"AUTH", b"cachefleet", b"adm" * 8]))
    await settle()
    assert t.written == b"+OK\r\n" and c.user == "cachefleet"


async def test_an_open_cluster_keeps_answering_as_before(tmp_path: Path) -> None:
    h = Harness(layout())
    h.auth = authenticator(tmp_path, Secrets())
    c, t = h.client()
    c.data_received(cmds([b"AUTH", b"whatever-0123456789"], [b"GET", b"a"]))
    await settle()
    assert t.written.startswith(b"-ERR AUTH <password> called without any password")
    assert h.node(("127.0.2.1", 7021)).requests() == [[b"GET", b"a"]]  # no login sent


async def test_a_source_outside_allowed_sources_is_closed_without_a_word(tmp_path: Path) -> None:
    h = Harness(layout())
    h.allowed_sources = ("127.0.0.1/32",)  # the harness's clients come from 127.0.0.200
    c, t = h.client()
    await settle()
    assert t.closed and t.written == b"" and c.id == 0 and c not in h.clients
    h.allowed_sources = ("127.0.0.0/24",)
    c, t = h.client()
    assert not t.closed and c in h.clients


def test_reload_picks_up_a_rotation_and_acknowledges_it(tmp_path: Path) -> None:
    a = authenticator(tmp_path)
    assert read_ack(ack_path(tmp_path, "router")) == (1, os.getpid())
    assert a.login("default") == cmds([b"AUTH", b"default", TOKEN.encode()])
    assert not a.refresh()  # unchanged
    save_secrets(tmp_path, rotated(a.secrets, NEW, "rotate"))
    assert a.refresh()
    assert a.check("default", TOKEN) and a.check("default", NEW)
    assert a.login("default") is not None and NEW.encode() in (a.login("default") or b"")
    assert read_ack(ack_path(tmp_path, "router")) == (2, os.getpid())
    save_secrets(tmp_path, rotated(a.secrets, NEW, "set"))
    assert a.refresh() and not a.check("default", TOKEN)
