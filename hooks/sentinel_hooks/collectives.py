"""Collective tracing: every torch.distributed collective and point-to-point op, with per-group
sequence numbers, written to the ring at enqueue and at completion.

Why sequence numbers: in a real NCCL hang the waiting rank's collective call returns at once and
the process blocks later at a sync, so its stack shows the sync, not the collective. What names
the culprit is which ranks enqueued collective k of a group and which never did (the daemon's
hang detector does that, live).

Completion is tracked without blocking: an async op's ``Work.is_completed()``, or a CUDA event
recorded after a sync NCCL op, polled by a background thread. A sync op on CPU tensors (gloo)
has completed when the call returns. Inside a CUDA graph capture nothing is recorded.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from typing import Any

from . import ringformat as rf
from . import runtime

__all__ = ["OPS", "OP_NAMES", "GROUP_INFO", "ASYNC_ALWAYS", "POLL_S", "poll_once", "install", "uninstall"]

# op name -> (position of `group`, position of `async_op`, (position, keyword) of the tensor whose
# size and dtype are recorded), from torch.distributed's signatures. Codes: ringformat.COLLECTIVE_OPS.
_ARGS: dict[str, tuple[int, int | None, tuple[int, str] | None]] = {
    "all_reduce": (2, 3, (0, "tensor")),
    "all_gather": (2, 3, (1, "tensor")),
    "all_gather_into_tensor": (2, 3, (1, "input_tensor")),
    "reduce_scatter": (3, 4, (0, "output")),
    "reduce_scatter_tensor": (3, 4, (1, "input")),
    "broadcast": (2, 3, (0, "tensor")),
    "all_to_all": (2, 3, (1, "input_tensor_list")),
    "all_to_all_single": (4, 5, (1, "input")),
    "barrier": (0, 1, None),
    "send": (2, None, (0, "tensor")),
    "recv": (2, None, (0, "tensor")),
    "isend": (2, None, (0, "tensor")),
    "irecv": (2, None, (0, "tensor")),
    "reduce": (3, 4, (0, "tensor")),
    "gather": (3, 4, (0, "tensor")),
    "scatter": (3, 4, (0, "tensor")),
}
OPS = {name: (rf.COLLECTIVE_OPS[name], *args) for name, args in _ARGS.items()}
OP_NAMES = rf.COLLECTIVE_OP_NAMES
_DTYPES = rf.COLLECTIVE_DTYPES  # a module global: one lookup per collective, as before
GROUP_INFO = 0  # COLLECTIVE_ENQUEUE with code 0: a = group size, b = rank in group, c = global rank
ASYNC_ALWAYS = {"isend", "irecv"}
POLL_S = 0.02

_installed = False
_originals: dict[tuple[Any, str], Any] = {}
_groups: dict[int, _Group] = {}
_pending: collections.deque = collections.deque()
_poller: _Poller | None = None
_dist: Any = None
_torch: Any = None


class _Group:
    __slots__ = ("ref", "name", "tag", "seq", "size", "rank")

    def __init__(self, ref: Any, name: str, size: int, rank: int) -> None:
        self.ref = ref  # keeps id() stable while we cache by it
        self.name = name
        self.tag = 0
        self.seq = 0
        self.size = size
        self.rank = rank


def _group_state(group: Any) -> _Group:
    g = _groups.get(id(group))
    if g is not None and g.ref is group:
        return g
    dist = _dist
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    try:
        name = dist.distributed_c10d._get_process_group_name(pg)
    except Exception:
        name = getattr(pg, "group_name", "") or "default"
    g = _Group(group, str(name), dist.get_world_size(pg), dist.get_rank(pg))
    w = runtime.writer()
    g.tag = w.intern(f"pg:{g.name}")
    w.emit(rf.Kind.COLLECTIVE_ENQUEUE, GROUP_INFO, g.size, g.rank, dist.get_rank(), g.tag)
    _groups[id(group)] = g
    return g


def _numel(t: Any) -> int:
    try:
        if isinstance(t, list | tuple):
            return sum(int(x.numel()) for x in t)
        return int(t.numel())
    except Exception:
        return -1


def _wrap(name: str, fn: Any) -> Any:
    code, gi, ai, ti = OPS[name]
    always_async = name in ASYNC_ALWAYS

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        ctx = None
        try:
            ctx = _enqueue(code, gi, ti, args, kwargs)
        except Exception as exc:
            runtime.failed("collective enqueue", exc)
        result = fn(*args, **kwargs)
        if ctx is not None:
            try:
                is_async = always_async or (ai is not None and (
                    kwargs.get("async_op", False) if "async_op" in kwargs else (len(args) > ai and args[ai])))
                _after(ctx, result if is_async else None)
            except Exception as exc:
                runtime.failed("collective completion", exc)
        return result

    traced.__sentinel_original__ = fn
    return traced


def _enqueue(code: int, gi: int, ti: tuple[int, str] | None, args: tuple, kwargs: dict) -> tuple | None:
    torch = _torch
    tensor = None
    if ti is not None:
        tensor = args[ti[0]] if len(args) > ti[0] else kwargs.get(ti[1])
    first = tensor[0] if isinstance(tensor, list | tuple) and tensor else tensor
    on_cuda = bool(getattr(first, "is_cuda", False))
    if on_cuda and torch.cuda.is_current_stream_capturing():
        return None  # a captured collective replays without Python: nothing to track here
    group = kwargs["group"] if "group" in kwargs else (args[gi] if len(args) > gi else None)
    g = _group_state(group)
    g.seq += 1
    w = runtime.writer()
    dtype = getattr(first, "dtype", None)
    w.emit(rf.Kind.COLLECTIVE_ENQUEUE, code, g.seq, _numel(tensor), g.rank, g.tag,
           _DTYPES.get(str(dtype), 0) if dtype is not None else 0)
    return (code, g, g.seq, on_cuda, time.time_ns())


def _after(ctx: tuple, work: Any) -> None:
    code, g, seq, on_cuda, t0 = ctx
    if work is not None and hasattr(work, "is_completed"):
        _pending.append((code, g, seq, t0, work, None))
    elif on_cuda:
        torch = _torch
        ev = torch.cuda.Event()
        ev.record()
        _pending.append((code, g, seq, t0, None, ev))
    else:
        _complete(code, g, seq, t0)
        return
    _ensure_poller()


def _complete(code: int, g: _Group, seq: int, t0: int) -> None:
    runtime.writer().emit(rf.Kind.COLLECTIVE_COMPLETE, code, seq, time.time_ns() - t0, g.rank, g.tag)


class _Poller(threading.Thread):
    """Polls outstanding works and events; writes COMPLETE records in order per group."""

    def __init__(self) -> None:
        super().__init__(name="sentinel-collectives", daemon=True)

    def run(self) -> None:
        from . import device

        while True:
            time.sleep(POLL_S)
            if not _pending:
                continue
            try:
                with device._lock:  # never query CUDA while a graph capture runs
                    if device._capturing:
                        continue
                    poll_once()
            except Exception as exc:
                runtime.failed("collective poll", exc)


def poll_once() -> int:
    """Retire completed ops from the front of the queue (order is per process). Returns how many."""
    n = 0
    while _pending:
        code, g, seq, t0, work, ev = _pending[0]
        done = work.is_completed() if work is not None else ev.query()
        if not done:
            break
        _pending.popleft()
        _complete(code, g, seq, t0)
        n += 1
    return n


def _ensure_poller() -> None:
    global _poller
    if _poller is None:
        _poller = _Poller()
        _poller.start()


def install() -> bool:
    """Wrap torch.distributed's collectives (idempotent). Returns True when installed."""
    global _installed, _dist, _torch
    if _installed:
        return True
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return False
    _dist, _torch = dist, torch
    c10d = dist.distributed_c10d
    for name in OPS:
        for mod in (dist, c10d):
            fn = getattr(mod, name, None)
            if fn is None or hasattr(fn, "__sentinel_original__"):
                continue
            _originals[(mod, name)] = fn
            setattr(mod, name, _wrap(name, fn))
    if torch.cuda.is_available():
        from . import device

        device._install_capture_guard(torch)
    _installed = True
    return True


def uninstall() -> None:
    """Put the original functions back (the OpenTelemetry instrumentor contract)."""
    global _installed
    for (mod, name), fn in _originals.items():
        setattr(mod, name, fn)
    _originals.clear()
    _groups.clear()
    _installed = False
