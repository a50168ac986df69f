"""The topology's security section, secret validation, token rotation and ACL lines."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from cachefleet.errors import TopologyError
from cachefleet.security import (
    RotationError,
    Secrets,
    access_problem,
    default_setuser,
    load_secrets,
    read_secrets,
    rotated,
    save_secrets,
    secret_problem,
    secrets_path,
    security_summary,
    source_allowed,
    user_acl_lines,
)
from cachefleet.topology import parse_topology

GOOD = "s3cret-Token-0123456789"
OTHER = "an0ther.Token_98765!"


def topo(security: Any, engine: str = "valkey", source: str = "/etc/cf/t.yaml") -> Any:
    doc: dict[str, Any] = {"name": "c", "engine": engine, "zones": ["az-a"]}
    if engine == "memcached":
        doc["nodes"] = 1
    doc["security"] = security
    return parse_topology(doc, source)


def error(security: Any, **kw: Any) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        topo(security, **kw)
    return info.value


def test_absent_section_is_open() -> None:
    t = parse_topology({"name": "c", "zones": ["az-a"]})
    assert not t.security.requires_auth
    assert t.security.allowed_sources == ()


def test_full_section_parses_with_paths_relative_to_the_topology() -> None:
    t = topo(
        {
            "tls": False,
            "auth_token_file": "secrets/token",
            "users": [
                {
                    "name": "app",
                    "password_files": ["secrets/app.pw"],
                    "access": "on ~app:*  &* +@all -@dangerous",
                }
            ],
            "allowed_sources": ["127.0.0.1/8"],
        }
    )
    sec = t.security
    assert sec.auth_token_file == "/etc/cf/secrets/token"
    assert sec.users[0].password_files == ("/etc/cf/secrets/app.pw",)
    assert sec.users[0].access == "on ~app:* &* +@all -@dangerous"
    assert sec.allowed_sources == ("127.0.0.0/8",)
    assert sec.requires_auth


@pytest.mark.parametrize(
    ("security", "field", "words"),
    [
        ({"tls": "yes"}, "security.tls", "true or false"),
        ({"auth_token_file": 3}, "security.auth_token_file", "path"),
        ({"auth_token_file": ""}, "security.auth_token_file", "path"),
        ({"users": {"name": "x"}}, "security.users", "list"),
        (
            {"users": [{"password_files": ["p"], "access": "on"}]},
            "security.users[0].name",
            "required",
        ),
        (
            {"users": [{"name": "a b", "password_files": ["p"], "access": "on"}]},
            "security.users[0].name",
            "letters",
        ),
        (
            {"users": [{"name": "cachefleet", "password_files": ["p"], "access": "on"}]},
            "security.users[0].name",
            "control plane",
        ),
        (
            {"users": [{"name": "a", "password_files": [], "access": "on"}]},
            "security.users[0].password_files",
            "1-2",
        ),
        (
            {"users": [{"name": "a", "password_files": ["p", 4], "access": "on"}]},
            "security.users[0].password_files[1]",
            "path",
        ),
        (
            {"users": [{"name": "a", "password_files": ["p"], "access": "on >pw ~*"}]},
            "security.users[0].access",
            "password_files",
        ),
        (
            {"users": [{"name": "a", "password_files": ["p"], "access": "on nopass"}]},
            "security.users[0].access",
            "password_files",
        ),
        (
            {"users": [{"name": "a", "password_files": ["p"], "access": "on (~x +get)"}]},
            "security.users[0].access",
            "selectors",
        ),
        (
            {"users": [{"name": "a", "password_files": ["p"], "access": "on ~* +@all; rm"}]},
            "security.users[0].access",
            "not an ACL rule",
        ),
        (
            {"users": [{"name": "a", "password_files": ["p"], "access": "on", "extra": 1}]},
            "security.users[0].extra",
            "unknown",
        ),
        (
            {
                "users": [
                    {"name": "a", "password_files": ["p"], "access": "on"},
                    {"name": "a", "password_files": ["q"], "access": "on"},
                ]
            },
            "security.users",
            "twice",
        ),
        ({"allowed_sources": []}, "security.allowed_sources", "non-empty"),
        ({"allowed_sources": ["10.0.0.300/8"]}, "security.allowed_sources[0]", "CIDR"),
        ({"allowed_sources": [8]}, "security.allowed_sources[0]", "CIDR"),
        ({"firewall": True}, "security.firewall", "unknown"),
    ],
)
def test_bad_sections_name_the_field(security: Any, field: str, words: str) -> None:
    exc = error(security)
    assert exc.field == field
    assert words in exc.message


def test_cluster_mode_disabled_takes_security() -> None:
    doc = {
        "name": "c",
        "zones": ["az-a"],
        "cluster_mode": "disabled",
        "security": {
            "tls": True,
            "auth_token_file": "t",
            "users": [{"name": "app", "password_files": ["p"], "access": "on ~app:* +@all"}],
            "allowed_sources": ["127.0.0.1/32"],
        },
    }
    sec = parse_topology(doc).security
    assert sec.tls and sec.auth_token_file == "t" and sec.allowed_sources == ("127.0.0.1/32",)
    assert [u.name for u in sec.users] == ["app"]


def test_memcached_has_no_auth() -> None:
    exc = error({"auth_token_file": "t"}, engine="memcached")
    assert exc.field == "security.auth_token_file"


def test_memcached_takes_allowed_sources() -> None:
    t = topo({"allowed_sources": ["127.0.0.0/8"]}, engine="memcached")
    assert t.security.allowed_sources == ("127.0.0.0/8",)


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        ("a" * 16, True),
        ("a" * 128, True),
        ("a" * 15, False),
        ("a" * 129, False),
        ("abcdefgh ijklmnopq", False),
        ('abcdefghijklmnop"', False),
        ("abcdefghijklmnop'", False),
        ("abcdefghijklmnop@", False),
        ("abcdefghijklmnop/", False),
        ("abcdefghijklmnop\t", False),
        ("abcdefghijklmnopé", False),
        ("!#$%&()*+,-.:;<=>?[]^_`{|}~0123", True),
    ],
)
def test_secret_rules(secret: str, ok: bool) -> None:
    assert (secret_problem(secret) is None) is ok


def test_access_rules() -> None:
    assert access_problem("on ~app:* %R~ro:* &chan* +@all -@dangerous +config|get allkeys") is None
    assert access_problem("") == "is empty"


def test_read_secrets_names_the_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(GOOD + "\n")
    (tmp_path / "short").write_text("short\n")
    (tmp_path / "app.pw").write_text(OTHER)
    source = str(tmp_path / "t.yaml")
    t = topo(
        {
            "auth_token_file": "token",
            "users": [{"name": "app", "password_files": ["app.pw"], "access": "on ~*"}],
        },
        source=source,
    )
    s = read_secrets(t.security, source)
    assert s.tokens == (GOOD,) and not s.open and s.users == {"app": (OTHER,)}
    assert GOOD not in repr(s) and OTHER not in repr(s)

    bad = topo({"auth_token_file": "short"}, source=source)
    with pytest.raises(TopologyError) as info:
        read_secrets(bad.security, source)
    assert info.value.field == "security.auth_token_file"
    assert "5 characters" in info.value.message

    missing = topo(
        {"users": [{"name": "a", "password_files": ["nope"], "access": "on"}]}, source=source
    )
    with pytest.raises(TopologyError) as info:
        read_secrets(missing.security, source)
    assert info.value.field == "security.users[0].password_files[0]"


def test_users_without_token_disable_default() -> None:
    s = Secrets(open=True, users={"app": (OTHER,)}, default_enabled=False)
    assert s.requires_auth
    assert not s.check("default", "anything")
    assert s.check("app", OTHER) and not s.check("app", GOOD)
    assert s.login("app") == ("app", OTHER)


def test_rotation_from_a_token() -> None:
    s = Secrets(open=False, tokens=(GOOD,))
    r = rotated(s, OTHER, "rotate")
    assert r.tokens == (GOOD, OTHER) and r.generation == 2
    assert r.check("default", GOOD) and r.check("default", OTHER)
    assert r.login("default") == ("default", OTHER)
    third = "third-token-0123456789"
    assert rotated(r, third, "rotate").tokens == (OTHER, third)  # at most two
    final = rotated(r, OTHER, "set")
    assert final.tokens == (OTHER,) and not final.check("default", GOOD)
    assert final.generation == 3


def test_an_open_cluster_takes_a_token_with_set_only() -> None:
    with pytest.raises(RotationError, match="no AUTH token to rotate"):
        rotated(Secrets(), GOOD, "rotate")
    final = rotated(Secrets(), GOOD, "set")
    assert not final.open and final.requires_auth and final.check("default", GOOD)
    assert not final.check("default", "whatever")


@pytest.mark.parametrize(
    ("token", "strategy", "words"),
    [("short", "rotate", "characters"), (GOOD, "swap", "unknown strategy")],
)
def test_rotation_refusals(token: str, strategy: str, words: str) -> None:
    with pytest.raises(RotationError, match=words):
        rotated(Secrets(open=False, tokens=(OTHER,)), token, strategy)


def test_store_is_private_and_round_trips(tmp_path: Path) -> None:
    assert load_secrets(tmp_path) == Secrets()
    s = Secrets(generation=4, open=False, tokens=(GOOD, OTHER), users={"app": (OTHER,)})
    save_secrets(tmp_path, s)
    assert stat.S_IMODE(secrets_path(tmp_path).stat().st_mode) == 0o600
    assert load_secrets(tmp_path) == s


def test_acl_lines() -> None:
    t = topo({"users": [{"name": "app", "password_files": ["p"], "access": "~app:* +@all"}]})
    denied = ("config|set", "debug")
    open_lines = user_acl_lines(Secrets(), (), denied)
    assert open_lines == ["user default on nopass ~* &* +@all -config|set -debug"]
    token = Secrets(open=False, tokens=(GOOD, OTHER))
    assert user_acl_lines(token, (), denied)[0] == (
        f"user default on >{GOOD} >{OTHER} ~* &* +@all -config|set -debug"
    )
    users = Secrets(users={"app": (OTHER,)}, default_enabled=False)
    lines = user_acl_lines(users, t.security.users, denied)
    assert lines[0].startswith("user default off nopass")
    assert lines[1] == f"user app >{OTHER} on ~app:* +@all -config|set -debug"


def test_setuser_arguments() -> None:
    token = Secrets(open=False, tokens=(OTHER,))
    assert default_setuser(token) == ["default", "on", "resetpass", f">{OTHER}"]
    assert default_setuser(token, adding=[GOOD]) == ["default", f">{GOOD}"]


def test_summary_names_what_is_enforced_and_no_secret() -> None:
    t = topo(
        {
            "tls": True,
            "auth_token_file": "token",
            "users": [{"name": "app", "password_files": ["p"], "access": "on ~*"}],
            "allowed_sources": ["127.0.0.1/32"],
        }
    )
    line = security_summary(t.security, Path("/s/c/tls/ca.pem"))
    assert line.startswith("TLS (CA /s/c/tls/ca.pem); AUTH token required; users app; ")
    assert "127.0.0.1/32 only" in line and "no packet filters" in line


@pytest.mark.parametrize(
    ("networks", "address", "ok"),
    [
        ((), "10.1.2.3", True),
        (("127.0.0.0/8",), "127.0.0.2", True),
        (("127.0.0.1/32",), "127.0.0.2", False),
        (("127.0.0.1/32",), "not-an-ip", False),
    ],
)
def test_allowed_sources(networks: tuple[str, ...], address: str, ok: bool) -> None:
    assert source_allowed(networks, address) is ok
