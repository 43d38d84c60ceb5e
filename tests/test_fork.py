"""Acceptance 9: fork safety. Parent and child each get their own ring; the child never writes
into its parent's ring, and does not keep its parent's lock alive (a dead parent reads as dead)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

FORKER = r"""
import json, os, signal, sys, time
import sentinel_hooks
stop, report = sys.argv[1], sys.argv[2]
for _ in range(10):
    sentinel_hooks.step()
sentinel_hooks.event(1, a=os.getpid())
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # do not hold the test's pipes open
    os.dup2(devnull, 2)
    for _ in range(20):
        sentinel_hooks.step()
    sentinel_hooks.event(2, a=os.getpid())
    os.write(w, json.dumps(sentinel_hooks.stats()).encode())
    os.close(w)
    deadline = time.monotonic() + 30
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.01)
    sentinel_hooks.step()
    sys.exit(0)
os.close(w)
chunks = []
while True:
    b = os.read(r, 65536)
    if not b:
        break
    chunks.append(b)
for _ in range(5):
    sentinel_hooks.step()
sentinel_hooks.event(1, a=os.getpid())
with open(report + ".tmp", "w") as f:
    json.dump({"parent": os.getpid(), "child": pid, "parent_stats": sentinel_hooks.stats(),
               "child_stats": json.loads(b"".join(chunks))}, f)
os.rename(report + ".tmp", report)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _read_all(path) -> tuple[dict, bool, object]:
    r = RingReader(str(path))
    try:
        alive = r.writer_alive()
        return r.header, alive, r.tail(writer_alive=alive).records
    finally:
        r.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_fork_gives_child_its_own_ring_and_parent_death_is_seen(h):
    stop, report = h.scratch / "stop", h.scratch / "report.json"
    with open(h.scratch / "stderr", "wb") as err:
        proc = h.spawn_py(FORKER, args=(str(stop), str(report)), stdout=subprocess.DEVNULL, stderr=err)
    assert proc.wait(timeout=30) == -signal.SIGKILL, (h.scratch / "stderr").read_text()
    info = json.loads(report.read_text())
    parent, child = info["parent"], info["child"]
    h.extra_pids.append(child)
    assert info["parent_stats"]["ring"] != info["child_stats"]["ring"]
    assert info["child_stats"]["steps"] == 20 and info["parent_stats"]["steps"] == 15

    rings = {int(p.name.split(".")[1]): p for p in h.rings()}
    assert set(rings) == {parent, child}

    # The parent is dead; its lock went with it although the child (forked while the lock was
    # held) still lives.
    assert _pid_alive(child)
    p_header, p_alive, p_recs = _read_all(rings[parent])
    assert not p_alive, "the child keeps the parent's flock: the parent's death is masked"
    c_header, c_alive, c_recs = _read_all(rings[child])
    assert c_alive
    assert p_header["pid"] == parent and c_header["pid"] == child
    assert p_header["step"] == 15 and c_header["step"] == 20
    assert p_header["exit_ns"] == 0

    # Each ring holds only its own process's records.
    p_steps = p_recs[p_recs["kind"] == rf.Kind.STEP]["a"].tolist()
    assert p_steps == list(range(1, 16))
    p_events = p_recs[p_recs["kind"] == rf.Kind.EVENT]
    assert p_events["code"].tolist() == [1, 1] and p_events["a"].tolist() == [parent, parent]
    assert p_recs["seq"].tolist() == list(range(1, len(p_recs) + 1)) and len(p_recs) == 1 + 15 + 2
    c_events = c_recs[c_recs["kind"] == rf.Kind.EVENT]
    assert c_events["code"].tolist() == [2] and c_events["a"].tolist() == [child]
    assert c_recs[c_recs["kind"] == rf.Kind.STEP]["a"].tolist() == list(range(1, 21))

    # The daemon agrees: parent died, child running; then the child exits cleanly.
    daemon = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0))
    try:
        daemon.poll_once()
        views = {v.identity["pid"]: v for v in daemon.snapshot.processes}
        assert (views[parent].alive, views[parent].exit) == (False, "died")
        assert (views[child].alive, views[child].exit) == (True, "running")
        stop.touch()

        def child_exited():
            daemon.poll_once()
            v = {v.identity["pid"]: v for v in daemon.snapshot.processes}[child]
            return v if v.exit == "exited" else None

        v = h.wait_for(child_exited, timeout=15, what="the child's clean exit")
        assert v.step == 21 and v.kinds == {"step": 21, "event": 1, "mark": 2}
        assert views[parent].kinds == {"step": 15, "event": 2, "mark": 1}
    finally:
        daemon.close()


MP_WORKER = r"""
import multiprocessing as mp, os, sys
import sentinel_hooks

def work(n):
    for _ in range(n):
        sentinel_hooks.step()

if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    p = ctx.Process(target=work, args=(7,))
    p.start()
    p.join(30)
    print(p.pid, p.exitcode)
"""


# fork and forkserver workers leave through os._exit(): the clean exit is marked by a
# multiprocessing finalizer, not atexit.
@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_multiprocessing_worker_clean_exit_is_exited(h, method):
    script = h.scratch / "mpw.py"
    script.write_text(MP_WORKER)
    res = h.run([h.python, str(script), method], timeout=60)
    assert res.returncode == 0, res.stderr
    pid, exitcode = (int(x) for x in res.stdout.split())
    assert exitcode == 0
    (ring,) = [p for p in h.rings() if f".{pid}." in p.name]
    header, alive, recs = _read_all(ring)
    assert header["step"] == 7 and not alive
    assert header["exit_ns"] > 0, "clean exit not marked: the daemon will report this worker as 'died'"
