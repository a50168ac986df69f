"""The web console in a real browser: headless Chromium (selenium) on a running cluster's page,
at ``/`` of its metrics address and at ``/console/`` of ``cachefleet serve``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import ROOT, RunningCluster, assert_all_gone, start_cluster, wait_for

from cachefleet import ports, snapshots
from cachefleet.ops.metrics_file import metrics_address

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "the console test needs Debian's chromium and chromium-driver (apt-get install "
        "chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (after the skip: only where a browser is)
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    c = start_cluster(tmp_path_factory.mktemp("console"), shards=2, replicas_per_shard=1)
    try:
        yield c
    finally:
        c.down()
        assert_all_gone(c.seen_pids)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or ""
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,1600", f"--user-data-dir={profile}",
    ):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER or ""))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def console_url(cluster: RunningCluster) -> str:
    address = wait_for(lambda: metrics_address(cluster.cdir), WAIT_S, "the metrics address")
    url = f"http://{address}/"
    wait_for(lambda: _get(url + "api/cluster.json").get("collected_at"), WAIT_S, "a first pass")
    return url


def _get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (OSError, ValueError):
        return {}


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _attr(driver: WebDriver, css: str, name: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].get_attribute(name) if found else None


def _layout_primaries(cluster: RunningCluster) -> dict[int, str]:
    layout = cluster.cdir.load_layout()
    assert layout is not None
    return {s.id: s.primary.name for s in layout.shards if s.primary is not None}


def _events(cluster: RunningCluster) -> list[dict[str, Any]]:
    lines = cluster.cdir.events_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_page_shows_every_zone_shard_and_node(
    cluster: RunningCluster, browser: WebDriver, console_url: str
) -> None:
    plan = cluster.plan
    primaries = _layout_primaries(cluster)
    browser.get(console_url)
    wait = WebDriverWait(browser, WAIT_S)
    for spec in plan.nodes:  # every node, by its name, in its zone's column
        card = wait.until(
            lambda d, n=spec.name: d.find_elements(By.CSS_SELECTOR, f'.node[data-node="{n}"]')
        )[0]
        assert spec.name in card.text
        column = card.find_element(By.XPATH, "ancestor::div[@data-zone][1]")
        assert column.get_attribute("data-zone") == spec.zone
        want = "primary" if primaries[spec.shard] == spec.name else "replica"
        wait.until(
            lambda d, n=spec.name, r=want: _attr(d, f'.node[data-node="{n}"]', "data-role") == r
        )
        assert _attr(browser, f'.node[data-node="{spec.name}"]', "data-health") == "ok"
    zones = [z.get_attribute("data-zone") for z in browser.find_elements(By.CSS_SELECTOR, ".zone")]
    assert zones == list(plan.topology.zones)
    for sid, primary in primaries.items():  # every shard, with its primary by name
        assert _attr(browser, f'.shard[data-shard="{sid}"]', "data-primary") == primary
    bar = browser.find_elements(By.CSS_SELECTOR, "#slot-bar rect")
    assert sorted(int(r.get_attribute("data-shard") or 0) for r in bar) == [1, 2]
    assert sum(int(r.get_attribute("width") or 0) for r in bar) == 16384
    # live events: the log's backlog came over the event stream
    wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#events li[data-type="cluster_created"]')
    )
    # the charts drew the collector's samples, one line per node
    wait.until(
        lambda d: (
            len(d.find_elements(By.CSS_SELECTOR, '.chart[data-series="memory"] path'))
            == len(plan.nodes)
        )
    )
    assert browser.find_element(By.CSS_SELECTOR, "#clusters").text.count(cluster.name) == 1


def test_failover_from_the_page_shows_the_new_primary_and_the_event(
    cluster: RunningCluster, browser: WebDriver, console_url: str
) -> None:
    browser.get(console_url)
    wait = WebDriverWait(browser, WAIT_S)
    old = _layout_primaries(cluster)[1]
    new = next(n.name for n in cluster.plan.shard_nodes(1) if n.name != old)
    button = wait.until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '.shard[data-shard="1"] button.failover')
    )[0]
    wait.until(lambda d: button.is_enabled())
    button.click()
    browser.switch_to.alert.accept()  # "Test failover of shard 1?"
    try:
        wait.until(
            lambda d: _attr(d, '.shard[data-shard="1"]', "data-primary") == new,
            message=f"shard 1's primary never became {new} on the page",
        )
        wait.until(lambda d: _attr(d, f'.node[data-node="{new}"]', "data-role") == "primary")
        wait.until(lambda d: _attr(d, f'.node[data-node="{old}"]', "data-role") == "replica")
        item = wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#events li[data-type="graceful_failover"]')
        )[0]
        assert old in item.text and new in item.text
        wait.until(
            lambda d: "failover of shard 1: done" in d.find_element(By.ID, "action-log").text
        )
    except Exception:
        with_alert = ""
        with contextlib.suppress(NoAlertPresentException):
            with_alert = browser.switch_to.alert.text
        print(cluster.diagnosis(), with_alert, browser.find_element(By.ID, "action-log").text)
        raise
    assert _layout_primaries(cluster)[1] == new  # the CLI's operation did it: layout published
    assert any(
        e["type"] == "graceful_failover" and e["new_primary"] == new for e in _events(cluster)
    )


def test_actions_refuse_other_origins_and_hosts(cluster: RunningCluster, console_url: str) -> None:
    epoch = cluster.cdir.load_layout().epoch  # type: ignore[union-attr]
    host = console_url.split("/")[2]
    body = json.dumps({"shard": 2}).encode()
    json_type = {"Content-Type": "application/json"}
    status, data = _post(
        console_url + "api/failover", body, {**json_type, "Origin": "http://evil.example"}
    )
    assert status == 403 and "cross-origin" in data["error"]
    status, data = _post(
        console_url + "api/failover",
        body,
        {**json_type, "Host": "evil.example", "Origin": "http://evil.example"},
    )
    assert status == 403 and "not served" in data["error"]
    status, _ = _post(
        console_url + "api/failover",
        b"shard=2",
        {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://{host}"},
    )
    assert status == 403
    assert cluster.cdir.load_layout().epoch == epoch  # type: ignore[union-attr]  # nothing moved


def test_serve_lists_the_cluster_and_takes_a_snapshot(
    cluster: RunningCluster, browser: WebDriver, console_url: str
) -> None:
    port = ports.allocate_one("127.0.0.1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cachefleet", "serve", "--port", str(port),
         "--state-dir", str(cluster.state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/console/"
        wait_for(lambda: _get(base + "api/clusters.json").get("clusters"), WAIT_S, "serve")
        browser.get(base)
        wait = WebDriverWait(browser, WAIT_S)
        link = wait.until(
            lambda d: d.find_elements(
                By.CSS_SELECTOR, f'#clusters tr[data-cluster="{cluster.name}"] a'
            )
        )[0]
        assert "running" in browser.find_element(By.CSS_SELECTOR, "#clusters tbody").text
        link.click()
        for spec in cluster.plan.nodes:  # asked of the cluster's supervisor through serve
            wait.until(
                lambda d, n=spec.name: _attr(d, f'.node[data-node="{n}"]', "data-health") == "ok"
            )
        wait.until(lambda d: d.find_element(By.ID, "snapshot-button").is_enabled())
        browser.find_element(By.ID, "snapshot-button").click()
        browser.switch_to.alert.accept()
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#events li[data-type="snapshot_completed"]')
        )
        wait.until(lambda d: "snapshot: done" in d.find_element(By.ID, "action-log").text)
        done = [e for e in _events(cluster) if e["type"] == "snapshot_completed"]
        assert done and done[-1]["snapshot_kind"] == "manual"
        assert snapshots.directory(cluster.state_dir, done[-1]["snapshot"]).is_dir()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
