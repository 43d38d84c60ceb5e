"""Collecting GPU coredumps: wait until a dump is complete, run cuda-gdb, keep disk use capped.

Dumps land in SENTINEL_DIR/cores/ (the hooks point CUDA_COREDUMP_FILE there). A dump is complete
when its writer has exited, or its size has been stable for a while. Triage runs on a worker
thread, one dump at a time, so a slow debugger never stalls the daemon's polling; results are
handed back through a queue and journaled by the daemon's own thread.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import stat
import threading
import time
from dataclasses import dataclass

import psutil

from sentinel.triage.readers import cudagdb
from sentinel_hooks.crash import CORE_PREFIX, CORE_SUFFIX
from sentinel_hooks.writer import FsPolicy

__all__ = ["is_core_name", "parse_core_name", "PendingCore", "TriageResult", "CoreCollector"]

log = logging.getLogger("sentinel.coredumps")


# The names CUDA writes (core_<host>_<pid>_<time>.nvcudmp): nothing else reaches cuda-gdb, whose
# command line the name becomes part of (no spaces, quotes, newlines or separators).
_CORE_NAME = re.compile(re.escape(CORE_PREFIX) + r"[A-Za-z0-9._-]+" + re.escape(CORE_SUFFIX) + r"\Z")


def is_core_name(name: str) -> bool:
    """Whether ``name`` is a GPU coredump name as the hooks set it (core_<host>_<pid>_<time>.nvcudmp,
    only letters, digits, ``.``, ``_`` and ``-``): the only files handed to cuda-gdb."""
    return bool(_CORE_NAME.match(name))


def _regular_size(path: str) -> int:
    """The size of a regular file; OSError for a symlink, a FIFO, a directory, or nothing there."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"not a regular file: {path}")
    return st.st_size


def parse_core_name(name: str) -> tuple[str, int | None]:
    """(host, pid) from core_<host>_<pid>_<time>.nvcudmp; the host may contain underscores."""
    stem = name[len(CORE_PREFIX): -len(CORE_SUFFIX)]
    parts = stem.rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return stem, None


@dataclass
class PendingCore:
    """A coredump seen in cores/ and not yet complete. ``first_seen`` and ``stable_since`` are
    monotonic seconds; ``size`` is in bytes (-1: not read yet); ``pid`` is None when the name has none."""

    path: str
    host: str
    pid: int | None
    first_seen: float
    size: int = -1
    stable_since: float = 0.0


@dataclass
class TriageResult:
    """One dump's triage, from the worker thread to the daemon: cuda-gdb's parsed report and raw
    transcript (empty without cuda-gdb or when it failed), ``seconds`` cuda-gdb ran, ``notes`` for the
    fault record, and ``done_at`` in Unix seconds."""

    path: str
    host: str
    pid: int | None
    report: cudagdb.GdbReport
    transcript: str
    seconds: float
    notes: list[str]
    done_at: float


