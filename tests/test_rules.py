"""The shipped Prometheus rules load in promtool and compute the cross-node skew as documented."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROM = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULES = PROM / "collective-skew.rules.yml"
ALERTS = PROM / "sentinel-alerts.rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="promtool not installed")


@needs_promtool
def test_rules_check_clean():
    assert PROMTOOL, "CI must install promtool (make tools)"
    res = subprocess.run([PROMTOOL, "check", "rules", str(RULES), str(ALERTS)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests():
    tests = PROM / "tests" / "alerts_test.yml"
    res = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # Coverage: every alert in the rules file has a firing case and a quiet (exp_alerts: []) case.
    import re

    alerts = set(re.findall(r"- alert: (\w+)", ALERTS.read_text()))
    text = tests.read_text()
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", text)
    firing = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    assert alerts == firing, alerts ^ firing
    assert alerts == quiet, alerts ^ quiet
    for name in alerts:
        block = ALERTS.read_text().split(f"- alert: {name}\n", 1)[1].split("- alert:", 1)[0]
        for key in ("summary:", "description:", "runbook_url:"):
            assert key in block, (name, key)
        url = re.search(r'runbook_url: "([^"]+)"', block).group(1)
        assert (PROM.parents[1] / url).is_file(), url


@needs_promtool
def test_skew_across_nodes(tmp_path):
    # Two nodes, two ranks each, one process group: rank 3 (node b) is 3 collectives behind.
    test = tmp_path / "skew_test.yml"
    test.write_text(f"""
rule_files: [{RULES}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'sentinel_collective_seq{{job_id="j",pg="0",rank="0",host="a",state="enqueued"}}'
        values: '10 11 12'
      - series: 'sentinel_collective_seq{{job_id="j",pg="0",rank="1",host="a",state="enqueued"}}'
        values: '10 11 12'
      - series: 'sentinel_collective_seq{{job_id="j",pg="0",rank="2",host="b",state="enqueued"}}'
        values: '10 11 12'
      - series: 'sentinel_collective_seq{{job_id="j",pg="0",rank="3",host="b",state="enqueued"}}'
        values: '9 9 9'
    promql_expr_test:
      - expr: sentinel:collective_seq_skew
        eval_time: 30s
        exp_samples:
          - labels: 'sentinel:collective_seq_skew{{job_id="j",pg="0"}}'
            value: 3
      - expr: sentinel:collective_seq_lagging_rank
        eval_time: 30s
        exp_samples:
          - labels: 'sentinel:collective_seq_lagging_rank{{job_id="j",pg="0",rank="3",host="b",state="enqueued"}}'
            value: 9
""")
    res = subprocess.run([PROMTOOL, "test", "rules", str(test)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


AMTOOL = shutil.which("amtool")
AM_CONFIG = PROM.parent / "alertmanager" / "alertmanager.yml"
needs_amtool = pytest.mark.skipif(AMTOOL is None and not os.environ.get("CI"), reason="amtool not installed")


@needs_amtool
def test_alertmanager_config_is_valid():
    assert AMTOOL, "CI must install amtool (make tools)"
    res = subprocess.run([AMTOOL, "check-config", str(AM_CONFIG)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_amtool
@pytest.mark.parametrize("labels, receivers", [
    ({"alertname": "SentinelCudaFault", "severity": "critical", "signature": "667f67e659f6"}, "pager,team"),
    ({"alertname": "SentinelCollectiveHang", "severity": "critical"}, "pager,team"),
    ({"alertname": "SentinelPageIndexOutOfBounds", "severity": "critical"}, "pager,team"),
    ({"alertname": "SentinelGpuXid", "severity": "critical"}, "pager,team"),
    ({"alertname": "SentinelDown", "severity": "critical"}, "pager,team"),
    ({"alertname": "SentinelHeartbeatStale", "severity": "warning"}, "team"),
    ({"alertname": "SentinelPageHeadroomLow", "severity": "warning"}, "team"),
    ({"alertname": "SentinelGpuXidWarning", "severity": "warning"}, "team"),
])
def test_each_alert_goes_where_it_should(labels, receivers):
    args = [f"{k}={v}" for k, v in labels.items()]
    res = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}", *args],
                         capture_output=True, text=True)
    assert res.stdout.strip() == receivers, res.stdout + res.stderr
