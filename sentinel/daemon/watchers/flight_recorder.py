"""The Flight Recorder watcher: PyTorch Flight Recorder dumps in SENTINEL_DIR/fr/, read with the
restricted unpickler (never ``pickle.load``) and attached to the open hangs."""

from __future__ import annotations

import logging
import os
import pickle
import stat
import time
from typing import Any

from sentinel.daemon.context import DaemonContext
from sentinel.daemon.discovery import Discovery
from sentinel.daemon.watchers.hangs import HangWatcher
from sentinel.triage.readers import flight_recorder
from sentinel_hooks import layout

__all__ = ["FlightRecorderWatcher"]

log = logging.getLogger("sentinel.daemon")
SETTLE_S = 1.0  # a dump modified this recently may still be being written


class FlightRecorderWatcher:
    """SENTINEL_DIR/fr/: each dump read once per modification, its summary attached to open hangs."""

    def __init__(self, ctx: DaemonContext, hangs: HangWatcher) -> None:
        self.ctx = ctx
        self.hangs = hangs
        self.fr_dir = layout.fr_dir(ctx.config.base_dir)
        ctx.fs_policy.make_dirs(self.fr_dir)  # watched for file events: it must exist (dumps land there later)
        self.discovery = Discovery(self.fr_dir, ctx.config.rescan_interval, ctx.config.use_events,
                                   lambda n: not n.startswith("."))
        self.seen: dict[str, float] = {}  # dump path -> mtime read
        self.rejected = 0

    def poll(self, now: float) -> None:
        for name in self.discovery.poll():
            path = os.path.join(self.fr_dir, name)
            try:
                mtime = os.lstat(path).st_mtime
            except OSError:
                continue
            if self.seen.get(path) == mtime or time.time() - mtime < SETTLE_S:
                continue  # read already, or still being written
            self.seen[path] = mtime
            try:
                summary = flight_recorder.summarize(flight_recorder.loads(self._read(path)))
            except Exception as exc:  # unsafe or malformed: refused, counted, never fatal
                self.rejected += 1
                log.error("flight recorder dump refused", extra={"file": path, "error": str(exc)})
                continue
            log.info("flight recorder dump", extra={"file": path, "groups": summary["groups"]})
            self.hangs.attach(name, "flight_recorder", summary)

    def view(self) -> dict[str, Any]:
        return {"fr_rejected": self.rejected}

    def close(self) -> None:
        self.discovery.close()

    def _read(self, path: str) -> bytes:
        """A dump's bytes: a regular file of an allowed owner, never through a symlink, never a FIFO."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise pickle.UnpicklingError("not a regular file")
            allowed = self.ctx.config.allowed_uids
            if allowed is not None and st.st_uid not in allowed:
                raise pickle.UnpicklingError(f"owned by uid {st.st_uid}, not an allowed owner")
            return f.read(flight_recorder.MAX_BYTES + 1)
