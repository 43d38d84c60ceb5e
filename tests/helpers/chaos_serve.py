"""A stand-in serving process for the full-disk chaos test: a deterministic workload that calls
the hooks every step, prints its results and exits 3. Its stdout and exit code must be the same
with and without Sentinel, whatever the disk does.

usage: chaos_serve.py STATS_OUT STEPS [GATE_FILE]
With GATE_FILE it stops halfway until that file exists (the test fills the disk meanwhile).
STATS_OUT gets sentinel_hooks.stats() as JSON.
"""

import hashlib
import json
import os
import sys
import time

import sentinel_hooks

stats_out, steps = sys.argv[1], int(sys.argv[2])
gate = sys.argv[3] if len(sys.argv) > 3 else None
acc = hashlib.sha256()
for i in range(steps):
    if gate and i == steps // 2:
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    sentinel_hooks.step()
    sentinel_hooks.event(1, a=i, b=2 * i, c=3 * i)
    acc.update(i.to_bytes(8, "little"))
    if i % 250 == 0:
        print(f"step {i} {acc.hexdigest()[:16]}")
print("done", acc.hexdigest())
with open(stats_out, "w") as f:
    json.dump(sentinel_hooks.stats(), f)
sys.exit(3)
