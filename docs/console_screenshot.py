"""Takes docs/console.png: the web console of a running cluster, in headless Chromium.

Starts a cluster of `--shards` x 2 nodes over three zones in a temporary state dir, writes
through its router for `--seconds` at a rate that rises and falls (so the charts have a
shape), fails one shard over half-way (so the page shows a moved primary and its events),
then saves a screenshot of the page at ``/`` of the cluster's metrics address and stops the
cluster. Needs Debian's chromium and chromium-driver.

    .venv/bin/python docs/console_screenshot.py [--seconds 240] [--out docs/console.png]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from cachefleet.ops.metrics_file import metrics_address
from cachefleet.state import ClusterDir

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> str:
    cmd = [sys.executable, "-m", "cachefleet", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def write_load(host: str, port: int, seconds: float, failover: Callable[[], None]) -> None:
    """Writes 1 KiB values through the router, a rate that swings between about 100 and
    1000 writes/s with a period of 2 minutes; calls `failover` once, half-way."""
    client = redis.Redis(host=host, port=port, socket_timeout=5)
    value = b"x" * 1024
    start = time.monotonic()
    n = 0
    failed_over = False
    while (elapsed := time.monotonic() - start) < seconds:
        rate = 550 + 450 * math.sin(2 * math.pi * elapsed / 120)
        pipe = client.pipeline(transaction=False)
        for _ in range(max(1, int(rate / 10))):
            pipe.set(f"key:{n % 200_000}", value)
            n += 1
        with contextlib.suppress(redis.RedisError):  # a few may fail while a primary moves
            pipe.execute()
        if not failed_over and elapsed > seconds / 2:
            failed_over = True
            failover()
        time.sleep(0.1)
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "console.png"))
    args = ap.parse_args()
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        sys.exit("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    name = "orders"
    tmp = Path(tempfile.mkdtemp(prefix="console-shot-"))
    state = tmp / "state"
    topo = {
        "name": name,
        "engine": "valkey",
        "zones": ["az-a", "az-b", "az-c"],
        "shards": args.shards,
        "replicas_per_shard": 1,
        "node_type": "cache.small",
        "ports": {"base": "auto"},
        "router": {"port": "auto"},
        "bus": {"url": "embedded"},
    }
    (tmp / "orders.yaml").write_text(yaml.safe_dump(topo))
    cli("up", str(tmp / "orders.yaml"), "--detach", "--state-dir", str(state))
    cdir = ClusterDir(state, name)
    try:
        plan = cdir.load_plan()
        print(f"cluster {name} up; writing for {args.seconds:.0f}s", flush=True)
        write_load(
            plan.router_host,
            plan.router_port,
            args.seconds,
            lambda: print(cli("failover", name, "--shard", "2", "--state-dir", str(state))),
        )
        address = metrics_address(cdir)
        assert address is not None, "the supervisor wrote no metrics address"
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1500",
            "--hide-scrollbars",
            f"--user-data-dir={tmp / 'chromium'}",
        ):
            opts.add_argument(arg)
        driver = webdriver.Chrome(options=opts, service=Service(driver_path))
        try:
            driver.get(f"http://{address}/")
            time.sleep(6)  # a poll of every JSON, the event backlog, the charts
            for _ in range(3):  # the window's height, browser frame included, fits the page
                page, inner, outer = driver.execute_script(
                    "return [document.documentElement.scrollHeight, window.innerHeight,"
                    " window.outerHeight]"
                )
                if page <= inner:
                    break
                driver.set_window_size(1400, int(page) + int(outer) - int(inner) + 8)
                time.sleep(1)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
        print(f"saved {args.out}")
    finally:
        cli("down", name, "--purge", "--state-dir", str(state))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
