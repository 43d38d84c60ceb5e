"""Shared helpers for the benchmarks: spread statistics, machine description, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import sys
from typing import Any

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
RESULTS_MD = os.path.join(BENCH_DIR, "RESULTS.md")


class BenchError(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    """Correct before fast: a benchmark stops at the first wrong result."""
    if not cond:
        raise BenchError(f"correctness check failed: {what}")


def progress(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def spread(values: Any) -> dict[str, float]:
    """Median with p10/p90 and min/max of a sample."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p10": float(np.percentile(a, 10)),
        "p90": float(np.percentile(a, 90)),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def clocksource() -> str:
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def cpu_ticks() -> list[int]:
    """The aggregate `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_pct(before: list[int], after: list[int]) -> float | None:
    """Share of CPU time the hypervisor gave to others between two cpu_ticks() readings."""
    if len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])
    return 100.0 * (after[7] - before[7]) / total if total > 0 else None


def machine_info() -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "date_utc": now.strftime("%Y-%m-%d"),
        "time_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": "cpu",
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "numpy": np.__version__,
        "kernel": platform.release(),
        "clocksource": clocksource(),
        # Relative to the repository when it is the project's venv: no machine paths in results.
        "executable": (os.path.relpath(sys.executable, os.path.dirname(BENCH_DIR))
                       if sys.executable.startswith(os.path.dirname(BENCH_DIR) + os.sep) else os.path.basename(sys.executable)),
    }


def write_json(name: str, payload: dict[str, Any]) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{payload['machine']['date_utc']}-{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path


MD_HEADER = """# Benchmark results

Dated sections, newest last. Each is written by a benchmark script (`make bench` runs
`bench/datapath.py`); a rerun on the same UTC day replaces that day's section of the same
benchmark. Raw figures are in `bench/results/<date>-<name>.json`.
"""


def update_results_md(key: str, section: str) -> str:
    """Insert or replace the section delimited by markers for ``key`` (e.g. 2025-01-01-cpu-datapath)."""
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    try:
        with open(RESULTS_MD) as f:
            text = f.read()
    except FileNotFoundError:
        text = MD_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block
    with open(RESULTS_MD + ".tmp", "w") as f:
        f.write(text)
    os.replace(RESULTS_MD + ".tmp", RESULTS_MD)
    return RESULTS_MD
