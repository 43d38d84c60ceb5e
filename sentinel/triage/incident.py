"""One incident from several evidence files: the logs of all ranks, the kernel log, watchdog reports,
Flight Recorder dumps and a coredump of one failure, given together to `sentinel triage`.

The fault records of the files become one (a GPU fault first, then the most direct evidence: a GPU
coredump, cuda-gdb's text, a compute-sanitizer report, a log; the others are absorbed into it,
``FaultRecord.absorb``, another rank's without its identity and frame);
the kernel log's XIDs join as evidence ``xid_<N>``; a hang seen in watchdog reports or Flight Recorder
dumps joins with its culprit ranks, and the ranks that only waited are named as its victims. With a
fault on one rank and a hang on the others, the faulting rank is the culprit: the others hang in
the next collective because it died.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sentinel.triage.catalog import Catalog
from sentinel.triage.records import FaultRecord

__all__ = ["SOURCE_ORDER", "Hang", "Incident", "join"]

# Which record leads when several show one fault: the most direct evidence first.
SOURCE_ORDER = ("coredump", "transcript", "sanitizer", "log")


@dataclass
class Hang:
    """A collective hang as one file shows it: where (process group, op, sequence number), which ranks
    are named culprits and which waited."""

    source: str  # the file
    pg: str = ""
    op: str = ""
    seq: int | None = None
    culprits: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)


@dataclass
class Incident:
    """What several files of one failure say together. ``record`` is None when none of them showed
    a fault (a hang, or XIDs, only)."""

    files: list[str]
    record: FaultRecord | None = None
    hangs: list[Hang] = field(default_factory=list)
    xids: list[dict[str, Any]] = field(default_factory=list)  # kernel_log.XidEvent as dicts
    culprit_ranks: list[int] = field(default_factory=list)
    victim_ranks: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "record": self.record.as_dict() if self.record else None,
                "hangs": [asdict(h) for h in self.hangs], "xids": self.xids,
                "culprit_ranks": self.culprit_ranks, "victim_ranks": self.victim_ranks}


def _rank(rec: FaultRecord) -> int | None:
    """The record's rank; a TP rank where that is all a log's prefix names (TP-only: the same)."""
    ident = rec.identity or {}
    for key in ("rank", "tp_rank"):
        rank = ident.get(key)
        if isinstance(rank, int) and not isinstance(rank, bool) and rank >= 0:
            return rank
    return None


def join(files: list[str], records: list[FaultRecord], hangs: list[Hang], xids: list[Any],
         catalog: Catalog) -> Incident:
    """Join what the files showed (``records`` in file order, ``hangs``, ``xids``: kernel_log.XidEvent)
    into one incident. The lead record is changed in place."""
    inc = Incident(files=list(files), hangs=list(hangs), xids=[asdict(x) for x in xids])
    # A GPU fault leads over a death it caused elsewhere (rank 0's EngineDeadError, rank 3's illegal
    # address); among GPU faults, the most direct evidence.
    ordered = sorted(records, key=lambda r: (r.kind != "cuda",
                                             SOURCE_ORDER.index(r.source) if r.source in SOURCE_ORDER else 99))
    # The ranks that faulted: with a GPU fault among the records, the ranks of GPU faults (another
    # rank's engine death followed from it); else every rank that has a record.
    gpu = [rec for rec in records if rec.kind == "cuda"]
    faulted = sorted({r for r in (_rank(rec) for rec in (gpu or records)) if r is not None})
    if ordered:
        lead = ordered[0]
        for other in ordered[1:]:
            ranks = (_rank(lead), _rank(other))
            lead.absorb(other, catalog, same_process=None in ranks or ranks[0] == ranks[1])
        for x in xids:
            if x.nvswitch:
                continue
            lead.evidence = sorted(set(lead.evidence) | {f"xid_{x.xid}"})
            lead.notes.append(f"Xid {x.xid} on GPU {x.pci}: {x.mmu_fault or x.sm_exception or x.detail}"[:300])
        if hangs:
            lead.evidence = sorted(set(lead.evidence) | {"collective_hang"})
        match = catalog.match(lead.exception_class, lead.kernel_family, set(lead.evidence), lead.text())
        if match is not None:
            lead.known_issue = match.as_dict()
        inc.record = lead
    named = [r for h in hangs for r in h.culprits]
    # A rank that faulted is the culprit of the hang around it; the hang reports' own culprits follow.
    inc.culprit_ranks = list(dict.fromkeys(faulted + named))
    waited = {r for h in hangs for r in h.waiting}
    inc.victim_ranks = sorted(waited - set(inc.culprit_ranks))
    return inc
