"""Where a cluster's metrics endpoint listens: ``<cluster>/metrics.json``, written by the
supervisor once it has chosen the port, read by ``status`` (apart from the metrics server so
that reading it loads no HTTP or Prometheus code)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cachefleet.state import ClusterDir


def address_path(cdir: ClusterDir) -> Path:
    return cdir.root / "metrics.json"


def metrics_address(cdir: ClusterDir) -> str | None:
    """``host:port`` of the cluster's metrics endpoint, once its supervisor has chosen it."""
    try:
        data = json.loads(address_path(cdir).read_text())
        return f"{data['host']}:{int(data['port'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_address(cdir: ClusterDir, host: str, port: int) -> None:
    path = address_path(cdir)
    tmp = path.with_name(f".metrics.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"host": host, "port": port}))
    tmp.replace(path)
