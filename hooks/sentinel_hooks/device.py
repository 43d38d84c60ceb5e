"""Device-side probe state: accumulators on the GPU, drained to the ring by a background thread.

The serving thread only enqueues work (one fused Triton kernel per probed call, which also publishes
the site's summary to its device words; a handful of torch ops where Triton is missing). It never
waits on the GPU. A drain thread copies the accumulators to pinned host memory on a side stream,
polls an event without blocking, and writes the deltas to the ring as PROBE and CONTEXT records. The
device words (mapped.py) carry the same facts when the drain never gets to: a fault in the step's
next kernel kills the CUDA context before the copy, but the words, written by the GPU into the ring
file's page, are already there for the daemon (``ProcessState.settle_probe_words``).

CUDA graph capture forbids many CUDA calls from *any* thread while a capture runs. The drain thread
therefore pauses during captures: capture_begin/capture_end of torch.cuda.CUDAGraph are wrapped to
hold it off.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from . import ringformat as rf
from . import runtime
from .config import probe_config
from .runtime import triton_available
from .slots import INITIAL, INT64_MAX, MAX_SITES, NFIELDS, NPROG, Slot, reduce_slots

__all__ = [
    "CALLS", "OOB", "TRAIL", "MAXIDX", "SEQBAD", "FIRST_BAD_CALL", "BADMAX", "BADMIN", "MAX_HOLD", "Site",
    "Slab", "triton_available", "slab_row", "prepare", "launch_paged_kv", "paged_kv_stats", "offending_index",
    "Drain", "note_num_pages", "flush", "capturing_graph",
]

# The accumulator layout (offsets, initial values, reductions) is slots.py's.
CALLS, OOB, TRAIL, MAXIDX, SEQBAD, FIRST_BAD_CALL, BADMAX, BADMIN = Slot
MAX_HOLD = 8  # drains a row may be held back in a row for a kernel caught half-way

_lock = threading.Lock()  # held by the drain tick and by capture_begin: they never overlap
_capturing = 0
_graphs: dict[int, list[Any]] = {}  # thread id -> the CUDAGraphs it is capturing (collectives.py keeps state on them)
_slabs: dict[int, Slab] = {}
_drain: Drain | None = None


class Site:
    """A probe call site (a name). On CUDA it owns one accumulator row per device."""

    __slots__ = ("name", "calls", "rows", "views", "words", "tickets", "kind", "contain")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.calls = 0
        self.contain = False  # the last launch redirected bad indices (contain mode): its OOB count is contained
        self.rows: dict[int, int] = {}  # device index -> slab row
        self.views: dict[int, Any] = {}  # device index -> the row's tensor view, made once
        self.words: dict[int, Any] = {}  # device index -> its 4 probe words (ringformat.PROBE_WORDS), or None
        self.tickets: dict[int, Any] = {}  # device index -> its publish ticket (kernels._paged_kv_probe)


class Slab:
    """All accumulators of one device in one tensor, so a drain is one async copy."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.device = device
        self.index = device.index
        side = torch.cuda.Stream(device=device)
        # Allocate and initialise off the capturing stream, so a first call inside a graph
        # capture does not bake the initialisation into the graph.
        with torch.cuda.stream(side):  # fills from scalars: no host-to-device copy, no sync
            self.acc = torch.zeros((MAX_SITES, NPROG, NFIELDS), dtype=torch.int64, device=device)
            # Per site, the probe programs that have finished: the last of a launch publishes.
            self.tickets = torch.zeros((MAX_SITES, 1), dtype=torch.int64, device=device)
            for f, initial in enumerate(INITIAL):
                if initial:
                    self.acc[:, :, f].fill_(initial)
        self.side = side
        self.host = None  # pinned buffer, made by the drain thread (outside any capture)
        self.event = None
        self.pending = False
        self.sites: list[Site] = []
        self.prev: list[list[int]] = []  # per site, the reduced counters at the last drain
        self.held: list[int] = []  # per site, drains held back in a row (see _emit_deltas)


