"""Sentinel's Grafana dashboards, as code (grafana-foundation-sdk). The JSON beside this file is
generated: edit this file, then run

    python dashboards/build.py           # rewrite dashboards/*.json
    python dashboards/build.py --check   # exit 1 if the JSON is stale (the tests do this)

PANELS lists every panel's PromQL, so the tests can run each query against a real Prometheus:
(dashboard, title, kind, [(query, legend)]), with Grafana's variables left in (`to_promql()`
fills them in as Grafana would with every variable at "All").

Conventions every query follows (tests/test_dashboards.py checks them):
- every metric selector carries the `cluster`, `namespace` and `pod` variables (`=~`, so "All",
  whose value is `.*`, also matches series without the label: no `cluster` external label, or a
  process outside Kubernetes);
- counters are shown as increases or rates `> 0`: a series that did not move is not drawn, and a
  quiet fleet is an empty panel that says what is absent ("No faults in this range");
- a legend prints only labels the query guarantees non-empty: labels the exporter always sets
  (NEVER_EMPTY), labels the query pins with a matcher, or labels filled with `fill()` / `who()`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphDrawStyle, GraphTresholdsStyleMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")

# The filter variables, chained (namespace by cluster, pod by cluster and namespace), and the
# matchers every metric selector carries.
FILTER_VARS = ("cluster", "namespace", "pod")
SEL = 'cluster=~"$cluster", namespace=~"$namespace", pod=~"$pod"'
RUNBOOK_BASE = "docs/runbooks/"  # the default of the `runbook_base` variable

# Labels the exporter never leaves empty on the series that carry them (sentinel/exporter/collectors.py):
# the check, state, group, signature and exception (exception_class() is "unknown" at worst),
# the GPU and XID. Anything else (pod, namespace, rank, job_id, kernel_family, known_issue, ...)
# may be empty, so a legend may print it only through fill() or who().
NEVER_EMPTY = frozenset({"check", "state", "pg", "signature", "exception", "cause_signature", "gpu", "xid", "reason"})


def m(metric: str, extra: str = "") -> str:
    """A metric selector filtered by the dashboard's variables."""
    return f"{metric}{{{SEL}{', ' + extra if extra else ''}}}"


def fill(expr: str, label: str, default: str) -> str:
    """`expr` with an empty (or absent) `label` set to `default`."""
    assert default and '"' not in default
    return f'label_replace({expr}, "{label}", "{default}", "{label}", "")'


def who(expr: str, *fallback: str) -> str:
    """`expr` with a label `who`: the pod, or where there is none (outside Kubernetes) the
    `fallback` labels joined with ':' (host:pid for a process, instance for a sidecar's own series)."""
    labels = ", ".join(f'"{label}"' for label in ("pod", *fallback))
    joined = f'label_join({expr}, "who", ":", {labels})'
    pod = f'label_replace({joined}, "who", "$1", "who", "([^:]+):.*")'  # "pod:..." -> pod
    bare = f'label_replace({pod}, "who", "$1", "who", ":(.*)")'  # ":host:pid" -> host:pid
    return fill(bare, "who", "unknown")


def new_or_increase(sel: str) -> str:
    """A counter's increase over the interval. A series is born at its first count (1 fault, 1
    hang), which increase() alone never shows: one that did not exist one interval ago counts whole."""
    return f"(({sel} unless {sel} offset $__rate_interval) or increase({sel}[$__rate_interval]))"


def to_promql(expr: str, rate_interval: str = "1m") -> str:
    """A panel query as Prometheus receives it from Grafana with every variable at "All"."""
    expr = expr.replace("$__rate_interval", rate_interval)
    return re.sub(r'=~"\$\w+"', '=~".*"', expr)


def runbook(name: str, text: str = "runbook") -> str:
    assert (HERE.parent / "docs" / "runbooks" / name).is_file(), name
    return f"[{text}](${{runbook_base}}{name})"


