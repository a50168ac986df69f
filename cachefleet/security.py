"""Security settings of a cluster: the topology's ``security:`` section, the secrets it names
(AUTH token, users' passwords) and the engine ACL lines they become.

Pure parts (validation, ACL rendering, rotation arithmetic) are functions of values; the only
I/O is reading the secret files a topology names and the cluster's secrets store
(``<state-dir>/<cluster>/secrets.json``, mode 0600), which every process of the cluster reads
and ``cachefleet auth`` rewrites. The topology (and so ``plan.json`` and ``status``) only ever
holds the *paths* of secret files, never a secret.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachefleet.credentials import ADMIN_USER
from cachefleet.errors import TopologyError

if TYPE_CHECKING:  # the parser's reader: topology imports this module, not the other way
    from cachefleet.topology import Section

TOKEN_MIN = 16
TOKEN_MAX = 128
#: Printable ASCII without space, quotes, ``@``, ``/`` (the managed service's AUTH token rule;
#: also what keeps a secret safe inside a rendered engine config line).
_SECRET_FORBIDDEN = frozenset(" \"'@/")
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_USERS = 100
MAX_PASSWORDS = 2  # a user, like the token, holds at most an old and a new password

#: Access-string rules a topology may use. Passwords come from files only (``>``, ``<``,
#: ``#``, ``!``, ``nopass``, ``resetpass`` are refused), and selectors are not supported.
_ACCESS_WORDS = frozenset(
    {
        "on",
        "off",
        "allkeys",
        "resetkeys",
        "allchannels",
        "resetchannels",
        "allcommands",
        "nocommands",
    }
)
_ACCESS_RULE = re.compile(
    r"^(?:(?:%R?W?)?~\S+|%R~\S+|%W~\S+|&\S+|[+-]@[a-z-]+|[+-][a-z][a-z0-9_-]*(?:\|[a-z0-9_-]+)?)$"
)


@dataclass(frozen=True)
class User:
    name: str
    password_files: tuple[str, ...]
    access: str


@dataclass(frozen=True)
class Security:
    tls: bool = False
    auth_token_file: str | None = None
    users: tuple[User, ...] = ()
    allowed_sources: tuple[str, ...] = ()  # CIDR strings, normalised

    @property
    def requires_auth(self) -> bool:
        """Clients must authenticate (to the router and to the nodes)."""
        return self.auth_token_file is not None or bool(self.users)

    def allows(self, address: str) -> bool:
        """Whether a client from `address` may connect (no list: everyone)."""
        return source_allowed(self.allowed_sources, address)


def source_allowed(networks: Sequence[str], address: str) -> bool:
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in networks)


def secret_problem(secret: str) -> str | None:
    """Why `secret` is not an acceptable token or password (None when it is)."""
    if not TOKEN_MIN <= len(secret) <= TOKEN_MAX:
        return f"is {len(secret)} characters long, must be {TOKEN_MIN}-{TOKEN_MAX}"
    for ch in secret:
        if not 0x20 <= ord(ch) < 0x7F:
            return "must be printable ASCII characters only"
        if ch in _SECRET_FORBIDDEN:
            shown = "space" if ch == " " else repr(ch)
            return f"must not contain a {shown} (no spaces, quotes, @ or /)"
    return None


def access_problem(access: str) -> str | None:
    """Why an access string is not acceptable (None when it is)."""
    if not access.strip():
        return "is empty"
    for rule in access.split():
        low = rule.lower()
        if low in _ACCESS_WORDS:
            continue
        if rule[:1] in (">", "<", "#", "!") or low in ("nopass", "resetpass", "reset"):
            return f"{rule!r}: passwords come from password_files, not the access string"
        if rule.startswith("("):
            return f"{rule!r}: selectors are not supported"
        if not _ACCESS_RULE.fullmatch(rule):
            return f"{rule!r} is not an ACL rule (on, off, ~keys, &channels, +@category, -command)"
    return None


def file_path(sec: Section, key: str, value: Any) -> str:
    """A file a topology names: relative paths are taken from the topology file's directory."""
    if not isinstance(value, str) or not value:
        raise sec.fail(key, "must be a path to a file")
    if not sec.source.startswith("<") and not Path(value).is_absolute():
        return str(Path(sec.source).parent / value)
    return value


