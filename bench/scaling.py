#!/usr/bin/env python3
"""CPU scaling benchmark: the real daemon's CPU share and RSS against the number of attached ranks.

Run as ``.venv/bin/python bench/scaling.py``. For each configuration (1, 8 and 64 writer
processes; see CONFIGS) and each of RUNS repeats, a fresh ``sentinel daemon`` subprocess watches a fresh
directory while N real writer processes (``sentinel_hooks.step()``, i.e. ``RingWriter.step``)
step at a fixed rate each. Correct before fast, in every run:

1. before the window: the daemon's /metrics lists all N processes alive and stepping;
2. the window: after a warm-up, two readings WINDOW_S apart of the daemon process (CPU seconds of
   all its threads, RSS via psutil) and of every ring's heartbeat (steps actually written). The
   harness idles between the readings and does not scrape; the share is the daemon's CPU seconds
   over the measured wall time between the readings, not over a nominal sleep;
3. after the window: the writers stop cleanly and the daemon's exported per-process step counts
   and record counts must equal what each writer reports it wrote, with nothing overwritten,
   torn or dropped, and every process seen exiting.

64 writers step at 125 steps/s each (8000 records/s in total, as for 8 writers at 1000/s): at
1000/s each, 64 sleeping/waking Python processes would cost more than the two cores of the
reference machine and starve the daemon. A second 64-writer configuration at 15.625 steps/s each
has the total record rate of the single writer. Writer, harness and whole-machine CPU are
reported beside the daemon's, so that starvation or outside load would show.

Writes bench/results/<UTC date>-cpu-scaling.json and a dated section of bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from _common import cpu_ticks, machine_info, progress, spread, steal_pct, update_results_md, write_json  # noqa: E402

# datapath.py owns the daemon helpers (scrape, per-pid lookup, sampler); importing it clears the
# SENTINEL_* variables that would redirect or disable the writers.
from datapath import BenchError, Sampler, _by_pid, _free_port, _scrape, check, start_daemon  # noqa: E402

from sentinel_hooks import ringformat as rf  # noqa: E402

# (writers, steps/s each). 64 x 125 has the total record rate of 8 x 1000 (8x the rings); 64 x 15.625
# has that of 1 x 1000 (64x the rings), which separates the cost of a ring from the cost of a record.
CONFIGS: tuple[tuple[int, float], ...] = ((1, 1000.0), (8, 1000.0), (64, 125.0), (64, 15.625))
RUNS = 3
WARMUP_S = 1.5  # after every process is attached and stepping
WINDOW_S = 4.0
MIN_RATE_FRACTION = 0.95  # writers must deliver this share of their nominal rate in the window

WRITER_SCRIPT = r"""
import json, os, signal, sys, time
import sentinel_hooks
from sentinel_hooks import runtime

stop = False
def on_stop(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGUSR1, on_stop)

rate = float(sys.argv[1])
w = runtime.start()  # the ring and its START mark, before the clock starts
print(json.dumps({"pid": os.getpid(), "ring": w.path}), flush=True)
sys.stdin.readline()  # go

step, period, mono = sentinel_hooks.step, 1.0 / rate, time.monotonic
t0 = mono()
i = 0
late_max = 0.0
while not stop:
    due = t0 + i * period
    now = mono()
    if due > now:
        time.sleep(due - now)
    else:
        late_max = max(late_max, now - due)
    step()
    i += 1
st = sentinel_hooks.stats()
print(json.dumps({"pid": os.getpid(), "steps": st["steps"], "errors": st["errors"], "dropped": st["dropped"],
                  "elapsed_s": mono() - t0, "late_max_s": late_max}), flush=True)
"""


def _heartbeat(fd: int) -> int:
    """The step counter in a ring's header: what the writer has written, read without the daemon."""
    return struct.unpack("<Q", os.pread(fd, 8, rf.WORDS_OFFSET + 8 * rf.Word.STEP))[0]


