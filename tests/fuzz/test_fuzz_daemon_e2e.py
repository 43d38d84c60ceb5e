"""The rejects the fuzzing found uncounted, counted by a running `sentinel daemon` on /metrics:
a ring header the journal cannot store (sentinel_rings_rejected_total{reason="bad_header"}), records
with out-of-range values inside a valid ring (sentinel_ring_bad_records_total), an unreadable
cuda-gdb transcript (sentinel_cudagdb_transcripts_rejected_total), and Flight Recorder dumps that
used to crash or fool the daemon (sentinel_flight_recorder_rejected_total). Each input was also a
crash, a stall or a poisoned journal before its fix; the daemon must keep polling through them."""

from __future__ import annotations

import mmap
import os
import pickle
import struct
import sys
import time
from pathlib import Path

from fuzz_support import FIXTURES

from sentinel.daemon.journal import Journal
from sentinel.triage.readers import cudagdb
from sentinel_hooks import ringformat as rf
from sentinel_hooks.layout import journal_path
from sentinel_hooks.writer import RingWriter


def value(h, text: str, name: str, **labels: str) -> float | None:  # noqa: ANN001 - the harness fixture
    found = h.samples(text, name, **labels)
    return found[0][1] if found else None


def polls(h, d) -> float:  # noqa: ANN001
    return value(h, d.scrape(), "sentinel_daemon_polls_total") or 0.0


def test_daemon_counts_bad_headers_and_bad_records(h) -> None:  # noqa: ANN001
    # A ring whose heartbeat step is 2**63 + 1: accepted before, then no journal save succeeded.
    bad = RingWriter.create(h.dir, {"pid": os.getpid(), "host": "badheader", "rank": 9}, capacity=64)
    with open(bad.path, "r+b") as f:
        f.seek(rf.WORDS_OFFSET + 8 * rf.Word.STEP)
        f.write(struct.pack("<Q", (1 << 63) + 1))
    bad.close()
    w = RingWriter.create(h.dir, {"pid": os.getpid(), "host": "fuzz", "rank": 0, "job": "j"}, capacity=1024)
    try:
        d = h.daemon(args=("--no-nvml", "--hang-floor", "0.2"))
        h.wait_for(lambda: value(h, d.scrape(), "sentinel_rings_rejected_total", reason="bad_header") == 1.0,
                   what="the bad header rejected")
        pg = w.intern("pg:0")
        w.emit(rf.Kind.COLLECTIVE_ENQUEUE, 0, 1 << 40, 0, 0, tag=pg)  # a group of 2**40 ranks
        w.emit(rf.Kind.PROBE, rf.Check.PAGE_TABLE_OOB, -5, 0, 0, tag=w.intern("attn"))  # a count going down
        w.emit(rf.Kind.COLLECTIVE_ENQUEUE, 1, 1, 0, 0, tag=pg)  # collective #1, never completed: a hang
        # Where record 4 goes, a seq of 2**64-1: read before the fix as "the writer lapped us".
        with open(w.path, "r+b") as f, mmap.mmap(f.fileno(), rf.file_size(1024)) as mm:
            struct.pack_into("<Q", mm, rf.RECORDS_OFFSET + 3 * rf.RECORD_SIZE, (1 << 64) - 1)
        seen = polls(h, d)
        h.wait_for(lambda: polls(h, d) >= seen + 5, what="polls over the corrupt slot")
        for _ in range(20):
            w.step()

        def settled() -> bool:
            text = d.scrape()
            return (value(h, text, "sentinel_process_step", rank="0") == 20.0
                    and value(h, text, "sentinel_ring_records_total", rank="0", kind="step") == 20.0
                    and value(h, text, "sentinel_ring_bad_records_total", rank="0") == 2.0
                    and value(h, text, "sentinel_hang_stalled_seconds", pg="0") is not None)
        h.wait_for(settled, timeout=20, what="the ring read past the corrupt slot, 2 bad records, the hang")
        text = d.scrape()
        assert value(h, text, "sentinel_ring_overwritten_records_total", rank="0") == 0.0
        assert value(h, text, "sentinel_rings_rejected_total", reason="bad_header") == 1.0
        # The group size was refused: the hang names no "missing" rank out of 2**40.
        assert len(h.samples(text, "sentinel_hang_culprit", pg="0")) <= 1
        seen = polls(h, d)
        h.wait_for(lambda: polls(h, d) >= seen + 5, what="the daemon still polling")

        def journaled() -> bool:  # the journal stores what was read (it raised OverflowError before)
            j = Journal(journal_path(h.dir))
            try:
                rows = {r["ring"]: r for r in j.rows()}
            finally:
                j.close()
            row = rows.get(os.path.basename(w.path))
            return row is not None and row["records"] == 23 and os.path.basename(bad.path) not in rows
        h.wait_for(journaled, timeout=15, what="the journal row")
        assert "Traceback" not in d.log_text()
    finally:
        w.close()


