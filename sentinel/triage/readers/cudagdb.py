"""Running cuda-gdb on a GPU coredump, and parsing what it prints.

The debugger runs in batch mode with a fixed argument list (never a shell) and a timeout. The
parser takes any transcript, also one a user saved by hand, and never raises: what it cannot
find stays empty.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field

__all__ = ["GDB_COMMANDS", "GdbReport", "KIND", "MAX_DIGITS", "find_cuda_gdb", "looks_like", "parse", "run"]

GDB_COMMANDS = ("info cuda kernels", "bt", "info cuda devices", "x/4i $pc")
KIND = "cuda-gdb transcript"

# What only cuda-gdb prints: its exception banners and signals, its prompt, its focus lines.
_MARKERS = re.compile(rb"CUDA Exception:|CUDA_EXCEPTION_\d+|\(cuda-gdb\)|\[Current focus set to|"
                      rb"Switching focus to CUDA kernel|exception was triggered at PC")


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes, up to 64 KiB) is a cuda-gdb transcript: text with one of
    the lines only cuda-gdb prints. A GPU coredump itself (ELF) is not: cuda-gdb must read it."""
    return not head.startswith(b"\x7fELF") and b"\0" not in head[:4096] and bool(_MARKERS.search(head))


@dataclass
class GdbReport:
    """What a cuda-gdb transcript says of a GPU fault: the CUDA exception, the faulting kernel and
    where its PC was, launch dimensions, the device, the backtrace. Strings empty (and ``None``)
    for what the transcript does not show; ``ok`` when it has an exception or a kernel."""

    exception: str = ""  # e.g. "Warp Illegal Address", "Warp Assert"
    kernel: str = ""  # the faulting kernel's name, as cuda-gdb prints it (templates included)
    pc: str = ""
    function: str = ""  # where the PC is (the kernel or a device function)
    source_file: str = ""
    source_line: int | None = None
    grid: str = ""  # launch dims, e.g. "(512,1,1)"
    block_dim: str = ""
    focus_block: str = ""  # the faulting thread's coordinates
    focus_thread: str = ""
    device: int | None = None
    sm: int | None = None
    warp: int | None = None
    lane: int | None = None
    gpu_name: str = ""
    assertion: str = ""  # a device-side assert's message, when printed
    errors: list[str] = field(default_factory=list)  # what cuda-gdb said went wrong

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return bool(self.exception or self.kernel)


# The transcript may hold names the faulting process chose (kernels, files), so every pattern runs
# in linear time on any text: no lazy or optional part followed by a trailing ``\s*$`` that the
# engine can re-split in many ways (a 2 KB line of spaces took 15 s). Line ends are trimmed in code.
_EXC = re.compile(r"CUDA Exception:\s*([^\n]+)")
_SIGNAL = re.compile(r"Program terminated with signal (SIG\w+), ([^\n]+)")
_PC = re.compile(r"exception was triggered at PC\s+(0x[0-9a-fA-F]+)\s+([^\n]*)")
_LINE_END = re.compile(r":(\d+)\)$")  # the end of "(file.py:8)"
# "[Current focus set to ...]" (a coredump's batch transcript) or "[Switching focus to ...]" (a live session).
_FOCUS = re.compile(
    r"\[(?:Current focus set to|Switching focus to) CUDA kernel \d+, grid \d+, block (\([\d,\s]+\)), "
    r"thread (\([\d,\s]+\)), device (\d+), sm (\d+), warp (\d+), lane (\d+)\]"
)
# The kernel's frame: #0, or a later one when #0 is an inlined device function (operator*, a helper).
_FRAME0 = re.compile(r"^#\d+\s+(?:0x[0-9a-fA-F]+\s+in\s+)?(\S[^\n]*?)<<<(\([\d,\s]+\)),(\([\d,\s]+\))>>>\s*(?:\(([^\n]*)|$)",
                     re.M)
# Where a live session stopped, as cuda-gdb prints it on the exception: "0x... in <kernel>(<params>)" with
# the launch dimensions on the next line ("   <<<(1,12288,16),(256,1,1)>>> ()"); no "#0" before it.
_STOP = re.compile(r"^0x[0-9a-fA-F]+ in (\S[^\n]{0,4000})\n[ \t]*<<<(\([\d,\s]+\)),(\([\d,\s]+\))>>>", re.M)
# Fields people paste from a coredump's summary: "Faulting kernel:" (name on the next line or the same),
# "kernel: void name<...>(...)", "Launch geometry: <<<(4,8,1),(512,1,1)>>>", "GridDim (64,1,1)  BlockDim (32,4,1)".
_SUMMARY_KERNEL = re.compile(r"^(?:Faulting kernel|[Kk]ernel):[ \t]*(?:\n[ \t]*)?(\S[^\n]{0,2000})", re.M)
_SUMMARY_GEOMETRY = re.compile(r"<<<(\([\d,\s]+\)),\s*(\([\d,\s]+\))>>>")
_SUMMARY_DIMS = re.compile(r"GridDim\s*(\([\d,\s]+\))\s+BlockDim\s*(\([\d,\s]+\))")
_SUMMARY_FOCUS = re.compile(r"focus: device (\d+), sm (\d+), warp (\d+), lane (\d+)")
_FRAME_AT = re.compile(r"\)\s+at\s+(\S+?):(\d+)$")
_KERNELS_ROW = re.compile(r"^\*\s+\d+\s+\S+\s+\d+\s+\d+\s+\w+\s+0x[0-9a-fA-F]+\s+(\([\d,\s]+\))\s+(\([\d,\s]+\))\s+([^\n]+)",
                          re.M)
