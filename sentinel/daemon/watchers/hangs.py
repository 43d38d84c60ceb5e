"""The hangs watcher: collective hangs named from the processes' progress (``triage.hangs``),
journaled once, with the members' Python stacks (py-spy) and GPU state gathered off the poll thread."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from sentinel.daemon.context import DaemonContext
from sentinel.daemon.watchers.gpus import GpuWatcher
from sentinel.triage.hangs import Hang, HangDetector

__all__ = ["HangWatcher"]

log = logging.getLogger("sentinel.daemon")
HangKey = tuple[str, str, int]  # (job, process group, sequence number)


class HangWatcher:
    """Open hangs (``open``), their totals per (job, group), and the evidence attached to each."""

    def __init__(self, ctx: DaemonContext, gpus: GpuWatcher) -> None:
        self.ctx = ctx
        self.gpus = gpus
        self.detector = HangDetector(ctx.config.hang)
        self.open: dict[HangKey, Hang] = {}
        self._open_before = ctx.journal.open_hangs()  # hangs open before a restart: not new again
        self.totals = ctx.journal.hang_counts()
        self.evidence: dict[HangKey, dict] = {}
        self._gathered: queue.SimpleQueue = queue.SimpleQueue()

    # -- the Watcher protocol -------------------------------------------------------------------

    def poll(self, now: float) -> None:
        found = {h.key: h for h in self.detector.evaluate(self.ctx.states.values(), now)}
        for key, hang in found.items():
            if key not in self.open:
                self._opened(key, hang, now)
            elif _incident(hang) != _incident(self.open[key]):
                # another group's hang joined (or left) its incident: the journal's row says so too
                try:
                    self.ctx.journal.record_hang(hang)
                except Exception:
                    self.ctx.journal_failed("journal write failed for a hang")
        for key in set(self.open) - set(found):
            log.info("collective hang resolved", extra={"job": key[0], "group": key[1], "seq": key[2]})
            try:
                self.ctx.journal.resolve_hang(key, now)
            except Exception:
                self.ctx.journal_failed("journal write failed for a hang")
        self.open = found
        self.store_gathered()

    def view(self) -> dict[str, Any]:
        return {"hangs": tuple(self.open.values()), "hangs_total": dict(self.totals)}

    def close(self) -> None:
        pass  # evidence threads are daemon threads; what they gather after this is dropped

    # -- evidence -------------------------------------------------------------------------------

    def attach(self, name: str, what: str, value: Any) -> None:
        """Add one piece of evidence (``what``: its kind, e.g. "flight_recorder"; ``name``: which one)
        to every open hang, and journal it."""
        for key in self.open:
            ev = self.evidence.setdefault(key, {"stacks": {}, "gpus": []})
            ev.setdefault(what, {})[name] = value
            try:
                self.ctx.journal.hang_evidence(key, ev)
            except Exception:
                self.ctx.journal_failed("journal write failed for hang evidence")

    def store_gathered(self) -> None:
        """Journal the stacks and GPU state the evidence threads have gathered since the last poll."""
        while True:
            try:
                key, ev = self._gathered.get_nowait()
            except queue.Empty:
                return
            ev = {**self.evidence.get(key, {}), **ev}  # keep Flight Recorder dumps read meanwhile
            self.evidence[key] = ev
            try:
                self.ctx.journal.hang_evidence(key, ev)
            except Exception:
                self.ctx.journal_failed("journal write failed for hang evidence")
            log.warning("hang evidence", extra={"job": key[0], "group": key[1], "seq": key[2],
                                                "stacks": ev["stacks"], "gpus": ev["gpus"]})

    def _opened(self, key: HangKey, hang: Hang, now: float) -> None:
        try:
            new = self.ctx.journal.record_hang(hang) and key not in self._open_before
        except Exception:
            self.ctx.journal_failed("journal write failed for a hang")
            new = key not in self._open_before
        if new:
            g = (hang.job, hang.group)
            self.totals[g] = self.totals.get(g, 0) + 1
        self._gather(hang)
        log.error("collective hang", extra={
            "job": hang.job, "group": hang.group, "seq": hang.seq, "kind": hang.kind,
            "culprits": [c.rank for c in hang.culprits], "reasons": [c.reason for c in hang.culprits],
            "details": [c.detail for c in hang.culprits], "waiting": list(hang.waiting),
            "stalled_s": round(now - hang.since, 1), "threshold_s": round(hang.threshold_s, 1),
            "summary": hang.summary(),
        })

    def _gather(self, hang: Hang) -> None:
        """Stacks of every local member (py-spy) and GPU state (NVML), off the poll thread."""
        members = [s for s in self.ctx.states.values() if s.alive and hang.group in s.groups
                   and s.identity.get("job", "") == hang.job]
        pids = {int(s.identity["pid"]): s.identity.get("rank") for s in members if s.identity.get("pid")}

        def work() -> None:
            from sentinel.daemon import stacks

            ev: dict = {"stacks": {}, "gpus": []}
            for pid, rank in pids.items():
                ev["stacks"][f"rank {rank} (pid {pid})"] = stacks.dump(pid)
            for g in self.gpus.sample():
                ev["gpus"].append({"gpu": g.gpu, "utilization": g.utilization, "memory_used": g.memory_used,
                                   "ranks": [pids[p] for p in g.pids if p in pids], "pids": list(g.pids)})
            self._gathered.put((hang.key, ev))

        threading.Thread(target=work, name="sentinel-hang-evidence", daemon=True).start()


def _incident(hang: Hang) -> tuple:
    """What ties a hang into its incident (culprits' reasons, root, victims): a change is journaled."""
    return (tuple((c.rank, c.reason) for c in hang.culprits), hang.caused_by, hang.victims)
