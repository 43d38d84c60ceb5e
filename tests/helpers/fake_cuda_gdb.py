"""A stand-in for cuda-gdb in CI, which has no GPU and no cuda-gdb: the real debugger runs in the
GPU suite (tests/gpu/test_faults_cuda.py). Called with cuda-gdb's arguments; prints the real
transcript a test core file names (first line ``TRANSCRIPT <fixture file>``), or what cuda-gdb
prints for a file that is not a GPU coredump."""

import os
import sys

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "cuda-gdb")

core = next(a.split(" ", 2)[2] for a in sys.argv if a.startswith("target cudacore "))
with open(core, "rb") as f:
    head = f.read(200)
if head.startswith(b"TRANSCRIPT "):
    name = head.split(b"\n", 1)[0].split(b" ", 1)[1].decode().strip()
    text = open(os.path.join(FIXTURES, name)).read()
    print("\n".join(ln for ln in text.splitlines() if not ln.startswith("#")))
    sys.exit(0)
print(f'"{core}" is not a CUDA core dump file.', file=sys.stderr)
print("Error: Failed to open GPU coredump", file=sys.stderr)
sys.exit(1)
