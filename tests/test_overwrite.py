"""Acceptance 10: a writer that laps a reader that is not polling: the reader counts exactly
what it lost and returns the latest ``capacity`` records."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf
from sentinel_hooks.writer import RingWriter

CAP = 1024
TOTAL = 5000


@pytest.mark.parametrize("read_first", [0, 100, CAP])
def test_overwrite_counts_lost_and_returns_latest(sdir, read_first):
    w = RingWriter.create(sdir, {"pid": os.getpid(), "host": "ow"}, capacity=CAP)
    reader = RingReader(w.path)
    try:
        for i in range(1, read_first + 1):
            w.emit(rf.Kind.EVENT, 5, i, -i, i * 3)
        already = reader.tail(writer_alive=True)
        assert already.records["seq"].tolist() == list(range(1, read_first + 1))
        assert already.overwritten == 0

        for i in range(read_first + 1, TOTAL + 1):  # the reader does not poll meanwhile
            w.emit(rf.Kind.EVENT, 5, i, -i, i * 3)
        res = reader.tail(writer_alive=True)
        assert res.overwritten == TOTAL - CAP - read_first
        assert res.torn == 0
        seq = res.records["seq"].astype(np.int64)
        assert seq.tolist() == list(range(TOTAL - CAP + 1, TOTAL + 1))
        assert (res.records["a"] == seq).all() and (res.records["b"] == -seq).all() and (res.records["c"] == 3 * seq).all()
        # Everything is accounted for exactly once: read before + lost + read now.
        assert read_first + res.overwritten + len(res.records) == TOTAL
        assert reader.tail(writer_alive=True).records.size == 0
    finally:
        reader.close()
        w.close(clean_exit=False)


def test_daemon_counts_overwritten_records(sdir):
    w = RingWriter.create(sdir, {"pid": os.getpid(), "host": "ow"}, capacity=CAP)
    d = Daemon(DaemonConfig(base_dir=sdir, use_events=False, rescan_interval=0))
    try:
        d.poll_once()  # attach while the ring is empty
        for _ in range(TOTAL):
            w.step()
        d.poll_once()
        (v,) = d.snapshot.processes
        assert v.overwritten == TOTAL - CAP
        assert v.records == CAP and v.kinds == {"step": CAP}
        assert v.step == TOTAL
        assert v.torn == 0
    finally:
        d.close()
        w.close(clean_exit=False)
