"""Make real CUDA faults, let CUDA write a coredump for each, and save cuda-gdb's transcript.

Run on a GPU machine (tests/gpu/run.sh does): python tests/gpu/capture_faults.py OUTDIR
Writes OUTDIR/cuda-gdb-<fault>.txt, each headed by a note of how it was made; the parser tests
in tests/fixtures/cuda-gdb/ are these files. Prints a table of dump sizes and times.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [REPO, os.path.join(REPO, "hooks")]

from sentinel.triage.readers import cudagdb  # noqa: E402
from sentinel_hooks.crash import SKIP_FLAGS  # noqa: E402

PRELUDE = r"""
import torch, triton, triton.language as tl
@triton.jit
def paged_gather(table_ptr, cache_ptr, out_ptr, PAGE: tl.constexpr):
    pid = tl.program_id(0)
    page = tl.load(table_ptr + pid).to(tl.int64)
    offs = tl.arange(0, PAGE)
    v = tl.load(cache_ptr + page * PAGE + offs)
    tl.store(out_ptr + pid * PAGE + offs, v)
def gather_args(bad):
    num_pages, page = 8657, 64
    cache = torch.randn(num_pages * page, device="cuda", dtype=torch.bfloat16)
    table = torch.randint(0, num_pages, (512,), device="cuda", dtype=torch.int32)
    table[7] = bad
    out = torch.empty(512 * page, device="cuda", dtype=torch.bfloat16)
    return table, cache, out
"""

FAULTS = {
    "illegal-address": PRELUDE + r"""
table, cache, out = gather_args(2**30)
paged_gather[(512,)](table, cache, out, PAGE=64)
torch.cuda.synchronize()
""",
    "illegal-address-in-graph": PRELUDE + r"""
table, cache, out = gather_args(0)
paged_gather[(512,)](table, cache, out, PAGE=64)
torch.cuda.synchronize()
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    paged_gather[(512,)](table, cache, out, PAGE=64)
table[7] = 2**30
g.replay()
torch.cuda.synchronize()
""",
    "misaligned-address": r"""
import cupy as cp
k = cp.RawKernel(r'''
extern "C" __global__ void misaligned_load(const char* p, double* out) {
    out[threadIdx.x] = *(const double*)(p + 1 + threadIdx.x * 8);
}''', "misaligned_load")
buf = cp.zeros(4096, dtype=cp.uint8)
out = cp.zeros(32, dtype=cp.float64)
k((1,), (32,), (buf, out))
cp.cuda.runtime.deviceSynchronize()
""",
    "device-assert": r"""
import torch
x = torch.randn(1000, 64, device="cuda")
idx = torch.tensor([1, 2, 10**6], device="cuda")
y = x[idx]
torch.cuda.synchronize()
""",
    "trap": r"""
import cupy as cp
k = cp.RawKernel(r'''
extern "C" __global__ void sentinel_trap_kernel(int* out) {
    if (threadIdx.x == 3) asm volatile("trap;");
    out[threadIdx.x] = threadIdx.x;
}''', "sentinel_trap_kernel")
out = cp.zeros(32, dtype=cp.int32)
k((1,), (32,), (out,))
cp.cuda.runtime.deviceSynchronize()
""",
}


def main(out_dir: str) -> int:
    os.makedirs(out_dir, exist_ok=True)
    gdb = cudagdb.find_cuda_gdb()
    if gdb is None:
        print("cuda-gdb not found", file=sys.stderr)
        return 1
    import torch

    dev = torch.cuda.get_device_name()
    rows = []
    for name, code in FAULTS.items():
        cores = tempfile.mkdtemp(prefix=f"cores-{name}-")
        env = dict(os.environ, CUDA_ENABLE_COREDUMP_ON_EXCEPTION="1", CUDA_ENABLE_CPU_COREDUMP_ON_EXCEPTION="0",
                   CUDA_COREDUMP_FILE=os.path.join(cores, "core_%h_%p_%t.nvcudmp"),
                   CUDA_COREDUMP_GENERATION_FLAGS=SKIP_FLAGS)
        script = os.path.join(cores, f"{name.replace('-', '_')}.py")  # Triton needs its kernels in a file
        with open(script, "w") as f:
            f.write(code)
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=240)
        run_s = time.monotonic() - t0
        files = glob.glob(os.path.join(cores, "*.nvcudmp"))
        if not files:
            rows.append({"fault": name, "rc": p.returncode, "dump": None, "error": p.stderr[-500:]})
            print(f"{name}: no coredump (rc {p.returncode}): {p.stderr[-300:]}", flush=True)
            continue
        core = files[0]
        text, gdb_s = cudagdb.run(core, gdb, 120)
        rep = cudagdb.parse(text)
        header = (f"# Captured {time.strftime('%Y-%m-%d')} on {dev} by tests/gpu/capture_faults.py ({name}).\n"
                  f"# The program faulted under CUDA_ENABLE_COREDUMP_ON_EXCEPTION=1 with\n"
                  f"# CUDA_COREDUMP_GENERATION_FLAGS={SKIP_FLAGS};\n"
                  f"# the dump ({os.path.getsize(core)} bytes) was read with sentinel.cudagdb.run:\n"
                  f"#   cuda-gdb -nx -batch -ex 'target cudacore CORE' "
                  + " ".join(f"-ex '{c}'" for c in cudagdb.GDB_COMMANDS) + "\n"
                  "# Host paths and the host name are replaced by placeholders.\n")
        clean = text.replace(socket.gethostname(), "HOST").replace(cores, "/cores").replace(REPO, "/repo")
        clean = re.sub(r"/tmp/cores-[A-Za-z0-9_-]+/", "/cores/", clean)  # Triton's cache keeps the first script's path
        with open(os.path.join(out_dir, f"cuda-gdb-{name}.txt"), "w") as f:
            f.write(header + clean)
        rows.append({"fault": name, "rc": p.returncode, "dump_bytes": os.path.getsize(core),
                     "run_s": round(run_s, 2), "gdb_s": round(gdb_s, 2), "exception": rep.exception,
                     "kernel": rep.kernel, "stderr_tail": p.stderr.strip().splitlines()[-1:] if p.stderr else []})
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(out_dir, "capture_faults.json"), "w") as f:
        json.dump({"device": dev, "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=2)
    print("\n| fault | dump bytes | run s | cuda-gdb s | exception | kernel |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fault']} | {r.get('dump_bytes')} | {r.get('run_s')} | {r.get('gdb_s')} | "
              f"{r.get('exception')} | {r.get('kernel')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
