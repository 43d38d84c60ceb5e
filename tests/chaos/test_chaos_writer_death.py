"""Writer death loses nothing: a hooked process writing numbered records is SIGKILLed at a random
point, again and again. Every record the process saw complete (it reports each number over a pipe
once ``event`` has returned) is read back: by the daemon's RingReader from the dead ring, and by a
real `sentinel daemon` that tailed the ring while it was written. No payload is wrong or torn, and
nothing is recovered that was never attempted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from chaos_support import HELPERS, Harness, by_pid, start_daemon

from sentinel.ringreader import RingReader
from sentinel_hooks import ringformat as rf

WRITER = str(HELPERS / "chaos_numbered_writer.py")
CAPACITY = rf.DEFAULT_CAPACITY  # the default ring; the kill comes long before it could wrap


def _drain(fd: int, into: bytearray) -> None:
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        into.extend(chunk)


def run_kills(h: Harness, kills: int, seed: int) -> dict[str, int]:
    daemon = start_daemon(h, "--no-nvml")
    rng = random.Random(seed)
    totals = {"kills": 0, "reported": 0, "recovered": 0, "unreported_recovered": 0, "torn": 0,
              "before_ring": 0, "before_first_record": 0}
    for it in range(kills):
        r, w = os.pipe()
        proc = h.spawn([h.python, WRITER, str(w), "30"], env=h.hooked_env(SENTINEL_RING_CAPACITY=str(CAPACITY)),
                       pass_fds=(w,), stdout=subprocess.DEVNULL)
        os.close(w)
        got = bytearray()
        drain = threading.Thread(target=_drain, args=(r, got), daemon=True)
        drain.start()
        # A fifth of the kills land anywhere from interpreter start-up to the first records (ring
        # creation included); the rest while records stream.
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.15))
        else:
            h.wait_for(lambda got=got, proc=proc: len(got) >= 8 or proc.poll() is not None, timeout=15, interval=0.001,
                       what="the writer's first record")
            assert proc.poll() is None, f"the writer exited by itself: {proc.stderr.read().decode(errors='replace')}"
            time.sleep(rng.uniform(0.0, 0.04))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        drain.join(timeout=10)
        os.close(r)
        err = proc.stderr.read()
        proc.stderr.close()
        assert err == b"", f"the hooks wrote to the host's stderr: {err.decode(errors='replace')}"
        reported = np.frombuffer(bytes(got), dtype="<i8")
        assert (reported == np.arange(len(reported))).all(), "the report pipe lost or reordered numbers"
        totals["kills"] += 1
        totals["reported"] += len(reported)

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

        h.wait_for(settled, timeout=15, what=f"the daemon to settle kill {it} (pid {pid})")
        ring.unlink()  # 4 MiB each: the daemon is done with it
    assert daemon.proc.poll() is None
    return totals


def _report(t: dict[str, int]) -> str:
    return (f"writer death: {t['kills']} SIGKILLs; recovered {t['recovered']}/{t['reported']} records reported "
            f"complete (+{t['unreported_recovered']} completed but not yet reported, <= 1 per kill), "
            f"{t['torn']} torn in-flight slot(s) withheld; {t['before_ring']} kills before the ring existed, "
            f"{t['before_first_record']} before the first record")


def test_writer_sigkilled_100_times_loses_no_completed_record(h):
    t = run_kills(h, 100, seed=100)
    print(_report(t))
    assert t["kills"] == 100 and t["recovered"] == t["reported"] > 0


@pytest.mark.slow
def test_writer_sigkilled_1000_times_loses_no_completed_record(h):
    t = run_kills(h, 1000, seed=1000)
    print(_report(t))
    assert t["kills"] == 1000 and t["recovered"] == t["reported"] > 0
