"""Acceptance 3: the daemon is SIGKILLed and restarted while two writers keep stepping.

What is asserted about the counters (at-least-once reading, exact totals):

* The journal stores each process's counters and its read position in one transaction, every
  persist interval. A restarted daemon resumes from the last persisted position, so it re-reads
  the records written after that point (at-least-once reading of the ring) but adds them to the
  counters persisted with that same position, never to the pre-kill in-memory totals.
* Hence ``sentinel_ring_records_total`` per process never goes backwards across the restart
  (every scrape after the restart is >= the last scrape before the kill), and once the writers
  exit the totals are *exact*: STEP records == steps taken, MARK records == 2 (start + exit),
  with no record counted twice and none lost (the rings are far from wrapping).
* ``sentinel_daemon_ingested_records_total`` is per daemon process and restarts from zero: a
  normal Prometheus counter reset, not asserted to be monotonic.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.daemon.ringreader import RingReader
from sentinel_hooks.layout import journal_path
from sentinel_hooks.writer import RingWriter


def _by_pid(h, text: str, name: str, **labels: str) -> dict[str, float]:
    return {lab["pid"]: v for lab, v in h.samples(text, name, **labels)}


def _journal_rows(base: str) -> dict[str, dict]:
    db = sqlite3.connect(f"file:{journal_path(base)}?mode=ro", uri=True, timeout=2.0)
    try:
        cur = db.execute("SELECT ring, alive, step, records, last_seq FROM processes")
        return {r[0]: {"alive": r[1], "step": r[2], "records": r[3], "last_seq": r[4]} for r in cur}
    finally:
        db.close()


def _ring_step(path) -> int:
    r = RingReader(str(path))
    try:
        return r.header["step"]
    finally:
        r.close()


def test_daemon_sigkill_restart_while_writers_write(h):
    stop = h.scratch / "stop"
    d1 = h.daemon()
    port = d1.port
    writers = [
        h.spawn([h.python, str(h.helpers / "stepper.py"), str(stop), "0.002", "60"], env=h.hooked_env(RANK=str(r)))
        for r in range(2)
    ]
    pids = {str(p.pid) for p in writers}

    def both_stepping(min_step: float):
        text = d1.scrape()
        steps = _by_pid(h, text, "sentinel_process_step")
        if set(steps) == pids and min(steps.values()) >= min_step:
            return text
        return None

    h.wait_for(lambda: both_stepping(20), timeout=20, what="both writers in the daemon's metrics")
    # The journal has both processes (it is what the restarted daemon resumes from).
    h.wait_for(lambda: len(_journal_rows(h.dir)) == 2 and all(r["records"] > 0 for r in _journal_rows(h.dir).values()),
               timeout=10, what="journal rows for both writers")
    before = d1.scrape()
    steps_before = _by_pid(h, before, "sentinel_process_step")
    records_before = _by_pid(h, before, "sentinel_ring_records_total", kind="step")
    assert set(records_before) == pids

    assert d1.kill(signal.SIGKILL) == -signal.SIGKILL

    # Writers do not notice: alive, and their heartbeats keep moving with no daemon at all.
    rings = h.rings()
    assert len(rings) == 2
    hb0 = {p.name: _ring_step(p) for p in rings}
    h.wait_for(lambda: all(_ring_step(p) > hb0[p.name] + 10 for p in rings), timeout=10,
               what="writers stepping while the daemon is down")
    assert all(p.poll() is None for p in writers)

    d2 = h.daemon(port=port)  # same address, as a restarted sidecar would use
    assert '"msg": "journal loaded"' in d2.log_text()

    def check_monotonic_then(cond) -> str | None:
        text = d2.scrape()
        recs = _by_pid(h, text, "sentinel_ring_records_total", kind="step")
        for pid, v in recs.items():
            assert v >= records_before[pid], f"records went backwards for pid {pid}: {records_before[pid]} -> {v}"
        return text if cond(text) else None

    def resumed(text: str) -> bool:
        steps = _by_pid(h, text, "sentinel_process_step")
        alive = _by_pid(h, text, "sentinel_process_alive")
        return (set(steps) == pids and all(steps[p] > steps_before[p] for p in pids)
                and all(alive[p] == 1 for p in pids))

    first = h.wait_for(lambda: check_monotonic_then(resumed), timeout=20, what="restarted daemon serving both")
    # Steps keep increasing as served by the restarted daemon.
    steps_first = _by_pid(h, first, "sentinel_process_step")
    h.wait_for(lambda: check_monotonic_then(
        lambda t: all(_by_pid(h, t, "sentinel_process_step").get(p, 0) > steps_first[p] for p in pids)),
        timeout=20, what="steps increasing after the restart")
    resumed_logs = [json.loads(line) for line in d2.log_text().splitlines() if '"ring resumed"' in line]
    assert sorted(r["ring"] for r in resumed_logs) == sorted(p.name for p in rings)
    assert all(r["after_seq"] > 0 for r in resumed_logs)

    # Writers finish cleanly, unaffected.
    stop.touch()
    final_steps = {}
    for p in writers:
        out, err = p.communicate(timeout=20)
        assert p.returncode == 0, err
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["stats"]["active"] and report["stats"]["errors"] == 0
        final_steps[str(p.pid)] = report["steps"]

    def all_exited(text: str) -> bool:
        return h.samples(text, "sentinel_processes", state="exited") == [({"state": "exited"}, 2.0)]

    end = h.wait_for(lambda: check_monotonic_then(all_exited), timeout=20, what="both writers exited")
    assert _by_pid(h, end, "sentinel_process_step") == {p: float(n) for p, n in final_steps.items()}
    assert _by_pid(h, end, "sentinel_process_alive") == {p: 0.0 for p in pids}
    # Exact totals: no record counted twice across the restart, none lost.
    assert _by_pid(h, end, "sentinel_ring_records_total", kind="step") == {p: float(n) for p, n in final_steps.items()}
    assert _by_pid(h, end, "sentinel_ring_records_total", kind="mark") == {p: 2.0 for p in pids}
    assert _by_pid(h, end, "sentinel_ring_torn_records_total") == {p: 0.0 for p in pids}
    assert _by_pid(h, end, "sentinel_ring_overwritten_records_total") == {p: 0.0 for p in pids}

    # A clean stop persists the final state.
    assert d2.kill(signal.SIGTERM) == 0
    rows = _journal_rows(h.dir)
    assert sorted(r["step"] for r in rows.values()) == sorted(final_steps.values())
    assert all(r["alive"] == 0 for r in rows.values())
    assert os.path.exists(journal_path(h.dir))


def test_restart_rereads_after_persisted_position_and_totals_stay_exact(sdir):
    """In-process and deterministic: a daemon that dies after reading records it never persisted.

    Its successor re-reads those records (at-least-once reading) yet counts each exactly once,
    because it adds them to the counters persisted with the same read position. A writer that
    exited while no daemon ran is still seen as a clean exit.
    """
    cfg = DaemonConfig(base_dir=sdir, use_events=False, rescan_interval=0)
    live = RingWriter.create(sdir, {"pid": 101, "host": "a", "rank": 0}, capacity=1024)
    gone = RingWriter.create(sdir, {"pid": 102, "host": "a", "rank": 1}, capacity=1024)
    for _ in range(30):
        live.step()
        gone.step()
    d1 = Daemon(cfg)
    d1.poll_once()
    d1.persist()  # the journal now has 30 steps each
    for _ in range(20):
        live.step()
        gone.step()
    d1.poll_once()  # read, not persisted: then the daemon "dies" without a final save
    by_rank = {v.identity["rank"]: v for v in d1.snapshot.processes}
    assert by_rank[0].kinds == {"step": 50} and by_rank[1].kinds == {"step": 50}
    d1.rings.discovery.close()
    for r in d1.rings.readers.values():
        r.close()
    d1.journal.close()

    gone.close()  # exits cleanly while no daemon runs
    for _ in range(5):
        live.step()
    d2 = Daemon(cfg)
    try:
        assert {s.identity["rank"]: s.records for s in d2.states.values()} == {0: 30, 1: 30}
        d2.poll_once()
        by_rank = {v.identity["rank"]: v for v in d2.snapshot.processes}
        assert by_rank[0].kinds == {"step": 55} and by_rank[0].alive and by_rank[0].step == 55
        assert by_rank[1].kinds == {"step": 50, "mark": 1} and by_rank[1].exit == "exited"
        assert d2.rings.ingested == 25 + 21  # what it re-read after the persisted position
        assert all(v.torn == 0 and v.overwritten == 0 for v in by_rank.values())
    finally:
        d2.close()
        live.close()
