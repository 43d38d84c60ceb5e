"""A ring writer that rewrites every mutable header field as fast as it can, for the torn-read test
(tests/test_header_reads.py): ``step()`` (heartbeat words), ``note_dropped()`` (a counter word) and,
every IDENTITY_EVERY steps, ``set_identity`` alternating between two identities whose fields differ
in every byte and in length, so a half-rewritten block is told from either whole one.

usage: header_hammer.py SENTINEL_DIR STOP_FILE

Prints the ring's path once it exists and its first step is written, then writes until STOP_FILE
exists (looked for every 4096 steps), or for at most 300 s.
"""

import os
import sys
import time

from sentinel_hooks.writer import RingWriter

IDENTITIES = ({"framework": "alpha", "framework_version": "1.0", "job": "a"},
              {"framework": "zzzzzzzzzzzzzzzzzzzz", "framework_version": "22.333.4444", "job": "zzzzzzzzzzzzzzzz"})
IDENTITY_EVERY = 2048


def main() -> None:
    base, stop = sys.argv[1], sys.argv[2]
    w = RingWriter.create(base, {"pid": os.getpid(), "host": "hammer", "rank": 0, **IDENTITIES[0]}, capacity=1024)
    w.step()
    print(w.path, flush=True)
    deadline = time.monotonic() + 300
    step, dropped, which = w.step, w.note_dropped, 0
    while True:
        for i in range(4096):
            step()
            dropped()
            if not i % IDENTITY_EVERY:
                which ^= 1
                w.set_identity(**IDENTITIES[which])
        if os.path.exists(stop) or time.monotonic() > deadline:
            break
    w.close()


if __name__ == "__main__":
    main()
