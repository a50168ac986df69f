"""Bad topology files: non-zero exit, one line naming file and field, nothing started."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from helpers import cli

HERE = Path(__file__).resolve().parent.parent / "topologies"

CASES = [
    ("bad-unknown-field.yaml", "field `replica_per_shard`: unknown field"),
    ("bad-quorum.yaml", "field `sentinels.quorum`: 4 is greater than sentinels.count (3)"),
    ("bad-empty-zones.yaml", "field `zones`: zone list is empty"),
    ("bad-shards-type.yaml", "field `shards`: must be an integer, got string 'three'"),
    ("bad-ports.yaml", "field `ports.base`: more shards than ports available"),
    ("bad-yaml.yaml", "invalid YAML at line"),
    ("does-not-exist.yaml", "file not found"),
]


@pytest.mark.parametrize(("filename", "expected"), CASES)
def test_bad_topology_is_rejected_before_anything_starts(
    tmp_path: Path, filename: str, expected: str
) -> None:
    path = HERE / filename
    state = tmp_path / "state"
    proc = cli("up", str(path), "--detach", "--state-dir", str(state), check=False, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"cachefleet: error: {path}: ")
    assert expected in lines[0]
    assert not state.exists(), "nothing may be created for a bad topology"


def test_validate_accepts_the_shipped_topologies() -> None:
    for path in sorted((HERE.parent.parent / "topologies").glob("*.yaml")):
        proc = cli("validate", str(path), check=False)
        assert proc.returncode == 0, proc.stderr
        assert ": ok: cluster " in proc.stdout


def test_unknown_cluster_is_a_clear_error(tmp_path: Path) -> None:
    proc = cli("status", "nosuch", "--state-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"cachefleet: error: no cluster named 'nosuch' under {tmp_path}"


def test_a_fixed_port_held_by_another_process_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """Another cluster (or anything) listening on a planned port: `up` refuses with the port
    and starts nothing, rather than starting sentinels that would judge someone else's node."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        topo = tmp_path / "t.yaml"
        topo.write_text(
            yaml.safe_dump(
                {"name": "taken", "engine": "valkey", "zones": ["az-a"], "shards": 1,
                 "replicas_per_shard": 0, "ports": {"base": "auto"}, "router": {"port": port}}
            )
        )  # fmt: skip
        state = tmp_path / "state"
        proc = cli("up", str(topo), "--detach", "--state-dir", str(state), check=False)
    assert proc.returncode == 1
    assert f"port 127.0.0.1:{port} for the router is already in use" in proc.stderr
    assert not (state / "taken").exists()