# Links to the rank dashboard. Data links carry the clicked series' pod and the other variables.
RANK_URL = "/d/sentinel-rank"
FLEET_URL = "/d/sentinel-fleet"
DRILL = (f"{RANK_URL}?${{__url_time_range}}&${{datasource:queryparam}}&${{cluster:queryparam}}"
         "&${namespace:queryparam}&var-pod=")
DRILL_SERIES = DRILL + "${__field.labels.pod}"  # time series: the series' labels
DRILL_ROW = DRILL + "${__data.fields.pod}"  # tables: the row's pod column


@dataclass
class Panel:
    dash: str
    title: str
    kind: str  # timeseries, stat, table
    queries: list[tuple[str, str]]  # (PromQL, legend)
    description: str  # what it shows, when to worry, the runbook link(s)
    unit: str = ""
    no_value: str = ""  # what an empty panel says
    drill: bool = False  # a data link to the rank dashboard, for the clicked series' pod
    bars: bool = False  # counts per interval, drawn as bars
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)
    hide_columns: tuple[str, ...] = ("Time", "Value")  # tables: columns that say nothing


def rate(sel: str) -> str:
    return f"rate({sel}[$__rate_interval])"


def proc(expr: str) -> str:
    """A per-process series for the rank dashboard: `who` (the pod, or the host), rank and pid filled."""
    return fill(fill(who(expr, "host"), "rank", "-"), "pid", "-")


FAULTS = "sentinel_faults_total"
FAULTS_CUDA = m(FAULTS, 'kind=~"cuda|"')  # no kind label: a daemon from before `kind`; shown as CUDA faults
FAULTS_CRASH = m(FAULTS, 'kind="crash"')
FAULTS_KILLED = m(FAULTS, 'kind="killed"')
NOT_OBSERVING = m("sentinel_process_info", 'mode=~".+", mode!="observe"')  # no mode label: not listed
RUNBOOKS_BY_CHECK = (
    f"`page_table_oob`, `page_table_trailing_oob`, `capacity_mismatch`: {runbook('page-index-out-of-bounds.md')}; "
    f"`batch_mismatch`, `seqlens_invalid`: {runbook('batch-metadata-mismatch.md')}; "
    f"`degenerate_stride`, `tma_misaligned`: {runbook('stride-tma-misaligned.md')}."
)
HEADROOM_STEPS = [(None, "red"), (0, "orange"), (64, "green")]

