"""What the daemon's watchers share: the settings, the journal, the catalog and the process table.

Everything here is owned by the poll thread; watchers read and update it only from their ``poll``.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass, field

from sentinel.daemon.config import DaemonConfig
from sentinel.daemon.journal import Journal
from sentinel.daemon.state import ProcessState
from sentinel.triage import catalog as catalog_mod
from sentinel_hooks import layout
from sentinel_hooks.writer import FsPolicy

__all__ = ["DaemonContext"]

log = logging.getLogger("sentinel.daemon")


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


@dataclass
class DaemonContext:
    """The state every watcher may use.

    ``states`` maps a ring's file name to its process; ``pending_crashes`` maps the ring of a process
    that died (not exited) to the ``time.monotonic()`` deadline for its GPU coredump to show up.
    """

    config: DaemonConfig
    fs_policy: FsPolicy
    journal: Journal
    catalog: catalog_mod.Catalog
    states: dict[str, ProcessState] = field(default_factory=dict)
    pending_crashes: dict[str, float] = field(default_factory=dict)
    journal_errors: int = 0  # journal writes that failed (a full disk): exported, retried

    @classmethod
    def open(cls, config: DaemonConfig) -> DaemonContext:
        """Open the journal under ``config.base_dir`` and load the catalog (built-in, DIR/catalog.toml,
        ``config.catalogs``). Raises OSError (journal) or CatalogError (a bad catalog file)."""
        policy = FsPolicy.for_group(config.group)
        policy.make_dirs(config.base_dir)
        journal = Journal(layout.journal_path(config.base_dir), policy)
        user_catalog = layout.catalog_path(config.base_dir)
        catalog = catalog_mod.load(([user_catalog] if _own_regular_file(user_catalog) else []) + config.catalogs)
        ctx = cls(config, policy, journal, catalog)
        for state in journal.load():
            ctx.states[state.ring] = state
        if ctx.states:
            resumed = sum(1 for s in ctx.states.values() if s.alive)
            log.info("journal loaded", extra={"processes": len(ctx.states), "resuming": resumed})
        return ctx

    def journal_failed(self, message: str) -> None:
        """A journal write failed (a full disk, say): count it, log it, keep running. Process states
        stay dirty and are saved by a later persist."""
        self.journal_errors += 1
        log.exception(message)

    def end(self, state: ProcessState, how: str) -> None:
        """Mark a process ended: ``how`` is "exited", "died" (its fault record is due) or "unknown"."""
        if how == "died" and not state.crash_checked:
            self.pending_crashes[state.ring] = time.monotonic() + self.config.crash_grace_s
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

    def state_for_pid(self, host: str, pid: int | None) -> ProcessState | None:
        """The newest process ``pid`` on ``host`` ("" matches any host; "_" and "-" compare equal, as
        in coredump file names)."""
        if pid is None:
            return None
        found = [s for s in self.states.values() if s.identity.get("pid") == pid
                 and (not host or s.identity.get("host", "").replace("_", "") == host.replace("_", "")
                      or s.identity.get("host") == host)]
        return max(found, key=lambda s: s.created_ns) if found else None

    def hooked(self, host: str, pid: int) -> bool:
        """Whether ``pid`` on ``host`` is (or was) a hooked process the daemon knows: a serving parent,
        whose children count as siblings of one job (a shell's or a supervisor's do not)."""
        return pid > 1 and any(s.identity.get("pid") == pid and s.identity.get("host", "") == host
                               for s in self.states.values())

    def persist(self) -> None:
        """Save every changed process state; a failure is counted and retried at the next persist."""
        try:
            self.journal.save(list(self.states.values()))
        except Exception:
            self.journal_failed("journal write failed; will retry")
