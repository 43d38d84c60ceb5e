"""Which Python frame a fault is blamed on: the crashing thread's innermost frame that belongs to the
application, never one of Sentinel's own.

One rule for both sides: the hooks apply it to an uncaught exception's traceback (``crash``), the
daemon to a faulthandler dump (``sentinel.faults``). Standard library only.

Walking from the innermost frame outwards, a frame is skipped when it is:

- Sentinel's: the hooks (``sentinel_hooks/``), whose wrappers sit between a framework and its ops;
- the Python standard library (``lib/pythonX.Y/`` outside ``site-packages``, ``<frozen ...>``);
- dispatch plumbing that every call of an op passes through and that never causes a fault itself:
  PyTorch's op dispatch (``torch/_ops.py``), ``nn.Module.__call__`` (``torch/nn/modules/module.py``),
  its decorators and context managers (``torch/utils/_contextlib.py``, ``torch/autograd/grad_mode.py``,
  ``torch/amp/autocast_mode.py``), custom-op and torch-function dispatch (``torch/_library/``,
  ``torch/overrides.py``), ``torch.compile``'s entry (``torch/_dynamo/eval_frame.py``,
  ``torch/_compile.py``).

Framework code is application code here: for a vLLM worker, ``vllm/_custom_ops.py`` in
``cpu_attention_with_kv_cache`` is the frame to blame when the native op below ``torch/_ops.py``
crashes. If every frame is skipped, the innermost frame that is not Sentinel's is taken; if all of
them are Sentinel's, none is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["PLUMBING", "OWN", "is_own", "is_stdlib", "is_dispatch", "is_plumbing", "activity", "blame"]

# Path fragments of dispatch plumbing, matched after normalising separators to "/".
PLUMBING = (
    "/torch/_ops.py",
    "/torch/nn/modules/module.py",
    "/torch/utils/_contextlib.py",
    "/torch/autograd/grad_mode.py",
    "/torch/amp/autocast_mode.py",
    "/torch/_library/",
    "/torch/overrides.py",
    "/torch/_dynamo/eval_frame.py",
    "/torch/_compile.py",
)
OWN = ("/sentinel_hooks/",)
_STDLIB = re.compile(r"/lib/python\d+(\.\d+)?t?/")
_PACKAGES = ("/site-packages/", "/dist-packages/")


def is_own(filename: str) -> bool:
    """True for a frame of Sentinel's hooks."""
    path = "/" + filename.replace("\\", "/")
    return any(part in path for part in OWN)


def is_stdlib(filename: str) -> bool:
    """True for a frame of the Python standard library (``<frozen ...>`` modules included)."""
    path = "/" + filename.replace("\\", "/")
    return path.startswith("/<frozen ") or (_STDLIB.search(path) is not None and not any(p in path for p in _PACKAGES))


def is_dispatch(filename: str) -> bool:
    """True for framework dispatch code (PLUMBING): an op call passes through it on its way to native code."""
    path = "/" + filename.replace("\\", "/")
    return any(part in path for part in PLUMBING)


def is_plumbing(filename: str) -> bool:
    """True for the standard library and for framework dispatch code that no fault is blamed on."""
    return is_stdlib(filename) or is_dispatch(filename)


def activity(frames: list[tuple[str, int, str]]) -> int:
    """How likely a thread (frames innermost first) was the one running the native code that crashed,
    when the crash hit a thread with no Python frames (an OpenMP or other native worker, whose parent
    Python thread waits inside the op): 2 inside an op call (innermost frame in dispatch code), 1
    running application code, 0 waiting in the standard library (an idle helper thread)."""
    inner = [f for f in frames if not is_own(f[0])]
    if not inner:
        return 0
    if is_dispatch(inner[0][0]):
        return 2
    return 0 if is_stdlib(inner[0][0]) else 1


def blame(frames: Iterable[tuple[str, int, str]]) -> str:
    """``file:line in function`` of the frame to blame, from ``(file, line, function)`` tuples given
    innermost first; "" if there is none (no frames, or only Sentinel's)."""
    fallback = ""
    for filename, line, function in frames:
        if is_own(filename):
            continue
        where = f"{filename}:{line} in {function}"
        if not is_plumbing(filename):
            return where
        fallback = fallback or where
    return fallback
