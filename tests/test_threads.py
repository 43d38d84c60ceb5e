"""Hooks called from several threads of one process (extra to the acceptance list).

Runs in subprocesses with a tiny GIL switch interval, so thread switches land inside the hooks.
"""

from __future__ import annotations

import json
import time

import numpy as np

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

THREADS, PER_THREAD = 4, 20000

PROGRAM = r"""
import json, sys, threading
import sentinel_hooks
sys.setswitchinterval(1e-6)
what, per = sys.argv[1], int(sys.argv[2])
def work(t):
    for i in range(per):
        if what == "event":
            sentinel_hooks.event(t, a=i, b=i, c=t)
        else:
            sentinel_hooks.step()
threads = [threading.Thread(target=work, args=(t,)) for t in range(int(sys.argv[3]))]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(sentinel_hooks.stats()))
"""


def _run(h, what: str):
    env = h.hooked_env(SENTINEL_RING_CAPACITY=str(1 << 17))
    res = h.run_py(PROGRAM, env=env, args=(what, str(PER_THREAD), str(THREADS)), timeout=60)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    (ring,) = h.rings()
    r = RingReader(str(ring))
    try:
        return stats, r.header, r.tail(writer_alive=False)
    finally:
        r.close()


def test_events_from_many_threads_get_distinct_whole_slots(h):
    stats, header, res = _run(h, "event")
    assert stats["errors"] == 0 and res.torn == 0
    ev = res.records[res.records["kind"] == rf.Kind.EVENT]
    assert len(ev) == THREADS * PER_THREAD
    assert len(np.unique(res.records["seq"])) == len(res.records)
    for t in range(THREADS):
        mine = ev[ev["code"] == t]
        assert (mine["c"] == t).all() and (mine["a"] == mine["b"]).all()
        assert sorted(mine["a"].tolist()) == list(range(PER_THREAD))


def test_steps_from_many_threads_are_all_counted(h):
    stats, header, res = _run(h, "step")
    steps = res.records[res.records["kind"] == rf.Kind.STEP]
    assert len(steps) == THREADS * PER_THREAD  # every call wrote its record...
    assert stats["steps"] == THREADS * PER_THREAD  # ...but was it counted?
    assert header["step"] == THREADS * PER_THREAD
    assert sorted(steps["a"].tolist()) == list(range(1, THREADS * PER_THREAD + 1))


def test_live_reader_gets_every_threaded_record_exactly_once(h):
    """Threads take sequence numbers and store their records out of order; a reader tailing the
    live ring must still hand out each record once, and lose or tear none."""
    env = h.hooked_env(SENTINEL_RING_CAPACITY=str(1 << 17))
    proc = h.spawn_py(PROGRAM, env=env, args=("event", str(PER_THREAD), str(THREADS)))
    ring = h.wait_for(lambda: h.rings(), timeout=15, what="the ring")[0]
    reader = RingReader(str(ring))
    got, lost, torn = [], 0, 0
    deadline = time.monotonic() + 30
    try:
        while True:
            assert time.monotonic() < deadline, "writer did not finish"
            alive = reader.writer_alive()
            res = reader.tail(writer_alive=alive)
            got.append(res.records)
            lost += res.overwritten
            torn += res.torn
            if not alive:
                break
            assert proc.poll() is None or proc.returncode == 0
        assert proc.wait(timeout=30) == 0
    finally:
        reader.close()
    recs = np.concatenate(got)
    assert (lost, torn) == (0, 0)
    assert recs["seq"].tolist() == list(range(1, THREADS * PER_THREAD + 3))  # + START and EXIT marks
    ev = recs[recs["kind"] == rf.Kind.EVENT]
    for t in range(THREADS):
        assert sorted(ev[ev["code"] == t]["a"].tolist()) == list(range(PER_THREAD))