def _task_cpu_ns(pid: int) -> int:
    """CPU time of all of a process's threads, in ns, from the scheduler's own accounting.

    psutil's cpu_times() counts in 10 ms ticks: 0.25 % of a core over a 4 s window, as large as
    the single-writer figure itself. schedstat's first field is the same time to the nanosecond."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return total


def _reading(daemon: psutil.Process, writers: list[psutil.Process], ring_fds: list[int]) -> dict:
    t = time.monotonic()
    cpu_ns = _task_cpu_ns(daemon.pid)
    ct = daemon.cpu_times()
    mi = daemon.memory_info()
    wcpu = 0.0
    for p in writers:
        c = p.cpu_times()
        wcpu += c.user + c.system
    own = psutil.Process().cpu_times()  # the harness, its sampler thread included
    return {"t": t, "cpu": cpu_ns / 1e9, "cpu_ticks": ct.user + ct.system, "rss": mi.rss, "shared": mi.shared,
            "writers_cpu": wcpu, "harness_cpu": own.user + own.system,
            "steps": sum(_heartbeat(fd) for fd in ring_fds), "ticks": cpu_ticks()}


def _wait_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def run_once(tmp: str, n: int, rate: float, run_no: int) -> dict:
    """One daemon, N writers: verified attach, measured window, verified end state."""
    d = os.path.join(tmp, f"{_key(n, rate)}-run{run_no}")
    os.makedirs(d, mode=0o700)
    port = _free_port()
    log_path = os.path.join(d, "daemon.log")
    daemon, log_f, daemon_log = start_daemon(d, port, log_path)
    writers: list[subprocess.Popen] = []
    ring_fds: list[int] = []
    sampler: Sampler | None = None

    try:
        dproc = psutil.Process(daemon.pid)
        idle_rss = dproc.memory_info().rss

        env = dict(os.environ, SENTINEL_DIR=d, SENTINEL_JOB=f"bench-scaling-{n}", WORLD_SIZE=str(n))
        for i in range(n):
            writers.append(subprocess.Popen(
                [sys.executable, "-c", WRITER_SCRIPT, str(rate)],
                env=dict(env, RANK=str(i), LOCAL_RANK=str(i % 8)), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ))
        for wp in writers:
            line = wp.stdout.readline()
            if not line:
                raise BenchError(f"writer {wp.pid} exited before its ring was ready: {wp.stderr.read()[-2000:]}")
            ready = json.loads(line)
            check(ready["pid"] == wp.pid and bool(ready["ring"]), f"writer ready line {ready}")
            ring_fds.append(os.open(ready["ring"], os.O_RDONLY | os.O_CLOEXEC))
        pids = {wp.pid for wp in writers}
        wprocs = [psutil.Process(wp.pid) for wp in writers]
        for wp in writers:
            wp.stdin.write("go\n")
            wp.stdin.flush()

        # 1. Every process attached and stepping, as the daemon exports it.
        deadline = time.monotonic() + 20
        while True:
            m = _scrape(port)
            alive, steps = _by_pid(m, "sentinel_process_alive"), _by_pid(m, "sentinel_process_step")
            if all(alive.get(p) == 1 and steps.get(p, 0) > 0 for p in pids):
                break
            if time.monotonic() > deadline:
                missing = sorted(p for p in pids if alive.get(p) != 1 or steps.get(p, 0) <= 0)
                raise BenchError(f"daemon does not show {len(missing)} of {n} writers stepping: {missing[:8]}")
            time.sleep(0.1)
        t_attached = time.monotonic()

        # 2. The window.
        sampler = Sampler(dproc)
        sampler.start()
        _wait_until(t_attached + WARMUP_S)
        a = _reading(dproc, wprocs, ring_fds)
        _wait_until(a["t"] + WINDOW_S)
        b = _reading(dproc, wprocs, ring_fds)
        sampler.stop.set()
        sampler.join()

        # 3. Stop the writers; the daemon's final view must match their own counts.
        for wp in writers:
            wp.send_signal(signal.SIGUSR1)
        reports = {}
        for wp in writers:
            out, err = wp.communicate(timeout=30)
            if wp.returncode != 0:
                raise BenchError(f"writer {wp.pid} failed ({wp.returncode}): {err[-2000:]}")
            rep = json.loads(out.strip().splitlines()[-1])
            check(rep["errors"] == 0 and rep["dropped"] == 0 and rep["steps"] > 0, f"writer report {rep}")
            reports[rep["pid"]] = rep
        check(set(reports) == pids, "a report from every writer")
        deadline = time.monotonic() + 15
        while True:
            m = _scrape(port)
            seen = {
                "step": _by_pid(m, "sentinel_process_step"),
                "records_step": _by_pid(m, "sentinel_ring_records_total", kind="step"),
                "records_mark": _by_pid(m, "sentinel_ring_records_total", kind="mark"),
                "alive": _by_pid(m, "sentinel_process_alive"),
                "overwritten": _by_pid(m, "sentinel_ring_overwritten_records_total"),
                "torn": _by_pid(m, "sentinel_ring_torn_records_total"),
                "dropped": _by_pid(m, "sentinel_hook_dropped_records_total"),
            }
            want = {p: {"step": r["steps"], "records_step": r["steps"], "records_mark": 2, "alive": 0,
                        "overwritten": 0, "torn": 0, "dropped": 0} for p, r in reports.items()}
            bad = {p: {k: seen[k].get(p) for k, v in w.items() if seen[k].get(p) != v} for p, w in want.items()}
            bad = {p: v for p, v in bad.items() if v}
            exited = {lbl.get("state"): v for lbl, v in m.get("sentinel_processes", [])}.get("exited")
            if not bad and exited == n:
                break
            if time.monotonic() > deadline:
                some = dict(list(bad.items())[:4])
                raise BenchError(f"daemon view wrong after 15 s for {len(bad)} writers: {some}, exited={exited}")
            time.sleep(0.1)
        ranks = sorted(int(lbl["rank"]) for lbl, _v in m.get("sentinel_process_step", [])
                       if lbl.get("pid") and int(lbl["pid"]) in pids and lbl.get("job_id") == f"bench-scaling-{n}")
        check(ranks == list(range(n)), f"ranks exported for the job: {ranks[:8]}... ({len(ranks)} of {n})")
        total_steps = sum(r["steps"] for r in reports.values())
        ingested = m["sentinel_daemon_ingested_records_total"][0][1]
        check(ingested == total_steps + 2 * n, f"daemon ingested {ingested}, writers wrote {total_steps + 2 * n}")

        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=15)
        check(rc == 0, f"daemon exit code {rc}:\n{daemon_log()}")
    finally:
        if sampler is not None:
            sampler.stop.set()
        for wp in writers:
            if wp.poll() is None:
                wp.kill()
                wp.wait()
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        for fd in ring_fds:
            os.close(fd)
        log_f.close()

    wall = b["t"] - a["t"]
    rec_rate = (b["steps"] - a["steps"]) / wall
    check(rec_rate >= MIN_RATE_FRACTION * n * rate,
          f"writers delivered {rec_rate:.0f} steps/s of a nominal {n * rate:.0f}: starved, the load is not the one asked")
    ticks = [y - x for x, y in zip(a["ticks"][:8], b["ticks"][:8])]
    busy_pct = 100.0 * (1.0 - (ticks[3] + ticks[4]) / sum(ticks)) if ticks and sum(ticks) else None
    cpu_s = b["cpu"] - a["cpu"]
    writers_pct = 100.0 * (b["writers_cpu"] - a["writers_cpu"]) / wall
    harness_pct = 100.0 * (b["harness_cpu"] - a["harness_cpu"]) / wall
    # CPU the machine spent on anything but this benchmark (other tenants, the kernel's own threads),
    # in % of one core: it slows the daemon down when it is high.
    other_pct = (None if busy_pct is None else
                 max(0.0, busy_pct * (os.cpu_count() or 1) - 100.0 * cpu_s / wall - writers_pct - harness_pct))
    win = [s for s in sampler.samples if a["t"] <= s[0] <= b["t"]]
    # The two clocks must agree, psutil's to within its ticks (10 ms per thread at each reading).
    ticks_s = b["cpu_ticks"] - a["cpu_ticks"]
    check(abs(ticks_s - cpu_s) <= 0.05 + 0.1 * cpu_s,
          f"daemon CPU: schedstat {cpu_s:.3f} s but psutil {ticks_s:.3f} s over the window")
    return {
        "writers": n,
        "rate_per_writer": rate,
        "window_s": wall,
        "records_per_s": rec_rate,
        "records_in_window": b["steps"] - a["steps"],
        "daemon_cpu_pct": 100.0 * cpu_s / wall,
        "daemon_cpu_us_per_record": 1e6 * cpu_s / max(1, b["steps"] - a["steps"]),
        "daemon_cpu_pct_psutil_ticks": 100.0 * ticks_s / wall,
        "daemon_rss_mb": b["rss"] / 1e6,
        "daemon_rss_anon_mb": (b["rss"] - b["shared"]) / 1e6,
        "daemon_rss_peak_mb": max([s[1] for s in win] + [b["rss"]]) / 1e6,
        "daemon_idle_rss_mb": idle_rss / 1e6,
        "writers_cpu_pct": writers_pct,
        "harness_cpu_pct": harness_pct,
        "other_load_pct": other_pct,
        "machine_busy_pct": busy_pct,
        "steal_pct": steal_pct(a["ticks"], b["ticks"]),
        "writer_steps": spread([r["steps"] for r in reports.values()]),
        "writer_late_max_s": max(r["late_max_s"] for r in reports.values()),
        "daemon_ingested": ingested,
    }


def summarize(runs: list[dict]) -> dict:
    keys = ("records_per_s", "daemon_cpu_pct", "daemon_cpu_us_per_record", "daemon_rss_mb", "daemon_rss_anon_mb",
            "daemon_rss_peak_mb", "daemon_idle_rss_mb", "writers_cpu_pct", "harness_cpu_pct", "other_load_pct",
            "machine_busy_pct")
    out = {k: spread([r[k] for r in runs]) for k in keys if all(r[k] is not None for r in runs)}
    n = runs[0]["writers"]
    out["cpu_pct_per_rank"] = spread([r["daemon_cpu_pct"] / n for r in runs])
    out["rss_over_idle_mb_per_rank"] = spread([(r["daemon_rss_mb"] - r["daemon_idle_rss_mb"]) / n for r in runs])
    return out


def ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Ratio of medians, with the widest range the runs allow (min/max and max/min)."""
    return {"median": float(np.median(num) / np.median(den)), "min": min(num) / max(den), "max": max(num) / min(den)}


