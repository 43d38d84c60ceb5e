"""Tensor-invariant probes: the checks a paged-attention kernel's inputs must pass.

Public API (re-exported by ``sentinel_hooks``): ``check_paged_kv``, ``check_strides``,
``note_batch``, ``configure``, ``SentinelViolation``.

- Shape and stride checks read tensor metadata only, on the host: no device work, no sync.
- Index checks run on the tensor's device. On CUDA they enqueue one fused kernel that folds into
  device accumulators (drained asynchronously, see device.py): no sync, capturable into a CUDA
  graph, counted on every replay. On CPU they are computed directly.
- ``trap`` mode (eager only) raises ``SentinelViolation`` before the kernel would run, after saving
  the evidence as JSON under SENTINEL_DIR/evidence/. It needs the values on the host, so on CUDA
  it syncs: it is a debugging mode, not a production one.
- ``contain`` mode redirects out-of-range indices to a reserved page, in place, and counts them.

Apart from ``SentinelViolation`` in trap mode, nothing here raises into the caller.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterable
from typing import Any

from . import device, layout, runtime
from . import ringformat as rf
from .config import INT32_MAX, MODES, PROBES, ProbeConfig, probe_config
from .device import Site
from .writer import FsPolicy

__all__ = [
    "SentinelViolation", "config", "configure", "check_paged_kv", "check_strides", "note_batch", "save_evidence",
]

_sites: dict[tuple[str, str], Site] = {}
_refused: set[str] = set()  # probe sites whose contain page was refused (logged and counted once)
_evidence_seq = itertools.count(1)


class SentinelViolation(RuntimeError):
    """Raised in ``trap`` mode: an invariant failed before the kernel ran."""

    def __init__(self, check: str, name: str, message: str, details: dict[str, Any], evidence: str | None) -> None:
        where = f" (evidence: {evidence})" if evidence else ""
        super().__init__(f"sentinel: {check} in {name}: {message}{where}")
        self.check = check
        self.name = name
        self.details = details
        self.evidence = evidence


def config() -> ProbeConfig:
    """This process's probe settings (``config.probe_config``)."""
    return probe_config()


def configure(*, mode: str | None = None, sample_every: int | None = None, checks: Iterable[str] | None = None,
              contain_page: int | None = None) -> ProbeConfig:
    """Override the environment's probe settings in-process. Raises ValueError on a bad value."""
    cfg = config()
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        cfg.mode = mode
        runtime.set_mode(mode)
    if sample_every is not None:
        if int(sample_every) < 1:
            raise ValueError("sample_every must be >= 1")
        cfg.sample_every = int(sample_every)
    if checks is not None:
        wanted = frozenset(checks)
        if wanted - set(PROBES):
            raise ValueError(f"unknown probes {sorted(wanted - set(PROBES))}; known: {PROBES}")
        cfg.enabled = wanted
    if contain_page is not None:
        if not 0 <= int(contain_page) <= INT32_MAX:
            raise ValueError(f"contain_page must be a page index from 0 to {INT32_MAX}, got {contain_page!r}")
        cfg.contain_page = int(contain_page)
    return cfg


def _contain(cfg: ProbeConfig, name: str, num_pages: int) -> bool:
    """Whether this call redirects bad indices. Only to a page inside the cache: a contain page past
    num_pages would turn an off-by-one into a far out-of-bounds read. Such a page is refused: the
    call observes instead, and the bad setting is logged and counted once per site."""
    if cfg.mode != "contain":
        return False
    if 0 <= cfg.contain_page < num_pages:
        return True
    key = f"contain-page:{name}"
    if key not in _refused:
        _refused.add(key)
        runtime.log_once(key, "SENTINEL_CONTAIN_PAGE=%d is not a page of %s's KV cache (%d pages): not redirecting "
                         "there, observing instead", cfg.contain_page, name, num_pages)
        runtime.count_config_error()
    return False


def _site(kind: str, name: str) -> Site:
    key = (kind, name)
    site = _sites.get(key)
    if site is None:
        site = _sites[key] = Site(name, kind)
    return site


def _sampled(cfg: ProbeConfig, site: Site, capturing: bool) -> bool:
    site.calls += 1
    return capturing or cfg.sample_every == 1 or (site.calls - 1) % cfg.sample_every == 0


def _host_probe(kind: str, name: str) -> ProbeConfig | None:
    """The config if this call of a host-side probe is enabled and sampled, else None."""
    cfg = config()
    if kind not in cfg.enabled:
        return None
    return cfg if _sampled(cfg, _site(kind, name), False) else None