def parse_security(sec: Section, engine: str, cluster_mode: str = "enabled") -> Security:
    """The ``security:`` section. Secret files are named, not read (that happens at `up`):
    relative paths are taken from the topology file's directory."""

    def path(key: str, value: Any) -> str:
        return file_path(sec, key, value)

    # memcached too: `up` checks that its binary has TLS; cluster-mode-disabled groups too:
    # their endpoints pass TLS through to the nodes, whose certificate carries 127.0.0.1
    tls = sec.boolean("tls", False)
    for key in ("auth_token_file", "users"):
        if engine == "memcached" and sec.has(key):
            raise sec.fail(key, "memcached clusters have no AUTH: keep them on loopback")
    token_raw = sec.raw("auth_token_file", None)
    token_file = None if token_raw is None else path("auth_token_file", token_raw)
    users_raw = sec.raw("users", None)
    users: list[User] = []
    if users_raw is not None:
        if not isinstance(users_raw, list):
            raise sec.fail("users", "must be a list of users (name, password_files, access)")
        if len(users_raw) > MAX_USERS:
            raise sec.fail("users", f"{len(users_raw)} users given, at most {MAX_USERS}")
        for i, item in enumerate(users_raw):
            users.append(_user(sec, f"users[{i}]", item, path))
        names = [u.name for u in users]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise sec.fail("users", f"user {dup!r} is declared twice")
    sources_raw = sec.raw("allowed_sources", None)
    sources: list[str] = []
    if sources_raw is not None:
        if not isinstance(sources_raw, list) or not sources_raw:
            raise sec.fail("allowed_sources", "must be a non-empty list of CIDR blocks")
        for i, item in enumerate(sources_raw):
            key = f"allowed_sources[{i}]"
            if not isinstance(item, str):
                raise sec.fail(key, "must be a CIDR block such as 127.0.0.0/8")
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise sec.fail(key, f"{item!r} is not a CIDR block such as 127.0.0.0/8") from None
            sources.append(str(net))
    sec.done()
    return Security(
        tls=tls,
        auth_token_file=token_file,
        users=tuple(users),
        allowed_sources=tuple(sources),
    )


