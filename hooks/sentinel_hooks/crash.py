"""Crash evidence, set up before anything can crash: CUDA coredump settings, faulthandler, and the
fatal exception's text in the ring.

All of it runs at injection (interpreter start-up), before torch initialises CUDA, because CUDA
reads its coredump settings once, at initialisation. A user's own settings always win, and each
part can be switched off:

    SENTINEL_COREDUMP=0      leave the CUDA coredump variables alone
    SENTINEL_FAULTHANDLER=0  no faulthandler file
    SENTINEL_EXCEPTHOOK=0    no exception record
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from typing import Any

from . import env, frames, layout, runtime
from . import ringformat as rf
from .writer import FsPolicy

__all__ = [
    "SKIP_FLAGS", "CORE_PREFIX", "CORE_SUFFIX", "coredump_env", "setup_coredumps", "setup_faulthandler",
    "FATAL_SIGNALS", "REPORT_ONLY_HANDLERS", "rearm_faulthandler", "setup_excepthook",
]

# Small dumps, written fast: the skip flags drop memory contents, yet cuda-gdb still names the
# exception, the kernel, the PC and the thread (measured on H100: 0.9-5.5 MB instead of 40 MB).
# CUDA_ENABLE_LIGHTWEIGHT_COREDUMP is gone in CUDA 13; these flags replace it.
SKIP_FLAGS = ("skip_nonrelocated_elf_images,skip_global_memory,skip_shared_memory,"
              "skip_local_memory,skip_constbank_memory")
CORE_PREFIX = "core_"
CORE_SUFFIX = ".nvcudmp"

_faulthandler_file = None
_faulthandler_actions: dict[int, bytes] = {}  # signal -> faulthandler's handler address, as installed
_prev_excepthook = None
_prev_threading_hook = None


def coredump_env(base: str) -> dict[str, str]:
    """The CUDA coredump variables Sentinel sets (where the user has not set them)."""
    cores = layout.cores_dir(base)
    return {
        "CUDA_ENABLE_COREDUMP_ON_EXCEPTION": "1",
        # %h host, %p pid, %t time: the daemon reads the pid back to wait for the writer's exit.
        "CUDA_COREDUMP_FILE": os.path.join(cores, f"{CORE_PREFIX}%h_%p_%t{CORE_SUFFIX}"),
        "CUDA_COREDUMP_GENERATION_FLAGS": SKIP_FLAGS,
        "CUDA_ENABLE_CPU_COREDUMP_ON_EXCEPTION": "0",  # the GPU dump is the evidence; a host core can be GBs
        "CUDA_ENABLE_USER_TRIGGERED_COREDUMP": "1",  # for hangs: write to the pipe to dump on demand
        "CUDA_COREDUMP_PIPE": os.path.join(cores, "pipe_%h_%p"),
    }


def _cannot_write(what: str, exc: Exception) -> None:
    """One line, never an exception: SENTINEL_DIR (or a folder in it) cannot be written. When the
    rings cannot be made there either, the hooks turn into counted no-ops now, and that line is the
    only one the process gets."""
    base = layout.default_dir()
    reason = f"{type(exc).__name__}: {exc}"
    rings = layout.rings_dir(base)
    try:
        usable = os.access(rings if os.path.isdir(rings) else base, os.W_OK | os.X_OK)
    except Exception:
        usable = False
    if usable:
        runtime.log_once("crash:" + what, "%s off, could not write in %s (%s)", what, base, reason)
    else:
        runtime.disable(reason)


def setup_coredumps(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set the coredump variables in ``environ`` (os.environ by default). Returns what was set.

    Nothing is set when SENTINEL_DIR/cores cannot be made: CUDA then behaves as it would without us."""
    environ = os.environ if environ is None else environ
    reading = env.COREDUMP.read(environ)
    if reading.problem:
        runtime.config_problem(reading.problem)
    if not reading.value:
        return {}
    base = layout.default_dir()
    wanted = coredump_env(base)
    applied = {k: v for k, v in wanted.items() if k not in environ}
    if applied:
        try:
            FsPolicy.from_env().make_dirs(layout.cores_dir(base))
        except (OSError, ValueError) as exc:
            _cannot_write("GPU coredumps", exc)
            return {}
        environ.update(applied)
    return applied


