"""Read-only tailing of one ring file, in bulk, with numpy structured views.

The format is defined once, in ``sentinel_hooks.ringformat``; this module only reads it.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import stat
import time
from dataclasses import dataclass

import numpy as np

from sentinel_hooks import ringformat as rf

__all__ = [
    "DTYPE", "payload", "EMPTY", "HOLE_GRACE_S", "LOOKAHEAD", "MAX_SEQ", "TailResult", "RingReader",
    "parse_header", "check_header",
]

DTYPE = rf.numpy_dtype()


def payload(recs: np.ndarray, kind: int, code: int | None = None) -> np.ndarray:
    """``recs`` (all of ``kind``, and of ``code`` where it changes the meaning) seen with their payload
    columns named (ringformat.PAYLOAD_NAMES): a zero-copy view, ``payload(probes, Kind.PROBE)["count"]``."""
    return recs.view(_payload_dtype(int(kind), None if code is None else int(code)))


@functools.cache
def _payload_dtype(kind: int, code: int | None) -> np.dtype:
    return rf.numpy_dtype(kind, code)
EMPTY = np.zeros(0, dtype=DTYPE)
# A slot that stays unreadable this long while later ones are readable, with its writer alive,
# is given up as torn. Live writers leave holes only briefly (a thread took a sequence number
# and has not stored it yet; failed writes are sealed as VOID records), so this is generous.
HOLE_GRACE_S = 5.0
LOOKAHEAD = 8
# Sequence numbers and header counters end up in signed 64-bit journal columns; a writer never
# gets near this (2**63 records). A slot whose seq is larger, or names another slot, holds no record
# of this ring (a corrupt or hostile write): it is read as empty, never as "the writer lapped us".
MAX_SEQ = (1 << 63) - 1
_U64_HEADER = ("created_ns",) + rf.WORD_NAMES
_SCAN_CHUNK = 1 << 16


@dataclass
class TailResult:
    """What one ``RingReader.tail`` call read: ``records``, a 1-D array of DTYPE (64-byte ring
    records) in sequence order, and the records lost since the last call: ``overwritten`` (the
    writer lapped the reader) and ``torn`` (slots that never became valid)."""

    records: np.ndarray  # valid new records, in sequence order
    overwritten: int = 0  # lost because the writer lapped the reader
    torn: int = 0  # slots that never became valid


class RingReader:
    """Opens a ring read-only and hands out each valid record exactly once.

    Raises ``RingFormatError`` (with a ``reason`` label) for files that are not valid rings.
    """

    def __init__(self, path: str, allowed_uids: set[int] | None = None, start_after: int = 0) -> None:
        self.path = path
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise rf.RingFormatError("not_a_file", "not a regular file")
            if allowed_uids is not None and st.st_uid not in allowed_uids:
                raise rf.RingFormatError("foreign_owner", f"owned by uid {st.st_uid}, not an allowed owner")
            if st.st_size < rf.HEADER_SIZE:
                raise rf.RingFormatError("truncated", f"file is {st.st_size} bytes, smaller than a header")
            head = os.pread(fd, rf.HEADER_SIZE, 0)
            self.header = parse_header(head)
            self.capacity = self.header["capacity"]
            need = rf.file_size(self.capacity)
            if st.st_size < need:
                raise rf.RingFormatError("truncated", f"file is {st.st_size} bytes, its header needs {need}")
            self._mm = mmap.mmap(fd, need, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._words = rf.header_words(self._mm)
        self.device_words = rf.device_words(self._mm)  # what the GPU wrote (ringformat.DEVICE_WORDS_OFFSET)
        try:
            self.refresh_header()  # the pread copy's words may be mid-update; the mapping's are exact
        except BaseException:
            self._words.release()
            self.device_words.release()
            self._mm.close()
            os.close(fd)
            raise
        self.slots = np.frombuffer(self._mm, dtype=DTYPE, count=self.capacity, offset=rf.RECORDS_OFFSET)
        self._seq_col = self.slots["seq"]
        self._seq_end_col = self.slots["seq_end"]
        self._mask = self.capacity - 1
        self.last_seq = start_after  # highest sequence number handed out (or skipped)
        self._hole_seq: int | None = None
        self._hole_since = 0.0
        self._strings: dict[int, str] = {}

    # -- header ---------------------------------------------------------------------------------

    def refresh_header(self) -> dict:
        """Re-read the header (identity may be updated; heartbeat and counters always are), each
        field as the writer wrote it, never half-updated (``ringformat.read_header``). Raises
        RingFormatError if the file was changed into something else."""
        self.header = check_header(rf.read_header(self._mm, self._words, self.header))
        return self.header

    def heartbeat(self) -> tuple[int, int]:
        """(step, last_step_ns) from the header: two single 8-byte loads, no copy; cheap enough to
        poll. Each value is one the writer stored (see ``ringformat.Word``)."""
        words = self._words
        return words[rf.Word.STEP], words[rf.Word.LAST_STEP_NS]

    def name(self, tag: int) -> str:
        name = self._strings.get(tag)
        if name is None:
            name = rf.read_string(self._mm, tag)
            if name:
                self._strings[tag] = name
        return name

    def writer_alive(self) -> bool:
        """True while the writer holds its flock. The kernel drops it when the writer dies."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def top_seq(self, full_scan: bool = False) -> int:
        """The highest sequence number any slot has started (records written so far).

        Gallops forward from the last position, so a poll touches a few pages, not the whole
        ring (which would map every page into the daemon's RSS). A full scan only when the writer
        lapped us, or when asked (a dead writer's final read).
        """
        seqs, mask, cap = self._seq_col, self._mask, self.capacity
        if full_scan:
            return self._max_seq()
        n = self.last_seq + 1

        def at(x: int) -> int:
            v = int(seqs[(x - 1) & mask])
            return v if v <= MAX_SEQ and (v - x) & mask == 0 else 0  # else not a record of this slot

        v = at(n)
        if v > n:
            return self._max_seq()  # lapped: the slot already holds a later record
        if v < n:
            # Nothing at n yet; a slot a little further on may be written already (another
            # thread took seq n and has not stored it yet): look a few slots ahead.
            for k in range(1, LOOKAHEAD + 1):
                if at(n + k) == n + k:
                    n = n + k
                    break
            else:
                return self.last_seq
        lo, step = n, 1
        while True:
            probe = lo + step
            if probe - self.last_seq > cap:
                return self._max_seq()
            if at(probe) >= probe:
                lo, step = probe, step * 2
            else:
                hi = probe
                break
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if at(mid) >= mid:
                lo = mid
            else:
                hi = mid
        return lo

    def _max_seq(self) -> int:
        """The highest sequence number in any slot that can hold it (see MAX_SEQ)."""
        best = 0
        for start in range(0, self.capacity, _SCAN_CHUNK):
            seqs = self._seq_col[start : start + _SCAN_CHUNK]
            slots = np.arange(start, start + len(seqs), dtype=np.uint64)
            ok = (seqs <= MAX_SEQ) & (((seqs - np.uint64(1)) & np.uint64(self._mask)) == slots)
            if ok.any():
                best = max(best, int(seqs[ok].max()))
        return best

    # -- records --------------------------------------------------------------------------------

    def tail(self, writer_alive: bool = True, now: float | None = None) -> TailResult:
        """New valid records since the last call. ``writer_alive=False`` settles torn slots at once."""
        top = self.top_seq(full_scan=not writer_alive)
        first = self.last_seq + 1
        if top < first:
            return TailResult(EMPTY)
        overwritten = 0
        if top - first + 1 > self.capacity:  # the writer lapped us: the oldest are gone
            overwritten = top - self.capacity + 1 - first
            first = top - self.capacity + 1
        expected = np.arange(first, top + 1, dtype=np.uint64)
        i0 = (first - 1) & self._mask
        i1 = i0 + (top - first + 1)
        # A seqlock over each slot. The writer stores seq first and seq_end last; so seq_end reads n
        # *before* the copy only once record n is whole, and seq still reads n *after* the copy only
        # if no later record began to overwrite it meanwhile. (Checking seq_end in the copy alone
        # is not enough: the payload can be read while it is written, and seq_end just after.)
        # seq_end is read again after the copy too: an overwrite that began meanwhile zeroes it at
        # once, whereas seq, stored byte by byte, can read n again part-way through n + capacity.
        if i1 <= self.capacity:  # contiguous: slices copy fastest
            end_before = self._seq_end_col[i0:i1].copy()
            recs = self.slots[i0:i1].copy()
            seq_again = self._seq_col[i0:i1].copy()
            end_again = self._seq_end_col[i0:i1].copy()
        else:
            i1 -= self.capacity
            end_before = np.concatenate((self._seq_end_col[i0:], self._seq_end_col[:i1]))
            recs = np.concatenate((self.slots[i0:], self.slots[:i1]))
            seq_again = np.concatenate((self._seq_col[i0:], self._seq_col[:i1]))
            end_again = np.concatenate((self._seq_end_col[i0:], self._seq_end_col[:i1]))
        ok = ((end_before == expected) & (recs["seq"] == expected) & (recs["seq_end"] == expected)
              & (seq_again == expected) & (end_again == expected))
        if ok.all():
            self.last_seq = top
            self._hole_seq = None
            return TailResult(recs, overwritten)
        bad = np.flatnonzero(~ok)
        hole = first + int(bad[0])
        now = time.monotonic() if now is None else now
        if writer_alive:
            if self._hole_seq != hole:
                self._hole_seq, self._hole_since = hole, now
            good = np.flatnonzero(ok)
            if now - self._hole_since < HOLE_GRACE_S or good.size == 0 or good[-1] < bad[0]:
                # Maybe a write in flight: hand out the valid prefix, look again next time.
                cut = int(bad[0])
                self.last_seq = first + cut - 1
                return TailResult(recs[:cut], overwritten)
            # A stale hole with valid records after it: settle up to the last valid one and
            # leave any trailing in-flight slots for next time.
            end = int(good[-1]) + 1
            self.last_seq = first + end - 1
            self._hole_seq = None
            return TailResult(recs[:end][ok[:end]], overwritten, int((~ok[:end]).sum()))
        self._hole_seq = None
        self.last_seq = top
        return TailResult(recs[ok], overwritten, int(bad.size))

    def recent(self, upto: int, n: int) -> np.ndarray:
        """Valid records with sequence numbers in (upto - n, upto]: context for a resumed reader."""
        first = max(1, upto - min(n, self.capacity) + 1)
        if upto < first:
            return EMPTY
        expected = np.arange(first, upto + 1, dtype=np.uint64)
        idx = (expected - np.uint64(1)).astype(np.int64) & self._mask
        end_before = self._seq_end_col[idx]  # the seqlock of tail(): whole before the copy, unchanged after
        recs = self.slots[idx]
        ok = (end_before == expected) & (recs["seq"] == expected) & (recs["seq_end"] == expected) & (
            self._seq_col[idx] == expected) & (self._seq_end_col[idx] == expected)
        return recs[ok]

    def close(self) -> None:
        self.slots = self._seq_col = self._seq_end_col = None  # release the buffer exports before unmapping
        self._words.release()
        self.device_words.release()
        try:
            self._mm.close()
        except (BufferError, ValueError):
            pass
        os.close(self._fd)


def parse_header(buf: bytes | memoryview | mmap.mmap) -> dict:
    """``ringformat.unpack_header`` of a copy, plus what the daemon needs: counters that fit a signed
    64-bit journal column. Raises RingFormatError (``reason`` bad_header for those)."""
    return check_header(rf.unpack_header(buf))


def check_header(header: dict) -> dict:
    """``header`` if its counters fit a signed 64-bit journal column, else RingFormatError
    (``reason`` bad_header)."""
    for key in _U64_HEADER:
        if header[key] > MAX_SEQ:
            raise rf.RingFormatError("bad_header", f"header {key} is {header[key]}, beyond a signed 64-bit value")
    return header
