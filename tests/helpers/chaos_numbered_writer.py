"""A hooked worker for the writer-death chaos test: writes numbered EVENT records until it is
killed, and reports each number on a pipe once ``event`` has returned, i.e. once that record's
write is complete. Record i carries a == b == c == i.

After STOP_AT records it stops writing and waits, still alive, to be killed: a cap below the ring's
capacity keeps the ring from wrapping however fast this machine writes and however late the kill
comes. MAX_S is only a guard against an orphan: past it the writer exits with 3 (the test fails on
that), whether it is still writing or waiting at the cap.

usage: chaos_numbered_writer.py REPORT_FD [MAX_S [STOP_AT]]
"""

import os
import struct
import sys
import time

import sentinel_hooks

fd = int(sys.argv[1])
deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
stop_at = int(sys.argv[3]) if len(sys.argv) > 3 else None
event, report, pack = sentinel_hooks.event, os.write, struct.Struct("<q").pack
i = 0
while stop_at is None or i < stop_at:
    event(7, a=i, b=i, c=i)
    report(fd, pack(i))  # 8 bytes: one atomic pipe write, never half a number
    i += 1
    if not i & 1023 and time.monotonic() > deadline:
        sys.exit(3)
while (left := deadline - time.monotonic()) > 0:  # at the cap: alive, writing nothing, until killed
    time.sleep(min(left, 1.0))
sys.exit(3)
