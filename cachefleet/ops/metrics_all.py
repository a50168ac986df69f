"""``/metrics`` of ``cachefleet serve``: every running cluster's series in one exposition.

Each cluster's supervisor already serves its own (:mod:`cachefleet.ops.metrics_server`, at the
address in ``<cluster>/metrics.json``); this endpoint asks them all at once and merges their
families (every series carries its ``cluster`` label, so they never collide). A cluster whose
endpoint does not answer within ``FETCH_TIMEOUT_S`` is left out, and
``cachefleet_cluster_scrape_up{cluster}`` says so. Values are as fresh as the supervisors'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from cachefleet.ops.metrics_file import metrics_address
from cachefleet.state import ClusterDir

FETCH_TIMEOUT_S = 2.0
SCRAPE_UP = "cachefleet_cluster_scrape_up"


def cluster_endpoints(home: Path) -> dict[str, str]:
    """Cluster name -> its metrics address, for every cluster whose supervisor chose one."""
    out: dict[str, str] = {}
    if not home.is_dir():
        return out
    for d in sorted(home.iterdir()):
        if d.is_dir() and (d / "metrics.json").exists():
            address = metrics_address(ClusterDir(home, d.name))
            if address is not None:
                out[d.name] = address
    return out


def merge(texts: Iterable[str]) -> list[Metric]:
    """The families of several expositions, one family per name, samples in order (a text
    that does not parse is left out whole)."""
    families: dict[str, Metric] = {}
    for text in texts:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for fam in parsed:
            known = families.get(fam.name)
            if known is None:
                families[fam.name] = fam
            else:
                known.samples.extend(fam.samples)
    return list(families.values())


class _Merged(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def render(metrics: list[Metric]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(metrics))
    return generate_latest(registry)


async def _fetch(session: aiohttp.ClientSession, address: str) -> str | None:
    try:
        async with session.get(f"http://{address}/metrics") as resp:
            if resp.status != 200:
                return None
            return await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


async def all_clusters(home: Path) -> bytes:
    endpoints = cluster_endpoints(home)
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        texts = await asyncio.gather(*(_fetch(session, a) for a in endpoints.values()))
    up = Metric(SCRAPE_UP, "1 when the cluster's own metrics endpoint answered", "gauge")
    for name, text in zip(endpoints, texts, strict=True):
        up.add_sample(SCRAPE_UP, {"cluster": name}, 0.0 if text is None else 1.0)
    return render([*merge(t for t in texts if t is not None), up])


def mount(app: web.Application, home: Path) -> None:
    """``GET /metrics`` on `app`: every cluster under `home`."""

    async def handle(request: web.Request) -> web.Response:
        body = await all_clusters(home)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", handle)
