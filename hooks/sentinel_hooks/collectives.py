"""Collective tracing: every torch.distributed collective and point-to-point op, and the engines' own
(vLLM's and SGLang's ``GroupCoordinator`` methods, which their adapters patch with
:func:`engine_collective`, and FlashInfer's fused all-reduce + RMSNorm, which vLLM's compiled models
call directly, as does SGLang's layer norm: :func:`engine_function_collective`), with per-group sequence numbers, written to the
ring at enqueue and at completion.

Why sequence numbers: in a real NCCL hang the waiting rank's collective call returns at once and the
process blocks later at a sync, so its stack shows the sync, not the collective. What names the
culprit is which ranks enqueued collective k of a group and which never did (the daemon's hang
detector does that, live).

Completion is tracked without blocking: an async op's ``Work.is_completed()``, or a CUDA event
recorded after a sync NCCL op, polled by a background thread. A sync op on CPU tensors (gloo) has
completed when the call returns.

Inside CUDA graphs: a collective captured into a graph runs again on every replay with no Python. So
what a capture sees is kept on the graph (per group: how many collectives, and the last one's op,
size and dtype), and the wrapped ``CUDAGraph.replay`` enqueues them all at once on the host (one
ENQUEUE record per group and replay) and completes them with one CUDA event after the replay.

What the GPU has reached (``SENTINEL_COLLECTIVE_MARKS``): before a collective on a CUDA tensor, one
one-element kernel bumps the group's device word (``mapped.py``), in the ring file, readable while
the GPU hangs. Eager, every collective is marked (+1); in a CUDA graph, with ``first`` (the
default), the group's first collective in the graph adds the graph's count of them (read from a slot
of pinned host memory the host wrote during the capture), with ``all`` each one adds 1. Either way
the word counts the group's collectives as the host's sequence numbers do, up to where the GPU is;
``first`` costs one kernel per group and replay instead of one per collective (a mark is about 1.4
us of GPU time, bench/collective_marks.py), but cannot tell how far into a graph a stuck GPU got.
The daemon names a rank whose host enqueued collective k but whose GPU is behind its peers'
(``gpu_behind``).

One call is one collective: a traced call runs the traced calls it makes inside it untraced (an
engine's method calling torch.distributed, torch 2.13's ``all_gather_into_tensor`` calling
``all_gather_single``), so it is one record, in the outer call's group.
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from . import ringformat as rf
from . import runtime

__all__ = ["OPS", "OP_NAMES", "GROUP_INFO", "ASYNC_ALWAYS", "POLL_S", "poll_once", "install", "uninstall",
           "engine_collective", "engine_function_collective", "engine_group_name"]

# op name -> (position of `group`, position of `async_op`, (position, keyword) of the tensor whose
# size and dtype are recorded), from torch.distributed's signatures. Codes: ringformat.COLLECTIVE_OPS.
_ARGS: dict[str, tuple[int, int | None, tuple[int, str] | None]] = {
    "all_reduce": (2, 3, (0, "tensor")),
    "all_gather": (2, 3, (1, "tensor")),
    "all_gather_into_tensor": (2, 3, (1, "input_tensor")),
    "reduce_scatter": (3, 4, (0, "output")),
    "reduce_scatter_tensor": (3, 4, (1, "input")),
    "all_gather_single": (2, 3, (1, "input_tensor")),  # torch >= 2.13, where present
    "reduce_scatter_single": (3, 4, (1, "input")),
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
_groups: dict[int, tuple[Any, _Group]] = {}  # id(group object) -> (the object, its state)
_by_name: dict[str, _Group] = {}
_pending: collections.deque = collections.deque()
_poller: _Poller | None = None
_dist: Any = None
_torch: Any = None
_marks = "first"  # SENTINEL_COLLECTIVE_MARKS, read at install: first | all | off
_inside = threading.local()  # .depth > 0 while an engine collective runs on this thread
_events: dict[int, collections.deque] = {}  # device index -> CUDA events free for reuse
_UNASSIGNED = -2


class _Group:
    __slots__ = ("name", "tag", "seq", "size", "rank", "global_rank", "word", "views")

    def __init__(self, name: str, size: int, rank: int, global_rank: int) -> None:
        self.name = name
        self.tag = 0
        self.seq = 0
        self.size = size
        self.rank = rank
        self.global_rank = global_rank
        self.word = _UNASSIGNED  # its device word (-1: none to be had)
        self.views: dict[int, Any] = {}  # device index -> the bump of its word (mapped.Words.bumper)


def _register(key: Any, name: str, size: int, rank: int, global_rank: int) -> _Group:
    # One state per group name: torch's default group is reached as None and as group.WORLD.
    g = _by_name.get(name)
    if g is None or (g.size, g.rank) != (size, rank):
        if g is not None:  # the group was made again, otherwise: forget every object cached for the old one
            for k in [k for k, (_obj, st) in _groups.items() if st is g]:
                del _groups[k]
        g = _by_name[name] = _Group(name, size, rank, global_rank)
        w = runtime.writer()
        g.tag = w.intern(f"pg:{g.name}")
        w.emit(rf.Kind.COLLECTIVE_ENQUEUE, GROUP_INFO, g.size, g.rank, global_rank, g.tag)
    _groups[id(key)] = (key, g)  # the key object is kept: its id() stays its own while cached
    return g


def _cached(key: Any) -> _Group | None:
    entry = _groups.get(id(key))
    return entry[1] if entry is not None and entry[0] is key else None


def _group_state(group: Any) -> _Group:
    g = _cached(group)
    if g is not None:
        return g
    dist = _dist
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    try:
        name = dist.distributed_c10d._get_process_group_name(pg)
    except Exception:
        name = getattr(pg, "group_name", "") or "default"
    return _register(group, str(name), dist.get_world_size(pg), dist.get_rank(pg), dist.get_rank())


def _mark(g: _Group, device: Any, inc: Any = None) -> None:
    """Enqueue the bump of ``g``'s device word on the current stream (captured, when capturing): by 1,
    or by the value of the 1-element device tensor ``inc``. A failure turns the group's marks off."""
    try:
        bump = g.views.get(device.index)
        if bump is None:
            if g.word == -1:
                return
            from . import mapped

            if _torch.cuda.is_current_stream_capturing():
                # Registering memory or allocating inside a capture breaks it: set up at the next
                # eager collective. This graph's replays are counted on the host only.
                runtime.log_once("marks-in-capture", "collective marks set up only outside CUDA graph captures; "
                                 "a graph captured before any eager collective of its group is not marked")
                return
            words = mapped.words(_torch)
            if g.word == _UNASSIGNED:
                g.word = words.assign(rf.DeviceWord.COLLECTIVE_ENTERED, f"pg:{g.name}") if words else -1
            if g.word < 0:
                return
            bump = g.views[device.index] = words.bumper(g.word, device)
        bump(inc)
    except Exception as exc:
        g.word = -1
        g.views.clear()
        runtime.failed("collective mark", exc)


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
        if getattr(_inside, "depth", 0):  # inside a traced collective (torch 2.13's all_gather_into_tensor
            return fn(*args, **kwargs)  # calls all_gather_single; an engine's method calls torch's)
        ctx = None
        try:
            ctx = _enqueue(code, gi, ti, args, kwargs)
        except Exception as exc:
            runtime.failed("collective enqueue", exc)
        result = _call_inside(fn, args, kwargs)
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


