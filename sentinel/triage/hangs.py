"""Live collective-hang detection from per-rank collective sequence numbers.

The same "missing ranks" reasoning as PyTorch Flight Recorder's analyser, but live: in a
process group, the first collective some ranks enqueued and others never did is where the group
is stuck, and the ranks that never enqueued it are the culprits. Stacks alone mislead: a waiting
NCCL rank's collective call returns at once and it blocks later, at a sync.

A group is hung when none of its members has completed a collective for T seconds while one is
outstanding. T adapts to the workload: the larger of a floor and ``multiplier`` x the p99 of
the group's recent collective durations (and of its members' step times), so a long prefill or a
slow first step does not alert.

Across groups: a rank blocked in one group's collective never reaches the next collective of its
other groups, so it looks missing there too. The hangs of one job are therefore read together, as a
wait-for graph: a culprit of hang A that waits in hang B's collective is a victim (reason
``waiting``), and A is caused by B. Following the chain gives the root hang and its root culprits (a
rank that is dead, stuck outside any collective, or behind): one incident, paged once, at its root.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from sentinel.triage import desync
from sentinel_hooks.ringformat import COLLECTIVE_DTYPE_NAMES as DTYPE_NAMES
from sentinel_hooks.ringformat import COLLECTIVE_OP_NAMES as OP_NAMES

__all__ = ["Culprit", "Hang", "HangConfig", "HangDetector", "across_groups"]

if TYPE_CHECKING:  # the daemon's per-process state, passed in: triage never imports the daemon
    from sentinel.daemon.state import ProcessState


@dataclass(frozen=True)
class Culprit:
    """A rank a hang is blamed on: its global rank (-1: unknown, e.g. a group rank with no ring), its
    rank in the group, why (``died``, ``host_stall``, ``behind``, ``gpu_behind``, ``missing``,
    ``mismatch``, ``waiting``), the last collective it enqueued, and a readable detail."""

    rank: int  # global rank (-1 when unknown)
    group_rank: int
    reason: str  # died | host_stall | behind | gpu_behind | missing | mismatch | waiting (in another group's hung collective)
    last_enqueued: int
    detail: str


@dataclass(frozen=True)
class Hang:
    """A process group stuck at collective ``seq``, with its culprits and the ranks waiting on it.
    ``since`` and ``detected_at`` are Unix seconds; ``threshold_s`` is the stall, in seconds, that
    made it a hang."""

    job: str
    group: str
    seq: int  # the first collective not enqueued by every rank (or not completed by any)
    kind: str  # missing_ranks | all_enqueued | mismatch (all enqueued it, not the same collective)
    op: str  # the waiting ranks' collective (all_reduce, all_gather_into_tensor, ...)
    culprits: tuple[Culprit, ...]
    waiting: tuple[int, ...]  # global ranks that enqueued ``seq`` and wait on it
    since: float  # wall time the group last made progress
    threshold_s: float
    detected_at: float = field(default_factory=time.time)
    # Across groups (see the module docstring): the root hang this one follows from (None: it is a
    # root), and at a root, every rank of the incident that waits, in any of its groups.
    caused_by: tuple[str, str, int] | None = None
    victims: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.job, self.group, self.seq)

    @property
    def root_culprits(self) -> tuple[Culprit, ...]:
        """The culprits that are not themselves waiting in another group's collective."""
        return tuple(c for c in self.culprits if c.reason != "waiting")

    def summary(self) -> str:
        who = ", ".join(f"rank {c.rank} ({c.reason})" for c in self.culprits) or "no rank missing"
        text = (f"collective hang in job {self.job or '-'} group {self.group} at collective #{self.seq} ({self.op}): "
                f"{who}; waiting: {', '.join(map(str, self.waiting)) or '-'}")
        if self.caused_by:
            text += f"; caused by the hang of group {self.caused_by[1]} at #{self.caused_by[2]}"
        elif self.victims:
            text += f"; victims in all groups: {', '.join(map(str, self.victims))}"
        return text


@dataclass
class HangConfig:
    """The hang threshold, in seconds: max(``floor_s``, ``multiplier`` x the p99 of the group's
    collective durations and its members' step times). Dead members count (as culprits) for
    ``dead_grace_s`` seconds after they died."""

    floor_s: float = 5.0  # never alert sooner than this
    multiplier: float = 10.0  # x p99 of collective durations and of step times
    dead_grace_s: float = 600.0  # dead members keep counting for this long (they are culprits)


