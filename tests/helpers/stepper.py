"""A hooked worker: steps until a stop file appears, then exits cleanly and prints its stats.

usage: stepper.py STOP_FILE DELAY_S [MAX_S]
"""

import json
import os
import sys
import time

import sentinel_hooks

stop, delay = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 60.0)
n = 0
while not os.path.exists(stop):
    if time.monotonic() > deadline:
        print("stepper: no stop file before the deadline", file=sys.stderr)
        sys.exit(3)
    sentinel_hooks.step()
    n += 1
    time.sleep(delay)
print(json.dumps({"steps": n, "stats": sentinel_hooks.stats()}))
