"""Process-wide hook state: the one writer, started lazily, and the counted no-op fallback.

Nothing here may raise into the host program. Every failure turns the hooks into a counted
no-op and logs one line, once.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from . import env, layout
from . import ringformat as rf
from .writer import FsPolicy, RingWriter, check_identity_fields, identity_from_env

__all__ = [
    "NullWriter", "at_step_milestones", "log_once", "setting", "config_problem", "count_config_error",
    "set_idle", "set_mode", "start", "disable", "writer", "failed", "set_identity", "reset_for_tests",
    "triton_available",
]

log = logging.getLogger("sentinel_hooks")


class NullWriter:
    """Stands in when the ring cannot be used: every call is a counted no-op."""

    path = None
    step_count = 0
    dropped = 0

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.noops = 0

    def emit(self, *args: Any, **kwargs: Any) -> int:
        self.noops += 1
        return 0

    def step(self) -> int:
        self.noops += 1
        self.step_count += 1
        return self.step_count

    def intern(self, name: str) -> int:
        return 0

    def note_dropped(self, n: int = 1) -> None:
        self.dropped += n

    def set_identity(self, **fields: Any) -> None:
        pass

    def set_mode(self, mode: str) -> None:
        pass

    def set_idle(self, idle: bool) -> None:
        pass

    def close(self, clean_exit: bool = True) -> None:
        pass


_writer: RingWriter | NullWriter | None = None
_start_lock = threading.Lock()
_logged: set[str] = set()
_identity_overrides: dict[str, Any] = {}
_milestone_hooks: list[Callable[[int], Any]] = []
_mode = ""  # the probes' mode, published in the ring header once there is a ring
_pending_config_errors = 0  # bad config values found before the ring existed


def at_step_milestones(fn: Callable[[int], Any]) -> None:
    """Call ``fn(step)`` at steps 1, 2, 4, 8, ...: occasional upkeep (the crash handlers) that must
    not cost anything per step. ``fn`` must never raise."""
    if fn not in _milestone_hooks:
        _milestone_hooks.append(fn)
    w = _writer
    if isinstance(w, RingWriter):
        w.on_milestone = _run_milestones


def _run_milestones(step: int) -> None:
    for fn in _milestone_hooks:
        fn(step)
errors = 0  # hook calls that failed and were swallowed


def log_once(key: str, message: str, *args: Any) -> None:
    """Log ``message % args`` as one warning of the ``sentinel_hooks`` logger, prefixed "sentinel: ",
    the first time ``key`` is seen in this process. Never raises."""
    if key in _logged:
        return
    _logged.add(key)
    try:
        log.warning("sentinel: " + message, *args)
    except Exception:
        pass


def setting(var: env.Var) -> Any:
    """``var``'s value from the environment; a bad value is logged once and counted
    (``config_problem``) and the declared default used. Never raises."""
    reading = var.read()
    if reading.problem:
        config_problem(reading.problem)
    return reading.value


def config_problem(message: str) -> None:
    """A refused setting (the default was used): logged once, counted once. Never raises."""
    key = "cfg:" + message
    if key not in _logged:
        log_once(key, "%s", message)
        count_config_error()


def count_config_error(n: int = 1) -> None:
    """Count bad config values (the defaults were used): one CONFIG_ERROR_EVENT record, which the
    daemon exports as sentinel_hook_config_errors_total. Before the ring exists, they are written
    when it is created. Never raises."""
    global _pending_config_errors
    try:
        w = _writer
        if isinstance(w, RingWriter):
            w.emit(rf.Kind.EVENT, rf.CONFIG_ERROR_EVENT, n)
        elif w is None:
            _pending_config_errors += n
    except Exception:
        pass


_idle: bool | None = None  # this process's engine, as its adapter last said (None: never said)


def set_idle(idle: bool) -> None:
    """An adapter's word that the engine has no work (True) or has some (False), for the ring header:
    an idle engine does not step, and the daemon then tells idle from stuck. Writes only on a change,
    so an engine loop may call it on every pass. Never raises."""
    global _idle
    if idle is _idle:
        return
    _idle = idle
    try:
        writer().set_idle(idle)
    except Exception as exc:
        failed("set_idle", exc)


def set_mode(mode: str) -> None:
    """The probes' mode, for the ring header (the daemon exports it). Never raises."""
    global _mode
    _mode = mode
    try:
        w = _writer
        if w is not None:
            w.set_mode(mode)
    except Exception:
        pass


