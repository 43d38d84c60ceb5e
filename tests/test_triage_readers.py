"""`sentinel triage FILE` finds out what FILE is: each reader says whether a file looks like its kind
(real cuda-gdb transcripts captured on an H100/H200, a Flight Recorder dump of the reference NCCL
hang's shape), and the command reports on it as it would with the explicit option."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from test_flight_recorder import REFERENCE

from sentinel.triage.readers import (
    READERS,
    compute_sanitizer,
    cudagdb,
    detect,
    flight_recorder,
    fr_analysis,
    kernel_log,
    serving_log,
    watchdog,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cuda-gdb"
TRANSCRIPTS = sorted(FIXTURES.glob("cuda-gdb-*.txt"))


def test_every_reader_has_a_kind_and_a_test() -> None:
    # A new reader: add its cases here, or in a test file of its own (tests/test_kernel_log.py,
    # tests/test_watchdog_reader.py, tests/test_serving_log_reader.py, tests/test_fr_cross_rank.py,
    # tests/test_compute_sanitizer.py).
    assert {r.KIND for r in READERS} == {cudagdb.KIND, flight_recorder.KIND, kernel_log.KIND, watchdog.KIND,
                                         serving_log.KIND, fr_analysis.KIND, compute_sanitizer.KIND}


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.name)
def test_real_transcripts_are_cuda_gdb(path: Path) -> None:
    assert detect(path.read_bytes()[:65536]) is cudagdb


@pytest.mark.parametrize("proto", [2, 3, 4, 5])
def test_a_flight_recorder_dump_is_one(proto: int) -> None:
    assert detect(pickle.dumps(REFERENCE, protocol=proto)) is flight_recorder


@pytest.mark.parametrize("head", [b"", b"hello\n", b"\x7fELF\x02\x01\x01" + b"\0" * 64 + b"CUDA Exception:",
                                  b"INFO 11-29 vllm serving on port 8000\n", b"Traceback (most recent call last):\nValueError: x\n", b"\x80\x09junk", b"\x00\x01bin\xff" * 64])
def test_other_files_are_no_reader_s(head: bytes) -> None:
    # A GPU coredump (ELF) goes to cuda-gdb, not to a reader, even with a marker in its bytes.
    assert detect(head) is None


def test_triage_file_detects_a_transcript(h) -> None:  # noqa: ANN001
    path = FIXTURES / "cuda-gdb-illegal-address.txt"
    by_option = h.run([h.sentinel, "triage", "--cuda-gdb-output", str(path), "--json", "--dir", h.dir], env=h.env())
    detected = h.run([h.sentinel, "triage", str(path), "--json", "--dir", h.dir], env=h.env())
    assert detected.returncode == by_option.returncode == 0, detected.stderr
    a, b = json.loads(detected.stdout), json.loads(by_option.stdout)
    for when in ("created_at", "died_at"):  # the moment each command ran
        assert abs(a.pop(when) - b.pop(when)) < 3600
    assert a == b and a["source"] == "transcript" and a["exception_class"] == "illegal_address"


def test_triage_file_summarises_a_flight_recorder_dump(h, tmp_path: Path) -> None:  # noqa: ANN001
    dump = tmp_path / "trace_rank_0"
    dump.write_bytes(pickle.dumps(REFERENCE))
    res = h.run([h.sentinel, "triage", str(dump), "--dir", h.dir], env=h.env())
    assert res.returncode == 0, res.stderr
    assert "Flight Recorder dump (version 2.10)" in res.stdout
    assert "process group 0: last enqueued #6, last completed #5" in res.stdout


def test_triage_file_refuses_what_it_does_not_know_in_one_line(h, tmp_path: Path) -> None:  # noqa: ANN001
    other = tmp_path / "server.log"
    other.write_text("INFO 11-29 12:00:00 engine started\n")
    res = h.run([h.sentinel, "triage", str(other), "--dir", h.dir], env=h.env())
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"sentinel triage: {other}: not a GPU coredump, nor one of: {', '.join(r.KIND for r in READERS)}"]


def test_several_files_and_standard_input(h, tmp_path: Path) -> None:  # noqa: ANN001
    """One report per file, each kind detected, then the incident they make together; a file it does
    not know is one line among them and makes the exit status non-zero; '-' reads standard input."""
    fixtures = FIXTURES.parent
    other = tmp_path / "notes.txt"
    other.write_text("nothing went wrong here\n")
    files = [fixtures / "watchdog" / "pt152623-desync-rank0.log", fixtures / "kernel-log" / "kmsg-xid79.txt", other]
    res = h.run([h.sentinel, "triage", *map(str, files), "--dir", h.dir], env=h.env())
    assert res.returncode == 2, res.stderr
    heads = [ln for ln in res.stdout.splitlines() if ln.startswith("== ")]
    assert heads == [f"== {f}" for f in files] + ["== the incident (all files together)"]
    assert "culprit   rank 7" in res.stdout and "Xid 79 GPU has fallen off the bus" in res.stdout
    assert f"sentinel triage: {other}: not a GPU coredump" in res.stdout
    res = h.run([h.sentinel, "triage", *map(str, files[:2]), "--json", "--dir", h.dir], env=h.env())
    docs = json.loads(res.stdout)
    assert res.returncode == 0 and [d["file"] for d in docs] == [*map(str, files[:2]), "the incident (all files together)"]
    assert docs[0]["result"]["culprit_ranks"] == [7] and docs[1]["result"][0]["xid"] == 79

    log = (fixtures / "serving-log" / "fi2232-tma-descriptor.log").read_text()
    res = h.run([h.sentinel, "triage", "-", "--json", "--dir", h.dir], env=h.env(), input=log)
    assert res.returncode == 0 and json.loads(res.stdout)["known_issue"]["id"] == "degenerate-stride-tma"
    res = h.run([h.sentinel, "triage", "-", "--dir", h.dir], env=h.env(), input="")
    assert res.returncode == 2 and res.stderr.startswith("sentinel triage: -: not a GPU coredump")


def test_a_log_that_holds_a_fault_and_a_hang_gives_both_and_their_incident(tmp_path: Path) -> None:
    """A rank's own log often holds its CUDA error and the watchdog's timeout: both are read (the
    order the readers are asked in must not hide one), and they make one incident."""
    import contextlib
    import io

    from sentinel.cli.main import main

    log = tmp_path / "rank0.log"
    log.write_text(
        "[rank0]:[E1114 22:47:01.1 ProcessGroupNCCL.cpp:632] [Rank 0] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=12, OpType=ALLGATHER, NumelIn=6, NumelOut=48, Timeout(ms)=600000) ran for 600086 milliseconds "
        "before timing out.\n"
        "[rank0]: Traceback (most recent call last):\n"
        '[rank0]:   File "/srv/app/serve.py", line 40, in forward\n'
        "[rank0]: RuntimeError: CUDA error: an illegal instruction was encountered\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["triage", str(log), "--json", "--dir", str(tmp_path)]) == 0
    docs = json.loads(out.getvalue())
    assert [d["file"] for d in docs] == [f"{log} (serving log)", f"{log} (c10d watchdog report)",
                                         "the incident (all files together)"]
    inc = docs[-1]["result"]["incident"]
    assert inc["record"]["exception_class"] == "illegal_instruction" and inc["hangs"][0]["op"] == "ALLGATHER"
    assert inc["culprit_ranks"] == [0]


def test_a_parallel_scan_gives_each_key_line_once_in_order(tmp_path: Path) -> None:
    """readers.scan.relevant_lines_of splits a file into spans for several processes: a key line on a
    span's edge (starting exactly at it, or crossing it) is read once, and the order is the file's."""
    from sentinel.triage.readers.scan import relevant_lines, relevant_lines_of

    path = tmp_path / "big.log"
    with open(path, "wb") as f:
        for i in range(1000):
            f.write((b"NCCL WARN x %03d " % i).ljust(99, b"a") + b"\n" if i % 7 == 0 else b"b" * 99 + b"\n")
        f.write(b"NCCL WARN no newline at the end")
    want = list(relevant_lines(open(path, "rb"), (b"NCCL WARN",)))
    assert len(want) == 144
    for span in (100, 150, 250, 1000, 1 << 20):
        for workers in (1, 2):
            assert relevant_lines_of(str(path), (b"NCCL WARN",), workers=workers, span_bytes=span) == want, span
