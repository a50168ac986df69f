"""Free-port allocation that parallel `up`s (and parallel tests) do not race on.

A port is taken when a bind to it succeeds *and* no other allocation on this machine reserved
it in the last RESERVE_S seconds (two minutes; a small flock-protected ledger in the temp
dir), so two clusters that are created at the same moment never get the same port before
either has bound it.
Ports are drawn below the kernel's ephemeral range so outgoing connections cannot steal them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOW, HIGH = 20000, 32000
RESERVE_S = 120.0
_LEDGER = Path(tempfile.gettempdir()) / "cachefleet-ports.json"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _ledger() -> Iterator[dict[str, float]]:
    fd = os.open(_LEDGER, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 1 << 20)
        try:
            data: dict[str, float] = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        now = time.time()
        data = {k: v for k, v in data.items() if v > now}
        yield data
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)


def allocate(hosts: list[str], *, pairs: bool = False) -> list[tuple[int, int]]:
    """One free port per host (and, with pairs, a second free one for the cluster bus)."""
    out: list[tuple[int, int]] = []
    rng = random.Random()
    with _ledger() as reserved:
        expiry = time.time() + RESERVE_S
        for host in hosts:
            got: list[int] = []
            for _ in range(5000):
                port = rng.randrange(LOW, HIGH)
                if str(port) in reserved or port in got or not port_free(host, port):
                    continue
                got.append(port)
                reserved[str(port)] = expiry
                if len(got) == (2 if pairs else 1):
                    break
            else:
                raise OSError(f"no free port found on {host} in {LOW}..{HIGH}")
            out.append((got[0], got[1] if pairs else 0))
    return out


def allocate_one(host: str = "127.0.0.1") -> int:
    return allocate([host])[0][0]
