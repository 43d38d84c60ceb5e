"""Writer death loses nothing: a hooked process writing numbered records is SIGKILLed at a random
point, again and again. Every record the process saw complete (it reports each number over a pipe
once ``event`` has returned) is read back: by the daemon's RingReader from the dead ring, and by a
real `sentinel daemon` that tailed the ring while it was written. No payload is wrong or torn, and
nothing is recovered that was never attempted.

The kill point is chosen by record count, not by time, so the test means the same on any machine:
most kills come once the writer has reported at least K records (K random, log-uniform), while it
keeps writing; a fifth come during start-up, at a random fraction of the start-up time measured
on this machine. The writer stops writing (and waits, alive) at STOP_AT records, far below the
ring's capacity, so the ring can never wrap whatever happens between the test's observation and
the SIGKILL; a kill that finds it waiting there is counted as such."""

from __future__ import annotations

import math
import os
import random
import signal
import statistics
import subprocess
import threading
import time

import numpy as np
import pytest
from chaos_support import HELPERS, Harness, by_pid, start_daemon

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

WRITER = str(HELPERS / "chaos_numbered_writer.py")
CAPACITY = rf.DEFAULT_CAPACITY  # the default ring
STOP_AT = CAPACITY // 2  # the writer's cap: with its start mark, it can never fill the ring
WRITER_MAX_S = 120.0  # the writer's own orphan guard; each kill comes long before it
HANG_S = 60.0  # a guard against a hang only: the wait for K records is a condition, not a time box


class _Reports:
    """Drains the writer's report pipe on a thread. ``reached`` is set once at least ``target``
    numbers have arrived, or at end of file (the writer died or exited)."""

    def __init__(self, fd: int, target: int) -> None:
        self.fd, self.target = fd, target
        self.got = bytearray()
        self.first_at: float | None = None  # monotonic time the first number arrived
        self.reached = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                self.reached.set()
                return
            if self.first_at is None:
                self.first_at = time.monotonic()
            self.got.extend(chunk)
            if len(self.got) >= 8 * self.target:
                self.reached.set()