HEAD = ["writers x steps/s", "records/s in", "daemon CPU % of 1 core", "per rank", "us daemon CPU / record",
        "daemon RSS MB", "RSS over idle / rank MB", "writers CPU %", "other load % of 1 core"]
CMP_HEAD = ["comparison", "ranks", "records/s", "daemon CPU", "daemon RSS", "CPU <= records/s ratio",
            "CPU <= ranks ratio"]
# (a, b, what differs): each compares configuration a with configuration b.
COMPARISONS = (
    ("64x125", "1x1000", "64 vs 1 rank"),
    ("8x1000", "1x1000", "8 vs 1 rank"),
    ("64x125", "8x1000", "64 vs 8 ranks, same records/s"),
    ("64x15.625", "1x1000", "64 vs 1 rank, same records/s"),
    ("64x125", "64x15.625", "64 ranks, 8x the records/s"),
)


def _key(n: int, rate: float) -> str:
    return f"{n}x{rate:g}"


def _fmt(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}..{s['max']:.{digits}f}]"


def build_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for res in results.values():
        s = res["summary"]
        rows.append([
            f"{res['writers']} x {res['rate_per_writer']:g}", _fmt(s["records_per_s"], 0),
            _fmt(s["daemon_cpu_pct"], 2), _fmt(s["cpu_pct_per_rank"], 3), _fmt(s["daemon_cpu_us_per_record"], 1),
            _fmt(s["daemon_rss_mb"], 1), _fmt(s["rss_over_idle_mb_per_rank"], 2), _fmt(s["writers_cpu_pct"], 1),
            _fmt(s["other_load_pct"], 0) if "other_load_pct" in s else "n/a",
        ])
    return rows


