"""THE accumulator layout of the CUDA paged-KV probe, defined once.

Per probe site and device, the probe keeps ``NPROG`` slots of ``NFIELDS`` int64 counters, one slot
per program of the Triton kernel's fixed grid (each program is the only writer of its slot, so no
atomics). The Triton kernel (``kernels.py``), the torch fallback and the drain (``device.py``) all
take the offsets, the initial values and the reductions from here.

Imports nothing: the Triton kernel module reads it without pulling in the drain.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

__all__ = ["Slot", "NFIELDS", "NPROG", "MAX_SITES", "INT64_MAX", "INITIAL", "REDUCE", "reduce_slots"]

INT64_MAX = (1 << 63) - 1


class Slot(enum.IntEnum):
    """The counters of one slot, by offset."""

    CALLS = 0  #: probe executions (eager calls and graph replays); reduced by max (every program counts each)
    OOB = 1  #: page-table entries outside [0, num_pages) in the region the kernel reads; summed
    TRAIL = 2  #: out-of-range entries past each row's valid prefix (never read); summed
    MAXIDX = 3  #: the latest call's highest index read (-1: none); reduced by max, never reset
    SEQBAD = 4  #: invalid seq_lens / cu_seqlens_q entries; summed
    FIRST_BAD_CALL = 5  #: CALLS value at the first call with an OOB entry (INT64_MAX: none yet); min
    BADMAX = 6  #: largest out-of-range index seen (-1: none); max
    BADMIN = 7  #: smallest out-of-range index seen (INT64_MAX: none); min


NFIELDS = len(Slot)
NPROG = 16  # the kernel's grid: programs, and so slots, per site
MAX_SITES = 128  # probe sites per device (rows of the device's accumulator tensor)

# What a slot holds before any call, and how the NPROG slots of a site fold into one row.
INITIAL: tuple[int, ...] = (0, 0, 0, -1, 0, INT64_MAX, -1, INT64_MAX)
REDUCE: tuple[Callable[[Sequence[int]], int], ...] = (max, sum, sum, max, sum, min, max, min)
assert len(INITIAL) == len(REDUCE) == NFIELDS


def reduce_slots(slots: Sequence[Sequence[int]]) -> list[int]:
    """One site's ``NPROG`` slots (each ``NFIELDS`` ints) folded into one row of ``NFIELDS`` counters."""
    return [fold(col) for fold, col in zip(REDUCE, zip(*slots))]
