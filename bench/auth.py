"""What AUTH costs after the handshake: the same one-shard cluster shape with and without an
AUTH token, in one run.

`redis-benchmark -t set,get -n N -c 50` at -P 1 and -P 16 against the router and against the
shard's node directly, with `-a TOKEN` on the secured cluster. The router logs each client's
backend connections in once (a pool per user), so requests after the handshake should cost
the same. Prints ops/s, p50 and the secured/open ratio. Asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789abcdef"


def cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cachefleet", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"cachefleet {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def bench(port: int, host: str, pipeline: int, n: int, password: str | None) -> dict[str, float]:
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark (or valkey-benchmark) is needed on the PATH")
    auth = ["-a", password] if password else []
    out = subprocess.run(
        [binary, "-h", host, "-p", str(port), "-t", "set,get", "-n", str(n), "-c", "50",
         "-P", str(pipeline), "--csv", "-r", "100000", *auth],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if out.returncode != 0 or "rps" not in out.stdout:
        raise SystemExit(f"redis-benchmark failed: {(out.stderr + out.stdout)[-500:]}")
    rows = list(csv.reader(io.StringIO(out.stdout[out.stdout.index('"test"') :])))
    return {row[0]: float(row[1]) for row in rows[1:]} | {
        f"{row[0]}_p50": float(row[4]) for row in rows[1:]
    }


def measure(
    work: Path, name: str, secured: bool, n: int
) -> dict[tuple[str, int], dict[str, float]]:
    topo: dict[str, object] = {
        "name": name,
        "zones": ["az-a"],
        "shards": 1,
        "replicas_per_shard": 0,
        "node_type": "cache.medium",
    }
    if secured:
        (work / "token").write_text(TOKEN + "\n")
        topo["security"] = {"auth_token_file": "token"}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    state = work / "state"
    cli("up", str(path), "--detach", "--state-dir", str(state))
    try:
        st = json.loads(cli("status", name, "--json", "--state-dir", str(state)))
        node = st["shards"][0]["primary"]["address"]
        node_host, node_port = node.rsplit(":", 1)
        router_host, router_port = st["router"]["address"].rsplit(":", 1)
        password = TOKEN if secured else None
        out = {}
        for pipeline in (1, 16):
            k = n if pipeline == 1 else n * 4
            out[("router", pipeline)] = bench(int(router_port), router_host, pipeline, k, password)
            out[("direct", pipeline)] = bench(int(node_port), node_host, pipeline, k, password)
        return out
    finally:
        cli("down", name, "--purge", "--state-dir", str(state))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000, help="requests at -P 1 (x4 at -P 16)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-bench-auth-") as tmp:
        work = Path(tmp)
        open_ = measure(work, "benchopen", False, args.n)
        auth = measure(work, "benchauth", True, args.n)
    print("target  -P  test  open ops/s  auth ops/s  auth/open  p50 open/auth ms")
    for (target, pipeline), figures in open_.items():
        other = auth[(target, pipeline)]
        for test in ("SET", "GET"):
            print(
                f"{target:7} {pipeline:3} {test:4} {figures[test]:11,.0f} {other[test]:11,.0f} "
                f"{other[test] / figures[test]:9.2f}  "
                f"{figures[test + '_p50']:.3f}/{other[test + '_p50']:.3f}"
            )


if __name__ == "__main__":
    main()
