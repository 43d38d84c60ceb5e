"""Fault records: what on-call needs a minute after a crash, built from every piece of evidence.

Sources: a GPU coredump read by cuda-gdb, a process that died (its faulthandler traceback and the
exception text its hooks recorded), an NVML XID event, a serving log, a compute-sanitizer report. Each record gets a stable signature, the
process identity, its last ring records, and its known-issue match.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sentinel.triage import fingerprint
from sentinel.triage.catalog import Catalog
from sentinel.triage.readers.cudagdb import GdbReport
from sentinel_hooks import frames, layout
from sentinel_hooks import ringformat as rf
from sentinel_hooks.ringformat import CHECK_LABELS, kind_name

__all__ = [
    "RECORD_COLUMNS", "FAULTHANDLER_MAX", "CONSEQUENCE_WINDOW_S", "FAULT_KINDS", "fault_kind", "FaultRecord",
    "evidence_from", "render_records", "exception_texts", "read_faulthandler", "faulthandler_summary",
    "from_core", "from_crash", "from_log", "from_sanitizer",
]

if TYPE_CHECKING:  # the daemon's per-process state, passed in: triage never imports the daemon
    from sentinel.daemon.state import ProcessState
    from sentinel.triage.readers.compute_sanitizer import SanitizerReport
    from sentinel.triage.readers.serving_log import LogReport

RECORD_COLUMNS = ("seq", "ts_ns", "step", "kind", "code", "tag", "aux", "a", "b", "c")

FAULTHANDLER_MAX = 64 * 1024
# A death this close to a related process's stronger fault is its consequence (see is_consequence).
# vLLM's process manager SIGKILLs an engine core within a second of its worker's crash, and gives a
# SIGTERMed one 5 s; a torchrun agent tears down the other ranks within its 30 s stop timeout.
CONSEQUENCE_WINDOW_S = 30.0


# What a fault record is, for alerting: each kind has its own alert, severity and runbook.
FAULT_KINDS = ("cuda", "crash", "killed")


def fault_kind(source: str, exception_class: str, texts: str) -> str:
    """``cuda`` for a GPU fault (a GPU coredump or cuda-gdb's text of one, a compute-sanitizer error, or a
    CUDA error the process raised; running out of GPU memory is not one), ``killed`` for a death without
    a word (SIGKILL: an OOM kill, an eviction, a grace-period overrun), ``crash`` for any other death (a
    native signal with no CUDA evidence, an uncaught exception)."""
    if exception_class == "out_of_memory":  # "CUDA out of memory" is a resource, not a GPU fault
        return "crash"
    if source in ("coredump", "transcript", "sanitizer") or "cuda" in texts.lower():
        return "cuda"
    return "killed" if exception_class == "killed" else "crash"


@dataclass
class FaultRecord:
    """One fault, as journaled and reported: what died (``source``, ``kind``), its evidence (exception,
    kernel, frame, faulthandler text, last ring records, cuda-gdb's report) and, after ``finish``, its
    ``signature`` and known-issue match. ``created_at`` and ``died_at`` are Unix seconds,
    ``triage_seconds`` is cuda-gdb's run time in seconds, ``core_bytes`` the dump's size in bytes."""

    source: str  # coredump | process_crash | transcript | log | sanitizer
    exception: str  # the exception as reported (cuda-gdb, CUDA error text, signal, XID name)
    exception_class: str
    kernel: str = ""
    kernel_family: str = ""
    top_frame: str = ""
    signature: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    known_issue: dict[str, Any] | None = None
    cuda_error: str = ""  # the Python-side error text ("CUDA error: an illegal memory access ...")
    faulthandler: str = ""
    last_records: list[dict[str, Any]] = field(default_factory=list)
    gdb: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)  # what a log or sanitizer report showed (readers.*)
    core_path: str = ""
    core_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    triage_seconds: float = 0.0
    id: int | None = None
    dedupe_key: str = ""
    kind: str = ""  # cuda | crash | killed (see fault_kind)
    died_at: float = 0.0  # when the daemon saw the process die (0: not known, e.g. a transcript)
    consequence_of: int | None = None  # the id of the fault this death followed from (see is_consequence)
    seen_as: list[str] = field(default_factory=list)  # the other sources that saw this fault (see absorb)
    ring: str = ""  # the ring file of the process it happened in: one process incarnation (pids repeat)

    def finish(self, catalog: Catalog) -> FaultRecord:
        self.exception_class = fingerprint.exception_class(self.exception)
        self.kernel_family = fingerprint.kernel_family(self.kernel) if self.kernel else ""
        self.signature = fingerprint.signature(self.exception, self.kernel, self.top_frame)
        self.kind = fault_kind(self.source, self.exception_class, f"{self.exception} {self.cuda_error}")
        match = catalog.match(self.exception_class, self.kernel_family, set(self.evidence), self.text())
        self.known_issue = match.as_dict() if match else None
        return self

    def compatible(self, other: FaultRecord) -> bool:
        """Whether ``other`` can be this failure seen another way: the same exception class; a death
        (the process died of this); or both GPU faults (a CUDA error's log line and the coredump or
        sanitizer report of the kernel behind it). Running out of memory, then an illegal address, are
        two failures."""
        if other.exception_class == self.exception_class or "process_crash" in (self.source, other.source):
            return True
        return self.kind == other.kind == "cuda"

    def absorb(self, other: FaultRecord, catalog: Catalog, same_process: bool = True) -> None:
        """Take in ``other``, the same failure seen another way (the process's log line, its death, its
        GPU coredump, an XID): its evidence and notes join, and what this record lacks (kernel, frame,
        cuda-gdb's report, the coredump, the faulthandler dump, the ring's last records) is filled in;
        the known issue is matched again on all of it. The signature, exception and kind stay as first
        recorded: the fault was paged with them. With ``same_process`` False (another rank's record, in an
        incident) the identity, frame and ring records stay this record's own."""
        self.seen_as.append(other.source)
        self.evidence = sorted(set(self.evidence) | set(other.evidence))
        names = ["kernel", "cuda_error", "core_path", "core_bytes", "gdb", "triage_seconds"]
        if same_process:
            names += ["top_frame", "faulthandler", "last_records", "died_at", "ring"]
        for name in names:
            if not getattr(self, name) and getattr(other, name):
                setattr(self, name, getattr(other, name))
        if self.kernel and not self.kernel_family:
            self.kernel_family = fingerprint.kernel_family(self.kernel)
        if same_process:
            self.identity = {**other.identity, **self.identity}
        lines = list(dict.fromkeys([*self.log.get("lines", ()), *other.log.get("lines", ())]))
        self.log = {**other.log, **self.log, **({"lines": lines} if lines else {})}
        self.notes.append(f"also seen as {other.source}: {other.exception}"
                          + (f" in {other.kernel}" if other.kernel else ""))
        self.notes += [n for n in other.notes if n not in self.notes]
        match = catalog.match(self.exception_class, self.kernel_family, set(self.evidence), self.text())
        if match is not None:
            self.known_issue = match.as_dict()

    def text(self) -> str:
        """What a catalog ``text`` regex searches: the exception, CUDA error, kernel, frame, the log lines
        that carried the failure and the notes (the engine's death chain, an XID's detail)."""
        parts = [self.exception, self.cuda_error, self.kernel, self.top_frame, *self.log.get("lines", ()), *self.notes]
        return "\n".join(p for p in parts if p)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def evidence_from(state: ProcessState | None) -> list[str]:
    """Evidence keys for catalog matching, from what the process's hooks reported."""
    if state is None:
        return []
    ev = {check for check, n in state.violations.items() if n}
    # What the GPU published to device words counts before any drain reported it (a fault that
    # killed the context right after the probe): ProcessState.settle_probe_words adds it to the
    # counters once the process is gone, but a coredump may be triaged first.
    if any(v[1] > 0 for devices in state.gpu_probes.values() for v in devices.values()):
        ev.add("page_table_oob")
    room = state.min_headroom()
    if room is not None and room[0] <= 0:
        ev.add("page_table_at_capacity")
    last = state.last
    if len(last):
        ctx = last[(last["kind"] == rf.Kind.CONTEXT) & (last["code"] == rf.Context.BATCH)]
        flags = ctx.view(rf.numpy_dtype(rf.Kind.CONTEXT, rf.Context.BATCH))["flags"]
        if len(ctx) and bool(((flags & rf.BATCH_AT_BUDGET) != 0).any()):
            ev.add("token_budget_boundary")
        probes = last[last["kind"] == rf.Kind.PROBE]
        ev.update(CHECK_LABELS.get(int(c), "unknown") for c in np.unique(probes["code"]).tolist())
    return sorted(ev)


def render_records(recs: np.ndarray, names: Callable[[int], str], limit: int = 32) -> list[dict[str, Any]]:
    """The last records as readable dicts (newest last)."""
    out = []
    for r in recs[-limit:]:
        seq, ts, step, kind, code, tag, aux, a, b, c = (int(r[f]) for f in RECORD_COLUMNS)
        d: dict[str, Any] = {"seq": seq, "time": round(ts / 1e9, 6), "step": step, "kind": kind_name(kind)}
        if kind == rf.Kind.PROBE:
            d["check"] = CHECK_LABELS.get(code, str(code))
        elif kind == rf.Kind.CONTEXT:
            d["context"] = {rf.Context.PAGED_KV: "paged_kv", rf.Context.BATCH: "batch"}.get(code, str(code))
        elif kind == rf.Kind.EXCEPTION:
            d["text"] = names(tag)
            d["frame"] = names(aux)
            out.append(d)
            continue
        else:
            d["code"] = code
        if tag:
            d["name"] = names(tag)
        d.update(a=a, b=b, c=c)
        if aux:
            d["aux"] = aux
        out.append(d)
    return out


def exception_texts(state: ProcessState | None, names: Callable[[int], str]) -> tuple[str, str]:
    """(exception text, top in-app frame) of the last EXCEPTION record, if the hooks wrote one."""
    if state is None or not len(state.last):
        return "", ""
    exc = state.last[state.last["kind"] == rf.Kind.EXCEPTION]
    if not len(exc):
        return "", ""
    r = exc[-1]
    return names(int(r["tag"])), names(int(r["aux"]))


_FH_HEADER = re.compile(r"Fatal Python error: (.+)")
_FH_FRAME = re.compile(r'File "(.+?)", line (\d+) in (\S+)')


def read_faulthandler(path: str) -> str:
    """The dump's text: a regular file only, never through a symlink (a hooked process writes in
    that folder), never blocking on a FIFO. Empty when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return ""
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a hard link could name a file elsewhere
                return ""
            return f.read(FAULTHANDLER_MAX).decode("utf-8", "replace")
        except OSError:
            return ""


_FH_THREAD = re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+", re.M)


def faulthandler_summary(text: str) -> tuple[str, str]:
    """(fatal error, frame to blame) from a faulthandler dump: the crashing thread's innermost
    application frame, never Sentinel's own (``sentinel_hooks.frames.blame``).

    The crashing thread is the one faulthandler marks "Current thread". A crash in a thread with no
    Python frames (an OpenMP worker of a native op) has none: then the thread most likely inside
    the op is taken (``frames.activity``; the main thread, listed last, among equals)."""
    if not text:
        return "", ""
    err = m.group(1).strip() if (m := _FH_HEADER.search(text)) else ""
    starts = list(_FH_THREAD.finditer(text))
    threads = []
    for i, start in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        block = re.split(r"\n\s*\n", text[start.start():end], maxsplit=1)[0]
        chain = [(fm.group(1), int(fm.group(2)), fm.group(3)) for fm in _FH_FRAME.finditer(block)]  # innermost first
        threads.append((start.group(1) == "Current thread", chain))
    if not threads:  # no thread headers (a truncated dump): its frames as one thread
        threads = [(True, [(fm.group(1), int(fm.group(2)), fm.group(3)) for fm in _FH_FRAME.finditer(text)])]
    current = [chain for is_current, chain in threads if is_current]
    if current:
        return err, frames.blame(current[0])
    best = max(range(len(threads)), key=lambda i: (frames.activity(threads[i][1]), i))
    return err, frames.blame(threads[best][1])


def from_core(report: GdbReport, core_path: str, state: ProcessState | None, names: Callable[[int], str],
              base_dir: str, catalog: Catalog, notes: list[str] | None = None) -> FaultRecord:
    """The fault record of a GPU coredump: cuda-gdb's ``report``, plus what the process's ring state
    (None: no ring matched the dump), hooks and faulthandler dump add, matched against ``catalog``.
    ``core_bytes`` is 0 when the dump is gone."""
    ident = dict(state.identity) if state else {}
    cuda_error, frame = exception_texts(state, names)
    fh = read_faulthandler(layout.faulthandler_path(base_dir, ident.get("host", ""), ident.get("pid", -1))) if ident else ""
    if not frame:
        frame = faulthandler_summary(fh)[1]
    try:
        size = os.path.getsize(core_path)
    except OSError:
        size = 0
    rec = FaultRecord(
        source="coredump", exception=report.exception or cuda_error or "unreadable coredump",
        exception_class="", kernel=report.kernel, top_frame=frame, identity=ident, evidence=evidence_from(state),
        cuda_error=cuda_error, faulthandler=fh,
        last_records=render_records(state.last, names) if state is not None else [],
        gdb=report.as_dict(), core_path=core_path, core_bytes=size, notes=list(notes or []),
        dedupe_key=f"core:{os.path.basename(core_path)}", ring=state.ring if state is not None else "",
        # A dump is written as the process dies: if the daemon has not seen the death yet, it is now.
        died_at=(state.ended_at or time.time()) if state is not None else 0.0,
    )
    return rec.finish(catalog)


def from_log(report: LogReport, path: str, catalog: Catalog, state: ProcessState | None = None,
             names: Callable[[int], str] | None = None, base_dir: str = "") -> FaultRecord:
    """The fault record of a serving log (``readers.serving_log``): the failure it logged, the kernel
    a device assert names, the innermost application frame of its traceback, the evidence its text
    supports, the engine's death chain as notes. With the process's ring ``state`` (the daemon, live),
    its identity, probe evidence and last records join in."""
    detail: dict[str, Any] = {}
    if report.assertion:
        detail.update(assert_file=report.assertion[0], assert_line=report.assertion[1],
                      condition=report.assertion[2], block=report.block, thread=report.thread,
                      asserts=report.asserts)
    if report.tma_strides:
        detail.update(tma_shape=report.tma_shape, tma_strides=report.tma_strides)
    if report.error_type:
        detail["error_type"] = report.error_type
    detail["lines"] = list(report.lines)
    rec = FaultRecord(
        source="log", exception=report.exception, exception_class="", kernel=report.kernel, top_frame=report.frame,
        evidence=sorted(set(report.evidence) | set(evidence_from(state))), cuda_error=report.cuda_error,
        log=detail, notes=list(report.chain), dedupe_key=f"log:{os.path.abspath(path)}",
    )
    if report.process:
        rec.identity = dict(report.process)
    if state is not None:
        rec.identity = dict(state.identity)
        rec.ring = state.ring
        rec.last_records = render_records(state.last, names or (lambda tag: ""))
        if not rec.top_frame:
            rec.top_frame = exception_texts(state, names or (lambda tag: ""))[1]
    return rec.finish(catalog)


def from_sanitizer(report: SanitizerReport, path: str, catalog: Catalog) -> FaultRecord:
    """The fault record of a compute-sanitizer report (``readers.compute_sanitizer``): the first
    device-side error as the fault (its kind, kernel, where, the access, the allocation it missed, the
    thread), the frame to blame (a Python traceback's, else the innermost application host frame), and
    the other reports counted per kind and kernel. Sizes and distances in ``log`` are bytes."""
    f = report.fault
    detail: dict[str, Any] = {"tool": report.tool, "errors": report.total}
    if report.legacy:
        detail["legacy"] = True  # cuda-memcheck, not compute-sanitizer
    if report.error_summary is not None:
        detail["error_summary"] = report.error_summary
    if report.racecheck_summary:
        detail["racecheck_summary"] = report.racecheck_summary
    if f is not None:
        detail.update(check=f.check, kind=f.kind, function=f.function, pc=f.pc, source_file=f.file,
                      source_line=f.line, thread=f.thread, block=f.block)
        detail.update({k: v for k, v in (("severity", f.severity), ("space", f.space), ("access", f.access),
                                         ("size", f.size), ("address", f.address),
                                         ("address_state", f.address_state), ("allocation", f.allocation),
                                         ("accesses", f.accesses), ("hazards", f.hazards), ("api_error", f.api_error),
                                         ("api_call", f.api_call), ("leaked", f.leaked),
                                         ("device_frames", f.device_frames[:8])) if v})
    if report.host_frame:
        detail["host_frame"] = report.host_frame
    others = report.others
    if others:
        detail["others"] = others[:32]
    detail["lines"] = list(report.lines)
    notes = []
    if others:
        n = sum(o["count"] for o in others)
        notes.append(f"{n} more report(s) besides this one, {len(others)} distinct (kind, kernel)")
    api = next((e for e in report.errors if e.api_error and e is not f), None)
    if api is not None:
        notes.append(f"then: {api.exception}")
    rec = FaultRecord(
        source="sanitizer", exception=report.exception, exception_class="", kernel=report.kernel,
        top_frame=report.top_frame, evidence=list(report.evidence), cuda_error=report.cuda_error, log=detail,
        notes=notes, dedupe_key=f"sanitizer:{os.path.abspath(path)}",
    )
    return rec.finish(catalog)


def from_crash(state: ProcessState, names: Callable[[int], str], base_dir: str, catalog: Catalog) -> FaultRecord:
    """A process that died with no GPU coredump: its Python-side evidence."""
    ident = dict(state.identity)
    cuda_error, frame = exception_texts(state, names)
    fh = read_faulthandler(layout.faulthandler_path(base_dir, ident.get("host", ""), ident.get("pid", -1)))
    fatal, fh_frame = faulthandler_summary(fh)
    exception = cuda_error or fatal or "died without a word (SIGKILL or OOM kill?)"
    notes = []
    if fh and not fh.endswith("\n"):
        notes.append("the faulthandler dump is cut short (another thread crashed while it was written, or the process "
                     "was killed): the Python frames after its last line are missing")
    if not (cuda_error or fatal):
        notes.append("no exception text and no faulthandler output: the process was killed (SIGKILL, OOM) "
                     "or exited through os._exit")
    rec = FaultRecord(
        source="process_crash", exception=exception, exception_class="", top_frame=frame or fh_frame,
        identity=ident, evidence=evidence_from(state), cuda_error=cuda_error, faulthandler=fh,
        last_records=render_records(state.last, names), notes=notes,
        dedupe_key=f"crash:{state.ring}", died_at=state.ended_at, ring=state.ring,
    )
    return rec.finish(catalog)
