"""What TLS costs: the same one-shard cluster shape (engine redis, Debian's TLS build) with and
without `security.tls`, in one run.

`redis-benchmark -t set,get -n N -c 50` at -P 1 and -P 16, directly to the shard's node and
through the router, `--tls --cacert` on the TLS cluster (connections are opened once per
benchmark client, so this is the steady-state cost of encryption, not of handshakes). Both
clusters run at once and their runs alternate (best of --rounds each). Prints ops/s and the
tls/plain ratio per target; the anchor: the router's relative TLS cost should be no larger
than the engine's own + 10 points. Asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from auth import ROOT, bench, start  # bench/auth.py (bench/ is the script's directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100_000, help="requests at -P 1 (x4 at -P 16)")
    parser.add_argument("--rounds", type=int, default=3, help="alternate runs; the best is kept")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("needs Debian's redis-server (built with TLS): apt-get install redis")
    with tempfile.TemporaryDirectory(prefix="cf-bench-tls-") as tmp:
        work = Path(tmp)
        state = str(work / "state")
        try:
            clusters = {
                False: start(work, "benchplain", False, engine="redis"),
                True: start(work, "benchtls", False, engine="redis", tls=True),
            }
            ca = work / "state" / "benchtls" / "tls" / "ca.pem"
            extra = {False: (), True: ("--tls", "--cacert", str(ca))}
            print("target  -P  test  plain ops/s  tls ops/s  tls/plain")
            ratios: dict[tuple[str, int], list[float]] = {}
            for target in ("direct", "router"):
                for pipeline in (1, 16):
                    n = args.n if pipeline == 1 else args.n * 4
                    best: dict[bool, dict[str, float]] = {False: {}, True: {}}
                    for _ in range(args.rounds):  # alternated: load changes hit both alike
                        for tls in (False, True):
                            host, port = clusters[tls][target]
                            got = bench(port, host, pipeline, n, None, extra[tls])
                            for key, value in got.items():
                                best[tls][key] = max(best[tls].get(key, value), value)
                    for test in ("SET", "GET"):
                        plain, tls_ = best[False][test], best[True][test]
                        ratios.setdefault((target, pipeline), []).append(tls_ / plain)
                        print(
                            f"{target:7} {pipeline:3} {test:4} {plain:12,.0f} {tls_:10,.0f} "
                            f"{tls_ / plain:9.2f}"
                        )
            for pipeline in (1, 16):
                engine = 1 - sum(ratios[("direct", pipeline)]) / 2
                router = 1 - sum(ratios[("router", pipeline)]) / 2
                print(
                    f"-P {pipeline}: TLS costs the engine {engine:.0%} and the router "
                    f"{router:.0%} of their throughput (anchor: router <= engine + 10 points)"
                )
        finally:
            for name in ("benchplain", "benchtls"):
                subprocess.run(
                    [sys.executable, "-m", "cachefleet", "down", name, "--purge",
                     "--state-dir", state],
                    capture_output=True, cwd=ROOT, timeout=120, check=False,
                )  # fmt: skip


if __name__ == "__main__":
    main()
