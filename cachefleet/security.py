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
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from secrets import token_hex
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


# -- the control bus ----------------------------------------------------------------------------

#: One bus credential per role; the CLI and the cluster's supervisor share `cli`.
BUS_ROLES = ("agent", "sentinel", "router", "cli")
#: What each role may publish, under ``cachefleet/<cluster>/`` (MQTT filters; `cli`: anything).
BUS_PUBLISH: dict[str, tuple[str, ...]] = {
    "agent": ("nodes/+/state", "agents/+/state", "events"),
    "sentinel": ("sentinels/+/hello", "failover/+/votes", "layout", "events"),
    "router": ("routers/+/state",),
    "cli": ("#",),
}

_bus_role = "cli"
_bus_stores: dict[tuple[str, int], Path] = {}
_bus_external: set[tuple[str, int]] = set()
_bus_contexts: dict[tuple[str, int], ssl.SSLContext] = {}


def topic_matches(topic: str, pattern: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest)."""
    levels, wanted = topic.split("/"), pattern.split("/")
    for i, w in enumerate(wanted):
        if w == "#":
            return True
        if i >= len(levels) or (w != "+" and w != levels[i]):
            return False
    return len(levels) == len(wanted)


def bus_publish_allowed(
    role: str | None, cluster: str, topic: str, *, agents_publish_layout: bool = False
) -> bool:
    """Whether `role` may publish on `topic` of `cluster`'s bus. In a memcached cluster the
    zone agents own the layout (the discovery version goes up when one replaces a node)."""
    prefix = f"cachefleet/{cluster}/"
    if role is None or not topic.startswith(prefix):
        return False
    rest = topic[len(prefix) :]
    if agents_publish_layout and role == "agent" and rest == "layout":
        return True
    return any(topic_matches(rest, p) for p in BUS_PUBLISH.get(role, ()))


def bus_secrets_path(root: Path) -> Path:
    return root / "bus.secrets"


def ensure_bus_secrets(root: Path) -> dict[str, str]:
    """The bus credentials of a cluster (role -> password), made once (mode 0600, written to
    a temporary file and linked in place, so a reader never sees half of it)."""
    path = bus_secrets_path(root)
    if not path.exists():
        tmp = root / f".bus.secrets.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({role: token_hex(24) for role in BUS_ROLES}, f)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: theirs stands
        finally:
            tmp.unlink()
    data = json.loads(path.read_text())
    return {str(k): str(v) for k, v in data.items()}


def set_bus_role(role: str) -> None:
    """The role this process speaks on the bus as (set once by each daemon at start)."""
    global _bus_role
    if role not in BUS_ROLES:
        raise ValueError(role)
    _bus_role = role


def remember_bus(host: str, port: int, root: Path, *, external: bool = False) -> None:
    """The broker at host:port is the bus of the cluster whose directory is `root`: its
    embedded broker (one credential per role) or an external one (`external`: the login
    and TLS files `up` saved there, shared by every process)."""
    _bus_stores[(host, port)] = root
    if external:
        _bus_external.add((host, port))
    else:
        _bus_external.discard((host, port))
    _bus_contexts.pop((host, port), None)


def bus_login(host: str, port: int) -> tuple[str, str] | None:
    """(user, password) for the broker at host:port (None: a broker we hold no login for)."""
    root = _bus_stores.get((host, port))
    if root is None:
        return None
    if (host, port) in _bus_external:
        return load_bus_login(root).credentials
    try:
        return _bus_role, ensure_bus_secrets(root)[_bus_role]
    except (OSError, ValueError, KeyError):
        return None


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


# -- an external broker (bus.url) ---------------------------------------------------------------

_BUS_USER_RE = re.compile(r"^[\x21-\x7e]{1,64}$")  # printable ASCII, no spaces
BUS_PASSWORD_MAX = 256
BUS_LOGIN_FILE = "bus.login"  # username and password, 0600
BUS_TLS_DIR = "bus-tls"  # copies of bus.tls's files (the key 0600), in a 0700 directory


@dataclass(frozen=True)
class ExternalBus:
    """How the cluster's processes log in to an external broker: paths only (the topology,
    ``plan.json`` and ``status`` never hold a secret)."""

    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None  # set: MQTT over TLS, the broker verified against this CA
    cert_file: str | None = None  # a client certificate, when the broker asks for one
    key_file: str | None = None


def parse_external_bus(bus_s: Section, embedded: bool) -> ExternalBus:
    """``bus.username``, ``bus.password_file`` and ``bus.tls`` (``ca_file``, ``cert_file``,
    ``key_file``): for an external broker only. Relative paths are taken from the topology
    file's directory; the files are read at `up`."""

    def path(sec: Section, key: str) -> str | None:
        value = sec.raw(key, None)
        return None if value is None else file_path(sec, key, value)

    if embedded:
        for key in ("username", "password_file", "tls"):
            if bus_s.has(key):
                raise bus_s.fail(
                    key,
                    "is for an external broker (bus.url: mqtt://host:port); the embedded "
                    "broker gives every role its own credential",
                )
        return ExternalBus()
    username = bus_s.raw("username", None)
    if username is not None and (
        not isinstance(username, str) or not _BUS_USER_RE.fullmatch(username)
    ):
        raise bus_s.fail("username", "must be 1-64 printable characters without spaces")
    password_file = path(bus_s, "password_file")
    if username is not None and password_file is None:
        raise bus_s.fail("password_file", "is required with bus.username")
    if password_file is not None and username is None:
        raise bus_s.fail("username", "is required with bus.password_file")
    ca: str | None = None
    cert: str | None = None
    key_file: str | None = None
    if bus_s.has("tls"):
        from cachefleet.topology import Section as Reader

        tls = Reader(bus_s.source, bus_s.dotted("tls"), bus_s.raw("tls"))
        ca, cert, key_file = path(tls, "ca_file"), path(tls, "cert_file"), path(tls, "key_file")
        if ca is None:
            raise tls.fail("ca_file", "is required: the CA the broker's certificate is signed by")
        if (cert is None) != (key_file is None):
            missing = "key_file" if key_file is None else "cert_file"
            raise tls.fail(missing, "is required: a client certificate comes with its key")
        tls.done()
    return ExternalBus(username, password_file, ca, cert, key_file)