_PANELS: list[Panel] = [
    # ---------------------------------------------------------------- fleet
    Panel("fleet", "Faults by signature (CUDA faults, crashes, kills)", "timeseries", [
        (fill(fill(f"sum by (signature, exception, kernel_family, known_issue) ({new_or_increase(FAULTS_CUDA)}) > 0",
                   "kernel_family", "unknown kernel"), "known_issue", "no known issue"),
         "{{signature}}: {{exception}} in {{kernel_family}} ({{known_issue}})"),
        (f"sum by (signature, exception) ({new_or_increase(FAULTS_CRASH)}) > 0",
         "{{signature}}: crash ({{exception}})"),
        (f"sum by (cluster, namespace, pod, who) ({who(new_or_increase(FAULTS_KILLED), 'instance')}) > 0",
         "killed: {{who}}"),
    ],
        "Fault records journaled per interval. CUDA faults (a GPU coredump or a CUDA error) and crashes (a "
        "fatal signal or exception without CUDA evidence) by signature; kills (SIGKILL, OOM kill: no word "
        "from the process) by pod. Worry at any CUDA fault or crash: a new signature is a new incident, and "
        "a known issue names its fix. Kills are usually the platform's (OOM, eviction). `sentinel triage "
        "--list` on the node shows the records. Deaths caused by another fault are in *Fault "
        f"consequences*, not here. CUDA faults: {runbook('cuda-fault.md')}; crashes and kills: "
        f"{runbook('process-death.md')}.",
        no_value="No faults in this range", bars=True),
    Panel("fleet", "Fault consequences (deaths caused by another fault)", "timeseries", [
        (f"sum by (cause_signature, exception) ({new_or_increase(m('sentinel_fault_consequences_total'))}) > 0",
         "{{exception}} after {{cause_signature}}"),
    ],
        "Deaths journaled as the consequence of a related process's fault (a parent killing its workers "
        "after one crashed, children dying with their parent), by the cause's signature. They do not page: "
        "follow the cause in *Faults by signature*. Worry only about a cause signature with no fault of its "
        f"own there. {runbook('process-death.md')}",
        no_value="No consequential deaths in this range", bars=True),
    Panel("fleet", "Collective hangs: culprits now", "table", [
        (f"max by (cluster, namespace, pod, job_id, pg, rank, group_rank, reason) ({m('sentinel_hang_culprit')} == 1)",
         ""),
    ],
        "The ranks blamed for a collective hang that lasts now, one row each, with the reason (died, "
        "host_stall, behind, missing). Any row is an incident: the other ranks of its group wait on it. "
        f"Click a row for its pod's ranks. {runbook('collective-hang.md')}",
        no_value="No hang now", drill=True),
    Panel("fleet", "Hangs detected", "timeseries", [
        (fill(f"sum by (job_id, pg) ({new_or_increase(m('sentinel_collective_hangs_total'))}) > 0",
              "job_id", "no job id"),
         "{{job_id}} pg {{pg}}"),
    ],
        "Collective hangs detected per interval, by serving job and process group. Each is journaled "
        "once; *Collective hangs: culprits now* names its culprits while it lasts. "
        f"{runbook('collective-hang.md')}",
        no_value="No hangs in this range", bars=True),
    Panel("fleet", "Page-table headroom by pod (pages left)", "timeseries", [
        (f"min by (cluster, namespace, pod, who) ({who(m('sentinel_page_table_headroom_pages'), 'host', 'pid')})",
         "{{who}}"),
    ],
        "Per pod (outside Kubernetes, per host:pid), the tightest `num_pages - 1 - max page index` of its "
        "processes' probe sites. Below 0 a kernel reads out of bounds (an off-by-one page index); close to "
        "0 the next long sequence may. Dead processes stop reporting. Click a series for its ranks. "
        f"{runbook('page-index-out-of-bounds.md')}",
        unit="none", no_value="No probed process", drill=True, thresholds=HEADROOM_STEPS),
    Panel("fleet", "Invariant violations by check and pod", "timeseries", [
        (f"sum by (cluster, namespace, pod, who, check) "
         f"({who(rate(m('sentinel_invariant_violations_total')), 'host', 'pid')}) > 0",
         "{{check}}: {{who}}"),
    ],
        "Probe violations per second, by check and pod (outside Kubernetes, host:pid). Any is a bug caught "
        f"before the kernel ran. Click a series for its ranks. {RUNBOOKS_BY_CHECK}",
        unit="ops", no_value="No violations in this range", drill=True),
    Panel("fleet", "GPU XIDs", "timeseries", [
        (f"sum by (cluster, namespace, pod, who, gpu, xid) "
         f"({who(new_or_increase(m('sentinel_gpu_xid_errors_total')), 'instance')}) > 0",
         "{{who}}: GPU {{gpu}} XID {{xid}}"),
    ],
        "XID events the GPU driver reported (NVML), per interval, by GPU and XID. 13, 31 and 43 often "
        "follow an application's own fault (see *Faults by signature*); 48, 63, 64, 74, 79 and 92-95 point "
        f"at the GPU, its memory or the driver. {runbook('gpu-xid.md')}",
        no_value="No XIDs in this range", bars=True, drill=True),
    Panel("fleet", "Hooked processes", "stat", [
        (f"sum by (state) ({m('sentinel_processes')})", "{{state}}"),
    ],
        "Processes the sidecars know, by state: running, exited (cleanly), died. No running process for "
        "a pod that serves, or an empty panel, means Sentinel is not watching it: the sidecar is down "
        f"({runbook('sentinel-down.md')}) or the hooks are not injected "
        f"({runbook('sentinel-blind-spots.md')}).",
        no_value="No sidecar reports"),
    # ---------------------------------------------------------------- rank
    Panel("rank", "Heartbeat age per rank (s)", "timeseries", [
        (proc(m("sentinel_heartbeat_age_seconds")), "{{who}} rank {{rank}} pid {{pid}}"),
    ],
        "Seconds since each live process's last serving step. One rank climbing while the others stay "
        "low is stuck (often a hang's culprit); all climbing together is an idle or stalled server. "
        f"{runbook('collective-hang.md')}",
        unit="s", no_value="No live process"),
    Panel("rank", "Collective sequence per rank", "timeseries", [
        (proc(m("sentinel_collective_seq", 'state="enqueued"')), "{{who}} rank {{rank}} pg {{pg}} enqueued"),
        (proc(m("sentinel_collective_seq", 'state="completed"')), "{{who}} rank {{rank}} pg {{pg}} completed"),
    ],
        "The last collective each rank enqueued and completed, per process group. The ranks of a group "
        "move together; one left behind, or enqueued far ahead of completed, is where a hang starts. "
        f"{runbook('collective-hang.md')}",
        no_value="No traced collectives"),
    Panel("rank", "Page-table headroom per rank", "timeseries", [
        (proc(m("sentinel_page_table_headroom_pages")), "{{who}} rank {{rank}} pid {{pid}}"),
    ],
        "Pages left above the highest page index each process's tightest probe site reads. Below 0: out "
        f"of bounds, now. {runbook('page-index-out-of-bounds.md')}",
        unit="none", no_value="No probed process", thresholds=HEADROOM_STEPS),
    Panel("rank", "Violations per rank and check", "timeseries", [
        (f"sum by (cluster, namespace, pod, who, rank, pid, check) "
         f"({proc(rate(m('sentinel_invariant_violations_total')))}) > 0",
         "{{who}} rank {{rank}} pid {{pid}}: {{check}}"),
    ],
        f"Probe violations per second, per process and check. {RUNBOOKS_BY_CHECK}",
        unit="ops", no_value="No violations in this range"),
    Panel("rank", "Last faults", "table", [
        (f"sum by (cluster, namespace, pod, kind, signature, exception, kernel_family, known_issue) "
         f"({m(FAULTS)}) > 0", ""),
    ],
        "Fault records these pods' sidecars journaled, one row per signature, with their count. `sentinel "
        f"triage --list` on the node shows them in full. `kind` cuda: {runbook('cuda-fault.md')}; crash, "
        f"killed: {runbook('process-death.md')}.",
        no_value="No faults journaled", hide_columns=("Time",)),
    Panel("rank", "Processes not in observe mode", "table", [
        (f"max by (cluster, namespace, pod, host, pid, rank, mode) ({NOT_OBSERVING})", ""),
    ],
        "Processes in `trap` mode (a violation raises in the serving process) or `contain` mode "
        "(out-of-range page indices are redirected to a reserved page: those requests get wrong answers "
        "instead of a crash). Expected only while an incident is worked on; *Contained page-table "
        f"entries* counts what contain mode redirected. {runbook('page-index-out-of-bounds.md')}",
        no_value="All processes observe"),
    Panel("rank", "Contained page-table entries", "timeseries", [
        (f"sum by (cluster, namespace, pod, who, rank, pid) ({proc(rate(m('sentinel_contained_entries_total')))}) > 0",
         "{{who}} rank {{rank}} pid {{pid}}"),
    ],
        "Page-table entries contain mode redirected to the reserved page, per second. Each is a request "
        "served from the wrong KV page: the server stays up, the answer is wrong. Fix the index, then go "
        f"back to observe mode. {runbook('page-index-out-of-bounds.md')}",
        unit="ops", no_value="Nothing contained in this range"),
]


