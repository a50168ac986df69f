"""Each process's log file holds one format: JSON lines, structlog's and stdlib's records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, structlog
from cachefleet.log import configure
log = configure("agent", cluster="c", zone="az-a")
log.info("node_started", node="n1")
logging.getLogger("amqtt.broker").warning("a library speaks")
logging.getLogger("amqtt.broker").info("too chatty: dropped")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom")
"""


def test_structlog_and_stdlib_records_are_one_json_format(tmp_path: Path) -> None:
    path = tmp_path / "agent.az-a.log"
    subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=True,
        env={"CACHEFLEET_LOG_FILE": str(path), "PYTHONPATH": str(ROOT)},
    )
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["node_started", "a library speaks", "boom"]
    assert records[0]["zone"] == "az-a" and records[0]["level"] == "info"
    assert records[1]["logger"] == "amqtt.broker" and records[1]["level"] == "warning"
    assert "ZeroDivisionError" in records[2]["exception"]
    assert all("timestamp" in r for r in records)


def test_the_log_file_rotates(tmp_path: Path) -> None:
    script = (
        "import cachefleet.log as L\n"
        "L.MAX_BYTES = 2000\n"
        "log = L.configure('router')\n"
        "for i in range(200): log.info('tick', i=i)\n"
    )
    path = tmp_path / "router.log"
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        env={"CACHEFLEET_LOG_FILE": str(path), "PYTHONPATH": str(ROOT)},
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["router.log", "router.log.1", "router.log.2", "router.log.3"]
    assert path.stat().st_size <= 2000