@dataclass(frozen=True)
class BusLogin:
    """An external broker's login, read at `up` (never printed)."""

    username: str | None
    password: str | None
    tls: ExternalBus  # where ca/cert/key are (the state dir's copies once saved)

    def __repr__(self) -> str:  # never print a secret
        return f"BusLogin(username={self.username!r}, tls={self.tls.ca_file is not None})"

    @property
    def credentials(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return self.username, self.password

    def context(self) -> ssl.SSLContext | None:
        """The client TLS context (None: plain MQTT). Host names are verified: the broker's
        certificate must carry the address of bus.url."""
        if self.tls.ca_file is None:
            return None
        ctx = ssl.create_default_context(cafile=self.tls.ca_file)
        if self.tls.cert_file is not None and self.tls.key_file is not None:
            ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return ctx


def read_bus_login(ext: ExternalBus, source: str) -> BusLogin:
    """The login an external broker's section names, read and validated (errors name the
    field)."""
    password = None
    if ext.password_file is not None:
        try:
            text = Path(ext.password_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"{ext.password_file}: {getattr(exc, 'strerror', None) or exc}"
            raise TopologyError(source, "bus.password_file", msg) from None
        password = text.rstrip("\r\n")
        if not 1 <= len(password) <= BUS_PASSWORD_MAX or any(
            not 0x20 <= ord(ch) < 0x7F for ch in password
        ):
            raise TopologyError(
                source,
                "bus.password_file",
                f"the password in {ext.password_file} must be 1-{BUS_PASSWORD_MAX} printable "
                "ASCII characters on one line",
            )
    login = BusLogin(ext.username, password, ext)
    if ext.ca_file is not None:
        try:
            ssl.create_default_context(cafile=ext.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TopologyError(source, "bus.tls.ca_file", f"{ext.ca_file}: {exc}") from None
        try:
            login.context()
        except (OSError, ssl.SSLError) as exc:
            msg = f"{ext.cert_file} / {ext.key_file}: {exc}"
            raise TopologyError(source, "bus.tls.cert_file", msg) from None
    return login


def save_bus_login(root: Path, login: BusLogin) -> None:
    """Keep the login in the cluster's directory: ``bus.login`` (0600) and copies of the TLS
    files in ``bus-tls/`` (0700; the key 0600). Every process reads these, never the
    topology's files again."""
    if login.credentials is not None:
        tmp = root / f".{BUS_LOGIN_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"username": login.username, "password": login.password}, f)
        tmp.replace(root / BUS_LOGIN_FILE)
    ext = login.tls
    if ext.ca_file is None:
        return
    d = root / BUS_TLS_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    copies = [(ext.ca_file, "ca.pem", 0o644)]
    if ext.cert_file is not None and ext.key_file is not None:
        copies += [(ext.cert_file, "client.pem", 0o644), (ext.key_file, "client.key", 0o600)]
    for src, name, mode in copies:
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(Path(src).read_bytes())


def load_bus_login(root: Path) -> BusLogin:
    """The login saved by :func:`save_bus_login` (nothing saved: an anonymous, plain one)."""
    username = password = None
    try:
        data = json.loads((root / BUS_LOGIN_FILE).read_text())
        username, password = str(data["username"]), str(data["password"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    d = root / BUS_TLS_DIR
    ca = d / "ca.pem"
    cert, key = d / "client.pem", d / "client.key"
    ext = ExternalBus(
        ca_file=str(ca) if ca.exists() else None,
        cert_file=str(cert) if cert.exists() else None,
        key_file=str(key) if key.exists() else None,
    )
    return BusLogin(username, password, ext)


def bus_tls_context(host: str, port: int) -> ssl.SSLContext | None:
    """The TLS context for an external broker at host:port (None: plain, or not external)."""
    if (host, port) not in _bus_external:
        return None
    ctx = _bus_contexts.get((host, port))
    if ctx is None:
        ctx = load_bus_login(_bus_stores[(host, port)]).context()
        if ctx is not None:
            _bus_contexts[(host, port)] = ctx
    return ctx
