"""The live log and kernel-log paths, with real processes and a real daemon.

- `sentinel run --log-tap`: a hooked process logs a CUDA error and dies; the daemon reads the line from
  the tap's file and journals a fault record with the process's ring evidence (its probe's
  out-of-bounds page, hence the known issue), without a coredump. Its death, and an XID naming its
  pid in a kmsg-format file the daemon follows (``--kmsg FILE``, the reader it uses on /dev/kmsg),
  merge into that one record: one failure, one record.
- The tap never holds the host up: a stdout nobody reads (a full pipe) or a reader that has gone,
  and the host still writes all it wants and exits normally; the tap counts what it dropped.
- `--log-file GLOB`: a node's container log (CRI format) of a pod with one hooked process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from sentinel.daemon.watchers.logs import plain_line
from sentinel_hooks import layout
from sentinel_hooks.logtap import LogFileSink, Sink

GUARD_S = 90  # bounds a hang of the test, never the pace it asserts

# A hooked process with an off-by-one page index (the probe sees it), that then logs the CUDA error
# torch raises and dies of SIGABRT (as a CUDA fault's process usually does: abort in the driver).
FAULTING = r"""
import os, signal, sys, time, traceback, torch, sentinel_hooks as sh
table = torch.randint(0, 100, (8, 4), dtype=torch.int32)
table[3, 1] = 100  # one past the 100 pages
for _ in range(3):
    sh.check_paged_kv(table, 100, name="attn")
    sh.step()
print(os.getpid(), flush=True)
sys.stdin.readline()
def forward():
    raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                       "asynchronously reported at some other API call, so the stacktrace below might be incorrect.")
try:
    forward()
except RuntimeError:
    traceback.print_exc()
sys.stderr.flush()
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGABRT)
"""


def _faults(h, base: str) -> list[dict]:
    res = h.run([h.sentinel, "triage", "--list", "--json", "--dir", base], env=h.env())
    return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else []


def _fault(h, base: str, fid: int) -> dict:
    res = h.run([h.sentinel, "triage", "--fault", str(fid), "--json", "--dir", base], env=h.env())
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_logged_cuda_error_its_death_and_its_xid_are_one_fault_record(h, tmp_path: Path) -> None:
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    d = h.daemon(args=("--no-nvml", "--kmsg", str(kmsg)))
    proc = h.spawn([h.sentinel, "run", "--dir", h.dir, "--eager", "--log-tap", "--", h.python, "-c", FAULTING],
                   env=h.env(), stdin=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    proc.stdin.write("\n")
    proc.stdin.flush()

    # The log line alone: a record, attributed to the process, with its ring's evidence.
    rows = h.wait_for(lambda: _faults(h, h.dir), timeout=GUARD_S, interval=0.2, what="the fault record of the logged error")
    assert len(rows) == 1
    rec = _fault(h, h.dir, rows[0]["id"])
    assert rec["source"] == "log" and rec["kind"] == "cuda" and rec["exception_class"] == "illegal_address"
    assert rec["identity"]["pid"] == pid
    assert "page_table_oob" in rec["evidence"]
    assert rec["known_issue"]["id"] == "paged-kv-page-index-off-by-one"
    assert rec["top_frame"] == "<string>:11 in forward"
    assert any(r["kind"] == "probe" for r in rec["last_records"])
    assert rec["core_path"] == "" and rec["log"]["lines"]

    # Its death: merged into it, not a record of its own.
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=GUARD_S) == 128 + 6  # sentinel run passes the command's death on
    h.wait_for(lambda: _metric(d.scrape(), "sentinel_fault_sightings_merged_total") >= 1, timeout=GUARD_S,
               what="the death merged into the record")
    # An XID in the kernel log naming its pid: evidence of the same record.
    with open(kmsg, "a") as f:
        f.write(f"3,2212,73581234,-;NVRM: Xid (PCI:0000:3b:00): 31, pid={pid}, name=python3, Ch 00000008, intr "
                "10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f29_5b8c9000. Fault is of type "
                "FAULT_PDE ACCESS_TYPE_VIRT_READ\n SUBSYSTEM=pci\n DEVICE=+pci:0000:3b:00.0\n")
    h.wait_for(lambda: _metric(d.scrape(), "sentinel_gpu_xid_errors_total", gpu="pci:0000:3b:00", xid="31") == 1,
               timeout=GUARD_S, what="the XID counted")
    h.wait_for(lambda: "xid_31" in _fault(h, h.dir, rows[0]["id"])["evidence"], timeout=GUARD_S, interval=0.2,
               what="the XID attached to the fault")
    rec = _fault(h, h.dir, rows[0]["id"])
    assert rec["seen_as"] == ["process_crash", "xid"]
    assert len(_faults(h, h.dir)) == 1
    scrape = d.scrape()
    assert _metric(scrape, "sentinel_kernel_log_xids_total") == 1
    assert sum(_metric(ln, "sentinel_faults_total") for ln in scrape.splitlines()
               if ln.startswith("sentinel_faults_total")) == 1


HOG = r"""
import os, sys
chunk = b"x" * 65535 + b"\n"
for _ in range(256):  # 16 MiB
    n = os.write(1, chunk)
    assert n == len(chunk)