def setup_faulthandler() -> str | None:
    """Dump Python tracebacks of all threads to a per-process file on a fatal signal. A forked child
    gets its own file (register_at_fork), so that its crash is not written into its parent's."""
    if not runtime.setting(env.FAULTHANDLER):
        return None
    path = _open_faulthandler_file()
    if path is not None and hasattr(os, "register_at_fork") and not _fork_hook[0]:
        _fork_hook[0] = True
        os.register_at_fork(after_in_child=_faulthandler_in_child)
    return path


_fork_hook = [False]


def _open_faulthandler_file() -> str | None:
    global _faulthandler_file
    import atexit
    import faulthandler

    folder = layout.faults_dir()
    # The name the daemon looks for: the ring header's host (SENTINEL_HOST, else the hostname).
    path = layout.faulthandler_path(layout.default_dir(), env.read(env.HOST) or socket.gethostname(), os.getpid())
    try:
        policy = FsPolicy.from_env()
        policy.make_dirs(folder)
        fd = policy.create_file(path, os.O_WRONLY | os.O_TRUNC)
    except (OSError, ValueError) as exc:
        _cannot_write("crash tracebacks", exc)
        return None
    _faulthandler_file = os.fdopen(fd, "w")
    faulthandler.enable(file=_faulthandler_file, all_threads=True)
    _faulthandler_actions.clear()
    _faulthandler_actions.update(_handler_addresses())
    atexit.register(_drop_empty_faulthandler_file, path)
    return path


def _faulthandler_in_child() -> None:
    global _faulthandler_file
    try:
        import faulthandler

        if _faulthandler_file is None or not faulthandler.is_enabled():
            return
        inherited, _faulthandler_file = _faulthandler_file, None
        try:
            inherited.close()  # our copy of the parent's file descriptor
        except OSError:
            pass
        _open_faulthandler_file()
    except Exception:
        pass  # the child runs on, without a dump file of its own


# faulthandler's signals (Modules/faulthandler.c). A library loaded later may install its own handler
# for one of them, and faulthandler's never runs: tvm_ffi, which vLLM 0.32 loads, takes SIGSEGV, so a
# worker that segfaulted in a native op left an empty dump and a fault record with no location.
FATAL_SIGNALS = tuple(getattr(signal, n) for n in ("SIGSEGV", "SIGFPE", "SIGABRT", "SIGBUS", "SIGILL") if hasattr(signal, n))
# Libraries whose fatal-signal handler only reports and dies (prints a native backtrace, then
# re-raises): faulthandler may go in front of those. Never in front of a handler that recovers from
# its own faults (JITs, wasm runtimes): it would get a re-raised signal instead of the real fault.
REPORT_ONLY_HANDLERS = ("libtvm_ffi",)
_SIGACTION_BYTES = 256  # more than any libc's struct sigaction (152 bytes on glibc x86-64)
_libc = None
_rearm_lock = threading.Lock()


def _sigaction(signum: int, new: Any = None) -> Any:
    """libc's sigaction(2): returns the current action as an opaque buffer, installing ``new`` (one
    such buffer) if given. Raises OSError. The buffer's first word is the handler's address on every
    Linux libc; the rest is only ever copied back whole."""
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    old = ctypes.create_string_buffer(_SIGACTION_BYTES)
    if _libc.sigaction(signum, new, old) != 0:
        raise OSError(ctypes.get_errno(), f"sigaction({signum})")
    return old


def _handler_library(action: Any) -> str:
    """The file name of the shared object a signal action's handler lives in ("" if unknown)."""
    import ctypes

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    address = int.from_bytes(action.raw[: ctypes.sizeof(ctypes.c_void_p)], sys.byteorder)
    info = DlInfo()
    if address <= 1 or not _libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)):  # SIG_DFL, SIG_IGN
        return ""
    return os.path.basename((info.dli_fname or b"").decode("utf-8", "replace"))


