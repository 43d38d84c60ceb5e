"""Which fault explains which death: a process that died within seconds of a related process's
stronger fault (its parent killing it, its child crashing it) is that fault's consequence, and
pages as it, not on its own. ``strength`` orders the evidence, ``related`` says who counts as
related, ``CauseIndex`` keeps the recent faults that may explain a death."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sentinel.triage.records import _FH_HEADER, CONSEQUENCE_WINDOW_S, FaultRecord

__all__ = ["CauseIndex", "FaultInfo", "is_consequence", "link_consequence", "related", "strength"]


def strength(rec: FaultRecord) -> int:
    """How directly a record shows a fault of its own: 3 for a GPU coredump or a fatal signal that
    faulthandler caught, 2 for an exception the process raised, 1 for a death without a word (a
    SIGKILL, an os._exit)."""
    if rec.source == "coredump" or (rec.faulthandler and _FH_HEADER.search(rec.faulthandler)):
        return 3
    if rec.cuda_error:
        return 2
    return 1


def related(a: dict[str, Any], b: dict[str, Any], siblings: bool = True) -> bool:
    """Whether two processes (ring identities) belong to one serving job: in one pod (or both in
    none), the same non-empty job id, or, on one host, parent and child, or (``siblings``: the
    caller knows their parent is a hooked serving process, not a shell or a supervisor) two children
    of one parent. ``ppid`` comes from the ring header (0 or -1 when the ring predates it)."""
    if (a.get("pod") or "", a.get("namespace") or "") != (b.get("pod") or "", b.get("namespace") or ""):
        return False
    if a.get("job") and a.get("job") == b.get("job"):
        return True
    if not a.get("host") or a.get("host") != b.get("host"):
        return False
    pa, pb, qa, qb = a.get("pid"), b.get("pid"), a.get("ppid") or -1, b.get("ppid") or -1
    if pa is None or pb is None or pa == pb:
        return False
    return qa == pb or qb == pa or (siblings and qa == qb and qa > 1)


@dataclass(frozen=True)
class FaultInfo:
    """A journaled fault without its evidence: what sentinel_fault_info exports, and what a later
    death is compared with (``is_consequence``). ``strength`` is ``strength(record)``."""

    id: int | None
    kind: str
    signature: str
    exception_class: str
    kernel_family: str
    known_issue: dict[str, Any] | None
    identity: dict[str, Any]
    created_at: float
    died_at: float
    strength: int

    @classmethod
    def of(cls, rec: FaultRecord) -> FaultInfo:
        return cls(rec.id, rec.kind, rec.signature, rec.exception_class, rec.kernel_family, rec.known_issue,
                   dict(rec.identity or {}), rec.created_at, rec.died_at, strength(rec))


class CauseIndex:
    """Recent faults that may explain a related death (``is_consequence``), looked up by what
    ``related`` compares, so a storm of deaths costs a few dictionary lookups each, not a scan."""

    def __init__(self) -> None:
        self._by_key: dict[tuple, list[FaultInfo]] = {}
        self._all: list[FaultInfo] = []  # in the order added

    def add(self, info: FaultInfo) -> None:
        self._all.append(info)
        for key in self._keys_of(info.identity):
            self._by_key.setdefault(key, []).append(info)

    def prune(self, before: float) -> None:
        """Forget the faults of processes that died before ``before``."""
        if self._all and self._all[0].died_at < before:
            self._all = [r for r in self._all if r.died_at >= before]
            self._by_key = {}
            for info in self._all:
                for key in self._keys_of(info.identity):
                    self._by_key.setdefault(key, []).append(info)

    def cause_of(self, rec: FaultRecord, window_s: float, hooked: Callable[[str, int], bool] | None = None
                 ) -> FaultInfo | None:
        """The newest indexed fault that ``rec`` is a consequence of, if any. ``hooked(host, pid)``
        says whether a pid is a hooked process: siblings count only under such a parent."""
        ident = rec.identity or {}
        host, pid, ppid = ident.get("host"), ident.get("pid"), ident.get("ppid") or -1
        siblings = ppid > 1 and hooked is not None and hooked(host, ppid)
        keys = [("job", ident["job"])] if ident.get("job") else []
        keys += [("pid", host, ppid), ("ppid", host, pid)] + ([("ppid", host, ppid)] if siblings else [])
        found = [c for key in keys for c in self._by_key.get(key, ()) if is_consequence(rec, c, window_s, siblings)]
        return max(found, key=lambda c: c.created_at) if found else None

    @staticmethod
    def _keys_of(ident: dict[str, Any]) -> list[tuple]:
        # The keys under which a later death finds this fault: its job, its pid (a child of it), its
        # ppid (its parent, or a sibling).
        host = ident.get("host")
        keys = [("job", ident["job"])] if ident.get("job") else []
        if ident.get("pid") is not None:
            keys.append(("pid", host, ident["pid"]))
        if (ident.get("ppid") or -1) > 1:
            keys.append(("ppid", host, ident["ppid"]))
        return keys


def is_consequence(rec: FaultRecord, cause: FaultInfo, window_s: float = CONSEQUENCE_WINDOW_S,
                   siblings: bool = True) -> bool:
    """Whether ``rec`` is a consequence of ``cause``: a related process whose stronger fault (see
    ``strength``) came within ``window_s`` seconds of this death, before or after it (a parent
    killing its children after one crashed, or children dying with their crashed parent)."""
    return (window_s > 0 and cause.id is not None and bool(rec.died_at)
            and bool(cause.died_at)
            and abs(rec.died_at - cause.died_at) <= window_s and cause.strength > strength(rec)
            and related(rec.identity or {}, cause.identity or {}, siblings))


def link_consequence(rec: FaultRecord, cause: FaultInfo) -> FaultRecord:
    """Mark ``rec`` as a consequence of ``cause`` (journaled, shown by triage, not paged)."""
    rec.consequence_of = cause.id
    ci = cause.identity or {}
    rec.notes.append(f"a consequence of fault {cause.id} (signature {cause.signature}, {cause.exception_class} in "
                     f"pid {ci.get('pid')}), {rec.died_at - cause.died_at:+.1f} s from it: not paged on its own")
    return rec