def _capturing(torch: Any, tensor: Any) -> bool:
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def _violation(w: Any, cfg: ProbeConfig, check: rf.Check, name: str, a: int, b: int, c: int, aux: int,
               message: str, details: dict[str, Any], evidence: dict[str, Any] | None = None,
               capturing: bool = False) -> None:
    w.emit(rf.Kind.PROBE, check, a, b, c, w.intern(name), aux & 0xFFFFFFFF)
    if cfg.mode == "trap" and not capturing:
        path = save_evidence(check.label, name, {**details, **(evidence or {})})
        raise SentinelViolation(check.label, name, message, details, path)


# -- check_paged_kv ----------------------------------------------------------------------------------

def check_paged_kv(page_table: Any, num_pages: int, *, seq_lens: Any = None, page_size: int | None = None,
                   batch_size: int | None = None, cu_seqlens_q: Any = None, allocator_capacity: int | None = None,
                   name: str = "paged_kv") -> None:
    """Check a paged-KV page table against the KV cache it indexes.

    ``num_pages`` is the real buffer's capacity (pages it holds); every index the kernel reads
    must lie in ``[0, num_pages)``. With ``seq_lens`` and ``page_size``, a row's readable prefix
    is ``ceil(seq_lens[i] / page_size)`` pages; entries past it are checked and reported apart
    (``page_table_trailing_oob``). ``batch_size`` (a host int) must equal the table's rows,
    ``seq_lens.shape[0]`` and ``cu_seqlens_q.shape[0] - 1``. ``allocator_capacity`` (the pages
    the allocator may hand out) must not exceed ``num_pages``.
    """
    try:
        cfg = config()
        if "paged_kv" not in cfg.enabled:
            return
        import torch

        site = _site("paged_kv", name)
        capturing = _capturing(torch, page_table)
        if not _sampled(cfg, site, capturing):
            return
        w = runtime.writer()
        num_pages = int(num_pages)
        _check_batch(w, cfg, name, page_table, seq_lens, cu_seqlens_q, batch_size, capturing)
        if allocator_capacity is not None and int(allocator_capacity) > num_pages:
            _violation(w, cfg, rf.Check.CAPACITY_MISMATCH, name, 1, int(allocator_capacity), num_pages, 0,
                       f"allocator capacity {int(allocator_capacity)} pages exceeds the buffer's {num_pages}",
                       {"allocator_capacity": int(allocator_capacity), "num_pages": num_pages}, capturing=capturing)
        if page_table.dim() != 2:
            runtime.log_once("pt-dim:" + name, "check_paged_kv(%s): page_table must be 2-D, got %d-D; skipped",
                             name, page_table.dim())
            return
        contain = _contain(cfg, name, num_pages)
        if page_table.is_cuda and not (cfg.mode == "trap" and not capturing):
            device.note_num_pages(site, num_pages)
            device.launch_paged_kv(torch, site, page_table, num_pages, seq_lens, page_size, cu_seqlens_q,
                                   contain, cfg.contain_page)
            return
        _paged_kv_direct(torch, w, cfg, name, page_table, num_pages, seq_lens, page_size, cu_seqlens_q, contain)
    except SentinelViolation:
        raise
    except Exception as exc:
        runtime.failed("check_paged_kv", exc)


def _offending_length(torch: Any, seq_lens: Any, limit: int, cu_seqlens_q: Any) -> int:
    """The first invalid length (a negative or too-long seq_lens entry, else the cu_seqlens_q entry
    where it starts wrong or goes down), for the record and the daemon's log line; -1 if none is
    found. Host work on the violation path only (CPU, or trap mode, which syncs anyway)."""
    if seq_lens is not None:
        bad = (seq_lens < 0) | (seq_lens > limit) if limit else seq_lens < 0
        if bool(bad.any()):
            return int(seq_lens[bad][0])
    if cu_seqlens_q is not None and cu_seqlens_q.numel():
        if int(cu_seqlens_q[0]) != 0:
            return int(cu_seqlens_q[0])
        down = torch.nonzero(cu_seqlens_q[1:] < cu_seqlens_q[:-1])
        if down.numel():
            return int(cu_seqlens_q[int(down[0, 0]) + 1])
    return -1


