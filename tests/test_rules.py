"""The shipped Prometheus rules load in promtool and compute the cross-node skew as documented."""

import os
import re
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
def test_alertmanager_config_is_valid(tmp_path):
    """The config, and the page templates it loads (pointed at this checkout's templates/)."""
    assert AMTOOL, "CI must install amtool (make tools)"
    text = AM_CONFIG.read_text()
    assert "  - /etc/alertmanager/templates/*.tmpl" in text
    local = tmp_path / "alertmanager.yml"
    local.write_text(text.replace("/etc/alertmanager/templates/*.tmpl", str(AM_CONFIG.parent / "templates" / "*.tmpl")))
    res = subprocess.run([AMTOOL, "check-config", str(local)], capture_output=True, text=True)
    assert res.returncode == 0 and " - 1 templates" in res.stdout, res.stdout + res.stderr


def _severities() -> dict[str, str]:
    import yaml

    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["labels"]["severity"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


@needs_amtool
@pytest.mark.parametrize("alertname, severity", sorted(_severities().items()))
def test_each_alert_goes_where_it_should(alertname, severity):
    """Every critical alert pages (and the team sees it); every warning goes to the team only."""
    labels = {"alertname": alertname, "severity": severity, "signature": "667f67e659f6", "pod": "p"}
    receivers = "pager,team" if severity == "critical" else "team"
    args = [f"{k}={v}" for k, v in labels.items()]
    res = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}", *args],
                         capture_output=True, text=True)
    assert res.stdout.strip() == receivers, res.stdout + res.stderr


def test_no_alert_text_names_internal_cases():
    """Pages and runbooks speak of the failure, not of the project's founding reports ("seed 000")."""
    import re

    for path in [ALERTS, *(PROM.parents[1] / "docs" / "runbooks").glob("*.md")]:
        assert not re.search(r"\bseeds? ?0\d\d", path.read_text(), re.I), path


@needs_amtool
@pytest.mark.parametrize("labels, receivers", [
    ({"alertname": "SentinelCudaFault", "severity": "critical", "signature": "667f67e659f6"}, "pager,team"),
    ({"alertname": "SentinelProcessKilled", "severity": "warning"}, "team"),
    ({"alertname": "SomeoneElsesAlert", "severity": "critical"}, "team"),
])
def test_routes_for_other_labels(labels, receivers):
    args = [f"{k}={v}" for k, v in labels.items()]
    res = subprocess.run([AMTOOL, "config", "routes", "test", f"--config.file={AM_CONFIG}", *args],
                         capture_output=True, text=True)
    assert res.stdout.strip() == receivers, res.stdout + res.stderr


def test_runbook_links_can_be_made_absolute_in_one_place():
    """The PrometheusRule with --runbook-base: every runbook_url is the base plus a runbook that
    exists; and the page template prefixes the same way (sentinel.runbook_base)."""
    import sys

    res = subprocess.run([sys.executable, str(PROM.parent / "k8s" / "gen_prometheusrule.py"), "--runbook-base",
                          "https://docs.example/sentinel"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    urls = re.findall(r'runbook_url: "([^"]+)"', res.stdout)
    assert urls and all(u.startswith("https://docs.example/sentinel/docs/runbooks/") for u in urls), urls
    assert all((PROM.parents[1] / u.removeprefix("https://docs.example/sentinel/")).is_file() for u in urls)
    tmpl = (PROM.parent / "alertmanager" / "templates" / "sentinel.tmpl").read_text()
    assert '{{ template "sentinel.runbook_base" }}' in tmpl
