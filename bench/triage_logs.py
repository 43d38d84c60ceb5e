#!/usr/bin/env python3
"""Triage of logs: offline throughput, live latency, and the log tap's cost to the host.

Run as ``.venv/bin/python bench/triage_logs.py`` (``make bench``). Three measurements:

- **Offline**: `sentinel triage FILE` (a subprocess, as a user runs it) on a mixed serving log of
  --gib GiB (default 1): vLLM and SGLang request and throughput lines from their real formats, a
  c10d watchdog line every few megabytes, and a worker's CUDA error with its traceback near the end.
  MB/s and seconds for the file; correct before fast: the record must name the fault. Each reader's
  own rate is measured in-process on the first 64 MiB.
- **Live**: `sentinel daemon` with its defaults follows DIR/logs/; a hooked process under
  `sentinel run --log-tap` writes a CUDA error line and records the wall time; the fault record's
  ``created_at`` in the journal minus that time, over --live-runs processes.
- **Tap**: a host writes --tap-lines lines of 200 bytes at --tap-rate lines/s to a non-blocking
  stdout, once straight to a pipe drained by `cat` and once through `sentinel run --log-tap`
  (whose stdout goes to the same kind of drain). The host's CPU seconds in both, the tap process's
  CPU as a share of one core over the run, and the host's writes that would have blocked (EAGAIN on
  its non-blocking stdout): the goal is 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path[:0] = [BENCH, REPO, os.path.join(REPO, "hooks")]
from _common import check, machine_info, progress, spread, update_results_md, write_json  # noqa: E402

SENTINEL = [sys.executable, "-m", "sentinel"]
NOISE = [
    '(APIServer pid=21871) INFO 11-14 22:47:{s:02d} [loggers.py:123] Engine 000: Avg prompt throughput: {a}.3 tokens/s, '
    "Avg generation throughput: {b}.1 tokens/s, Running: 12 reqs, Waiting: 0 reqs, GPU KV cache usage: 12.5%, "
    "Prefix cache hit rate: 71.2%",
    '(APIServer pid=21871) INFO:     10.0.{a}.7:5{b} - "POST /v1/chat/completions HTTP/1.1" 200 OK',
    "[2026-05-22 10:14:{s:02d} TP0] Decode batch. #running-req: 61, #token: 5{a}68, token usage: 0.96, cuda graph: True, "
    "gen throughput (token/s): 22{b}.41, #queue-req: 0",
    "[2026-05-22 10:14:{s:02d} TP0] Prefill batch. #new-seq: 1, #new-token: {a}, #cached-token: {b}, token usage: 0.41, "
    "#running-req: 60, #queue-req: 0",
    "(EngineCore_0 pid=21936) DEBUG 11-14 22:47:{s:02d} [core.py:123] step {a}{b} scheduled 8 requests",
]
WATCHDOG = ("[rank3]:[E1114 22:47:{s:02d}.123456 ProcessGroupNCCL.cpp:632] [Rank 3] Watchdog caught collective operation "
            "timeout: WorkNCCL(SeqNum={a}, OpType=ALLREDUCE, NumelIn=6, NumelOut=6, Timeout(ms)=600000) ran for "
            "600086 milliseconds before timing out.")
FAILURE = os.path.join(REPO, "tests", "fixtures", "serving-log", "vllm-v1-worker-illegal-address.log")


def make_log(path: str, size: int) -> None:
    """A mixed log of ``size`` bytes, the failure 256 KiB before its end (the server died of it)."""
    rng = random.Random(7)
    block = "\n".join(rng.choice(NOISE).format(s=rng.randrange(60), a=rng.randrange(100, 999), b=rng.randrange(10, 99))
                      for _ in range(20000)).encode() + b"\n"
    with open(FAILURE, "rb") as f:
        failure = f.read()
    written, watchdog_every, n = 0, 8 << 20, 0
    with open(path, "wb") as out:
        while written < size - (256 << 10):
            out.write(block)
            written += len(block)
            if written // watchdog_every > n:
                n = written // watchdog_every
                line = WATCHDOG.format(s=n % 60, a=n).encode() + b"\n"
                out.write(line)
                written += len(line)
        out.write(failure)
        written += len(failure)
        while written < size:
            out.write(block)
            written += len(block)


def offline(gib: float, tmp: str) -> dict:
    from sentinel.triage.readers import kernel_log, scan, serving_log, watchdog

    path = os.path.join(tmp, "mixed.log")
    progress(f"offline: writing a {gib:g} GiB mixed log")
    make_log(path, int(gib * (1 << 30)))
    size = os.path.getsize(path)
    with open(path, "rb") as f:  # warm the page cache, as for a log just copied off a node
        while f.read(64 << 20):
            pass
    runs = []
    for i in range(3):
        t0 = time.perf_counter()
        res = subprocess.run([*SENTINEL, "triage", path, "--json"], capture_output=True, text=True, timeout=900)
        seconds = time.perf_counter() - t0
        check(res.returncode == 0, f"sentinel triage exited {res.returncode}: {res.stderr[-500:]}")
        docs = json.loads(res.stdout)  # the serving log's record, the watchdog's hang, their incident
        rec = next(d["result"] for d in docs if d["file"].endswith("(serving log)"))
        check(rec["exception_class"] == "illegal_address" and rec["identity"].get("rank") == 5,
              f"the record names the fault: {rec.get('exception')!r}")
        check(any("incident" in (d["result"] or {}) for d in docs), "the log's failure and hang are one incident")
        runs.append(seconds)
        progress(f"offline run {i + 1}: {seconds:.2f} s, {size / seconds / 1e6:.1f} MB/s")
    readers = {}
    head = 64 << 20
    with open(path, "rb") as f:
        data = f.read(head)
    for name, fn in (("serving_log (scan.relevant_lines + parse)",
                      lambda: serving_log.parse(scan.relevant_lines(__import__("io").BytesIO(data), serving_log.KEYS))),
                     ("kernel_log (scan.relevant_lines + parse)",
                      lambda: kernel_log.parse(scan.relevant_lines(__import__("io").BytesIO(data), kernel_log.KEYS))),
                     ("watchdog (per line)", lambda: watchdog.parse(data.decode("utf-8", "replace").splitlines()))):
        t0 = time.perf_counter()
        fn()
        readers[name] = len(data) / (time.perf_counter() - t0) / 1e6
    os.unlink(path)
    s = spread(runs)
    return {"bytes": size, "seconds": s, "mb_per_s": size / s["median"] / 1e6,
            "seconds_per_gib": s["median"] / (size / (1 << 30)), "reader_mb_per_s": readers}


LIVE_CHILD = r"""
import sys, time, sentinel_hooks as sh
sh.step()
sys.stdin.readline()
t = time.time()
print("RuntimeError: CUDA error: an illegal memory access was encountered", file=sys.stderr, flush=True)
print(repr(t), flush=True)
sys.stdin.readline()
"""


def live(runs: int, tmp: str) -> dict:
    base = os.path.join(tmp, "live")
    daemon = subprocess.Popen([*SENTINEL, "daemon", "--dir", base, "--listen", "127.0.0.1:0", "--no-nvml", "--kmsg", "off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lat = []
    try:
        journal = os.path.join(base, "journal.sqlite")
        deadline = time.monotonic() + 60
        while not os.path.exists(journal) and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(runs):
            child = subprocess.Popen([*SENTINEL, "run", "--dir", base, "--eager", "--log-tap", "--", sys.executable, "-c",
                                      LIVE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
            time.sleep(1.0)  # its ring attached, its tap file followed
            child.stdin.write("\n")
            child.stdin.flush()
            wrote = float(child.stdout.readline())
            created = None
            deadline = time.monotonic() + 30
            while created is None and time.monotonic() < deadline:
                with sqlite3.connect(journal) as db:
                    row = db.execute("SELECT created_at FROM faults ORDER BY id DESC LIMIT 1 OFFSET 0").fetchone()
                    count = db.execute("SELECT count(*) FROM faults").fetchone()[0]
                if row and count == i + 1:
                    created = row[0]
                else:
                    time.sleep(0.02)
            check(created is not None, "the fault record was journaled")
            lat.append(created - wrote)
            child.stdin.write("\n")
            child.stdin.flush()
            child.wait(timeout=30)
            progress(f"live run {i + 1}: {lat[-1] * 1000:.0f} ms")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    return {"runs": runs, "seconds": spread(lat), "poll_interval_s": 0.2}


TAP_HOST = r"""
import errno, fcntl, os, resource, sys, time
lines, rate = int(sys.argv[1]), float(sys.argv[2])
fl = fcntl.fcntl(1, fcntl.F_GETFL)
fcntl.fcntl(1, fcntl.F_SETFL, fl | os.O_NONBLOCK)
line = b"x" * 199 + b"\n"
blocked = 0
start = time.perf_counter()
for i in range(lines):
    while True:
        try:
            os.write(1, line)
            break
        except BlockingIOError:
            blocked += 1
            time.sleep(0.0005)
    delay = start + (i + 1) / rate - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
