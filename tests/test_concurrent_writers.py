"""Acceptance 4: eight concurrent writer processes (RANK 0..7), each with its own step count;
the daemon keeps every process's state apart."""

from __future__ import annotations

import os

import numpy as np

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

WORLD = 8

WORKER = r"""
import os, sys, time
import sentinel_hooks
rank = int(os.environ["RANK"])
go = sys.argv[1]
deadline = time.monotonic() + 30
while not os.path.exists(go):  # start together, so the writers really overlap
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.005)
n = 100 * (rank + 1)
for i in range(n):
    sentinel_hooks.step()
    if i % 100 == 0:
        sentinel_hooks.event(rank, a=rank, b=i, c=os.getpid(), name=f"rank{rank}")
    if i % 50 == 0:
        time.sleep(0.001)
s = sentinel_hooks.stats()
assert s["active"] and s["steps"] == n and s["errors"] == 0, s
print(n)
"""


def test_eight_concurrent_writers_distinct_state(h):
    go = h.scratch / "go"
    procs = {
        rank: h.spawn_py(WORKER, env=h.hooked_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)),
                         args=(str(go),))
        for rank in range(WORLD)
    }
    daemon = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, poll_interval=0.01))
    try:
        go.touch()

        def all_exited():
            daemon.poll_once()  # the daemon reads while the writers write
            views = daemon.snapshot.processes
            return len(views) == WORLD and all(v.exit == "exited" for v in views)

        h.wait_for(all_exited, timeout=30, interval=0.01, what="eight writers to exit")
        for rank, p in procs.items():
            out, err = p.communicate(timeout=10)
            assert p.returncode == 0, err
            assert out.decode().strip() == str(100 * (rank + 1))

        views = {v.identity["rank"]: v for v in daemon.snapshot.processes}
        assert sorted(views) == list(range(WORLD))
        rings = {p.name for p in h.rings()}
        assert len(rings) == WORLD and {v.ring for v in views.values()} == rings
        for rank, v in views.items():
            n = 100 * (rank + 1)
            assert v.identity["pid"] == procs[rank].pid
            assert v.identity["local_rank"] == rank and v.identity["world_size"] == WORLD
            assert not v.alive and v.exit == "exited"
            assert v.step == n
            assert v.kinds == {"step": n, "event": rank + 1, "mark": 2}
            assert v.records == n + rank + 1 + 2
            assert (v.torn, v.overwritten, v.dropped) == (0, 0, 0)
            assert v.ring.split(".")[1] == str(procs[rank].pid)

        # Nothing mixed up: the records the daemon holds for a process (its last 256) and the
        # whole of each ring came from that process alone.
        for ring, state in daemon.states.items():
            rank = state.identity["rank"]
            n = 100 * (rank + 1)
            assert ring not in daemon.rings.readers  # reader closed once the process ended
            last = state.last
            assert set(np.unique(last["kind"]).tolist()) <= {rf.Kind.STEP, rf.Kind.EVENT, rf.Kind.MARK}
            ev = last[last["kind"] == rf.Kind.EVENT]
            assert (ev["code"] == rank).all() and (ev["a"] == rank).all() and (ev["c"] == procs[rank].pid).all()
            steps = last[last["kind"] == rf.Kind.STEP]
            assert steps["a"].tolist() == list(range(n - len(steps) + 1, n + 1))

            reader = RingReader(os.path.join(h.dir, "rings", ring))
            try:
                recs = reader.tail(writer_alive=False).records
                names = {reader.name(int(t)) for t in recs[recs["kind"] == rf.Kind.EVENT]["tag"]}
            finally:
                reader.close()
            assert recs["seq"].tolist() == list(range(1, n + rank + 4))
            ev = recs[recs["kind"] == rf.Kind.EVENT]
            assert ev["b"].tolist() == [100 * k for k in range(rank + 1)]
            assert (ev["code"] == rank).all() and (ev["c"] == procs[rank].pid).all()
            assert names == {f"rank{rank}"}
            assert recs[recs["kind"] == rf.Kind.STEP]["a"].tolist() == list(range(1, n + 1))
    finally:
        daemon.close()
