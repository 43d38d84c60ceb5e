"""The fused paged-KV probe: one Triton kernel per probed step, capturable into CUDA graphs.

It reads the page table (and seq_lens / cu_seqlens_q) once and folds the results into the site's
small int64 accumulator on the device, without atomics. Nothing comes back to the host here: the
drain thread copies the accumulators out asynchronously, and a one-program kernel right after
(``_publish``) writes the site's summary into its device words, where a fault in the step's next
kernel cannot lose it. Imported only when CUDA and Triton are present.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .slots import INT64_MAX as _INT64_MAX
from .slots import NFIELDS as _NFIELDS
from .slots import NPROG, Slot

__all__ = [
    "INT64_MAX", "NFIELDS", "CALLS", "OOB", "TRAIL", "MAXIDX", "SEQBAD", "FIRST_BAD_CALL", "BADMAX", "BADMIN",
    "BLOCK", "launch_paged_kv", "launch_publish", "launch_bump",
]

# A slot's counters and their offsets are slots.py's. Compiled kernels may not read plain globals:
# each offset is a constexpr here.
INT64_MAX = tl.constexpr(_INT64_MAX)
NFIELDS = tl.constexpr(_NFIELDS)
CALLS = tl.constexpr(int(Slot.CALLS))
OOB = tl.constexpr(int(Slot.OOB))
TRAIL = tl.constexpr(int(Slot.TRAIL))
MAXIDX = tl.constexpr(int(Slot.MAXIDX))
SEQBAD = tl.constexpr(int(Slot.SEQBAD))
FIRST_BAD_CALL = tl.constexpr(int(Slot.FIRST_BAD_CALL))
BADMAX = tl.constexpr(int(Slot.BADMAX))
BADMIN = tl.constexpr(int(Slot.BADMIN))
BLOCK = 1024


@triton.jit
def _paged_kv_probe(
    pt_ptr, stride_r, stride_c, n_rows, n_cols,
    seq_ptr, n_seq, page_size, cu_ptr, cu_len,
    num_pages, contain_page, acc_ptr,
    HAS_SEQ: tl.constexpr, HAS_PS: tl.constexpr, HAS_CU: tl.constexpr, CONTAIN: tl.constexpr,
    BLOCK: tl.constexpr, NPROG: tl.constexpr,
):
    # Each program owns one slot of NFIELDS counters in this site's accumulator row and is the only
    # writer of it (launches on a stream are ordered), so a plain load + store replaces atomics:
    # one vector load issued first, one vector store last.
    pid = tl.program_id(0)
    f = tl.arange(0, NFIELDS)
    slot = acc_ptr + pid * NFIELDS + f
    old = tl.load(slot)
    calls = tl.sum(tl.where(f == CALLS, old, 0), axis=0)
    n = n_rows * n_cols
    oob = tl.zeros([BLOCK], dtype=tl.int32)
    trail = tl.zeros([BLOCK], dtype=tl.int32)
    mx = tl.full([BLOCK], -1, dtype=tl.int64)
    badmax = tl.full([BLOCK], -1, dtype=tl.int64)
    badmin = tl.full([BLOCK], INT64_MAX, dtype=tl.int64)
    for start in range(pid * BLOCK, n, NPROG * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < n
        r = offs // n_cols
        c = offs - r * n_cols
        ptrs = pt_ptr + r.to(tl.int64) * stride_r + c.to(tl.int64) * stride_c
        v = tl.load(ptrs, mask=m, other=0).to(tl.int64)
        if HAS_SEQ and HAS_PS:
            # Rows past the end of seq_lens have no valid prefix (and must not be read from it).
            sl = tl.load(seq_ptr + r, mask=m & (r < n_seq), other=0).to(tl.int64)
            valid = m & (c.to(tl.int64) * page_size < sl)
        else:
            valid = m
        bad = (v < 0) | (v >= num_pages)
        bv = bad & valid
        oob += bv.to(tl.int32)
        trail += (bad & m & (valid == 0)).to(tl.int32)
        mx = tl.maximum(mx, tl.where(valid, v, -1))
        badmax = tl.maximum(badmax, tl.where(bv, v, -1))
        badmin = tl.minimum(badmin, tl.where(bv, v, INT64_MAX))
        if CONTAIN:
            tl.store(ptrs, tl.full([BLOCK], contain_page, dtype=tl.int64).to(pt_ptr.dtype.element_ty), mask=bv)
    seqbad = tl.zeros([BLOCK], dtype=tl.int32)
    if HAS_SEQ:
        for rs in range(pid * BLOCK, n_seq, NPROG * BLOCK):
            rows = rs + tl.arange(0, BLOCK)
            rm = rows < n_seq
            sl = tl.load(seq_ptr + rows, mask=rm, other=0).to(tl.int64)
            if HAS_PS:
                seqbad += (rm & ((sl < 0) | (sl > n_cols.to(tl.int64) * page_size))).to(tl.int32)
            else:
                seqbad += (rm & (sl < 0)).to(tl.int32)
    if HAS_CU:
        for rs in range(pid * BLOCK, cu_len, NPROG * BLOCK):
            rows = rs + tl.arange(0, BLOCK)
            rm = rows < cu_len
            lo = tl.load(cu_ptr + rows, mask=rm, other=0).to(tl.int64)
            hi = tl.load(cu_ptr + rows + 1, mask=rows + 1 < cu_len, other=0).to(tl.int64)
            seqbad += (rm & (((rows + 1 < cu_len) & (hi < lo)) | ((rows == 0) & (lo != 0)))).to(tl.int32)
    n_oob = tl.sum(oob, axis=0).to(tl.int64)
    add = (tl.where(f == CALLS, 1, 0) + tl.where(f == OOB, n_oob, 0)
           + tl.where(f == TRAIL, tl.sum(trail, axis=0).to(tl.int64), 0)
           + tl.where(f == SEQBAD, tl.sum(seqbad, axis=0).to(tl.int64), 0))
    new = old + add
    # MAXIDX is the latest call's highest index, not a running max: nothing has to reset it, so no
    # reset from the drain's stream can race this store (the headroom the daemon shows is current).
    new = tl.where(f == MAXIDX, tl.max(mx, axis=0), new)
    new = tl.where(f == BADMAX, tl.maximum(old, tl.max(badmax, axis=0)), new)
    new = tl.where(f == BADMIN, tl.minimum(old, tl.min(badmin, axis=0)), new)
    new = tl.where((f == FIRST_BAD_CALL) & (n_oob > 0), tl.minimum(old, calls), new)
    tl.store(slot, new)


def launch_paged_kv(page_table, num_pages, seq_lens, page_size, cu_seqlens_q, acc_row, contain_page, contain):
    """Enqueue the probe on the current stream. ``acc_row``: the site's (NPROG, NFIELDS) int64 slots."""
    n_rows, n_cols = page_table.shape
    _paged_kv_probe[(NPROG,)](
        page_table, page_table.stride(0), page_table.stride(1), n_rows, n_cols,
        seq_lens if seq_lens is not None else page_table, seq_lens.shape[0] if seq_lens is not None else 0,
        int(page_size or 1),
        cu_seqlens_q if cu_seqlens_q is not None else page_table,
        cu_seqlens_q.shape[0] if cu_seqlens_q is not None else 0,
        int(num_pages), int(contain_page), acc_row,
        HAS_SEQ=seq_lens is not None, HAS_PS=bool(page_size), HAS_CU=cu_seqlens_q is not None, CONTAIN=bool(contain),
        BLOCK=BLOCK, NPROG=NPROG,
    )