def compare(results: dict[str, dict]) -> list[dict]:
    out = []
    for ka, kb, what in COMPARISONS:
        ra, rb = results[ka]["runs"], results[kb]["runs"]

        def col(runs: list[dict], k: str) -> list[float]:
            return [r[k] for r in runs]

        cpu = ratio(col(ra, "daemon_cpu_pct"), col(rb, "daemon_cpu_pct"))
        recs = ratio(col(ra, "records_per_s"), col(rb, "records_per_s"))
        ranks = results[ka]["writers"] / results[kb]["writers"]
        out.append({
            "a": ka, "b": kb, "what": what, "ranks": ranks, "records_per_s": recs, "daemon_cpu": cpu,
            "daemon_rss": ratio(col(ra, "daemon_rss_mb"), col(rb, "daemon_rss_mb")),
            # Judged on medians; the worst pairing of runs is in the JSON (daemon_cpu max).
            "cpu_at_most_records_ratio": cpu["median"] <= recs["median"],
            "cpu_at_most_ranks_ratio": cpu["median"] <= ranks,
        })
    return out


def compare_rows(cmps: list[dict]) -> list[list[str]]:
    def x(r: dict) -> str:
        return f"{r['median']:.2f}x [{r['min']:.2f}..{r['max']:.2f}]"

    return [[f"{c['what']} ({c['a'].replace('x', ' x ')} vs {c['b'].replace('x', ' x ')})", f"{c['ranks']:g}x",
             f"{c['records_per_s']['median']:.2f}x", x(c["daemon_cpu"]), x(c["daemon_rss"]),
             verdict(c["cpu_at_most_records_ratio"], c["records_per_s"]["median"]),
             verdict(c["cpu_at_most_ranks_ratio"], c["ranks"])]
            for c in cmps]


