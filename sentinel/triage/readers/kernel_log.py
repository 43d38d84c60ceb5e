"""Kernel log lines of the NVIDIA driver: ``NVRM: Xid`` and ``NVRM: SXid`` events, from ``dmesg``
(with or without ``-T``), ``journalctl -k`` and ``/dev/kmsg``.

The driver writes one line per event (the format of open-gpu-kernel-modules' ``nvErrorLog``):

    NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
    NVRM: Xid (PCI:0000:0a:00): 31, pid=13332, name=vllm_worker, Ch 00000010, intr 00000000. MMU Fault:
          ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f29_5b8c9000. Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ
    nvidia-nvswitch1: SXid (PCI:0000:84:00.0): 12028, Data {0x000001c0, ...}   (an NVSwitch's)

Older drivers leave out ``pid=``/``name=``; newer ones write ``pid='<unknown>', name=<unknown>`` when
no process is known. ``NVRM: GPU at PCI:0000:3b:00: GPU-<uuid>`` lines name the GPU at an address.
Whatever comes before ``NVRM:`` (a dmesg timestamp, ``dmesg --time-format iso``, a journald prefix,
a kmsg header) is the line's time, kept as written. The parser never raises; a line it cannot read is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["KIND", "KEYS", "XidEvent", "looks_like", "parse"]

KIND = "kernel log (NVRM Xid)"

_XID = re.compile(
    r"^(?P<prefix>.*?)(?:NVRM|nvidia-nvswitch\d*): (?P<s>S?)Xid \(PCI:(?P<pci>[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.\d)?)\): "
    r"(?P<code>\d{1,6})(?:,\s*(?P<rest>.*))?$")
_PID = re.compile(r"^pid=(?:'?<unknown>'?|(?P<pid>\d{1,10})),\s*(?:name=(?P<name>[^,]*?),\s*)?")
_GPU_AT = re.compile(r"NVRM: GPU at PCI:(?P<pci>[0-9A-Fa-f:.]+): (?P<uuid>GPU-[0-9A-Fa-f-]+)")
_MMU = re.compile(r"MMU Fault: ENGINE (?P<engine>\S+) (?P<client>\S+) faulted @ (?P<address>0x[0-9A-Fa-f_]+)\. "
                  r"Fault is of type (?P<fault>FAULT_\w+) (?P<access>ACCESS_TYPE_\w+)")
_SM = re.compile(r"Graphics SM (?:Warp|Global) Exception on \(GPC (\d+), TPC (\d+), SM (\d+)\): (?P<what>[^\n]+)")
_MARKER = re.compile(rb"(?:NVRM|nvidia-nvswitch\d*): S?Xid \(PCI:")
MAX_LINE = 4096  # longer lines are not the driver's
KEYS = (b"Xid (PCI:", b"NVRM: GPU at")  # every line parse() reads holds one (readers.scan.relevant_lines)


@dataclass(frozen=True)
class XidEvent:
    """One Xid (or NVSwitch SXid) line.

    ``pci`` is the GPU's bus address as the driver prints it ("0000:3b:00"); ``uuid`` the GPU's, when
    the log also names it; ``pid`` and ``process`` are None where the driver gives none; ``detail`` is
    the rest of the line; ``mmu_fault`` (Xid 31) is "FAULT_PDE ACCESS_TYPE_VIRT_READ @ 0x..." and
    ``sm_exception`` (Xid 13) the SM exception's text; ``time`` is what came before ``NVRM:``.
    """

    xid: int
    pci: str
    nvswitch: bool = False
    pid: int | None = None
    process: str | None = None
    detail: str = ""
    uuid: str = ""
    mmu_fault: str = ""
    sm_exception: str = ""
    time: str = ""


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) holds an NVRM Xid or SXid line."""
    return bool(_MARKER.search(head))


def parse(text: str | Iterable[str]) -> list[XidEvent]:
    """Every Xid/SXid line of ``text`` (a string, or its lines) in order, with the GPU UUIDs its
    "GPU at" lines give. Never raises; time linear in the text."""
    uuids: dict[str, str] = {}
    found: list[tuple[re.Match, str]] = []
    for line in text.splitlines() if isinstance(text, str) else text:
        if "Xid (PCI:" not in line and "NVRM: GPU at" not in line or len(line) > MAX_LINE:
            continue
        line = line.rstrip()
        at = _GPU_AT.search(line)
        if at:
            uuids[at["pci"].lower()] = at["uuid"]
            continue
        m = _XID.match(line)
        if m:
            found.append((m, line))
    return [_event(m, uuids) for m, _ in found]


def _event(m: re.Match, uuids: dict[str, str]) -> XidEvent:
    rest = (m["rest"] or "").strip()
    pid = process = None
    p = _PID.match(rest)
    if p:
        pid = int(p["pid"]) if p["pid"] else None
        name = (p["name"] or "").strip().strip("'")
        process = None if name in ("", "<unknown>") else name
        rest = rest[p.end():]
    pci = m["pci"].lower()
    mmu = _MMU.search(rest)
    sm = _SM.search(rest)
    return XidEvent(
        xid=int(m["code"]), pci=pci, nvswitch=bool(m["s"]), pid=pid, process=process, detail=rest,
        uuid=uuids.get(pci, ""),
        mmu_fault=f"{mmu['fault']} {mmu['access']} @ {mmu['address']} ({mmu['engine']} {mmu['client']})" if mmu else "",
        sm_exception=sm["what"].strip() if sm else "", time=_time(m["prefix"]),
    )


def _time(prefix: str) -> str:
    """The line's time as written: "[ 123.456]" / "[Fri Aug 30 11:43:09 2024]" (dmesg), an ISO time
    (dmesg --time-format iso), "Nov 29 11:28:11" (journald), or the kmsg header's microseconds since
    boot ("4,1234,5678901,-;")."""
    prefix = prefix.strip()
    kmsg = re.match(r"^\d+,\d+,(\d+),[^;]*;", prefix)
    if kmsg:
        return f"{int(kmsg[1]) / 1e6:.6f}s since boot"
    bracket = re.search(r"\[([^\]]{1,40})\]", prefix)
    if bracket:
        return bracket[1].strip()
    iso = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[,.]?\d*(?:[+-]\d\d:\d\d|Z)?)", prefix)
    if iso:
        return iso[1]
    journal = re.match(r"^([A-Z][a-z]{2}\s+\d{1,2}\s+\d\d:\d\d:\d\d)", prefix)
    return journal[1] if journal else ""