print("done", file=sys.stderr, flush=True)
"""


def test_the_tap_never_blocks_the_host_on_a_full_pipe(h) -> None:
    r, w = os.pipe()  # nobody reads r: the pipe fills after 64 KiB
    try:
        res = subprocess.run([h.sentinel, "run", "--dir", h.dir, "--log-tap", "--", h.python, "-c", HOG],
                             env=h.env(), stdout=w, stderr=subprocess.PIPE, timeout=GUARD_S)
    finally:
        os.close(w)
        os.close(r)
    assert res.returncode == 0, res.stderr
    err = res.stderr.decode()
    assert "done" in err and re.search(r"dropped \d+ bytes of stdout", err), err


def test_the_tap_never_blocks_or_kills_the_host_when_its_reader_has_gone(h) -> None:
    r, w = os.pipe()
    os.close(r)  # the reader has gone: writes to w fail with EPIPE
    try:
        res = subprocess.run([h.sentinel, "run", "--dir", h.dir, "--log-tap", "--", h.python, "-c", HOG],
                             env=h.env(), stdout=w, stderr=subprocess.PIPE, timeout=GUARD_S)
    finally:
        os.close(w)
    assert res.returncode == 0, res.stderr
    logs = list(Path(layout.logs_dir(h.dir)).glob("*.log"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0  # the daemon's copy still has it


def test_a_container_log_is_followed_and_attributed_to_its_pod(h, tmp_path: Path) -> None:
    log_dir = tmp_path / "var" / "log" / "pods" / "serving_llm-0_6f1c9a" / "vllm"
    log_dir.mkdir(parents=True)
    log = log_dir / "0.log"
    log.write_text("2026-11-30T01:00:00.000000000Z stdout F INFO started\n")
    d = h.daemon(args=("--no-nvml", "--kmsg", "off", "--log-file", str(tmp_path / "var/log/pods/*/*/*.log")))
    proc = h.spawn_py("import os, sys, sentinel_hooks as sh\nsh.step()\nprint(os.getpid(), flush=True)\nsys.stdin.readline()",
                      env=h.hooked_env(SENTINEL_POD="llm-0", SENTINEL_NAMESPACE="serving"), stdin=subprocess.PIPE,
                      text=True)
    pid = int(proc.stdout.readline())
    h.wait_for(lambda: any(s.get("pid") == pid for s in h.status_json()), timeout=GUARD_S, what="the ring attached")
    with open(log, "a") as f:
        for line in ("Traceback (most recent call last):",
                     '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/gpu_model_runner.py", line 1520, '
                     "in execute_model",
                     "RuntimeError: CUDA error: an illegal memory access was encountered"):
            f.write(f"2026-11-30T01:00:01.{time.time_ns() % 10**9:09d}Z stderr F {line}\n")
    rows = h.wait_for(lambda: _faults(h, h.dir), timeout=GUARD_S, interval=0.2, what="the container log's fault")
    rec = _fault(h, h.dir, rows[0]["id"])
    assert rec["identity"]["pid"] == pid and rec["identity"]["pod"] == "llm-0"
    assert rec["top_frame"] == "vllm/v1/worker/gpu_model_runner.py:1520 in execute_model"
    assert _metric(d.scrape(), "sentinel_log_files_followed") == 1
    proc.stdin.write("\n")
    proc.stdin.flush()


def test_plain_line_unwraps_cri_and_docker_json_lines() -> None:
    assert plain_line("2026-11-30T01:00:01.123456789Z stderr F RuntimeError: x") == "RuntimeError: x"
    assert plain_line("2026-11-30T01:00:01.123456789+00:00 stdout P partial") == "partial"
    assert plain_line('{"log":"CUDA error: x\\n","stream":"stderr","time":"2026-11-30T01:00:01Z"}') == "CUDA error: x"
    assert plain_line('{"log": broken') == '{"log": broken'
    assert plain_line("[rank0]: RuntimeError: y") == "[rank0]: RuntimeError: y"


def test_tap_log_names_round_trip(tmp_path: Path) -> None:
    path = layout.tap_log_path(str(tmp_path), "node-1.example", 4242)
    assert layout.tap_log_pid(os.path.basename(path)) == ("node-1.example", 4242)
    assert layout.tap_log_pid("notes.txt") is None and layout.tap_log_pid("x.y.log") is None


def test_the_log_file_keeps_whole_lines_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "h.1.log"
    sink = LogFileSink(str(path), max_bytes=64)
    sink.put_stream("stdout", b"out-1 begins ")
    sink.put_stream("stderr", b"err-1\n")
    sink.put_stream("stdout", b"and ends\n")
    for i in range(8):
        sink.put_stream("stderr", f"line {i}\n".encode())
    sink.put_stream("stdout", b"no newline at the end")
    sink.flush_partial()
    sink.close(5)
    text = (tmp_path / "h.1.log.1").read_text() + path.read_text()
    assert "out-1 begins and ends\n" in text and "err-1\n" in text and "no newline at the end\n" in text
    assert path.stat().st_size <= 64 and sink.dropped == 0


def test_a_sink_that_cannot_keep_up_drops_and_counts() -> None:
    gate = __import__("threading").Event()

    class Stuck(Sink):
        def write(self, data: bytes) -> None:
            gate.wait(30)

    sink = Stuck("test", limit=100)
    for _ in range(10):
        sink.put(b"y" * 40)  # never blocks
    assert sink.dropped >= 40 * 7  # at most two 40-byte pieces fit behind the one being written
    gate.set()
    sink.close(5)
    assert sink.dropped + sink.written == 400


def test_a_rotated_syslog_file_is_followed(tmp_path: Path) -> None:
    """--kmsg on a text file the host's syslog writes: after logrotate renames it and a new one
    starts, the new file's XIDs are read (the watcher the daemon runs, polled by hand)."""
    from sentinel.daemon.config import DaemonConfig
    from sentinel.daemon.loop import Daemon

    kern = tmp_path / "kern.log"
    kern.write_text("Nov 30 01:00:00 node7 kernel: an old line\n")
    d = Daemon(DaemonConfig(base_dir=str(tmp_path / "s"), use_events=False, nvml=False, kmsg=str(kern)))
    try:
        line = "Nov 30 01:00:0{} node7 kernel: NVRM: Xid (PCI:0000:3b:00): {}, pid=4242, name=python3, Ch 00000008\n"
        with open(kern, "a") as f:
            f.write(line.format(1, 43))
        d.poll_once()
        kern.rename(tmp_path / "kern.log.1")
        kern.write_text(line.format(2, 31))
        d.kernel_log._next_rotation_check = 0.0
        d.poll_once()  # notices the rotation
        d.poll_once()  # reads the new file
        assert d.kernel_log.xids == 2
        assert {(gpu, xid) for gpu, xid, _ns, _pod in d.snapshot.xids} == {("pci:0000:3b:00", 43), ("pci:0000:3b:00", 31)}
    finally:
        d.close()


