"""`sentinel demo`: the daemon and a real hooked PyTorch workload, live, on this machine.

Three "ranks" of a tiny paged-KV decode loop run under `sentinel run`, each calling the probes
every step. Rank 0 is healthy. Rank 1 gets seed 000's off-by-one page index, then seed 001's
DP-padding batch mismatch. Rank 2 runs on seed 002's degenerate KV stride and is SIGKILLed
part-way (as an OOM kill or a fatal fault would). The daemon shows each as it happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable

from sentinel import logjson
from sentinel.cli.status import collect, render_table
from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.exporter.collectors import build_registry
from sentinel.exporter.server import serve
from sentinel.injection import injected_env
from sentinel.triage.hangs import HangConfig

__all__ = ["WORLD", "SCENARIOS", "PHASE_GUARD_S", "run_demo"]

WORLD = 3
SCENARIOS = {0: ["healthy"], 1: ["offbyone", "dp_padding"], 2: ["stride"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _line(daemon: Daemon, t: float) -> str:
    parts = []
    for p in sorted(daemon.snapshot.processes, key=lambda p: p.identity.get("rank", 0)):
        state = "alive" if p.alive else p.exit.upper()
        room = f" headroom {p.headroom[0]:>3}" if p.headroom else ""
        bad = sum(p.violations.values())
        parts.append(f"r{p.identity.get('rank')} step {p.step:5d} {state}{room} viol {bad}")
    return f"  t={t:4.1f}s  " + " | ".join(parts) if parts else f"  t={t:4.1f}s  (waiting for rings)"


def _events(daemon: Daemon, seen: set) -> list[str]:
    """New things worth a line of their own: a check failing for the first time, a death."""
    out = []
    for p in daemon.snapshot.processes:
        rank = p.identity.get("rank")
        for check in sorted(p.violations):
            if p.violations[check] and (p.ring, check) not in seen:
                seen.add((p.ring, check))
                out.append(f"  !! rank {rank}: {check} (seen by step {p.step})")
        if not p.alive and (p.ring, "end") not in seen:
            seen.add((p.ring, "end"))
            out.append(f"  !! rank {rank}: process {p.exit} at step {p.step}; its ring keeps its last records")
    return out


# Phases wait for what they show, not for a fixed time: a slow machine only takes longer. These
# guards only end a phase that would otherwise never end.
PHASE_GUARD_S = 300.0


def _hang_phase(daemon: Daemon, env: dict) -> str:
    """Three gloo ranks all-reduce every step; rank 1 stops joining at collective #30."""
    print("\nPhase 2: a collective hang. 3 gloo ranks all-reduce every step; rank 1 stops joining")
    print("collective #30 (its host loop is stuck). PyTorch would wait for its timeout (10 min by default).\n")
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        e = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), SENTINEL_JOB="demo-tp")
        # --duration is only a bound: the ranks block at #30 and stay there until the demo stops them.
        cmd = [sys.executable, "-m", "sentinel.demo.workload", "--duration", str(PHASE_GUARD_S), "--gloo-port",
               str(port), "--hang-rank", "1", "--hang-at", "30", "--step-ms", "20"]
        # stderr off: when the demo stops them, the waiting ranks' gloo reports the lost peer.
        procs.append(subprocess.Popen(cmd, env=e, stderr=subprocess.DEVNULL))
    t0 = time.monotonic()
    blocked_at = None
    result = "no hang was named (unexpected)"
    try:
        while time.monotonic() - t0 < PHASE_GUARD_S and any(p.poll() is None for p in procs):
            time.sleep(0.2)
            if blocked_at is None and any(
                p.identity.get("job") == "demo-tp" and p.groups.get("0", {}).get("last_enqueued") == 30
                for p in daemon.snapshot.processes
            ):
                blocked_at = time.monotonic()
                print(f"  t={blocked_at - t0:4.1f}s  ranks 0 and 2 enqueued collective #30 and wait", flush=True)
            hang = next((h for h in daemon.snapshot.hangs if h.job == "demo-tp"), None)
            if hang is not None:
                took = time.monotonic() - (blocked_at or t0)
                who = ", ".join(f"rank {c.rank} ({c.reason}: {c.detail})" for c in hang.culprits)
                print(f"  !! collective hang in group {hang.group} at #{hang.seq}: {who}", flush=True)
                print(f"     named {took:.1f}s after the others blocked (threshold {hang.threshold_s:.1f}s, adaptive)")
                result = f"collective hang at #{hang.seq}: culprit " + ", ".join(f"rank {c.rank}" for c in hang.culprits) + \
                    f", named in {took:.1f}s"
                break
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        print("  (the demo stops the three hung ranks now)")
        _settle(daemon, lambda: all(not p.alive for p in daemon.snapshot.processes if p.identity.get("job") == "demo-tp"))
    return result


