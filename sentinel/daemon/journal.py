"""The daemon's durable memory: SQLite in WAL mode under SENTINEL_DIR.

It keeps what must outlive a daemon restart: each process's last known state, its counters and
how far its ring was read, so a restarted daemon resumes where it was and its counters stay
monotonic. State and read position are written in one transaction, so they always agree.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

import numpy as np

from sentinel.daemon.state import MAX_KIND, ProcessState
from sentinel_hooks.writer import FsPolicy

__all__ = ["SCHEMA", "SCHEMA_VERSION", "MIGRATIONS", "JournalError", "Journal"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS processes (
    ring TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    alive INTEGER NOT NULL,
    exit TEXT NOT NULL,
    step INTEGER NOT NULL,
    last_step_ns INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    records INTEGER NOT NULL,
    overwritten INTEGER NOT NULL,
    torn INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    by_kind TEXT NOT NULL,
    first_seen REAL NOT NULL,
    ended_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key TEXT NOT NULL UNIQUE,
    signature TEXT NOT NULL,
    source TEXT NOT NULL,
    exception_class TEXT NOT NULL,
    kernel_family TEXT NOT NULL,
    known_issue TEXT,
    core_path TEXT NOT NULL,
    core_deleted INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    record TEXT NOT NULL,
    consequence_of INTEGER,
    kind TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS faults_signature ON faults (signature, id);
CREATE TABLE IF NOT EXISTS fault_aliases (dedupe_key TEXT PRIMARY KEY, fault_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS xids (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gpu TEXT NOT NULL,
    xid INTEGER NOT NULL,
    pids TEXT NOT NULL,
    at REAL NOT NULL,
    namespace TEXT NOT NULL DEFAULT '',
    pod TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS hangs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    op TEXT NOT NULL DEFAULT '',
    culprits TEXT NOT NULL,
    waiting TEXT NOT NULL,
    summary TEXT NOT NULL,
    since REAL NOT NULL,
    detected_at REAL NOT NULL,
    resolved_at REAL,
    evidence TEXT,
    UNIQUE (job, grp, seq)
);
"""
SCHEMA_VERSION = "2"
# Columns added since version 1, brought into an older journal when it is opened: (table, column,
# declaration, how to fill existing rows or None).
MIGRATIONS = (
    ("faults", "consequence_of", "INTEGER", None),
    ("faults", "kind", "TEXT NOT NULL DEFAULT ''", lambda db: _fill_fault_kinds(db)),
    ("xids", "namespace", "TEXT NOT NULL DEFAULT ''", None),
    ("xids", "pod", "TEXT NOT NULL DEFAULT ''", None),
    ("hangs", "caused_by", "TEXT NOT NULL DEFAULT ''", None),  # "group #seq" of the root hang; '' at a root
    ("hangs", "victims", "TEXT NOT NULL DEFAULT '[]'", None),
)


def _fill_fault_kinds(db: sqlite3.Connection) -> None:
    """faults.fault_kind for the rows of a version-1 journal, from their records."""
    from sentinel.triage.records import fault_kind

    rows = db.execute("SELECT id, source, exception_class, record FROM faults WHERE kind = ''").fetchall()
    for fid, source, exc, record in rows:
        d = json.loads(record)
        kind = fault_kind(source, exc, f"{d.get('exception', '')} {d.get('cuda_error', '')}")
        db.execute("UPDATE faults SET kind = ? WHERE id = ?", (kind, fid))


class JournalError(Exception):
    """The journal cannot be used by this version: written by a newer Sentinel (its schema
    version is higher), or its schema version is not one at all."""


