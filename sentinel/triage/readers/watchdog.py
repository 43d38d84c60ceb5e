"""c10d / NCCL watchdog reports: the lines ``ProcessGroupNCCL`` writes when a collective times out,
its desync-debug report (``TORCH_NCCL_DESYNC_DEBUG=1``), and NCCL's own ``NCCL WARN`` lines.

Formats (PyTorch 2.1 to 2.10, as logged with or without the ``[rankN]:`` prefix, a Ray
``(RayWorkerVllm pid=..)`` prefix or a line number):

    [Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=241, OpType=ALLREDUCE,
        NumelIn=6, NumelOut=6, Timeout(ms)=600000) ran for 600086 milliseconds before timing out.
    [PG 1 Rank 0] Exception (either an error or timeout) detected by watchdog at work: 1580, last
        enqueued NCCL work: 1582, last completed NCCL work: 1579.
    [PG 2 Rank 0] Timeout at NCCL work: 2, last enqueued NCCL work: 2, last completed NCCL work: 1.
    [PG ID 0 PG GUID 0(default_pg) Rank 0]  failure detected by watchdog at work sequence id: 241 PG
        status: last enqueued work: 315, last completed work: 183
    Rank 0
             - [0] Timeout at collective: ALLREDUCE, #315
             - To our best knowledge, the lagging/dead/mismatched ranks that caused the desync are:
                 [7] finished collective #182, but didn't join collective #183 (count from 1)
             - Snapshot of ranks' latest states:
               #315 started ranks:
                 [0, 1, 2] started ALLREDUCE

The parser never raises; what a text does not show stays empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["KIND", "KEYS", "Desync", "PgStatus", "RankState", "WatchdogReport", "WorkTimeout", "looks_like", "parse"]

KIND = "c10d watchdog report"

_MARKER = re.compile(rb"Watchdog caught collective operation timeout|WorkNCCL\(SeqNum=|detected by watchdog|"
                     rb"lagging/dead/mismatched ranks|Timeout at NCCL work|\[\d+\] (?:\S+:\d+ )?NCCL WARN ")
_WORK = re.compile(r"\[Rank (?P<rank>\d+)\] Watchdog caught collective operation timeout: WorkNCCL\(SeqNum=(?P<seq>\d+), "
                   r"OpType=(?P<op>\w+)(?:, NumelIn=(?P<nin>-?\d+), NumelOut=(?P<nout>-?\d+))?, Timeout\(ms\)=(?P<tmo>\d+)\)"
                   r"(?: ran for (?P<ran>\d+) milliseconds)?")
_PG_A = re.compile(r"\[PG (?P<pg>\S+?) Rank (?P<rank>\d+)\] (?:Exception \(either an error or timeout\) detected by "
                   r"watchdog at work|Timeout at NCCL work): (?P<at>\d+), last enqueued NCCL work: (?P<enq>-?\d+), "
                   r"last completed NCCL work: (?P<done>-?\d+)")
_PG_B = re.compile(r"\[PG ID (?P<pg>\S+) PG GUID (?P<guid>[^\s(]+)(?:\((?P<name>[^)]*)\))? Rank (?P<rank>\d+)\]\s+failure "
                   r"detected by watchdog at work sequence id: (?P<at>\d+) PG status: last enqueued work: (?P<enq>-?\d+), "
                   r"last completed work: (?P<done>-?\d+)")
_DESYNC_AT = re.compile(r"-\s*\[(?P<rank>\d+)\] Timeout at collective: (?P<op>\w+), #(?P<seq>\d+)")
_CULPRIT = re.compile(r"^\s*\[(?P<ranks>[\d,\s]+)\] (?P<text>(?:finished|joined|did|didn't|started|is|are|has|\w+).*)$")
_STATE_HEAD = re.compile(r"^\s*#(?P<seq>\d+) (?P<state>\w+) ranks:\s*$")
_STATE_ROW = re.compile(r"^\s*\[(?P<ranks>[\d,\s]+)\] (?P<state>\w+) (?P<op>\w+)\s*$")
# NCCL's own format: "host:pid:tid [cudaDev] file.cc:line NCCL WARN <text>"
_WARN = re.compile(r"\[\d+\] (?:(?P<at>\S+:\d+) )?NCCL WARN (?P<text>.+)$")


@dataclass(frozen=True)
class WorkTimeout:
    """One rank's "Watchdog caught collective operation timeout" line. Milliseconds; numel in elements."""

    rank: int
    seq: int
    op: str
    numel_in: int | None
    numel_out: int | None
    timeout_ms: int
    ran_ms: int | None


@dataclass(frozen=True)
class PgStatus:
    """A process group's status at the timeout, as one rank saw it (sequence numbers of its works)."""

    rank: int
    pg: str
    pg_name: str
    at_work: int
    last_enqueued: int
    last_completed: int


@dataclass(frozen=True)
class RankState:
    """A line of the desync report's snapshot: ``ranks`` are at collective ``seq`` in ``state``."""

    seq: int
    state: str  # "finished", "started", "scheduled"
    ranks: tuple[int, ...]
    op: str


@dataclass
class Desync:
    """The desync-debug report of one rank: where it timed out, the culprits it names, and the
    snapshot of every rank's latest state."""

    rank: int
    op: str
    seq: int
    culprits: list[tuple[tuple[int, ...], str]] = field(default_factory=list)  # (ranks, what they did)
    states: list[RankState] = field(default_factory=list)


