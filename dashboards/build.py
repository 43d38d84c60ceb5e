"""Sentinel's Grafana dashboards, as code (grafana-foundation-sdk). The JSON beside this file is
generated: edit this file, then run

    python dashboards/build.py           # rewrite dashboards/*.json
    python dashboards/build.py --check   # exit 1 if the JSON is stale (the tests do this)

PANELS lists every panel's PromQL, so the tests can run each query against a real Prometheus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

HERE = Path(__file__).resolve().parent
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")

# (dashboard, panel title, kind, [(query, legend)])
PANELS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("fleet", "CUDA faults by signature", "timeseries",
     # A signature's series is born at 1 with its first fault, which increase() alone never shows:
     # a series that did not exist one interval ago counts whole, older ones by their increase.
     [("sum by (signature, exception, kernel_family, known_issue) ((sentinel_faults_total unless sentinel_faults_total"
       " offset $__rate_interval) or increase(sentinel_faults_total[$__rate_interval]))",
       "{{exception}} in {{kernel_family}} ({{known_issue}})")]),
    ("fleet", "Collective hangs: culprits now", "table",
     [("sentinel_hang_culprit == 1", "")]),
    ("fleet", "Hangs detected", "timeseries",
     [("sum by (job_id, pg) ((sentinel_collective_hangs_total unless sentinel_collective_hangs_total offset"
       " $__rate_interval) or increase(sentinel_collective_hangs_total[$__rate_interval]))",
       "{{job_id}} pg {{pg}}")]),
    ("fleet", "Page-table headroom by pod (pages left)", "timeseries",
     [("min by (pod) (sentinel_page_table_headroom_pages)", "{{pod}}")]),
    ("fleet", "Invariant violations by check", "timeseries",
     [("sum by (check) (rate(sentinel_invariant_violations_total[$__rate_interval]))", "{{check}}")]),
    ("fleet", "GPU XIDs", "timeseries",
     [("sum by (gpu, xid) (increase(sentinel_gpu_xid_errors_total[$__rate_interval]))", "GPU {{gpu}} XID {{xid}}")]),
    ("fleet", "Hooked processes", "stat",
     [("sum by (state) (sentinel_processes)", "{{state}}")]),
    ("rank", "Heartbeat age per rank (s)", "timeseries",
     [('sentinel_heartbeat_age_seconds{pod=~"$pod"}', "rank {{rank}} pid {{pid}}")]),
    ("rank", "Collective sequence per rank", "timeseries",
     [('sentinel_collective_seq{pod=~"$pod", state="enqueued"}', "rank {{rank}} pg {{pg}} enqueued"),
      ('sentinel_collective_seq{pod=~"$pod", state="completed"}', "rank {{rank}} pg {{pg}} completed")]),
    ("rank", "Page-table headroom per rank", "timeseries",
     [('sentinel_page_table_headroom_pages{pod=~"$pod"}', "rank {{rank}}")]),
    ("rank", "Violations per rank and check", "timeseries",
     [('sum by (rank, check) (rate(sentinel_invariant_violations_total{pod=~"$pod"}[$__rate_interval]))',
       "rank {{rank}} {{check}}")]),
    ("rank", "Last faults", "table",
     [("sentinel_faults_total", "")]),
]

TITLES = {"fleet": ("sentinel-fleet", "Sentinel: fleet overview"), "rank": ("sentinel-rank", "Sentinel: pod / rank drill-down")}


def _panel(kind: str, title: str, queries: list[tuple[str, str]]):
    builder = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}[kind]()
    builder = builder.title(title).datasource(DS).height(8).span(12)
    for i, (expr, legend) in enumerate(queries):
        q = prometheus.Dataquery().expr(expr).ref_id(chr(ord("A") + i))
        if legend:
            q = q.legend_format(legend)
        if kind == "table":
            q = q.instant()
        builder = builder.with_target(q)
    return builder


def build(which: str) -> dict:
    uid, title = TITLES[which]
    d = (dashboard.Dashboard(title).uid(uid).tags(["sentinel", "gpu", "llm-serving"]).refresh("30s")
         .time("now-6h", "now").timezone("browser")
         .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")))
    if which == "rank":
        d = d.with_variable(dashboard.QueryVariable("pod").label("Pod").datasource(DS)
                            .query("label_values(sentinel_process_info, pod)").include_all(True).multi(True))
    for dash, ptitle, kind, queries in PANELS:
        if dash == which:
            d = d.with_panel(_panel(kind, ptitle, queries))
    return json.loads(json.dumps(d.build(), cls=JSONEncoder, sort_keys=True))


def render(which: str) -> str:
    return json.dumps(build(which), indent=2, sort_keys=True) + "\n"


def main() -> int:
    stale = []
    for which, (uid, _title) in TITLES.items():
        path = HERE / f"{uid}.json"
        text = render(which)
        if "--check" in sys.argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}: run python dashboards/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
