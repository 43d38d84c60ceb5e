"""Detection and cost against compute-sanitizer memcheck, on the same paged-attention step.

Each configuration is a fresh process of bench/sanitizer_workload.py:
  no checks           the step alone: does the bad index fault?
  memcheck            the same under `compute-sanitizer --tool memcheck`: does it report errors?
  sentinel observe    check_paged_kv before every step: does the ring hold a page_table_oob?
  sentinel contain    the same, redirecting bad indices in place: reported, and no fault?
for a clean table, an off-by-one index (== num_pages) and a far one (2**30), on the decode step
and, for the off-by-one, on the reference experiment's paged gather. Cost: the clean step timed
with and without probes in one process (interleaved), and under memcheck.

Run by bench/gpu.sh; writes sanitizer.json and sanitizer.md to --out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "sanitizer_workload.py")


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        cand = os.path.join(base, "bin", "compute-sanitizer") if base else ""
        if cand and os.access(cand, os.X_OK):
            return cand
    hits = sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))
    return hits[-1] if hits else None


def oob_in_rings(sdir: str) -> int:
    """page_table_oob violations the hooks wrote to the rings under sdir (read as the daemon reads)."""
    from sentinel.daemon.ringreader import RingReader
    from sentinel_hooks import ringformat as rf

    total = 0
    for path in glob.glob(os.path.join(sdir, "rings", "*" + rf.RING_SUFFIX)):
        recs = RingReader(path).tail(writer_alive=False).records
        bad = recs[(recs["kind"] == rf.Kind.PROBE) & (recs["code"] == rf.Check.PAGE_TABLE_OOB)]
        total += int(bad["a"].sum())
    return total


def run(label: str, argv: list[str], *, sanitizer: str | None = None, probes: str = "none",
        timeout: float = 300.0) -> dict:
    work = tempfile.mkdtemp(prefix="sentinel-san-")
    result_file = os.path.join(work, "result.json")
    env = dict(os.environ, SENTINEL_DIR=os.path.join(work, "sentinel"))
    cmd = [sys.executable, WORKLOAD, *argv, "--probes", probes, "--result", result_file]
    if sanitizer:
        cmd = [sanitizer, "--tool", "memcheck", "--print-limit", "4", *cmd]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = None, (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
    wall = time.monotonic() - t0
    res: dict = {}
    if os.path.exists(result_file):
        with open(result_file) as f:
            res = json.load(f)
    res.update(label=label, rc=rc, wall_s=round(wall, 1))
    if sanitizer:
        m = re.search(r"ERROR SUMMARY: (\d+) error", out)
        res["memcheck_errors"] = int(m.group(1)) if m else None
        res["memcheck_invalid_global_reads"] = len(re.findall(r"Invalid __global__ read", out))
        kinds = sorted(set(re.findall(r"========= (Invalid [^\n]*?|Program hit [^\n]*?)(?: of size|\n| \(| at )", out)))
        res["memcheck_kinds"] = kinds[:4]
    if probes != "none":
        res["oob_reported"] = oob_in_rings(env["SENTINEL_DIR"])
    if "faulted" not in res:
        res["faulted"] = rc != 0
        res.setdefault("error", (re.findall(r"(CUDA error[^\n]*|RuntimeError[^\n]*)", out) or [f"rc {rc}"])[-1][:200])
    if rc not in (0, None) and not res.get("faulted"):
        res["tail"] = out[-2000:]
    shutil.rmtree(work, ignore_errors=True)
    print(f"  {label}: rc {rc}, {wall:.1f} s, faulted {res.get('faulted')}, memcheck errors "
          f"{res.get('memcheck_errors', '-')}, sentinel reported {res.get('oob_reported', '-')}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--render", metavar="JSON", help="only re-render sanitizer.md beside a fetched sanitizer.json")
    args = ap.parse_args()
    if args.render:
        rerender(args.render)
        return 0
    os.makedirs(args.out, exist_ok=True)
    import torch

    dev = torch.cuda.get_device_name()
    san = find_sanitizer()
    if not san:
        print("compute-sanitizer not found: skipping the memcheck comparison", flush=True)
        return 0
    ver = subprocess.run([san, "--version"], capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    print(f"device: {dev}; {ver[-1] if ver else san}", flush=True)
    t0 = time.monotonic()
    runs: dict[str, dict] = {}
    # -- cost: the clean step, with and without probes in one process, then under memcheck --------
    runs["cost"] = run("clean, probes vs none (one process)", ["--case", "clean", "--iters", "20", "--rounds", "9"],
                       probes="both-timed")
    runs["cost_memcheck"] = run("clean, memcheck", ["--case", "clean", "--iters", "5", "--rounds", "3"], sanitizer=san)
    # -- detection ------------------------------------------------------------------------------
    for case, kernel in CASES:
        base = ["--case", case, "--kernel", kernel, "--iters", "3", "--rounds", "1"]
        key = f"{case}_{kernel}"
        runs[f"{key}_plain"] = run(f"{key}, no checks", base)
        runs[f"{key}_memcheck"] = run(f"{key}, memcheck", base, sanitizer=san)
        runs[f"{key}_observe"] = run(f"{key}, sentinel observe", base, probes="observe")
        runs[f"{key}_contain"] = run(f"{key}, sentinel contain", base, probes="contain")
    elapsed = time.monotonic() - t0

    cost, mc = runs["cost"], runs["cost_memcheck"]
    plain_ms, probed_ms, mc_ms = cost.get("plain_ms"), cost.get("probed_ms"), mc.get("ms_per_step")
    result = {"date": time.strftime("%Y-%m-%d"), "device": dev, "sanitizer": ver[-1] if ver else None,
              "runs": runs, "sentinel_ratio": probed_ms / plain_ms if plain_ms and probed_ms else None,
              "memcheck_ratio": mc_ms / plain_ms if plain_ms and mc_ms else None, "seconds": round(elapsed, 1)}
    table = render(result)
    with open(os.path.join(args.out, "sanitizer.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "sanitizer.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(table)
    return 0


CASES = [("offbyone", "decode"), ("far", "decode"), ("offbyone", "gather")]


def render(result: dict) -> str:
    """The markdown table and its notes, from the JSON result (also used to re-render a fetched one)."""
    runs = result["runs"]
    cost, mc = runs["cost"], runs["cost_memcheck"]
    plain_ms, probed_ms, mc_ms = cost.get("plain_ms"), cost.get("probed_ms"), mc.get("ms_per_step")

    def outcome(r: dict, what: str) -> str:
        fault = "faulted" if r.get("faulted") else "ran on"
        if what == "memcheck":
            n = r.get("memcheck_errors")
            return f"{n} errors, {fault}" if n is not None else f"no summary, {fault}"
        if what == "sentinel":
            return f"{r.get('oob_reported', 0)} reported, {fault}"
        return fault

    lines = [
        f"compute-sanitizer comparison — {result['date']}, {result['device']}, compute-sanitizer "
        f"{result.get('sanitizer') or ''}; decode = the probe-overhead step (batch 64, 4k context, eager); "
        "gather = the reference experiment's kernel (8657 pages of 64 bf16); default caching allocator, as in "
        "serving; every configuration a fresh process",
        "",
        "| bad index | kernel | no checks | memcheck | Sentinel observe | Sentinel contain |",
        "|---|---|---|---|---|---|",
    ]
    for case, kernel in CASES:
        key = f"{case}_{kernel}"
        label = "== num_pages (off by one)" if case == "offbyone" else "2**30 (far)"
        lines.append(f"| {label} | {kernel} | {outcome(runs[key + '_plain'], 'plain')} | "
                     f"{outcome(runs[key + '_memcheck'], 'memcheck')} | {outcome(runs[key + '_observe'], 'sentinel')} | "
                     f"{outcome(runs[key + '_contain'], 'sentinel')} |")
    lines += ["", "| cost of the clean decode step | ms/step (median) | min..max | ratio to no checks |",
              "|---|---|---|---|"]
    if plain_ms:
        lo, hi = cost["plain_min_max"]
        lines.append(f"| no checks | {plain_ms:.4f} | {lo:.4f}..{hi:.4f} | 1.00 |")
    if probed_ms:
        lo, hi = cost["probed_min_max"]
        lines.append(f"| Sentinel probes (same process, interleaved) | {probed_ms:.4f} | {lo:.4f}..{hi:.4f} | "
                     f"{result['sentinel_ratio']:.3f} |")
    if mc_ms:
        lo, hi = mc["min_max"]
        lines.append(f"| compute-sanitizer memcheck | {mc_ms:.3f} | {lo:.3f}..{hi:.3f} | "
                     f"{result['memcheck_ratio']:.1f} |")
    lines += [
        "",
        "- Sentinel's count is per probed step (observe) or per redirected entry (contain: the table is "
        "repaired in place at the first step, so 1).",
        "- Whether an off-by-one read faults depends on what lies past the cache. The reference gather's "
        "neighbour is mapped: silent, and memcheck sees 0 errors. The decode step's 514 MiB cache is a whole "
        "number of 2 MiB allocator pages, and the same bug faulted there without checks (memcheck reports it "
        "too); in the runs with the hooks loaded it ran on (the memory past the cache differed). The probe "
        "reports it either way.",
        "- Far index in observe mode: the probe ran before the faulting kernel, but its counters are on the "
        "device, and the fault kills the CUDA context before the asynchronous drain copies them, so the ring "
        "holds 0 probe reports. Sentinel still names this fault through its fault path (coredump, cuda-gdb, "
        "catalog-matched record: see the faults table). Contain mode redirects the index and the step runs on.",
        f"- memcheck's whole run of the clean step took {mc.get('wall_s')} s (start-up under the sanitizer "
        f"included); the comparison took {result['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def rerender(path: str) -> None:
    with open(path) as f:
        result = json.load(f)
    with open(os.path.join(os.path.dirname(path), "sanitizer.md"), "w") as f:
        f.write(render(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