def _call_inside(fn: Any, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)`` with tracing off for the collectives it calls: one call, one collective."""
    _inside.depth = 1
    try:
        return fn(*args, **kwargs)
    finally:
        _inside.depth = 0


def _enqueue(code: int, gi: int, ti: tuple[int, str] | None, args: tuple, kwargs: dict) -> tuple | None:
    tensor = None
    if ti is not None:
        tensor = args[ti[0]] if len(args) > ti[0] else kwargs.get(ti[1])
    group = kwargs["group"] if "group" in kwargs else (args[gi] if len(args) > gi else None)
    return _enqueue_in(code, _group_state(group), tensor)


def _enqueue_in(code: int, g: _Group, tensor: Any) -> tuple | None:
    first = tensor[0] if isinstance(tensor, list | tuple) and tensor else tensor
    on_cuda = bool(getattr(first, "is_cuda", False))
    dtype = getattr(first, "dtype", None)
    dcode = _DTYPES.get(str(dtype), 0) if dtype is not None else 0
    numel = _numel(tensor)
    if on_cuda and _torch.cuda.is_current_stream_capturing():
        _captured(code, g, numel, dcode, first.device)  # replays enqueue it (see the module docstring)
        return None
    g.seq += 1
    runtime.writer().emit(rf.Kind.COLLECTIVE_ENQUEUE, code, g.seq, numel, g.rank, g.tag, dcode)
    if on_cuda and _marks != "off":
        _mark(g, first.device)
    return (code, g, g.seq, first.device.index if on_cuda else -1, time.time_ns())


def _captured(code: int, g: _Group, numel: int, dcode: int, device: Any) -> None:
    """Note a collective captured into the graph being captured, and mark it: with ``first``, the
    group's first one in the graph bumps its word by the group's count in the graph (an increment
    slot of mapped.Words, which the host sets to the count as the capture goes), so device counts
    follow the host's sequence numbers in both modes."""
    from . import device as device_mod
    from . import mapped

    graph = device_mod.capturing_graph()
    if graph is None:
        runtime.log_once("capture-unguarded", "a collective was captured into a CUDA graph whose capture began "
                         "before the hooks were armed: its replays are not counted")
        return
    seen = graph.__dict__.setdefault("_sentinel_collectives", {})
    prev = seen.get(g)
    n = prev[0] + 1 if prev else 1
    slot = prev[4] if prev else -1
    if _marks == "first" and prev is None and g.views.get(device.index) is not None:
        words = mapped.words(_torch)
        got = words.increment(device) if words is not None else None
        if got is not None:
            slot, inc = got
            words.inc_host[slot] = 1
            _mark(g, device, inc)
    elif slot >= 0:
        mapped.words(_torch).inc_host[slot] = n  # a host store: the graph's bump reads it when replayed
    if _marks == "all" or (_marks == "first" and slot < 0):
        _mark(g, device)  # no increment to be had: mark each one, counts stay right
    seen[g] = (n, code, numel, dcode, slot)


