"""The sidecar daemon's loop: poll each watcher in turn, then publish one immutable snapshot.

One poll thread owns all mutable state (``DaemonContext`` and the watchers). After each poll it
publishes a ``Snapshot``, which the HTTP exporter thread reads without locks. The watchers run in
data-flow order: the rings first (what the processes said and who died), their logs, then what is
derived from them (hangs, Flight Recorder evidence for those hangs, fault records), then the GPUs
(the kernel log's XIDs, NVML's).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from sentinel.daemon.config import DaemonConfig
from sentinel.daemon.context import DaemonContext
from sentinel.daemon.journal import Journal
from sentinel.daemon.snapshot import Snapshot
from sentinel.daemon.state import ProcessState
from sentinel.daemon.watchers import Watcher
from sentinel.daemon.watchers.faults import FaultWatcher
from sentinel.daemon.watchers.flight_recorder import FlightRecorderWatcher
from sentinel.daemon.watchers.gpus import GpuWatcher
from sentinel.daemon.watchers.hangs import HangWatcher
from sentinel.daemon.watchers.kernel_log import KernelLogWatcher
from sentinel.daemon.watchers.logs import LogWatcher
from sentinel.daemon.watchers.rings import RingWatcher

__all__ = ["Daemon", "DaemonConfig"]

log = logging.getLogger("sentinel.daemon")


def _free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (-1: unknown)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


class Daemon:
    """The watchers of one SENTINEL_DIR, polled every ``config.poll_interval`` seconds.

    Raises OSError (the journal cannot be opened) or ``CatalogError`` (a bad catalog file).
    """

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.ctx = DaemonContext.open(config)
        self.rings = RingWatcher(self.ctx)
        self.faults = FaultWatcher(self.ctx, self.rings)
        self.logs = LogWatcher(self.ctx, self.rings, self.faults)
        self.gpus = GpuWatcher(self.ctx, self.faults)
        self.kernel_log = KernelLogWatcher(self.ctx, self.gpus)
        self.hangs = HangWatcher(self.ctx, self.gpus)
        self.flight_recorder = FlightRecorderWatcher(self.ctx, self.hangs)
        # The order they are polled in (data flow); adding a watcher is one line here.
        self.watchers: list[Watcher] = [self.rings, self.logs, self.hangs, self.flight_recorder, self.faults,
                                        self.kernel_log, self.gpus]
        self.polls = 0
        self._last_poll_s = 0.0
        self._next_persist = 0.0
        self.snapshot = Snapshot(taken_at=time.time())

    @property
    def states(self) -> dict[str, ProcessState]:
        """Every process known (live, and dead ones kept): ring file name -> state."""
        return self.ctx.states

    @property
    def journal(self) -> Journal:
        return self.ctx.journal

    def poll_once(self) -> None:
        """One pass over every watcher, then a new ``snapshot``."""
        t0 = time.perf_counter()
        for watcher in self.watchers:
            watcher.poll(time.time())
        self.polls += 1
        self._last_poll_s = time.perf_counter() - t0
        self._publish()

    def _publish(self) -> None:
        fields: dict[str, Any] = {}
        for watcher in self.watchers:
            fields.update(watcher.view())
        self.snapshot = Snapshot(
            **fields,
            polls=self.polls,
            poll_seconds=self._last_poll_s,
            taken_at=time.time(),
            dir_free_bytes=_free_bytes(self.config.base_dir),
            journal_errors=self.ctx.journal_errors,
        )

    def persist(self) -> None:
        """Save every changed process state to the journal (failures counted, retried later)."""
        self.ctx.persist()

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
        """A last poll and persist, then every watcher closed and the journal."""
        try:
            self.poll_once()
        finally:
            self.persist()
            for watcher in self.watchers:
                watcher.close()
            self.ctx.journal.close()