FAKE_CUDA_GDB = """#!{python}
# cuda-gdb's stand-in: prints the "coredump" file itself as the transcript (the real one runs in
# the GPU suite), so that the test chooses exactly what the daemon's parser gets.
import sys
core = next(a.split(" ", 2)[2] for a in sys.argv if a.startswith("target cudacore "))
sys.stdout.write(open(core, errors="replace").read())
"""


def test_daemon_counts_unreadable_transcripts_and_refused_dumps(h, tmp_path: Path) -> None:  # noqa: ANN001
    fake = tmp_path / "cuda-gdb"
    fake.write_text(FAKE_CUDA_GDB.format(python=sys.executable))
    fake.chmod(0o755)
    real = "\n".join(ln for ln in (FIXTURES / "cuda-gdb-illegal-address.txt").read_text().splitlines()
                     if not ln.startswith("#"))
    # The same transcript without the exception and kernel lines (as a truncated dump gives).
    unreadable = "\n".join(ln for ln in real.splitlines()
                           if not any(k in ln for k in ("Exception", "triggered", "<<<", "paged_gather")))
    assert cudagdb.parse(real).ok and not cudagdb.parse(unreadable).ok
    fr_dir = Path(h.dir) / "fr"
    fr_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):  # noqa: ANN204 - the pickle protocol's hook
            return os.system, (f"touch {marker}",)

    dumps = {
        # tuples nested a million deep as a dict key: hashing them segfaulted the daemon (1 MB)
        "trace_rank_0": b"\x80\x02}" + b"K\x01" + b"\x85" * 1_000_000 + b"K\x01s.",
        "trace_rank_1": pickle.dumps({"entries": [Boom()]}),
        "trace_rank_2": b"\x80\x02\x82\xf1)R.",  # a global by extension code
    }
    d = h.daemon(args=("--no-nvml", "--cuda-gdb", str(fake)))
    cores = Path(h.dir) / "cores"
    (cores / "core_fuzzhost_999991_1.nvcudmp").write_text(unreadable)
    (cores / "core_fuzzhost_999992_2.nvcudmp").write_text(real)
    past = time.time() - 5  # the daemon reads a dump once it is a second old
    for name, data in dumps.items():
        (fr_dir / name).write_bytes(data)
        os.utime(fr_dir / name, (past, past))

    def counted() -> bool:
        text = d.scrape()
        return (value(h, text, "sentinel_cudagdb_transcripts_rejected_total") == 1.0
                and value(h, text, "sentinel_flight_recorder_rejected_total") == 3.0
                and value(h, text, "sentinel_faults_total", exception="illegal_address") == 1.0)
    h.wait_for(counted, timeout=30, what="one unreadable transcript, three refused dumps, one fault")
    seen = polls(h, d)
    h.wait_for(lambda: polls(h, d) >= seen + 5, what="the daemon still polling")
    assert d.proc.poll() is None and not marker.exists()
    assert "Traceback" not in d.log_text()