def _settle(daemon: Daemon, done: Callable[[], bool], guard_s: float = 30.0) -> None:
    """Wait until the daemon's snapshot shows ``done()`` (bounded by ``guard_s``)."""
    deadline = time.monotonic() + guard_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


def _crash_phase(daemon: Daemon, env: dict) -> str:
    """A rank that crashes natively after an off-by-one page index: the fault record."""
    from sentinel.triage.records import FaultRecord
    from sentinel.triage.report import render_report

    print("\nPhase 3: a crash. A rank serves with an off-by-one page index, then segfaults in native code.")
    print("The daemon builds the fault record from its faulthandler file and its last ring records.\n")
    e = dict(env, RANK="0", WORLD_SIZE="1", SENTINEL_JOB="demo-crash")
    # The off-by-one starts at step 100; the crash comes after it, at step 400 (--duration is a bound).
    cmd = [sys.executable, "-m", "sentinel.demo.workload", "--duration", str(PHASE_GUARD_S), "--scenario",
           "offbyone", "--crash-at", "400", "--step-ms", "2"]
    proc = subprocess.Popen(cmd, env=e, stderr=subprocess.DEVNULL)  # its own stderr: the crash itself
    proc.wait(timeout=PHASE_GUARD_S + 60)
    deadline = time.monotonic() + 120  # the crash grace (5 s) and a few polls, bounded
    while time.monotonic() < deadline:
        rows = [r for r in daemon.journal.faults(limit=20) if r["identity"].get("job") == "demo-crash"]
        if rows:
            rec = FaultRecord.from_dict(rows[0])
            print("  " + render_report(rec).replace("\n", "\n  "))
            print(f"\n  (sentinel triage --dir DIR --fault {rec.id} shows it again; --json for machines)")
            return f"fault record #{rec.id}: {rec.exception_class} at {rec.top_frame or '?'}, signature {rec.signature}"
        time.sleep(0.3)
    return "no fault record was made (unexpected)"


def _gpu_present() -> bool:
    try:  # NVML, not torch: the daemon side never imports torch
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def _gpu_phase(daemon: Daemon, env: dict) -> str:
    """Where a GPU is present: a real CUDA fault, its coredump read by cuda-gdb, the record."""
    from sentinel.triage.readers.cudagdb import find_cuda_gdb
    from sentinel.triage.records import FaultRecord
    from sentinel.triage.report import render_report

    if not _gpu_present():
        return ""
    print("\nPhase 4: a real CUDA fault. A Triton paged gather serves with an off-by-one page index")
    print("(silent), then reads a page far out of range. CUDA writes a coredump; cuda-gdb reads it.\n")
    if find_cuda_gdb() is None:
        print("  (cuda-gdb not found: the record will have no GPU backtrace; see `sentinel doctor`)")
    e = dict(env, RANK="0", WORLD_SIZE="1", SENTINEL_JOB="demo-gpu")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "sentinel.demo.workload", "--cuda-fault"], env=e,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    while time.monotonic() - t0 < 150:
        rows = [r for r in daemon.journal.faults(limit=20) if r["identity"].get("job") == "demo-gpu"
                and r["source"] == "coredump"]
        if rows:
            rec = FaultRecord.from_dict(rows[0])
            print("  " + render_report(rec).replace("\n", "\n  "))
            ki = rec.known_issue["id"] if rec.known_issue else "none"
            return f"GPU fault record #{rec.id}: {rec.exception} in {rec.kernel_family}, known issue {ki}"
        time.sleep(0.5)
    return "no GPU fault record was made (is the coredump environment overridden?)"


def _short(line: str) -> str:
    # Drop empty labels so the lines fit a terminal.
    import re

    return re.sub(r',?\b\w+=""', "", line).replace("{,", "{")


