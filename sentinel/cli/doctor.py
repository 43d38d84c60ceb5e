"""`sentinel doctor`: can this machine give Sentinel the evidence it needs?"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from sentinel.cli.options import add_dir, add_json
from sentinel.triage.readers import cudagdb
from sentinel_hooks import layout
from sentinel_hooks.crash import coredump_env

__all__ = ["checks", "render", "default_dir", "filesystem_type", "MEMORY_FILESYSTEMS", "NAME", "HELP",
           "add_arguments", "run"]


def checks(base_dir: str, gdb: str | None = None) -> list[dict[str, Any]]:
    """The doctor's checks for ``base_dir`` (``gdb``: the cuda-gdb to look for), one dict each:
    ``check``, ``status`` ("ok", "warn" or "fail"), ``detail`` and ``fix`` (what to do; may be empty).
    Looks at cuda-gdb, Yama's ptrace_scope, the coredump variables, the folder and the filesystem of
    its rings (device words), NVML, watchdog, Python."""
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str, fix: str = "") -> None:
        out.append({"check": name, "status": "ok" if ok else ("warn" if ok is None else "fail"),
                    "detail": detail, "fix": fix})

    exe = cudagdb.find_cuda_gdb(gdb)
    if exe:
        add("cuda-gdb", True, exe)
    else:
        add("cuda-gdb", False, "not found on PATH or in CUDA_HOME/bin",
            "install the CUDA toolkit's cuda-gdb in the sidecar, or pass --cuda-gdb PATH; faults are still "
            "journaled, without a GPU backtrace")
    scope = "/proc/sys/kernel/yama/ptrace_scope"
    try:
        with open(scope) as f:
            level = int(f.read().strip())
        add("ptrace", level <= 1, f"kernel.yama.ptrace_scope = {level}",
            "" if level <= 1 else "py-spy needs ptrace: set ptrace_scope to 0 or 1, or run the sidecar with SYS_PTRACE")
    except ValueError:
        add("ptrace", None, f"{scope} does not hold a number", "check the kernel's Yama settings")
    except OSError:
        add("ptrace", None, "no Yama ptrace_scope (ptrace governed by capabilities only)",
            "in Kubernetes, give the sidecar SYS_PTRACE and shareProcessNamespace for py-spy")
    wanted = coredump_env(base_dir)
    mine = {k: os.environ.get(k) for k in wanted}
    if all(mine.values()):
        add("coredump env", True, f"set in this environment; dumps go to {mine['CUDA_COREDUMP_FILE']}")
    else:
        add("coredump env", None, "not set here (expected outside a hooked process)",
            "`sentinel run` and the hooks set them in serving processes; with your own launcher, export: "
            + " ".join(f"{k}={v}" for k, v in wanted.items()))
    if os.path.isdir(base_dir):
        writable = os.access(base_dir, os.W_OK)
        add("SENTINEL_DIR", writable, f"{base_dir} ({'writable' if writable else 'not writable'})",
            "" if writable else "make it writable by the serving processes and the daemon (mode 0700, one uid)")
    else:
        parent = os.path.dirname(os.path.abspath(base_dir)) or "/"
        add("SENTINEL_DIR", None if os.access(parent, os.W_OK) else False,
            f"{base_dir} does not exist yet (the daemon and the hooks create it)",
            "" if os.access(parent, os.W_OK) else f"{parent} is not writable: choose another --dir")
    rings = layout.rings_dir(base_dir)
    fs = filesystem_type(rings)
    if fs in MEMORY_FILESYSTEMS:
        add("device words", True, f"rings on {fs}: the GPU writes the collective marks into the ring files themselves "
            "(they survive a hung GPU, a dead context and a SIGKILL)")
    else:
        add("device words", None, f"rings on {fs or 'an unknown filesystem'}: the driver will not pin their pages, so "
            "the collective marks are copied into them every 20 ms (a SIGKILL loses the last 20 ms)",
            "put SENTINEL_DIR/rings on tmpfs: $XDG_RUNTIME_DIR, /dev/shm, or an emptyDir with medium: Memory")
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
        try:
            evset = pynvml.nvmlEventSetCreate()
            pynvml.nvmlDeviceRegisterEvents(pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, evset)
            xid = "XID event registration works"
        except Exception as exc:
            xid = f"XID events unavailable ({exc})"
        add("NVML", True, f"{n} GPU(s); {xid}")
        pynvml.nvmlShutdown()
    except Exception as exc:
        add("NVML", None, f"unavailable ({type(exc).__name__}: {exc})",
            "on a GPU node, mount the driver's libnvidia-ml into the sidecar (no GPU request needed)")
    try:
        import watchdog  # noqa: F401

        add("watchdog", True, "file events for rings and coredumps")
    except ImportError:
        add("watchdog", None, "missing: discovery falls back to rescans", "pip install watchdog")
    add("python", sys.version_info >= (3, 10), sys.version.split()[0])
    return out


MEMORY_FILESYSTEMS = ("tmpfs", "ramfs", "hugetlbfs")


def filesystem_type(path: str, mounts: str = "/proc/self/mounts") -> str:
    """The type of the filesystem ``path`` is on (or would be created on: the nearest existing folder
    above it), from the longest mount point in ``mounts`` that contains it; "" when unknown."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    p = os.path.realpath(p)
    best, kind = "", ""
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040 is a space
                if (p == point or p.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return ""
    return kind


def render(rows: list[dict[str, Any]]) -> str:
    """The checks as text: one ``[ok  ]``, ``[warn]`` or ``[FAIL]`` line each, and an indented
    ``-> fix`` line under each one not ok that has a fix."""
    marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    lines = []
    for r in rows:
        lines.append(f"[{marks[r['status']]}] {r['check']:<13} {r['detail']}")
        if r["fix"] and r["status"] != "ok":
            lines.append(f"       {'':<13} -> {r['fix']}")
    return "\n".join(lines)


def default_dir() -> str:
    """SENTINEL_DIR's default folder (``layout.default_dir``)."""
    return layout.default_dir()


# -- the subcommand -------------------------------------------------------------------------------

NAME = "doctor"
HELP = "check cuda-gdb, ptrace, the coredump environment, NVML and SENTINEL_DIR"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel doctor`."""
    add_dir(p)
    p.add_argument("--cuda-gdb", default=None, help="the cuda-gdb to check")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """Run `sentinel doctor`; returns 1 if a check failed, else 0 (warnings too)."""
    rows = checks(os.path.abspath(args.dir), args.cuda_gdb)
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 1 if any(r["status"] == "fail" for r in rows) else 0
