"""The rings watcher: discover the hooked processes' ring files, tail them into per-process state,
notice deaths, and forget dead processes once their series have expired."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from sentinel.daemon.context import DaemonContext
from sentinel.daemon.discovery import Discovery
from sentinel.daemon.ringreader import RingReader
from sentinel.daemon.state import LAST_RECORDS, ProcessState
from sentinel_hooks import layout
from sentinel_hooks import ringformat as rf

__all__ = ["RingWatcher"]

log = logging.getLogger("sentinel.daemon")
VIOLATION_LOG_S = 10.0
LAST_RECORDS_ON_RESUME = 4096  # re-read (not re-counted) after a restart, to rebuild context
CLOSE_BACKLOG = 256  # rings queued for the closer thread at most
# Time a poll spends opening new rings at most: a burst of files (thousands of short-lived
# processes) is worked through over several polls and never stalls the tailing of known ones.
ATTACH_BUDGET_S = 0.1


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


class RingWatcher:
    """SENTINEL_DIR/rings/: one ``RingReader`` per live process, records into ``ctx.states``."""

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        config = ctx.config
        self.rings_dir = layout.rings_dir(config.base_dir)
        ctx.fs_policy.make_dirs(self.rings_dir)
        self.readers: dict[str, RingReader] = {}
        self.rejected: dict[str, int] = {}  # reason -> rings refused
        self._rejected_files: set[str] = set()
        self.ingested = 0
        self._violation_logged: dict[tuple[str, str], float] = {}
        self._to_attach: dict[str, None] = {}  # rings found, not opened yet, in the order found
        self._forgotten: set[str] = set()  # rings of forgotten processes that could not be deleted
        self.rings_deleted = 0
        self.ring_delete_errors = 0
        self.discovery = Discovery(self.rings_dir, config.rescan_interval, config.use_events)
        # The last close of a deleted ring frees its blocks, milliseconds each on a journaling
        # filesystem: rings are closed off the poll thread, so a burst of exits never stalls polling.
        self._to_close: queue.SimpleQueue[RingReader | None] = queue.SimpleQueue()
        threading.Thread(target=self._close_rings, name="sentinel-ring-close", daemon=True).start()

    # -- the Watcher protocol -------------------------------------------------------------------

    def poll(self, now: float) -> None:
        t0 = time.perf_counter()
        states = self.ctx.states
        for name in self.discovery.poll():  # a rescan lists the known ones too: queue only the new
            state = states.get(name)
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

    def view(self) -> dict[str, Any]:
        shown = time.time() - self.ctx.config.dead_ttl_s  # a dead process's series end dead_ttl_s after its death
        return {
            "processes": tuple(s.snapshot() for s in self.ctx.states.values() if s.alive or s.ended_at >= shown),
            "rejected": dict(self.rejected),
            "ingested": self.ingested,
            "rings_deleted": self.rings_deleted,
            "ring_delete_errors": self.ring_delete_errors,
        }

    def close(self) -> None:
        self.discovery.close()
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()
        self._to_close.put(None)  # the closer thread closes what is queued, then ends

    # -- what other watchers read ---------------------------------------------------------------

    def names(self, state: ProcessState | None) -> Callable[[int], str]:
        """A tag -> name resolver for a process's records (its ring may already be closed)."""
        if state is None:
            return lambda tag: ""
        reader = self.readers.get(state.ring)
        if reader is not None:
            return reader.name
        try:
            reader = RingReader(os.path.join(self.rings_dir, state.ring), self.ctx.config.allowed_uids)
        except (rf.RingFormatError, OSError):
            return lambda tag: ""
        cache: dict[int, str] = {}
        for tag in set(state.last["tag"].tolist()) | set(state.last["aux"].tolist()):
            cache[tag] = reader.name(tag)
        reader.close()
        return lambda tag: cache.get(tag, "")

    def reload_last(self, state: ProcessState) -> None:
        """Read a dead process's last records back from its ring (after a daemon restart), so that
        its fault record still has them as evidence. A ring that is gone leaves them empty."""
        try:
            reader = RingReader(os.path.join(self.rings_dir, state.ring), self.ctx.config.allowed_uids)
        except (rf.RingFormatError, OSError):
            return
        try:
            state.last = reader.recent(state.last_seq, LAST_RECORDS).copy()
        finally:
            reader.close()

    # -- attaching and tailing ------------------------------------------------------------------

    def _attach(self, name: str) -> None:
        state = self.ctx.states.get(name)
        if (name in self.readers or name in self._rejected_files or name in self._forgotten
                or (state is not None and not state.alive)):
            return
        path = os.path.join(self.rings_dir, name)
        try:
            reader = RingReader(path, self.ctx.config.allowed_uids, start_after=state.last_seq if state else 0)
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
            self.ctx.states[name] = state
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

    def _tail(self, name: str, reader: RingReader) -> None:
        state = self.ctx.states[name]
        try:
            alive = reader.writer_alive()
            header = reader.refresh_header()
            result = reader.tail(writer_alive=alive)
        except (rf.RingFormatError, OSError, ValueError) as exc:
            # The file changed under us (truncated, overwritten): keep what we had, stop reading.
            self._close_ring(self.readers.pop(name))
            self._reject(name, getattr(exc, "reason", "unreadable"), str(exc))
            self.ctx.end(state, "unknown")
            return
        state.apply_header(header)
        if len(result.records):
            state.ingest(result.records, reader.name)
            self.ingested += len(result.records)
            if state.new_violations:
                self._log_violations(state, reader)
        state.apply_device_words(reader.device_words, reader.name)
        if result.overwritten or result.torn:
            state.overwritten += result.overwritten
            state.torn += result.torn
            state.dirty = True
        state.last_seq = reader.last_seq
        if not alive:
            # What the GPU published but the drain never reported (a fault killed the context first)
            if state.settle_probe_words(reader.name):
                self._log_violations(state, reader)
            self._close_ring(self.readers.pop(name))
            self.ctx.end(state, "exited" if header["exit_ns"] else "died")

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
        for v in state.new_violations:
            key = (state.ring, v.check)
            if now - self._violation_logged.get(key, -1e9) < VIOLATION_LOG_S:
                continue
            self._violation_logged[key] = now
            log.warning("invariant violation", extra={
                "check": v.check, "site": v.site or reader.name(v.tag), "pid": state.identity.get("pid"),
                "rank": state.identity.get("rank"), "count": v.count,
                # -1: not known (a length from the GPU path, an entry past a row's prefix)
                "value": None if v.value == -1 and v.check in ("seqlens_invalid", "page_table_trailing_oob") else v.value,
                "limit": v.limit, "aux": v.detail, "step": v.step,  # the step of the violating call, not this poll's
            })
        state.new_violations.clear()

    # -- ends and forgetting --------------------------------------------------------------------

    def _settle_missing(self) -> None:
        # Processes the journal says were running whose ring is gone: we cannot know how they ended.
        states = self.ctx.states
        for state in states.values():
            if state.alive and state.ring not in self.readers:
                if not os.path.exists(os.path.join(self.rings_dir, state.ring)):
                    self.ctx.end(state, "unknown")
        dead = [s for s in states.values() if not s.alive]
        expired = time.time() - self.ctx.config.dead_ttl_s
        dead.sort(key=lambda s: s.ended_at)
        surplus = len(dead) - self.ctx.config.keep_dead
        for i, s in enumerate(dead):
            if (i < surplus or s.ended_at < expired) and not s.dirty and s.ring not in self.ctx.pending_crashes:
                self._forget(s)

    def _forget(self, state: ProcessState) -> None:
        """A dead process, its series expired and its evidence journaled: drop it from memory, and
        delete its ring and faulthandler dump (4 MiB and more each, kept nowhere else but no longer
        needed). The journal keeps its row and its fault record. A ring whose writer still holds its
        lock (a process ended as "unknown" that lives on) is kept, and so is a dump file that a live
        process with the same pid may be using now."""
        states = self.ctx.states
        ring = os.path.join(self.rings_dir, state.ring)
        if _writer_holds_lock(ring):
            self._forgotten.add(state.ring)  # a writer lives: not ours to delete, nor to attach again
            del states[state.ring]
            return
        del states[state.ring]
        paths = [ring]
        pid, host = state.identity.get("pid"), state.identity.get("host", "")
        reused = any(s.alive and s.identity.get("pid") == pid and s.identity.get("host", "") == host
                     for s in states.values())
        if pid is not None and not reused:
            paths.append(layout.faulthandler_path(self.ctx.config.base_dir, host, pid))
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
