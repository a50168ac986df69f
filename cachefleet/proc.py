"""Process bookkeeping: spawn detached children with pid files; find and stop them again.

A pid file alone is not trusted: a pid is only ours while its command line still names the
cluster's state directory, so a recycled pid is never signalled. Liveness and command lines
come from psutil, so the same code runs on Linux and macOS.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil

from cachefleet.state import ClusterDir

# Where a spawned process writes its own (rotated) log; read by cachefleet.log.configure.
LOG_FILE_ENV = "CACHEFLEET_LOG_FILE"


def python_module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def spawn(cdir: ClusterDir, process: str, argv: Sequence[str], *, record_pid: bool = True) -> int:
    """Start `argv` in its own session; it logs to logs/<process>.log itself (rotated, see
    cachefleet.log), its raw output goes to logs/<process>.out, its pid to pids/<process>.pid
    (unless the process records its own pid, as the supervisor does once it holds its lock)."""
    cdir.make()
    log = open(cdir.logs / f"{process}.out", "ab")  # noqa: SIM115 - handed to the child
    try:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=cdir.root,
            env={**os.environ, LOG_FILE_ENV: str(cdir.log_file(process))},
        )
    finally:
        log.close()
    _SPAWNED.add(child.pid)
    if record_pid:
        write_pid(cdir.pid_file(process), child.pid)
    return child.pid


SUPERVISOR_START_S = 5.0  # how long a claim to start the supervisor holds off others


def ensure_supervisor(cdir: ClusterDir) -> int | None:
    """Start the cluster's supervisor unless one holds its lock or another process is
    already starting one (a claim file, removed by the supervisor once it holds its lock);
    the new pid, or None. `up` calls it, and every zone agent when the supervisor died."""
    if ProcessLock(cdir.supervisor_lock).held_elsewhere():
        return None
    claim = cdir.supervisor_claim
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - claim.stat().st_mtime > SUPERVISOR_START_S:
                claim.unlink()  # a starter that died: the next round may claim
        return None
    argv = python_module_cmd(
        "cachefleet.ops.supervisor", "--cluster", cdir.name, "--state-dir", str(cdir.home)
    )
    return spawn(cdir, "supervisor", argv, record_pid=False)


class ProcessLock:
    """An exclusive advisory lock on a file, held for the life of a process: at most one
    holder per cluster (the kernel drops it when the holder dies, even by SIGKILL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def held_elsewhere(self) -> bool:
        """True while another process holds the lock (probed without keeping it)."""
        if not self.acquire():
            return True
        self.release()
        return False


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _argv(pid: int) -> list[str] | None:
    """The command line of a running process (None when gone, a zombie, or not ours to see)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return proc.cmdline()
    except (psutil.Error, OSError):
        return None


def running(pid: int) -> bool:
    """True while `pid` is a running process (zombies count as gone)."""
    return _argv(pid) is not None


def process_rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


def process_state(pid: int) -> str | None:
    """psutil's status of a process: "running", "sleeping", "stopped" (SIGSTOP), ..."""
    try:
        return str(psutil.Process(pid).status())
    except (psutil.Error, OSError):
        return None


async def until_state(pids: Iterable[int], stopped: bool, timeout: float = 1.0) -> None:
    """Wait (bounded) until every pid is gone, or with `stopped`, gone or stopped by SIGSTOP:
    a fault counts from the moment it has taken effect."""
    deadline = time.monotonic() + timeout
    done = {None, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
    if stopped:
        done |= {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP}
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if process_state(p) not in done]
        if pending:
            await asyncio.sleep(0.001)


def alive_and_ours(pid: int, marker: str) -> bool:
    """True while `pid` runs (not a zombie) and its argv names `marker`: an engine's config
    file under that path, or a cachefleet process's ``--state-dir D --cluster NAME`` with
    ``D/NAME == marker``."""
    argv = _argv(pid)
    return argv is not None and _names(argv, marker)


def _names(argv: list[str], marker: str) -> bool:
    if any(arg == marker or arg.startswith(marker + "/") for arg in argv):
        return True
    opts = dict(itertools.pairwise(argv))
    home, name = opts.get("--state-dir"), opts.get("--cluster")
    return home is not None and name is not None and str(Path(home) / name) == marker


def live_processes(cdir: ClusterDir) -> dict[str, int]:
    """Every process of the cluster still running, by its pid-file name."""
    marker = str(cdir.root)
    out: dict[str, int] = {}
    if not cdir.pids.is_dir():
        return out
    for pid_file in sorted(cdir.pids.glob("*.pid")):
        pid = read_pid(pid_file)
        if pid is not None and alive_and_ours(pid, marker):
            out[pid_file.stem] = pid
    return out


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


#: Children started by spawn() in this process, until collected.
_SPAWNED: set[int] = set()


def reap_children() -> None:
    """Collect the exited children this process started with spawn(), so they do not linger
    as zombies. Only those: waiting on any child would also take the exit status of children
    that someone else waits for (an asyncio subprocess, a Popen)."""
    for pid in list(_SPAWNED):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # collected elsewhere (Popen's own cleanup)
            done = pid
        if done:
            _SPAWNED.discard(pid)


def wait_gone(pids: dict[str, int], marker: str, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    left = dict(pids)
    while left and time.monotonic() < deadline:
        reap_children()
        left = {k: p for k, p in left.items() if alive_and_ours(p, marker)}
        if left:
            time.sleep(0.05)
    return left


def stop_processes(cdir: ClusterDir, order: Sequence[Sequence[str]], timeout: float = 10.0) -> None:
    """Stop the cluster's processes group by group (prefix match), SIGTERM then SIGKILL."""
    marker = str(cdir.root)
    live = live_processes(cdir)
    for prefixes in order:
        group = {k: p for k, p in live.items() if any(k.startswith(x) for x in prefixes)}
        signal_pids(group.values(), signal.SIGTERM)
        signal_pids(group.values(), signal.SIGCONT)  # a paused process must see the SIGTERM
        left = wait_gone(group, marker, timeout)
        signal_pids(left.values(), signal.SIGKILL)
        wait_gone(left, marker, 2.0)
    rest = live_processes(cdir)
    signal_pids(rest.values(), signal.SIGKILL)
    wait_gone(rest, marker, 2.0)
    for pid_file in cdir.pids.glob("*.pid") if cdir.pids.is_dir() else []:
        pid = read_pid(pid_file)
        if pid is None or not alive_and_ours(pid, marker):
            pid_file.unlink(missing_ok=True)
