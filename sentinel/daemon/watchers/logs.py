"""The logs watcher: the serving processes' output, followed as it is written, and each failure it
shows (a CUDA error, a device-side assert, a TMA descriptor failure, an engine's death) turned into a
fault record with the process's ring evidence, without waiting for a coredump.

Two sources, read the same way:
- ``SENTINEL_DIR/logs/<host>.<pid>.log``: what `sentinel run --log-tap` copied from a command;
- ``--log-file GLOB`` (repeatable): files the platform already writes, e.g. a node's container logs
  (``/var/log/pods/<namespace>_<pod>_<uid>/<container>/0.log``, CRI format) or Docker's json-file logs.

A failure line is attributed to a hooked process by the ``pid=N`` of its engine prefix
(``(VllmWorker rank=1 pid=110)``), else by the tapped command's pid, else by the pod a container log
belongs to (when one hooked process of that pod is known). The window of lines before it (the
traceback) is parsed with ``triage.readers.serving_log``, ``SETTLE_S`` after the last failure line,
so that the lines written with it are read too. The faults watcher makes one record of a failure
seen several ways (``FaultWatcher.journal_fault``).
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from sentinel.daemon.context import DaemonContext
from sentinel.daemon.discovery import Discovery
from sentinel.daemon.state import ProcessState
from sentinel.daemon.watchers.faults import FaultWatcher
from sentinel.daemon.watchers.rings import RingWatcher
from sentinel.triage import records
from sentinel.triage.readers import serving_log
from sentinel_hooks import layout

__all__ = ["LogWatcher", "plain_line", "SETTLE_S", "WINDOW_LINES", "READ_BYTES_PER_POLL"]

log = logging.getLogger("sentinel.daemon")

SETTLE_S = 0.25  # read a failure this long after its last failure line (the lines logged with it)
MAX_WAIT_S = 0.75  # ... but never later than this after its first (a log that keeps failing)
WINDOW_LINES = 400  # lines kept before a failure: its traceback
AFTER_LINES = 200  # lines kept after a failure's first line: the rest of its report
READ_BYTES_PER_POLL = 4 << 20  # per file and poll: a backlog is read over several polls
GLOB_RESCAN_S = 1.0
LINE_MAX = 8192  # longer lines are not failure lines (serving_log skips them too)

_CRI = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d) (?:stdout|stderr) [FP] ")
_PID = re.compile(r"\bpid=(\d{1,10})\b")
_POD_PATH = re.compile(r"/var/log/pods/(?P<ns>[^_/]+)_(?P<pod>[^_/]+)_[^/]+/|"
                       r"/var/log/containers/(?P<pod2>[^_/]+)_(?P<ns2>[^_/]+)_")


def plain_line(line: str) -> str:
    """A container log line without its runtime's wrapping: CRI's ``<time> <stream> <F|P> `` prefix, or
    Docker json-file's ``{"log": ..., "stream": ..., "time": ...}``; any other line as it is."""
    if line.startswith('{"log":'):
        try:
            return str(json.loads(line).get("log", "")).rstrip("\n")
        except (ValueError, AttributeError):
            return line
    m = _CRI.match(line)
    return line[m.end():] if m else line


@dataclass
class _Followed:
    """One file followed: where we are in it, and the lines before a failure."""

    path: str
    tap: tuple[str, int] | None  # (host, pid) of a `sentinel run --log-tap` file
    pod: tuple[str, str] | None  # (namespace, pod) of a container log
    inode: int = -1
    offset: int = 0
    partial: bytes = b""
    window: collections.deque = field(default_factory=lambda: collections.deque(maxlen=WINDOW_LINES))
    first_marker: float = 0.0  # time.monotonic() of the pending failure's first line; 0: none pending
    last_marker: float = 0.0
    marker_offset: int = 0  # where in the file the pending failure's first line ends
    pre: list[str] | None = None  # the window up to the pending failure's first line, frozen there
    post: list[str] = field(default_factory=list)  # the lines after it, up to AFTER_LINES
    seen_at: float = field(default_factory=time.monotonic)  # when it last grew


