"""Acceptance 2: a writer SIGKILLed mid-write never yields a torn record as valid; a slot with a
bad commit marker is reported torn and withheld."""

from __future__ import annotations

import os
import random
import signal
import struct
import time

import numpy as np
import pytest

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.daemon.ringreader import HOLE_GRACE_S, RingReader
from sentinel_hooks import ringformat as rf
from sentinel_hooks.writer import RingWriter

SEQ_END_OFFSET = rf.RECORD_SIZE - 8  # seq_end is the record's last field


def assert_self_consistent(res, capacity: int, top: int) -> None:
    """Everything the reader hands out is a whole record, in one contiguous run of sequence numbers."""
    recs = res.records
    seq = recs["seq"].astype(np.int64)
    first = max(1, top - capacity + 1)
    assert res.overwritten == first - 1
    assert res.torn <= 1, f"a single SIGKILL can tear at most one slot, reader says {res.torn}"
    assert len(recs) + res.torn == top - first + 1
    assert (recs["seq_end"].astype(np.int64) == seq).all()
    if len(recs) > 1:
        assert (np.diff(seq) == 1).all(), "returned records are not contiguous"
    assert set(np.unique(recs["kind"]).tolist()) <= {rf.Kind.MARK, rf.Kind.EVENT}
    ev = recs[recs["kind"] == rf.Kind.EVENT]
    assert (ev["code"] == 7).all()
    assert (ev["a"] == ev["b"]).all() and (ev["b"] == ev["c"]).all(), "a torn record was reported as valid"
    assert (ev["a"] == ev["seq"].astype(np.int64) - 2).all(), "payload numbering does not match the sequence"
    marks = recs[recs["kind"] == rf.Kind.MARK]
    assert (marks["seq"] == 1).all() and (marks["code"] == rf.Mark.START).all()


def test_writer_sigkilled_mid_write_never_yields_torn_records(h):
    rng = random.Random(20240601)
    script = str(h.helpers / "spammer.py")
    rings = []
    for it in range(6):
        base = os.path.join(h.dir, f"i{it}")
        capacity = 1024 if it % 2 else rf.DEFAULT_CAPACITY  # small rings lap many times before the kill
        proc = h.spawn([h.python, script, "30"], env=h.env(SENTINEL_DIR=base, SENTINEL_RING_CAPACITY=str(capacity)))
        ring = h.wait_for(lambda b=base: h.rings(b), timeout=15, what="the writer's ring")[0]
        # Let it write for a random while, then kill it wherever it happens to be.
        reader = RingReader(str(ring))
        h.wait_for(lambda r=reader: r.top_seq() > 1000, timeout=15, what="records")
        time.sleep(rng.uniform(0.0, 0.05))
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert not reader.writer_alive()

        top = reader.top_seq()
        res = reader.tail(writer_alive=False)
        assert_self_consistent(res, capacity, top)
        assert len(res.records) >= min(top, capacity) - 1
        assert reader.tail(writer_alive=False).records.size == 0  # nothing handed out twice
        reader.close()
        rings.append((base, ring.name, capacity, res.torn, top))

    # The daemon sees each as a crash and counts at most the one torn slot.
    for base, name, capacity, torn, top in rings:
        d = Daemon(DaemonConfig(base_dir=base, use_events=False, rescan_interval=0))
        try:
            d.poll_once()
            (view,) = d.snapshot.processes
            assert view.ring == name and not view.alive and view.exit == "died"
            assert view.torn == torn
            assert view.overwritten == max(0, top - capacity)  # a fast writer may lap even a big ring
        finally:
            d.close()


def _corrupt_seq_end(path: str, seq: int, capacity: int) -> None:
    off = rf.RECORDS_OFFSET + ((seq - 1) % capacity) * rf.RECORD_SIZE + SEQ_END_OFFSET
    with open(path, "r+b") as f:  # a plain write, not through the writer's mapping
        f.seek(off)
        f.write(struct.pack("<Q", 0xDEADBEEF))


@pytest.fixture
def ten_records(sdir):
    w = RingWriter.create(sdir, {"pid": os.getpid(), "host": "t"}, capacity=64)
    for i in range(1, 11):
        assert w.emit(rf.Kind.EVENT, 1, i, i, i) == i
    try:
        yield w
    finally:
        w.close(clean_exit=False)


def test_corrupt_seq_end_is_reported_torn_dead_writer(ten_records):
    _corrupt_seq_end(ten_records.path, 5, 64)
    reader = RingReader(ten_records.path)
    try:
        res = reader.tail(writer_alive=False)
        assert res.torn == 1 and res.overwritten == 0
        assert res.records["seq"].tolist() == [1, 2, 3, 4, 6, 7, 8, 9, 10]
        assert 5 not in res.records["a"].tolist()
        assert reader.tail(writer_alive=False).records.size == 0
    finally:
        reader.close()


def test_corrupt_seq_end_live_writer_waits_out_the_grace_then_settles(ten_records):
    _corrupt_seq_end(ten_records.path, 5, 64)
    reader = RingReader(ten_records.path)
    try:
        t0 = 1000.0
        first = reader.tail(writer_alive=True, now=t0)  # maybe a write in flight: valid prefix only
        assert first.records["seq"].tolist() == [1, 2, 3, 4] and first.torn == 0
        again = reader.tail(writer_alive=True, now=t0 + HOLE_GRACE_S / 2)
        assert again.records.size == 0 and again.torn == 0
        settled = reader.tail(writer_alive=True, now=t0 + HOLE_GRACE_S + 0.01)
        assert settled.torn == 1
        assert settled.records["seq"].tolist() == [6, 7, 8, 9, 10]
        assert (settled.records["a"] == settled.records["seq"].astype(np.int64)).all()
        # Later records keep flowing and the torn slot is never handed out.
        ten_records.emit(rf.Kind.EVENT, 1, 11, 11, 11)
        later = reader.tail(writer_alive=True, now=t0 + 5)
        assert later.records["seq"].tolist() == [11] and later.torn == 0
    finally:
        reader.close()