class CoreCollector:
    """GPU coredumps in ``cores_dir``: ``offer`` names, ``poll`` hands each complete one (its writer
    gone, or its size stable for ``stable_s`` seconds) to a worker thread that runs cuda-gdb (``timeout_s``
    seconds a dump) and puts a TriageResult on ``results``; ``enforce_retention`` keeps the folder under
    ``max_bytes`` bytes. Raises OSError when ``cores_dir`` cannot be created."""

    def __init__(self, cores_dir: str, gdb: str | None = None, timeout_s: float = 60.0, stable_s: float = 3.0,
                 max_bytes: int = 2 << 30, keep_per_signature: int = 2, policy: FsPolicy | None = None) -> None:
        self.cores_dir = cores_dir
        self.gdb = cudagdb.find_cuda_gdb(gdb)
        self.timeout_s = timeout_s
        self.stable_s = stable_s
        self.max_bytes = max_bytes
        self.keep_per_signature = max(2, keep_per_signature)  # the first and the latest, at least
        self.pending: dict[str, PendingCore] = {}
        self.seen: set[str] = set()
        self.results: queue.SimpleQueue[TriageResult] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[PendingCore | None] = queue.SimpleQueue()
        self.in_flight = 0
        self.queued: set[str] = set()  # handed to the worker, result not yet taken: never deleted
        self.largest = 0  # the biggest dump seen: retention keeps that much room under the cap
        self.grew = False  # a dump appeared or grew since the daemon last enforced the cap
        self.errors = 0
        (policy or FsPolicy()).make_dirs(cores_dir)  # first: a folder that cannot be made leaves no thread
        self._worker = threading.Thread(target=self._run, name="sentinel-triage", daemon=True)
        self._worker.start()
        if self.gdb is None:
            log.warning("cuda-gdb not found: GPU coredumps are kept and journaled without a backtrace "
                        "(install the CUDA toolkit's cuda-gdb or pass --cuda-gdb); `sentinel doctor` checks")

    def offer(self, names: set[str], now: float | None = None) -> None:
        """Names seen in cores/ (events or a rescan)."""
        now = time.monotonic() if now is None else now
        for name in names:
            if not is_core_name(name) or name in self.seen or name in self.pending:
                continue
            host, pid = parse_core_name(name)
            self.pending[name] = PendingCore(os.path.join(self.cores_dir, name), host, pid, now)

    def poll(self, now: float | None = None) -> None:
        """Hand complete dumps to the triage worker."""
        now = time.monotonic() if now is None else now
        for name, pc in list(self.pending.items()):
            try:
                size = _regular_size(pc.path)
            except OSError as exc:
                del self.pending[name]  # vanished, or not a file cuda-gdb may be pointed at
                if os.path.lexists(pc.path):
                    self.seen.add(name)
                    log.warning("coredump ignored", extra={"file": pc.path, "error": str(exc)})
                continue
            if size != pc.size:
                pc.size, pc.stable_since = size, now
                self.largest, self.grew = max(self.largest, size), True
            writer_gone = pc.pid is not None and not _alive(pc.pid)
            stable = size > 0 and now - pc.stable_since >= self.stable_s
            if (writer_gone and now - pc.stable_since >= 0.5) or stable:
                del self.pending[name]
                self.seen.add(name)
                self.in_flight += 1
                self.queued.add(pc.path)
                self._work.put(pc)

    def taken(self, path: str) -> None:
        """The daemon has journaled this dump's result: retention may now consider it."""
        self.queued.discard(path)
        self.in_flight -= 1

    def pending_for(self, pid: int) -> bool:
        return any(p.pid == pid for p in self.pending.values())

    def _run(self) -> None:
        while True:
            pc = self._work.get()
            if pc is None:
                return
            notes: list[str] = []
            transcript, seconds = "", 0.0
            if self.gdb is None:
                notes.append("cuda-gdb not found: no backtrace; the record is built from the other evidence")
            else:
                try:
                    transcript, seconds = cudagdb.run(pc.path, self.gdb, self.timeout_s)
                except Exception as exc:  # timeout, exec failure
                    self.errors += 1
                    notes.append(f"cuda-gdb failed: {type(exc).__name__}: {exc}")
            report = cudagdb.parse(transcript)
            if transcript and not report.ok:
                self.errors += 1
                why = "; ".join(report.errors) or transcript.strip().splitlines()[-1][:200] if transcript.strip() else ""
                notes.append(f"cuda-gdb could not read the dump (truncated or not a GPU coredump?): {why}")
            self.results.put(TriageResult(pc.path, pc.host, pc.pid, report, transcript, seconds, notes, time.time()))

    def enforce_retention(self, keep: set[str]) -> list[str]:
        """Delete dump files (oldest first) until the folder has room under the byte cap for one more
        dump as big as the largest seen: dumps are written, then triaged, and count against the cap
        all along. Spares ``keep`` paths and dumps not triaged yet. Returns the deleted paths."""
        try:
            files = [os.path.join(self.cores_dir, n) for n in os.listdir(self.cores_dir) if is_core_name(n)]
        except OSError:
            return []
        sizes = {}
        for p in files:
            try:
                sizes[p] = _regular_size(p)
            except OSError:
                pass
        total = sum(sizes.values())
        self.largest = max([self.largest, *sizes.values()])
        limit = self.max_bytes - min(self.largest, self.max_bytes)
        deleted = []
        for p in sorted(sizes, key=lambda p: os.path.getmtime(p) if os.path.exists(p) else 0):
            if total <= limit:
                break
            if p in keep or p in self.queued or os.path.basename(p) in self.pending:
                continue  # spared, or not triaged yet
            try:
                os.unlink(p)
                total -= sizes[p]
                deleted.append(p)
            except OSError:
                pass
        return deleted

    def total_bytes(self) -> int:
        total = 0
        try:
            names = [n for n in os.listdir(self.cores_dir) if is_core_name(n)]
        except OSError:
            return 0
        for n in names:
            try:
                total += _regular_size(os.path.join(self.cores_dir, n))
            except OSError:
                pass
        return total

    def close(self) -> None:
        self._work.put(None)


def _alive(pid: int) -> bool:
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