def _handler_addresses() -> dict[int, bytes]:
    if not sys.platform.startswith("linux"):
        return {}
    try:
        return {sig: _sigaction(sig).raw[:8] for sig in FATAL_SIGNALS}
    except Exception:
        return {}


def rearm_faulthandler(_step: int = 0) -> list[int]:
    """Put faulthandler back in front of a report-only fatal-signal handler (REPORT_ONLY_HANDLERS)
    installed after it, chaining to that handler: on a crash faulthandler writes its dump, then the
    other library's handler runs as it would have. Handlers of any other library are left in front,
    and said so once. Returns the signals re-armed. Cheap (five sigaction calls) and never raises;
    the hooks call it at steps 1, 2, 4, 8, ... (``runtime.at_step_milestones``)."""
    try:
        import faulthandler

        with _rearm_lock:
            if _faulthandler_file is None or not _faulthandler_actions or not faulthandler.is_enabled():
                return []
            foreign, others = {}, {}
            for sig, ours in _faulthandler_actions.items():
                action = _sigaction(sig)
                if action.raw[:8] != ours:
                    library = _handler_library(action)
                    if any(library.startswith(name) for name in REPORT_ONLY_HANDLERS):
                        foreign[sig] = action
                    else:
                        others[sig] = library or "unknown"
            for sig, library in others.items():
                runtime.log_once(f"foreign-handler:{sig}:{library}", "%s's handler for %s runs instead of "
                                 "faulthandler: a crash there leaves no Python traceback for Sentinel",
                                 library, signal.Signals(sig).name)
            if not foreign:
                return []
            faulthandler.disable()  # restores the actions it saved at enable()
            for sig, action in foreign.items():
                _sigaction(sig, action)  # the other library's handler: faulthandler saves it as the one to chain to
            faulthandler.enable(file=_faulthandler_file, all_threads=True)
            _faulthandler_actions.update(_handler_addresses())
        runtime.log_once("rearm-faulthandler", "%s replaced the crash handler for %s; faulthandler now runs first "
                         "and then hands over to it", _handler_library(next(iter(foreign.values()))),
                         ", ".join(signal.Signals(s).name for s in sorted(foreign)))
        return sorted(foreign)
    except Exception as exc:
        runtime.failed("rearm faulthandler", exc)
        return []


def _drop_empty_faulthandler_file(path: str) -> None:
    # A clean exit leaves nothing to keep.
    try:
        if os.path.getsize(path) == 0:
            os.unlink(path)
    except OSError:
        pass


def _record_exception(exc_type: Any, exc: Any, where: str) -> None:
    try:
        if exc_type is None or issubclass(exc_type, (SystemExit, KeyboardInterrupt)):
            return
        text = f"{exc_type.__name__}: {exc}".strip()
        w = runtime.writer()
        frame = _top_frame(getattr(exc, "__traceback__", None))
        w.emit(rf.Kind.EXCEPTION, 1 if where == "main" else 2, 0, 0, 0, w.intern(text[:250]),
               w.intern(frame[:250]) if frame else 0)
    except Exception:
        pass


def _top_frame(tb: Any) -> str:
    """``file:line in function`` of the frame to blame (``frames.blame``: the innermost application
    frame, never Sentinel's own)."""
    chain = []
    while tb is not None:
        chain.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    return frames.blame(reversed(chain))


def _excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
    _record_exception(exc_type, exc, "main")
    (_prev_excepthook or sys.__excepthook__)(exc_type, exc, tb)


def _threading_hook(args: Any) -> None:
    _record_exception(args.exc_type, args.exc_value, "thread")
    if _prev_threading_hook is not None:
        _prev_threading_hook(args)


def setup_excepthook() -> None:
    """Record an uncaught exception's text in the ring, then hand over to the previous hook."""
    global _prev_excepthook, _prev_threading_hook
    if not runtime.setting(env.EXCEPTHOOK):
        return
    if sys.excepthook is not _excepthook:
        _prev_excepthook = sys.excepthook
        sys.excepthook = _excepthook
    if threading.excepthook is not _threading_hook:
        _prev_threading_hook = threading.excepthook
        threading.excepthook = _threading_hook
