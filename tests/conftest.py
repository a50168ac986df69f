"""Fixtures: real clusters started through the real CLI in temp state dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import RunningCluster, assert_all_gone, cli, start_cluster
from hypothesis import settings

# Property tests check behaviour, not speed: on a loaded 2-core machine a per-example
# deadline only makes them flaky.
settings.register_profile("cachefleet", deadline=None)
settings.load_profile("cachefleet")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is not None and report.failed


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    started: list[RunningCluster] = []

    def make(**overrides: Any) -> RunningCluster:
        c = start_cluster(tmp_path, **overrides)
        started.append(c)
        return c

    yield make
    for c in started:
        if failed(request):
            print(c.diagnosis())
        c.remember_pids()
        if c.cdir.root.exists():
            cli("down", c.name, "--purge", "--state-dir", str(c.state_dir), check=False)
        assert_all_gone(c.seen_pids)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    """One default-shaped cluster (3 zones x 3 shards x 1 replica) for read-mostly tests."""
    c = start_cluster(tmp_path_factory.mktemp("shared"))
    yield c
    c.down()
    assert_all_gone(c.seen_pids)