# Not specialised on num_pages or the words' alignment: a site's first (eager) call compiles the one
# variant every later call, captured ones included, uses (compiling inside a capture would break it).
@triton.jit(do_not_specialize=["words_ptr", "num_pages"])
def _publish(acc_ptr, words_ptr, num_pages, NPROG: tl.constexpr):
    # One program folds a site's NPROG slots (stream order: after the probe kernel that wrote them)
    # into the four probe words (ringformat.PROBE_WORDS) in host-mapped memory: plain stores, posted
    # across the bus, nothing read back. They are whole before the step's next kernel starts.
    p = tl.arange(0, NPROG) * NFIELDS
    calls = tl.max(tl.load(acc_ptr + p + CALLS), axis=0)
    oob = tl.sum(tl.load(acc_ptr + p + OOB), axis=0)
    badmax = tl.max(tl.load(acc_ptr + p + BADMAX), axis=0)
    badmin = tl.min(tl.load(acc_ptr + p + BADMIN), axis=0)
    n = num_pages.to(tl.int64)
    offending = tl.where(badmax >= n, badmax, tl.where(badmin < 0, badmin, badmax))  # device.offending_index
    tl.store(words_ptr, calls)
    tl.store(words_ptr + 1, oob)
    tl.store(words_ptr + 2, offending)
    tl.store(words_ptr + 3, n)


def launch_publish(acc_row, words, num_pages):
    """Enqueue the fold of a site's accumulator row (``acc_row``: (NPROG, NFIELDS) int64 on the
    device) into its four probe words (``words``: a 4-element int64 view of device words,
    ``mapped.Words.view``) on the current stream: one program, capturable into a CUDA graph."""
    _publish[(1,)](acc_row, words, int(num_pages), NPROG=NPROG)


@triton.jit
def _bump(counter_ptr, word_ptr, inc_ptr, HAS_INC: tl.constexpr):
    inc = tl.load(inc_ptr) if HAS_INC else 1
    v = tl.atomic_add(counter_ptr, inc) + inc  # atomic: two streams may mark one group at once
    tl.store(word_ptr, v)  # the device word in host-mapped memory: a posted write, nothing read back


def launch_bump(counter, word, inc=None):
    """counter += inc (1, or the value of the 1-element int64 device tensor ``inc``) on the device,
    atomically, then its new value stored into ``word`` (a 1-element int64 view of a device word,
    ``mapped.Words.view``): one program, one kernel, no read of host memory."""
    _bump[(1,)](counter, word, counter if inc is None else inc, HAS_INC=inc is not None)
