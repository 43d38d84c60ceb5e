"""The SENTINEL_DIR tree, built in one place for the hooks and the sidecar alike.

    SENTINEL_DIR/
      rings/          one ring file per hooked process (<host>.<pid>.<created_ns>.ring)
      cores/          GPU coredumps (CUDA_COREDUMP_FILE points here) and their dump-on-demand pipes
      faults/         each process's faulthandler dump (faulthandler_<host>_<pid>.log)
      fr/             PyTorch Flight Recorder dumps (TORCH_FR_DUMP_TEMP_FILE points here)
      evidence/       what a trap saw, as JSON
      logs/           the output `sentinel run --log-tap` copied from each command (<host>.<pid>.log)
      hooks/          the versioned copy of the hooks package `sentinel run` puts on PYTHONPATH
      journal.sqlite  the daemon's journal
      catalog.toml    known issues of this site (optional; read by the daemon)

Imports only ``env`` (itself standard library only).
"""

from __future__ import annotations

import os
import tempfile

from . import env

__all__ = ["default_dir", "rings_dir", "cores_dir", "faults_dir", "fr_dir", "evidence_dir", "hooks_dir",
           "logs_dir", "tap_log_path", "tap_log_pid", "journal_path", "catalog_path", "faulthandler_path", "fr_dump_prefix"]


def default_dir() -> str:
    """SENTINEL_DIR, else a per-user folder under XDG_RUNTIME_DIR or the temp dir."""
    found = env.read(env.DIR)
    if found:
        return found
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"sentinel-{os.getuid()}")


def rings_dir(base: str) -> str:
    """``base``/rings: one ring file per hooked process."""
    return os.path.join(base, "rings")


def cores_dir(base: str | None = None) -> str:
    """``base``/cores (``base`` default: ``default_dir()``): GPU coredumps and their pipes."""
    return os.path.join(base or default_dir(), "cores")


def faults_dir(base: str | None = None) -> str:
    """``base``/faults (``base`` default: ``default_dir()``): each process's faulthandler dump."""
    return os.path.join(base or default_dir(), "faults")


def fr_dir(base: str) -> str:
    """``base``/fr: PyTorch Flight Recorder dumps."""
    return os.path.join(base, "fr")


def evidence_dir(base: str | None = None) -> str:
    """``base``/evidence (``base`` default: ``default_dir()``): what a trap saw, as JSON."""
    return os.path.join(base or default_dir(), "evidence")


def hooks_dir(base: str) -> str:
    """``base``/hooks: the versioned copies of the hooks that `sentinel run` puts on PYTHONPATH."""
    return os.path.join(base, "hooks")


def logs_dir(base: str) -> str:
    """``base``/logs: the output of the commands `sentinel run --log-tap` ran, one file each."""
    return os.path.join(base, "logs")


def tap_log_path(base: str, host: str, pid: int) -> str:
    """The tapped output of the command ``pid`` on ``host`` (stdout and stderr, whole lines)."""
    name = f"{host}.{pid}.log".replace(os.sep, "_").replace("\0", "_")
    return os.path.join(logs_dir(base), name)


def tap_log_pid(name: str) -> tuple[str, int] | None:
    """(host, pid) of a ``tap_log_path`` file name; None for another name."""
    stem, dot, ext = name.rpartition(".")
    host, _, pid = stem.rpartition(".")
    if ext != "log" or not host or not pid.isdigit() or len(pid) > 10:
        return None
    return host, int(pid)


def journal_path(base: str) -> str:
    """``base``/journal.sqlite: the daemon's journal."""
    return os.path.join(base, "journal.sqlite")


def catalog_path(base: str) -> str:
    """``base``/catalog.toml: this site's known issues (optional)."""
    return os.path.join(base, "catalog.toml")


def faulthandler_path(base: str, host: str, pid: int) -> str:
    """The faulthandler dump of ``pid`` on ``host`` (both from the ring header: kept to one name)."""
    name = f"faulthandler_{host}_{pid}.log".replace(os.sep, "_").replace("\0", "_")
    return os.path.join(faults_dir(base), name)


def fr_dump_prefix(base: str) -> str:
    """Where `sentinel run` points TORCH_FR_DUMP_TEMP_FILE (unless the user set it)."""
    return os.path.join(fr_dir(base), "trace_rank_")
