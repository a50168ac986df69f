"""What AUTH costs after the handshake: the same one-shard cluster shape with and without an
AUTH token, in one run.

`redis-benchmark -t set,get -n N -c 50` at -P 1 and -P 16 against the router and against the
shard's node directly, with `-a TOKEN` on the secured cluster. The router logs each client's
backend connections in once (a pool per user), so requests after the handshake should cost
the same. Both clusters run at once and their runs alternate (best of --rounds each), so a
change in the machine's load hits both alike. Prints ops/s, p50 and the auth/open ratio.
Asserts nothing.
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


def bench(
    port: int, host: str, pipeline: int, n: int, password: str | None, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark (or valkey-benchmark) is needed on the PATH")
    auth = ["-a", password] if password else []
    out = subprocess.run(
        [binary, "-h", host, "-p", str(port), "-t", "set,get", "-n", str(n), "-c", "50",
         "-P", str(pipeline), "--csv", "-r", "100000", *auth, *extra],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if out.returncode != 0 or "rps" not in out.stdout:
        raise SystemExit(f"redis-benchmark failed: {(out.stderr + out.stdout)[-500:]}")
    rows = list(csv.reader(io.StringIO(out.stdout[out.stdout.index('"test"') :])))
    return {row[0]: float(row[1]) for row in rows[1:]} | {
        f"{row[0]}_p50": float(row[4]) for row in rows[1:]
    }


def start(
    work: Path, name: str, secured: bool, *, engine: str = "valkey", tls: bool = False
) -> dict[str, tuple[str, int]]:
    """`up` a one-shard cluster; its router and node addresses."""
    topo: dict[str, object] = {
        "name": name,
        "engine": engine,
        "zones": ["az-a"],
        "shards": 1,
        "replicas_per_shard": 0,
        "node_type": "cache.medium",
    }
    security: dict[str, object] = {"tls": True} if tls else {}
    if secured:
        (work / "token").write_text(TOKEN + "\n")
        security["auth_token_file"] = "token"
    if security:
        topo["security"] = security
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    state = work / "state"
    cli("up", str(path), "--detach", "--state-dir", str(state))
    st = json.loads(cli("status", name, "--json", "--state-dir", str(state)))
    node_host, node_port = st["shards"][0]["primary"]["address"].rsplit(":", 1)
    router_host, router_port = st["router"]["address"].rsplit(":", 1)
    return {"router": (router_host, int(router_port)), "direct": (node_host, int(node_port))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000, help="requests at -P 1 (x4 at -P 16)")
    parser.add_argument("--rounds", type=int, default=3, help="alternate runs; the best is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cf-bench-auth-") as tmp:
        work = Path(tmp)
        state = str(work / "state")
        try:
            clusters = {
                False: start(work, "benchopen", False),
                True: start(work, "benchauth", True),
            }
            print("target  -P  test  open ops/s  auth ops/s  auth/open  p50 open/auth ms")
            for target in ("direct", "router"):
                for pipeline in (1, 16):
                    n = args.n if pipeline == 1 else args.n * 4
                    best: dict[bool, dict[str, float]] = {False: {}, True: {}}
                    for _ in range(args.rounds):  # alternated: load changes hit both alike
                        for secured in (False, True):
                            host, port = clusters[secured][target]
                            got = bench(port, host, pipeline, n, TOKEN if secured else None)
                            for key, value in got.items():
                                keep = min if key.endswith("_p50") else max
                                best[secured][key] = keep(best[secured].get(key, value), value)
                    for test in ("SET", "GET"):
                        o, a = best[False], best[True]
                        print(
                            f"{target:7} {pipeline:3} {test:4} {o[test]:11,.0f} {a[test]:11,.0f} "
                            f"{a[test] / o[test]:9.2f}  "
                            f"{o[test + '_p50']:.3f}/{a[test + '_p50']:.3f}"
                        )
        finally:
            for name in ("benchopen", "benchauth"):
                subprocess.run(
                    [sys.executable, "-m", "cachefleet", "down", name, "--purge",
                     "--state-dir", state],
                    capture_output=True, cwd=ROOT, timeout=120, check=False,
                )  # fmt: skip


if __name__ == "__main__":
    main()