def _replayed(graph: Any) -> None:
    """After ``graph.replay()``: enqueue its collectives on the host, complete them with one event."""
    seen = graph.__dict__.get("_sentinel_collectives")
    if not seen:
        return
    w = runtime.writer()
    t0 = time.time_ns()
    done = []
    for g, (n, code, numel, dcode, _slot) in seen.items():  # first: a failure below loses no sequence number
        g.seq += n
        w.emit(rf.Kind.COLLECTIVE_ENQUEUE, code, g.seq, numel, g.rank, g.tag, dcode)
        done.append((code, g, g.seq))
    dev = _torch.cuda.current_device()  # the replay ran on this device's current stream
    ev = _event(dev)
    ev.record()
    _pending.extend([(code, g, seq, t0, None, ev, dev) for code, g, seq in done])  # at once: see poll_once
    _ensure_poller()


def _event(dev: int) -> Any:
    """A CUDA event of device ``dev`` to record: one retired by the poller, else a new one."""
    try:
        return _events[dev].popleft()
    except (KeyError, IndexError):  # none free (or another thread took the last one)
        return _torch.cuda.Event()


def engine_group_name(unique_name: str, ranks: Any) -> str:
    """An engine group's name in the ring: its ``unique_name`` ("tp:0") and its members' global ranks,
    since every TP group of a job has the same unique name: "tp:0[0-3]", "tp:0[4,6]" (a list longer
    than 8 ranks is cut to its first, last and count: "[0,2,..,62 (32)]")."""
    r = [int(x) for x in ranks]
    if len(r) > 1 and r == list(range(r[0], r[0] + len(r))):
        members = f"{r[0]}-{r[-1]}"
    elif len(r) > 8:
        members = f"{r[0]},{r[1]},..,{r[-1]} ({len(r)})"
    else:
        members = ",".join(map(str, r))
    return f"{unique_name}[{members}]"


def engine_collective(original: Any, op: str, tensor_at: int = 0) -> Any:
    """A traced stand-in for an engine's collective method ``original`` (e.g. vLLM's
    ``GroupCoordinator._all_reduce_out_place(self, input_)``; the adapters patch it in), counted as
    collective ``op`` of the instance's group: ``self.unique_name`` names the group, ``world_size``,
    ``rank_in_group`` and ``rank`` (global) place the rank, positional argument ``tensor_at`` (after
    self) is the tensor (or list of tensors) whose size and dtype are recorded. Calls made inside it
    (torch.distributed's, or another engine collective's) are not traced again, and neither is a call
    Dynamo traces (``torch.compiler.is_compiling()``): the compiled graph's opaque custom op calls it
    at run time. Tracing never raises into the engine."""
    code = rf.COLLECTIVE_OPS[op]
    try:  # the tensor's parameter name, for a caller passing it by keyword
        tensor_name = list(inspect.signature(original).parameters)[tensor_at + 1]
    except (TypeError, ValueError, IndexError):
        tensor_name = ""

    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Dynamo traces this wrapper where it traces the engine's method: it then sees only the call.
        # Inside another engine collective (SGLang's all_reduce -> _all_reduce_out_place) the outer
        # one counts. A group of one rank (the engines return at once) is not a collective.
        if (not _installed or _torch.compiler.is_compiling() or getattr(_inside, "depth", 0)
                or getattr(self, "world_size", 2) == 1):
            return original(self, *args, **kwargs)
        tensor = args[tensor_at] if len(args) > tensor_at else kwargs.get(tensor_name)
        return _traced_call(code, self, tensor, original, (self, *args), kwargs)

    return traced


