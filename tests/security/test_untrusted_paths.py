"""Nothing a hooked process controls takes the daemon outside SENTINEL_DIR.

Where the daemon builds a path from untrusted input, and the test for each:

- ring names (rings/): symlinks out, files in subfolders ........... test_ring_names_*
- the identity in a ring header (host from SENTINEL_HOST, an env var
  the hooked process sets; pid) -> faults/faulthandler_<host>_<pid>.log:
  "../", symlink, hard link, FIFO, NUL ............................. test_faulthandler_*
- GPU coredump names (cores/): symlink, FIFO, folder, names that would
  reach cuda-gdb's command line ..................................... test_core_names_*
- Flight Recorder dump names (fr/): symlink, FIFO, folder ............ test_fr_dumps_*
- core paths the journal holds (retention deletes them): absolute,
  "../" ............................................................. test_retention_*
- DIR/journal.sqlite itself: a planted symlink ....................... test_journal_*
- DIR/catalog.toml (a group member may plant one): symlink, other owner test_user_catalog_*
- evidence names (probe-site names from framework code) ............. test_evidence_names_*
- a cuda-gdb transcript's source paths: only printed, never opened ... test_transcript_*

The daemon never reads a hooked process's environment (no /proc/<pid>/environ): the variables it
sets (CUDA_COREDUMP_FILE, TORCH_FR_DUMP_TEMP_FILE, SENTINEL_DIR) change where that process writes,
never where the daemon reads; SENTINEL_HOST reaches the daemon only through the ring header.

A FIFO is the canary for "opened": opening one for reading blocks, so a daemon that opened it would
stop polling. Polls run in a thread with a deadline, and the FIFOs are unblocked at teardown.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from security_support import OUTSIDER_GID, OUTSIDER_UID, PYTHON, SENTINEL, TESTS

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.triage import records as faults
from sentinel.triage.catalog import CatalogError
from sentinel_hooks import layout
from sentinel_hooks.writer import RingWriter

SECRET = "TOP-SECRET-OUTSIDE-SENTINEL-DIR"
TRANSCRIPT = b"TRANSCRIPT cuda-gdb-illegal-address.txt\n"


@pytest.fixture
def top() -> Iterator[Path]:
    """A short folder holding SENTINEL_DIR (s/) and a folder outside it (o/): ring headers hold
    64-byte hosts, so a "../" path to o/ must stay short."""
    path = Path(tempfile.mkdtemp(prefix="snt", dir="/tmp"))
    (path / "s").mkdir(mode=0o700)
    (path / "o").mkdir(mode=0o700)
    fifos: list[Path] = []
    try:
        yield path
    finally:
        for fifo in path.rglob("*"):
            if fifo.is_fifo():
                fifos.append(fifo)
        for fifo in fifos:  # a reader stuck on one (a regression) gets EOF and lets go
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def debugger(tmp_path: Path) -> str:
    """cuda-gdb's stand-in (CI has no GPU): prints the real transcript a core file names."""
    exe = tmp_path / "cuda-gdb"
    exe.write_text(f"#!/bin/sh\nexec {PYTHON} {TESTS / 'helpers' / 'fake_cuda_gdb.py'} \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def _daemon(base: Path, **kw) -> Daemon:
    kw.setdefault("use_events", False)
    kw.setdefault("rescan_interval", 0)
    return Daemon(DaemonConfig(base_dir=str(base), nvml=False, **kw))


def poll_until(d: Daemon, pred: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    """Poll in a thread until ``pred()``: a poll that blocks (an opened FIFO) fails the test, not hangs it."""
    result: dict = {}

    def loop() -> None:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                d.poll_once()
                value = pred()
                if value:
                    result["value"] = value
                    return
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test thread
            result["error"] = exc

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    t.join(timeout + 5)
    assert not t.is_alive(), f"the daemon's poll blocked (it opened something it must not) waiting for {what}"
    if "error" in result:
        raise result["error"]
    assert "value" in result, f"timed out waiting for {what}"
    return result["value"]


def _dead_pid() -> int:
    """The pid of a process that has exited (so a coredump named after it is complete)."""
    p = subprocess.Popen(["true"])
    p.wait(timeout=10)
    return p.pid


# -- ring names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("events", [False, True])
def test_ring_names_never_lead_outside(top: Path, events: bool) -> None:
    base, outside = top / "s", top / "o"
    elsewhere = RingWriter.create(str(outside), {"pid": 4001, "host": "outside"}, capacity=64)
    inside = RingWriter.create(str(base), {"pid": 4002, "host": "inside"}, capacity=64)
    d = _daemon(base, use_events=events, rescan_interval=0 if not events else 0.2)
    try:
        rings = base / "rings"
        (rings / "link.ring").symlink_to(elsewhere.path)  # a valid ring, outside: never opened through the link
        (rings / "sub").mkdir()
        shutil.copy2(elsewhere.path, rings / "sub" / "nested.ring")  # not directly in rings/: never listed
        elsewhere.step()
        inside.step()
        poll_until(d, lambda: d.rings.rejected.get("unreadable") and d.snapshot.processes, what="the link rejected")
        for _ in range(5):
            d.poll_once()
        assert [p.identity["host"] for p in d.snapshot.processes] == ["inside"]
        assert d.rings.rejected == {"unreadable": 1}
    finally:
        d.close()
        inside.close()
        elsewhere.close()


# -- the identity in a ring header -> faulthandler_<host>_<pid>.log -----------------------------------

# The hooked process: SENTINEL_HOST is its own environment; it steps (its ring carries that host)
# and waits; the test plants what it would plant, then it dies without a word (SIGKILL).
ATTACKER = r"""
import os, signal, sys, sentinel_hooks
sentinel_hooks.step()
print(os.getpid(), flush=True)
sys.stdin.readline()
os.kill(os.getpid(), signal.SIGKILL)
"""


def _plant(case: str, faults_dir: Path, pid: int, secret: Path) -> None:
    faults_dir.mkdir(exist_ok=True)
    mine = faults_dir / f"faulthandler_h_{pid}.log"
    if case == "regular":  # the control: its own dump is read
        mine.write_text("Fatal Python error: Segmentation fault\n")
    elif case == "traversal":  # host "x/../../../o/k": faults/faulthandler_x/.. walks up to o/
        (faults_dir / "faulthandler_x").mkdir()
        (secret.parent / f"k_{pid}.log").write_text(SECRET)
    elif case == "symlink":
        mine.symlink_to(secret)
    elif case == "hardlink":
        os.link(secret, mine)
    elif case == "fifo":
        os.mkfifo(mine)


@pytest.mark.parametrize("case", ["regular", "traversal", "symlink", "hardlink", "fifo"])
def test_faulthandler_path_from_the_ring_header_stays_in_faults(h, top: Path, case: str) -> None:
    base, secret = top / "s", top / "o" / "secret.log"
    secret.write_text(SECRET)
    host = "x/../../../o/k" if case == "traversal" else "h"
    d = _daemon(base, crash_grace_s=0.2)
    try:
        proc = h.spawn([PYTHON, "-c", ATTACKER], env=h.env(SENTINEL_DIR=str(base), SENTINEL_HOST=host),
                       stdin=subprocess.PIPE, text=True)
        pid = int(proc.stdout.readline())
        poll_until(d, lambda: d.snapshot.processes, what="the ring attached")
        assert d.snapshot.processes[0].identity["host"] == host  # the env var reached the daemon, as is
        _plant(case, base / "faults", pid, secret)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        (rec,) = poll_until(d, lambda: d.journal.faults(), what="the crash journaled")
        assert rec["source"] == "process_crash" and rec["identity"]["pid"] == pid
        if case == "regular":
            assert rec["faulthandler"].startswith("Fatal Python error: Segmentation fault")
        else:
            assert rec["faulthandler"] == "" and SECRET not in json.dumps(rec)
        assert secret.read_text() == SECRET
    finally:
        d.close()


def test_faulthandler_path_with_separators_or_nul_is_one_name(top: Path) -> None:
    base = top / "s"
    for host, pid in (("../../etc/passwd", 1), ("/abs/path", 2), ("a\0b", 3), ("..", "4/../../x")):
        path = Path(layout.faulthandler_path(str(base), host, pid))
        assert path.parent == base / "faults" and "\0" not in str(path), path
    assert faults.read_faulthandler(str(base / "faults" / "a\0b")) == ""  # a NUL: nothing read, nothing raised


# -- GPU coredump names ---------------------------------------------------------------------------

def test_core_names_only_regular_files_with_plain_names_reach_cuda_gdb(top: Path, debugger: str, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="sentinel.coredumps")
    base, outside = top / "s", top / "o"
    cores = base / "cores"
    cores.mkdir(parents=True)
    pid = _dead_pid()
    target = outside / "elsewhere.nvcudmp"
    target.write_bytes(TRANSCRIPT + bytes(4096))  # would make a fault if read through the link
    (cores / f"core_link_{pid}_1.nvcudmp").symlink_to(target)
    os.mkfifo(cores / f"core_fifo_{pid}_2.nvcudmp")
    (cores / f"core_dir_{pid}_3.nvcudmp").mkdir()
    odd = [f"core_a b_{pid}_4.nvcudmp", f"core_x;touch {outside}/pwned_{pid}_5.nvcudmp",
           f"core_y\nshell touch {outside}/pwned_{pid}_6.nvcudmp", f"core_$(id)_{pid}_7.nvcudmp"]
    for name in odd:
        (cores / name.replace("/", "_")).write_bytes(TRANSCRIPT + bytes(4096))
    good = cores / f"core_good_{pid}_8.nvcudmp"
    good.write_bytes(TRANSCRIPT + bytes(4096))
    d = _daemon(base, cuda_gdb=debugger)
    try:
        # All were there at the first poll: the plain core's fault comes after every other decision.
        rows = poll_until(d, lambda: d.journal.faults(), what="the plain core's fault")
        d.poll_once()
        assert [r["core_path"] for r in d.journal.faults()] == [str(good)]
        assert rows[0]["exception"] == "Warp Illegal Address"
        assert target.read_bytes().startswith(TRANSCRIPT) and not list(outside.glob("pwned*"))
        # Not CUDA's names, not regular files: none of them is counted as a kept dump either.
        assert d.faults.collector.total_bytes() == good.stat().st_size
        ignored = sorted(r.file for r in caplog.records if r.getMessage() == "coredump ignored")
        assert ignored == sorted(str(cores / f"core_{k}_{pid}_{i}.nvcudmp")
                                 for k, i in (("link", 1), ("fifo", 2), ("dir", 3)))
    finally:
        d.close()


# -- Flight Recorder dump names --------------------------------------------------------------------

def test_fr_dumps_only_regular_files_are_read(top: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sentinel.daemon")
    base, outside = top / "s", top / "o"
    fr = base / "fr"
    fr.mkdir(parents=True)
    dump = pickle.dumps({"version": "2.10", "entries": [{"collective_seq_id": 1, "state": "completed",
                                                         "process_group": ["0", "default_pg"]}]})
    (outside / "trace_rank_9").write_bytes(dump)
    (fr / "trace_rank_0").write_bytes(dump)  # the control: read
    (fr / "trace_rank_1").symlink_to(outside / "trace_rank_9")
    os.mkfifo(fr / "trace_rank_2")
    (fr / "trace_rank_3").mkdir()
    old = time.time() - 60  # dumps younger than a second are still being written: make these old
    for p in fr.iterdir():
        os.utime(p, (old, old), follow_symlinks=False)
    d = _daemon(base)
    try:
        poll_until(d, lambda: d.flight_recorder.rejected >= 3 and any(r.getMessage() == "flight recorder dump"
                                                         for r in caplog.records), what="the dumps looked at")
        for _ in range(5):
            d.poll_once()
        read = [r.file for r in caplog.records if r.getMessage() == "flight recorder dump"]
        refused = sorted(r.file for r in caplog.records if r.getMessage() == "flight recorder dump refused")
        assert read == [str(fr / "trace_rank_0")]
        assert refused == [str(fr / f"trace_rank_{i}") for i in (1, 2, 3)]
        assert d.flight_recorder.rejected == 3
    finally:
        d.close()


# -- core paths in the journal ---------------------------------------------------------------------

def test_retention_deletes_only_core_files_in_cores(top: Path, debugger: str) -> None:
    base, outside = top / "s", top / "o"
    cores = base / "cores"
    cores.mkdir(parents=True)
    victims = [outside / "victim_a", base / "journal-like", outside / "core_h_1_2.nvcudmp"]
    for v in victims:
        v.write_text("keep me")
    pid = _dead_pid()
    d = _daemon(base, cuda_gdb=debugger, cores_per_signature=2)
    try:
        (cores / f"core_h_{pid}_1.nvcudmp").write_bytes(TRANSCRIPT + bytes(64))
        (first,) = poll_until(d, lambda: d.journal.faults(), what="the first fault")
        # A tampered journal: rows of the same signature naming files outside cores/.
        forged = [str(victims[0]), str(cores / ".." / "journal-like"), str(victims[2])]
        with d.journal.db:
            for i, path in enumerate(forged):
                d.journal.db.execute(
                    "INSERT INTO faults (dedupe_key, signature, source, exception_class, kernel_family, core_path, "
                    "created_at, record) VALUES (?,?,?,?,?,?,?,?)",
                    (f"forged:{i}", first["signature"], "coredump", "x", "x", path, time.time(), "{}"))
        # More dumps of that signature: retention now finds the forged rows surplus.
        for t in (2, 3):
            (cores / f"core_h_{pid}_{t}.nvcudmp").write_bytes(TRANSCRIPT + bytes(64))
        real = "SELECT COUNT(*) FROM faults WHERE dedupe_key LIKE 'core:%'"
        poll_until(d, lambda: d.journal.db.execute(real).fetchone()[0] == 3, what="two more faults")
        assert all(v.read_text() == "keep me" for v in victims)
        # Retention itself works: of the real dumps, the surplus one inside cores/ is gone.
        assert len(list(cores.glob("core_h_*.nvcudmp"))) == 2
    finally:
        d.close()


@pytest.mark.parametrize("target", ["existing", "dangling"])
def test_journal_is_never_opened_through_a_symlink(top: Path, target: str) -> None:
    """A journal.sqlite planted as a link: SQLite would write the database wherever it points."""
    base, outside = top / "s", top / "o"
    aim = outside / "db"
    if target == "existing":
        aim.write_text("keep me")
    (base / "journal.sqlite").symlink_to(aim)
    with pytest.raises(OSError):
        _daemon(base)
    assert (aim.read_text() == "keep me") if target == "existing" else not aim.exists()


# -- DIR/catalog.toml ------------------------------------------------------------------------------

def test_user_catalog_must_be_a_regular_file_of_this_user(top: Path) -> None:
    base, outside = top / "s", top / "o"
    bad = outside / "bad.toml"
    bad.write_text("this is [not toml")  # read, it would stop the daemon from starting
    catalog = base / "catalog.toml"
    catalog.write_text(bad.read_text())
    with pytest.raises(CatalogError):  # the control: its own file is read
        _daemon(base)
    catalog.unlink()
    catalog.symlink_to(bad)
    _daemon(base).close()  # the planted link is ignored
    if os.geteuid() == 0:
        catalog.unlink()
        shutil.copy(bad, catalog)
        os.chown(catalog, OUTSIDER_UID, OUTSIDER_GID)
        _daemon(base).close()  # another user's file is ignored


# -- evidence names --------------------------------------------------------------------------------

def test_evidence_names_stay_in_evidence(h, top: Path) -> None:
    base = top / "s"
    code = ("import json, sys\nfrom sentinel_hooks.probes import save_evidence\n"
            "print(json.dumps([save_evidence(c, n, {}) for c, n in json.loads(sys.argv[1])]))")
    names = [("paged_kv", "../../../o/x"), ("paged_kv", "/etc/passwd"), ("strides", "a\0b"), ("batch", "..")]
    res = h.run_py(code, env=h.env(SENTINEL_DIR=str(base)), args=(json.dumps(names),))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    paths = json.loads(res.stdout)
    assert len(paths) == len(names) and all(Path(p).parent == base / "evidence" for p in paths), paths
    assert all(Path(p).is_file() for p in paths) and list((top / "o").iterdir()) == []


# -- a cuda-gdb transcript -------------------------------------------------------------------------

def test_transcript_source_paths_are_printed_never_opened(top: Path) -> None:
    canary = top / "o" / "kernel.cu"
    os.mkfifo(canary)  # opened for reading, it would block the command until its timeout
    text = (TESTS / "fixtures" / "cuda-gdb" / "cuda-gdb-illegal-address.txt").read_text()
    text = text.replace("(illegal_address.py:8)", f"({canary}:8)")  # the faulting source line's file
    transcript = top / "s" / "t.txt"
    transcript.write_text(text)
    res = subprocess.run([SENTINEL, "triage", "--cuda-gdb-output", str(transcript), "--json"], capture_output=True,
                         text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec["gdb"]["source_file"] == str(canary)  # taken as text, and that is all
