"""The web console in a real browser: headless Chromium (selenium) on a running cluster's page,
at ``/`` of its metrics address and at ``/console/`` of ``cachefleet serve``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from helpers import ROOT, RunningCluster, assert_all_gone, cli, start_cluster, wait_for

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
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    StaleElementReferenceException,
)
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
    """An attribute of the first match; None while there is none, or while the page is
    replacing it (it redraws its cards on every poll)."""
    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].get_attribute(name) if found else None
    except StaleElementReferenceException:
        return None


def _wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException])


def _click(driver: WebDriver, css: str) -> None:
    """Click the first match once it is enabled (again if the page replaced it meanwhile)."""

    def attempt(d: WebDriver) -> bool:
        found = d.find_elements(By.CSS_SELECTOR, css)
        if not found or not found[0].is_enabled():
            return False
        found[0].click()
        return True

    _wait(driver).until(attempt, message=f"{css} never became clickable")


def _layout_primaries(cluster: RunningCluster) -> dict[int, str]:
    layout = cluster.cdir.load_layout()
    assert layout is not None
    return {s.id: s.primary.name for s in layout.shards if s.primary is not None}


def _events(cluster: RunningCluster) -> list[dict[str, Any]]:
    lines = cluster.cdir.events_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


#: What the page shows, read in one go (the page redraws its cards on every poll).
PAGE_STATE_JS = """
const q = (sel, root) => Array.from((root || document).querySelectorAll(sel));
return {
  zones: q('.zone').map((z) => ({
    zone: z.dataset.zone,
    nodes: q('.node', z).map((n) => ({name: n.dataset.node, role: n.dataset.role,
      health: n.dataset.health, text: n.innerText})),
  })),
  shards: q('.shard').map((s) => ({id: s.dataset.shard, primary: s.dataset.primary})),
  slots: q('#slot-bar rect').map((r) => [r.getAttribute('data-shard'), r.getAttribute('width')]),
  events: q('#events li').map((li) => li.dataset.type),
  lines: q('.chart[data-series="memory"] path').length,
  clusters: document.getElementById('clusters').innerText,
  cost: document.getElementById('cluster-cost').innerText,
};
"""


def _page_state(driver: WebDriver) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(PAGE_STATE_JS)
    return state


def test_page_shows_every_zone_shard_and_node(
    cluster: RunningCluster, browser: WebDriver, console_url: str
) -> None:
    plan = cluster.plan
    browser.get(console_url)
    primaries: dict[int, str] = {}

    def complete(d: WebDriver) -> dict[str, Any] | None:
        """Every node shown, healthy, and the primaries the layout names now (a loaded
        machine may see the sentinels move one: the page follows within a poll)."""
        state = _page_state(d)
        shown = {n["name"]: n for z in state["zones"] for n in z["nodes"]}
        primaries.clear()
        primaries.update(_layout_primaries(cluster))
        ready = (
            len(shown) == len(plan.nodes)
            and all(n["health"] == "ok" for n in shown.values())
            and {int(s["id"]): s["primary"] for s in state["shards"]} == primaries
            and all(
                (n["role"] == "primary") == (primaries[plan.node(name).shard] == name)
                for name, n in shown.items()
            )
            and "cluster_created" in state["events"]
            and state["lines"] == len(plan.nodes)
        )
        return state if ready else None

    state = _wait(browser).until(complete, message="the page never showed every node")
    assert [z["zone"] for z in state["zones"]] == list(plan.topology.zones)
    for zone in state["zones"]:  # every node, by its name, in its zone's column
        for node in zone["nodes"]:
            spec = plan.node(node["name"])
            assert spec.zone == zone["zone"] and spec.name in node["text"]
            assert node["role"] in ("primary", "replica")
    # every shard, with its primary by name
    assert {int(s["id"]) for s in state["shards"]} == {1, 2}
    assert sorted(int(shard) for shard, _ in state["slots"]) == [1, 2]
    assert sum(int(width) for _, width in state["slots"]) == 16384
    assert state["clusters"].count(cluster.name) == 1
    assert re.fullmatch(r"\$\d+\.\d\d this month", state["cost"]), state["cost"]


def test_failover_from_the_page_shows_the_new_primary_and_the_event(
    cluster: RunningCluster, browser: WebDriver, console_url: str
) -> None:
    browser.get(console_url)
    wait = _wait(browser)
    old = _layout_primaries(cluster)[1]
    new = next(n.name for n in cluster.plan.shard_nodes(1) if n.name != old)
    _click(browser, '.shard[data-shard="1"] button.failover')
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
    # the CLI's operation did it: its event, and the layout it published (sentinels on a
    # loaded machine may have moved the shard again since: the epoch only grows)
    done = [e for e in _events(cluster) if e["type"] == "graceful_failover"]
    assert done and done[-1]["new_primary"] == new and done[-1]["shard"] == 1
    assert cluster.cdir.load_layout().epoch >= done[-1]["config_epoch"]  # type: ignore[union-attr]


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
        wait = _wait(browser)
        row = f'#clusters tr[data-cluster="{cluster.name}"]'
        wait.until(lambda d: "running" in (_attr(d, row, "innerText") or ""))
        _click(browser, f"{row} a")
        for spec in cluster.plan.nodes:  # asked of the cluster's supervisor through serve
            wait.until(
                lambda d, n=spec.name: _attr(d, f'.node[data-node="{n}"]', "data-health") == "ok"
            )
        _click(browser, "#snapshot-button")
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


def test_memcached_cluster_shows_its_nodes_and_no_slot_map(
    cluster: RunningCluster, browser: WebDriver
) -> None:
    name = f"mc{uuid.uuid4().hex[:6]}"
    topo = {
        "name": name,
        "engine": "memcached",
        "zones": ["az-a", "az-b"],
        "nodes": 2,
        "node_type": "cache.micro",
        "ports": {"base": "auto"},
        "router": {"port": "auto", "workers": 1},
    }
    path = cluster.state_dir.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topo))
    out = cli("up", str(path), "--detach", "--state-dir", str(cluster.state_dir))
    mc = RunningCluster(name, cluster.state_dir, path, out.stdout)
    mc.remember_pids()
    try:
        address = wait_for(lambda: metrics_address(mc.cdir), WAIT_S, "the metrics address")
        browser.get(f"http://{address}/")

        def shown(d: WebDriver) -> dict[str, Any] | None:
            state = _page_state(d)
            nodes = [n for z in state["zones"] for n in z["nodes"]]
            healthy = len(nodes) == 2 and all(n["health"] == "ok" for n in nodes)
            listed = cluster.name in state["clusters"] and name in state["clusters"]
            return state if healthy and listed else None

        state = _wait(browser).until(shown, message="the memcached cluster's nodes")
        assert {n["role"] for z in state["zones"] for n in z["nodes"]} == {"node"}
        assert state["shards"] == [] and state["slots"] == []
        assert "Not shown" in browser.find_element(By.ID, "slot-note").text
        assert not browser.find_elements(By.CSS_SELECTOR, "button.failover")
        assert not browser.find_element(By.ID, "snapshot-button").is_enabled()
    finally:
        mc.down()
        assert_all_gone(mc.seen_pids)
