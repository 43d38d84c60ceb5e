"""The Grafana dashboards are code: the committed JSON is what dashboards/build.py generates, and
every panel's PromQL parses in Prometheus's own parser (promtool). That the queries return
series during a fault scenario is checked against a live Prometheus in test_e2e_alerting.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dashboards"))
import build  # noqa: E402  (dashboards/build.py)


def promql(expr: str) -> str:
    """A panel query with Grafana's variables filled in, as Prometheus would receive it."""
    return expr.replace("$__rate_interval", "1m").replace('=~"$pod"', '=~".*"')


def test_committed_json_is_regenerated_exactly():
    res = subprocess.run([sys.executable, str(REPO / "dashboards" / "build.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_dashboards_have_the_promised_panels():
    titles = {json.loads((REPO / "dashboards" / f"{uid}.json").read_text())["title"]: [
        p["title"] for p in json.loads((REPO / "dashboards" / f"{uid}.json").read_text())["panels"]]
        for uid, _ in build.TITLES.values()}
    fleet, rank = titles["Sentinel: fleet overview"], titles["Sentinel: pod / rank drill-down"]
    for needle in ("faults by signature", "hangs", "headroom by pod", "violations by check", "xid"):
        assert any(needle.lower() in t.lower() for t in fleet), needle
    for needle in ("heartbeat", "collective sequence", "headroom", "last faults"):
        assert any(needle in t.lower() for t in rank), needle


@pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"), reason="promtool not installed")
def test_every_panel_query_parses(tmp_path):
    rules = ["groups:", "  - name: panels", "    rules:"]
    for i, (_dash, _title, _kind, queries) in enumerate(build.PANELS):
        for j, (expr, _legend) in enumerate(queries):
            rules += [f"      - record: panel_{i}_{j}", f"        expr: {json.dumps(promql(expr))}"]
    path = tmp_path / "panels.rules.yml"
    path.write_text("\n".join(rules) + "\n")
    res = subprocess.run([shutil.which("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