_DEVICE_ROW = re.compile(r"^\*\s+\d+\s+\S+\s+(NVIDIA .+?)\s{2,}", re.M)
# A device assert's message is one source line; bounded, so text full of "Assertion `" stays linear.
_ASSERT = re.compile(r"Assertion [`'\"].{1,512}?[`'\"] failed\.?|Assertion failed\.?", re.S)
_ERRLINE = re.compile(r"^(?:Error|warning: Error|.*?: No such file|.*?not a CUDA core|.*?Failed to).*$", re.M | re.I)
MAX_DIGITS = 18  # larger numbers are not coordinates or line numbers (and int() refuses > 4300 digits)


def parse(text: str) -> GdbReport:
    """Parse any cuda-gdb transcript (batch output, or one saved by hand) into a GdbReport. Never
    raises; the time it takes is linear in the text (tests/fuzz/test_fuzz_cudagdb.py)."""
    r = GdbReport()
    if not isinstance(text, str):
        return r
    if m := _EXC.search(text):
        r.exception = m.group(1).strip()
    if m := _PC.search(text):
        r.pc, r.function = m.group(1), m.group(2).strip()
        where = _location(r.function)
        if where:
            r.function, r.source_file, r.source_line = where
    if m := _FOCUS.search(text):
        r.focus_block, r.focus_thread = _dims(m.group(1)), _dims(m.group(2))
        r.device, r.sm, r.warp, r.lane = (_int(m.group(i)) for i in (3, 4, 5, 6))
    for m in _FRAME0.finditer(text):
        # After the "(" of the argument list: "...)", "...) at file:line", or an argument list that
        # wraps onto the next lines (a live session's bt); none at all ("kernel<<<...>>>").
        args = (m.group(4) or "").rstrip()
        at = None if args.endswith(")") else _FRAME_AT.search(args)
        r.kernel = m.group(1).strip()
        r.grid, r.block_dim = _dims(m.group(2)), _dims(m.group(3))
        if at and not r.source_file:
            r.source_file, r.source_line = at.group(1), _int(at.group(2))
        break
    if not r.kernel and (m := _STOP.search(text)):
        r.kernel = m.group(1).strip()
        r.grid, r.block_dim = _dims(m.group(2)), _dims(m.group(3))
    if m := _KERNELS_ROW.search(text):
        if not r.grid:
            r.grid, r.block_dim = _dims(m.group(1)), _dims(m.group(2))
        if not r.kernel:
            r.kernel = re.sub(r"\(\)$", "", m.group(3).strip())
    if not r.kernel and (m := _SUMMARY_KERNEL.search(text)):
        name = m.group(1).strip()
        r.kernel = re.sub(r"^void\s+", "", name)
    if not r.grid and (m := _SUMMARY_GEOMETRY.search(text) or _SUMMARY_DIMS.search(text)):
        r.grid, r.block_dim = _dims(m.group(1)), _dims(m.group(2))
    if r.device is None and (m := _SUMMARY_FOCUS.search(text)):
        r.device, r.sm, r.warp, r.lane = (_int(m.group(i)) for i in (1, 2, 3, 4))
    if not r.kernel and r.function:
        r.kernel = r.function
    if m := _DEVICE_ROW.search(text):
        r.gpu_name = m.group(1).strip()
    if m := _ASSERT.search(text):
        r.assertion = m.group(0).strip()
        if not r.exception:
            r.exception = "Assertion failed"
    if not r.exception and (m := _SIGNAL.search(text)):
        what = m.group(2).rstrip()
        r.exception = f"{m.group(1)}: {what[:-1] if what.endswith('.') else what}"  # e.g. a trap instruction: SIGTRAP
    r.errors = [ln.strip() for ln in _ERRLINE.findall(text)][:5]
    return r


def _location(rest: str) -> tuple[str, str, int | None] | None:
    """("fn", "file.py", 8) from "fn  (file.py:8)": the "(file:line)" must end the text and hold no space."""
    end = _LINE_END.search(rest)
    if end is None:
        return None
    head = rest[: end.start()]
    token = head.split()[-1] if head and not head[-1].isspace() else ""
    p = token.find("(")
    if p < 0 or p == len(token) - 1:
        return None
    cut = len(head) - len(token) + p
    return rest[:cut].strip(), token[p + 1:], _int(end.group(1))


def _int(digits: str) -> int | None:
    return int(digits) if len(digits) <= MAX_DIGITS else None


def _dims(s: str) -> str:
    return s.replace(" ", "")


def find_cuda_gdb(configured: str | None = None) -> str | None:
    """The cuda-gdb to run: the configured command, else cuda-gdb on PATH or in CUDA's usual homes."""
    if configured:
        return shutil.which(configured) or (configured if os.access(configured, os.X_OK) else None)
    found = shutil.which("cuda-gdb")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "cuda-gdb"), os.X_OK):
            return os.path.join(root, "bin", "cuda-gdb")
    return None


def run(core: str, exe: str, timeout_s: float = 60.0) -> tuple[str, float]:
    """Run cuda-gdb in batch mode on ``core``. Returns (transcript, seconds). Raises on timeout."""
    argv = [exe, "-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", f"target cudacore {core}"]
    for cmd in GDB_COMMANDS:
        argv += ["-ex", cmd]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                          errors="replace")
    return proc.stdout + ("\n" + proc.stderr if proc.stderr else ""), time.monotonic() - t0