def _paged_kv_direct(torch: Any, w: Any, cfg: ProbeConfig, name: str, page_table: Any, num_pages: int,
                     seq_lens: Any, page_size: int | None, cu_seqlens_q: Any, contain: bool) -> None:
    """CPU (and trap mode): compute now, write records now."""
    s = device.paged_kv_stats(torch, page_table, num_pages, seq_lens, page_size, cu_seqlens_q)
    oob, trail, mx, badmax, badmin, seqbad = (int(x) for x in torch.stack(
        [s["oob"], s["trail"], s["max"], s["badmax"], s["badmin"], s["seqbad"]]).tolist())
    badval = device.offending_index(badmax, badmin, num_pages)
    tag = w.intern(name)
    w.emit(rf.Kind.CONTEXT, rf.Context.PAGED_KV, mx, num_pages, 1, tag, page_table.shape[0])
    evidence = None
    if oob or trail or seqbad:
        evidence = {"page_table": page_table, "seq_lens": seq_lens, "cu_seqlens_q": cu_seqlens_q,
                    "page_size": page_size, "num_pages": num_pages}
    if contain and oob:
        page_table.masked_fill_(s["bad_mask"], cfg.contain_page)
        w.emit(rf.Kind.EVENT, rf.CONTAINED_EVENT, oob, 0, 0, tag)
    if oob:
        _violation(w, cfg, rf.Check.PAGE_TABLE_OOB, name, oob, badval, num_pages, 0,
                   f"{oob} page index(es) outside [0, {num_pages}) in the region the kernel reads "
                   f"(largest offending index {badval})",
                   {"violations": oob, "max_offending_index": badval, "num_pages": num_pages,
                    "headroom": num_pages - 1 - mx}, evidence)
    if trail:
        _violation(w, cfg, rf.Check.PAGE_TABLE_TRAILING_OOB, name, trail, -1, num_pages, 0,
                   f"{trail} page-table entries past the rows' valid prefix lie outside [0, {num_pages})",
                   {"violations": trail, "num_pages": num_pages}, evidence)
    if seqbad:
        limit = page_table.shape[1] * (page_size or 0)
        _violation(w, cfg, rf.Check.SEQLENS_INVALID, name, seqbad,
                   _offending_length(torch, seq_lens, limit, cu_seqlens_q), limit, 0,
                   f"{seqbad} invalid seq_lens / cu_seqlens_q entries (negative, non-monotone, or over "
                   f"{limit} tokens = pages per row x page_size)",
                   {"violations": seqbad, "max_tokens_per_row": limit}, evidence)


def _check_batch(w: Any, cfg: ProbeConfig, name: str, page_table: Any, seq_lens: Any, cu_seqlens_q: Any,
                 batch_size: Any, capturing: bool) -> None:
    """Seed 001: every view of the batch must agree. Shapes only: host metadata, no sync."""
    dims = [("page_table.shape[0]", int(page_table.shape[0]))]
    if seq_lens is not None:
        dims.append(("seq_lens.shape[0]", int(seq_lens.shape[0])))
    if cu_seqlens_q is not None:
        dims.append(("cu_seqlens_q.shape[0] - 1", int(cu_seqlens_q.shape[0]) - 1))
    if isinstance(batch_size, int):
        ref_name, ref = "batch_size", batch_size
    else:
        ref_name, ref = dims[0]
    for i, (dim_name, value) in enumerate(dims):
        if value != ref:
            _violation(w, cfg, rf.Check.BATCH_MISMATCH, name, 1, ref, value, i,
                       f"{ref_name} = {ref} but {dim_name} = {value}: the kernel would read rows the metadata "
                       "was not built for",
                       {ref_name: ref, dim_name: value, "dims": dict(dims)},
                       {"page_table": page_table, "seq_lens": seq_lens, "cu_seqlens_q": cu_seqlens_q},
                       capturing=capturing)
            return


# -- check_strides -----------------------------------------------------------------------------------

