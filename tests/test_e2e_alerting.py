"""End to end with the real servers: hooked workloads trip an invariant, hang a collective (a real
gloo job whose rank 1 stalls) and die of a CUDA fault (its coredump a stand-in read by the CI
stand-in for cuda-gdb, see tests/helpers/fake_cuda_gdb.py; the real path runs in tests/gpu/). The
daemon exports them, a real Prometheus evaluates the shipped rules and fires, a real Alertmanager
routes them with the shipped routes to a pager webhook (a local HTTP receiver standing in for
PagerDuty): one page per group (per signature for faults), with the runbook in it; and when the
fault stops, the page resolves.

Only the test config is short: scrape and evaluation every second, rule windows of 20 s instead
of minutes (rewritten in a temp copy of the rules), Alertmanager's group timers in seconds.

Nothing here waits on a clock for the scenario to move on: the faulty table stays bad until the
test fixes it (a file), the hung collective stays hung (gloo's own timeout pushed out of reach),
the workloads run until the test stops them, and what Prometheus did (pending, then firing) is
read back from its own history rather than caught live. The waits' deadlines only bound a hang.
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

WORKLOAD = r"""
import os, time, torch, sentinel_hooks as sh
table = torch.randint(0, 100, (8, 4), dtype=torch.int32)
fixed, stop = os.environ["FIX_FILE"], os.environ["STOP_FILE"]
end = time.monotonic() + 900  # an orphan guard only: the test stops it
while not os.path.exists(stop) and time.monotonic() < end:
    table[2, 1] = 5 if os.path.exists(fixed) else 100   # the off-by-one until the test fixes it
    sh.check_paged_kv(table, 100, name="attn")
    sh.step()
    time.sleep(0.05)
"""


# Dies of a CUDA fault: the test writes its "coredump" (a stand-in naming a real H100 transcript)
# where the driver would, then lets it raise what torch raises after an illegal address.
FAULTING = r"""
import sys, torch, sentinel_hooks as sh
table = torch.randint(0, 100, (8, 4), dtype=torch.int32)
table[3, 1] = 99   # the last page: at capacity, the evidence the catalog matches this fault on
for _ in range(3):
    sh.step()
    sh.check_paged_kv(table, 100, name="attn")