# (dashboard, title, kind, [(query, legend)]): what the tests run against Prometheus.
PANELS: list[tuple[str, str, str, list[tuple[str, str]]]] = [(p.dash, p.title, p.kind, p.queries) for p in _PANELS]

TITLES = {"fleet": ("sentinel-fleet", "Sentinel: fleet overview"), "rank": ("sentinel-rank", "Sentinel: pod / rank drill-down")}


def _link(title: str, url: str) -> dashboard.DashboardLink:
    return dashboard.DashboardLink(title).url(url)


def _panel(p: Panel):
    builder = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}[p.kind]()
    builder = builder.title(p.title).description(p.description).datasource(DS).height(8).span(12)
    for i, (expr, legend) in enumerate(p.queries):
        q = prometheus.Dataquery().expr(expr).ref_id(chr(ord("A") + i))
        if legend:
            q = q.legend_format(legend)
        if p.kind == "table":
            q = q.instant().format(PromQueryFormat.TABLE)
        builder = builder.with_target(q)
    if p.unit:
        builder = builder.unit(p.unit)
    if p.no_value:
        builder = builder.no_value(p.no_value)
    if p.drill:
        builder = builder.data_links([_link("Pod / rank drill-down: ${__field.labels.pod}" if p.kind != "table" else
                                            "Pod / rank drill-down: ${__data.fields.pod}",
                                            DRILL_SERIES if p.kind != "table" else DRILL_ROW)])
    if p.thresholds:
        builder = builder.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
            [Threshold(value=v, color=c) for v, c in p.thresholds]))
    if p.kind == "timeseries":
        if p.bars:
            builder = builder.draw_style(GraphDrawStyle.BARS).fill_opacity(80)
        elif p.thresholds:
            builder = builder.thresholds_style(common.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE))
    if p.kind == "table":
        builder = builder.with_transformation(DataTransformerConfig(
            id_val="organize", options={"excludeByName": {c: True for c in p.hide_columns}}))
    return builder