def _user(sec: Section, key: str, item: Any, path: Any) -> User:
    from cachefleet.topology import Section as Reader

    us = Reader(sec.source, sec.dotted(key), item)
    name = us.string("name", None)
    if not _USER_RE.fullmatch(name):
        raise us.fail("name", f"{name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if name == ADMIN_USER:
        raise us.fail("name", f"{name!r} is the control plane's own user")
    files_raw = us.raw("password_files", None)
    if not isinstance(files_raw, list) or not 1 <= len(files_raw) <= MAX_PASSWORDS:
        raise us.fail("password_files", f"must be a list of 1-{MAX_PASSWORDS} password files")
    files = tuple(
        path(f"{key}.password_files[{j}]", f) if isinstance(f, str) and f else _bad(us, j)
        for j, f in enumerate(files_raw)
    )
    access = us.string("access", None)
    problem = access_problem(access)
    if problem is not None:
        raise us.fail("access", problem)
    us.done()
    return User(name=name, password_files=files, access=" ".join(access.split()))


def _bad(us: Section, j: int) -> str:
    raise us.fail(f"password_files[{j}]", "must be a path to a file")


# -- secrets ------------------------------------------------------------------------------------


def read_secret(source: str, field_name: str, path: str) -> str:
    """One secret from its file (a trailing newline is not part of it), validated."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TopologyError(source, field_name, f"{path}: {exc.strerror or exc}") from None
    secret = text.rstrip("\r\n")
    problem = secret_problem(secret)
    if problem is not None:
        raise TopologyError(source, field_name, f"the secret in {path} {problem}")
    return secret


@dataclass(frozen=True)
class Secrets:
    """What clients may authenticate with, as the engines and the router enforce it.

    `tokens` are the `default` user's accepted passwords, oldest first (two during a
    rotation); `open` means the `default` user needs no password (no token). `generation`
    grows with every change."""

    generation: int = 1
    open: bool = True
    tokens: tuple[str, ...] = ()
    users: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_enabled: bool = True

    def __repr__(self) -> str:  # never print a secret
        return (
            f"Secrets(generation={self.generation}, open={self.open}, tokens={len(self.tokens)}, "
            f"users={sorted(self.users)})"
        )

    @property
    def requires_auth(self) -> bool:
        return not (self.open and self.default_enabled)

    def check(self, user: str, password: str) -> bool:
        """Whether `user`/`password` authenticates (the `default` user: the token)."""
        if user == "default" and user not in self.users:
            return self.default_enabled and (self.open or password in self.tokens)
        return password in self.users.get(user, ())

    def login(self, user: str) -> tuple[str, str] | None:
        """The (user, password) a backend connection of `user` logs in with (the newest
        password), or None when it needs none."""
        if user == "default" and user not in self.users:
            return None if self.open or not self.tokens else ("default", self.tokens[-1])
        passwords = self.users.get(user)
        return (user, passwords[-1]) if passwords else None

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "generation": self.generation,
                "open": self.open,
                "tokens": list(self.tokens),
                "users": {k: list(v) for k, v in self.users.items()},
                "default_enabled": self.default_enabled,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Secrets:
        data = json.loads(text)
        return cls(
            generation=int(data["generation"]),
            open=bool(data["open"]),
            tokens=tuple(str(t) for t in data["tokens"]),
            users={str(k): tuple(str(p) for p in v) for k, v in data["users"].items()},
            default_enabled=bool(data.get("default_enabled", True)),
        )


def read_secrets(security: Security, source: str) -> Secrets:
    """The secrets a topology names, read from their files and validated (at `up`)."""
    tokens: tuple[str, ...] = ()
    if security.auth_token_file is not None:
        tokens = (read_secret(source, "security.auth_token_file", security.auth_token_file),)
    users = {
        u.name: tuple(
            read_secret(source, f"security.users[{i}].password_files[{j}]", f)
            for j, f in enumerate(u.password_files)
        )
        for i, u in enumerate(security.users)
    }
    return Secrets(
        generation=1,
        open=not tokens,
        tokens=tokens,
        users=users,
        # with users and no token, the default user is disabled (as with the managed
        # service's user groups); a declared user named `default` replaces it
        default_enabled=bool(tokens) or not users or "default" in users,
    )


class RotationError(ValueError):
    """A token change that cannot be made."""


def rotated(current: Secrets, token: str, strategy: str) -> Secrets:
    """The secrets after ``cachefleet auth --strategy rotate|set`` with `token`.

    rotate: `token` is accepted beside the current one (at most two: the older one drops).
    set: only `token` is accepted (on a cluster without a token: AUTH is required from now)."""
    problem = secret_problem(token)
    if problem is not None:
        raise RotationError(f"the new token {problem}")
    if "default" in current.users:
        raise RotationError("the topology declares a user named 'default': change its password")
    if strategy == "rotate":
        if current.open:
            raise RotationError(
                "the cluster has no AUTH token to rotate: `--strategy set` requires one "
                "(clients without it are refused from then on)"
            )
        kept = tuple(t for t in current.tokens if t != token)[-(MAX_PASSWORDS - 1) :]
        tokens = (*kept, token)
    elif strategy == "set":
        tokens = (token,)
    else:
        raise RotationError(f"unknown strategy {strategy!r} (rotate or set)")
    return replace(
        current, generation=current.generation + 1, open=False, tokens=tokens, default_enabled=True
    )


def secrets_path(root: Path) -> Path:
    return root / "secrets.json"


def save_secrets(root: Path, secrets: Secrets) -> None:
    """Atomically replace the store (mode 0600 from the start)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = root / f".secrets.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.to_json())
    tmp.replace(secrets_path(root))


