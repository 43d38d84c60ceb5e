"""The on-call path as shipped, end to end with the real servers: hooked workloads in two "pods"
(two sidecars, each its own scrape target), a real Prometheus evaluating the shipped rules, a real
Alertmanager routing them with the shipped routes, grouping and page templates to a PagerDuty
Events v2 endpoint and the two webhooks (local HTTP receivers standing in for PagerDuty and the
bridges).

What it shows:
- pages with a title (never empty, also when a group holds several alerts) and every firing
  alert's labels (pod, rank, host, pid, signature) in their details;
- a separate page per pod: pod B's out-of-bounds index is a new incident, not an update to pod A's;
- a CUDA fault pages by signature, with the process it hit; a collective hang with its culprit;
- a SIGKILLed process is a "killed" warning for the team, never a CUDA-fault page;
- a process that stops (the stale one) has its page resolve once its window passes, and its series
  end after --dead-ttl;
- the blind-spot alerts fire in their cases: a refused setting, an adapter that switched off, a
  ring the sidecar refuses, a sidecar with no hooked process, a sidecar that is down;
- every dashboard query runs on this Prometheus, and the panels the scenario feeds have series.

The timers that make a page fast are the shipped ones: 10 s scrapes and rule evaluations,
Alertmanager's 5 s group_wait for pages. Only windows and `for:` durations are shortened (in a temp
copy of the rules: [5m] -> [20s] ...), the team route's timers too, and the sidecars' --dead-ttl.
Bug-to-page times are printed, and written to $SENTINEL_BENCH_OUT when set (bench/page_latency.py
records them in bench/RESULTS.md); they are measured, not asserted: the test's deadlines only bound
a hang.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(
    (PROMETHEUS is None or ALERTMANAGER is None) and not os.environ.get("CI"),
    reason="prometheus / alertmanager not installed (make tools)",
)
sys.path.insert(0, str(REPO / "dashboards"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

HANG_GUARD_S = 240  # a wait's deadline: bounds a hang of the test, never the scenario's pace
DEAD_TTL_S = 30  # the sidecars' --dead-ttl here (default 600)

# An off-by-one page index from the start, or from when BAD_FILE appears; it writes BUG_MARK (the
# wall time) the first time it hands the bad table to the probe, and runs until STOP_FILE.
WORKLOAD = r"""
import os, time, torch, sentinel_hooks as sh
table = torch.randint(0, 90, (8, 4), dtype=torch.int32)
bad_file, stop, mark = os.environ.get("BAD_FILE", ""), os.environ["STOP_FILE"], os.environ["BUG_MARK"]
end, noted = time.monotonic() + 900, False  # an orphan guard only: the test stops it
while not os.path.exists(stop) and time.monotonic() < end:
    bad = not bad_file or os.path.exists(bad_file)
    table[2, 1] = 100 if bad else 5
    if bad and not noted:
        noted = True
        with open(mark + ".tmp", "w") as f:
            f.write(repr(time.time()))
        os.rename(mark + ".tmp", mark)
    sh.check_paged_kv(table, 100, name="attn")
    sh.step()
    time.sleep(0.05)
"""

# Steps until STOP_FILE; SIGKILLed by the test (what an OOM kill looks like).
STEPPER = r"""
import os, time, sentinel_hooks as sh
while not os.path.exists(os.environ["STOP_FILE"]):
    sh.step()
    time.sleep(0.05)
"""

# An adapter whose hook point is missing (a framework release that moved it): the real adapter
# machinery switches it off and counts it, and the process serves on.
ADAPTER_OFF = r"""
import os, time, sentinel_hooks as sh
from sentinel_hooks.adapters.base import Adapter, HookPoint
class Drifted(Adapter):
    name, module, distributions, verified_versions = "drifted", "json", ("drifted",), ("1",)
    def hook_points(self):
        return [HookPoint("json", lambda m: self.patch(m, "no_such_function", lambda f: f))]
Drifted().instrument()
while not os.path.exists(os.environ["STOP_FILE"]):
    sh.step()
    time.sleep(0.05)
"""

# Dies of a CUDA fault: the test writes its "coredump" (a stand-in naming a real H100 transcript)
# where the driver would, then lets it raise what torch raises after an illegal address.
FAULTING = r"""
import sys, time, torch, sentinel_hooks as sh
table = torch.randint(0, 100, (8, 4), dtype=torch.int32)
table[3, 1] = 99   # the last page: at capacity, the evidence the catalog matches this fault on
for _ in range(3):
    sh.step()
    sh.check_paged_kv(table, 100, name="attn")