class LogWatcher:
    """Follows the tap files and ``config.log_files``; hands fault records to ``faults``."""

    def __init__(self, ctx: DaemonContext, rings: RingWatcher, faults: FaultWatcher) -> None:
        self.ctx = ctx
        self.rings = rings
        self.faults = faults
        self.logs_dir = layout.logs_dir(ctx.config.base_dir)
        ctx.fs_policy.make_dirs(self.logs_dir)  # watched for file events: it must exist
        self.discovery = Discovery(self.logs_dir, ctx.config.rescan_interval, ctx.config.use_events,
                                   lambda n: layout.tap_log_pid(n) is not None)
        self.files: dict[str, _Followed] = {}
        self._next_glob = 0.0
        # Files found by the first scan (there before this daemon started) are followed from their
        # end: what they held is history, read already by a previous daemon or by `sentinel triage`.
        # So is a file that was dropped (idle past dead_ttl_s) and grows again.
        self._first_tap_scan = self._first_glob = True
        self._dropped: set[str] = set()
        self._next_prune = 0.0
        self.bytes_read = 0
        self.failures = 0

    # -- the Watcher protocol -------------------------------------------------------------------

    def poll(self, now: float) -> None:
        for name in self.discovery.poll():
            path = os.path.join(self.logs_dir, name)
            if path not in self.files:
                self._follow(_Followed(path, layout.tap_log_pid(name), None), at_end=self._first_tap_scan)
        self._first_tap_scan = False
        mono = time.monotonic()
        if self.ctx.config.log_files and mono >= self._next_glob:
            self._next_glob = mono + GLOB_RESCAN_S
            self._glob()
        for f in list(self.files.values()):
            self._read(f)
            if f.first_marker and (mono - f.last_marker >= SETTLE_S or mono - f.first_marker >= MAX_WAIT_S):
                self._failure(f)

        if mono >= self._next_prune:
            self._next_prune = mono + 10.0
            self._prune(mono)

    def _follow(self, f: _Followed, at_end: bool) -> None:
        if at_end or f.path in self._dropped:
            try:
                st = os.stat(f.path)
            except OSError:
                return
            f.inode, f.offset = st.st_ino, st.st_size
        self._dropped.discard(f.path)
        self.files[f.path] = f

    def _prune(self, mono: float) -> None:
        """Stop following a file idle for dead_ttl_s (a dead process's tap file, a deleted pod's log)."""
        for path, f in list(self.files.items()):
            if not f.first_marker and mono - f.seen_at > self.ctx.config.dead_ttl_s:
                del self.files[path]
                self._dropped.add(path)

    def view(self) -> dict[str, Any]:
        return {"log_files": len(self.files), "log_bytes": self.bytes_read, "log_failures": self.failures}

    def close(self) -> None:
        self.discovery.close()

    # -- reading --------------------------------------------------------------------------------

    def _glob(self) -> None:
        for pattern in self.ctx.config.log_files:
            for path in glob.glob(pattern):
                if path in self.files or not os.path.isfile(path):
                    continue
                m = _POD_PATH.search(os.path.abspath(path))
                pod = ((m["ns"] or m["ns2"]), (m["pod"] or m["pod2"])) if m else None
                self._follow(_Followed(path, None, pod), at_end=self._first_glob)
        self._first_glob = False

    def _read(self, f: _Followed) -> None:
        # Tap files are in a folder hooked processes may write to: never through a symlink there.
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_NOFOLLOW if f.tap else 0)
        try:
            fd = os.open(f.path, flags)
        except OSError:
            if not os.path.lexists(f.path):
                self.files.pop(f.path, None)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            if st.st_ino != f.inode or st.st_size < f.offset:  # new file, rotated, or truncated
                f.inode, f.offset, f.partial = st.st_ino, 0, b""
            if st.st_size == f.offset:
                return
            os.lseek(fd, f.offset, os.SEEK_SET)
            data = os.read(fd, min(READ_BYTES_PER_POLL, st.st_size - f.offset))
        except OSError:  # gone or unreadable now: tried again at the next poll
            return
        finally:
            os.close(fd)
        start = f.offset - len(f.partial)  # the file offset of data[0] below
        f.offset += len(data)
        f.seen_at = time.monotonic()
        self.bytes_read += len(data)
        data = f.partial + data
        cut = data.rfind(b"\n") + 1
        f.partial = data[cut:] if len(data) - cut < LINE_MAX else b""
        pos = 0
        for raw in data[:cut].split(b"\n")[:-1]:
            pos += len(raw) + 1
            if len(raw) > LINE_MAX:
                continue
            line = plain_line(raw.decode("utf-8", "replace"))
            if f.pre is None:
                f.window.append(line)
            elif len(f.post) < AFTER_LINES:
                f.post.append(line)
            if serving_log.looks_like(raw):
                now = time.monotonic()
                if not f.first_marker:  # the lines before it are its traceback: kept as they are now
                    f.first_marker, f.marker_offset, f.pre, f.post = now, start + pos, list(f.window), []
                f.last_marker = now

    # -- records --------------------------------------------------------------------------------

    def _failure(self, f: _Followed) -> None:
        lines = (f.pre or []) + f.post
        f.first_marker = f.last_marker = 0.0
        f.pre, f.post = None, []
        f.window.clear()  # the next failure's window starts after this one
        rep = serving_log.parse("\n".join(lines))
        if not rep.ok:
            return
        state = self._process(f, lines)
        rec = records.from_log(rep, f.path, self.ctx.catalog, state, self.rings.names(state) if state else None,
                               self.ctx.config.base_dir)
        rec.dedupe_key = f"log:{f.path}:{f.inode}:{f.marker_offset}"
        if state is None and f.pod:  # no hooked process named: the pod's, with what the prefix said (rank, pid)
            rec.identity = {**rec.identity, "namespace": f.pod[0], "pod": f.pod[1]}
        rec.died_at = time.time()  # when it was logged: what a related death is compared with
        self.failures += 1
        self.faults.journal_fault(rec)

    def _process(self, f: _Followed, lines: list[str]) -> ProcessState | None:
        """The hooked process that logged the failure: by the ``pid=`` of its lines (the last one that
        names one), among the processes that can have written the file (the tapped command's host;
        a container log's pod; else a pid no other known process has), else the tapped command,
        else the one hooked process of the pod."""
        host = f.tap[0] if f.tap else ""

        def by_pid(pid: int) -> ProcessState | None:
            found = [s for s in self.ctx.states.values() if s.identity.get("pid") == pid
                     and (not f.tap or s.identity.get("host", "") == host)
                     and (not f.pod or (s.identity.get("namespace"), s.identity.get("pod")) == f.pod)]
            if len(found) > 1 and (f.tap or f.pod):
                return max(found, key=lambda s: s.created_ns)  # one host or pod: the newest incarnation
            return found[0] if len(found) == 1 else None  # pids repeat across containers: only a unique one

        for line in reversed(lines[-64:]):
            m = _PID.search(line[:200])
            if m:
                state = by_pid(int(m[1]))
                if state is not None:
                    return state
        if f.tap:
            state = by_pid(f.tap[1])
            if state is not None:
                return state
            # the tapped command may be a launcher (a shell, torchrun): its one hooked child
            kids = [s for s in self.ctx.states.values() if s.identity.get("ppid") == f.tap[1]
                    and s.identity.get("host", "") == host]
            if len(kids) == 1:
                return kids[0]
        if f.pod:
            in_pod = [s for s in self.ctx.states.values()
                      if (s.identity.get("namespace"), s.identity.get("pod")) == f.pod]
            if len(in_pod) == 1:
                return in_pod[0]
        return None
