"""Python stacks of live processes, with py-spy: evidence for a hang.

py-spy reads another process's memory through ptrace, so the sidecar needs SYS_PTRACE and a
shared process namespace with the serving container. It runs with an argument list (no shell)
and a timeout, and never stops the target for long (``--nonblocking`` is not used: a consistent
stack is worth the few milliseconds of pause).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

__all__ = ["find_py_spy", "dump"]


def find_py_spy() -> str | None:
    """The py-spy to run: on PATH, else beside this Python's executable (installed with the daemon);
    None when there is neither. Never raises."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")  # installed with the daemon
    return beside if os.access(beside, os.X_OK) else None


def dump(pid: int, exe: str | None = None, timeout_s: float = 10.0) -> str:
    """`py-spy dump` of ``pid``, or a line saying why there is none. Never raises."""
    exe = exe or find_py_spy()
    if exe is None:
        return "(py-spy not installed: pip install py-spy)"
    try:
        p = subprocess.run([exe, "dump", "--pid", str(int(pid))], capture_output=True, text=True,
                           timeout=timeout_s, stdin=subprocess.DEVNULL, errors="replace")
    except subprocess.TimeoutExpired:
        return f"(py-spy timed out after {timeout_s:.0f}s)"
    except OSError as exc:
        return f"(py-spy failed: {exc})"
    if p.returncode != 0:
        hint = " (the sidecar needs SYS_PTRACE and a shared process namespace)" if "ermission" in p.stderr else ""
        return f"(py-spy exited {p.returncode}: {p.stderr.strip()[:300]}){hint}"
    return p.stdout.strip()