print("ready", flush=True)
sys.stdin.readline()
print(repr(time.time()), flush=True)
raise RuntimeError("CUDA error: an illegal memory access was encountered")
"""


# A log-only CUDA fault: no coredump; the process logs the error torch raises (through `sentinel run
# --log-tap`) and dies of it. Prints its pid, then the wall time of the error.
LOG_ONLY = r"""
import os, sys, time, sentinel_hooks as sh
for _ in range(3):
    sh.step()
print(os.getpid(), flush=True)
sys.stdin.readline()
print(repr(time.time()), flush=True)
raise RuntimeError("CUDA error: misaligned address\nCompile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")
"""


class Receiver(BaseHTTPRequestHandler):
    """PagerDuty's Events v2 API (/pd) and the pager and team webhooks (/pager, /team)."""

    received: list[tuple[str, float, dict]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.received.append((self.path, time.time(), json.loads(body)))
        self.send_response(202 if self.path == "/pd" else 200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "success", "message": "Event processed"}')

    def log_message(self, *args) -> None:
        pass


def pd_events(action: str | None = None) -> list[tuple[float, dict]]:
    return [(t, m) for path, t, m in Receiver.received if path == "/pd" and (action is None or m["event_action"] == action)]


def webhook(path: str, alertname: str, status: str = "firing") -> list[tuple[float, dict]]:
    return [(t, m) for p, t, m in Receiver.received if p == path and m["status"] == status
            and m["groupLabels"].get("alertname") == alertname]


def _short_rules(tmp: Path) -> Path:
    """The shipped rules with their windows and `for:` durations shortened (intervals kept)."""
    text = (REPO / "deploy" / "prometheus" / "sentinel-alerts.rules.yml").read_text()
    for long, short in (("[5m]", "[20s]"), ("[10m]", "[30s]"), ("[15m]", "[20s]"), ("[1h]", "[1m]"),
                        ("offset 5m", "offset 20s"), ("offset 10m", "offset 30s")):
        text = text.replace(long, short)
    text = re.sub(r"for: \d+m", "for: 3s", text)
    out = tmp / "alerts.rules.yml"
    out.write_text(text)
    shutil.copy(REPO / "deploy" / "prometheus" / "collective-skew.rules.yml", tmp / "skew.rules.yml")
    return out


def _am_config(tmp: Path, base: str) -> Path:
    """The shipped routes, grouping, templates and inhibitions; receivers pointed here. The pager
    route's timers are the shipped ones; the team's are shortened."""
    text = (REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text()
    key = tmp / "routing-key"
    key.write_text("e2e-routing-key-0123456789abcdef")
    text = text.replace("/etc/alertmanager/secrets/pagerduty/routing-key", str(key))
    text = text.replace("/etc/alertmanager/templates/*.tmpl", str(REPO / "deploy" / "alertmanager" / "templates" / "*.tmpl"))
    text = text.replace("        severity: critical\n", f"        severity: critical\n        url: {base}/pd\n")
    text = text.replace("http://pager-bridge.monitoring.svc:8080/sentinel", f"{base}/pager")
    text = text.replace("http://team-webhook.monitoring.svc:8080/sentinel", f"{base}/team")
    assert text.count("group_wait: 30s") == 1 and text.count("group_interval: 5m") == 1
    text = text.replace("group_wait: 30s", "group_wait: 5s").replace("group_interval: 5m", "group_interval: 20s")
    out = tmp / "alertmanager.yml"
    out.write_text(text)
    return out


def _wait(pred, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; received: " +
                         json.dumps([(p, m.get("status") or m.get("event_action"),
                                      (m.get("groupLabels") or {}).get("alertname") or m.get("payload", {}).get("summary"))
                                     for p, _t, m in Receiver.received])[-3000:])


def _mark(path: Path) -> float:
    return float(path.read_text())


def test_pages_are_right_fast_and_resolve(h, tmp_path):
    assert PROMETHEUS and ALERTMANAGER, "CI must install prometheus and prometheus-alertmanager (make tools)"
    Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    procs: list[subprocess.Popen] = []
    job = None
    stop = tmp_path / "stop"
    latency: dict[str, float] = {}
    try:
        debugger = tmp_path / "cuda-gdb"
        debugger.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'helpers' / 'fake_cuda_gdb.py'} \"$@\"\n")
        debugger.chmod(debugger.stat().st_mode | stat.S_IEXEC)
        dirs = {pod: str(tmp_path / pod) for pod in ("pod-a", "pod-b", "pod-c")}
        sidecar = ("--no-nvml", "--hang-floor", "3", "--dead-ttl", str(DEAD_TTL_S))
        daemons = {pod: h.daemon(base_dir=d, args=(*sidecar, "--cuda-gdb", str(debugger))) for pod, d in dirs.items()}

        def run(pod: str, code: str, **env: str) -> subprocess.Popen:
            e = h.env(SENTINEL_POD=pod, SENTINEL_NAMESPACE="e2e", STOP_FILE=str(stop), **env)
            return h.spawn([h.sentinel, "run", "--dir", dirs[pod], "--", h.python, "-c", code], env=e, text=True)

        # Pod A: two ranks with the off-by-one from the start, a process with a typo in SENTINEL_MODE,
        # an adapter whose hook point is missing, a 2-rank gloo job whose rank 1 stalls at all_reduce #6,
        # and a process that dies of a CUDA fault.
        for rank in (0, 1):
            run("pod-a", WORKLOAD, RANK=str(rank), SENTINEL_JOB="e2e", BUG_MARK=str(tmp_path / f"bug-a{rank}"))
        typo = run("pod-a", WORKLOAD, SENTINEL_MODE="contian", BAD_FILE=str(tmp_path / "never"),
                   BUG_MARK=str(tmp_path / "never-mark"))
        drifted = run("pod-a", ADAPTER_OFF)
        port = h.free_port()
        job = h.spawn([h.sentinel, "run", "--dir", dirs["pod-a"], "--", h.python, "-m", "torch.distributed.run",
                       "--nproc-per-node", "2", "--master-port", str(port), "--monitor-interval", "1",
                       str(h.helpers / "gloo_ranks.py"), str(port), "40", "6", "1", "sleep"],
                      env=h.env(SENTINEL_POD="pod-a", SENTINEL_NAMESPACE="e2e", SENTINEL_JOB="e2e-hang",
                                OMP_NUM_THREADS="1", GLOO_TIMEOUT_S="3600"), start_new_session=True)
        faulting = h.spawn([h.sentinel, "run", "--dir", dirs["pod-a"], "--", h.python, "-c", FAULTING],
                           env=h.env(SENTINEL_POD="pod-a", SENTINEL_NAMESPACE="e2e", SENTINEL_JOB="e2e-fault"),
                           stdin=subprocess.PIPE, text=True)
        # Pod B: the stale process (healthy until BAD_FILE, then out of bounds, then stopped), a process
        # the test SIGKILLs, and a file in rings/ that is no ring.
        b_stop = tmp_path / "stop-b"
        stale = h.spawn([h.sentinel, "run", "--dir", dirs["pod-b"], "--", h.python, "-c", WORKLOAD],
                        env=h.env(SENTINEL_POD="pod-b", SENTINEL_NAMESPACE="e2e", STOP_FILE=str(b_stop),
                                  BAD_FILE=str(tmp_path / "bad-b"), BUG_MARK=str(tmp_path / "bug-b")), text=True)
        killed = run("pod-b", STEPPER)
        log_only = h.spawn([h.sentinel, "run", "--dir", dirs["pod-b"], "--log-tap", "--", h.python, "-c", LOG_ONLY],
                           env=h.env(SENTINEL_POD="pod-b", SENTINEL_NAMESPACE="e2e", SENTINEL_JOB="e2e-log"),
                           stdin=subprocess.PIPE, text=True)
        log_only_pid = int(log_only.stdout.readline())
        # Pod C: a sidecar with nothing to watch.
        h.wait_for(lambda: len(h.rings(dirs["pod-a"])) >= 6 and len(h.rings(dirs["pod-b"])) == 3, timeout=HANG_GUARD_S,
                   what="the rings of pods A and B")
        Path(dirs["pod-b"], "rings", "junk.1.1.ring").write_bytes(os.urandom(8192))

        am_port, prom_port = h.free_port(), h.free_port()
        procs.append(subprocess.Popen(
            [ALERTMANAGER, f"--config.file={_am_config(tmp_path, base)}", f"--storage.path={tmp_path / 'am'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "am.log", "w")))
        rules = _short_rules(tmp_path)
        targets = "\n".join(f"      - targets: ['127.0.0.1:{d.port}']\n        labels: {{pod: {pod}, namespace: e2e}}"
                            for pod, d in daemons.items())
        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(f"""
global: {{scrape_interval: 10s, evaluation_interval: 10s, external_labels: {{cluster: test}}}}
rule_files: [{rules}, {tmp_path / 'skew.rules.yml'}]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]}}]
scrape_configs:
  - job_name: sentinel
    honor_labels: true   # the processes' own pod labels win over the target's (they agree here)
    static_configs:
{targets}
""")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "w")))

        def query(expr: str) -> list[dict]:
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + urllib.parse.quote(expr)
            data = json.loads(h.fetch(url))
            assert data["status"] == "success", data
            return data["data"]["result"]

        # The CUDA fault: the coredump lands, the process raises.
        assert faulting.stdout.readline().strip() == "ready"
        cores = os.path.join(dirs["pod-a"], "cores")
        os.makedirs(cores, exist_ok=True)
        with open(os.path.join(cores, f"core_{socket.gethostname()}_{faulting.pid}_{int(time.time())}.nvcudmp"),
                  "wb") as f:
            f.write(b"TRANSCRIPT cuda-gdb-illegal-address.txt\n" + b"\0" * 4096)
        faulting.stdin.write("\n")
        faulting.stdin.flush()
        fault_at = float(faulting.stdout.readline())

        # Pod A's out-of-bounds page.
        def oob_page(pod: str):
            return [(t, m) for t, m in pd_events("trigger") if "SentinelPageIndexOutOfBounds" in m["payload"]["summary"]
                    and f"on {pod}" in m["payload"]["summary"]]

        t_a, page_a = _wait(lambda: oob_page("pod-a"), HANG_GUARD_S, "pod A's out-of-bounds page")[0]
        latency["invariant_first_rank_s"] = t_a - min(_mark(tmp_path / "bug-a0"), _mark(tmp_path / "bug-a1"))
        # Now pod B goes out of bounds: its own page, a new incident.
        (tmp_path / "bad-b").touch()
        t_b, page_b = _wait(lambda: oob_page("pod-b"), HANG_GUARD_S, "pod B's out-of-bounds page")[0]
        latency["invariant_second_pod_s"] = t_b - _mark(tmp_path / "bug-b")
        assert page_b["dedup_key"] != page_a["dedup_key"]
        assert "pod=pod-b" in page_b["payload"]["custom_details"]["firing"]
        assert "pod=pod-a" not in page_b["payload"]["custom_details"]["firing"]

        # The CUDA fault pages by signature, with the process it hit.
        t_f, fault = _wait(lambda: [(t, m) for t, m in pd_events("trigger")
                                    if "SentinelCudaFault" in m["payload"]["summary"]], HANG_GUARD_S, "the fault page")[0]
        latency["cuda_fault_s"] = t_f - fault_at
        details = fault["payload"]["custom_details"]
        assert f"pid={faulting.pid}" in details["firing"] and "pod=pod-a" in details["firing"]
        assert details["known_issue"] == "paged-kv-page-index-off-by-one" and details["runbook"] == "docs/runbooks/cuda-fault.md"
        assert re.fullmatch(r"[0-9a-f]{12}", details["signature"]), details

        # The log-only fault: paged from its log line, with its signature and runbook.
        log_only.stdin.write("\n")
        log_only.stdin.flush()
        log_fault_at = float(log_only.stdout.readline())

        def log_pages():
            return [(t, m) for t, m in pd_events("trigger") if "SentinelCudaFault" in m["payload"]["summary"]
                    and f"pid={log_only_pid}" in m["payload"]["custom_details"]["firing"]]

        t_l, log_page = _wait(log_pages, HANG_GUARD_S, "the log-only fault's page")[0]
        latency["log_only_fault_s"] = t_l - log_fault_at
        details = log_page["payload"]["custom_details"]
        assert "misaligned_address" in log_page["payload"]["summary"] and "on pod-b" in log_page["payload"]["summary"]
        assert re.fullmatch(r"[0-9a-f]{12}", details["signature"]) and details["runbook"] == "docs/runbooks/cuda-fault.md"

        # The hang pages with its culprit: rank 1, whose host loop stalled.
        t_h, hang = _wait(lambda: [(t, m) for t, m in pd_events("trigger")
                                   if "SentinelCollectiveHang" in m["payload"]["summary"]], HANG_GUARD_S, "the hang page")[0]
        assert "rank=1" in hang["payload"]["custom_details"]["firing"] and "reason=host_stall" in hang["payload"]["custom_details"]["firing"]
        stalled = query('sentinel_process_heartbeat_timestamp_seconds{job_id="e2e-hang",rank="1"}')
        latency["collective_hang_s"] = t_h - float(stalled[0]["value"][1])

        # A SIGKILL is a "killed" warning for the team, never a CUDA-fault page.
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=30) == -signal.SIGKILL
        _wait(lambda: [m for _t, m in webhook("/team", "SentinelProcessKilled")
                       if any(a["labels"].get("pid") == str(killed.pid) for a in m["alerts"])], HANG_GUARD_S,
              "the killed process's warning")

        # The blind spots.
        for alertname, where, label, value in (
            ("SentinelHookConfigError", "/team", "pid", str(typo.pid)),
            ("SentinelAdapterOff", "/team", "pid", str(drifted.pid)),
            ("SentinelRingsRejected", "/team", "pod", "pod-b"),
            ("SentinelNoHookedProcess", "/team", "pod", "pod-c"),
        ):
            _wait(lambda a=alertname, w=where, k=label, v=value: [m for _t, m in webhook(w, a)
                                                                  if any(x["labels"].get(k) == v for x in m["alerts"])],
                  HANG_GUARD_S, f"{alertname} for {label}={value}")
        daemons["pod-c"].kill()
        t_down, down = _wait(lambda: [(t, m) for t, m in pd_events("trigger")
                                      if "SentinelDown" in m["payload"]["summary"]], HANG_GUARD_S, "the sidecar-down page")[0]
        assert "on pod-c" in down["payload"]["summary"]

        # The stale process stops: its alert resolves once its window has passed (the page is
        # resolved), and its series end after --dead-ttl.
        b_stop.touch()
        assert stale.wait(timeout=60) == 0
        _wait(lambda: [m for _t, m in pd_events("resolve") if m["dedup_key"] == page_b["dedup_key"]], HANG_GUARD_S,
              "pod B's page resolved")
        _wait(lambda: not query(f'sentinel_process_alive{{pid="{stale.pid}"}}'), HANG_GUARD_S,
              "the stopped process's series ended")

        # Every page had a title, and every trigger listed its firing alerts with their labels.
        events = pd_events()
        assert events and all(m["payload"]["summary"].strip() for _t, m in events), events
        for _t, m in pd_events("trigger"):
            lines = [ln for ln in m["payload"]["custom_details"]["firing"].splitlines() if ln.strip()]
            assert lines and int(m["payload"]["custom_details"]["num_firing"]) == len(lines), m
            for line in lines:
                labels = dict(re.findall(r"(\w+)=(\S*)", line.rsplit("[", 1)[1]))
                if "SentinelCollectiveHang" in m["payload"]["summary"]:
                    assert {"job_id", "pg", "rank", "reason"} <= set(labels), line
                else:
                    assert labels.get("pod") and labels.get("namespace") == "e2e", line
                    if "SentinelCudaFault" in m["payload"]["summary"] or "OutOfBounds" in m["payload"]["summary"]:
                        assert labels.get("pid") and labels.get("host"), line  # (and rank, where it has one)
                        assert labels.get("rank") or labels["pid"] in (str(faulting.pid), str(stale.pid),
                                                                                     str(log_only_pid)), line
        # No CUDA-fault page for anything but the two CUDA faults; no page at all for the kill. The
        # log-only fault paged once: its death, merged into its record, is no second page.
        for _t, m in pd_events("trigger"):
            assert f"pid={killed.pid}" not in m["payload"]["custom_details"]["firing"], m
        assert all(f"pid={faulting.pid}" in m["payload"]["custom_details"]["firing"]
                   or f"pid={log_only_pid}" in m["payload"]["custom_details"]["firing"]
                   for _t, m in pd_events("trigger") if "SentinelCudaFault" in m["payload"]["summary"])
        assert len(log_pages()) == 1 and log_only.wait(timeout=60) == 1

        # Every dashboard query runs here; the panels this scenario feeds return series.
        import build

        promql = build.to_promql

        quiet = {"GPU XIDs", "Processes not in observe mode", "Contained page-table entries",
                 "Fault consequences (deaths caused by another fault)"}
        for _dash, title, _kind, queries in build.PANELS:
            results = []
            for expr, _legend in queries:
                results += query(promql(expr, rate_interval="10m"))
            if title not in quiet:
                assert results, title
        # PNG previews of the dashboards from the same queries; kept in the repository when
        # SENTINEL_PREVIEW_DIR says where.
        import preview

        out_dir = os.environ.get("SENTINEL_PREVIEW_DIR") or str(tmp_path)
        pngs = preview.render(f"http://127.0.0.1:{prom_port}", out_dir, minutes=4)
        assert all(p.stat().st_size > 10_000 for p in pngs)
    finally:
        stop.touch()
        (tmp_path / "stop-b").touch()
        if job is not None:
            h.kill_tree(job.pid)  # torchrun and its ranks (each in a session of its own)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        server.shutdown()
    print("bug to page (shipped 10 s scrape and rule intervals, 5 s group_wait): "
          + ", ".join(f"{k} {v:.1f} s" for k, v in latency.items()))
    if os.environ.get("SENTINEL_BENCH_OUT"):
        Path(os.environ["SENTINEL_BENCH_OUT"]).write_text(json.dumps(latency, indent=1))
