#!/usr/bin/env python3
"""Bug to page: how long on-call waits, with the shipped alerting defaults.

Run as ``.venv/bin/python bench/page_latency.py [--runs N]`` (``make bench``). Each run is the
end-to-end alerting test (tests/test_e2e_alerting.py): real Prometheus and Alertmanager, the shipped
rules (10 s evaluation), routes and page templates, a 10 s scrape, Alertmanager's 5 s group_wait for
pages, and a PagerDuty Events v2 endpoint on loopback. It measures, from the moment of the bug to the
PagerDuty event:
  - an invariant: a page index out of bounds (the first rank to hand it to the probe), and the same
    in a second pod (a new incident, not an update to the first);
  - a CUDA fault: from the process's raise to the page;
  - a collective hang: from the culprit rank's last step to the page.
The goal is at most 30 s for each critical page.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [BENCH]
from _common import machine_info, progress, spread, update_results_md, write_json  # noqa: E402

GOAL_S = 30.0
LABELS = {
    "invariant_first_rank_s": "page index out of bounds (first pod)",
    "invariant_second_pod_s": "page index out of bounds (second pod: its own page)",
    "cuda_fault_s": "CUDA fault (process raised -> page)",
    "collective_hang_s": "collective hang (culprit's last step -> page)",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        progress(f"page latency: run {i + 1}/{args.runs} (the end-to-end alerting test, about 3 minutes)")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "latency.json")
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  os.path.join(REPO, "tests", "test_e2e_alerting.py")],
                                 cwd=REPO, env=dict(os.environ, SENTINEL_BENCH_OUT=out), capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stdout[-4000:] + res.stderr[-2000:], file=sys.stderr)
                return 1
            with open(out) as f:
                runs.append(json.load(f))
    info = machine_info()
    stats = {key: spread([r[key] for r in runs]) for key in LABELS}
    payload = {"machine": info, "runs": runs, "stats": stats, "goal_s": GOAL_S,
               "config": {"scrape_interval_s": 10, "rule_interval_s": 10, "group_wait_s": 5, "crash_grace_s": 2,
                          "hang_floor_s": 3}}
    path = write_json("cpu-page-latency", payload)
    rows = [f"| {LABELS[k]} | {s['median']:.1f} | {s['min']:.1f}..{s['max']:.1f} | "
            f"{'PASS' if s['max'] <= GOAL_S else 'FAIL'} |" for k, s in stats.items()]
    section = "\n".join([
        f"## {info['date_utc']}: bug to page with the shipped alerting defaults (`bench/page_latency.py`)",
        "",
        f"{args.runs} runs of tests/test_e2e_alerting.py on {info['cpu_model']} ({info['nproc']} cores): real "
        "Prometheus 2.42 and Alertmanager 0.25, the shipped rules (10 s evaluation), routes and page templates, a 10 s "
        "scrape, 5 s group_wait for pages, PagerDuty Events v2 on loopback. The hang test's floor is 3 s (the "
        f"daemon's default is 5 s). Raw: `bench/results/{os.path.basename(path)}`.",
        "",
        f"| bug | to the page, s (median) | min..max | goal <= {GOAL_S:.0f} s |",
        "|---|---|---|---|",
        *rows,
    ])
    update_results_md(f"{info['date_utc']}-cpu-page-latency", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
