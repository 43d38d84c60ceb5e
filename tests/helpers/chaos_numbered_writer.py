"""A hooked worker for the writer-death chaos test: writes numbered EVENT records until it is
killed, and reports each number on a pipe once ``event`` has returned, i.e. once that record's
write is complete. Record i carries a == b == c == i.

usage: chaos_numbered_writer.py REPORT_FD [MAX_S]
"""

import os
import struct
import sys
import time

import sentinel_hooks

fd = int(sys.argv[1])
deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 30.0)
event, report, pack = sentinel_hooks.event, os.write, struct.Struct("<q").pack
i = 0
while True:
    event(7, a=i, b=i, c=i)
    report(fd, pack(i))  # 8 bytes: one atomic pipe write, never half a number
    i += 1
    if not i & 1023 and time.monotonic() > deadline:
        sys.exit(3)