def engine_function_collective(original: Any, op: str, group_of: Callable[[tuple, dict], Any], tensor_kw: str) -> Any:
    """A traced stand-in for a library function ``original`` that runs one collective of an engine
    group without passing through the group's methods: FlashInfer's fused all-reduce + RMSNorm
    (``flashinfer.comm.allreduce_fusion``), which vLLM's compiled models and SGLang's layer norm call
    directly. Counted as collective ``op`` of the group ``group_of(args, kwargs)`` returns for the call (a
    GroupCoordinator, as ``engine_collective`` reads it; None: not traced), the tensor passed as
    keyword ``tensor_kw`` (or first) giving size and dtype. Calls inside an engine collective are
    not traced again (vLLM's FlashInfer all-reduce backend calls it from ``_all_reduce_out_place``).
    Tracing never raises into the engine."""
    code = rf.COLLECTIVE_OPS[op]

    def traced(*args: Any, **kwargs: Any) -> Any:
        if not _installed or _torch.compiler.is_compiling() or getattr(_inside, "depth", 0):
            return original(*args, **kwargs)
        try:
            group = group_of(args, kwargs)
        except Exception as exc:
            runtime.failed("engine collective group", exc)
            group = None
        if group is None or getattr(group, "world_size", 2) == 1:
            return original(*args, **kwargs)
        return _traced_call(code, group, kwargs.get(tensor_kw, args[0] if args else None), original, args, kwargs)

    return traced


def _traced_call(code: int, group: Any, tensor: Any, fn: Any, args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)``, counted as collective ``code`` of the engine group ``group`` (its
    ``unique_name``, ``ranks``, ``world_size``, ``rank_in_group``, ``rank``) on ``tensor``."""
    ctx = None
    try:
        g = _cached(group) or _register(group, engine_group_name(group.unique_name, group.ranks),
                                        int(group.world_size), int(group.rank_in_group), int(group.rank))
        ctx = _enqueue_in(code, g, tensor)
    except Exception as exc:
        runtime.failed("engine collective enqueue", exc)
    result = _call_inside(fn, args, kwargs)
    if ctx is not None:
        try:
            _after(ctx, None)
        except Exception as exc:
            runtime.failed("engine collective completion", exc)
    return result


def _after(ctx: tuple, work: Any) -> None:
    code, g, seq, dev, t0 = ctx
    if work is not None and hasattr(work, "is_completed"):
        _pending.append((code, g, seq, t0, work, None, dev))
    elif dev >= 0:
        dev = _torch.cuda.current_device()  # the event is recorded on this device's current stream
        ev = _event(dev)
        ev.record()
        _pending.append((code, g, seq, t0, None, ev, dev))
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
        code, g, seq, t0, work, ev, dev = _pending[0]
        done = work.is_completed() if work is not None else ev.query()
        if not done:
            break
        _pending.popleft()
        _complete(code, g, seq, t0)
        n += 1
        # A replay's entries share one event and enter the queue together: the event is free once
        # the last of them is retired. Events are per device.
        if ev is not None and (not _pending or _pending[0][5] is not ev):
            free = _events.setdefault(dev, collections.deque())
            if len(free) < 64:
                free.append(ev)
    return n


def _ensure_poller() -> None:
    global _poller
    if _poller is None:
        _poller = _Poller()
        _poller.start()


def install() -> bool:
    """Wrap torch.distributed's collectives and ``CUDAGraph.replay`` (idempotent). Returns True when
    installed. The engines' collectives are patched by their adapters (:func:`engine_collective`)."""
    global _installed, _dist, _torch, _marks
    if _installed:
        return True
    import torch
    import torch.distributed as dist

    from . import env

    if not dist.is_available():
        return False
    _dist, _torch = dist, torch
    _marks = runtime.setting(env.COLLECTIVE_MARKS)
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
        _wrap_replay(torch.cuda.CUDAGraph)
    _installed = True
    return True


def _wrap_replay(cls: Any) -> None:
    replay = getattr(cls, "replay", None)
    if replay is None or hasattr(replay, "__sentinel_original__"):
        return

    @functools.wraps(replay)
    def traced(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = replay(self, *args, **kwargs)
        try:
            _replayed(self)
        except Exception as exc:
            runtime.failed("graph replay", exc)
        return result

    traced.__sentinel_original__ = replay
    _originals[(cls, "replay")] = replay
    cls.replay = traced


def uninstall() -> None:
    """Put the original functions back (the OpenTelemetry instrumentor contract)."""
    global _installed
    for (mod, name), fn in _originals.items():
        setattr(mod, name, fn)
    _originals.clear()
    _groups.clear()
    _by_name.clear()
    _installed = False