class _CompletesAfterRead:
    """Stands in for the reader's seq_end column: the reader reads it, and only then does the writer
    finish record 5. That is the interleaving a live reader meets when it copies a slot while the
    writer is inside it (struct.pack_into zeroes the slot, then writes seq ... seq_end in order)."""

    def __init__(self, column: np.ndarray, finish) -> None:  # noqa: ANN001
        self.column, self.finish = column, finish

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        taken = self.column[key].copy()
        self.finish()
        return taken


def test_a_record_written_during_the_copy_is_never_handed_out_half_written(ten_records):
    """A record whose seq_end was not yet written when the reader began its copy is held back, even
    if it is whole by the time the copy is made (and so looks whole in it): its payload may have
    been read before the writer finished it. The next read hands it out, whole."""
    path, off = ten_records.path, rf.RECORDS_OFFSET + 4 * rf.RECORD_SIZE  # record 5's slot
    whole = rf.RECORD.pack(5, 1, 0, rf.Kind.EVENT, 1, 0, 0, 5, 5, 5, 5)
    with open(path, "r+b") as f:  # record 5 mid-write: zeroed, seq stored, the rest not yet
        f.seek(off)
        f.write(struct.pack("<Q", 5) + bytes(rf.RECORD_SIZE - 8))

    def finish() -> None:
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(whole)

    reader = RingReader(path)
    try:
        reader._seq_end_col = _CompletesAfterRead(reader._seq_end_col, finish)
        first = reader.tail(writer_alive=True, now=1000.0)
        assert first.records["seq"].tolist() == [1, 2, 3, 4] and first.torn == 0
        reader._seq_end_col = reader.slots["seq_end"]
        rest = reader.tail(writer_alive=True, now=1000.1)
        assert rest.records["seq"].tolist() == [5, 6, 7, 8, 9, 10] and rest.torn == 0
        assert rest.records["a"].tolist() == [5, 6, 7, 8, 9, 10]
    finally:
        reader.close()


def test_failed_pack_is_sealed_as_void_never_a_valid_event(sdir):
    """An out-of-range value makes pack_into fail after ``seq`` was taken: the writer seals that
    slot as a VOID record, so no reader waits on a hole and no half-written event is handed out."""
    w = RingWriter.create(sdir, {"pid": os.getpid(), "host": "t"}, capacity=64)
    try:
        w.emit(rf.Kind.EVENT, 1, 1, 1, 1)
        with pytest.raises(struct.error):
            w.emit(rf.Kind.EVENT, 1, 2**70, 2, 2)
        w.emit(rf.Kind.EVENT, 1, 3, 3, 3)
        reader = RingReader(w.path)
        try:
            res = reader.tail(writer_alive=True)  # alive: nothing to wait for all the same
            assert res.records["seq"].tolist() == [1, 2, 3]
            assert res.records["kind"].tolist() == [rf.Kind.EVENT, rf.Kind.VOID, rf.Kind.EVENT]
            assert res.records["a"].tolist() == [1, 0, 3]
            assert res.torn == 0
        finally:
            reader.close()
    finally:
        w.close(clean_exit=False)


def test_live_tailing_then_sigkill_accounts_for_every_record_once(h):
    """The reader tails while the writer writes (in-flight and lapped slots), then the writer is
    killed: every sequence number is handed out, counted lost to a lap, or counted torn, exactly
    once, and everything handed out is a whole record."""
    rng = random.Random(7)
    for it, capacity in enumerate((1024, 4096, rf.DEFAULT_CAPACITY)):
        base = os.path.join(h.dir, f"live{it}")
        proc = h.spawn([h.python, str(h.helpers / "spammer.py"), "30"],
                       env=h.env(SENTINEL_DIR=base, SENTINEL_RING_CAPACITY=str(capacity)))
        ring = h.wait_for(lambda b=base: h.rings(b), timeout=15, what="the writer's ring")[0]
        reader = RingReader(str(ring))
        got, lost, torn = [], 0, 0
        deadline = time.monotonic() + rng.uniform(0.1, 0.3)
        while time.monotonic() < deadline or reader.last_seq < 2000:
            res = reader.tail(writer_alive=True)
            got.append(res.records)
            lost += res.overwritten
            torn += res.torn
            assert time.monotonic() < deadline + 15
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        top = reader.top_seq(full_scan=True)
        res = reader.tail(writer_alive=False)
        got.append(res.records)
        lost += res.overwritten
        torn += res.torn
        reader.close()

        recs = np.concatenate(got)
        seq = recs["seq"].astype(np.int64)
        assert (np.diff(seq) > 0).all(), "a record was handed out twice or out of order"
        assert len(recs) + lost + torn == top
        assert torn <= 1
        # Only a record overwritten before it was read counts as lost: never more than the writer's
        # laps overwrote, and none at all if it never lapped the ring. (Whether the reader keeps up
        # with the writer is a matter of this machine's speed and load, not of correctness.)
        assert lost <= max(0, top - capacity), f"{lost} counted lost, but only {max(0, top - capacity)} were overwritten"
        assert (recs["seq_end"].astype(np.int64) == seq).all()
        ev = recs[recs["kind"] == rf.Kind.EVENT]
        assert (ev["a"] == ev["b"]).all() and (ev["b"] == ev["c"]).all()
        assert (ev["a"] == ev["seq"].astype(np.int64) - 2).all(), "a torn or stale record was handed out"
