"""The faults watcher: GPU coredumps in SENTINEL_DIR/cores/ and processes that died, turned into
fingerprinted fault records, linked to the fault they follow from, journaled, and kept within the
coredump retention.

One failure is one record, however many ways it is seen: a process's log line (the logs watcher), its
death, its GPU coredump and an XID naming its pid, within ``merge_window_s`` of each other, are
merged into the first record (``FaultRecord.absorb``), which alone is counted and paged."""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any

from sentinel.daemon.context import DaemonContext
from sentinel.daemon.coredumps import CoreCollector, is_core_name, parse_core_name
from sentinel.daemon.discovery import Discovery
from sentinel.daemon.watchers.rings import RingWatcher
from sentinel.triage import consequences, records
from sentinel_hooks import layout

__all__ = ["FaultWatcher", "MAX_FAULT_INFO"]

log = logging.getLogger("sentinel.daemon")
# sentinel_fault_info series at most (the newest faults of the last --dead-ttl): a storm of crashing
# processes must not become a storm of series.
MAX_FAULT_INFO = 1000


class FaultWatcher:
    """Fault records from GPU coredumps (cuda-gdb on a worker thread) and from deaths without one."""

    def __init__(self, ctx: DaemonContext, rings: RingWatcher) -> None:
        self.ctx = ctx
        self.rings = rings
        config = ctx.config
        self.cores_dir = layout.cores_dir(config.base_dir)
        self.collector = CoreCollector(self.cores_dir, config.cuda_gdb, config.gdb_timeout_s,
                                       max_bytes=config.cores_max_bytes, keep_per_signature=config.cores_per_signature,
                                       policy=ctx.fs_policy)
        self.discovery = Discovery(self.cores_dir, config.rescan_interval, config.use_events, is_core_name)
        self.fault_counts = ctx.journal.fault_counts()
        self.consequence_counts = ctx.journal.consequence_counts()
        # Faults of their own (not consequences): those that may still explain a related death
        # (consequences.is_consequence), and the newest MAX_FAULT_INFO of the last dead_ttl_s, exported as
        # sentinel_fault_info (what the fault alerts fire from).
        self._causes = consequences.CauseIndex()
        self._fault_info: collections.deque[consequences.FaultInfo] = collections.deque(maxlen=MAX_FAULT_INFO)
        since = time.time() - max(config.dead_ttl_s, 2 * config.consequence_window_s)
        for d in reversed(ctx.journal.faults(MAX_FAULT_INFO, since)):
            rec = records.FaultRecord.from_dict(d)
            if rec.consequence_of is None:
                info = consequences.FaultInfo.of(rec)
                self._causes.add(info)
                self._fault_info.append(info)
        # The records of the last merge window by process ((host, pid), or the log file of an
        # unattributed failure), and the XIDs of the last window that named pids.
        self._recent: dict[tuple, records.FaultRecord] = {}
        self._recent_xids: collections.deque[tuple[float, int, tuple[int, ...], str]] = collections.deque(maxlen=256)
        self.merged = 0  # evidence merged into an existing record instead of a record of its own
        self.triage_seconds: list[float] = []
        self.gdb_rejected = 0  # cuda-gdb transcripts with no exception or kernel in them
        for state in ctx.states.values():
            if state.exit == "died" and not state.crash_checked:
                self._recheck_crash(state)

    # -- the Watcher protocol -------------------------------------------------------------------

    def poll(self, now: float) -> None:
        self.collector.offer(self.discovery.poll())
        self.collector.poll()
        if self.collector.grew:  # a dump is landing: make room under the cap now, not after its triage
            self.collector.grew = False
            self._retain()
        self._take_triaged()
        self._record_deaths()

    def view(self) -> dict[str, Any]:
        shown = time.time() - self.ctx.config.dead_ttl_s
        while self._fault_info and self._fault_info[0].created_at < shown:
            self._fault_info.popleft()
        return {
            "recent_faults": tuple(self._fault_info),
            "faults": dict(self.fault_counts),
            "fault_consequences": dict(self.consequence_counts),
            "coredump_bytes": self.collector.total_bytes(),
            "triage_count": len(self.triage_seconds),
            "triage_sum": sum(self.triage_seconds),
            "gdb_rejected": self.gdb_rejected,
            "faults_merged": self.merged,
        }

    def close(self) -> None:
        self.discovery.close()
        self.collector.close()

    # -- records --------------------------------------------------------------------------------

    def _recheck_crash(self, state) -> None:  # noqa: ANN001
        """A process seen dying by a daemon that was killed before it wrote the crash record: wait
        out what is left of the grace, with the ring's last records back as the evidence."""
        left = state.ended_at + self.ctx.config.crash_grace_s - time.time()
        self.ctx.pending_crashes[state.ring] = time.monotonic() + max(0.0, left)
        self.rings.reload_last(state)

    def _take_triaged(self) -> None:
        """Fault records of the coredumps cuda-gdb has read since the last poll."""
        while True:
            try:
                res = self.collector.results.get_nowait()
            except Exception:
                break
            self.collector.taken(res.path)
            if res.transcript and not res.report.ok:
                self.gdb_rejected += 1
            state = self.ctx.state_for_pid(res.host, res.pid)
            if state is not None:
                state.crash_checked = state.dirty = True
                self.ctx.pending_crashes.pop(state.ring, None)
            rec = records.from_core(res.report, res.path, state, self.rings.names(state), self.ctx.config.base_dir,
                                    self.ctx.catalog, res.notes)
            rec.triage_seconds = res.seconds
            self.triage_seconds.append(res.seconds)
            self.journal_fault(rec)
            self._retain(rec.signature)

    def _record_deaths(self) -> None:
        """Fault records of processes that died without a coredump, once their grace has passed."""
        now = time.monotonic()
        pending = self.ctx.pending_crashes
        due = []
        for ring, deadline in list(pending.items()):
            state = self.ctx.states.get(ring)
            if state is None:
                del pending[ring]
                continue
            pid = state.identity.get("pid")
            if self.collector.pending_for(pid) or self.collector.in_flight:
                continue  # its GPU coredump is still being written or read
            if now < deadline or self._core_on_disk(pid):
                continue
            due.append(records.from_crash(state, self.rings.names(state), self.ctx.config.base_dir, self.ctx.catalog))
        # The strongest evidence first, so that a death it explains is linked to it in the same poll.
        for rec in sorted(due, key=consequences.strength, reverse=True):
            ring = rec.dedupe_key.removeprefix("crash:")
            if self._may_be_explained_later(rec, now):
                continue  # a related process's record may still explain this death: wait for it
            del pending[ring]
            state = self.ctx.states[ring]
            state.crash_checked = state.dirty = True
            self.journal_fault(rec)

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

    def _may_be_explained_later(self, rec: records.FaultRecord, now: float) -> bool:
        """True while a related process that died within the window has no record yet and may turn
        out stronger than ``rec``: its GPU coredump can still come, or its evidence is stronger."""
        config = self.ctx.config
        window = config.consequence_window_s
        if consequences.strength(rec) >= 3 or window <= 0:
            return False
        # Never longer than a related dump could take to come and be read: then it is recorded anyway.
        if time.time() > rec.died_at + window + config.crash_grace_s + config.gdb_timeout_s:
            return False
        siblings = self.ctx.hooked(rec.identity.get("host", ""), rec.identity.get("ppid") or -1)
        for ring, deadline in self.ctx.pending_crashes.items():
            other = self.ctx.states.get(ring)
            if other is None or other.ring == rec.dedupe_key.removeprefix("crash:"):
                continue
            if not (consequences.related(rec.identity, other.identity, siblings)
                    and abs(other.ended_at - rec.died_at) <= window):
                continue
            if now < deadline or self.collector.pending_for(other.identity.get("pid")):
                return True
            probe = records.from_crash(other, self.rings.names(other), config.base_dir, self.ctx.catalog)
            if consequences.strength(probe) > consequences.strength(rec):
                return True
        return False

    @property
    def merge_window_s(self) -> float:
        """How far apart two sightings of one process's failure may be: a log line comes first, its
        GPU coredump up to crash_grace_s + gdb_timeout_s later."""
        c = self.ctx.config
        return max(c.consequence_window_s, c.crash_grace_s + c.gdb_timeout_s + 5.0)

    @staticmethod
    def _key(rec: records.FaultRecord) -> tuple:
        """One process incarnation: its ring (pids repeat: a restarted container's server often has
        its predecessor's); a pid where no ring is known; for a log line no process could be named,
        its pod (the death or coredump of a process of that pod is then taken as the same failure), or
        its file."""
        ident = rec.identity or {}
        if rec.ring:
            return ("ring", rec.ring)
        if ident.get("pid") is not None:
            return ("pid", ident.get("host", ""), ident.get("namespace", ""), ident.get("pod", ""), ident["pid"])
        if rec.source == "log" and ident.get("pod"):
            return ("pod", ident.get("namespace", ""), ident["pod"])
        if rec.source == "log":
            return ("file", rec.dedupe_key.split(":")[1] if ":" in rec.dedupe_key else rec.dedupe_key)
        return ("key", rec.dedupe_key)

    def attach_xid(self, xid: int, pids: tuple[int, ...], detail: str, at: float) -> None:
        """An XID that named ``pids`` (the kernel log's pid=, NVML's compute processes): evidence
        ``xid_<N>`` for their fault records, now and for those made within the merge window."""
        self._recent_xids.append((at, xid, pids, detail))
        self._recent = {k: r for k, r in self._recent.items() if at - r.created_at <= self.merge_window_s}
        for rec in self._recent.values():
            if rec.identity.get("pid") in pids and f"xid_{xid}" not in rec.evidence and rec.id is not None:
                self._add_xid(rec, xid, detail)
                self._update(rec)

    def _add_xid(self, rec: records.FaultRecord, xid: int, detail: str) -> None:
        rec.evidence = sorted(set(rec.evidence) | {f"xid_{xid}"})
        rec.notes.append(f"Xid {xid}: {detail}"[:300])
        rec.seen_as.append("xid")
        match = self.ctx.catalog.match(rec.exception_class, rec.kernel_family, set(rec.evidence), rec.text())
        if match is not None:
            rec.known_issue = match.as_dict()

    def _update(self, rec: records.FaultRecord) -> None:
        try:
            self.ctx.journal.update_fault(rec)
        except Exception:
            self.ctx.journal_failed("journal write failed for a fault's merged evidence")

    def journal_fault(self, rec: records.FaultRecord) -> None:
        """Journal, count, export and log a fault record, or merge it into the record of the same
        failure seen another way in the last ``merge_window_s`` (journaled again, not counted again)."""
        now = time.time()
        window = self.merge_window_s
        self._recent = {k: r for k, r in self._recent.items() if now - r.created_at <= window}
        pid = (rec.identity or {}).get("pid")
        for at, xid, pids, detail in self._recent_xids:
            if pid in pids and now - at <= window and f"xid_{xid}" not in rec.evidence:
                self._add_xid(rec, xid, detail)
        key = self._key(rec)
        first = self._recent.get(key)
        ident = rec.identity or {}
        if first is None and ident.get("pod"):  # a log line of this pod that named no hooked process
            pod = (ident.get("namespace", ""), ident["pod"])
            first = next((r for r in self._recent.values() if r.source == "log" and not r.ring and r is not rec
                          and ((r.identity or {}).get("namespace", ""), (r.identity or {}).get("pod")) == pod), None)
        if (first is not None and first.id is not None and first.dedupe_key != rec.dedupe_key
                and first.compatible(rec)):
            first.absorb(rec, self.ctx.catalog)
            self.merged += 1
            self._update(first)
            try:  # a restarted daemon meeting this evidence again (a kept coredump) knows it is merged
                self.ctx.journal.alias_fault(rec.dedupe_key, first.id)
            except Exception:
                self.ctx.journal_failed("journal write failed for a merged fault's key")
            log.info("fault evidence merged", extra={"fault_id": first.id, "source": rec.source,
                                                     "exception": rec.exception, "signature": rec.signature})
            return
        self._record(rec)
        if rec.id is not None:
            self._recent[key] = rec

    def _record(self, rec: records.FaultRecord) -> None:
        window = self.ctx.config.consequence_window_s
        self._causes.prune(time.time() - 2 * window)
        cause = self._causes.cause_of(rec, window, self.ctx.hooked)
        if cause is not None:
            consequences.link_consequence(rec, cause)
        try:
            rec.id = self.ctx.journal.record_fault(rec)
        except Exception:
            self.ctx.journal_failed("journal write failed for a fault")
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
        info = consequences.FaultInfo.of(rec)
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

    # -- retention ------------------------------------------------------------------------------

    def _retain(self, signature: str | None = None) -> None:
        journal = self.ctx.journal
        surplus = journal.surplus_cores(signature, self.ctx.config.cores_per_signature) if signature else []
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
        deleted += self.collector.enforce_retention(journal.cores_to_spare())
        if deleted:
            try:
                journal.mark_core_deleted(deleted)
            except Exception:
                self.ctx.journal_failed("journal write failed for deleted coredumps")
            log.info("coredumps deleted by retention", extra={"count": len(deleted), "signature": signature})

    def _in_cores_dir(self, path: str) -> bool:
        # Journal rows name the files to delete: only a core file directly in cores/ ever is.
        return (os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.cores_dir)
                and is_core_name(os.path.basename(path)))
