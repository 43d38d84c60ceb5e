"""A collective hang of a job spanning two nodes, named by the shipped alert from both sidecars'
figures: two daemons with separate directories stand for two nodes (ranks 0-2 under one, rank 3
under the other), one job of 4 real gloo ranks, a real Prometheus scraping both with the shipped
rules (their windows and `for:` shortened in a temp copy, as in test_e2e_alerting). Rank 3 stops
before collective #6: no sidecar can name it (the first has no ring for it, the second sees nothing
outstanding), SentinelCollectiveHangAcrossNodes does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("CI"),
                                reason="prometheus not installed (make tools)")
GUARD_S = 240  # bounds a hang of the test, never the pace it asserts


def _rules(tmp: Path) -> list[Path]:
    text = (REPO / "deploy" / "prometheus" / "sentinel-alerts.rules.yml").read_text()
    text = text.replace("[1m]", "[6s]").replace("interval: 10s", "interval: 1s")
    text = re.sub(r"for: \d+[ms]", "for: 1s", text)
    alerts = tmp / "alerts.rules.yml"
    alerts.write_text(text)
    skew = tmp / "skew.rules.yml"
    skew.write_text((REPO / "deploy" / "prometheus" / "collective-skew.rules.yml").read_text()
                    .replace("  - name: sentinel-collectives\n", "  - name: sentinel-collectives\n    interval: 1s\n"))
    return [alerts, skew]


def test_the_alert_names_the_culprit_of_a_hang_across_two_sidecars(h, tmp_path: Path) -> None:
    assert PROMETHEUS, "CI must install prometheus (make tools)"
    nodes = {"a": str(tmp_path / "node-a"), "b": str(tmp_path / "node-b")}
    daemons = {n: h.daemon(base_dir=d, args=("--no-nvml", "--kmsg", "off", "--hang-floor", "2")) for n, d in nodes.items()}
    port = h.free_port()
    ranks = []
    for rank in range(4):
        env = h.env(RANK=str(rank), WORLD_SIZE="4", SENTINEL_JOB="xnode", OMP_NUM_THREADS="1", GLOO_TIMEOUT_S="3600")
        ranks.append(h.spawn([h.sentinel, "run", "--dir", nodes["b" if rank == 3 else "a"], "--", h.python,
                              str(h.helpers / "gloo_ranks.py"), str(port), "40", "6", "3", "sleep"], env=env,
                             start_new_session=True))
    prom_port = h.free_port()
    targets = "\n".join(f"      - targets: ['127.0.0.1:{d.port}']\n        labels: {{node: {n}}}" for n, d in daemons.items())
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{', '.join(str(p) for p in _rules(tmp_path))}]
scrape_configs:
  - job_name: sentinel
    honor_labels: true
    static_configs:
{targets}
""")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "w"))

    def alerts(name: str) -> list[dict]:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + urllib.parse.quote(
            f'ALERTS{{alertname="{name}",alertstate="firing"}}')
        data = json.loads(h.fetch(url))
        return [r["metric"] for r in data["data"]["result"]]

    try:
        firing = h.wait_for(lambda: alerts("SentinelCollectiveHangAcrossNodes"), timeout=GUARD_S, interval=0.5,
                            what="the across-nodes hang alert")
        assert [(a["job_id"], a["rank"], a["node"]) for a in firing] == [("xnode", "3", "b")]
        # Neither sidecar pages a culprit of its own: the first has no ring for rank 3 ("missing"),
        # the second sees no collective outstanding.
        assert alerts("SentinelCollectiveHang") == []
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        for p in ranks:
            h.kill_tree(p.pid)
