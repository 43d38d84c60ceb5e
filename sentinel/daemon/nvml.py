"""NVML: GPU XID events (a thread blocked in nvmlEventSetWait) and per-GPU utilisation and memory.

On a machine without NVIDIA's driver it is off, and says so once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["XidEvent", "GpuSample", "NvmlMonitor"]

log = logging.getLogger("sentinel.nvml")


@dataclass(frozen=True)
class XidEvent:
    """One NVML critical-XID event (nvmlEventTypeXidCriticalError): the GPU (index as a string, and
    its UUID), the XID code, the compute pids on that GPU when it was read, ``at`` in Unix seconds
    (when the daemon read it), and the (namespace, pod) pairs holding the GPU (node mode; else empty)."""

    gpu: str  # index as a string (a bounded metric label)
    uuid: str
    xid: int
    pids: tuple[int, ...]  # compute processes on that GPU when the event arrived
    at: float
    pods: tuple[tuple[str, str], ...] = ()  # (namespace, pod) holding that GPU, from the kubelet (node mode)


@dataclass(frozen=True)
class GpuSample:
    """One GPU's NVML reading: index as a string, UUID, product name, ``utilization`` 0..1 (NVML's
    busy percent over its last sample period, / 100), ``memory_used`` and ``memory_total`` in bytes,
    and the compute pids on it."""

    gpu: str
    uuid: str
    name: str
    utilization: float  # 0..1
    memory_used: int
    memory_total: int
    pids: tuple[int, ...] = ()  # compute processes on this GPU


class NvmlMonitor:
    """NVML for the daemon: ``sample()`` reads every GPU's utilisation and memory; ``start()`` runs a
    thread that puts XidEvents on ``events``. Without NVML (no driver or no pynvml, or ``enabled``
    False) ``ok`` is False, ``reason`` says why and ``sample()`` returns []. Never raises."""

    def __init__(self, enabled: bool = True, attribute: Callable[[str], list[Any]] | None = None) -> None:
        """``attribute(uuid)`` names the pods holding a GPU (``podresources.PodAttribution.pods_for``):
        called on the watcher thread, so that a slow kubelet never holds up the daemon's poll."""
        self.attribute = attribute
        self.ok = False
        self.reason = ""
        self.events: queue.SimpleQueue[XidEvent] = queue.SimpleQueue()
        self._nv: Any = None
        self._handles: list[Any] = []
        self._pci: dict[str, tuple[str, str]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not enabled:
            self.reason = "disabled"
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nv = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.ok = True
            self._pci_map()  # now, while every GPU answers: one that fell off the bus later cannot
        except Exception as exc:  # no driver, no library, no GPU
            self.reason = f"{type(exc).__name__}: {exc}"
            log.info("NVML unavailable: GPU utilisation, memory and XID events are off", extra={"reason": self.reason})

    def start(self) -> None:
        if self.ok and self._thread is None:
            self._thread = threading.Thread(target=self._watch_xids, name="sentinel-nvml", daemon=True)
            self._thread.start()

    def _watch_xids(self) -> None:
        nv = self._nv
        try:
            evset = nv.nvmlEventSetCreate()
        except Exception as exc:
            log.warning("NVML event set unavailable; XID events are off", extra={"error": str(exc)})
            return
        registered = 0
        for i, h in enumerate(self._handles):
            try:
                nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, evset)
                registered += 1
            except Exception as exc:
                log.warning("XID events not supported on this GPU", extra={"gpu": i, "error": str(exc)})
        if not registered:
            return
        log.info("watching XID events", extra={"gpus": registered})
        while not self._stop.is_set():
            try:
                data = nv.nvmlEventSetWait_v2(evset, 1000)
            except nv.NVMLError as exc:
                if getattr(exc, "value", None) == nv.NVML_ERROR_TIMEOUT:
                    continue
                log.warning("NVML event wait failed", extra={"error": str(exc)})
                time.sleep(1.0)
                continue
            try:
                handle = data.device
                idx = nv.nvmlDeviceGetIndex(handle)
                uuid = _s(nv.nvmlDeviceGetUUID(handle))
                try:
                    pids = tuple(p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(handle))
                except Exception:
                    pids = ()
                pods = tuple(sorted({(d.namespace, d.pod) for d in self.attribute(uuid)})) if self.attribute else ()
                self.events.put(XidEvent(str(idx), uuid, int(data.eventData), pids, time.time(), pods))
            except Exception as exc:
                log.warning("could not read an XID event", extra={"error": str(exc)})

    def _pci_map(self) -> dict[str, tuple[str, str]]:
        """PCI address as the kernel log writes it ("0000:3b:00") -> (NVML index, UUID); built once."""
        if self._pci is None:
            self._pci = {}
            for i, h in enumerate(self._handles):
                try:
                    bus = _s(self._nv.nvmlDeviceGetPciInfo(h).busId).lower()  # "00000000:3b:00.0"
                    domain, rest = bus.split(":", 1)
                    self._pci[f"{int(domain, 16):04x}:{rest.rsplit('.', 1)[0]}"] = (str(i), _s(self._nv.nvmlDeviceGetUUID(h)))
                except Exception:
                    continue
        return self._pci

    def index_for_pci(self, pci: str) -> str | None:
        """The NVML index (as a string) of the GPU at ``pci`` ("0000:3b:00", as in an Xid line); None
        without NVML or for an address it does not know."""
        if not self.ok:
            return None
        hit = self._pci_map().get(pci.lower().rsplit(".", 1)[0] if pci.count(".") else pci.lower())
        return hit[0] if hit else None

    def uuid_for_pci(self, pci: str) -> str:
        """The UUID of the GPU at ``pci``; "" when not known."""
        if not self.ok:
            return ""
        hit = self._pci_map().get(pci.lower().rsplit(".", 1)[0] if pci.count(".") else pci.lower())
        return hit[1] if hit else ""

    def sample(self) -> list[GpuSample]:
        if not self.ok:
            return []
        nv, out = self._nv, []
        for i, h in enumerate(self._handles):
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                try:
                    pids = tuple(p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(h))
                except Exception:
                    pids = ()
                out.append(GpuSample(str(i), _s(nv.nvmlDeviceGetUUID(h)), _s(nv.nvmlDeviceGetName(h)),
                                     util.gpu / 100.0, int(mem.used), int(mem.total), pids))
            except Exception:
                continue
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.ok:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
