"""Per-process state derived from a ring, and the immutable snapshot the exporter reads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sentinel_hooks import ringformat as rf

from .ringreader import DTYPE

KIND_NAMES = {int(k): k.name.lower() for k in rf.Kind}
MAX_KIND = max(KIND_NAMES) + 1
LAST_RECORDS = 256  # what a fault record gets of a process's final moments
STEP_WINDOW = 1024  # step durations kept for percentiles


def kind_name(kind: int) -> str:
    return KIND_NAMES.get(kind, "unknown")


@dataclass
class ProcessState:
    """What the daemon knows of one hooked process. Mutated only by the daemon's poll thread."""

    ring: str  # ring file name: the process's key
    identity: dict[str, Any]
    created_ns: int = 0
    alive: bool = True
    exit: str = "running"  # running | exited (clean) | died (crash, kill)
    step: int = 0
    last_step_ns: int = 0
    last_seq: int = 0
    records: int = 0
    overwritten: int = 0
    torn: int = 0
    dropped: int = 0  # hook-side counted no-ops, from the header
    by_kind: np.ndarray = field(default_factory=lambda: np.zeros(MAX_KIND + 1, dtype=np.int64))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=DTYPE))
    step_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    first_seen: float = field(default_factory=time.time)
    ended_at: float = 0.0
    dirty: bool = True

    def ingest(self, recs: np.ndarray) -> None:
        """Fold a batch of valid records in. Vectorised: no Python loop per record."""
        n = len(recs)
        if not n:
            return
        self.records += n
        self.last_seq = int(recs["seq"][-1])
        kinds = np.minimum(recs["kind"], MAX_KIND)  # unknown kinds land in the last bucket
        self.by_kind += np.bincount(kinds, minlength=MAX_KIND + 1)
        steps = recs[recs["kind"] == rf.Kind.STEP]
        if len(steps):
            durations = steps["b"][steps["b"] > 0]
            if len(durations):
                self.step_ns = np.concatenate((self.step_ns, durations))[-STEP_WINDOW:]
        self.last = np.concatenate((self.last, recs[-LAST_RECORDS:]))[-LAST_RECORDS:]
        self.dirty = True

    def apply_header(self, header: dict[str, Any]) -> None:
        identity = {k: header[k] for k in rf.IDENTITY_TEXT + rf.IDENTITY_INT}
        if identity != self.identity or header["step"] != self.step or header["dropped"] != self.dropped:
            self.dirty = True
        self.identity = identity
        self.created_ns = header["created_ns"]
        self.step = header["step"]
        self.last_step_ns = header["last_step_ns"]
        self.dropped = header["dropped"]

    def step_p99_s(self) -> float | None:
        if len(self.step_ns) < 8:
            return None
        return float(np.percentile(self.step_ns, 99)) / 1e9

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k, v in enumerate(self.by_kind.tolist()):
            if v:
                name = kind_name(k) if k < MAX_KIND else "unknown"
                out[name] = out.get(name, 0) + v
        return out

    def snapshot(self) -> ProcessView:
        return ProcessView(
            ring=self.ring,
            identity=dict(self.identity),
            alive=self.alive,
            exit=self.exit,
            step=self.step,
            last_step_ns=self.last_step_ns,
            records=self.records,
            overwritten=self.overwritten,
            torn=self.torn,
            dropped=self.dropped,
            kinds=self.kinds(),
            step_p99_s=self.step_p99_s(),
            ended_at=self.ended_at,
        )


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
    dropped: int
    kinds: dict[str, int]
    step_p99_s: float | None
    ended_at: float

    def as_dict(self) -> dict[str, Any]:
        now = time.time()
        ident = self.identity
        return {
            "ring": self.ring,
            "pid": ident.get("pid"),
            "rank": _opt(ident.get("rank")),
            "local_rank": _opt(ident.get("local_rank")),
            "world_size": _opt(ident.get("world_size")),
            "job": ident.get("job", ""),
            "host": ident.get("host", ""),
            "pod": ident.get("pod", ""),
            "namespace": ident.get("namespace", ""),
            "framework": ident.get("framework", ""),
            "framework_version": ident.get("framework_version", ""),
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
        }


def _opt(v: Any) -> Any:
    return None if v is None or v == -1 else v


@dataclass(frozen=True)
class Snapshot:
    processes: tuple[ProcessView, ...] = ()
    rejected: dict[str, int] = field(default_factory=dict)
    ingested: int = 0
    polls: int = 0
    poll_seconds: float = 0.0
    taken_at: float = 0.0
