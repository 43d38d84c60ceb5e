"""The fused paged-KV probe: one Triton kernel per probed step, capturable into CUDA graphs.

It reads the page table (and seq_lens / cu_seqlens_q) once and folds the results into the site's
small int64 accumulator on the device, each program into its own slot (no atomics on the counters).
Nothing comes back to the host here: the drain thread copies the accumulators out asynchronously.
The same kernel's last program to finish (a per-site ticket tells it) also folds the site's slots
into its four device words, where a fault in the step's next kernel cannot lose them. Imported only
when CUDA and Triton are present.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .slots import INT64_MAX as _INT64_MAX
from .slots import NFIELDS as _NFIELDS
from .slots import NPROG, Slot

__all__ = [
    "INT64_MAX", "NFIELDS", "CALLS", "OOB", "TRAIL", "MAXIDX", "SEQBAD", "FIRST_BAD_CALL", "BADMAX", "BADMIN",
    "BLOCK", "launch_paged_kv", "launch_bump",
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
# A site's publish ticket (int64): bits 0-7 the programs of the running launch done, 8-15 those of
# them that saw a violation, bit 16 set once a launch with a violation was published (sticky).
TICKET_VIOLATOR = tl.constexpr(1 << 8)
TICKET_OOB = tl.constexpr(1 << 16)
NUM_WARPS = 4  # Triton's default


@triton.jit
def _fold(oob_a, trail_a, seqbad_a, mx_a, badmax_a, badmin_a, oob_b, trail_b, seqbad_b, mx_b, badmax_b, badmin_b):
    return (oob_a + oob_b, trail_a + trail_b, seqbad_a + seqbad_b, tl.maximum(mx_a, mx_b),
            tl.maximum(badmax_a, badmax_b), tl.minimum(badmin_a, badmin_b))


# Not specialised on num_pages or on the words' and the ticket's alignment (they differ per site): a
# site's first (eager) call compiles the variant its later calls, captured ones included, use
# (compiling inside a capture would break it).
@triton.jit(do_not_specialize=["num_pages", "words_ptr", "ticket_ptr"])
def _paged_kv_probe(
    pt_ptr, stride_r, stride_c, n_rows, n_cols,
    seq_ptr, n_seq, seq_from, page_size, cu_ptr, cu_len,
    num_pages, contain_page, acc_ptr, words_ptr, ticket_ptr,
    HAS_SEQ: tl.constexpr, HAS_PS: tl.constexpr, HAS_CU: tl.constexpr, CONTAIN: tl.constexpr,
    HAS_WORDS: tl.constexpr, BLOCK: tl.constexpr, NPROG: tl.constexpr,
):
    # Each program owns one slot of NFIELDS counters in this site's accumulator row and is the only
    # writer of it (launches on a stream are ordered), so a plain load + store replaces atomics:
    # one vector load issued first, one vector store last.
    pid = tl.program_id(0)
    f = tl.arange(0, NFIELDS)
    slot = acc_ptr + pid * NFIELDS + f
    old = tl.load(slot)
    calls = tl.load(acc_ptr + pid * NFIELDS + CALLS)  # the same line again: no reduction to pick it out
    n = n_rows * n_cols
    oob = tl.zeros([BLOCK], dtype=tl.int32)
    trail = tl.zeros([BLOCK], dtype=tl.int32)
    seqbad = tl.zeros([BLOCK], dtype=tl.int32)
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
            # Each row's seq_lens entry checked here, at its first column: no second pass over
            # seq_lens (a second memory round trip) for the rows the table has.
            seqbad += (m & (c == 0) & (r < n_seq) & ((sl < 0) | (sl > n_cols.to(tl.int64) * page_size))).to(tl.int32)
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
    if HAS_SEQ:
        # With a page size, the loop above checked the seq_lens rows the table has (when it has
        # columns); this one checks the rest, usually none.
        for rs in range(seq_from + pid * BLOCK, n_seq, NPROG * BLOCK):
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
    # The six block reductions in one pass (one round of shuffles and one barrier, not six).
    n_oob, n_trail, n_seqbad, mx, badmax, badmin = tl.reduce((oob, trail, seqbad, mx, badmax, badmin), 0, _fold)
    n_oob = n_oob.to(tl.int64)
    add = (tl.where(f == CALLS, 1, 0) + tl.where(f == OOB, n_oob, 0)
           + tl.where(f == TRAIL, n_trail.to(tl.int64), 0) + tl.where(f == SEQBAD, n_seqbad.to(tl.int64), 0))
    new = old + add
    # MAXIDX is the latest call's highest index, not a running max: nothing has to reset it, so no
    # reset from the drain's stream can race this store (the headroom the daemon shows is current).
    new = tl.where(f == MAXIDX, mx, new)
    new = tl.where(f == BADMAX, tl.maximum(old, badmax), new)
    new = tl.where(f == BADMIN, tl.minimum(old, badmin), new)
    new = tl.where((f == FIRST_BAD_CALL) & (n_oob > 0), tl.minimum(old, calls), new)
    tl.store(slot, new)
    if HAS_WORDS:
        # The site's summary to its four device words (ringformat.PROBE_WORDS) in host-mapped memory,
        # by the launch's last program to finish. Each program adds to the site's ticket (TICKET_*
        # fields): one program done, whether it saw a violation, its violations. A clean program's
        # add is relaxed; a violator's is a release after a barrier, so its slot is visible to
        # whoever acquires later. The last one (its add completes NPROG) resets the launch's fields.
        # After a clean launch it writes the calls (every program counts every launch, so its own
        # slot has them); after one with a violator it acquires, reads every slot back from L2 and
        # writes all four words, folded as the drain folds them. No fence on the clean path: a
        # fence (waiting for the slots' stores) costs as much as the words' stores across the bus.
        tl.static_assert(NPROG < 256)  # the done and violator counts fit their 8 bits
        mine = 1 + tl.where(n_oob > 0, TICKET_VIOLATOR, 0).to(tl.int64)
        if n_oob > 0:
            tl.debug_barrier()  # all of this program's threads stored their part of the slot
            seen = tl.atomic_add(ticket_ptr, mine, sem="acq_rel")
        else:
            seen = tl.atomic_add(ticket_ptr, mine, sem="relaxed")
        now = seen + mine
        if now % TICKET_VIOLATOR == NPROG:  # the launch's last program
            launch = now % TICKET_OOB
            pages = num_pages.to(tl.int64)
            if launch >= TICKET_VIOLATOR:  # a violator in this launch: fold every slot
                # Acquire the violators' slots; reset the launch's counts, set the sticky bit.
                tl.atomic_add(ticket_ptr, tl.where(now < TICKET_OOB, TICKET_OOB, 0) - launch, sem="acq_rel")
                tl.debug_barrier()  # the acquire was thread 0's: order every thread's loads after it
                p = tl.arange(0, NPROG) * NFIELDS
                w_calls = tl.max(tl.load(acc_ptr + p + CALLS, volatile=True), axis=0)
                w_oob = tl.sum(tl.load(acc_ptr + p + OOB, volatile=True), axis=0)
                w_badmax = tl.max(tl.load(acc_ptr + p + BADMAX, volatile=True), axis=0)
                w_badmin = tl.min(tl.load(acc_ptr + p + BADMIN, volatile=True), axis=0)
                # device.offending_index: the largest past the end, else the most negative
                offending = tl.where(w_badmax >= pages, w_badmax, tl.where(w_badmin < 0, w_badmin, w_badmax))
                # Plain stores, posted across the bus, nothing read back.
                tl.store(words_ptr, w_calls)
                tl.store(words_ptr + 1, w_oob)
                tl.store(words_ptr + 2, offending)
                tl.store(words_ptr + 3, pages)
            else:
                tl.atomic_add(ticket_ptr, -launch, sem="relaxed")
                tl.store(words_ptr, calls + 1)
                never = now < TICKET_OOB  # no violation on this site yet: none, none read
                tl.store(words_ptr + 1, 0, mask=never)
                tl.store(words_ptr + 2, -1, mask=never)
                tl.store(words_ptr + 3, pages)


def launch_paged_kv(page_table, num_pages, seq_lens, page_size, cu_seqlens_q, acc_row, contain_page, contain,
                    words=None, ticket=None):
    """Enqueue the probe on the current stream. ``acc_row``: the site's (NPROG, NFIELDS) int64 slots.
    With ``words`` (a 4-element int64 view of device words, ``mapped.Words.view``) and ``ticket`` (a
    1-element int64 device tensor, the site's, zero at first), the kernel also publishes the site's
    summary to the words (ringformat.PROBE_WORDS)."""
    n_rows, n_cols = page_table.shape
    has_words = words is not None and ticket is not None
    _paged_kv_probe[(NPROG,)](
        page_table, page_table.stride(0), page_table.stride(1), n_rows, n_cols,
        seq_lens if seq_lens is not None else page_table, seq_lens.shape[0] if seq_lens is not None else 0,
        n_rows if page_size and n_cols > 0 else 0,  # the seq_lens rows the table's first column checks
        int(page_size or 1),
        cu_seqlens_q if cu_seqlens_q is not None else page_table,
        cu_seqlens_q.shape[0] if cu_seqlens_q is not None else 0,
        int(num_pages), int(contain_page), acc_row,
        words if has_words else acc_row, ticket if has_words else acc_row,
        HAS_SEQ=seq_lens is not None, HAS_PS=bool(page_size), HAS_CU=cu_seqlens_q is not None, CONTAIN=bool(contain),
        HAS_WORDS=has_words, BLOCK=BLOCK, NPROG=NPROG, num_warps=NUM_WARPS,
    )


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