class HangDetector:
    """Finds stuck process groups in the daemon's per-process states (their collective sequence
    numbers; see the module docstring), holding no state between calls. ``now`` is Unix seconds (the
    states' heartbeat and collective times are ns)."""

    def __init__(self, config: HangConfig | None = None) -> None:
        self.config = config or HangConfig()

    def evaluate(self, states: Iterable[ProcessState], now: float | None = None) -> list[Hang]:
        now = time.time() if now is None else now
        groups: dict[tuple[str, str], list[ProcessState]] = {}
        for s in states:
            if not s.alive and now - s.ended_at > self.config.dead_grace_s:
                continue
            for name in s.groups:
                groups.setdefault((s.identity.get("job", ""), name), []).append(s)
        hangs = []
        for (job, name), members in groups.items():
            hang = self._group(job, name, members, now)
            if hang is not None:
                hangs.append(hang)
        return across_groups(hangs)

    def threshold(self, members: list[ProcessState], name: str) -> float:
        samples = [m.groups[name].durations_ns for m in members if len(m.groups[name].durations_ns)]
        samples += [m.step_ns for m in members if len(m.step_ns)]
        p99 = float(np.percentile(np.concatenate(samples), 99)) / 1e9 if samples else 0.0
        return max(self.config.floor_s, self.config.multiplier * p99)

    def _group(self, job: str, name: str, members: list[ProcessState], now: float) -> Hang | None:
        prog = [(m, m.groups[name]) for m in members]
        if not any(g.last_enqueued > g.last_completed for _, g in prog):
            return None
        last_done_ns = max(g.last_completed_ns for _, g in prog)
        lowest = min(g.last_enqueued for _, g in prog)
        highest = max(g.last_enqueued for _, g in prog)
        if lowest < highest:
            seq, kind = lowest + 1, "missing_ranks"
        else:
            seq, kind = lowest, "all_enqueued"
        # Progress clock: the last completion, or (before any) the first enqueue of ``seq``.
        first_enq_ns = min((g.last_enqueued_ns for _, g in prog if g.last_enqueued >= seq), default=0)
        since_ns = max(last_done_ns, first_enq_ns)
        threshold = self.threshold(members, name)
        if not since_ns or now - since_ns / 1e9 < threshold:
            return None
        culprits = []
        seen_ranks = set()
        for m, g in prog:
            seen_ranks.add(g.group_rank)
            if kind == "missing_ranks" and g.last_enqueued < seq:
                culprits.append(self._culprit(m, g, now, since_ns))
            elif kind == "all_enqueued" and not m.alive:
                culprits.append(self._culprit(m, g, now, since_ns))
        # A desync: ranks at ``seq`` that enqueued another op, size or dtype than the others (what the
        # Flight Recorder analyser finds offline; one rank a collective ahead shows as this).
        pairs = [(m, g) for m, g in prog if g.last_enqueued == seq and g.last_numel >= 0]
        keyed = {i: {"op": OP_NAMES.get(g.last_op, str(g.last_op)), "size": g.last_numel,
                     "dtype": DTYPE_NAMES.get(g.last_dtype, str(g.last_dtype))} for i, (_m, g) in enumerate(pairs)}
        named = {c.group_rank for c in culprits}
        for odd in desync.odd_ones(keyed) if len(keyed) >= 2 else []:
            m, g = pairs[odd["rank"]]
            if g.group_rank in named:
                continue
            named.add(g.group_rank)
            culprits.append(Culprit(_rank(m), g.group_rank, "mismatch", g.last_enqueued,
                                    f"{odd['error']}: enqueued {odd['found']} as collective #{seq} where the others have "
                                    f"{odd['expected']}"))
            if kind == "all_enqueued":
                kind = "mismatch"
        if kind == "all_enqueued" and not culprits:
            culprits += self._gpu_behind(prog, seq)
        size = max(g.size for _, g in prog)
        for r in range(size if size > 0 else 0):
            if r not in seen_ranks:
                culprits.append(Culprit(-1, r, "missing", 0, f"group rank {r} has no ring in this job"))
        waiting_prog = [(m, g) for m, g in prog if g.last_enqueued >= seq and g.last_completed < seq]
        waiting = tuple(sorted(_rank(m) for m, _ in waiting_prog))
        op = OP_NAMES.get(waiting_prog[0][1].last_op, "?") if waiting_prog else "?"
        return Hang(job, name, seq, kind, op, tuple(sorted(culprits, key=lambda c: c.rank)), waiting,
                    since_ns / 1e9, threshold)

    @staticmethod
    def _gpu_behind(prog: list, seq: int) -> list[Culprit]:
        """Every host enqueued collective ``seq``: the ranks whose GPU stream has passed fewer of the
        group's collective marks than the others' (their device words) are stuck in the work before it."""
        marks = [(m, g) for m, g in prog if g.gpu_entered >= 0]
        if len(marks) < 2 or len(marks) < len(prog):
            return []
        top = max(g.gpu_entered for _, g in marks)
        return [Culprit(_rank(m), g.group_rank, "gpu_behind", g.last_enqueued,
                        f"its GPU passed {g.gpu_entered} of the group's collective marks, the others {top}: stuck "
                        f"in the GPU work before collective #{seq} (its host enqueued it)")
                for m, g in marks if g.gpu_entered < top]

    def _culprit(self, m: ProcessState, g, now: float, since_ns: int) -> Culprit:  # noqa: ANN001
        rank = _rank(m)
        beat_age = now - m.last_step_ns / 1e9 if m.last_step_ns else None
        if not m.alive:
            return Culprit(rank, g.group_rank, "died", g.last_enqueued,
                           f"process {m.exit} at step {m.step}, after collective #{g.last_enqueued}")
        # No step since the group got stuck, and nothing outstanding: its host loop is stuck.
        if g.last_enqueued <= g.last_completed and m.last_step_ns <= since_ns + 1_000_000_000:
            age = "never stepped" if beat_age is None else f"heartbeat stopped {beat_age:.0f}s ago"
            return Culprit(rank, g.group_rank, "host_stall", g.last_enqueued,
                           f"{age}, no collective outstanding: a stuck host loop")
        return Culprit(rank, g.group_rank, "behind", g.last_enqueued,
                       f"alive at step {m.step}, last enqueued collective #{g.last_enqueued}")