def verdict(ok: bool, factor: float) -> str:
    """yes/NO, or '-' where the factor did not change (within the 5 % the writers' rate may miss by)."""
    return "-" if abs(factor - 1.0) < 0.05 else ("yes" if ok else "NO")


def marginal(results: dict[str, dict], poll_interval_s: float = 0.2) -> dict[str, float]:
    """Daemon CPU split into a cost per attached ring and a cost per record, from the 64-writer
    and single-writer medians (64 x 15.625 and 1 x 1000 carry the same record rate)."""
    med = {k: (v["summary"]["daemon_cpu_pct"]["median"], v["summary"]["records_per_s"]["median"])
           for k, v in results.items()}
    c1, _ = med["1x1000"]
    c64lo, r64lo = med["64x15.625"]
    c64hi, r64hi = med["64x125"]
    per_ring_pct = (c64lo - c1) / 63
    per_record_us = (c64hi - c64lo) / 100 / (r64hi - r64lo) * 1e6
    return {
        "per_ring_pct_of_core": per_ring_pct,
        "per_ring_us_per_poll": per_ring_pct / 100 * poll_interval_s * 1e6,
        "per_record_us": per_record_us,
    }


def render_text(head: list[str], rows: list[list[str]]) -> str:
    table = [head] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_md(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def main() -> int:
    t0 = time.monotonic()
    machine = machine_info()
    progress(f"{machine['cpu_model']}, {machine['nproc']} CPUs, Python {machine['python']}")
    ticks0 = cpu_ticks()
    tmp = tempfile.mkdtemp(prefix="sentinel-bench-scaling-")
    results: dict[str, dict] = {}
    try:
        for rnd in range(RUNS):  # configurations interleaved, so drift hits each alike
            for n, rate in CONFIGS:
                key = _key(n, rate)
                r = run_once(tmp, n, rate, rnd)
                results.setdefault(key, {"writers": n, "rate_per_writer": rate, "runs": []})["runs"].append(r)
                progress(f"run {rnd + 1}/{RUNS} {n:>2} writers x {rate:g}/s: verified; "
                         f"{r['records_per_s']:.0f} rec/s, daemon {r['daemon_cpu_pct']:.2f} % CPU, "
                         f"RSS {r['daemon_rss_mb']:.1f} MB, writers {r['writers_cpu_pct']:.0f} %, "
                         f"other load {r['other_load_pct'] or 0:.0f} %")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for res in results.values():
        res["summary"] = summarize(res["runs"])

    cmps = compare(results)
    split = marginal(results)
    # The criterion: from 1 to 64 ranks, daemon CPU grows at most linearly in the total record rate.
    headline = cmps[0]
    steal = steal_pct(ticks0, cpu_ticks())
    machine["steal_pct_during_run"] = steal
    elapsed = time.monotonic() - t0

    rows, crow = build_rows(results), compare_rows(cmps)
    split_line = (f"Marginal daemon CPU from the medians: {split['per_ring_pct_of_core']:.3f} % of a core per attached "
                  f"ring ({split['per_ring_us_per_poll']:.0f} us per ring per 0.2 s poll, 64 x 15.625 against 1 x 1000), "
                  f"{split['per_record_us']:.2f} us per record (64 x 125 against 64 x 15.625).")
    payload = {
        "benchmark": "cpu-scaling",
        "machine": machine,
        "configs": [{"writers": n, "rate_per_writer": r} for n, r in CONFIGS],
        "runs_per_config": RUNS,
        "warmup_s": WARMUP_S,
        "window_s": WINDOW_S,
        "results": results,
        "comparisons": cmps,
        "marginal": split,
        "cpu_64_vs_1_at_most_linear_in_record_rate": headline["cpu_at_most_records_ratio"],
        "runtime_s": elapsed,
        "table": [dict(zip(HEAD, row)) for row in rows],
    }
    json_path = write_json("cpu-scaling", payload)
    md = (
        f"## {machine['date_utc']}: CPU daemon scaling with attached ranks (`bench/scaling.py`)\n\n"
        f"Device: CPU, {machine['cpu_model']}, nproc {machine['nproc']}, Python {machine['python']} "
        f"({machine['python_impl']}), kernel {machine['kernel']}. Run at {machine['time_utc']}, {elapsed:.0f} s, "
        f"hypervisor steal {'n/a' if steal is None else f'{steal:.1f}%'} of CPU time during the run. "
        f"Raw figures: `bench/results/{os.path.basename(json_path)}`.\n\n"
        f"Real `sentinel daemon` subprocess (default 0.2 s poll), N real writer processes calling "
        f"`sentinel_hooks.step()` at a fixed rate each (one STEP record per step). {RUNS} runs per configuration, "
        f"interleaved, each with a fresh daemon and fresh writers; figures are median [min..max] over the runs. "
        f"Each run: the daemon's /metrics must show all N processes alive and stepping, then {WARMUP_S:g} s "
        f"warm-up, then a {WINDOW_S:g} s window between two readings of the daemon process (CPU seconds of all "
        f"its threads from `/proc/PID/task/*/schedstat`, agreeing with psutil's 10 ms-tick `cpu_times()`, over "
        f"measured wall seconds; psutil RSS at the window's end, MB = 10^6 bytes; no scrapes inside the window); "
        f"records/s is counted from the rings' heartbeats over the same window. After the window the writers "
        f"stop and the daemon's exported step and record counts must equal each writer's own. 64 writers run "
        f"at 125 steps/s each (8000 records/s in total, the same as 8 x 1000) so that 64 Python processes do "
        f"not starve the daemon on 2 cores; 64 x 15.625 carries the record rate of 1 x 1000. \"Other load\" is "
        f"the machine's busy time not spent by the daemon, the writers or the harness.\n\n"
        f"{render_md(HEAD, rows)}\n\n"
        f"{render_md(CMP_HEAD, crow)}\n\n{split_line}\n"
    )
    update_results_md(f"{machine['date_utc']}-cpu-scaling", md)
    progress(f"wrote {os.path.relpath(json_path)} and bench/RESULTS.md ({elapsed:.0f} s total)")
    print()
    print(render_text(HEAD, rows))
    print()
    print(render_text(CMP_HEAD, crow))
    print(split_line)
    return 0  # the verdicts are figures to read; a failed correctness check raises instead


if __name__ == "__main__":
    sys.exit(main())
