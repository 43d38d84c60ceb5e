"""Support for the chaos tests: a real `sentinel daemon` with any options, journal checks, and a
real small filesystem (for the full-disk tests). The fixtures are in conftest.py beside this file;
the shared ones (``h``, ``sdir``) in tests/conftest.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

Harness = Any  # tests/conftest.py's Harness: the ``h`` fixture

HELPERS = Path(__file__).resolve().parents[1] / "helpers"


def start_daemon(h: Harness, *extra: str, base_dir: str | None = None, port: int | None = None) -> Any:
    """Start a real daemon on ``base_dir`` (default h.dir), a tests/conftest.py DaemonProc; the harness
    stops it at teardown. It logs at info, not the harness's debug: storms would otherwise spend the
    daemon's time on log lines."""
    return h.daemon(base_dir, port, args=("--log-level", "info", *extra))


def dead_pid(i: int = 0) -> int:
    """A pid no process can have (at or above the kernel's pid_max): a coredump's writer, long gone."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + i


def write_core(base: str, pid: int, fixture: str | None, size: int = 4096, t: int = 0, chunks: int = 1) -> str:
    """A GPU coredump as the CUDA driver names and writes it (in place, ``chunks`` writes), whose
    content makes tests/helpers/fake_cuda_gdb.py print the real transcript ``fixture`` (None: a
    file cuda-gdb cannot read)."""
    cores = os.path.join(base, "cores")
    os.makedirs(cores, mode=0o700, exist_ok=True)
    path = os.path.join(cores, f"core_{socket.gethostname()}_{pid}_{t or int(time.time())}.nvcudmp")
    head = f"TRANSCRIPT cuda-gdb-{fixture}.txt\n".encode() if fixture else b"\x7fELF not a GPU coredump"
    body = head + b"\0" * max(0, size - len(head))
    step = -(-len(body) // chunks)
    with open(path, "wb") as f:
        for off in range(0, len(body), step):
            f.write(body[off: off + step])
            f.flush()
    return path


def journal_integrity(base: str) -> str:
    """SQLite's own verdict on the journal ("ok" when intact)."""
    db = sqlite3.connect(f"file:{os.path.join(base, 'journal.sqlite')}?mode=ro", uri=True, timeout=5.0)
    try:
        return "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def journal_query(base: str, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{os.path.join(base, 'journal.sqlite')}?mode=ro", uri=True, timeout=5.0)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


Samples = list[tuple[str, dict[str, str], float]]  # parse_samples() of one scrape


def by_pid(parsed: Samples, name: str, **labels: str) -> dict[str, float]:
    """{pid: value} of one metric in a parsed scrape (parse once, look up many)."""
    return {lab["pid"]: v for n, lab, v in parsed
            if n == name and all(lab.get(k) == want for k, want in labels.items())}


class SmallFs:
    """A tmpfs of a fixed size: mounted directly as root, else inside a user and mount namespace
    (``unshare -rm``) whose mount this process reaches through /proc/PID/root."""

    def __init__(self, size_bytes: int) -> None:
        self.size = size_bytes
        self.mountpoint = tempfile.mkdtemp(prefix="sntfs", dir="/tmp")
        self.path = ""  # where the filesystem is reachable from this process
        self.how = ""
        self._holder: subprocess.Popen | None = None
        self._ballast: list[str] = []

    def mount(self) -> str | None:
        """Returns None when mounted, else why it could not be."""
        opts = f"size={self.size},mode=0700"
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", self.mountpoint],
                             capture_output=True, text=True, timeout=30)
        if res.returncode == 0:
            self.path, self.how = self.mountpoint, "mount"
            return None
        why = f"mount -t tmpfs failed ({res.stderr.strip() or res.returncode})"
        unshare = shutil.which("unshare")
        if unshare is None:
            return why + "; unshare is not installed"
        ready = os.path.join(self.mountpoint, ".ready")
        script = (f'mount -t tmpfs -o {opts} tmpfs "$1" && touch "$1/.ready" && exec sleep 3600')
        self._holder = subprocess.Popen([unshare, "-rm", "sh", "-c", script, "sh", self.mountpoint],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        inside = f"/proc/{self._holder.pid}/root{self.mountpoint}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._holder.poll() is not None:
                return why + f"; unshare -rm failed ({self._holder.stderr.read().decode().strip()})"
            if os.path.exists(os.path.join(inside, ".ready")) and not os.path.exists(ready):
                self.path, self.how = inside, "unshare -rm"
                return None
            time.sleep(0.02)
        return why + "; unshare -rm did not mount in time"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Write ballast until the filesystem refuses more. Returns the bytes written."""
        path = os.path.join(self.path, f"ballast{len(self._ballast)}")
        self._ballast.append(path)
        written = 0
        chunk = b"\0" * 65536
        with open(path, "wb", buffering=0) as f:
            while True:
                try:
                    n = f.write(chunk if self.free_bytes() >= len(chunk) else chunk[:4096])
                except OSError:  # ENOSPC: full
                    break
                written += n or 0
                if not n:
                    break
        return written

    def unfill(self) -> None:
        for path in self._ballast:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._ballast.clear()

    def cleanup(self) -> None:
        if self.how == "mount":
            subprocess.run(["umount", "-l", self.mountpoint], capture_output=True, timeout=30)
        if self._holder is not None:
            if self._holder.poll() is None:
                os.killpg(self._holder.pid, signal.SIGKILL)  # its own session: the namespace goes with it
            self._holder.wait(timeout=10)
            self._holder.stderr.close()
        shutil.rmtree(self.mountpoint, ignore_errors=True)
