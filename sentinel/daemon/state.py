"""Per-process state derived from a ring (``ProcessState``), kept by the poll thread; its immutable
copy for other threads is ``snapshot.ProcessView``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from sentinel.daemon.ringreader import DTYPE, payload
from sentinel.daemon.snapshot import ProcessView
from sentinel_hooks import ringformat as rf

__all__ = [
    "BATCH_COUNTERS", "MAX_KIND", "LAST_RECORDS", "STEP_WINDOW", "WARMUP_STEPS",
    "MAX_GROUP_SIZE", "MAX_COUNT", "Violation", "GroupProgress", "ProcessState",
]

BATCH_COUNTERS = ("steps", "at_token_budget", "over_token_budget", "uncaptured_batch_size")
MAX_KIND = max(rf.KIND_NAMES) + 1
LAST_RECORDS = 256  # what a fault record gets of a process's final moments
STEP_WINDOW = 1024  # step durations kept for percentiles
WARMUP_STEPS = 2  # durations of the first steps (and a group's first collective) are not typical
# Bounds on record values the daemon acts on. A record outside them is refused and counted as bad
# (a hostile or corrupt writer): a group size of 2**40 made the hang detector list 2**40 missing
# ranks, a negative count would make a counter go down.
MAX_GROUP_SIZE = 1 << 16
MAX_COUNT = 1 << 32  # violations, probe executions, adapter errors in one record


def _step_durations(recs: np.ndarray) -> np.ndarray:
    """Durations (ns) of the steps in ``recs`` past the warm-up ones."""
    steps = payload(recs, rf.Kind.STEP)  # only STEP rows are used: the mask selects them
    d = steps["duration_ns"]
    return d[(recs["kind"] == rf.Kind.STEP) & (d > 0) & (steps["step_number"] > WARMUP_STEPS)]


class Violation(NamedTuple):
    """One PROBE record's detail, for the daemon's log line."""

    check: str  # its label (Check.label)
    tag: int  # the probe site's string-table tag
    count: int  # violations in the call
    value: int  # the offending value (-1: not known)
    limit: int
    detail: int  # aux (e.g. the canonical stride, the first bad call)
    step: int  # the writer's step at the violating call
    site: str = ""  # the site's name, where no record's tag gives it (a result read from device words)


@dataclass
class GroupProgress:
    """One process's progress in one process group: the hang detector's input."""

    size: int = -1
    group_rank: int = -1
    global_rank: int = -1
    last_enqueued: int = 0
    last_enqueued_ns: int = 0
    last_op: int = 0
    last_numel: int = -1  # elements of the last enqueued collective's tensors (-1: not known)
    last_dtype: int = 0  # its dtype (ringformat.COLLECTIVE_DTYPES; 0: not known)
    last_completed: int = 0
    last_completed_ns: int = 0
    durations_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # From the ring's device word (ringformat.DeviceWord.COLLECTIVE_ENTERED): the group's collectives
    # this rank's GPU stream has reached, eager or replayed from a CUDA graph (-1: no word).
    gpu_entered: int = -1

    def view(self) -> dict[str, Any]:
        return {"size": self.size, "group_rank": self.group_rank, "last_enqueued": self.last_enqueued,
                "last_completed": self.last_completed, "last_enqueued_ns": self.last_enqueued_ns,
                "last_completed_ns": self.last_completed_ns, "last_op": self.last_op,
                "gpu_entered": self.gpu_entered}


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
    # Probe results (persisted in the journal's ``extra`` column so counters stay monotonic).
    violations: dict[str, int] = field(default_factory=dict)
    probe_execs: int = 0
    batch: dict[str, int] = field(default_factory=dict)
    last_tokens: int = -1
    token_budget: int = -1
    headroom: dict[int, tuple[int, int]] = field(default_factory=dict)  # site tag -> (max index, num_pages)
    new_violations: list[Violation] = field(default_factory=list)  # since the last log line
    groups: dict[str, GroupProgress] = field(default_factory=dict)  # process-group name -> progress
    device_words: dict[int, str] = field(default_factory=dict)  # device counter index -> its group ("": not one)
    # Probe results the GPU published to device words: word index -> (site, device, field k of
    # ringformat.PROBE_WORDS); values: site -> device -> [calls, oob, offending, num_pages].
    probe_word_at: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    gpu_probes: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    reported: dict[int, list[int]] = field(default_factory=dict)  # site tag -> [calls, oob] the drain reported
    probe_words_settled: bool = False
    adapter_errors: dict[str, int] = field(default_factory=dict)  # framework adapter -> errors
    config_errors: int = 0  # bad values the hooks found in their environment config
    contained: int = 0  # page-table entries contain mode redirected to the reserved page
    mode: str = ""  # the probes' mode (ringformat.PROBE_MODES), from the header
    idle: bool | None = None  # the engine has no work (None: its adapter does not say), from the header
    crash_checked: bool = False  # a died process's fault record (coredump or crash) is settled
    bad_records: int = 0  # valid records whose values are out of bounds: refused, not applied

    def ingest(self, recs: np.ndarray, names: Callable[[int], str] | None = None) -> None:
        """Fold a batch of valid records in. Vectorised: no Python loop per record.

        ``names`` resolves string-table tags (the ring reader's); needed for collectives."""
        n = len(recs)
        if not n:
            return
        self.records += n
        self.last_seq = int(recs["seq"][-1])
        kinds = np.minimum(recs["kind"], MAX_KIND)  # unknown kinds land in the last bucket
        self.by_kind += np.bincount(kinds, minlength=MAX_KIND + 1)
        # Step durations for percentiles, columns only (no record copies). The first steps after
        # start-up (compilation, communicator set-up) would inflate them: skip them.
        durations = _step_durations(recs)
        if len(durations):
            self.step_ns = np.concatenate((self.step_ns, durations[-STEP_WINDOW:]))[-STEP_WINDOW:]
        self.last = np.concatenate((self.last, recs[-LAST_RECORDS:]))[-LAST_RECORDS:]
        self.dirty = True
        if self.by_kind[rf.Kind.PROBE] or self.by_kind[rf.Kind.CONTEXT]:
            self._ingest_probes(recs)
        if self.by_kind[rf.Kind.COLLECTIVE_ENQUEUE] and names is not None:
            self.bad_records += self._ingest_collectives(recs, names)
        if self.by_kind[rf.Kind.EVENT] and names is not None:
            errs = self._in_bounds(self._events(recs, rf.ADAPTER_ERROR_EVENT), "count")
            for tag, n in zip(errs["tag"].tolist(), errs["count"].tolist()):
                adapter = (names(tag) or "adapter:unknown").split(":", 1)[-1]
                self.adapter_errors[adapter] = self.adapter_errors.get(adapter, 0) + int(n)
        if self.by_kind[rf.Kind.EVENT]:
            cfg = self._in_bounds(self._events(recs, rf.CONFIG_ERROR_EVENT), "count")
            self.config_errors += int(cfg["count"].sum())
            held = self._in_bounds(self._events(recs, rf.CONTAINED_EVENT), "count")
            self.contained += int(held["count"].sum())

    def rebuild(self, recs: np.ndarray, names: Callable[[int], str]) -> None:
        """Restore derived context (last records, step times, collective progress) from records
        already counted before a daemon restart. Counters are left alone."""
        if not len(recs):
            return
        self.step_ns = _step_durations(recs)[-STEP_WINDOW:].astype(np.int64)
        self.last = recs[-LAST_RECORDS:].copy()
        self._ingest_collectives(recs, names)

    def apply_device_words(self, words: Any, names: Callable[[int], str]) -> None:
        """Read this process's device words (``ringformat.device_words`` of its ring) into its groups'
        ``gpu_entered`` and its probe sites' ``gpu_probes``. Plain loads of the ring's mapping: no
        CUDA, valid while the GPU hangs and after the process died."""
        for index in range(len(self.device_words), rf.DEVICE_WORDS):  # counters are assigned in order
            meaning, tag = rf.unpack_device_word_info(words[rf.DEVICE_WORDS + index])
            if meaning == 0:
                break
            if meaning in rf.PROBE_WORDS:
                name = names(tag) if tag else ""
                parts = name.split(":", 2)  # "probe:<device index>:<site>"
                if len(parts) == 3 and parts[0] == "probe" and parts[1].isdigit():
                    self.probe_word_at[index] = (parts[2], int(parts[1]), rf.PROBE_WORDS.index(meaning))
                elif tag and not name:
                    break  # its name is not readable yet: next poll
                self.device_words[index] = ""
                continue
            if meaning != rf.DeviceWord.COLLECTIVE_ENTERED:
                self.device_words[index] = ""  # a kind of counter this daemon does not know: skipped
                continue
            name = names(tag) if tag else ""
            if not name.startswith("pg:"):
                if tag:
                    break  # its name is not readable yet (written first, but seen out of order): next poll
                self.device_words[index] = ""  # no name at all: skipped
                continue
            for other, known in self.device_words.items():  # a group made again takes a new word
                if known == name[3:]:
                    self.device_words[other] = ""
            self.device_words[index] = name[3:]
        for index, name in self.device_words.items():
            g = self.groups.get(name)
            value = int(words[index])
            if g is not None and value != g.gpu_entered:
                g.gpu_entered = value
                self.dirty = True
        for index, (site, dev, k) in self.probe_word_at.items():
            value = int(words[index])
            value = value - (1 << 64) if value >= 1 << 63 else value  # int64 on the GPU
            self.gpu_probes.setdefault(site, {}).setdefault(dev, [0, 0, -1, 0])[k] = value

    def settle_probe_words(self, names: Callable[[int], str]) -> int:
        """Once the process is gone (no drain can report more): add what its GPU published to device
        words but its drain never reported, the results of the probes that ran just before a fault
        killed the CUDA context (or a SIGKILL the process). Returns the page-table violations added.
        Idempotent. Never counts twice; it can count short where a site's reports also came from
        the host (trap mode's eager calls, CPU tables under the same name) or from two devices, since
        those are compared as one total."""
        if self.probe_words_settled:
            return 0
        self.probe_words_settled = True
        by_site: dict[str, list[int]] = {}
        for tag, (calls, oob) in self.reported.items():
            got = by_site.setdefault(names(tag) if tag else "", [0, 0, tag])
            got[0] += calls
            got[1] += oob
        added = 0
        for site, devices in self.gpu_probes.items():
            calls = sum(v[0] for v in devices.values())
            oob = sum(v[1] for v in devices.values())
            rep_calls, rep_oob, tag = by_site.get(site, [0, 0, 0])
            if calls > rep_calls:
                self.probe_execs += calls - rep_calls
            if oob > rep_oob:
                delta = oob - rep_oob
                worst = max(devices.values(), key=lambda v: v[1])  # the device with the most
                self.violations["page_table_oob"] = self.violations.get("page_table_oob", 0) + delta
                if self.mode == "contain":  # the kernel redirected each of them, as the drain would have said
                    self.contained += delta
                self.new_violations.append(Violation("page_table_oob", tag, delta, worst[2], worst[3], -1, self.step,
                                                     site=site))
                added += delta
        if added or self.gpu_probes:
            self.dirty = True
        return added

    @staticmethod
    def _events(recs: np.ndarray, code: int) -> np.ndarray:
        """Sentinel's own EVENT records of ``code``, payload named."""
        return payload(recs[(recs["kind"] == rf.Kind.EVENT) & (recs["code"] == code)], rf.Kind.EVENT, code)

    def _in_bounds(self, recs: np.ndarray, column: str) -> np.ndarray:
        """``recs`` whose ``column`` is a count (0 <= v < MAX_COUNT); the others are counted as bad."""
        ok = (recs[column] >= 0) & (recs[column] < MAX_COUNT)
        if ok.all():
            return recs
        self.bad_records += int(len(ok) - ok.sum())
        return recs[ok]

    def _ingest_collectives(self, recs: np.ndarray, names: Callable[[int], str]) -> int:
        """Fold collective records into group progress. Returns how many were refused as bad."""
        kind = recs["kind"]
        coll = recs[(kind == rf.Kind.COLLECTIVE_ENQUEUE) | (kind == rf.Kind.COLLECTIVE_COMPLETE)]
        bad = 0
        if not len(coll):
            return bad
        for tag in np.unique(coll["tag"]).tolist():
            name = names(tag) or f"tag{tag}"
            name = name[3:] if name.startswith("pg:") else name
            g = self.groups.get(name)
            if g is None:
                g = self.groups[name] = GroupProgress()
            mine = coll[coll["tag"] == tag]
            enq = mine[mine["kind"] == rf.Kind.COLLECTIVE_ENQUEUE]
            info = payload(enq[enq["code"] == 0], rf.Kind.COLLECTIVE_ENQUEUE, 0)
            size, rank = info["group_size"], info["group_rank"]
            fits = (size >= 1) & (size <= MAX_GROUP_SIZE) & (rank >= 0) & (rank < size)
            if not fits.all():  # a size or rank no group has: not applied
                bad += int(len(fits) - fits.sum())
                info = info[fits]
            if len(info):
                last = info[-1]
                g.size, g.group_rank, g.global_rank = int(last["group_size"]), int(last["group_rank"]), int(last["global_rank"])
            ops = payload(enq[enq["code"] != 0], rf.Kind.COLLECTIVE_ENQUEUE)
            if len(ops):
                last = ops[-1]
                g.last_enqueued, g.last_enqueued_ns, g.last_op = int(last["collective_seq"]), int(last["ts_ns"]), int(last["code"])
                g.last_numel, g.last_dtype = int(last["numel"]), int(last["dtype"])
                g.group_rank = int(last["group_rank"])
            done = payload(mine[mine["kind"] == rf.Kind.COLLECTIVE_COMPLETE], rf.Kind.COLLECTIVE_COMPLETE)
            if len(done):
                last = done[-1]
                g.last_completed, g.last_completed_ns = int(last["collective_seq"]), int(last["ts_ns"])
                typical = done["duration_ns"][done["collective_seq"] > 1]  # the first collective sets up the communicator
                g.durations_ns = np.concatenate((g.durations_ns, typical[-STEP_WINDOW:]))[-STEP_WINDOW:]
        return bad

    def _ingest_probes(self, recs: np.ndarray) -> None:
        kind = recs["kind"]
        probes = self._in_bounds(payload(recs[kind == rf.Kind.PROBE], rf.Kind.PROBE), "count")
        if len(probes):
            counts = np.bincount(probes["code"], weights=probes["count"], minlength=len(rf.CHECK_LABELS) + 1)
            for code, n in enumerate(counts.tolist()):
                if n:
                    label = rf.CHECK_LABELS.get(code, "unknown")
                    self.violations[label] = self.violations.get(label, 0) + int(n)
            oob = probes[probes["code"] == rf.Check.PAGE_TABLE_OOB]
            for tag, n in zip(oob["tag"].tolist(), oob["count"].tolist()):  # per site, for settle_probe_words
                self.reported.setdefault(int(tag), [0, 0])[1] += int(n)
            # Keep the detail of the newest few for logs (the exporter only counts).
            for r in probes[-8:]:
                self.new_violations.append(Violation(
                    rf.CHECK_LABELS.get(int(r["code"]), "unknown"), int(r["tag"]), int(r["count"]), int(r["value"]),
                    int(r["limit"]), int(r["detail"]), int(r["step"])))
        ctx = recs[kind == rf.Kind.CONTEXT]
        if not len(ctx):
            return
        pk = self._in_bounds(payload(ctx[ctx["code"] == rf.Context.PAGED_KV], rf.Kind.CONTEXT, rf.Context.PAGED_KV),
                             "calls")
        if len(pk):
            self.probe_execs += int(pk["calls"].sum())
            for tag, n in zip(pk["tag"].tolist(), pk["calls"].tolist()):
                self.reported.setdefault(int(tag), [0, 0])[0] += int(n)
            tags, last_idx = np.unique(pk["tag"][::-1], return_index=True)
            for tag, i in zip(tags.tolist(), last_idx.tolist()):
                r = pk[len(pk) - 1 - i]
                if r["max_index"] >= 0 or tag not in self.headroom:
                    self.headroom[tag] = (int(r["max_index"]), int(r["num_pages"]))
        bt = payload(ctx[ctx["code"] == rf.Context.BATCH], rf.Kind.CONTEXT, rf.Context.BATCH)
        if len(bt):
            flags = bt["flags"]
            add = {
                "steps": len(bt),
                "at_token_budget": int(((flags & rf.BATCH_AT_BUDGET) != 0).sum()),
                "over_token_budget": int(((flags & rf.BATCH_OVER_BUDGET) != 0).sum()),
                "uncaptured_batch_size": int((((flags & rf.BATCH_GRAPH_KNOWN) != 0)
                                              & ((flags & rf.BATCH_GRAPH_HIT) == 0)).sum()),
            }
            for k, v in add.items():
                self.batch[k] = self.batch.get(k, 0) + v
            self.last_tokens = int(bt["num_tokens"][-1])
            self.token_budget = int(bt["token_budget"][-1])

    def min_headroom(self) -> tuple[int, int] | None:
        """(headroom pages, capacity) of the tightest probe site, from its latest window."""
        best = None
        for mx, cap in self.headroom.values():
            room = cap - 1 - mx
            if best is None or room < best[0]:
                best = (room, cap)
        return best

    def extra(self) -> dict[str, Any]:
        return {"violations": self.violations, "probe_execs": self.probe_execs, "batch": self.batch,
                "adapter_errors": self.adapter_errors, "crash_checked": self.crash_checked,
                "config_errors": self.config_errors, "contained": self.contained,
                "bad_records": self.bad_records, "reported": {str(k): v for k, v in self.reported.items()},
                "probe_words_settled": self.probe_words_settled}

    def load_extra(self, extra: dict[str, Any]) -> None:
        self.violations = {str(k): int(v) for k, v in dict(extra.get("violations", {})).items()}
        self.probe_execs = int(extra.get("probe_execs", 0))
        self.batch = {str(k): int(v) for k, v in dict(extra.get("batch", {})).items()}
        self.adapter_errors = {str(k): int(v) for k, v in dict(extra.get("adapter_errors", {})).items()}
        self.config_errors = int(extra.get("config_errors", 0))
        self.contained = int(extra.get("contained", 0))
        self.crash_checked = bool(extra.get("crash_checked", True))  # older journals: taken as settled
        self.bad_records = int(extra.get("bad_records", 0))
        self.reported = {int(k): [int(x) for x in v] for k, v in dict(extra.get("reported", {})).items()}
        # A journal from before the probe words knows nothing the drain reported: taken as settled,
        # so nothing is counted twice.
        self.probe_words_settled = bool(extra.get("probe_words_settled", "reported" not in extra))

    def apply_header(self, header: dict[str, Any]) -> None:
        identity = {k: header[k] for k in rf.IDENTITY_TEXT + rf.IDENTITY_INT}
        if identity != self.identity or header["step"] != self.step or header["dropped"] != self.dropped:
            self.dirty = True
        self.identity = identity
        self.created_ns = header["created_ns"]
        self.step = header["step"]
        self.last_step_ns = header["last_step_ns"]
        self.dropped = header["dropped"]
        mode = header.get("mode", 0)
        self.mode = rf.PROBE_MODES[mode] if 0 <= mode < len(rf.PROBE_MODES) else ""
        idle = header.get("idle", 0)
        self.idle = None if idle == 0 else idle > 1

    def step_p99_s(self) -> float | None:
        if len(self.step_ns) < 8:
            return None
        # Snapshots ask on every poll; step_ns is replaced (never mutated) when new steps arrive,
        # so its identity tells whether the cached percentile is still current.
        cached = self.__dict__.get("_p99")
        if cached is None or cached[0] is not self.step_ns:
            cached = self.__dict__["_p99"] = (self.step_ns, float(np.percentile(self.step_ns, 99)) / 1e9)
        return cached[1]

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k, v in enumerate(self.by_kind.tolist()):
            if v:
                name = rf.kind_name(k) if k < MAX_KIND else "unknown"
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
            bad_records=self.bad_records,
            dropped=self.dropped,
            kinds=self.kinds(),
            step_p99_s=self.step_p99_s(),
            ended_at=self.ended_at,
            violations=dict(self.violations),
            probe_execs=self.probe_execs,
            headroom=self.min_headroom(),
            batch=dict(self.batch),
            last_tokens=self.last_tokens,
            token_budget=self.token_budget,
            groups={name: g.view() for name, g in self.groups.items()},
            adapter_errors=dict(self.adapter_errors),
            config_errors=self.config_errors,
            contained=self.contained,
            mode=self.mode,
            idle=self.idle,
        )