def check_strides(tensor: Any, *, name: str = "tensor", tma: bool = True) -> None:
    """Seed 002: size-1 dims must have their canonical stride; with ``tma``, every stride but the
    innermost must be a multiple of 16 bytes, the innermost dim contiguous, the base 16-byte
    aligned. Reads metadata only (no device work), so it is free under any mode."""
    try:
        cfg = _host_probe("strides", name)
        if cfg is None:
            return
        shape, strides = tuple(tensor.shape), tuple(tensor.stride())
        itemsize = tensor.element_size()
        w = None
        nd = len(shape)
        for d in range(nd):
            if shape[d] != 1:
                continue
            canonical = strides[d + 1] * shape[d + 1] if d + 1 < nd else 1
            if strides[d] != canonical:
                w = w or runtime.writer()
                _violation(w, cfg, rf.Check.DEGENERATE_STRIDE, name, 1, d, strides[d], canonical,
                           f"dim {d} has size 1 and stride {strides[d]}, canonical {canonical} "
                           f"(shape {list(shape)}, strides {list(strides)})",
                           {"dim": d, "stride": strides[d], "canonical": canonical, "shape": list(shape),
                            "strides": list(strides)})
        if not tma or nd == 0:
            return
        for d in range(nd - 1):
            if (strides[d] * itemsize) % 16:
                w = w or runtime.writer()
                _violation(w, cfg, rf.Check.TMA_MISALIGNED, name, 1, d, strides[d] * itemsize, 16,
                           f"dim {d} stride is {strides[d] * itemsize} bytes, not a multiple of 16 (TMA); "
                           f"shape {list(shape)}, strides {list(strides)}, itemsize {itemsize}",
                           {"dim": d, "stride_bytes": strides[d] * itemsize, "shape": list(shape),
                            "strides": list(strides), "itemsize": itemsize})
                break
        if strides[-1] != 1 and shape[-1] != 1:
            w = w or runtime.writer()
            _violation(w, cfg, rf.Check.TMA_MISALIGNED, name, 1, nd - 1, strides[-1] * itemsize, 16,
                       f"innermost dim has stride {strides[-1]}, TMA needs it contiguous",
                       {"dim": nd - 1, "stride": strides[-1], "shape": list(shape), "strides": list(strides)})
        ptr_mod = tensor.data_ptr() % 16
        if ptr_mod:
            w = w or runtime.writer()
            _violation(w, cfg, rf.Check.TMA_MISALIGNED, name, 1, -1, ptr_mod, 16,
                       f"base address is {ptr_mod} bytes past a 16-byte boundary (TMA needs 16-byte alignment)",
                       {"dim": -1, "address_mod_16": ptr_mod, "shape": list(shape)})
    except SentinelViolation:
        raise
    except Exception as exc:
        runtime.failed("check_strides", exc)


# -- note_batch --------------------------------------------------------------------------------------

def note_batch(num_tokens: int, *, token_budget: int | None = None, graph_sizes: Iterable[int] | None = None,
               batch_size: int | None = None, name: str = "batch") -> None:
    """Seed 003: record a step's shape context (tokens against the budget; whether the batch size
    is one the engine captured a graph for). Context for correlating faults, never a violation."""
    try:
        if _host_probe("batch", name) is None:
            return
        n = int(num_tokens)
        flags = 0
        if token_budget is not None:
            if n == token_budget:
                flags |= rf.BATCH_AT_BUDGET
            elif n > token_budget:
                flags |= rf.BATCH_OVER_BUDGET
        size = n if batch_size is None else int(batch_size)
        if graph_sizes is not None:  # membership on the engine's own list: it may grow in place
            flags |= rf.BATCH_GRAPH_KNOWN | (rf.BATCH_GRAPH_HIT if size in graph_sizes else 0)
        w = runtime.writer()
        w.emit(rf.Kind.CONTEXT, rf.Context.BATCH, n, -1 if token_budget is None else int(token_budget), flags,
               w.intern(name), size & 0xFFFFFFFF)
    except Exception as exc:
        runtime.failed("note_batch", exc)


# -- evidence ----------------------------------------------------------------------------------------

def save_evidence(check: str, name: str, details: dict[str, Any]) -> str | None:
    """Write what a trap saw as JSON (never pickle) under SENTINEL_DIR/evidence/. Returns the path."""
    try:
        folder = layout.evidence_dir()
        policy = FsPolicy.from_env()
        policy.make_dirs(folder)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:64]
        stamp = time.strftime("%Y%m%dT%H%M%S")
        path = os.path.join(folder, f"{stamp}-{os.getpid()}-{next(_evidence_seq)}-{check}-{safe}.json")
        doc = {"check": check, "name": name, "pid": os.getpid(), "time": time.time(),
               **{k: _jsonable(v) for k, v in details.items()}}
        fd = policy.create_file(path, os.O_WRONLY | os.O_EXCL)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        return path
    except Exception as exc:
        runtime.failed("save_evidence", exc)
        return None


def _jsonable(v: Any) -> Any:
    if hasattr(v, "detach") and hasattr(v, "tolist"):  # a tensor: shape, dtype, strides, values
        t = v.detach()
        return {"shape": list(t.shape), "dtype": str(t.dtype), "stride": list(t.stride()),
                "device": str(t.device), "values": t.cpu().tolist()}
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v
