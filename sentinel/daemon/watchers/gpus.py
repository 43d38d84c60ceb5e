"""The GPU watcher: XID events (NVML's, and the kernel log's through ``watchers.kernel_log``),
attributed to processes (and to pods in node mode), and a sample of each GPU's utilisation and
memory every two seconds. An XID both sources report is counted once."""

from __future__ import annotations

import logging
import time
from typing import Any

from sentinel.daemon.context import DaemonContext
from sentinel.daemon.nvml import GpuSample, NvmlMonitor, XidEvent
from sentinel.daemon.watchers.faults import FaultWatcher

__all__ = ["GpuWatcher"]

log = logging.getLogger("sentinel.daemon")
SAMPLE_INTERVAL_S = 2.0
SAME_XID_S = 5.0  # NVML and the kernel log report one XID this close together (seconds)


class GpuWatcher:
    """NVML, read on its own thread (``NvmlMonitor``); XIDs journaled and counted here."""

    def __init__(self, ctx: DaemonContext, faults: FaultWatcher | None = None) -> None:
        self.ctx = ctx
        self.faults = faults
        # Per (gpu, xid), the recorded events no event of the other source has been matched to yet:
        # each report of one source stands for one event of the other, never more.
        self._unmatched: dict[tuple[str, int], list[tuple[float, str]]] = {}
        attribute = None
        if ctx.config.nvml and ctx.config.pod_resources_socket:
            from sentinel.daemon.podresources import PodAttribution

            attribute = PodAttribution(ctx.config.pod_resources_socket).pods_for
        self.nvml = NvmlMonitor(ctx.config.nvml, attribute)
        self.nvml.start()
        self.gpus: tuple[GpuSample, ...] = ()
        self.xid_counts = ctx.journal.xid_counts()
        self._next_sample = 0.0

    def poll(self, now: float) -> None:
        while True:
            try:
                ev = self.nvml.events.get_nowait()
            except Exception:
                break
            self.record_xid(ev)
        mono = time.monotonic()
        if self.nvml.ok and mono >= self._next_sample:
            self._next_sample = mono + SAMPLE_INTERVAL_S
            self.gpus = tuple(self.nvml.sample())

    def view(self) -> dict[str, Any]:
        return {"xids": dict(self.xid_counts), "gpus": self.gpus}

    def close(self) -> None:
        self.nvml.close()

    def sample(self) -> list[GpuSample]:
        """Each GPU's state now (NVML; [] without it). Safe from any thread."""
        return self.nvml.sample()

    def record_xid(self, ev: XidEvent, source: str = "nvml", detail: str = "") -> None:
        """Journal, count and log one XID event (NVML's thread and the kernel-log watcher deliver them;
        tests may too), unless the other source reported it within SAME_XID_S; either way, the fault
        records of its pids get it as evidence."""
        info = self.ctx.catalog.xid(ev.xid)
        if self.faults is not None and ev.pids:
            self.faults.attach_xid(ev.xid, ev.pids, detail or info.name, ev.at)
        key = (ev.gpu, ev.xid)
        waiting = [(at, src) for at, src in self._unmatched.get(key, []) if ev.at - at <= SAME_XID_S]
        other = next((i for i, (_at, src) in enumerate(waiting) if src != source), None)
        if other is not None:  # the same event, seen by the other source
            del waiting[other]
            self._unmatched[key] = waiting
            return
        self._unmatched[key] = [*waiting, (ev.at, source)][-64:]
        if len(self._unmatched) > 4096:
            self._unmatched = {k: v for k, v in self._unmatched.items() if v and ev.at - v[-1][0] <= SAME_XID_S}
        procs = [s for s in self.ctx.states.values() if s.identity.get("pid") in ev.pids]
        try:
            self.ctx.journal.record_xid(ev.gpu, ev.xid, list(ev.pids), ev.at, ev.pods)
        except Exception:
            self.ctx.journal_failed("journal write failed for an XID")
        for ns, pod in ev.pods or (("", ""),):
            key = (ev.gpu, ev.xid, ns, pod)
            self.xid_counts[key] = self.xid_counts.get(key, 0) + 1
        log.error("gpu xid", extra={
            "gpu": ev.gpu, "uuid": ev.uuid, "xid": ev.xid, "xid_name": info.name, "severity": info.severity,
            "meaning": info.meaning, "action": info.action, "pids": list(ev.pids), "source": source, "detail": detail,
            "ranks": [s.identity.get("rank") for s in procs], "pods": [f"{ns}/{pod}" for ns, pod in ev.pods],
        })
