"""Device words: counters the GPU writes into the ring file itself, read with no CUDA call.

Why: what a stream has reached must be readable while the GPU is hung, after a fault has killed
the CUDA context, and after a SIGKILL, and reading it must never sync the serving thread. So the
ring file's first page (its header; ringformat.DEVICE_WORDS_OFFSET says where the words sit) is
registered with CUDA (``cuMemHostRegister``, device-mapped): a kernel's store lands in the page
cache of the ring file, which the daemon maps anyway. Nothing copies it; nothing is lost when the
process dies.

The kernel refuses to pin the page-cache pages of an ordinary filesystem for a device (the driver
answers CUDA_ERROR_INVALID_VALUE; measured on an H200 host, 2026-11-30), but pins shared memory: so
the ring page is registered when SENTINEL_DIR is on tmpfs (the default ``$XDG_RUNTIME_DIR``, a
Kubernetes ``emptyDir`` with ``medium: Memory``). Elsewhere the words live in device-mapped pinned
memory (``cuMemHostAlloc``) and a thread of ours copies them into the ring header every ``COPY_S``
with plain memory reads: they then survive a hung GPU and a dead context, but a SIGKILL loses what
changed in the last ``COPY_S``.

A word is bumped on the GPU by one kernel (:meth:`Words.bumper`): eager, it runs when the stream
reaches it; captured into a CUDA graph, every replay runs it again. ``BUMP`` picks the kernel:
"store" (Triton: a device-memory counter += 1, its value stored to the word, nothing read across the
bus) or "rmw" (torch's ``add_`` on the mapped word itself: no Triton needed, one read of host memory
per bump); ``bench/collective_marks.py`` measures both.

A CUDA graph's replay adds its count of a group's collectives at once (marks "first"): the bump
reads that count from an *increment*, a slot of device-mapped pinned memory (``INCREMENTS`` of
them) that the host writes with plain stores while the graph is captured. Not device memory: a
tensor allocated inside a capture comes from the graph's private pool, whose blocks the graph's own
replays overwrite (measured: float activations read as the count, H200, 2026-11-30), and filling
device memory needs a CUDA call on a stream.

The driver calls go through ctypes into ``libcuda.so.1`` (the CUDA driver API, which torch does not
expose); failures make the words unavailable, counted, never raised.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from . import ringformat as rf
from . import runtime

__all__ = ["Words", "words", "copy_out", "mode", "BUMP", "COPY_S", "INCREMENTS"]

_CU_MEMHOSTREGISTER_PORTABLE = 0x01
_CU_MEMHOSTREGISTER_DEVICEMAP = 0x02
_CU_MEMHOSTALLOC_PORTABLE = 0x01
_CU_MEMHOSTALLOC_DEVICEMAP = 0x02
_PAGE = 4096
BUMP = "store"  # "store" (Triton) or "rmw" (torch); "store" falls back to "rmw" without Triton
COPY_S = 0.02  # pinned mode: how often the words are copied into the ring
INCREMENTS = 4096  # increment slots, one per (CUDA graph capture, group): 32 KiB of pinned memory

_lock = threading.Lock()
_copy_lock = threading.Lock()  # one copy at a time, none after the last one at exit
_stopped = False
_words: Words | None = None
_failed = False


class _CudaArray:
    """A device pointer as ``__cuda_array_interface__`` (Numba's protocol, which torch.as_tensor reads)."""

    def __init__(self, ptr: int, n: int) -> None:
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": "<i8", "data": (ptr, False), "version": 2}


class Words:
    """The process's device words: ``rf.DEVICE_WORDS`` int64 counters, each assigned once
    (:meth:`assign`) and bumped by the GPU (:meth:`bump`). ``mode`` is ``"ring"`` (the ring's own
    page, registered) or ``"pinned"`` (copied into the ring by :func:`copy_out`)."""

    def __init__(self, torch: Any, writer: Any, mode: str, host_addr: int, device_ptr: int) -> None:
        self.torch = torch
        self.writer = writer
        self.mode = mode
        self.host_addr = host_addr  # where the GPU's writes land (the ring page, or the pinned buffer)
        self.device_ptr = device_ptr
        self._views: dict[int, Any] = {}  # device index -> int64 CUDA tensor over all the words
        self._counters: dict[int, Any] = {}  # device index -> int64 device tensor, the "store" kernel's counters
        self._next = 0
        self.host = (ctypes.c_uint64 * rf.DEVICE_WORDS).from_address(host_addr)
        self.inc_host: Any = None  # INCREMENTS int64 slots the host writes (None: none could be pinned)
        self.inc_ptr = 0  # their device pointer
        self._inc_views: dict[int, Any] = {}  # device index -> int64 CUDA tensor over all the slots
        self._inc_next = 0

    def assign(self, meaning: int, name: str) -> int:
        """A fresh counter for ``name`` (its info word in the ring says so); -1 when all are taken."""
        return self.assign_block((meaning,), name)

    def assign_block(self, meanings: tuple[int, ...], name: str) -> int:
        """Consecutive fresh counters for ``name``, one per meaning, in order: the first's index, or
        -1 when fewer than ``len(meanings)`` are left (then none is taken)."""
        w = self.writer
        tag = w.intern(name)  # first: the daemon must find the name once it sees the info word
        if not tag:
            return -1  # the string table is full: a word no one could name
        with _lock:
            if self._next + len(meanings) > rf.DEVICE_WORDS:
                runtime.log_once("device-words", "all %d device words are in use; %s is not tracked on the GPU",
                                 rf.DEVICE_WORDS, name)
                return -1
            first = self._next
            words = rf.device_words(w._mm)
            try:
                for k, meaning in enumerate(meanings):
                    words[rf.DEVICE_WORDS + first + k] = rf.pack_device_word_info(meaning, tag)
                    self._next += 1  # only once its info word is written: the daemon reads them in order
            finally:
                words.release()
        return first

    def view(self, index: int, device: Any, n: int = 1) -> Any:
        """The ``n``-element int64 CUDA tensor (on ``device``) aliasing words ``index`` onwards. Make
        the first one of a device outside any capture."""
        idx = device.index if device.index is not None else self.torch.cuda.current_device()
        full = self._views.get(idx)
        if full is None:
            full = self._views[idx] = self.torch.as_tensor(_CudaArray(self.device_ptr, rf.DEVICE_WORDS),
                                                          device=self.torch.device("cuda", idx))
        return full[index:index + n]

    def increment(self, device: Any) -> tuple[int, Any] | None:
        """A fresh increment slot for a bump captured on ``device``: ``(index, tensor)``, the tensor a
        1-element int64 CUDA view of the slot, to pass to a bump; its value is ``inc_host[index]``,
        set by the host with a plain store (no CUDA call, allowed during a capture). None when every
        slot is taken, none could be pinned, or :meth:`bumper` has not run on ``device`` yet (the
        view over the slots is made there, outside any capture). Never raises."""
        full = self._inc_views.get(device.index)
        if full is None:
            return None
        with _lock:
            if self._inc_next >= INCREMENTS:
                runtime.log_once("increments", "all %d increment slots are in use: CUDA graphs captured from now "
                                 "on mark each of their collectives", INCREMENTS)
                return None
            i = self._inc_next
            self._inc_next += 1
        self.inc_host[i] = 0
        return i, full[i:i + 1]

    def _pin_increments(self, cuda: Any) -> None:
        host, dptr = ctypes.c_void_p(), ctypes.c_uint64()
        size = 8 * INCREMENTS
        rc = cuda.cuMemHostAlloc(ctypes.byref(host), ctypes.c_size_t(size),
                                 _CU_MEMHOSTALLOC_PORTABLE | _CU_MEMHOSTALLOC_DEVICEMAP)
        if rc == 0:
            rc = cuda.cuMemHostGetDevicePointer_v2(ctypes.byref(dptr), host, 0)
            if rc != 0:
                cuda.cuMemFreeHost(host)
        if rc != 0:
            runtime.log_once("increments-pinned", "no pinned increments (CUresult %d): CUDA graphs mark each of "
                             "their collectives", rc)
            return
        ctypes.memset(host, 0, size)
        self.inc_host = (ctypes.c_int64 * INCREMENTS).from_address(host.value)
        self.inc_ptr = dptr.value

    def bumper(self, index: int, device: Any) -> Any:
        """A callable ``bump(inc=None)`` that enqueues word ``index`` += 1 (or += the value of the
        1-element int64 device tensor ``inc``) on the current stream of ``device``: one kernel;
        captured into a graph, each replay runs it. Never waits on the GPU. Make it outside a
        capture (it may allocate)."""
        word = self.view(index, device)
        if self.inc_ptr and word.device.index not in self._inc_views:
            self._inc_views[word.device.index] = self.torch.as_tensor(_CudaArray(self.inc_ptr, INCREMENTS),
                                                                      device=word.device)
        if BUMP == "store":
            if runtime.triton_available():
                from .kernels import launch_bump

                idx = word.device.index
                counters = self._counters.get(idx)
                if counters is None:
                    counters = self._counters[idx] = self.torch.zeros(rf.DEVICE_WORDS, dtype=self.torch.int64,
                                                                      device=word.device)
                counter = counters[index:index + 1]
                # Both variants of the kernel compiled and loaded now, outside any capture: loading a
                # module while a stream captures invalidates the capture (the by-``inc`` variant is
                # first used inside one, in collectives._captured). Adds 0.
                launch_bump(counter, word, self.torch.zeros(1, dtype=self.torch.int64, device=word.device))
                return lambda inc=None: launch_bump(counter, word, inc)
        return lambda inc=None: word.add_(1 if inc is None else inc)


def mode() -> str:
    """"ring", "pinned", or "" (not set up, or unavailable)."""
    return _words.mode if _words is not None else ""


def words(torch: Any) -> Words | None:
    """The process's device words, set up on first use on the calling (serving) thread, outside any
    CUDA graph capture (inside one it returns None: registering memory there would break the
    capture). None when CUDA or the driver API is unavailable, or the ring is not a real one."""
    global _words, _failed
    if _words is not None or _failed:
        return _words
    if torch.cuda.is_current_stream_capturing():
        return None
    with _lock:
        if _words is None and not _failed:
            try:
                _words = _setup(torch)
            except Exception as exc:
                runtime.failed("device words", exc)
            _failed = _words is None
    return _words


def _setup(torch: Any) -> Words | None:
    w = runtime.writer()
    mm = getattr(w, "_mm", None)
    if mm is None:
        return None  # a null writer: nothing to publish into
    cuda = ctypes.CDLL("libcuda.so.1")
    torch.cuda.current_stream()  # makes the device's primary context current on this thread
    holder = ctypes.c_char.from_buffer(mm)
    page = ctypes.addressof(holder)
    del holder  # the address stays valid while the ring is mapped; no export pins the mmap
    dptr = ctypes.c_uint64()
    rc = cuda.cuMemHostRegister_v2(ctypes.c_void_p(page), ctypes.c_size_t(_PAGE),
                                   _CU_MEMHOSTREGISTER_PORTABLE | _CU_MEMHOSTREGISTER_DEVICEMAP)
    if rc == 0:
        rc = cuda.cuMemHostGetDevicePointer_v2(ctypes.byref(dptr), ctypes.c_void_p(page), 0)
        if rc == 0:
            # Never unregistered: captured bumps may run until the process ends, and its exit unpins it.
            words = Words(torch, w, "ring", page + rf.DEVICE_WORDS_OFFSET, dptr.value + rf.DEVICE_WORDS_OFFSET)
            words._pin_increments(cuda)
            return words
        cuda.cuMemHostUnregister(ctypes.c_void_p(page))
    runtime.log_once("device-words-ring", "the driver did not pin the ring file's page (CUresult %d: SENTINEL_DIR "
                     "is not on tmpfs?); device words go through pinned memory, copied into the ring every %d ms",
                     rc, int(COPY_S * 1000))
    host = ctypes.c_void_p()
    size = 8 * rf.DEVICE_WORDS
    rc = cuda.cuMemHostAlloc(ctypes.byref(host), ctypes.c_size_t(size),
                             _CU_MEMHOSTALLOC_PORTABLE | _CU_MEMHOSTALLOC_DEVICEMAP)
    if rc != 0:
        runtime.log_once("device-words-pinned", "pinned device words unavailable (CUresult %d)", rc)
        return None
    ctypes.memset(host, 0, size)
    rc = cuda.cuMemHostGetDevicePointer_v2(ctypes.byref(dptr), host, 0)
    if rc != 0:
        cuda.cuMemFreeHost(host)
        return None
    words = Words(torch, w, "pinned", host.value, dptr.value)
    words._pin_increments(cuda)
    threading.Thread(target=_copier, name="sentinel-device-words", daemon=True).start()
    import atexit

    atexit.register(_last_copy)  # registered after the writer's exit hook, so it runs first
    return words


def _copier() -> None:
    import time

    while not _stopped:
        time.sleep(COPY_S)
        copy_out()


def _last_copy() -> None:
    """At a clean exit: the last count into the ring, then no more copies (the ring is unmapped next)."""
    global _stopped
    with _copy_lock:
        _copy_locked()
        _stopped = True


def copy_out() -> None:
    """In ``pinned`` mode, copy the words into the ring header (plain memory reads, no CUDA call; the
    copier thread calls it every COPY_S). A no-op in ``ring`` mode, where the GPU writes the ring
    itself. Never raises."""
    with _copy_lock:
        if not _stopped:
            _copy_locked()


def _copy_locked() -> None:
    w = _words
    if w is None or w.mode != "pinned" or w.writer.closed:
        return
    try:
        dst = rf.device_words(w.writer._mm)
        try:
            for i in range(w._next):  # one aligned 8-byte store per word, as the daemon reads them
                dst[i] = w.host[i]
        finally:
            dst.release()
    except ValueError:
        pass  # the ring was closed under us (process exit): nothing left to copy into
    except Exception as exc:
        runtime.failed("device words copy", exc)
