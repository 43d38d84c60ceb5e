"""The hooks' public functions, re-exported by the package (``import sentinel_hooks as sh; sh.step()``)."""

from __future__ import annotations

from typing import Any

from . import runtime
from .probes import SentinelViolation, check_paged_kv, check_strides, configure, note_batch
from .ringformat import Check, Kind

__all__ = [
    "step", "event", "set_identity", "stats", "flush", "prepare_cuda", "trace_collectives", "Kind", "Check",
    "check_paged_kv", "check_strides", "note_batch", "configure", "SentinelViolation",
]


def step() -> None:
    """Mark one serving step: bumps the heartbeat in the ring header and writes a STEP record."""
    try:
        w = runtime._writer
        (w if w is not None else runtime.start()).step()
    except Exception as exc:
        runtime.failed("step", exc)


def event(code: int = 0, a: int = 0, b: int = 0, c: int = 0, *, name: str | None = None) -> None:
    """Write one user EVENT record: ``code`` (0..65535), three int64 values and an optional name."""
    try:
        w = runtime._writer
        w = w if w is not None else runtime.start()
        w.emit(Kind.EVENT, code, a, b, c, w.intern(name) if name else 0)
    except Exception as exc:
        runtime.failed("event", exc)


def set_identity(**fields: Any) -> None:
    """Set identity fields the launcher's environment did not give: rank, local_rank, world_size,
    tp_rank, dp_rank, pp_rank, job, pod, namespace, framework, framework_version."""
    try:
        runtime.set_identity(**fields)
    except Exception as exc:
        runtime.failed("set_identity", exc)


def trace_collectives() -> bool:
    """Record every torch.distributed collective (enqueue and completion) in the ring.

    ``sentinel run`` does this by itself; call it when using the hooks without injection.
    Returns True when tracing is on."""
    try:
        from . import collectives

        return collectives.install()
    except Exception as exc:
        runtime.failed("trace_collectives", exc)
        return False


def prepare_cuda(device: Any = None) -> None:
    """Set up the probes' device accumulators and drain thread before a CUDA graph capture.

    Engines that warm up eagerly before capturing (vLLM, SGLang) need not call this."""
    try:
        import torch

        from . import device as _device

        _device.prepare(torch, device)
    except Exception as exc:
        runtime.failed("prepare_cuda", exc)


def flush() -> None:
    """Copy device-side probe counters into the ring now (waits for the GPU; not for the hot path)."""
    from . import device

    device.flush()


def stats() -> dict[str, Any]:
    """What the hooks did in this process: ring path, steps, drops and swallowed errors."""
    w = runtime._writer
    return {
        "active": w is not None and not isinstance(w, runtime.NullWriter),
        "ring": getattr(w, "path", None),
        "steps": getattr(w, "step_count", 0),
        "dropped": getattr(w, "dropped", 0),
        "noops": getattr(w, "noops", 0),
        "errors": runtime.errors,
        "disabled_reason": getattr(w, "reason", None),
    }