ru = resource.getrusage(resource.RUSAGE_SELF)
print(f"{blocked} {ru.ru_utime + ru.ru_stime}", file=sys.stderr)
"""


def tap(lines: int, rate: float, tmp: str) -> dict:
    base = os.path.join(tmp, "tap")
    out = {}
    # What `sentinel run --log-tap` costs with nothing to copy (its interpreter's start-up), to tell the
    # tap's own cost from it.
    # Twice: the first prepares DIR/hooks (a copy and a compile) that the measured runs then find ready.
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([*SENTINEL, "run", "--dir", base, "--log-tap", "--", sys.executable, "-c", "pass"], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    startup = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    for mode in ("direct", "tapped"):
        cmd = [sys.executable, "-c", TAP_HOST, str(lines), str(rate)]
        if mode == "tapped":
            cmd = [*SENTINEL, "run", "--dir", base, "--log-tap", "--", *cmd]
        drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=drain.stdin, stderr=subprocess.PIPE, text=True, timeout=600)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        drain.stdin.close()
        drain.wait()
        check(proc.returncode == 0, f"the host exited {proc.returncode}: {proc.stderr[-300:]}")
        blocked, host_cpu = proc.stderr.strip().splitlines()[-1].split()
        total_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        out[mode] = {"wall_s": wall, "host_cpu_s": float(host_cpu), "blocked_writes": int(blocked),
                     "process_tree_cpu_s": total_cpu}
        progress(f"tap {mode}: {wall:.1f} s, host CPU {float(host_cpu):.2f} s, blocked writes {blocked}")
    tapped = out["tapped"]
    # The tap's own CPU: the process tree's, less the host's (the interpreter start-up of `sentinel run` included).
    tapped["tap_cpu_s"] = tapped["process_tree_cpu_s"] - tapped["host_cpu_s"]
    tapped["tap_cpu_share_of_a_core"] = tapped["tap_cpu_s"] / tapped["wall_s"]
    # The empty run's CPU includes its trivial host's start-up too: a slight overestimate of start-up.
    out["startup_cpu_s"] = startup
    tapped["copy_cpu_share_of_a_core"] = max(0.0, tapped["tap_cpu_s"] - startup) / tapped["wall_s"]
    out["lines"], out["rate_lines_per_s"], out["line_bytes"] = lines, rate, 200
    log = os.path.join(base, "logs")
    copied = b"".join(open(os.path.join(log, n), "rb").read() for n in sorted(os.listdir(log)))
    out["log_file_bytes"] = len(copied)
    check(copied.count(b"x" * 199 + b"\n") == lines, "the tap's copy holds every line")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the offline log in GiB (default 1)")
    ap.add_argument("--live-runs", type=int, default=10)
    ap.add_argument("--tap-lines", type=int, default=60000)
    ap.add_argument("--tap-rate", type=float, default=2000.0, help="host lines per second (default 2000: 400 KB/s)")
    args = ap.parse_args()
    info = machine_info()
    tmp = tempfile.mkdtemp(prefix="snt-triage-bench-")
    try:
        results = {"offline": offline(args.gib, tmp), "live": live(args.live_runs, tmp),
                   "tap": tap(args.tap_lines, args.tap_rate, tmp)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    payload = {"machine": info, "results": results}
    path = write_json("cpu-triage-logs", payload)
    off, lv, tp = results["offline"], results["live"], results["tap"]
    readers = "\n".join(f"| {k} | {v:.0f} MB/s |" for k, v in off["reader_mb_per_s"].items())
    section = f"""## {info['date_utc']} · triage of logs (CPU: {info['cpu_model']}, {info['nproc']} cores)