def across_groups(hangs: list[Hang]) -> list[Hang]:
    """The hangs of each job read together (see the module docstring): a culprit waiting in another
    hang's collective becomes a victim of it (reason ``waiting``); a hang whose missing ranks all wait
    elsewhere (or are the other hang's culprits too) is ``caused_by`` the root hang its chain leads to;
    a root hang lists every rank of its
    incident that waits, in ``victims``. Groups waiting on each other in a cycle (a cross-group
    deadlock) stay roots, each with its own culprits."""
    waits_in = {(h.job, r): h for h in hangs for r in h.waiting if r >= 0}  # (job, rank) -> where it waits
    out = {}
    for h in hangs:
        culprits = []
        for c in h.culprits:
            other = waits_in.get((h.job, c.rank)) if c.rank >= 0 else None
            if other is not None and other.key != h.key:
                c = Culprit(c.rank, c.group_rank, "waiting", c.last_enqueued,
                            f"waits in group {other.group} collective #{other.seq} ({other.op})")
            culprits.append(c)
        out[h.key] = replace(h, culprits=tuple(culprits))

    def root_of(h: Hang, seen: frozenset) -> Hang:
        """The hang ``h`` follows from: where its waiting culprits wait, if that hang's root also
        accounts for ``h``'s own culprits (a rank missing from both); else ``h`` itself."""
        waiting = [c for c in h.culprits if c.reason == "waiting"]
        if not waiting:
            return h
        nxt = waits_in.get((h.job, waiting[0].rank))
        if nxt is None or nxt.key in seen:
            return h  # a cycle (a cross-group deadlock), or nothing further: a root
        root = root_of(out[nxt.key], seen | {nxt.key})
        own = {c.rank for c in h.root_culprits}
        return root if root.root_culprits and own <= {c.rank for c in root.root_culprits} else h

    roots = {key: root_of(h, frozenset({key})).key for key, h in out.items()}
    final = []
    for key, h in out.items():
        root = roots[key]
        if root != key:
            final.append(replace(h, caused_by=root))
            continue
        incident = [out[k] for k, r in roots.items() if r == key]
        victims = {r for x in incident for r in x.waiting} | {c.rank for x in incident for c in x.culprits
                                                               if c.reason == "waiting"}
        final.append(replace(h, victims=tuple(sorted(victims - {c.rank for c in h.root_culprits}))))
    return final


def _rank(m: ProcessState) -> int:
    r = m.identity.get("rank")
    return -1 if r is None else int(r)
