#!/usr/bin/env python3
"""Hang detection time on CPU: Sentinel against torch.distributed's own timeout, side by side.

Run as ``.venv/bin/python bench/hangs_cpu.py`` (``make bench``). A 2-rank gloo job under
`sentinel run` (tests/helpers/gloo_ranks.py): rank 1 stops joining all_reduce #6 (its host loop
sleeps), rank 0 waits in it. The process group's timeout is --pg-timeout seconds (gloo has no
watchdog thread: the waiting rank's collective raises when the timeout expires). Each run measures,
from the moment rank 0 enqueued #6 (its ring record's timestamp):
  - Sentinel: when an in-process daemon, with its defaults (floor 5 s, 10 x p99), names the culprit;
  - torch.distributed: when rank 0's all_reduce raises its timeout error.
Correct before fast: a run counts only if the culprit named is rank 1. On 2 GPUs with NCCL the
same comparison is tests/gpu/nccl_hang.py (bench/gpu.sh).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import psutil

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, REPO, os.path.join(REPO, "hooks")]
from _common import machine_info, progress, spread, update_results_md, write_json  # noqa: E402

from sentinel.daemon.loop import Daemon, DaemonConfig  # noqa: E402
from sentinel.triage.hangs import HangConfig  # noqa: E402

RANKS = os.path.join(REPO, "tests", "helpers", "gloo_ranks.py")
HANG_AT = 6


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(pg_timeout: float, floor: float, deadline_s: float) -> dict:
    base = tempfile.mkdtemp(prefix="snt-hang-")
    log_path = os.path.join(base, "ranks.log")
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", SENTINEL_JOB="bench-hang",
               GLOO_TIMEOUT_S=str(pg_timeout))
    cmd = [sys.executable, "-m", "sentinel", "run", "--dir", base, "--", sys.executable, "-m",
           "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port), "--monitor-interval", "1",
           RANKS, str(port), "40", str(HANG_AT), "1", "sleep"]
    with open(log_path, "w") as log:
        job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    d = Daemon(DaemonConfig(base_dir=base, use_events=False, rescan_interval=0.2, nvml=False,
                            hang=HangConfig(floor_s=floor)))
    t_enq = t_named = t_timeout = None
    hang = None
    t0 = time.time()
    try:
        while time.time() - t0 < deadline_s:
            d.poll_once()
            if t_enq is None:
                for s in d.states.values():
                    g = s.groups.get("0")
                    if s.identity.get("rank") == 0 and g is not None and g.last_enqueued >= HANG_AT:
                        t_enq = g.last_enqueued_ns / 1e9
            if hang is None and d.hangs.open:
                hang = next(iter(d.hangs.open.values()))
                t_named = time.time()
            if t_timeout is None:
                with open(log_path, errors="replace") as f:
                    if re.search(r"Timed out waiting|timed out|Timeout", f.read()):
                        t_timeout = time.time()
            if hang is not None and t_timeout is not None:
                break
            time.sleep(0.05)
    finally:
        # torchrun and its ranks: each rank has a session of its own, so a killpg would miss them.
        try:
            root = psutil.Process(job.pid)
            tree = [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        job.wait(timeout=10)
        d.close()
    culprits = [c.rank for c in hang.culprits] if hang else []
    reasons = [c.reason for c in hang.culprits] if hang else []
    return {
        "sentinel_s": round(t_named - t_enq, 2) if t_named and t_enq else None,
        "torch_timeout_s": round(t_timeout - t_enq, 2) if t_timeout and t_enq else None,
        "culprits": culprits, "reasons": reasons, "op": hang.op if hang else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pg-timeout", type=float, default=30.0, help="the job's process-group timeout (s)")
    ap.add_argument("--floor", type=float, default=5.0, help="Sentinel's hang floor (its default: 5 s)")
    args = ap.parse_args()
    info = machine_info()
    t0 = time.monotonic()
    runs = []
    for i in range(args.runs):
        r = one_run(args.pg_timeout, args.floor, deadline_s=args.pg_timeout + 40)
        progress(f"run {i + 1}/{args.runs}: Sentinel {r['sentinel_s']} s (culprit {r['culprits']} {r['reasons']}), "
                 f"torch.distributed timeout {r['torch_timeout_s']} s")
        runs.append(r)
    good = [r for r in runs if r["culprits"] == [1] and r["sentinel_s"] is not None]
    sent = spread([r["sentinel_s"] for r in good]) if good else None
    torch_t = [r["torch_timeout_s"] for r in good if r["torch_timeout_s"] is not None]
    tt = spread(torch_t) if torch_t else None
    payload = {"machine": info, "runs": runs, "pg_timeout_s": args.pg_timeout, "floor_s": args.floor,
               "sentinel": sent, "torch_timeout": tt, "seconds": round(time.monotonic() - t0, 1)}
    path = write_json("cpu-hangs", payload)
    rows = [
        "| what | seconds after rank 0 enqueued #6 (median) | min..max | ratio |",
        "|---|---|---|---|",
    ]
    if sent:
        rows.append(f"| Sentinel names the culprit (rank 1, host_stall), floor {args.floor:g} s | {sent['median']:.2f} | "
                    f"{sent['min']:.2f}..{sent['max']:.2f} | 1 |")
    if sent and tt:
        rows.append(f"| torch.distributed (gloo) raises its timeout, pg timeout {args.pg_timeout:g} s | "
                    f"{tt['median']:.2f} | {tt['min']:.2f}..{tt['max']:.2f} | {tt['median'] / sent['median']:.1f}x later |")
        rows.append(f"| torch.distributed default pg timeout (30 min for gloo) | 1800 (on paper) | | "
                    f"{1800 / sent['median']:.0f}x later |")
    verdict = "PASS" if sent and len(good) == len(runs) and sent["max"] <= 10 else "FAIL"
    section = (
        f"## {info['date_utc']}: hang detection on CPU, gloo (`bench/hangs_cpu.py`)\n\n"
        f"Device: CPU, {info['cpu_model']}, nproc {info['nproc']}, Python {info['python']}. {args.runs} runs of a "
        f"2-rank gloo job under `sentinel run`; rank 1 stops joining all_reduce #{HANG_AT}. Sentinel with its "
        f"defaults, in-process; runs with the culprit right: {len(good)}/{len(runs)}. "
        f"Raw: `bench/results/{os.path.basename(path)}`.\n\n" + "\n".join(rows) + "\n\n"
        f"- goal (culprit named within 10 s, every run): {verdict}\n"
    )
    update_results_md(f"{info['date_utc']}-cpu-hangs", section)
    print()
    print("\n".join(rows))
    print(f"\ngoal: culprit named within 10 s in every run -> {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
