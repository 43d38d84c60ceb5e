"""The shipped Prometheus rules load in promtool and compute the cross-node skew as documented."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "collective-skew.rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"), reason="promtool not installed")


@needs_promtool
def test_rules_check_clean():
    assert PROMTOOL, "CI must install promtool (make tools)"
    res = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


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
