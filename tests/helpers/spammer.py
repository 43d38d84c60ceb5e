"""A hooked worker writing numbered EVENT records in a tight loop until it is killed.

Record i carries a == b == c == i, so a reader can tell a self-consistent record from a torn one.
usage: spammer.py [MAX_S]
"""

import sys
import time

import sentinel_hooks

event = sentinel_hooks.event
deadline = time.monotonic() + (float(sys.argv[1]) if len(sys.argv) > 1 else 30.0)
i = 0
while True:
    for _ in range(1000):
        event(7, a=i, b=i, c=i)
        i += 1
    if time.monotonic() > deadline:
        sys.exit(3)
