"""Record a GPU run's results (fetched from the device) in bench/RESULTS.md and bench/results/.

    python bench/record_gpu.py DIR      # DIR: the results of tests/gpu/run.sh or bench/gpu.sh
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, update_results_md  # noqa: E402


def main(src: str) -> int:
    with open(os.path.join(src, "gpu_probes.json")) as f:
        result = json.load(f)
    with open(os.path.join(src, "gpu_probes.md")) as f:
        table = f.read()
    slug = result["device"].split()[1].lower() if result["device"].startswith("NVIDIA") else "gpu"
    key = f"{result['date']}-{slug}-gpu-probes"
    os.makedirs(RESULTS_DIR, exist_ok=True)
    shutil.copy(os.path.join(src, "gpu_probes.json"), os.path.join(RESULTS_DIR, f"{key}.json"))
    tests = os.path.join(src, "gpu-tests.log")
    if os.path.exists(tests):
        shutil.copy(tests, os.path.join(RESULTS_DIR, f"{key}-tests.log"))
    title, _, body = table.partition("\n")
    section = (f"## {result['date']}: GPU probe overhead on {result['device']} (`bench/gpu_probes.py`)\n\n"
               f"{title}. Raw: `bench/results/{key}.json`; the GPU test log beside it.\n{body}")
    update_results_md(key, section)
    print(f"recorded {key}")
    record_faults(src, result["date"], slug, result["device"])
    for name, title in (("gpu_scaling", "GPU probe cost against batch size and table width"),
                        ("sanitizer", "detection and cost against compute-sanitizer memcheck")):
        record_table(src, name, title, result["date"], slug, result["device"])
    return 0


def record_table(src: str, name: str, title: str, date: str, slug: str, device: str) -> None:
    """A benchmark that wrote NAME.json and NAME.md (bench/gpu.sh), if present."""
    js, md = os.path.join(src, f"{name}.json"), os.path.join(src, f"{name}.md")
    if not (os.path.exists(js) and os.path.exists(md)):
        return
    key = f"{date}-{slug}-{name.replace('_', '-')}"
    shutil.copy(js, os.path.join(RESULTS_DIR, f"{key}.json"))
    with open(md) as f:
        head, _, body = f.read().partition("\n")
    update_results_md(key, f"## {date}: {title} on {device} (`bench/{name}.py`)\n\n{head}. "
                      f"Raw: `bench/results/{key}.json`.\n{body}")
    print(f"recorded {key}")


def record_faults(src: str, date: str, slug: str, device: str) -> None:
    """The fault-to-record time (from the GPU test log) and the coredump captures, if present."""
    cap = os.path.join(src, "transcripts", "capture_faults.json")
    tests = os.path.join(src, "gpu-tests.log")
    lines = []
    if os.path.exists(tests):
        for ln in open(tests):
            if ln.startswith('{"fault_to_record_s"'):
                d = json.loads(ln)
                lines.append(f"- A real illegal-address fault under `sentinel run` became a journaled, catalog-matched "
                             f"fault record {d['fault_to_record_s']} s after the faulting launch (goal: 20 s). "
                             f"cuda-gdb took {d['triage_s']:.2f} s of that, on a {d['core_bytes']} byte dump.")
                if d.get("dump_written_s") is not None:
                    floor = d["dump_written_s"] + d["triage_s"]
                    lines.append(f"- The manual path's floor for the same fault: the dump finished {d['dump_written_s']} s "
                                 f"after the launch, plus one cuda-gdb run ({d['triage_s']:.2f} s) = {floor:.2f} s, "
                                 f"before anyone reads it. Sentinel's record came {d['fault_to_record_s'] / floor:.2f}x "
                                 f"that floor, {d['fault_to_record_s'] - floor:+.2f} s: it waits for the faulting process to exit and "
                                 f"the dump to stay unchanged for 0.5 s, so cuda-gdb never reads a half-written dump.")
    if os.path.exists(cap):
        with open(cap) as f:
            rows = json.load(f)["rows"]
        lines += ["", "Coredumps of real faults (skip_* generation flags), and cuda-gdb on each:", "",
                  "| fault | dump bytes | fault run s (dump written) | cuda-gdb s | exception | kernel |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['fault']} | {r.get('dump_bytes')} | {r.get('run_s')} | {r.get('gdb_s')} | "
                         f"{r.get('exception')} | `{r.get('kernel')}` |")
        lines += ["", "The manual path's floor, for comparison: writing the dump (the fault run) plus one cuda-gdb run."]
    if lines:
        key = f"{date}-{slug}-gpu-faults"
        update_results_md(key, f"## {date}: GPU faults to triaged records on {device} (`tests/gpu/`)\n\n"
                          + "\n".join(lines) + "\n")
        print(f"recorded {key}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
