"""Client authentication at the router: who a client is, and how its backend connections log in.

The router holds the same credentials as the engines (the cluster's secrets store, reloaded
when ``cachefleet auth`` rewrites it) and answers ``AUTH``, ``AUTH user pass`` and
``HELLO 3 AUTH user pass`` as the engine does. An authenticated client's commands run on
backend connections logged in as its own user (one pool per user), so the engine's ACLs,
and its ``NOPERM`` replies, apply to it exactly. The control plane's own user is accepted
too (``up`` waits for the router with it). After each reload the worker writes an
acknowledgement (``security/<process>.ack``: the generation it enforces, its pid), which is
how ``cachefleet auth`` knows every router enforces a change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachefleet.credentials import Credentials
from cachefleet.resp import Err, encode_command
from cachefleet.security import Secrets, ack_path, load_secrets, secrets_path
from cachefleet.tls import TlsFiles, certificate_serial

RELOAD_S = 0.2

NOAUTH = Err("NOAUTH Authentication required.")
HELLO_NOAUTH = Err(
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO "
    "<proto> AUTH <user> <pass> option can be used to authenticate the client and select the "
    "RESP protocol version at the same time"
)
WRONGPASS = Err("WRONGPASS invalid username-password pair or user is disabled.")
#: What an unauthenticated client may send (the engine's no-auth commands).
NO_AUTH_COMMANDS = frozenset({b"AUTH", b"HELLO", b"QUIT", b"RESET"})


class Authenticator:
    """The credentials one router worker enforces (keyword-only; `admin` may be None)."""

    def __init__(self, *, root: Path, process: str, admin: Credentials | None) -> None:
        self.root = root
        self.path = secrets_path(root)
        self.ack = ack_path(root, process)
        self.admin = admin
        self.stamp: tuple[int, int] | None = None
        self.secrets = Secrets()
        self.logins: dict[str, bytes | None] = {}
        self.refresh()

    @property
    def required(self) -> bool:
        return self.secrets.requires_auth

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def refresh(self) -> bool:
        """Reload the secrets when their file changed; True when it did."""
        stamp = self._stat()
        if stamp == self.stamp and self.stamp is not None:
            return False
        self.secrets = load_secrets(self.root)
        self.stamp = stamp
        self.logins = {}
        self._acknowledge()
        return True

    def _acknowledge(self) -> None:
        with contextlib.suppress(OSError):
            self.ack.parent.mkdir(mode=0o700, exist_ok=True)
            tmp = self.ack.with_name(f".{self.ack.name}.{os.getpid()}")
            tmp.write_text(f"{self.secrets.generation} {os.getpid()}\n")
            tmp.replace(self.ack)

    async def watch(self, stop: asyncio.Event, log: Any) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RELOAD_S)
            try:
                if self.refresh():
                    log.info("credentials_loaded", generation=self.secrets.generation)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("credentials_unreadable", error=str(exc))

    def check(self, user: str, password: str) -> bool:
        if self.admin is not None and user == self.admin.user:
            return password == self.admin.password
        return self.secrets.check(user, password)

    def login(self, user: str | None) -> bytes | None:
        """The AUTH request a backend connection of `user` starts with (None: no login)."""
        if user is None:
            return None
        cached = self.logins.get(user, b"")
        if cached != b"":
            return cached
        pair: tuple[str, str] | None
        if self.admin is not None and user == self.admin.user:
            pair = (self.admin.user, self.admin.password)
        else:
            pair = self.secrets.login(user)
        value = None if pair is None else encode_command([b"AUTH", *(p.encode() for p in pair)])
        self.logins[user] = value
        return value

    def upkeep_login(self) -> bytes | None:
        """The router's own queries (command table, slot refresh) run as the control plane."""
        return self.login(self.admin.user) if self.admin is not None and self.required else None

    def authenticate(self, args: Sequence[bytes]) -> str | Err:
        """``AUTH [user] password``: the user name on success, the engine's error otherwise."""
        if len(args) not in (2, 3):
            return Err("ERR syntax error")
        user = args[1] if len(args) == 3 else b"default"
        return self.credentials(user, args[-1])

    def credentials(self, user: bytes, password: bytes) -> str | Err:
        try:
            name, secret = user.decode(), password.decode()
        except UnicodeDecodeError:
            return WRONGPASS
        return name if self.check(name, secret) else WRONGPASS


async def watch_certificate(
    ctx: ssl.SSLContext, files: TlsFiles, ack: Path, stop: asyncio.Event, log: Any
) -> None:
    """Serve a renewed certificate (``cachefleet certs rotate``) to new connections: reload
    it when its file changes and acknowledge the serial served (``security/<process>.cert``)."""
    stamp: int | None = None
    while not stop.is_set():
        try:
            mtime = files.cert.stat().st_mtime_ns
            if mtime != stamp:
                ctx.load_cert_chain(str(files.cert), str(files.key))
                serial = certificate_serial(files.cert.read_bytes())
                stamp = mtime
                ack.parent.mkdir(mode=0o700, exist_ok=True)
                tmp = ack.with_name(f".{ack.name}.{os.getpid()}")
                tmp.write_text(f"{serial} {os.getpid()}\n")
                tmp.replace(ack)
                log.info("certificate_loaded", serial=f"{serial:x}")
        except (OSError, ssl.SSLError, ValueError) as exc:  # mid-rotation: the next tick
            log.info("certificate_not_loaded", error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