class Journal:
    """The daemon's SQLite journal (``layout.journal_path``, WAL mode): process states and read
    positions, faults, hangs and XIDs, which outlive a restart. One autocommit connection, usable from
    any thread; its methods raise sqlite3.Error when the database fails."""

    def __init__(self, path: str, policy: FsPolicy | None = None) -> None:
        """Open (or create) the journal. A new one gets ``policy``'s mode and group (default 0600);
        so do its -wal and -shm files, which SQLite creates with the database file's mode. The
        daemon passes its policy, which an existing journal is brought to as well.

        Raises JournalError for a journal of a newer schema than SCHEMA_VERSION (it is left as it
        is), sqlite3.Error or OSError when the file cannot be opened."""
        self.path = path
        own = policy or FsPolicy()
        own.make_dirs(os.path.dirname(path) or ".")
        try:
            # Never through a symlink: SQLite would follow one and write wherever it points.
            os.close(own.create_file(path, os.O_RDWR | os.O_EXCL))
        except FileExistsError:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if policy is not None:
                    policy.own(fd, policy.file_mode)
            except OSError:
                pass  # not ours to change (another user's journal, read by `sentinel triage`)
            finally:
                os.close(fd)
        self.db = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._check_version()
        for table, column, decl, fill in MIGRATIONS:
            if column not in {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}:
                try:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                except sqlite3.OperationalError as exc:  # another opener (the CLI, the daemon) added it first
                    if "duplicate column" not in str(exc):
                        raise
            if fill is not None:
                # Every open: it only touches rows still empty (a fill cut short, or rows an older
                # version wrote into this journal since).
                with self.db:
                    fill(self.db)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    def _check_version(self) -> None:
        """Refuse a journal this version would misread: migrations only go forward."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            return  # new (or from before the version was written): version 1, migrated below
        found = str(row[0])
        if not found.isdigit():
            self.db.close()
            raise JournalError(f"{self.path}: schema version {found[:20]!r} is not a version")
        if int(found) > int(SCHEMA_VERSION):
            self.db.close()
            raise JournalError(f"{self.path} has schema version {found}, newer than this Sentinel's "
                               f"{SCHEMA_VERSION}: upgrade sentinel, or give another --dir")

    def save(self, states: list[ProcessState]) -> int:
        """Upsert the states marked dirty, in one transaction. Returns how many were written."""
        rows = []
        now = time.time()
        for s in states:
            if not s.dirty:
                continue
            rows.append((
                s.ring, json.dumps(s.identity, sort_keys=True), s.created_ns, int(s.alive), s.exit,
                s.step, s.last_step_ns, s.last_seq, s.records, s.overwritten, s.torn, s.dropped,
                json.dumps(s.by_kind.tolist()), s.first_seen, s.ended_at, now, json.dumps(s.extra()),
            ))
        if not rows:
            return 0
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR REPLACE INTO processes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )
        for s in states:
            s.dirty = False
        return len(rows)

    def load(self) -> list[ProcessState]:
        out = []
        for row in self.db.execute("SELECT * FROM processes ORDER BY first_seen"):
            (ring, identity, created_ns, alive, exit_, step, last_step_ns, last_seq, records,
             overwritten, torn, dropped, by_kind, first_seen, ended_at, _updated, extra) = row
            kinds = np.zeros(MAX_KIND + 1, dtype=np.int64)
            saved = json.loads(by_kind)[: MAX_KIND + 1]
            kinds[: len(saved)] = saved
            state = ProcessState(
                ring=ring, identity=json.loads(identity), created_ns=created_ns, alive=bool(alive),
                exit=exit_, step=step, last_step_ns=last_step_ns, last_seq=last_seq, records=records,
                overwritten=overwritten, torn=torn, dropped=dropped, by_kind=kinds,
                first_seen=first_seen, ended_at=ended_at, dirty=False,
            )
            state.load_extra(json.loads(extra))
            out.append(state)
        return out

    def rows(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM processes ORDER BY first_seen")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    def record_hang(self, hang: Any) -> bool:
        """Journal a detected hang once (a restarted daemon re-detecting it adds nothing).
        Returns True if it is new."""
        culprits = json.dumps([c.__dict__ for c in hang.culprits])
        caused_by = f"{hang.caused_by[1]} #{hang.caused_by[2]}" if hang.caused_by else ""
        victims = json.dumps(list(hang.victims))
        with self.db:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO hangs (job, grp, seq, kind, op, culprits, waiting, summary, since, detected_at, "
                "caused_by, victims) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (hang.job, hang.group, hang.seq, hang.kind, hang.op, culprits, json.dumps(list(hang.waiting)),
                 hang.summary(), hang.since, hang.detected_at, caused_by, victims),
            )
            if cur.rowcount == 0:  # known: refresh what we know of it, keep it open
                self.db.execute("UPDATE hangs SET culprits = ?, summary = ?, caused_by = ?, victims = ?, "
                                "resolved_at = NULL WHERE job = ? AND grp = ? AND seq = ?",
                                (culprits, hang.summary(), caused_by, victims, hang.job, hang.group, hang.seq))
        return cur.rowcount > 0

    def hang_evidence(self, key: tuple[str, str, int], evidence: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("UPDATE hangs SET evidence = ? WHERE job = ? AND grp = ? AND seq = ?",
                            (json.dumps(evidence, default=str), *key))

    def resolve_hang(self, key: tuple[str, str, int], when: float) -> None:
        with self.db:
            self.db.execute("UPDATE hangs SET resolved_at = ? WHERE job = ? AND grp = ? AND seq = ? "
                            "AND resolved_at IS NULL", (when, *key))

    def hang_counts(self) -> dict[tuple[str, str], int]:
        return {(job, grp): n for job, grp, n in self.db.execute("SELECT job, grp, COUNT(*) FROM hangs GROUP BY job, grp")}

    def open_hangs(self) -> set[tuple[str, str, int]]:
        return {tuple(r) for r in self.db.execute("SELECT job, grp, seq FROM hangs WHERE resolved_at IS NULL")}

    def hang_rows(self, limit: int = 50) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM hangs ORDER BY id DESC LIMIT ?", (limit,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur]

    def record_fault(self, rec: Any) -> int | None:
        """Journal a fault once (by its dedupe key, or an alias of it: evidence merged into another
        fault). Returns its id, or None if it was known."""
        if self.db.execute("SELECT 1 FROM fault_aliases WHERE dedupe_key = ?", (rec.dedupe_key,)).fetchone():
            return None
        with self.db:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO faults (dedupe_key, signature, source, exception_class, kernel_family, "
                "known_issue, core_path, created_at, record, consequence_of, kind) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rec.dedupe_key, rec.signature, rec.source, rec.exception_class, rec.kernel_family,
                 rec.known_issue["id"] if rec.known_issue else None, rec.core_path, rec.created_at,
                 json.dumps(rec.as_dict(), default=str), rec.consequence_of, rec.kind),
            )
        return cur.lastrowid if cur.rowcount else None

    def alias_fault(self, dedupe_key: str, fault_id: int) -> None:
        """Evidence with ``dedupe_key`` (a coredump, a death, a log line) is merged into fault ``fault_id``:
        ``record_fault`` will not make it a fault of its own again (after a daemon restart)."""
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO fault_aliases VALUES (?, ?)", (dedupe_key, fault_id))

    def update_fault(self, rec: Any) -> None:
        """Save a journaled fault's record again (``rec.id``), with the evidence merged into it; its
        signature, class and known-issue columns (what was counted and paged) stay."""
        with self.db:
            self.db.execute("UPDATE faults SET record = ?, core_path = ? WHERE id = ?",
                            (json.dumps(rec.as_dict(), default=str), rec.core_path, rec.id))

    def fault(self, fault_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT id, record, core_deleted FROM faults WHERE id = ?", (fault_id,)).fetchone()
        if row is None:
            return None
        rec = json.loads(row[1])
        rec["id"] = row[0]
        if row[2]:
            rec.setdefault("notes", []).append("coredump deleted by retention")
        return rec

    def faults(self, limit: int = 50, since: float | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` fault records (created at or after ``since``, if given), newest first."""
        out = []
        q = "SELECT id, record, kind, consequence_of FROM faults WHERE created_at >= ? ORDER BY id DESC LIMIT ?"
        for fid, rec, kind, consequence_of in self.db.execute(q, (-1.0 if since is None else since, limit)):
            d = json.loads(rec)
            d["id"] = fid
            d["kind"] = kind  # older records have it only in the column (filled on migration)
            d["consequence_of"] = consequence_of
            out.append(d)
        return out

    def fault_counts(self) -> dict[tuple[str, str, str, str, str], int]:
        """Faults of their own (consequences apart), by (signature, exception, kernel family, known issue,
        kind)."""
        q = ("SELECT signature, exception_class, kernel_family, COALESCE(known_issue, ''), kind, COUNT(*) FROM faults "
             "WHERE consequence_of IS NULL GROUP BY 1, 2, 3, 4, 5")
        return {(sig, exc, fam, ki, kind): n for sig, exc, fam, ki, kind, n in self.db.execute(q)}

    def consequence_counts(self) -> dict[tuple[str, str], int]:
        """Deaths journaled as consequences of another fault, by (the cause's signature, exception)."""
        q = ("SELECT c.signature, f.exception_class, COUNT(*) FROM faults f JOIN faults c ON f.consequence_of = c.id "
             "GROUP BY 1, 2")
        return {(sig, exc): n for sig, exc, n in self.db.execute(q)}

    def cores_to_spare(self) -> set[str]:
        """The first and the latest coredump of each signature: retention never deletes them."""
        q = ("SELECT core_path FROM faults WHERE core_path != '' AND core_deleted = 0 AND id IN "
             "(SELECT MIN(id) FROM faults WHERE core_path != '' GROUP BY signature UNION "
             "SELECT MAX(id) FROM faults WHERE core_path != '' GROUP BY signature)")
        return {r[0] for r in self.db.execute(q)}

    def surplus_cores(self, signature: str, keep: int) -> list[tuple[int, str]]:
        """Cores of ``signature`` beyond the first and the newest ``keep - 1``: (id, path), to delete."""
        rows = self.db.execute("SELECT id, core_path FROM faults WHERE signature = ? AND core_path != '' "
                               "AND core_deleted = 0 ORDER BY id", (signature,)).fetchall()
        if len(rows) <= keep:
            return []
        return rows[1: len(rows) - (keep - 1)]

    def mark_core_deleted(self, paths: list[str]) -> None:
        with self.db:
            self.db.executemany("UPDATE faults SET core_deleted = 1 WHERE core_path = ?", [(p,) for p in paths])

    def record_xid(self, gpu: str, xid: int, pids: list[int], at: float,
                   pods: tuple[tuple[str, str], ...] = ()) -> None:
        """One row per (XID event, pod holding the GPU); one row with no pod when none is known."""
        with self.db:
            self.db.executemany("INSERT INTO xids (gpu, xid, pids, at, namespace, pod) VALUES (?,?,?,?,?,?)",
                                [(gpu, xid, json.dumps(pids), at, ns, pod) for ns, pod in (pods or (("", ""),))])

    def xid_counts(self) -> dict[tuple[str, int, str, str], int]:
        """XID events by (gpu, xid, namespace, pod)."""
        return {(g, x, ns, pod): n for g, x, ns, pod, n in
                self.db.execute("SELECT gpu, xid, namespace, pod, COUNT(*) FROM xids GROUP BY 1, 2, 3, 4")}

    def forget(self, rings: list[str]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM processes WHERE ring = ?", [(r,) for r in rings])

    def close(self) -> None:
        self.db.close()
