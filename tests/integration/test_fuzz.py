"""A short fuzz campaign (`make fuzz` runs the long one): hostile RESP and bus messages,
and a well-behaved client beside them that must notice nothing."""

from __future__ import annotations

import json

import pytest

from fuzz import run

pytestmark = pytest.mark.integration


def test_short_fuzz_campaign_breaks_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code = run.main(["--inputs", "20000", "--seconds", "90", "--quiet", "--json", "--seed", "7"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["inputs"] >= 20000 or summary["seconds"] >= 90
    assert summary["crashes"] == 0, summary["died"]
    assert summary["good_client_errors"] == 0, summary["first_errors"]
    assert summary["good_client_mismatches"] == 0, summary["first_errors"]
    assert summary["good_client_ops"] > 0
    assert summary["router_max_rss_mb"] <= 300
    assert code == 0