def run_kills(h: Harness, kills: int, seed: int) -> dict[str, int]:
    daemon = start_daemon(h, "--no-nvml")
    rng = random.Random(seed)
    totals = {"kills": 0, "reported": 0, "recovered": 0, "unreported_recovered": 0, "torn": 0,
              "before_ring": 0, "before_first_record": 0, "at_cap": 0}
    startup_s: list[float] = []  # spawn to first reported record, measured on this machine
    for it in range(kills):
        startup_kill = rng.random() < 0.2
        target = int(2 ** rng.uniform(0, math.log2(STOP_AT // 2)))  # 1 .. STOP_AT/2 records
        r, w = os.pipe()
        spawned = time.monotonic()
        proc = h.spawn([h.python, WRITER, str(w), str(WRITER_MAX_S), str(STOP_AT)],
                       env=h.hooked_env(SENTINEL_RING_CAPACITY=str(CAPACITY)), pass_fds=(w,),
                       stdout=subprocess.DEVNULL)
        os.close(w)
        rep = _Reports(r, target)
        # A fifth of the kills land anywhere from interpreter start-up to the first records (ring
        # creation included): a random fraction of the start-up time this machine took so far (if
        # it lands later, it is one more kill while records stream). The rest once the writer has
        # reported ``target`` records, while it keeps writing.
        if startup_kill:
            time.sleep(rng.uniform(0.0, 1.1 * statistics.median(startup_s) if startup_s else 0.15))
        else:
            assert rep.reached.wait(HANG_S), f"the writer reported {len(rep.got) // 8} of {target} records in {HANG_S}s"
            assert proc.poll() is None, f"the writer exited by itself: {proc.stderr.read().decode(errors='replace')}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        rep.thread.join(timeout=10)
        os.close(r)
        if not startup_kill and rep.first_at is not None:
            startup_s.append(rep.first_at - spawned)
        err = proc.stderr.read()
        proc.stderr.close()
        assert err == b"", f"the hooks wrote to the host's stderr: {err.decode(errors='replace')}"
        reported = np.frombuffer(bytes(rep.got), dtype="<i8")
        assert (reported == np.arange(len(reported))).all(), "the report pipe lost or reordered numbers"
        assert len(reported) <= STOP_AT, "the writer wrote past its cap"
        totals["kills"] += 1
        totals["reported"] += len(reported)
        totals["at_cap"] += len(reported) == STOP_AT

        rings = [p for p in h.rings() if f".{proc.pid}." in p.name]
        if not rings:
            assert len(reported) == 0, "records were reported complete but no ring exists"
            totals["before_ring"] += 1
            continue
        (ring,) = rings
        reader = RingReader(str(ring))
        try:
            assert not reader.writer_alive()
            top = reader.top_seq(full_scan=True)
            res = reader.tail(writer_alive=False)
        finally:
            reader.close()
        recs = res.records
        assert res.overwritten == 0 and top < CAPACITY
        assert len(recs) + res.torn == top, "a sequence number is neither a record nor counted torn"
        assert res.torn <= 1, "one SIGKILL can tear at most the one record being written"
        assert (recs["seq_end"] == recs["seq"]).all()
        marks, ev = recs[recs["kind"] == rf.Kind.MARK], recs[recs["kind"] == rf.Kind.EVENT]
        assert len(marks) + len(ev) == len(recs)
        assert marks["seq"].tolist() in ([], [1]) and (marks["code"] == rf.Mark.START).all()
        # Payloads: a == b == c == the writer's own number, which is the sequence number minus the mark.
        assert (ev["code"] == 7).all()
        assert (ev["a"] == ev["b"]).all() and (ev["b"] == ev["c"]).all(), "a torn record was handed out as valid"
        assert (ev["a"] == ev["seq"].astype(np.int64) - 2).all(), "a record's payload does not match its number"
        ids = ev["a"]
        assert (ids == np.arange(len(ids))).all(), "a record in the middle went missing"
        # Everything reported complete is there; at most the one record in flight at the kill is
        # there besides (its write completed before the report did). Never more than attempted.
        assert len(ids) >= len(reported), f"lost {len(reported) - len(ids)} completed records"
        assert len(ids) <= len(reported) + 1, "recovered more records than the writer attempted"
        if len(reported) == STOP_AT:  # it was waiting at its cap: no write was in flight
            assert len(ids) == STOP_AT and res.torn == 0, "a writer at rest lost or tore a record"
        if len(reported) == 0:
            totals["before_first_record"] += 1
        totals["recovered"] += len(reported)
        totals["unreported_recovered"] += len(ids) - len(reported)
        totals["torn"] += res.torn

        # The real daemon, which tailed the ring live, counted the same records, once each.
        pid, n_ev, torn = str(proc.pid), len(ids), res.torn

        def settled(n_ev=n_ev, torn=torn, pid=pid):
            text = daemon.scrape()
            if f'pid="{pid}",' not in text:  # cheap: parse only once the daemon knows the process
                return False
            m = h.parse_samples(text)
            if by_pid(m, "sentinel_process_alive").get(pid) != 0.0:
                return False
            assert by_pid(m, "sentinel_ring_records_total", kind="event").get(pid, 0.0) == n_ev
            assert by_pid(m, "sentinel_ring_torn_records_total")[pid] == torn
            assert by_pid(m, "sentinel_ring_overwritten_records_total")[pid] == 0
            return True

        h.wait_for(settled, timeout=HANG_S, what=f"the daemon to settle kill {it} (pid {pid})")
        ring.unlink()  # 4 MiB each: the daemon is done with it
    assert daemon.proc.poll() is None
    return totals


def _report(t: dict[str, int]) -> str:
    return (f"writer death: {t['kills']} SIGKILLs; recovered {t['recovered']}/{t['reported']} records reported "
            f"complete (+{t['unreported_recovered']} completed but not yet reported, <= 1 per kill), "
            f"{t['torn']} torn in-flight slot(s) withheld; {t['before_ring']} kills before the ring existed, "
            f"{t['before_first_record']} before the first record, {t['at_cap']} with the writer already "
            f"waiting at its {STOP_AT}-record cap (the rest while records streamed)")


def test_writer_sigkilled_100_times_loses_no_completed_record(h):
    t = run_kills(h, 100, seed=100)
    print(_report(t))
    assert t["kills"] == 100 and t["recovered"] == t["reported"] > 0


@pytest.mark.slow
def test_writer_sigkilled_1000_times_loses_no_completed_record(h):
    t = run_kills(h, 1000, seed=1000)
    print(_report(t))
    assert t["kills"] == 1000 and t["recovered"] == t["reported"] > 0
