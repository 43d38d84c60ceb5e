"""A hooked serving loop for the daemon-restart chaos test. Each step is 2 ms of waiting (a step
bound by the GPU, as the host sees it) plus ``sentinel_hooks.step()``. It records when each step
ended, how long it took and how long the hook call in it took, and on a stop file exits cleanly,
writing those with its stats as JSON to OUT.

usage: chaos_stepper.py STOP_FILE OUT [MAX_S] [--violation]
With --violation it first hands the paged-KV probe one out-of-range page index (needs torch).
"""

import json
import os
import sys
import time

import sentinel_hooks

stop, out = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 120.0)
if "--violation" in sys.argv:
    import torch

    table = torch.zeros((4, 8), dtype=torch.int32)
    table[2, 3] = 64  # one past the end of a 64-page cache
    sentinel_hooks.check_paged_kv(table, 64, name="chaos")
clock, step, pause = time.monotonic_ns, sentinel_hooks.step, time.sleep
ends, steps, hooks = [], [], []
n = 0
while not os.path.exists(stop):
    if time.monotonic() > deadline:
        print("chaos_stepper: no stop file before the deadline", file=sys.stderr)
        sys.exit(3)
    t0 = clock()
    pause(0.002)
    t1 = clock()
    step()
    t2 = clock()
    n += 1
    ends.append(t2)
    steps.append(t2 - t0)
    hooks.append(t2 - t1)
with open(out + ".tmp", "w") as f:
    json.dump({"steps": n, "stats": sentinel_hooks.stats(), "end_ns": ends, "step_ns": steps, "hook_ns": hooks}, f)
os.rename(out + ".tmp", out)
