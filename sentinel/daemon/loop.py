"""The sidecar daemon: discover rings, tail them, keep per-process state, persist, export.

One poll thread owns all mutable state. After each poll it publishes an immutable Snapshot,
which the HTTP exporter thread reads without locks.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import queue
import stat
import threading
import time
from dataclasses import dataclass, field

from sentinel.daemon.coredumps import CoreCollector, is_core_name, parse_core_name
from sentinel.daemon.discovery import Discovery
from sentinel.daemon.journal import Journal, journal_path
from sentinel.daemon.nvml import NvmlMonitor
from sentinel.daemon.ringreader import RingReader
from sentinel.daemon.state import LAST_RECORDS, ProcessState, Snapshot
from sentinel.triage import catalog as catalog_mod
from sentinel.triage import records as faults
from sentinel.triage.hangs import Hang, HangConfig, HangDetector
from sentinel_hooks import ringformat as rf
from sentinel_hooks.writer import FsPolicy

log = logging.getLogger("sentinel.daemon")
VIOLATION_LOG_S = 10.0
LAST_RECORDS_ON_RESUME = 4096  # re-read (not re-counted) after a restart, to rebuild context
CLOSE_BACKLOG = 256  # rings queued for the closer thread at most
# Time a poll spends opening new rings at most: a burst of files (thousands of short-lived
# processes) is worked through over several polls and never stalls the tailing of known ones.
ATTACH_BUDGET_S = 0.1
# sentinel_fault_info series at most (the newest faults of the last --dead-ttl): a storm of crashing
# processes must not become a storm of series.
MAX_FAULT_INFO = 1000


@dataclass
class DaemonConfig:
    base_dir: str
    poll_interval: float = 0.2
    rescan_interval: float = 5.0
    persist_interval: float = 1.0
    keep_dead: int = 256  # dead processes kept in memory and in metrics (all stay in the journal)
    # How long a dead process's series, and a fault's sentinel_fault_info, stay exported: alerts on
    # them resolve once it has passed. A restarted server's previous incarnation stops paging then.
    dead_ttl_s: float = 600.0
    # The kubelet's pod-resources socket (node mode): XIDs are attributed to the pods holding the GPU.
    pod_resources_socket: str | None = None
    allowed_uids: set[int] | None = field(default_factory=lambda: {os.getuid()})
    use_events: bool = True
    hang: HangConfig = field(default_factory=HangConfig)
    cuda_gdb: str | None = None  # the debugger to run (default: cuda-gdb on PATH or in CUDA_HOME)
    gdb_timeout_s: float = 60.0
    cores_max_bytes: int = 2 << 30
    cores_per_signature: int = 3  # the first, the latest, and one more
    catalogs: list[str] = field(default_factory=list)  # extra known-issue files
    nvml: bool = True
    # How long to wait, after a process died, for its GPU coredump before its fault record is made
    # without one. The CUDA driver writes the dump in the faulting process before it terminates, so
    # the file is there at the death; the wait only covers file events arriving late (and the
    # cores/ folder is listed once more before giving up).
    crash_grace_s: float = 2.0
    consequence_window_s: float = faults.CONSEQUENCE_WINDOW_S  # deaths this close to a related fault follow from it
    group: int | None = None  # share what the daemon creates with this gid (setgid dirs 2770, files 0640)


def _own_regular_file(path: str) -> bool:
    """Whether DIR/catalog.toml may be read: a regular file (not a symlink) of this user or root. In a
    SENTINEL_DIR shared with a group, a hooked process could plant one; --catalog FILE is explicit."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if stat.S_ISREG(st.st_mode) and st.st_uid in (os.geteuid(), 0):
        return True
    log.warning("ignored, not a regular file of this user (use --catalog FILE)", extra={"file": path})
    return False


