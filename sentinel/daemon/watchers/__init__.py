"""The daemon's evidence sources, one module each, all with the same three methods.

A watcher is built with the shared ``DaemonContext`` (and the watchers it reads from), then polled
by the daemon's one poll thread. Adding a source: write its module here, then add one line to
``sentinel.daemon.loop.Daemon.__init__``'s list.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Watcher"]


class Watcher(Protocol):
    """One evidence source (the rings, GPU coredumps, NVML, Flight Recorder dumps, hang analysis)."""

    def poll(self, now: float) -> None:
        """Read what is new, update the shared state, journal what must survive. ``now``: time.time()
        at the start of this watcher's turn. Must not block for long: slow work goes to a thread."""

    def view(self) -> dict[str, Any]:
        """The ``Snapshot`` fields this watcher owns, as keyword arguments: immutable values only."""

    def close(self) -> None:
        """Stop threads and file watches, release files."""
