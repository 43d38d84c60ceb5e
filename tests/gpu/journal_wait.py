"""Polling a daemon until its journal holds a fault record (the GPU fault tests)."""

from __future__ import annotations

import time
from typing import Any


def first_fault(daemon: Any, source: str = "coredump", timeout_s: float = 240.0) -> dict | None:
    """Poll ``daemon`` (a sentinel.daemon.loop.Daemon) until its journal has a fault record from
    ``source``; that record, or None after ``timeout_s`` seconds (a hang guard, not a figure)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        daemon.poll_once()
        rows = [r for r in daemon.journal.faults() if r["source"] == source]
        if rows:
            return rows[0]
        time.sleep(0.2)
    return None
