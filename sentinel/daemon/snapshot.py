"""The immutable snapshot the poll thread publishes after each poll and the exporter reads
without locks: every process's ``ProcessView`` and the daemon-wide counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ProcessView", "Snapshot", "identity_columns"]


@dataclass(frozen=True)
class ProcessView:
    """An immutable copy for readers on other threads (the exporter): no locks needed."""

    ring: str
    identity: dict[str, Any]
    alive: bool
    exit: str
    step: int
    last_step_ns: int
    records: int
    overwritten: int
    torn: int
    bad_records: int
    dropped: int
    kinds: dict[str, int]
    step_p99_s: float | None
    ended_at: float
    violations: dict[str, int] = field(default_factory=dict)
    probe_execs: int = 0
    headroom: tuple[int, int] | None = None
    batch: dict[str, int] = field(default_factory=dict)
    last_tokens: int = -1
    token_budget: int = -1
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    adapter_errors: dict[str, int] = field(default_factory=dict)
    config_errors: int = 0
    contained: int = 0
    mode: str = ""
    idle: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        ident = self.identity
        return {
            "ring": self.ring,
            **identity_columns(ident),
            "alive": self.alive,
            "exit": self.exit,
            "step": self.step,
            "heartbeat_age_s": round(now - self.last_step_ns / 1e9, 3) if self.last_step_ns else None,
            "records": self.records,
            "overwritten": self.overwritten,
            "torn": self.torn,
            "dropped": self.dropped,
            "kinds": self.kinds,
            "step_p99_s": self.step_p99_s,
            "violations": self.violations,
            "page_table_headroom": None if self.headroom is None else self.headroom[0],
            "probe_executions": self.probe_execs,
            "mode": self.mode,
            "contained": self.contained,
            "idle": self.idle,
            "groups": self.groups,
        }


def identity_columns(ident: dict[str, Any]) -> dict[str, Any]:
    """A process's identity (a ring header's, or the journal's copy of it) as the columns `sentinel
    status` and the daemon's JSON show: -1 (not known) becomes None, a missing string "". The one
    place those columns are named."""
    def known(v: Any) -> Any:
        return None if v is None or v == -1 else v

    return {
        "pid": ident.get("pid"),
        "rank": known(ident.get("rank")),
        "local_rank": known(ident.get("local_rank")),
        "world_size": known(ident.get("world_size")),
        "job": ident.get("job", ""),
        "host": ident.get("host", ""),
        "pod": ident.get("pod", ""),
        "namespace": ident.get("namespace", ""),
        "framework": ident.get("framework", ""),
        "framework_version": ident.get("framework_version", ""),
    }


@dataclass(frozen=True)
class Snapshot:
    """The daemon's whole state after one poll, replaced (never changed) by the poll thread and read
    by the exporter without locks. ``taken_at`` is Unix seconds, ``poll_seconds`` and ``triage_sum``
    durations in seconds, ``*_bytes`` bytes. Keys: ``hangs_total`` (job, group); ``faults`` (signature,
    exception class, kernel family, known-issue id, kind); ``rejected`` a ring refusal's reason."""

    processes: tuple[ProcessView, ...] = ()
    hangs: tuple[Any, ...] = ()
    hangs_total: dict[tuple[str, str], int] = field(default_factory=dict)
    faults: dict[tuple[str, str, str, str, str], int] = field(default_factory=dict)  # ... known issue, kind
    fault_consequences: dict[tuple[str, str], int] = field(default_factory=dict)  # (cause signature, exception)
    recent_faults: tuple[Any, ...] = ()  # consequences.FaultInfo of the last dead_ttl_s (the newest 1000), not consequences
    xids: dict[tuple[str, int, str, str], int] = field(default_factory=dict)  # (gpu, xid, namespace, pod)
    gpus: tuple[Any, ...] = ()
    coredump_bytes: int = 0
    triage_count: int = 0
    triage_sum: float = 0.0
    fr_rejected: int = 0
    gdb_rejected: int = 0
    faults_merged: int = 0  # sightings merged into an existing fault record (a log line, then its coredump)
    log_files: int = 0  # serving logs followed
    log_bytes: int = 0
    log_failures: int = 0  # failures read from serving logs
    kmsg_xids: int = 0  # XID lines read from the kernel log
    kmsg_lost: int = 0  # kernel log records overwritten before the daemon read them
    rejected: dict[str, int] = field(default_factory=dict)
    ingested: int = 0
    polls: int = 0
    poll_seconds: float = 0.0
    taken_at: float = 0.0
    dir_free_bytes: int = -1  # on SENTINEL_DIR's filesystem; -1: unknown
    journal_errors: int = 0
    rings_deleted: int = 0  # rings of forgotten dead processes deleted by the daemon
    ring_delete_errors: int = 0