def test_a_logged_error_then_its_gpu_coredump_are_one_record(h, tmp_path: Path) -> None:
    """The order a CUDA fault usually shows: torch's error line first (the log watcher's record, paged),
    the GPU coredump seconds later (cuda-gdb's record). The coredump's kernel and report join the
    log's record; no second record. cuda-gdb is a stand-in here that prints a real H100 transcript
    (tests/helpers/fake_cuda_gdb.py); the GPU suite runs the real one (tests/gpu/test_faults_cuda.py)."""
    import socket
    import stat
    import sys

    debugger = tmp_path / "cuda-gdb"
    debugger.write_text(f"#!/bin/sh\nexec {sys.executable} {h.helpers / 'fake_cuda_gdb.py'} \"$@\"\n")
    debugger.chmod(debugger.stat().st_mode | stat.S_IEXEC)
    h.daemon(args=("--no-nvml", "--kmsg", "off", "--cuda-gdb", str(debugger)))
    code = ("import os, sys, sentinel_hooks as sh\nsh.step()\nprint(os.getpid(), flush=True)\nsys.stdin.readline()\n"
            "print('RuntimeError: CUDA error: an illegal memory access was encountered', file=sys.stderr, flush=True)\n"
            "sys.stdin.readline()\n")
    proc = h.spawn([h.sentinel, "run", "--dir", h.dir, "--eager", "--log-tap", "--", h.python, "-c", code],
                   env=h.env(), stdin=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    proc.stdin.write("\n")
    proc.stdin.flush()
    rows = h.wait_for(lambda: _faults(h, h.dir), timeout=GUARD_S, interval=0.2, what="the log's record")
    assert _fault(h, h.dir, rows[0]["id"])["source"] == "log"
    cores = Path(h.dir) / "cores"
    cores.mkdir(exist_ok=True)
    (cores / f"core_{socket.gethostname()}_{pid}_{int(time.time())}.nvcudmp").write_bytes(
        b"TRANSCRIPT cuda-gdb-illegal-address.txt\n" + b"\0" * 4096)
    h.wait_for(lambda: "coredump" in _fault(h, h.dir, rows[0]["id"]).get("seen_as", []), timeout=GUARD_S,
               interval=0.2, what="the coredump merged into the log's record")
    rec = _fault(h, h.dir, rows[0]["id"])
    assert rec["source"] == "log" and rec["kernel_family"] == "paged_gather" and rec["gdb"]["exception"]
    assert rec["core_path"].endswith(".nvcudmp") and len(_faults(h, h.dir)) == 1
    proc.stdin.write("\n")
    proc.stdin.flush()


def test_a_fifo_planted_at_the_log_path_is_refused_at_once(tmp_path: Path) -> None:
    """Someone in SENTINEL_GROUP can plant a FIFO at the tap's predictable name: opening it must not
    block (the host's output would then stall behind it)."""
    import pytest

    fifo = tmp_path / "node.42.log"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        LogFileSink(str(fifo))


def test_a_failure_followed_by_many_lines_at_once_is_read(h, tmp_path: Path) -> None:
    """The failure's traceback is kept as it was when its first line came, however many lines follow
    in the same read (a chatty death, a backlog)."""
    d = h.daemon(args=("--no-nvml", "--kmsg", "off", "--log-file", str(tmp_path / "*.log")))
    log = tmp_path / "server.log"
    log.write_text("")
    h.wait_for(lambda: _metric(d.scrape(), "sentinel_log_files_followed") == 1, timeout=GUARD_S, what="followed")
    with open(log, "a") as f:
        f.write('Traceback (most recent call last):\n  File "/srv/app/serve.py", line 7, in step\n'
                "RuntimeError: CUDA error: an illegal memory access was encountered\n")
        f.write("".join(f"INFO aborted request {i}\n" for i in range(2000)))
    rows = h.wait_for(lambda: _faults(h, h.dir), timeout=GUARD_S, interval=0.2, what="the failure's record")
    assert _fault(h, h.dir, rows[0]["id"])["top_frame"] == "/srv/app/serve.py:7 in step"


def test_a_restarted_daemon_does_not_record_a_logged_failure_again(h, tmp_path: Path) -> None:
    d = h.daemon(args=("--no-nvml", "--kmsg", "off"))
    res = h.run([h.sentinel, "run", "--dir", h.dir, "--log-tap", "--", h.python, "-c",
                 "import sys; print('RuntimeError: CUDA error: misaligned address', file=sys.stderr)"], env=h.env())
    assert res.returncode == 0
    h.wait_for(lambda: _faults(h, h.dir), timeout=GUARD_S, interval=0.2, what="the record")
    d.stop()
    d2 = h.daemon(args=("--no-nvml", "--kmsg", "off"))
    polls = _metric(d2.scrape(), "sentinel_daemon_polls_total")
    h.wait_for(lambda: _metric(d2.scrape(), "sentinel_daemon_polls_total") > polls + 20, timeout=GUARD_S,
               what="the restarted daemon's polls")
    assert len(_faults(h, h.dir)) == 1


def test_a_container_log_never_borrows_another_pods_process(h, tmp_path: Path) -> None:
    """Container pids repeat across pods: a pid= in pod A's log is never pod B's process of that pid."""
    other = h.spawn_py("import os, sys, sentinel_hooks as sh\nsh.step()\nprint(os.getpid(), flush=True)\nsys.stdin.readline()",
                       env=h.hooked_env(SENTINEL_POD="other-0", SENTINEL_NAMESPACE="serving"), stdin=subprocess.PIPE,
                       text=True)
    pid = int(other.stdout.readline())
    log_dir = tmp_path / "var" / "log" / "pods" / "serving_llm-0_6f1c9a" / "vllm"
    log_dir.mkdir(parents=True)
    log = log_dir / "0.log"
    log.write_text("")
    h.daemon(args=("--no-nvml", "--kmsg", "off", "--log-file", str(tmp_path / "var/log/pods/*/*/*.log")))
    h.wait_for(lambda: any(s.get("pid") == pid for s in h.status_json()), timeout=GUARD_S, what="the other pod's ring")
    with open(log, "a") as f:
        f.write(f"2026-11-30T01:00:01.000000000Z stderr F (VllmWorker rank=1 pid={pid}) ERROR 11-30 01:00:01 "
                "[multiproc_executor.py:1] RuntimeError: CUDA error: an illegal memory access was encountered\n")
    rows = h.wait_for(lambda: _faults(h, h.dir), timeout=GUARD_S, interval=0.2, what="the record")
    rec = _fault(h, h.dir, rows[0]["id"])
    assert rec["identity"]["pod"] == "llm-0" and rec["ring"] == "" and rec["last_records"] == []
    other.stdin.write("\n")
    other.stdin.flush()


def test_nvml_and_the_kernel_log_count_each_xid_once_and_a_storm_in_full(tmp_path: Path) -> None:
    """Each report of one source stands for one event of the other: alternating NVML and kernel-log
    reports of four XID 13s are four events, not one."""
    from sentinel.daemon.config import DaemonConfig
    from sentinel.daemon.loop import Daemon
    from sentinel.daemon.nvml import XidEvent

    d = Daemon(DaemonConfig(base_dir=str(tmp_path / "s"), use_events=False, nvml=False, kmsg=""))
    try:
        for i in range(4):
            t = 1000.0 + 2 * i
            d.gpus.record_xid(XidEvent("0", "", 13, (), t), source="nvml")
            d.gpus.record_xid(XidEvent("0", "", 13, (4242,), t + 0.1), source="kmsg", detail="SM exception")
        assert d.gpus.xid_counts[("0", 13, "", "")] == 4
    finally:
        d.close()


def test_out_of_memory_then_an_illegal_address_are_two_failures() -> None:
    from sentinel.triage import catalog, records

    cat = catalog.load([])
    oom = records.FaultRecord(source="log", exception="CUDA out of memory. Tried to allocate 2.00 GiB",
                              exception_class="").finish(cat)
    core = records.FaultRecord(source="coredump", exception="Warp Illegal Address", exception_class="",
                               kernel="paged_gather").finish(cat)
    death = records.FaultRecord(source="process_crash", exception="Fatal Python error: Aborted",
                                exception_class="").finish(cat)
    log = records.FaultRecord(source="log", exception="CUDA error: an illegal memory access was encountered",
                              exception_class="").finish(cat)
    assert not oom.compatible(core) and oom.compatible(death)
    assert log.compatible(core) and core.compatible(log) and log.compatible(death)


def test_a_symlink_planted_in_logs_is_never_followed(h, tmp_path: Path) -> None:
    """DIR/logs/ is writable by the hooked processes (their group): a link there to another file is not
    read, whatever that file holds."""
    d = h.daemon(args=("--no-nvml", "--kmsg", "off"))
    secret = tmp_path / "elsewhere.log"
    secret.write_text("")
    logs = Path(layout.logs_dir(h.dir))
    logs.mkdir(exist_ok=True)
    (logs / "node.4242.log").symlink_to(secret)
    polls = _metric(d.scrape(), "sentinel_daemon_polls_total")
    h.wait_for(lambda: _metric(d.scrape(), "sentinel_daemon_polls_total") > polls + 5, timeout=GUARD_S, what="polls")
    with open(secret, "a") as f:
        f.write("RuntimeError: CUDA error: an illegal memory access was encountered\n")
    polls = _metric(d.scrape(), "sentinel_daemon_polls_total")
    h.wait_for(lambda: _metric(d.scrape(), "sentinel_daemon_polls_total") > polls + 20, timeout=GUARD_S, what="polls")
    assert _faults(h, h.dir) == [] and _metric(d.scrape(), "sentinel_log_read_bytes_total") == 0
