"""Ring-folder churn for the ring-storm chaos test: TOTAL files appear in SENTINEL_DIR/rings in
bursts of BURST and vanish again. Half are valid small rings with a few records (most writers exit
cleanly, some die, some vanish while still open); half are junk: random bytes, a bare header,
empty files, stray temp files, files that are not rings at all. Prints a JSON summary.

usage: chaos_ring_storm.py BASE_DIR TOTAL BURST SEED [PERIOD_S] [LIVE] [HOLD]
A burst starts every PERIOD_S seconds (default 0.5), or as soon as the last one is made if that
takes longer; LIVE bursts (default 3) exist at once: each new one sends the oldest away.
With HOLD (a path), the last LIVE bursts stay once the storm is made: their names go to
HOLD.ready (JSON: "valid", "junk" and "other" names), and they vanish once HOLD exists (or after
300 s), so that a test can check what the daemon did with each of them whatever its pace.
"""

import collections
import json
import os
import random
import sys
import time

from sentinel_hooks import layout
from sentinel_hooks import ringformat as rf
from sentinel_hooks.writer import RingWriter

base, total, burst, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
period = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
live = int(sys.argv[6]) if len(sys.argv) > 6 else 3
hold = sys.argv[7] if len(sys.argv) > 7 else None
rng = random.Random(seed)
rings = layout.rings_dir(base)
os.makedirs(rings, mode=0o700, exist_ok=True)
made = {"valid": 0, "junk": 0, "bursts": 0}
alive: collections.deque = collections.deque()  # (paths, writers) of the bursts on disk
valid_paths: set = set()  # the valid rings' paths (the rest is junk or not a ring at all)


def vanish(paths: list, writers: list) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass  # the daemon deletes the rings of dead processes it forgets (past 256 kept)
    for w in writers:
        w.close(clean_exit=rng.random() < 0.5)  # no-op for those that exited already


n = 0
t0 = time.monotonic()
while n < total:
    writers, paths = [], []
    for _ in range(min(burst, total - n)):
        n += 1
        if rng.random() < 0.5:
            w = RingWriter.create(base, {"pid": 1_000_000 + n, "host": "storm", "rank": n % 64}, capacity=8)
            for i in range(rng.randrange(1, 6)):
                w.step()
                w.emit(rf.Kind.EVENT, 1, i, i, i)
            writers.append(w)
            paths.append(w.path)
            valid_paths.add(w.path)
            made["valid"] += 1
            continue
        kind = rng.randrange(5)
        name = f"junk{n}.{kind}{rf.RING_SUFFIX}"
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 40000))
        elif kind == 1:
            data = rf.pack_header({"pid": 1}, 1024, 0)  # a header, no records
        elif kind == 2:
            data = b""
        elif kind == 3:
            name = f".storm{n}{rf.RING_SUFFIX}.tmp"  # a writer's temp file, never renamed
            data = b"\0" * 100
        else:
            name = f"notes{n}.txt"
            data = b"not a ring"
        path = os.path.join(rings, name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
        made["junk"] += 1
    # Some writers exit (clean mark), some die (no mark), the rest vanish while still open.
    for w in writers:
        r = rng.random()
        if r < 0.6:
            w.close(clean_exit=True)
        elif r < 0.7:
            w.close(clean_exit=False)
    alive.append((paths, writers))
    made["bursts"] += 1
    if len(alive) > live:
        vanish(*alive.popleft())
    time.sleep(max(0.0, t0 + made["bursts"] * period - time.monotonic()))
made["seconds"] = round(time.monotonic() - t0, 2)
if hold is not None:
    names = {"valid": [], "junk": [], "other": []}
    for paths, _writers in alive:
        for p in paths:
            name = os.path.basename(p)
            kind = ("valid" if p in valid_paths else
                    "junk" if name.endswith(rf.RING_SUFFIX) and not name.startswith(".") else "other")
            names[kind].append(name)
    with open(hold + ".ready.tmp", "w") as f:
        json.dump(names, f)
    os.rename(hold + ".ready.tmp", hold + ".ready")
    held_until = time.monotonic() + 300  # an orphan guard only
    while not os.path.exists(hold) and time.monotonic() < held_until:
        time.sleep(0.05)
while alive:
    vanish(*alive.popleft())
print(json.dumps(made))
