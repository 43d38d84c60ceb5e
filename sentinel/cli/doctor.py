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

__all__ = ["checks", "framework_rows", "render", "default_dir", "filesystem_type", "MEMORY_FILESYSTEMS", "NAME", "HELP",
           "add_arguments", "run"]


def checks(base_dir: str, gdb: str | None = None, sites: list[str] | None = None) -> list[dict[str, Any]]:
    """The doctor's checks for ``base_dir`` (``gdb``: the cuda-gdb to look for; ``sites``: the
    site-packages folders to look for vLLM and SGLang in, default this Python's), one dict each:
    ``check``, ``status`` ("ok", "warn" or "fail"), ``detail`` and ``fix`` (what to do; may be empty).
    Looks at cuda-gdb, Yama's ptrace_scope, the coredump variables, the folder and the filesystem of
    its rings (device words), NVML, watchdog, Python, and the serving frameworks installed: their
    release, whether the adapter's range holds it, and which of its checks the release's source
    lets it turn on."""
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
    out.extend(framework_rows(sites))
    return out


def framework_rows(sites: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per adapter whose framework is installed under ``sites`` (default: this Python's
    path), read from its source without importing it (``sentinel_hooks.adapters.source``): the
    release and distribution, the verdict against the adapter's declared range, and the checks on
    and off (with the first names missing). One "frameworks" row when none is installed."""
    from sentinel_hooks.adapters import ADAPTERS, get
    from sentinel_hooks.adapters.source import installed

    rows = []
    for name in ADAPTERS:
        try:
            found = installed(name, sites)
        except Exception as exc:  # a broken install is worth a row, not a crash
            rows.append({"check": name, "status": "warn", "detail": f"could not read it: {type(exc).__name__}: {exc}",
                         "fix": ""})
            continue
        if found is None:
            continue
        low, high = get(name).supported_versions
        on = [c for c, missing in found["checks"].items() if not missing]
        off = {c: missing for c, missing in found["checks"].items() if missing}
        detail = (f"{found['distribution']} {found['version']} ({found['verdict']}; the adapter supports >= {low}, "
                  f"< {high}); checks on: {', '.join(on) or 'none'}")
        if off:
            detail += "; off: " + ", ".join(f"{c} (missing {m[0]}{' and more' if len(m) > 1 else ''})"
                                           for c, m in off.items())
        if found["also_installed"]:
            detail += f"; also installed: {', '.join(found['also_installed'])} (a stale install?)"
        good = found["verdict"] in ("verified", "in range") and not off and not found["also_installed"]
        rows.append({"check": name, "status": "ok" if good else "warn", "detail": detail,
                     "fix": "" if good else f"run a release the {name} adapter supports (>= {low}, < {high}); the "
                     "checks off stay off, the others work"})
    if not rows:
        where = ", ".join(sites) if sites else "this Python"
        rows.append({"check": "frameworks", "status": "ok", "detail": f"no vLLM or SGLang in {where}",
                     "fix": "run `sentinel doctor` in the serving image (or pass --site with its site-packages) to "
                            "see the release and the checks the adapters turn on"})
    return rows


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
HELP = "check cuda-gdb, ptrace, the coredump environment, NVML, SENTINEL_DIR and the serving frameworks"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sentinel doctor`."""
    add_dir(p)
    p.add_argument("--cuda-gdb", default=None, help="the cuda-gdb to check")
    p.add_argument("--site", action="append", default=None, metavar="DIR",
                   help="a site-packages folder of the serving environment to look for vLLM and SGLang in "
                        "(repeatable; default: this Python's)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    """Run `sentinel doctor`; returns 1 if a check failed, else 0 (warnings too)."""
    rows = checks(os.path.abspath(args.dir), args.cuda_gdb, args.site)
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 1 if any(r["status"] == "fail" for r in rows) else 0
