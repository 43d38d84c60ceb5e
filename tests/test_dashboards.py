"""The Grafana dashboards are code: the committed JSON is what dashboards/build.py generates, and
every panel's PromQL parses in Prometheus's own parser (promtool). That the queries return
series during a fault scenario is checked against a live Prometheus in test_e2e_alerting.py; here
promtool also evaluates them over synthetic series, half of them without pod, namespace, cluster,
rank, job_id, kernel_family or known_issue, to show that no legend prints an empty label."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "dashboards"))
import build  # noqa: E402  (dashboards/build.py)

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None and not os.environ.get("CI"),
                                    reason="promtool not installed")


def promql(expr: str, rate_interval: str = "1m") -> str:
    """A panel query with Grafana's variables filled in (all at "All"), as Prometheus would receive it.
    A longer `rate_interval` widens the window of the `> 0` counter panels (faults, hangs per interval)."""
    return build.to_promql(expr, rate_interval=rate_interval)


def dashboards() -> dict[str, dict]:
    return {which: json.loads((REPO / "dashboards" / f"{uid}.json").read_text())
            for which, (uid, _title) in build.TITLES.items()}


def all_queries():
    for dash, title, _kind, queries in build.PANELS:
        for expr, legend in queries:
            yield dash, title, expr, legend


def test_committed_json_is_regenerated_exactly():
    res = subprocess.run([sys.executable, str(REPO / "dashboards" / "build.py"), "--check"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_dashboards_have_the_promised_panels():
    titles = {json.loads((REPO / "dashboards" / f"{uid}.json").read_text())["title"]: [
        p["title"] for p in json.loads((REPO / "dashboards" / f"{uid}.json").read_text())["panels"]]
        for uid, _ in build.TITLES.values()}
    fleet, rank = titles["Sentinel: fleet overview"], titles["Sentinel: pod / rank drill-down"]
    for needle in ("faults by signature", "consequences", "hangs", "headroom by pod", "violations by check", "xid",
                   "hooked processes"):
        assert any(needle.lower() in t.lower() for t in fleet), needle
    for needle in ("heartbeat", "collective sequence", "headroom", "last faults", "not in observe mode", "contained"):
        assert any(needle in t.lower() for t in rank), needle


def test_panels_match_the_json():
    """PANELS (what the end-to-end test runs) is exactly what the dashboards query."""
    for which, d in dashboards().items():
        in_json = [(p["title"], p["type"], [(t["expr"], t.get("legendFormat", "")) for t in p["targets"]])
                   for p in d["panels"]]
        assert in_json == [(t, k, q) for dash, t, k, q in build.PANELS if dash == which]


def test_filter_variables_exist_and_chain():
    for which, d in dashboards().items():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert {"datasource", "cluster", "namespace", "pod", "runbook_base"} <= set(variables), which
        for name in build.FILTER_VARS:
            v = variables[name]
            assert v["type"] == "query" and v["multi"] and v["includeAll"], (which, name)
            # All is `.*`, which also matches series without the label (no cluster external label,
            # a process outside Kubernetes): Grafana's default All (a|b|c) would hide those.
            assert v["allValue"] == ".*", (which, name)
            assert v["query"].startswith("label_values(sentinel_process_info") and v["query"].endswith(f", {name})")
        assert '$cluster' in variables["namespace"]["query"]
        assert '$cluster' in variables["pod"]["query"] and '$namespace' in variables["pod"]["query"]
        assert variables["runbook_base"]["type"] == "constant"
        assert variables["runbook_base"]["query"] == "docs/runbooks/"
        assert "publish" in variables["runbook_base"]["description"]
        names = [v["name"] for v in d["templating"]["list"]]
        assert names.index("cluster") < names.index("namespace") < names.index("pod")  # chained in order


def test_every_metric_selector_uses_the_filter_variables():
    for _dash, title, expr, _legend in all_queries():
        selectors = re.findall(r"\b(sentinel_\w+)(\{[^}]*\})?", expr)
        assert selectors, (title, expr)
        for metric, matchers in selectors:
            for var in build.FILTER_VARS:
                assert f'{var}=~"${var}"' in matchers, (title, metric, var)


def test_every_panel_has_a_description_with_a_runbook_link():
    linked = set()
    for which, d in dashboards().items():
        for p in d["panels"]:
            desc = p.get("description", "")
            links = re.findall(r"\]\(\$\{runbook_base\}([\w.-]+\.md)\)", desc)
            assert links, (which, p["title"], desc)
            assert len(desc) > 120, (which, p["title"])  # what it shows and when to worry, not a title again
            for name in links:
                assert (REPO / "docs" / "runbooks" / name).is_file(), name
            linked |= set(links)
    assert {"page-index-out-of-bounds.md", "batch-metadata-mismatch.md", "stride-tma-misaligned.md",
            "collective-hang.md", "cuda-fault.md", "gpu-xid.md", "sentinel-down.md"} <= linked


def test_fleet_and_rank_link_to_each_other():
    d = dashboards()
    for which, target in (("fleet", "/d/sentinel-rank"), ("rank", "/d/sentinel-fleet")):
        links = [link for link in d[which]["links"] if link["url"] == target]
        assert links and links[0]["includeVars"] and links[0]["keepTime"], which
    # Every fleet panel whose series are per pod has a data link to the rank dashboard for that pod.
    for p in d["fleet"]["panels"]:
        per_pod = all(re.search(r"\bby \(cluster, namespace, pod\b", t["expr"]) for t in p["targets"])
        urls = [link["url"] for link in p["fieldConfig"]["defaults"].get("links", [])]
        if per_pod:
            assert urls, p["title"]
        for url in urls:
            assert url.startswith("/d/sentinel-rank?"), url
            assert "${cluster:queryparam}" in url and "${namespace:queryparam}" in url
            pod = "${__field.labels.pod}" if p["type"] != "table" else "${__data.fields.pod}"
            assert url.endswith(f"var-pod={pod}"), url
    assert sum(bool(p["fieldConfig"]["defaults"].get("links")) for p in d["fleet"]["panels"]) >= 3


def _guaranteed(label: str, expr: str) -> bool:
    """The static rule: a legend may print `label` only if the exporter always sets it (NEVER_EMPTY),
    the query pins it to a non-empty value with a matcher, or fills it where empty (build.fill(),
    which build.who() ends with): label_replace(..., "label", "<non-empty>", "label", "")."""
    if label in build.NEVER_EMPTY:
        return True
    if re.search(rf'\b{label}(="[^"]+"|=~"\.\+"|!="")', expr):
        return True
    return re.search(rf'"{label}", "[^"$]+", "{label}", ""\)', expr) is not None


def test_no_legend_prints_a_label_that_may_be_empty():
    for _dash, title, expr, legend in all_queries():
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert _guaranteed(label, expr), (title, label, legend)
    # The rule rejects what it must: the legend that printed "killed in  ()".
    assert not _guaranteed("kernel_family", "sum by (kernel_family) (sentinel_faults_total)")
    assert not _guaranteed("pod", "sentinel_page_table_headroom_pages")


def test_counters_hide_series_that_did_not_move():
    for _dash, title, expr, _legend in all_queries():
        if "rate(" in expr or "increase(" in expr:
            assert ") > 0" in expr, (title, expr)
    for d in dashboards().values():
        for p in d["panels"]:
            if any("> 0" in t["expr"] for t in p["targets"]):
                assert p["fieldConfig"]["defaults"].get("noValue"), p["title"]  # says what is absent


@needs_promtool
def test_every_panel_query_parses(tmp_path):
    rules = ["groups:", "  - name: panels", "    rules:"]
    for i, (_dash, _title, _kind, queries) in enumerate(build.PANELS):
        for j, (expr, _legend) in enumerate(queries):
            rules += [f"      - record: panel_{i}_{j}", f"        expr: {json.dumps(promql(expr))}"]
    path = tmp_path / "panels.rules.yml"
    path.write_text("\n".join(rules) + "\n")
    res = subprocess.run([shutil.which("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# Two sidecars' worth of series, scraped every 15 s for 15 minutes: one in Kubernetes (the target's
# pod and namespace, a cluster external label) and one on a bare host, whose series have no pod,
# namespace, cluster, rank or job_id, and whose faults no kernel family or known issue.
K8S = 'cluster="c1", namespace="ns", pod="p-0", instance="10.0.0.1:9464", job="sentinel"'
BARE = 'instance="h1:9464", job="sentinel"'
K8S_PROC = K8S + ', host="h0", pid="11", rank="0", job_id="j"'
BARE_PROC = BARE + ', host="h1", pid="22"'
COUNT, FLAT = "1+1x60", "5x60"
FIXTURE = [
    (f'sentinel_faults_total{{{K8S}, kind="cuda", signature="s1", exception="illegal_address", '
     'kernel_family="paged_gather", known_issue="paged-kv-page-index-off-by-one"}', COUNT),
    (f'sentinel_faults_total{{{BARE}, kind="cuda", signature="s2", exception="illegal_address"}}', COUNT),
    (f'sentinel_faults_total{{{BARE}, signature="s5", exception="illegal_address"}}', COUNT),  # before `kind`
    (f'sentinel_faults_total{{{BARE}, kind="crash", signature="s3", exception="sigsegv"}}', COUNT),
    (f'sentinel_faults_total{{{BARE}, kind="killed", signature="s4", exception="killed"}}', COUNT),
    (f'sentinel_faults_total{{{K8S}, kind="killed", signature="s4", exception="killed"}}', COUNT),
    (f'sentinel_fault_consequences_total{{{BARE}, cause_signature="s3", exception="killed"}}', COUNT),
    (f'sentinel_hang_culprit{{{BARE}, pg="0", rank="1", group_rank="1", reason="host_stall"}}', "1x60"),
    (f'sentinel_collective_hangs_total{{{BARE}, pg="0"}}', COUNT),
    (f'sentinel_collective_hangs_total{{{K8S}, job_id="j", pg="1"}}', COUNT),
    (f'sentinel_gpu_xid_errors_total{{{BARE}, gpu="0", xid="79"}}', COUNT),
    (f'sentinel_gpu_xid_errors_total{{{K8S}, gpu="1", xid="13"}}', COUNT),
    (f'sentinel_processes{{{BARE}, state="running"}}', FLAT),
    (f'sentinel_processes{{{K8S}, state="died"}}', FLAT),
    (f'sentinel_process_info{{{K8S_PROC}, mode="contain"}}', "1x60"),
    (f'sentinel_process_info{{{BARE_PROC}, mode="observe"}}', "1x60"),
    (f'sentinel_contained_entries_total{{{K8S_PROC}}}', COUNT),
    (f'sentinel_contained_entries_total{{{BARE_PROC}}}', COUNT),
]
for _labels in (K8S_PROC, BARE_PROC):
    FIXTURE += [
        (f'sentinel_page_table_headroom_pages{{{_labels}}}', "-1x60"),
        (f'sentinel_invariant_violations_total{{{_labels}, check="page_table_oob"}}', COUNT),
        (f'sentinel_invariant_violations_total{{{_labels}, check="batch_mismatch"}}', "0x60"),  # never moves
        (f'sentinel_heartbeat_age_seconds{{{_labels}}}', FLAT),
        (f'sentinel_collective_seq{{{_labels}, pg="0", state="enqueued"}}', COUNT),
        (f'sentinel_collective_seq{{{_labels}, pg="0", state="completed"}}', COUNT),
    ]


def _promtool_test(tmp_path, cases: list[tuple[str, list[tuple[str, float]]]]) -> subprocess.CompletedProcess:
    """Evaluate each (expr, [(labels, value)]) at 10m over FIXTURE; promtool fails on any difference."""
    lines = ["rule_files: []", "evaluation_interval: 15s", "tests:", "  - interval: 15s", "    input_series:"]
    for series, values in FIXTURE:
        lines += [f"      - series: {json.dumps(series)}", f"        values: {json.dumps(values)}"]
    lines.append("    promql_expr_test:")
    for expr, samples in cases:
        lines += [f"      - expr: {json.dumps(expr)}", "        eval_time: 10m", "        exp_samples:"]
        lines += [f"          - labels: {json.dumps(labels)}\n            value: {value}" for labels, value in samples]
    path = tmp_path / "panels.test.yml"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run([shutil.which("promtool"), "test", "rules", str(path)], capture_output=True, text=True)


@needs_promtool
def test_legends_never_render_an_empty_label(tmp_path):
    """Over the fixture, every panel query returns series, and none of them has an empty value for
    a label its legend prints (group by the marker label: only the group without it may exist)."""
    cases = []
    for _dash, _title, expr, legend in all_queries():
        q = promql(expr)
        cases.append((f"group({q})", [("{}", 1)]))  # the panel shows something
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            cases.append((f'group by (legend_label_empty) (label_replace({q}, "legend_label_empty", "{label}", '
                          f'"{label}", ""))', [("{}", 1)]))
    res = _promtool_test(tmp_path, cases)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_legends_read_outside_kubernetes_too(tmp_path):
    """What the legends say for the bare host: host:pid (or the scrape target) instead of an empty pod,
    placeholders instead of an empty kernel family, known issue or rank; and no series that never moved."""
    q = {title: [promql(e) for e, _legend in queries] for _dash, title, _kind, queries in build.PANELS}
    faults = q["Faults by signature (CUDA faults, crashes, kills)"]
    cases = [
        (f"group by (who) ({q['Page-table headroom by pod (pages left)'][0]})",
         [('{who="p-0"}', 1), ('{who="h1:22"}', 1)]),
        (f"group by (who, check) ({q['Invariant violations by check and pod'][0]})",
         [('{who="p-0", check="page_table_oob"}', 1), ('{who="h1:22", check="page_table_oob"}', 1)]),
        (f"group by (signature, kernel_family, known_issue) ({faults[0]})",
         [('{signature="s1", kernel_family="paged_gather", known_issue="paged-kv-page-index-off-by-one"}', 1),
          ('{signature="s2", kernel_family="unknown kernel", known_issue="no known issue"}', 1),
          ('{signature="s5", kernel_family="unknown kernel", known_issue="no known issue"}', 1)]),
        (f"group by (signature, exception) ({faults[1]})", [('{signature="s3", exception="sigsegv"}', 1)]),
        (f"group by (who) ({faults[2]})",
         [('{who="p-0"}', 1), ('{who="h1:9464"}', 1)]),
        (f"group by (job_id, pg) ({q['Hangs detected'][0]})",
         [('{job_id="j", pg="1"}', 1), ('{job_id="no job id", pg="0"}', 1)]),
        (f"group by (who, rank, pid) ({q['Heartbeat age per rank (s)'][0]})",
         [('{who="p-0", rank="0", pid="11"}', 1), ('{who="h1", rank="-", pid="22"}', 1)]),
        (f"group by (pod, mode) ({q['Processes not in observe mode'][0]})", [('{pod="p-0", mode="contain"}', 1)]),
    ]
    res = _promtool_test(tmp_path, cases)
    assert res.returncode == 0, res.stdout + res.stderr
