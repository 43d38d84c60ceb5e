"""The kernel-log watcher: the NVIDIA driver's ``NVRM: Xid`` and ``SXid`` lines, read from
``/dev/kmsg`` (or a file in its format) as the kernel writes them, with the same reader
``sentinel triage`` uses (``triage.readers.kernel_log``).

Each XID becomes an event like NVML's (``GpuWatcher.record_xid``): journaled, counted, attributed to
the GPU (the PCI address mapped to its NVML index where NVML runs, else ``pci:<address>``) and,
through the process table, to the process, its rank and pod; its pid's fault record gets the
evidence ``xid_<N>``. NVML reports the same XID: the GPU watcher counts it once.

Reading ``/dev/kmsg`` needs CAP_SYSLOG where ``kernel.dmesg_restrict`` is 1 (and, in a container, the
device); without it the watcher logs one line and stays off. A text file the host's syslog writes
(``/var/log/kern.log``, ``/var/log/messages``) works too, and is reopened when it is rotated. It starts
at the end of the log: XIDs from before the daemon started are history (``sentinel triage`` reads a
saved ``dmesg``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import Any

from sentinel.daemon.context import DaemonContext
from sentinel.daemon.nvml import XidEvent
from sentinel.daemon.watchers.gpus import GpuWatcher
from sentinel.triage.readers import kernel_log

__all__ = ["KernelLogWatcher", "KMSG", "READS_PER_POLL"]

log = logging.getLogger("sentinel.daemon")
KMSG = "/dev/kmsg"
READS_PER_POLL = 4096  # /dev/kmsg gives one record per read; a file up to 64 KiB per read
_CHUNK = 64 << 10


class KernelLogWatcher:
    """Follows ``config.kmsg`` (a path; "" for off) and hands each XID to ``gpus``."""

    def __init__(self, ctx: DaemonContext, gpus: GpuWatcher) -> None:
        self.ctx = ctx
        self.gpus = gpus
        self.path = ctx.config.kmsg
        self.fd: int | None = None
        self.is_device = False
        self.partial = b""
        self.xids = 0
        self.lost = 0  # /dev/kmsg records overwritten before we read them
        self.inode = -1
        self._next_rotation_check = 0.0
        self.reason = ""
        if self.path:
            self._open()

    def _open(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.reason = f"{type(exc).__name__}: {exc}"
            log.info("kernel log unavailable: XIDs come from NVML only", extra={"path": self.path, "error": self.reason})
            return
        st = os.fstat(fd)
        self.is_device = stat.S_ISCHR(st.st_mode)
        self.inode = st.st_ino
        os.lseek(fd, 0, os.SEEK_END)  # history is not news (see the module's docstring)
        self.fd = fd
        log.info("following the kernel log for XIDs", extra={"path": self.path})

    # -- the Watcher protocol -------------------------------------------------------------------

    def poll(self, now: float) -> None:
        if self.fd is None:
            return
        data = []
        for _ in range(READS_PER_POLL):
            try:
                chunk = os.read(self.fd, 8192 if self.is_device else _CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the ring buffer wrapped past us: records lost, go on
                    self.lost += 1
                    continue
                log.warning("kernel log read failed; stopped", extra={"path": self.path, "error": str(exc)})
                self.close()
                break
            if not chunk:
                break  # a file's end
            data.append(chunk)
        if data:
            self.feed(b"".join(data))
        if not self.is_device and self.fd is not None and time.monotonic() >= self._next_rotation_check:
            self._next_rotation_check = time.monotonic() + 1.0
            self._reopen_if_rotated()

    def _reopen_if_rotated(self) -> None:
        """A syslog file renamed away (logrotate) or truncated: read the new one from its start."""
        try:
            st = os.stat(self.path)
        except OSError:
            return  # between the rename and the new file: next time
        if st.st_ino == self.inode and st.st_size >= os.lseek(self.fd, 0, os.SEEK_CUR):
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        os.close(self.fd)
        self.fd, self.inode, self.partial = fd, os.fstat(fd).st_ino, b""
        log.info("kernel log rotated; reading the new file", extra={"path": self.path})

    def view(self) -> dict[str, Any]:
        return {"kmsg_xids": self.xids, "kmsg_lost": self.lost}

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # -- events ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Read the XIDs of kernel log bytes (whole lines; a partial last line waits for the next)."""
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:][-kernel_log.MAX_LINE:]
        text = data[:cut].decode("utf-8", "replace")
        if "Xid (PCI:" not in text:
            return
        for ev in kernel_log.parse(text):
            self._event(ev)

    def _event(self, ev: kernel_log.XidEvent) -> None:
        self.xids += 1
        if ev.nvswitch:
            gpu = f"nvswitch:{ev.pci}"
        else:
            gpu = self.gpus.nvml.index_for_pci(ev.pci) or f"pci:{ev.pci}"
        pids = (ev.pid,) if ev.pid is not None else ()
        pods = tuple(sorted({(s.identity.get("namespace", ""), s.identity.get("pod", ""))
                             for s in self.ctx.states.values()
                             if s.identity.get("pid") in pids and s.identity.get("pod")}))
        detail = ev.mmu_fault or ev.sm_exception or ev.detail
        self.gpus.record_xid(XidEvent(gpu, ev.uuid or self.gpus.nvml.uuid_for_pci(ev.pci), ev.xid, pids, time.time(), pods),
                             source="kmsg", detail=detail[:300])