def _variables(d: dashboard.Dashboard) -> dashboard.Dashboard:
    d = d.with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    where = {"cluster": "", "namespace": 'cluster=~"$cluster"', "pod": 'cluster=~"$cluster", namespace=~"$namespace"'}
    helps = {
        "cluster": "The `cluster` external label your Prometheus adds; All also matches series without one.",
        "namespace": "Kubernetes namespace; All also matches processes outside Kubernetes.",
        "pod": "The serving pod; All also matches processes outside Kubernetes (no pod label).",
    }
    for name in FILTER_VARS:
        d = d.with_variable(
            dashboard.QueryVariable(name).label(name.capitalize()).description(helps[name]).datasource(DS)
            .query(f"label_values(sentinel_process_info{{{where[name]}}}, {name})" if where[name] else
                   f"label_values(sentinel_process_info, {name})")
            .include_all(True).all_value(".*").multi(True)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
    return d.with_variable(
        dashboard.ConstantVariable("runbook_base").label("Runbook base URL").value(RUNBOOK_BASE)
        .description("Prefix of the runbook links in the panel descriptions: set it to where you publish "
                     "docs/runbooks/ (e.g. https://github.com/ORG/sentinel/blob/main/docs/runbooks/)."))


def build(which: str) -> dict:
    uid, title = TITLES[which]
    d = (dashboard.Dashboard(title).uid(uid).tags(["sentinel", "gpu", "llm-serving"]).refresh("30s")
         .time("now-6h", "now").timezone("browser"))
    d = _variables(d)
    other = ("Pod / rank drill-down", RANK_URL) if which == "fleet" else ("Fleet overview", FLEET_URL)
    d = d.link(_link(*other).type(DashboardLinkType.LINK).include_vars(True).keep_time(True).icon("dashboard")
               .tooltip("Same cluster, namespace, pod and time range"))
    for p in _PANELS:
        if p.dash == which:
            d = d.with_panel(_panel(p))
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