print("ready", flush=True)
sys.stdin.readline()
raise RuntimeError("CUDA error: an illegal memory access was encountered")
"""


class Pager(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Pager.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _short_rules(tmp: Path) -> Path:
    text = (REPO / "deploy" / "prometheus" / "sentinel-alerts.rules.yml").read_text()
    text = re.sub(r"\[(5|10|15)m\]", "[20s]", text)
    text = re.sub(r"offset 10m", "offset 20s", text)
    text = re.sub(r"for: \d+m", "for: 3s", text)
    out = tmp / "alerts.rules.yml"
    out.write_text(text)
    shutil.copy(REPO / "deploy" / "prometheus" / "collective-skew.rules.yml", tmp / "skew.rules.yml")
    return out


def _am_config(tmp: Path, pager_url: str) -> Path:
    """The shipped routes, grouping and inhibitions; receivers pointed at the local pager."""
    text = (REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text()
    text = text.replace("group_wait: 30s", "group_wait: 1s").replace("group_interval: 5m", "group_interval: 2s")
    text = re.sub(r"    pagerduty_configs:\n(?:      .*\n|        .*\n|          .*\n)+", "", text)
    text = re.sub(r"url: http://\S+", f"url: {pager_url}", text)
    out = tmp / "alertmanager.yml"
    out.write_text(text)
    return out


HANG_GUARD_S = 180  # a wait's deadline: bounds a hang of the test, never the scenario's pace


def _wait(pred, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def test_fault_pages_once_per_group_with_runbook_and_resolves(h, tmp_path):
    assert PROMETHEUS and ALERTMANAGER, "CI must install prometheus and prometheus-alertmanager (make tools)"
    Pager.received = []
    pager = HTTPServer(("127.0.0.1", 0), Pager)
    threading.Thread(target=pager.serve_forever, daemon=True).start()
    procs: list[subprocess.Popen] = []
    job = None
    try:
        debugger = tmp_path / "cuda-gdb"
        debugger.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'helpers' / 'fake_cuda_gdb.py'} \"$@\"\n")
        debugger.chmod(debugger.stat().st_mode | stat.S_IEXEC)
        daemon = h.daemon(args=("--cuda-gdb", str(debugger), "--hang-floor", "3", "--no-nvml"))
        am_port, prom_port = h.free_port(), h.free_port()
        am_cfg = _am_config(tmp_path, f"http://127.0.0.1:{pager.server_port}/pager")
        procs.append(subprocess.Popen(
            [ALERTMANAGER, f"--config.file={am_cfg}", f"--storage.path={tmp_path / 'am'}",
             f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "am.log", "w")))
        rules = _short_rules(tmp_path)
        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s, external_labels: {{cluster: test}}}}
rule_files: [{rules}, {tmp_path / 'skew.rules.yml'}]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]}}]
scrape_configs:
  - job_name: sentinel
    static_configs: [{{targets: ['127.0.0.1:{daemon.port}']}}]
""")
        procs.append(subprocess.Popen(
            [PROMETHEUS, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "w")))

        # Two ranks of one job trip the same check, until the test fixes the table.
        fix, stop = tmp_path / "fix", tmp_path / "stop"
        for rank in (0, 1):
            env = h.env(RANK=str(rank), SENTINEL_JOB="e2e", FIX_FILE=str(fix), STOP_FILE=str(stop))
            h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", WORKLOAD], env=env)
        # A 2-rank gloo job whose rank 1 stops joining all_reduce #6 (its host loop sleeps). Rank 0
        # waits on it for as long as the test runs: gloo's timeout, which would end the hang, is an hour.
        port = h.free_port()
        job = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-m", "torch.distributed.run",
                       "--nproc-per-node", "2", "--master-port", str(port), "--monitor-interval", "1",
                       str(h.helpers / "gloo_ranks.py"), str(port), "40", "6", "1", "sleep"],
                      env=h.env(SENTINEL_JOB="e2e-hang", OMP_NUM_THREADS="1", GLOO_TIMEOUT_S="3600"),
                      start_new_session=True)
        faulting = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", FAULTING],
                           env=h.env(SENTINEL_JOB="e2e-fault"), stdin=subprocess.PIPE, text=True)
        assert faulting.stdout.readline().strip() == "ready"
        cores = os.path.join(h.dir, "cores")
        os.makedirs(cores, exist_ok=True)
        with open(os.path.join(cores, f"core_{socket.gethostname()}_{faulting.pid}_{int(time.time())}.nvcudmp"),
                  "wb") as f:
            f.write(b"TRANSCRIPT cuda-gdb-illegal-address.txt\n" + b"\0" * 4096)
        faulting.stdin.write("\n")
        faulting.stdin.flush()
        assert faulting.wait(timeout=30) == 1

        def alert_state(name: str):
            try:
                data = json.loads(h.fetch(f"http://127.0.0.1:{prom_port}/api/v1/alerts"))
            except OSError:
                return None
            return [a for a in data["data"]["alerts"] if a["labels"]["alertname"] == name]

        _wait(lambda: alert_state("SentinelPageIndexOutOfBounds"), HANG_GUARD_S, "the alert in Prometheus")
        # Both ranks' alerts land in one group, so in one notification (the group may first be
        # paged with one rank, if the other's alert fires a moment later).
        firing = _wait(lambda: [m for m in Pager.received if m["status"] == "firing" and m["receiver"] == "pager"
                                and m["groupLabels"].get("alertname") == "SentinelPageIndexOutOfBounds"
                                and {a["labels"].get("rank") for a in m["alerts"]} == {"0", "1"}], HANG_GUARD_S,
                       "a page")
        page = firing[0]
        assert page["groupLabels"]["alertname"] == "SentinelPageIndexOutOfBounds"
        assert page["commonAnnotations"]["runbook_url"] == "docs/runbooks/page-index-out-of-bounds.md"
        assert page["commonLabels"]["severity"] == "critical"

        # The CUDA fault pages once, by signature, with the known issue and the runbook.
        fault_pages = _wait(lambda: [m for m in Pager.received if m["status"] == "firing" and m["receiver"] == "pager"
                                     and m["groupLabels"].get("alertname") == "SentinelCudaFault"], HANG_GUARD_S,
                            "the fault page")
        fault = fault_pages[0]
        assert re.fullmatch(r"[0-9a-f]{8,}", fault["groupLabels"]["signature"]), fault["groupLabels"]
        assert fault["commonLabels"]["known_issue"] == "paged-kv-page-index-off-by-one"
        assert fault["commonLabels"]["exception"] == "illegal_address"
        assert fault["commonAnnotations"]["runbook_url"] == "docs/runbooks/cuda-fault.md"
        # The hang pages with its culprit: rank 1, whose host loop stalled.
        hang = _wait(lambda: [m for m in Pager.received if m["status"] == "firing" and m["receiver"] == "pager"
                              and m["groupLabels"].get("alertname") == "SentinelCollectiveHang"], HANG_GUARD_S,
                     "the hang page")[0]
        assert {(a["labels"]["rank"], a["labels"]["reason"]) for a in hang["alerts"]} == {("1", "host_stall")}
        assert hang["commonAnnotations"]["runbook_url"] == "docs/runbooks/collective-hang.md"

        # The dashboards' queries, on the same live Prometheus during the faults: each is accepted,
        # and every panel this scenario can feed shows series. Only the XID panel stays empty:
        # XIDs come from the GPU driver through NVML, and this machine has no GPU.
        sys.path.insert(0, str(REPO / "dashboards"))
        import build
        from test_dashboards import promql

        fed = {title for _dash, title, _kind, _queries in build.PANELS} - {"GPU XIDs"}
        for _dash, title, _kind, queries in build.PANELS:
            for expr, _legend in queries:
                url = f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + __import__("urllib.parse").parse.quote(promql(expr))
                data = json.loads(h.fetch(url))
                assert data["status"] == "success", (title, data)
                if title in fed:
                    assert data["data"]["result"], (title, expr)

        # The fix leaves the table's highest page index in bounds but near the end (headroom under
        # 64 pages): the headroom warning, which has a `for:`, goes pending first, then firing. Both
        # states are read from Prometheus's own ALERTS series, so a slow poll here misses nothing.
        fix.touch()
        _wait(lambda: any(a["labels"].get("job_id") == "e2e" and a["state"] == "firing"
                          for a in alert_state("SentinelPageHeadroomLow") or []),
              HANG_GUARD_S, "SentinelPageHeadroomLow firing")
        history = json.loads(h.fetch(f"http://127.0.0.1:{prom_port}/api/v1/query?query=" + __import__("urllib.parse").parse.quote(
            'ALERTS{alertname="SentinelPageHeadroomLow",job_id="e2e"}[1h]')))["data"]["result"]
        first = {}
        for series in history:
            state = series["metric"]["alertstate"]
            first[state] = min([first.get(state, float("inf"))] + [float(t) for t, _v in series["values"]])
        assert set(first) == {"pending", "firing"} and first["pending"] < first["firing"], history

        # The fault stops: the alert resolves in Prometheus, and the pager is told.
        _wait(lambda: [m for m in Pager.received if m["status"] == "resolved" and m["receiver"] == "pager"
                       and m["groupLabels"].get("alertname") == "SentinelPageIndexOutOfBounds"], HANG_GUARD_S,
              "the resolution")
        assert not alert_state("SentinelPageIndexOutOfBounds")
        # PNG previews of the dashboards from the same queries, over the whole scenario (fault and
        # fix); kept in the repository when SENTINEL_PREVIEW_DIR says where.
        import preview

        out_dir = os.environ.get("SENTINEL_PREVIEW_DIR") or str(tmp_path)
        pngs = preview.render(f"http://127.0.0.1:{prom_port}", out_dir, minutes=1.5)
        assert all(p.stat().st_size > 10_000 for p in pngs)
        pages = [m for m in Pager.received if m["receiver"] == "pager"
                 and m["groupLabels"].get("alertname") == "SentinelPageIndexOutOfBounds" and m["status"] == "firing"]
        # One page per group, not one per sample (about 30 scrapes of the fault): Alertmanager only
        # notifies again when the group changes (a rank joins it, or one resolves while another
        # still fires), so no two notifications carry the same alerts in the same states.
        states = [frozenset((a["fingerprint"], a["status"]) for a in p["alerts"]) for p in pages]
        assert len(states) == len(set(states)) and len(pages) <= 4, [sorted(s) for s in states]
        assert len([m for m in Pager.received if m["status"] == "firing" and m["receiver"] == "pager"
                    and m["groupLabels"].get("alertname") == "SentinelCudaFault"]) == 1
    finally:
        (tmp_path / "stop").touch()
        if job is not None:
            try:
                os.killpg(job.pid, signal.SIGKILL)  # torchrun and its ranks
            except ProcessLookupError:
                pass
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        pager.shutdown()
