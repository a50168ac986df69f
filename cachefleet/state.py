"""The state directory: ``<state-dir>/<cluster>/`` holds everything a cluster owns on disk."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cachefleet.buscreds import remember_bus
from cachefleet.credentials import ADMIN_USER, Credentials
from cachefleet.errors import StateError
from cachefleet.layout import Layout
from cachefleet.plan import Plan


def state_home(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """--state-dir, else $CACHEFLEET_HOME, else ~/.cachefleet (always absolute)."""
    raw = state_dir or os.environ.get("CACHEFLEET_HOME") or Path.home() / ".cachefleet"
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class ClusterDir:
    home: Path
    name: str

    @property
    def root(self) -> Path:
        return self.home / self.name

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def layout_path(self) -> Path:
        return self.root / "layout.json"

    @property
    def stopping_path(self) -> Path:
        """Present while `down` (or a failed `up`) stops the cluster: nothing restarts then."""
        return self.root / "stopping"

    @property
    def supervisor_lock(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def supervisor_claim(self) -> Path:
        return self.root / "supervisor.starting"

    def stopping(self) -> bool:
        return self.stopping_path.exists()

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def sentinel_dir(self, sentinel: str) -> Path:
        return self.root / "sentinels" / sentinel

    def pid_file(self, process: str) -> Path:
        return self.pids / f"{process}.pid"

    def log_file(self, process: str) -> Path:
        return self.logs / f"{process}.log"

    def exists(self) -> bool:
        return self.plan_path.exists()

    def make(self) -> None:
        """The cluster's directories, readable by their owner only (0700): they hold the
        engines' data and the control plane's secret."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.root, self.pids, self.logs, self.root / "nodes"):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load_plan(self) -> Plan:
        if not self.plan_path.exists():
            raise StateError(f"no cluster named {self.name!r} under {self.home}")
        plan = Plan.load(self.plan_path)
        # the embedded broker admits the cluster's own processes only; an external one, the
        # login (and TLS) `up` saved here
        remember_bus(
            plan.bus_host, plan.bus_port, self.root, external=not plan.topology.bus.embedded
        )
        return plan

    @property
    def admin_secret_path(self) -> Path:
        return self.root / "admin.secret"

    def ensure_admin(self) -> Credentials:
        """The control plane's engine user, created once per cluster (mode 0600)."""
        if not self.admin_secret_path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.admin_secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        return self.admin()

    def admin(self) -> Credentials:
        """The control plane's engine credentials: every agent, sentinel and operation uses
        them; clients get the `default` user, which cannot run what would break the cluster."""
        try:
            password = self.admin_secret_path.read_text().strip()
        except OSError as exc:
            raise StateError(f"{self.admin_secret_path} is missing: run `cachefleet up`") from exc
        return Credentials(ADMIN_USER, password)

    def save_layout(self, layout: Layout) -> None:
        """The last published layout, for a restart that finds no bus yet (atomic replace)."""
        tmp = self.layout_path.with_name(f".layout.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(layout.to_dict(), indent=1))
        tmp.replace(self.layout_path)

    def load_layout(self) -> Layout | None:
        try:
            return Layout.from_dict(json.loads(self.layout_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def purge(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
