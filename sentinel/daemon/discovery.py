"""Finding files as they appear (rings, coredumps): watchdog file-system events, plus a periodic rescan.

Events make discovery prompt; the rescan is the safety net for missed events (an overflowed
inotify queue, a filesystem without events, a daemon started after the rings).
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable

from sentinel_hooks import ringformat as rf

__all__ = ["is_ring_name", "Discovery"]

log = logging.getLogger("sentinel.discovery")


def is_ring_name(name: str) -> bool:
    """Whether ``name`` is a ring file (``*.ring``) ready to read: dot files (a writer's ``.name.tmp``
    before its rename) are not."""
    # Writers create ".name.tmp" and rename when the header is complete: skip dot files.
    return name.endswith(rf.RING_SUFFIX) and not name.startswith(".")


class Discovery:
    """New names in one folder that pass ``predicate``: from watchdog file events where watchdog is
    installed and works (else logged once), plus a full rescan every ``rescan_interval`` seconds
    (monotonic clock). The constructor never raises; a missing folder reads as empty."""

    def __init__(self, rings_dir: str, rescan_interval: float = 5.0, use_events: bool = True,
                 predicate: Callable[[str], bool] = is_ring_name) -> None:
        self.rings_dir = rings_dir
        self.predicate = predicate
        self.rescan_interval = rescan_interval
        self._events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._next_rescan = 0.0
        self._observer = None
        if use_events:
            self._start_observer()

    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.warning("watchdog is not installed; discovering rings by rescans only")
            return
        events = self._events

        class Handler(FileSystemEventHandler):
            def on_created(self, event) -> None:
                if not event.is_directory:
                    events.put(os.fsdecode(event.src_path))

            def on_moved(self, event) -> None:
                if not event.is_directory:
                    events.put(os.fsdecode(event.dest_path))

        try:
            observer = Observer()
            observer.schedule(Handler(), self.rings_dir, recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except Exception as exc:  # inotify limits, odd filesystems: the rescan still works
            log.warning("file events unavailable, discovering rings by rescans only", extra={"error": str(exc)})

    def poll(self, now: float | None = None) -> set[str]:
        """Ring names seen since the last call (by event), plus all present ones on a rescan."""
        names: set[str] = set()
        while True:
            try:
                path = self._events.get_nowait()
            except queue.Empty:
                break
            name = os.path.basename(path)
            if os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.rings_dir) and self.predicate(name):
                names.add(name)
        now = time.monotonic() if now is None else now
        if now >= self._next_rescan:
            self._next_rescan = now + self.rescan_interval
            try:
                with os.scandir(self.rings_dir) as it:
                    names.update(e.name for e in it if self.predicate(e.name))
            except FileNotFoundError:
                pass
        return names

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
