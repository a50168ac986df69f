"""Who may use a cluster's control bus: one credential per role and what each role may
publish (checked by the embedded broker), the login every process of the cluster uses
(per-role secrets, or an external broker's username, password and TLS files, read once
into the state dir with mode 0600)."""

from __future__ import annotations

import json
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING

from cachefleet.errors import TopologyError
from cachefleet.security import file_path

if TYPE_CHECKING:
    from cachefleet.topology import Section

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