def slab_row(torch: Any, site: Site, device: Any) -> Any | None:
    """The accumulator row of ``site`` on ``device`` (a view), allocating on first use."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    view = site.views.get(idx)
    if view is not None:
        return view  # the steady state: no new tensor object per call
    with _lock:
        slab = _slabs.get(idx)
        if slab is None:
            if torch.cuda.is_current_stream_capturing():
                # Creating device memory and streams inside a capture can invalidate the host's
                # capture. Skip (counted) and say how to avoid it: one eager probed step first.
                runtime.log_once(
                    "capture-first",
                    "first CUDA probe call came inside a CUDA graph capture; that graph is not probed. "
                    "Run one eager probed step (or sentinel_hooks.prepare_cuda()) before capturing",
                )
                runtime.writer().note_dropped()
                return None
            slab = _slabs[idx] = Slab(torch, torch.device("cuda", idx))
            torch.cuda.current_stream(slab.device).wait_stream(slab.side)  # init before first use
        if len(slab.sites) >= MAX_SITES:
            runtime.log_once("sites", "more than %d probe sites on one device; extra sites are not checked", MAX_SITES)
            return None
        row = len(slab.sites)
        slab.sites.append(site)
        slab.prev.append(list(INITIAL))
        slab.held.append(0)
        site.rows[idx] = row
        site.views[idx] = slab.acc[row]
        site.tickets[idx] = slab.tickets[row]
        site.words[idx] = _probe_words(torch, site, slab.device)
    _ensure_drain(torch)
    return site.views[idx]


def _probe_words(torch: Any, site: Site, device: Any) -> Any | None:
    """The site's four probe words on ``device`` (a view of device words), assigned once, outside any
    capture; None without device words (then a fault that kills the context can lose the step's
    result: the drain had not copied it yet)."""
    if site.name == PREPARE_SITE:
        return None  # prepare() only sets the device up: no words for it
    if torch.cuda.is_current_stream_capturing():
        runtime.log_once(f"probe-words-capture:{site.name}", "probe site %s first ran inside a CUDA graph capture: "
                         "its results are not published to device words (a fault can lose them)", site.name)
        return None
    from . import mapped

    try:
        words = mapped.words(torch)
        if words is None:
            return None
        first = words.assign_block(tuple(rf.PROBE_WORDS), f"probe:{device.index}:{site.name}")
        return words.view(first, device, len(rf.PROBE_WORDS)) if first >= 0 else None
    except Exception as exc:
        runtime.failed("probe words", exc)
        return None


def prepare(torch: Any, device: Any = None) -> None:
    """Create the accumulators for ``device`` now (outside any CUDA graph capture)."""
    dev = torch.device("cuda", torch.cuda.current_device() if device is None else torch.device(device).index or 0)
    slab_row(torch, _prepare_site, dev)
    from . import mapped

    mapped.words(torch)  # the device words too, outside any capture


def launch_paged_kv(torch: Any, site: Site, page_table: Any, num_pages: int, seq_lens: Any, page_size: int | None,
                    cu_seqlens_q: Any, contain: bool, contain_page: int) -> None:
    """Enqueue one call's paged-KV checks on the table's device (the fused Triton kernel, else torch
    ops), never waiting on the GPU. ``page_table``: 2-D integer (rows, cols) on CUDA; ``seq_lens`` (rows,)
    in tokens; ``cu_seqlens_q`` (rows + 1,). ``contain`` rewrites bad entries to ``contain_page`` in
    place. A no-op when the site gets no accumulator row; errors propagate to the caller."""
    dev = page_table.device
    row = slab_row(torch, site, dev)
    if row is None:
        return
    site.contain = contain
    words = site.words.get(dev.index)
    if triton_available():
        from .kernels import launch_paged_kv as launch

        launch(page_table, num_pages, seq_lens, page_size, cu_seqlens_q, row, contain_page, contain,
               *((words, site.tickets[dev.index]) if words is not None and PUBLISH else ()))
        return
    _torch_paged_kv(torch, row, page_table, num_pages, seq_lens, page_size, cu_seqlens_q, contain, contain_page)
    if words is not None and PUBLISH:
        _torch_publish(torch, row, words, num_pages)


PREPARE_SITE = "_prepare"
_prepare_site = Site(PREPARE_SITE, "paged_kv")  # one row per device, however often prepare() is called

# Publish each probe's summary to its device words (the probe kernel's last program does). A switch
# for the benchmark, which measures the cost of that write alone (bench/gpu_probes.py).
PUBLISH = True


def paged_kv_stats(torch: Any, page_table: Any, num_pages: int, seq_lens: Any, page_size: int | None,
                   cu_seqlens_q: Any) -> dict[str, Any]:
    """The paged-KV invariants with torch ops, as 0-dim tensors on the table's device.

    The reference semantics (the Triton kernel computes the same), the CPU path, and the
    fallback on CUDA without Triton.
    """
    v = page_table.long()
    n_rows, n_cols = v.shape
    bad = (v < 0) | (v >= num_pages)
    if seq_lens is not None and page_size:
        sl = seq_lens.long()
        n_seq = min(sl.shape[0], n_rows)
        cols = torch.arange(n_cols, device=v.device)
        # Rows past the end of seq_lens have no valid prefix: all their entries count as trailing.
        valid = torch.zeros_like(bad)
        valid[:n_seq] = cols.unsqueeze(0) * page_size < sl[:n_seq].unsqueeze(1)
        seqbad = ((sl < 0) | (sl > n_cols * page_size)).sum()
    elif seq_lens is not None:
        valid = torch.ones_like(bad)
        seqbad = (seq_lens < 0).sum()
    else:
        valid = torch.ones_like(bad)
        seqbad = torch.zeros((), dtype=torch.int64, device=v.device)
    if cu_seqlens_q is not None and cu_seqlens_q.shape[0] > 0:
        cu = cu_seqlens_q.long()
        # One count per entry i: cu[i+1] < cu[i], or (for i == 0) cu[0] != 0.
        bad_cu = torch.zeros(cu.shape[0], dtype=torch.bool, device=cu.device)
        bad_cu[:-1] = cu[1:] < cu[:-1]
        bad_cu[0] |= cu[0] != 0
        seqbad = seqbad + bad_cu.sum()
    bv = bad & valid
    neg1 = torch.full((), -1, dtype=torch.int64, device=v.device)
    big = torch.full((), INT64_MAX, dtype=torch.int64, device=v.device)
    return {
        "oob": bv.sum(),
        "trail": (bad & ~valid).sum(),
        "max": torch.where(valid, v, neg1).max().clamp(min=-1) if v.numel() else neg1,  # -1: none read
        "badmax": torch.where(bv, v, neg1).max().clamp(min=-1) if v.numel() else neg1,
        "badmin": torch.where(bv, v, big).min() if v.numel() else big,
        "seqbad": seqbad,
        "bad_mask": bv,
    }


def offending_index(badmax: int, badmin: int, num_pages: int) -> int:
    """The offending index to report: the largest past the end, else the most negative."""
    return badmax if badmax >= num_pages else (badmin if badmin < 0 else badmax)


def _torch_paged_kv(torch: Any, row: Any, page_table: Any, num_pages: int, seq_lens: Any, page_size: int | None,
                    cu_seqlens_q: Any, contain: bool, contain_page: int) -> None:
    s = paged_kv_stats(torch, page_table, num_pages, seq_lens, page_size, cu_seqlens_q)
    slot = row[0]  # the fallback uses the first program's slot only; the others stay neutral
    first = torch.where(s["oob"] > 0, torch.minimum(slot[FIRST_BAD_CALL], slot[CALLS]), slot[FIRST_BAD_CALL])
    slot[FIRST_BAD_CALL:FIRST_BAD_CALL + 1].copy_(first)
    slot[CALLS:CALLS + 1].add_(1)
    slot[OOB:OOB + 1].add_(s["oob"])
    slot[TRAIL:TRAIL + 1].add_(s["trail"])
    slot[MAXIDX:MAXIDX + 1].copy_(s["max"])  # the latest call's (see kernels.py)
    slot[SEQBAD:SEQBAD + 1].add_(s["seqbad"])
    torch.maximum(slot[BADMAX:BADMAX + 1], s["badmax"], out=slot[BADMAX:BADMAX + 1])
    torch.minimum(slot[BADMIN:BADMIN + 1], s["badmin"], out=slot[BADMIN:BADMIN + 1])
    if contain:
        page_table.masked_fill_(s["bad_mask"], contain_page)


def _torch_publish(torch: Any, row: Any, words: Any, num_pages: int) -> None:
    """The probe kernel's publish with torch ops (CUDA without Triton): the row folded, four words
    written."""
    badmax, badmin = row[:, BADMAX].max(), row[:, BADMIN].min()
    n = torch.full((), int(num_pages), dtype=torch.int64, device=row.device)
    offending = torch.where(badmax >= n, badmax, torch.where(badmin < 0, badmin, badmax))
    words.copy_(torch.stack((row[:, CALLS].max(), row[:, OOB].sum(), offending, n)))


# -- capture guard ---------------------------------------------------------------------------------

def _install_capture_guard(torch: Any) -> None:
    global _capturing
    cls = torch.cuda.CUDAGraph
    if getattr(cls, "_sentinel_guarded", False):
        return
    begin, end = cls.capture_begin, cls.capture_end

    def capture_begin(self: Any, *args: Any, **kwargs: Any) -> Any:
        global _capturing
        with _lock:  # waits for an in-flight drain tick (sub-millisecond), then holds drains off
            _capturing += 1
            _graphs.setdefault(threading.get_ident(), []).append(self)
        # A graph captured again (after reset()) starts with no collectives of its own.
        self.__dict__.pop("_sentinel_collectives", None)
        try:
            return begin(self, *args, **kwargs)
        except BaseException:
            _release_capture(self)
            raise

    def capture_end(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return end(self, *args, **kwargs)
        finally:
            _release_capture(self)

    cls.capture_begin, cls.capture_end = capture_begin, capture_end
    cls._sentinel_guarded = True
    if torch.cuda.is_current_stream_capturing():
        _capturing += 1  # we were armed inside a capture: its capture_end will release it


def _release_capture(graph: Any) -> None:
    global _capturing
    with _lock:
        _capturing = max(0, _capturing - 1)
        mine = _graphs.get(threading.get_ident(), [])
        if graph in mine:
            mine.remove(graph)


def capturing_graph() -> Any | None:
    """The torch.cuda.CUDAGraph this thread began capturing last and has not ended (None: none, or a
    capture begun before the guard was installed)."""
    mine = _graphs.get(threading.get_ident())
    return mine[-1] if mine else None


# -- drain -----------------------------------------------------------------------------------------

class Drain(threading.Thread):
    """The daemon thread that, every ``interval_s`` seconds (SENTINEL_DRAIN_MS / 1000), copies each
    device's accumulators to the host and writes the deltas to the ring; paused during CUDA graph
    captures. A failed tick is counted (``runtime.failed``), never raised."""

    def __init__(self, torch: Any, interval_s: float) -> None:
        super().__init__(name="sentinel-drain", daemon=True)
        self.torch = torch
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.ticks = 0

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:
                runtime.failed("drain", exc)

    def tick(self, wait: bool = False) -> None:
        """Write out completed copies and start new ones. ``wait`` blocks (exit and tests only)."""
        torch = self.torch
        with _lock:
            if _capturing:
                return
            for slab in list(_slabs.values()):
                with torch.cuda.device(slab.index):
                    if slab.host is None:
                        slab.host = torch.empty(slab.acc.shape, dtype=torch.int64, pin_memory=True)
                        slab.event = torch.cuda.Event()
                    if slab.pending and (wait or slab.event.query()):
                        slab.event.synchronize()
                        _emit_deltas(slab, slab.host.tolist())
                        slab.pending = False
                    if not slab.pending:
                        if wait:  # a flush must see what this thread enqueued so far
                            slab.side.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(slab.side):
                            slab.host.copy_(slab.acc, non_blocking=True)
                            slab.event.record(slab.side)
                        slab.pending = True
                    if wait:
                        slab.event.synchronize()
                        _emit_deltas(slab, slab.host.tolist())
                        slab.pending = False
            self.ticks += 1


def _emit_deltas(slab: Slab, values: list[list[list[int]]]) -> None:
    w = runtime.writer()
    fused = triton_available()  # the Triton kernel writes every program's slot; the torch fallback slot 0 only
    for row, site in enumerate(slab.sites):
        slots = values[row]
        if fused and len({s[CALLS] for s in slots}) > 1 and slab.held[row] < MAX_HOLD:
            # The periodic copy does not wait for the serving stream (no sync): it caught a probe
            # kernel with some programs done and some not. Hold the row back until every program
            # has counted the same calls: its counters and the latest call's max are whole then.
            # (Never for long: launches of one site racing on two streams could keep them apart.)
            slab.held[row] += 1
            continue
        if slab.held[row] >= MAX_HOLD:
            runtime.log_once(f"held:{site.name}", "probe site %s: its kernel programs disagree on the calls "
                             "counted for %d drains in a row (launched on two streams at once?); reporting anyway",
                             site.name, MAX_HOLD)
        slab.held[row] = 0
        cur, prev = reduce_slots(slots), slab.prev[row]
        execs = cur[CALLS] - prev[CALLS]
        if execs <= 0:
            continue
        tag = w.intern(site.name)
        num_pages = _num_pages.get(site.name, 0)
        w.emit(rf.Kind.CONTEXT, rf.Context.PAGED_KV, cur[MAXIDX], num_pages, execs, tag, 0)
        for check, field in ((rf.Check.PAGE_TABLE_OOB, OOB), (rf.Check.PAGE_TABLE_TRAILING_OOB, TRAIL),
                             (rf.Check.SEQLENS_INVALID, SEQBAD)):
            delta = cur[field] - prev[field]
            if delta > 0:
                offending = offending_index(cur[BADMAX], cur[BADMIN], num_pages) if field == OOB else -1
                first = cur[FIRST_BAD_CALL] if field == OOB else -1
                w.emit(rf.Kind.PROBE, check, delta, offending, num_pages, tag, min(first, 0xFFFFFFFF) & 0xFFFFFFFF)
                if field == OOB and site.contain:  # the kernel redirected each of them
                    w.emit(rf.Kind.EVENT, rf.CONTAINED_EVENT, delta, 0, 0, tag)
        slab.prev[row] = cur


_num_pages: dict[str, int] = {}  # last num_pages per site, for CONTEXT records from the drain


def note_num_pages(site: Site, num_pages: int) -> None:
    """Remember ``num_pages`` for ``site`` (by name): the drain's PAGED_KV context and probe records
    report it."""
    _num_pages[site.name] = num_pages


def _ensure_drain(torch: Any) -> None:
    global _drain
    if _drain is not None:
        return
    _install_capture_guard(torch)
    _drain = Drain(torch, probe_config().drain_ms / 1000.0)
    _drain.start()
    import atexit

    atexit.register(flush)


def flush(timeout_s: float = 2.0) -> None:
    """Drain everything now, waiting for the copies (process exit, tests). Never raises."""
    d = _drain
    if d is None:
        return
    try:
        t0 = time.monotonic()
        while _capturing and time.monotonic() - t0 < timeout_s:
            time.sleep(0.01)
        d.tick(wait=True)
    except Exception as exc:
        runtime.failed("flush", exc)