def run_demo(duration: float = 20.0, base_dir: str | None = None) -> int:
    """The built-in demo in ``base_dir`` (default: a fresh temp dir): a daemon and /metrics on a free
    127.0.0.1 port in this process, the ranks for ``duration`` seconds, then the hang, crash and (with
    a GPU) CUDA-fault phases, printed as they go. Returns 0 when every expected violation, the hang's
    culprit and the crash were seen, else 1."""
    base = os.path.abspath(base_dir or tempfile.mkdtemp(prefix="sentinel-demo-"))
    os.makedirs(base, mode=0o700, exist_ok=True)
    port = _free_port()
    logjson.setup("info", open(os.path.join(base, "daemon.log"), "a"))  # keep the live view readable
    daemon = Daemon(DaemonConfig(base_dir=base, poll_interval=0.1, hang=HangConfig(floor_s=3.0), crash_grace_s=5.0))
    server, _ = serve(build_registry(lambda: daemon.snapshot), "127.0.0.1", port)
    stop = threading.Event()
    poller = threading.Thread(target=daemon.run, args=(stop,), name="sentinel-daemon", daemon=True)
    poller.start()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    print("Sentinel demo")
    print(f"  SENTINEL_DIR  {base}")
    print(f"  metrics       {metrics_url}")
    print(f"  workload      {WORLD} ranks of a paged-KV decode loop (PyTorch, CPU), hooked by `sentinel run`")
    print("                rank 0 healthy; rank 1 gets an off-by-one page index (seed 000), then a DP-padding")
    print("                batch mismatch (seed 001); rank 2 runs on a degenerate KV stride (seed 002) and is")
    print(f"                SIGKILLed after {duration * 0.6:.0f}s\n")

    procs = []
    env = injected_env(base)
    for rank in range(WORLD):
        e = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), SENTINEL_JOB="demo")
        cmd = [sys.executable, "-m", "sentinel.demo.workload", "--duration", str(duration)]
        for scenario in SCENARIOS[rank]:
            cmd += ["--scenario", scenario]
        if rank == WORLD - 1:
            cmd += ["--die-after", str(duration * 0.6)]
        procs.append(subprocess.Popen(cmd, env=e))

    t0 = time.monotonic()
    deadline = t0 + duration + PHASE_GUARD_S  # the ranks end by themselves, `duration` s after their first step
    seen: set = set()
    ticks = 0
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            ticks += 1
            for line in _events(daemon, seen):
                print(line, flush=True)
            if ticks % 4 == 0:
                print(_line(daemon, time.monotonic() - t0), flush=True)
            if all(p.poll() is not None for p in procs):
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        # The daemon's last poll of the final records: every rank of phase 1 seen ended.
        _settle(daemon, lambda: sum(1 for p in daemon.snapshot.processes
                                    if p.identity.get("job") == "demo" and not p.alive) == WORLD)

    hang_line = _hang_phase(daemon, env)
    crash_line = _crash_phase(daemon, env)
    gpu_line = _gpu_phase(daemon, env)
    try:
        metrics = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    except OSError as exc:
        metrics = f"(scrape failed: {exc})"
    stop.set()
    poller.join(timeout=5)
    daemon.close()
    server.shutdown()

    print("\nWhat the daemon exported (a few of the series; all at /metrics):")
    for line in metrics.splitlines():
        if line.startswith(("sentinel_processes", "sentinel_page_table_headroom_pages", "sentinel_hang_")) or (
            line.startswith("sentinel_invariant_violations_total") and not line.rstrip().endswith(" 0.0")
        ):
            print("  " + _short(line))
    print("\n`sentinel status` now:")
    print("  " + render_table(collect(base)).replace("\n", "\n  "))
    phase1 = [p for p in daemon.snapshot.processes if p.identity.get("job") == "demo"]
    died = [p for p in phase1 if p.exit == "died"]
    print("\nSummary")
    print(f"  phase 1: {len(phase1)} ranks, {len(died)} died: "
          + ", ".join(f"rank {p.identity.get('rank')} at step {p.step}" for p in died))
    for p in sorted(daemon.snapshot.processes, key=lambda p: p.identity.get("rank", 0)):
        found = ", ".join(f"{k} x{v}" for k, v in sorted(p.violations.items()) if v) or "no violations"
        room = f"; page-table headroom {p.headroom[0]} of {p.headroom[1]} pages" if p.headroom else ""
        if p.identity.get("job") == "demo":
            print(f"  rank {p.identity.get('rank')}: {found}{room}")
    print(f"  phase 2: {hang_line}")
    print(f"  phase 3: {crash_line}")
    if gpu_line:
        print(f"  phase 4: {gpu_line}")
    print(f"  records read: {daemon.rings.ingested}; their last records stay in {os.path.join(base, 'rings')}")
    print("\nWhere to look next")
    print(f"  sentinel status --dir {base}")
    print(f"  sentinel daemon --dir {base} --listen 127.0.0.1:9464   # then curl 127.0.0.1:9464/metrics")
    print(f"  {os.path.join(base, 'daemon.log')}   (the daemon's JSON log)")
    caught = {check for p in phase1 for check, n in p.violations.items() if n}
    expected = {"page_table_oob", "batch_mismatch", "degenerate_stride", "tma_misaligned"}
    if len(died) != 1 or not expected <= caught or "culprit rank 1" not in hang_line or "sigsegv" not in crash_line:
        print(f"\nthe demo did not see what it should: died={len(died)}, caught={sorted(caught)}", file=sys.stderr)
        return 1
    return 0