def start() -> RingWriter | NullWriter:
    """Create this process's writer (idempotent). Never raises."""
    global _writer
    with _start_lock:
        if _writer is not None:
            return _writer
        try:
            if setting(env.DISABLE):
                _writer = NullWriter("disabled")
                return _writer
            capacity = setting(env.RING_CAPACITY)
            identity = identity_from_env()
            identity.update(_identity_overrides)
            policy = FsPolicy.from_env()  # SENTINEL_GROUP, SENTINEL_DIR_MODE, SENTINEL_FILE_MODE
            w = RingWriter.create(layout.default_dir(), identity, capacity, policy.file_mode, policy.dir_mode, policy.gid)
            atexit.register(_at_exit)
            if "multiprocessing" in sys.modules:
                # Forked multiprocessing children leave through os._exit(), which skips atexit but
                # runs multiprocessing's finalizers: mark the clean exit there too.
                import multiprocessing.util

                multiprocessing.util.Finalize(None, _at_exit, exitpriority=-100)
            w.emit(rf.Kind.MARK, rf.Mark.START)
            if _milestone_hooks:
                w.on_milestone = _run_milestones
            if _mode:
                w.set_mode(_mode)
            if _pending_config_errors:
                w.emit(rf.Kind.EVENT, rf.CONFIG_ERROR_EVENT, _pending_config_errors)
            _writer = w
        except Exception as exc:  # no dir, full disk, bad environment: run on as a no-op
            _writer = NullWriter(f"{type(exc).__name__}: {exc}")
            log_once("start", "hooks disabled, could not open a ring in %s (%s)", layout.default_dir(), _writer.reason)
        return _writer


def disable(reason: str) -> None:
    """SENTINEL_DIR cannot be used (found before the first ring, e.g. by the crash set-up): every
    hook becomes a counted no-op, with the same single line a failed ring start logs."""
    global _writer
    with _start_lock:
        if _writer is not None and not isinstance(_writer, NullWriter):
            return  # a ring is open already: the hooks work
        if _writer is None:
            _writer = NullWriter(reason)
    log_once("start", "hooks disabled, could not write in %s (%s)", layout.default_dir(), reason)


def writer() -> RingWriter | NullWriter:
    """This process's ring writer, started on first use (``start``): a NullWriter when the hooks are
    disabled or no ring could be opened. Never raises."""
    w = _writer
    return w if w is not None else start()


def failed(where: str, exc: BaseException) -> None:
    """Count a swallowed hook failure and log the first of its kind."""
    global errors
    errors += 1
    try:
        w = _writer
        if w is not None:
            w.note_dropped()
    except Exception:
        pass
    log_once("fail:" + where, "hook %s failed and is now a no-op for this call (%s: %s)",
             where, type(exc).__name__, exc)


def set_identity(**fields: Any) -> None:
    """Identity that adapters learn later (rank, framework). Applied now and to a future ring."""
    check_identity_fields(fields)
    _identity_overrides.update({k: v for k, v in fields.items() if v is not None})
    w = _writer
    if w is not None:
        w.set_identity(**fields)


def _at_exit() -> None:
    try:
        w = _writer
        if w is not None:
            w.close(clean_exit=True)
    except Exception:
        pass


def _after_fork_in_child() -> None:
    # The child must not write into its parent's ring, nor keep its parent's lock alive.
    global _writer, _start_lock, _idle, _pending_config_errors
    w = _writer
    _writer = None
    _idle = None  # the child's own engine, if any, says so itself
    _pending_config_errors = 0  # the parent counts its own; the child's config is the parent's, counted once
    _start_lock = threading.Lock()
    if isinstance(w, RingWriter):
        w.abandon()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def reset_for_tests() -> None:
    """Close the writer and forget state (tests only)."""
    global _writer, errors, _mode, _pending_config_errors, _idle
    w = _writer
    _writer = None
    errors = 0
    _mode, _pending_config_errors, _idle = "", 0, None
    _logged.clear()
    _identity_overrides.clear()
    if w is not None:
        w.close(clean_exit=False)


_triton_ok: bool | None = None


def triton_available() -> bool:
    """Whether the Triton kernels (``kernels``: the probe, its publish, the collective marks' bump)
    import, decided once per process (a failure is logged once). Never raises."""
    global _triton_ok
    if _triton_ok is None:
        try:
            from . import kernels  # noqa: F401

            _triton_ok = True
        except Exception as exc:
            _triton_ok = False
            log_once("triton", "Triton unavailable (%s); CUDA probes and marks use torch ops (more launches)", exc)
    return _triton_ok