@dataclass
class WatchdogReport:
    """Everything watchdog-related a text shows."""

    timeouts: list[WorkTimeout] = field(default_factory=list)
    pg_status: list[PgStatus] = field(default_factory=list)
    desyncs: list[Desync] = field(default_factory=list)
    nccl_warnings: list[str] = field(default_factory=list)
    # Where NCCL raised each warning ("transport/nvls.cc:158"; "" when the line does not say): the
    # same "Cuda failure 1 'invalid argument'" means another fault in the NVLS, P2P or IB transport.
    nccl_warn_at: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.timeouts or self.pg_status or self.desyncs or self.nccl_warnings)

    def evidence(self) -> list[str]:
        """Catalog evidence keys: ``collective_hang``, ``desync_report``, ``never_joined`` (a culprit that
        did not join a collective), ``nccl_warn``."""
        ev = set()
        if self.timeouts or self.pg_status or self.desyncs:
            ev.add("collective_hang")
        if self.desyncs:
            ev.add("desync_report")
        if any("join" in text for d in self.desyncs for _, text in d.culprits):
            ev.add("never_joined")
        if self.nccl_warnings:
            ev.add("nccl_warn")
        return sorted(ev)

    def text(self) -> str:
        """What a catalog ``text`` regex searches: the timed-out works, the culprits' lines and the
        NCCL WARN lines, each after NCCL's source location when the line gives it."""
        parts = [f"WorkNCCL(SeqNum={t.seq}, OpType={t.op}, Timeout(ms)={t.timeout_ms})" for t in self.timeouts[:4]]
        parts += [f"Timeout at collective: {d.op}, #{d.seq}" for d in self.desyncs[:4]]
        parts += [text for d in self.desyncs[:4] for _, text in d.culprits[:8]]
        at = self.nccl_warn_at + [""] * (len(self.nccl_warnings) - len(self.nccl_warn_at))  # a report built by hand
        parts += [f"{a} NCCL WARN {w}".lstrip() for a, w in dict.fromkeys(zip(at, self.nccl_warnings))][:32]
        return "\n".join(parts)

    def culprit_ranks(self) -> list[int]:
        """The ranks a desync report names as lagging, dead or mismatched, in order, once each."""
        return list(dict.fromkeys(r for d in self.desyncs for ranks, _ in d.culprits for r in ranks))


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) holds a watchdog, desync or NCCL WARN line."""
    return bool(_MARKER.search(head))


def _ranks(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:4096])


# Outside a desync report, a line parse() reads holds one of these: the others are passed over cheaply.
_KEYS = ("WorkNCCL(", "detected by watchdog", "Timeout at NCCL work", "NCCL WARN", "Timeout at collective")
# In a large file, the lines parse() reads hold one of these (readers.scan.relevant_lines): the keys
# above and the desync report's section lines and rows ("[7] finished collective #182, but didn't join",
# "#315 started ranks:", "[0, 1, 2] started ALLREDUCE").
KEYS = tuple(k.encode() for k in _KEYS) + (b"lagging/dead/mismatched", b"Snapshot of ranks", b" ranks:", b"] finished",
                                           b"] joined", b"] started", b"] scheduled", b"] completed", b"didn't")


def parse(text: str | Iterable[str]) -> WatchdogReport:
    """Read every watchdog line, desync report and NCCL WARN line of ``text`` (a string, or its
    lines). Never raises."""
    rep = WatchdogReport()
    desync: Desync | None = None
    section = ""
    state_seq, state_name = 0, ""
    for line in text.splitlines() if isinstance(text, str) else text:
        if len(line) > 8192 or (desync is None and not any(k in line for k in _KEYS)):
            continue
        m = _WORK.search(line)
        if m:
            rep.timeouts.append(WorkTimeout(int(m["rank"]), int(m["seq"]), m["op"], _int(m["nin"]), _int(m["nout"]),
                                            int(m["tmo"]), _int(m["ran"])))
        m = _PG_A.search(line)
        if m:
            rep.pg_status.append(PgStatus(int(m["rank"]), m["pg"], "", int(m["at"]), int(m["enq"]), int(m["done"])))
            continue
        m = _PG_B.search(line)
        if m:
            rep.pg_status.append(PgStatus(int(m["rank"]), m["pg"], m["name"] or "", int(m["at"]), int(m["enq"]),
                                          int(m["done"])))
            continue
        m = _WARN.search(line)
        if m:
            rep.nccl_warnings.append(m["text"].strip()[:500])
            rep.nccl_warn_at.append((m["at"] or "")[:200])
            continue
        m = _DESYNC_AT.search(line)
        if m:
            desync = Desync(int(m["rank"]), m["op"], int(m["seq"]))
            rep.desyncs.append(desync)
            section = ""
            continue
        if desync is None:
            continue
        if "lagging/dead/mismatched ranks" in line:
            section = "culprits"
            continue
        if "Snapshot of ranks' latest states" in line:
            section = "states"
            continue
        if section == "culprits":
            c = _CULPRIT.match(line)
            if c:
                desync.culprits.append((_ranks(c["ranks"]), c["text"].strip()))
                continue
        if section == "states":
            h = _STATE_HEAD.match(line)
            if h:
                state_seq, state_name = int(h["seq"]), h["state"]
                continue
            r = _STATE_ROW.match(line)
            if r:
                desync.states.append(RankState(state_seq, r["state"] or state_name, _ranks(r["ranks"]), r["op"]))
                continue
        if line.strip() and not line.startswith((" ", "\t")):
            section = ""  # a new log line ends the report
            desync = None
    return rep


def _int(s: str | None) -> int | None:
    return int(s) if s is not None and len(s) <= 19 else None