def load_secrets(root: Path) -> Secrets:
    """The cluster's secrets (an open cluster when there is no store: made before security)."""
    try:
        return Secrets.from_json(secrets_path(root).read_text())
    except FileNotFoundError:
        return Secrets()


def ack_path(root: Path, process: str) -> Path:
    """Where a router worker acknowledges the generation of the secrets it enforces."""
    return root / "security" / f"{process}.ack"


def read_ack(path: Path) -> tuple[int, int] | None:
    """(generation, pid) a router worker acknowledged, or None."""
    try:
        generation, pid = path.read_text().split()
        return int(generation), int(pid)
    except (OSError, ValueError):
        return None


# -- engine ACL lines ---------------------------------------------------------------------------


def password_rules(secrets: Secrets, user: str) -> list[str]:
    if user == "default" and user not in secrets.users:
        if secrets.open:
            return ["nopass"]
        return [f">{t}" for t in secrets.tokens]
    return [f">{p}" for p in secrets.users[user]]


def user_acl_lines(secrets: Secrets, users: Iterable[User], denied: Sequence[str]) -> list[str]:
    """The ``user`` lines of the client-facing users: `default` (the token as its password,
    or disabled when users are declared without a token) and every declared user with its
    access string, each followed by the commands no client may run."""
    deny = " ".join(f"-{c}" for c in denied)
    lines = []
    declared = {u.name: u for u in users}
    if "default" not in declared:
        state = "on" if secrets.default_enabled else "off"
        rules = " ".join(password_rules(secrets, "default"))
        lines.append(f"user default {state} {rules} ~* &* +@all {deny}")
    for user in declared.values():
        rules = " ".join(password_rules(secrets, user.name))
        access = user.access
        if not any(w in ("on", "off") for w in access.lower().split()):
            access = f"on {access}"
        lines.append(f"user {user.name} {rules} {access} {deny}")
    return lines


def default_setuser(secrets: Secrets, *, adding: Sequence[str] = ()) -> list[str]:
    """``ACL SETUSER default ...`` arguments that make a live node match `secrets` (with
    `adding`: only add those passwords, keeping what it accepts now)."""
    if adding:
        return ["default", *(f">{t}" for t in adding)]
    state = "on" if secrets.default_enabled else "off"
    return ["default", state, "resetpass", *password_rules(secrets, "default")]


def security_summary(security: Security, ca: Path | None, nodes: str = "") -> str:
    """One line for `up`: what is enforced, and where (never a secret)."""
    parts = [f"TLS (CA {ca})" if security.tls and ca is not None else "no TLS"]
    if security.auth_token_file is not None:
        parts.append("AUTH token required")
    if security.users:
        parts.append(f"users {', '.join(u.name for u in security.users)}")
    if security.allowed_sources:
        nodes = nodes or "nodes rely on their zone address binding (no packet filters)"
        parts.append(f"the router admits {', '.join(security.allowed_sources)} only; {nodes}")
    return "; ".join(parts)


def security_status(security: Security, ca: Path | None) -> dict[str, Any]:
    """The `security` block of `status --json`: what is enforced, paths only, no secret."""
    return {
        "tls": security.tls,
        "ca": str(ca) if security.tls and ca is not None else None,
        "auth": security.requires_auth,
        "users": [u.name for u in security.users],
        "allowed_sources": list(security.allowed_sources),
    }