def _writer_holds_lock(path: str) -> bool:
    """Whether a live writer holds ``path``'s flock (False when it is gone or cannot be opened)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (-1: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.rings_dir = rf.rings_dir(config.base_dir)
        self.fs_policy = FsPolicy.for_group(config.group)
        self.fs_policy.make_dirs(self.rings_dir)
        self.journal = Journal(journal_path(config.base_dir), self.fs_policy)
        self.states: dict[str, ProcessState] = {}
        self.readers: dict[str, RingReader] = {}
        self.rejected: dict[str, int] = {}
        self._rejected_files: set[str] = set()
        self.ingested = 0
        self.polls = 0
        self.journal_errors = 0  # journal writes that failed (a full disk): exported, retried
        self._last_poll_s = 0.0
        self._next_persist = 0.0
        self._violation_logged: dict[tuple[str, str], float] = {}
        self._to_attach: dict[str, None] = {}  # rings found, not opened yet, in the order found
        self._forgotten: set[str] = set()  # rings of forgotten processes that could not be deleted
        self.rings_deleted = 0
        self.ring_delete_errors = 0
        self.snapshot = Snapshot(taken_at=time.time())
        for state in self.journal.load():
            self.states[state.ring] = state
        resumed = [s.ring for s in self.states.values() if s.alive]
        if self.states:
            log.info("journal loaded", extra={"processes": len(self.states), "resuming": len(resumed)})
        self.discovery = Discovery(self.rings_dir, config.rescan_interval, config.use_events)
        self.detector = HangDetector(config.hang)
        user_catalog = os.path.join(config.base_dir, "catalog.toml")
        self.catalog = catalog_mod.load(([user_catalog] if _own_regular_file(user_catalog) else []) + config.catalogs)
        self.cores_dir = os.path.join(config.base_dir, "cores")
        self.collector = CoreCollector(self.cores_dir, config.cuda_gdb, config.gdb_timeout_s,
                                       max_bytes=config.cores_max_bytes, keep_per_signature=config.cores_per_signature,
                                       policy=self.fs_policy)
        self.core_discovery = Discovery(self.cores_dir, config.rescan_interval, config.use_events, is_core_name)
        self.fault_counts = self.journal.fault_counts()
        self.consequence_counts = self.journal.consequence_counts()
        # Faults of their own (not consequences): those that may still explain a related death
        # (faults.is_consequence), and the newest MAX_FAULT_INFO of the last dead_ttl_s, exported as
        # sentinel_fault_info (what the fault alerts fire from).
        self._causes = faults.CauseIndex()
        self._fault_info: collections.deque[faults.FaultInfo] = collections.deque(maxlen=MAX_FAULT_INFO)
        since = time.time() - max(config.dead_ttl_s, 2 * config.consequence_window_s)
        for d in reversed(self.journal.faults(MAX_FAULT_INFO, since)):
            rec = faults.FaultRecord.from_dict(d)
            if rec.consequence_of is None:
                info = faults.FaultInfo.of(rec)
                self._causes.add(info)
                self._fault_info.append(info)
        self.triage_seconds: list[float] = []
        self._pending_crashes: dict[str, float] = {}  # ring -> deadline for its coredump to show up
        for state in self.states.values():
            if state.exit == "died" and not state.crash_checked:
                self._recheck_crash(state)
        attribute = None
        if config.nvml and config.pod_resources_socket:
            from sentinel.daemon.podresources import PodAttribution

            attribute = PodAttribution(config.pod_resources_socket).pods_for
        self.nvml = NvmlMonitor(config.nvml, attribute)
        self.nvml.start()
        self.gpus: tuple = ()
        self.xid_counts = self.journal.xid_counts()
        self._next_gpu_sample = 0.0
        self.hangs: dict[tuple[str, str, int], Hang] = {}
        self._open_hangs = self.journal.open_hangs()  # hangs open before a restart: not new again
        self.hangs_total = self.journal.hang_counts()
        self.hang_evidence: dict[tuple[str, str, int], dict] = {}
        self.fr_dir = os.path.join(config.base_dir, "fr")
        self.fs_policy.make_dirs(self.fr_dir)  # watched for file events: it must exist (dumps land there later)
        self.fr_discovery = Discovery(self.fr_dir, config.rescan_interval, config.use_events, lambda n: not n.startswith("."))
        self.fr_seen: dict[str, float] = {}  # dump path -> mtime read
        self.fr_rejected = 0
        self.gdb_rejected = 0  # cuda-gdb transcripts with no exception or kernel in them
        self._hang_evidence: queue.SimpleQueue = queue.SimpleQueue()
        # The last close of a deleted ring frees its blocks, milliseconds each on a journaling
        # filesystem: rings are closed off the poll thread, so a burst of exits never stalls polling.
        self._to_close: queue.SimpleQueue[RingReader | None] = queue.SimpleQueue()
        threading.Thread(target=self._close_rings, name="sentinel-ring-close", daemon=True).start()

    # -- attaching ------------------------------------------------------------------------------

    def _attach(self, name: str) -> None:
        state = self.states.get(name)
        if (name in self.readers or name in self._rejected_files or name in self._forgotten
                or (state is not None and not state.alive)):
            return
        path = os.path.join(self.rings_dir, name)
        try:
            reader = RingReader(path, self.config.allowed_uids, start_after=state.last_seq if state else 0)
        except rf.RingFormatError as exc:
            self._reject(name, exc.reason, str(exc))
            return
        except FileNotFoundError:
            return  # vanished between listing and opening
        except OSError as exc:
            self._reject(name, "unreadable", str(exc))
            return
        if state is None:
            state = ProcessState(ring=name, identity={})
            self.states[name] = state
            log.info("ring attached", extra={"ring": name, "pid": reader.header["pid"], "rank": reader.header["rank"]})
        else:
            state.rebuild(reader.recent(state.last_seq, LAST_RECORDS_ON_RESUME), reader.name)
            log.info("ring resumed", extra={"ring": name, "after_seq": state.last_seq})
        state.apply_header(reader.header)
        self.readers[name] = reader

    def _reject(self, name: str, reason: str, message: str) -> None:
        self._rejected_files.add(name)
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("ring rejected", extra={"ring": name, "reason": reason, "detail": message})

    # -- polling --------------------------------------------------------------------------------

    def poll_once(self) -> None:
        t0 = time.perf_counter()
        for name in self.discovery.poll():  # a rescan lists the known ones too: queue only the new
            state = self.states.get(name)
            if (name not in self.readers and name not in self._rejected_files and name not in self._forgotten
                    and (state is None or state.alive)):
                self._to_attach.setdefault(name, None)
        budget = t0 + ATTACH_BUDGET_S
        while self._to_attach and time.perf_counter() < budget:
            name = next(iter(self._to_attach))
            del self._to_attach[name]
            self._attach(name)
        for name, reader in list(self.readers.items()):
            self._tail(name, reader)
        self._settle_missing()
        self._check_hangs()
        self._store_hang_evidence()
        self._read_flight_recorder()
        self._collect_faults()
        self.polls += 1
        self._last_poll_s = time.perf_counter() - t0
        self._publish()

    def _tail(self, name: str, reader: RingReader) -> None:
        state = self.states[name]
        try:
            alive = reader.writer_alive()
            header = reader.refresh_header()
            result = reader.tail(writer_alive=alive)
        except (rf.RingFormatError, OSError, ValueError) as exc:
            # The file changed under us (truncated, overwritten): keep what we had, stop reading.
            self._close_ring(self.readers.pop(name))
            self._reject(name, getattr(exc, "reason", "unreadable"), str(exc))
            self._end(state, "unknown")
            return
        state.apply_header(header)
        if len(result.records):
            state.ingest(result.records, reader.name)
            self.ingested += len(result.records)
            if state.new_violations:
                self._log_violations(state, reader)
        if result.overwritten or result.torn:
            state.overwritten += result.overwritten
            state.torn += result.torn
            state.dirty = True
        state.last_seq = reader.last_seq
        if not alive:
            self._close_ring(self.readers.pop(name))
            self._end(state, "exited" if header["exit_ns"] else "died")

    def _close_ring(self, reader: RingReader) -> None:
        if self._to_close.qsize() < CLOSE_BACKLOG:
            self._to_close.put(reader)
        else:  # the closer is behind: close here rather than let fds and mappings pile up
            reader.close()

    def _close_rings(self) -> None:
        while (reader := self._to_close.get()) is not None:
            try:
                reader.close()
            except Exception:
                log.exception("closing a ring failed")

    def _log_violations(self, state: ProcessState, reader: RingReader) -> None:
        # One line per process and check every VIOLATION_LOG_S: a violation every step must
        # not flood the log; the counters carry the totals.
        now = time.monotonic()
        for check, tag, a, b, c, aux, step in state.new_violations:
            key = (state.ring, check)
            if now - self._violation_logged.get(key, -1e9) < VIOLATION_LOG_S:
                continue
            self._violation_logged[key] = now
            log.warning("invariant violation", extra={
                "check": check, "site": reader.name(tag), "pid": state.identity.get("pid"),
                "rank": state.identity.get("rank"), "count": a,
                # -1: not known (a length from the GPU path, an entry past a row's prefix)
                "value": None if b == -1 and check in ("seqlens_invalid", "page_table_trailing_oob") else b,
                "limit": c, "aux": aux, "step": step,  # the step of the violating call, not this poll's
            })
        state.new_violations.clear()

    def _end(self, state: ProcessState, how: str) -> None:
        if how == "died" and not state.crash_checked:
            self._pending_crashes[state.ring] = time.monotonic() + self.config.crash_grace_s
        state.alive = False
        state.exit = how
        state.ended_at = time.time()
        state.dirty = True
        log.log(
            logging.WARNING if how != "exited" else logging.INFO,
            "process ended",
            extra={"ring": state.ring, "pid": state.identity.get("pid"), "rank": state.identity.get("rank"),
                   "how": how, "step": state.step, "records": state.records},
        )

    def _recheck_crash(self, state: ProcessState) -> None:
        """A process seen dying by a daemon that was killed before it wrote the crash record: wait
        out what is left of the grace, with the ring's last records back as the evidence."""
        left = state.ended_at + self.config.crash_grace_s - time.time()
        self._pending_crashes[state.ring] = time.monotonic() + max(0.0, left)
        try:
            reader = RingReader(os.path.join(self.rings_dir, state.ring), self.config.allowed_uids)
        except (rf.RingFormatError, OSError):
            return  # the ring is gone: the record says what the journal knows
        try:
            state.last = reader.recent(state.last_seq, LAST_RECORDS).copy()
        finally:
            reader.close()

    def _settle_missing(self) -> None:
        # Processes the journal says were running whose ring is gone: we cannot know how they ended.
        for state in self.states.values():
            if state.alive and state.ring not in self.readers:
                if not os.path.exists(os.path.join(self.rings_dir, state.ring)):
                    self._end(state, "unknown")
        dead = [s for s in self.states.values() if not s.alive]
        expired = time.time() - self.config.dead_ttl_s
        dead.sort(key=lambda s: s.ended_at)
        surplus = len(dead) - self.config.keep_dead
        for i, s in enumerate(dead):
            if (i < surplus or s.ended_at < expired) and not s.dirty and s.ring not in self._pending_crashes:
                self._forget(s)

    def _forget(self, state: ProcessState) -> None:
        """A dead process, its series expired and its evidence journaled: drop it from memory, and
        delete its ring and faulthandler dump (4 MiB and more each, kept nowhere else but no longer
        needed). The journal keeps its row and its fault record. A ring whose writer still holds its
        lock (a process ended as "unknown" that lives on) is kept, and so is a dump file that a live
        process with the same pid may be using now."""
        ring = os.path.join(self.rings_dir, state.ring)
        if _writer_holds_lock(ring):
            self._forgotten.add(state.ring)  # a writer lives: not ours to delete, nor to attach again
            del self.states[state.ring]
            return
        del self.states[state.ring]
        paths = [ring]
        pid, host = state.identity.get("pid"), state.identity.get("host", "")
        reused = any(s.alive and s.identity.get("pid") == pid and s.identity.get("host", "") == host
                     for s in self.states.values())
        if pid is not None and not reused:
            paths.append(faults.faulthandler_path(self.config.base_dir, host, pid))
        for path in paths:
            try:
                os.unlink(path)
                if path == ring:
                    self.rings_deleted += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                if path == ring:
                    self._forgotten.add(state.ring)  # not ours to delete: never attach it again
                    self.ring_delete_errors += 1
                    log.warning("could not delete a dead process's ring", extra={"ring": state.ring, "error": str(exc)})

    def _check_hangs(self) -> None:
        now = time.time()
        found = {h.key: h for h in self.detector.evaluate(self.states.values(), now)}
        for key, hang in found.items():
            if key not in self.hangs:
                try:
                    new = self.journal.record_hang(hang) and key not in self._open_hangs
                except Exception:
                    self._journal_failed("journal write failed for a hang")
                    new = key not in self._open_hangs
                if new:
                    g = (hang.job, hang.group)
                    self.hangs_total[g] = self.hangs_total.get(g, 0) + 1
                self._gather_hang_evidence(hang)
                log.error("collective hang", extra={
                    "job": hang.job, "group": hang.group, "seq": hang.seq, "kind": hang.kind,
                    "culprits": [c.rank for c in hang.culprits], "reasons": [c.reason for c in hang.culprits],
                    "details": [c.detail for c in hang.culprits], "waiting": list(hang.waiting),
                    "stalled_s": round(now - hang.since, 1), "threshold_s": round(hang.threshold_s, 1),
                    "summary": hang.summary(),
                })
        for key in set(self.hangs) - set(found):
            log.info("collective hang resolved", extra={"job": key[0], "group": key[1], "seq": key[2]})
            try:
                self.journal.resolve_hang(key, now)
            except Exception:
                self._journal_failed("journal write failed for a hang")
        self.hangs = found

    # -- faults ---------------------------------------------------------------------------------

    def _names(self, state: ProcessState | None):  # noqa: ANN202
        """A tag -> name resolver for a process's records (its ring may already be closed)."""
        if state is None:
            return lambda tag: ""
        reader = self.readers.get(state.ring)
        if reader is not None:
            return reader.name
        try:
            reader = RingReader(os.path.join(self.rings_dir, state.ring), self.config.allowed_uids)
        except (rf.RingFormatError, OSError):
            return lambda tag: ""
        cache: dict[int, str] = {}
        for tag in set(state.last["tag"].tolist()) | set(state.last["aux"].tolist()):
            cache[tag] = reader.name(tag)
        reader.close()
        return lambda tag: cache.get(tag, "")

    def _state_for_pid(self, host: str, pid: int | None) -> ProcessState | None:
        if pid is None:
            return None
        found = [s for s in self.states.values() if s.identity.get("pid") == pid
                 and (not host or s.identity.get("host", "").replace("_", "") == host.replace("_", "")
                      or s.identity.get("host") == host)]
        return max(found, key=lambda s: s.created_ns) if found else None

    def _collect_faults(self) -> None:
        self.collector.offer(self.core_discovery.poll())
        self.collector.poll()
        if self.collector.grew:  # a dump is landing: make room under the cap now, not after its triage
            self.collector.grew = False
            self._retain()
        while True:
            try:
                res = self.collector.results.get_nowait()
            except Exception:
                break
            self.collector.taken(res.path)
            if res.transcript and not res.report.ok:
                self.gdb_rejected += 1
            state = self._state_for_pid(res.host, res.pid)
            if state is not None:
                state.crash_checked = state.dirty = True
                self._pending_crashes.pop(state.ring, None)
            rec = faults.from_core(res.report, res.path, state, self._names(state), self.config.base_dir,
                                   self.catalog, res.notes)
            rec.triage_seconds = res.seconds
            self.triage_seconds.append(res.seconds)
            self._journal_fault(rec)
            self._retain(rec.signature)
        now = time.monotonic()
        due = []
        for ring, deadline in list(self._pending_crashes.items()):
            state = self.states.get(ring)
            if state is None:
                del self._pending_crashes[ring]
                continue
            pid = state.identity.get("pid")
            if self.collector.pending_for(pid) or self.collector.in_flight:
                continue  # its GPU coredump is still being written or read
            if now < deadline or self._core_on_disk(pid):
                continue
            due.append(faults.from_crash(state, self._names(state), self.config.base_dir, self.catalog))
        # The strongest evidence first, so that a death it explains is linked to it in the same poll.
        for rec in sorted(due, key=faults.strength, reverse=True):
            ring = rec.dedupe_key.removeprefix("crash:")
            if self._may_be_explained_later(rec, now):
                continue  # a related process's record may still explain this death: wait for it
            del self._pending_crashes[ring]
            state = self.states[ring]
            state.crash_checked = state.dirty = True
            self._journal_fault(rec)
        while True:
            try:
                ev = self.nvml.events.get_nowait()
            except Exception:
                break
            self._on_xid(ev)
        if self.nvml.ok and now >= self._next_gpu_sample:
            self._next_gpu_sample = now + 2.0
            self.gpus = tuple(self.nvml.sample())

    def _hooked(self, host: str, pid: int) -> bool:
        """Whether ``pid`` on ``host`` is (or was) a hooked process the daemon knows: a serving parent,
        whose children count as siblings of one job (a shell's or a supervisor's do not)."""
        return pid > 1 and any(s.identity.get("pid") == pid and s.identity.get("host", "") == host
                               for s in self.states.values())

    def _core_on_disk(self, pid: int | None) -> bool:
        """Whether cores/ holds a dump of ``pid`` that file events have not brought yet: offered now."""
        try:
            names = {n for n in os.listdir(self.cores_dir) if is_core_name(n) and parse_core_name(n)[1] == pid}
        except OSError:
            return False
        names -= set(self.collector.seen)
        if names:
            self.collector.offer(names)
        return bool(names)

    def _may_be_explained_later(self, rec: faults.FaultRecord, now: float) -> bool:
        """True while a related process that died within the window has no record yet and may turn
        out stronger than ``rec``: its GPU coredump can still come, or its evidence is stronger."""
        window = self.config.consequence_window_s
        if faults.strength(rec) >= 3 or window <= 0:
            return False
        # Never longer than a related dump could take to come and be read: then it is recorded anyway.
        if time.time() > rec.died_at + window + self.config.crash_grace_s + self.config.gdb_timeout_s:
            return False
        siblings = self._hooked(rec.identity.get("host", ""), rec.identity.get("ppid") or -1)
        for ring, deadline in self._pending_crashes.items():
            other = self.states.get(ring)
            if other is None or other.ring == rec.dedupe_key.removeprefix("crash:"):
                continue
            if not (faults.related(rec.identity, other.identity, siblings)
                    and abs(other.ended_at - rec.died_at) <= window):
                continue
            if now < deadline or self.collector.pending_for(other.identity.get("pid")):
                return True
            probe = faults.from_crash(other, self._names(other), self.config.base_dir, self.catalog)
            if faults.strength(probe) > faults.strength(rec):
                return True
        return False

    def _journal_fault(self, rec: faults.FaultRecord) -> None:
        window = self.config.consequence_window_s
        self._causes.prune(time.time() - 2 * window)
        cause = self._causes.cause_of(rec, window, self._hooked)
        if cause is not None:
            faults.link_consequence(rec, cause)
        try:
            rec.id = self.journal.record_fault(rec)
        except Exception:
            self._journal_failed("journal write failed for a fault")
        if rec.id is None:
            return  # known already (a restarted daemon meeting the same dump)
        ident = rec.identity or {}
        if cause is not None:
            key = (cause.signature, rec.exception_class)
            self.consequence_counts[key] = self.consequence_counts.get(key, 0) + 1
            log.warning("fault consequence", extra={
                "fault_id": rec.id, "consequence_of": cause.id, "cause_signature": cause.signature,
                "exception": rec.exception, "pid": ident.get("pid"), "rank": ident.get("rank"),
                "seconds_from_cause": round(rec.died_at - cause.died_at, 2),
            })
            return
        info = faults.FaultInfo.of(rec)
        self._causes.add(info)
        self._fault_info.append(info)
        key = (rec.signature, rec.exception_class, rec.kernel_family, rec.known_issue["id"] if rec.known_issue else "",
               rec.kind)
        self.fault_counts[key] = self.fault_counts.get(key, 0) + 1
        log.error("fault", extra={
            "fault_id": rec.id, "signature": rec.signature, "source": rec.source, "exception": rec.exception,
            "kernel": rec.kernel, "top_frame": rec.top_frame, "pid": ident.get("pid"), "rank": ident.get("rank"),
            "known_issue": rec.known_issue["id"] if rec.known_issue else None, "evidence": rec.evidence,
            "core": rec.core_path, "triage_s": round(rec.triage_seconds, 2),
        })

    def _retain(self, signature: str | None = None) -> None:
        surplus = self.journal.surplus_cores(signature, self.config.cores_per_signature) if signature else []
        deleted = []
        for _fid, path in surplus:
            if not self._in_cores_dir(path):
                log.warning("retention skipped a core path outside the cores folder", extra={"path": path})
                continue
            try:
                os.unlink(path)
                deleted.append(path)
            except FileNotFoundError:
                deleted.append(path)
            except OSError:
                pass
        deleted += self.collector.enforce_retention(self.journal.cores_to_spare())
        if deleted:
            try:
                self.journal.mark_core_deleted(deleted)
            except Exception:
                self._journal_failed("journal write failed for deleted coredumps")
            log.info("coredumps deleted by retention", extra={"count": len(deleted), "signature": signature})

    def _in_cores_dir(self, path: str) -> bool:
        # Journal rows name the files to delete: only a core file directly in cores/ ever is.
        return (os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.cores_dir)
                and is_core_name(os.path.basename(path)))

    def _on_xid(self, ev) -> None:  # noqa: ANN001
        info = self.catalog.xid(ev.xid)
        procs = [s for s in self.states.values() if s.identity.get("pid") in ev.pids]
        try:
            self.journal.record_xid(ev.gpu, ev.xid, list(ev.pids), ev.at, ev.pods)
        except Exception:
            self._journal_failed("journal write failed for an XID")
        for ns, pod in ev.pods or (("", ""),):
            key = (ev.gpu, ev.xid, ns, pod)
            self.xid_counts[key] = self.xid_counts.get(key, 0) + 1
        log.error("gpu xid", extra={
            "gpu": ev.gpu, "uuid": ev.uuid, "xid": ev.xid, "xid_name": info.name, "severity": info.severity,
            "meaning": info.meaning, "action": info.action, "pids": list(ev.pids),
            "ranks": [s.identity.get("rank") for s in procs], "pods": [f"{ns}/{pod}" for ns, pod in ev.pods],
        })

    def _gather_hang_evidence(self, hang: Hang) -> None:
        """Stacks of every local member (py-spy) and GPU state (NVML), off the poll thread."""
        members = [s for s in self.states.values() if s.alive and hang.group in s.groups
                   and s.identity.get("job", "") == hang.job]
        pids = {int(s.identity["pid"]): s.identity.get("rank") for s in members if s.identity.get("pid")}

        def work() -> None:
            from sentinel.daemon.loop import stacks

            ev: dict = {"stacks": {}, "gpus": []}
            for pid, rank in pids.items():
                ev["stacks"][f"rank {rank} (pid {pid})"] = stacks.dump(pid)
            for g in self.nvml.sample():
                ev["gpus"].append({"gpu": g.gpu, "utilization": g.utilization, "memory_used": g.memory_used,
                                   "ranks": [pids[p] for p in g.pids if p in pids], "pids": list(g.pids)})
            self._hang_evidence.put((hang.key, ev))

        threading.Thread(target=work, name="sentinel-hang-evidence", daemon=True).start()

    def _store_hang_evidence(self) -> None:
        while True:
            try:
                key, ev = self._hang_evidence.get_nowait()
            except queue.Empty:
                return
            ev = {**self.hang_evidence.get(key, {}), **ev}  # keep Flight Recorder dumps read meanwhile
            self.hang_evidence[key] = ev
            try:
                self.journal.hang_evidence(key, ev)
            except Exception:
                self._journal_failed("journal write failed for hang evidence")
            log.warning("hang evidence", extra={"job": key[0], "group": key[1], "seq": key[2],
                                                "stacks": ev["stacks"], "gpus": ev["gpus"]})

    def _read_flight_recorder(self) -> None:
        """Attach Flight Recorder dumps (restricted unpickling, never pickle.load) to open hangs."""
        from sentinel.triage.readers import flight_recorder

        for name in self.fr_discovery.poll():
            path = os.path.join(self.fr_dir, name)
            try:
                mtime = os.lstat(path).st_mtime
            except OSError:
                continue
            if self.fr_seen.get(path) == mtime or time.time() - mtime < 1.0:
                continue  # read already, or still being written
            self.fr_seen[path] = mtime
            try:
                summary = flight_recorder.summarize(flight_recorder.loads(self._read_fr_file(path)))
            except Exception as exc:  # unsafe or malformed: refused, counted, never fatal
                self.fr_rejected += 1
                log.error("flight recorder dump refused", extra={"file": path, "error": str(exc)})
                continue
            log.info("flight recorder dump", extra={"file": path, "groups": summary["groups"]})
            for key in self.hangs:
                ev = self.hang_evidence.setdefault(key, {"stacks": {}, "gpus": []})
                ev.setdefault("flight_recorder", {})[name] = summary
                try:
                    self.journal.hang_evidence(key, ev)
                except Exception:
                    self._journal_failed("journal write failed for hang evidence")

    def _read_fr_file(self, path: str) -> bytes:
        """A dump's bytes: a regular file of an allowed owner, never through a symlink, never a FIFO."""
        from sentinel.triage.readers.flight_recorder import MAX_BYTES

        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise pickle.UnpicklingError("not a regular file")
            if self.config.allowed_uids is not None and st.st_uid not in self.config.allowed_uids:
                raise pickle.UnpicklingError(f"owned by uid {st.st_uid}, not an allowed owner")
            return f.read(MAX_BYTES + 1)

    def _publish(self) -> None:
        now = time.time()
        shown = now - self.config.dead_ttl_s  # a dead process's series end dead_ttl_s after its death
        while self._fault_info and self._fault_info[0].created_at < shown:
            self._fault_info.popleft()
        self.snapshot = Snapshot(
            processes=tuple(s.snapshot() for s in self.states.values() if s.alive or s.ended_at >= shown),
            recent_faults=tuple(self._fault_info),
            hangs=tuple(self.hangs.values()),
            hangs_total=dict(self.hangs_total),
            faults=dict(self.fault_counts),
            fault_consequences=dict(self.consequence_counts),
            xids=dict(self.xid_counts),
            gpus=self.gpus,
            coredump_bytes=self.collector.total_bytes(),
            triage_count=len(self.triage_seconds),
            triage_sum=sum(self.triage_seconds),
            fr_rejected=self.fr_rejected,
            gdb_rejected=self.gdb_rejected,
            rejected=dict(self.rejected),
            ingested=self.ingested,
            polls=self.polls,
            poll_seconds=self._last_poll_s,
            taken_at=now,
            dir_free_bytes=_free_bytes(self.config.base_dir),
            journal_errors=self.journal_errors,
            rings_deleted=self.rings_deleted,
            ring_delete_errors=self.ring_delete_errors,
        )

    def _journal_failed(self, message: str) -> None:
        """A journal write failed (a full disk, say): count it, log it, keep running. Process states
        stay dirty and are saved by a later persist."""
        self.journal_errors += 1
        log.exception(message)

    def persist(self) -> None:
        try:
            self.journal.save(list(self.states.values()))
        except Exception:
            self._journal_failed("journal write failed; will retry")

    # -- lifecycle ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set, persisting every ``persist_interval``."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception:
                log.exception("poll failed; continuing")
            if started >= self._next_persist:
                self.persist()
                self._next_persist = started + self.config.persist_interval
            stop.wait(max(0.0, self.config.poll_interval - (time.monotonic() - started)))

    def close(self) -> None:
        try:
            self.poll_once()
        finally:
            self.persist()
            self.discovery.close()
            self.core_discovery.close()
            self.fr_discovery.close()
            self.collector.close()
            self.nvml.close()
            for reader in self.readers.values():
                reader.close()
            self.readers.clear()
            self._to_close.put(None)  # the closer thread closes what is queued, then ends
            self.journal.close()