`bench/triage_logs.py`; raw figures in `{os.path.relpath(path, REPO)}`.

**Offline**: `sentinel triage` on a {off['bytes'] / (1 << 30):.2f} GiB mixed serving log (request and throughput
lines, a watchdog line every 8 MiB, a worker's CUDA error 256 KiB before the end), 3 runs, page cache warm:
median **{off['seconds']['median']:.2f} s** ({off['seconds']['min']:.2f} to {off['seconds']['max']:.2f}),
**{off['mb_per_s']:.0f} MB/s**, {off['seconds_per_gib']:.2f} s per GiB (goal: 10 s). Each reader alone, on the
first 64 MiB:

| reader | rate |
|---|---|
{readers}

**Live**: from the failure line written by a tapped host to its fault record in the journal, daemon defaults
(poll 0.2 s), {lv['runs']} processes: median **{lv['seconds']['median'] * 1000:.0f} ms**, p90
{lv['seconds']['p90'] * 1000:.0f} ms, max {lv['seconds']['max'] * 1000:.0f} ms (goal: 1 s).

**Tap**: a host writing {tp['lines']} lines of {tp['line_bytes']} bytes at {tp['rate_lines_per_s']:.0f} lines/s:

| | wall | host CPU | blocked writes |
|---|---|---|---|
| straight to a pipe | {tp['direct']['wall_s']:.1f} s | {tp['direct']['host_cpu_s']:.2f} s | {tp['direct']['blocked_writes']} |
| through `sentinel run --log-tap` | {tp['tapped']['wall_s']:.1f} s | {tp['tapped']['host_cpu_s']:.2f} s | {tp['tapped']['blocked_writes']} |

The tap process used {tp['tapped']['tap_cpu_s']:.2f} CPU s over the run, {tp['tapped']['tap_cpu_share_of_a_core'] * 100:.1f} % of one
core; {tp['startup_cpu_s']:.2f} s of it is its interpreter's start-up (an empty command under the tap), so
copying the output cost **{tp['tapped']['copy_cpu_share_of_a_core'] * 100:.1f} % of one core**, in a process of its own. The host's
own CPU is the table's host column. Its copy in DIR/logs/ held every line ({tp['log_file_bytes']} bytes).
"""
    update_results_md(f"{info['date_utc']}-cpu-triage-logs", section)
    progress(f"wrote {path} and bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
