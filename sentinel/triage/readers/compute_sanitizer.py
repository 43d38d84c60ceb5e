"""NVIDIA Compute Sanitizer reports (memcheck, racecheck, initcheck, synccheck) and the older
cuda-memcheck's: the first error is the fault, the others are counted.

The format is the one NVIDIA's Compute Sanitizer documentation describes (docs.nvidia.com/
compute-sanitizer, "Understanding Memcheck Errors", "Racecheck Report Modes", "Initcheck Tool",
"Synccheck Tool"), as seen in the public reports under tests/fixtures/compute-sanitizer/. Every
line the tool writes starts with ``=========`` (nine '='), whatever a log collector or an engine
put before it (``[rank0]:``, ``(VllmWorker rank=1 pid=110)``, CI indentation). A report is an
unindented line naming the error, followed by indented details::

    ========= Invalid __global__ read of size 4 bytes
    =========     at kernel(int *)+0x70 in file.cu:12        (older releases: at 0x70 in file.cu:12:kernel(int *))
    =========     by thread (1,0,0) in block (0,0,0)
    =========     Address 0x7f0605dfbde0 is out of bounds
    =========     and is 4 bytes after the nearest allocation at 0x7f0605dfbdd0 of size 12 bytes
    =========     Device Frame:...
    =========     Saved host backtrace up to driver entry point at kernel launch time
    =========     Host Frame:cudaLaunchKernel [0x6bedb] in libcudart.so.12   (or the module on a line of its own)
    ========= ERROR SUMMARY: 1 error

Units: access sizes, allocation sizes and distances are bytes; a PC is the offset (hex, as printed)
into the function named; addresses are device addresses, kept as printed.

The fault is the first device-side error; host API errors (``Program hit cudaError...``, which often
follow a kernel fault, and which PyTorch also triggers harmlessly at start-up) and leak reports are
the fault only when nothing else was reported. The parser never raises; time is linear in the text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from sentinel_hooks import frames

__all__ = ["KIND", "MAX_ERRORS", "MAX_LINES", "HostFrame", "SanitizerError", "SanitizerReport", "looks_like", "parse"]

KIND = "compute-sanitizer report"
MAX_ERRORS = 32  # reports kept in full; every report is counted
MAX_LINES = 64  # key lines kept for the record, 400 characters each
_MAX_FRAMES = 32  # device or host frames kept per report
_MAX_LINE = 16384  # longer lines are skipped (template-heavy names reach a few thousand characters)

# What only the sanitizer prints: its banner, or a report line after its prefix.
_HEAD_MARKER = re.compile(rb"(?<![=])={9} (?:COMPUTE-SANITIZER|CUDA-MEMCHECK|Invalid __\w+__ |Uninitialized __\w+__ |"
                          rb"(?:\w+: )?Race reported between|(?:\w+: )?(?:\(Warp Level Programming\) )?Potential \w+ hazard|"
                          rb"Barrier error|Leaked [\d,]+ bytes|Program hit \w+|Misaligned |Out-of-range |"
                          rb"Host API memory access error|(?:Cuda )?Malloc/Free error|ERROR SUMMARY: )")
# The tool's prefix: exactly nine '=' (Catch2 and others print longer runs of '='), then a space or the end.
_MARK = re.compile(r"(?<![=])={9}(?![=])(?: |$)")

_ACCESS = re.compile(r"Invalid (__\w+__) (read|write|atomic)(?: of size ([\d,]{1,20})(?: bytes?)?)?")
_HARDWARE = re.compile(r"(?:Misaligned|Out-of-range) (?:Shared or Local )?Address|"
                       r"(?:Warp |Lane |Device )?(?:Illegal Address|Illegal Instruction|Invalid PC|Misaligned PC|"
                       r"Hardware Stack Overflow|Invalid Address Space|Misaligned Register)")
_MALLOC = re.compile(r"(?:Cuda )?Malloc/Free error")
_LEAK = re.compile(r"Leaked ([\d,]{1,20}) bytes? at (0x[0-9a-fA-F]+)")
_API = re.compile(r"Program hit (\w+)(?: \(error (\d+)\))?(?: due to \"([^\"]{0,200})\")? on CUDA API call to (\w+)")
_UNINIT = re.compile(r"Uninitialized (__\w+__) memory read(?: of size ([\d,]{1,20}) bytes?)?")
_HOST_API = re.compile(r"Host API memory access error")
_UNUSED = re.compile(r"Unused memory in allocation")
_RACE = re.compile(r"(?:(Error|Warning|ERROR|WARNING|Information|INFO): )?Race reported between (\w+) access at (.+)")
_HAZARD = re.compile(r"(?:(Error|Warning|ERROR|WARNING|INFO): )?(?:\(Warp Level Programming\) )?"
                     r"Potential (RAW|WAR|WAW) hazard detected at (__\w+__) (0x[0-9a-fA-F]+) in block \(([\d, ]{1,40})\)")
_BARRIER = re.compile(r"Barrier error detected")

_BY_THREAD = re.compile(r"by thread \(([\d, ]{1,40})\) in block \(([\d, ]{1,40})\)")
_ADDRESS = re.compile(r"(?:Address|Access at|Access to) (0x[0-9a-fA-F]+)(?: is (out of bounds|misaligned))?")
_ALLOCATION = re.compile(r"and is (?:([\d,]{1,30}) bytes? (after|before)|(inside)) the nearest allocation at "
                         r"(0x[0-9a-fA-F]+) of size ([\d,]{1,30}) bytes?")
_AND_ACCESS = re.compile(r"and (\w+) access at (.+)")
_OLD_HAZARD_ACCESS = re.compile(r"(\w+) Thread \(([\d, ]{1,40})\) at (.+)")
_HAZARDS = re.compile(r" \[([\d,]{1,20}) hazards?\]$")
_UNINIT_DETAIL = re.compile(r"Uninitialized access at .{0,200}")
_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: ([\d,]{1,20}) errors?")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY: (.{0,120})")
_LEAK_SUMMARY = re.compile(r"LEAK SUMMARY: (.{0,120})")
_COMMAND = re.compile(r"(compute-sanitizer|cuda-memcheck)\b")
_TOOL_OPTION = re.compile(r"--tool[= ](memcheck|racecheck|initcheck|synccheck)\b")

_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FILE_LINE = re.compile(r"(\S+):(\d{1,9})")
_FILE_LINE_FUNC = re.compile(r"([^\s:]+):(\d{1,9}):(.+)")
_HOST_OFFSET = re.compile(r"\[0x[0-9a-fA-F]+\]$")
_OLD_HOST = re.compile(r"(\S+) \((.+) \+ 0x[0-9a-fA-F]+\)")

# Host frames of CUDA itself (driver, runtime, math and communication libraries): the launch path
# every kernel takes, never the caller to blame. Matched on the module's file name, or on the
# function name for a statically linked runtime.
_CUDA_MODULE = re.compile(r"(?:lib)?(?:(?:cuda|cudart|cublas|cublasLt|cudnn\w*|nccl|nvrtc|nvJitLink|cufft\w*|curand|"
                          r"cusparse\w*|cusolver\w*|nvToolsExt|cupti|nvcuda|nvcudart\w*|cudart64\w*|cublas64\w*)"
                          r"(?:[._-]|\d|$)|nvidia-)", re.I)
_CUDA_FUNCTION = re.compile(r"cu[A-Z]\w*|cuda[A-Z]\w*|__cudart\w*|libcudart_static\w*")
# Interpreter, C library and foreign-call plumbing between the application and the launch.
_PLUMBING_MODULE = re.compile(r"python[\d.]*|libpython[\d.]*\.so.*|libc\.so.*|libc-[\d.]+\.so|ld-linux.*|libffi\.so.*|"
                              r"_ctypes.*\.so")
_PLUMBING_FUNCTION = re.compile(r"_?Py\w*|__libc_start\w*|_start|ffi_call\w*|_call_function_pointer|_ctypes_callproc|"
                                r"pybind11::.*")

_PY_FRAME = re.compile(r'File "([^"]{1,500})", line (\d{1,9}), in (\S{1,200})')
_CUDA_ERROR = re.compile(r"CUDA error: ([^\n']{1,200}?)(?:'|$)")


@dataclass
class HostFrame:
    """One ``Host Frame:`` line: the function (empty when the tool printed only an offset), the
    source location when it printed one (``file.cpp:332``) and the binary's file name."""

    function: str = ""
    source: str = ""
    module: str = ""

    def is_cuda(self) -> bool:
        """A frame of the CUDA driver, runtime or libraries (the launch path, not a caller)."""
        name = self.function.split("(", 1)[0].strip()
        return bool(_CUDA_MODULE.match(self.module) or (name and _CUDA_FUNCTION.fullmatch(name)))

    def is_plumbing(self) -> bool:
        """A frame of the Python interpreter, the C library or a foreign-call layer."""
        name = self.function.split("(", 1)[0].strip()
        return bool(_PLUMBING_MODULE.fullmatch(self.module) or (name and _PLUMBING_FUNCTION.fullmatch(name)))

    def text(self) -> str:
        """``function at source in module``; ``??`` for an unnamed function. No offset: one frame,
        one text, on every build."""
        out = self.function[:300] or "??"
        if self.source:
            out += f" at {self.source}"
        return out + (f" in {self.module}" if self.module else "")


@dataclass
class SanitizerError:
    """One report. Empty strings (``None``, empty lists) for what it does not show.

    ``kind`` is its first line as printed; ``check`` the tool that reports that kind (memcheck,
    racecheck, initcheck, synccheck). For an access: ``space`` (``__global__``, ``__shared__``, ...),
    ``access`` (read, write, atomic), ``size`` (bytes). Where: ``function``, ``pc`` (hex offset into
    it), ``file`` and ``line`` (the ``at`` line, else the first device frame with a source line),
    ``thread`` and ``block`` (``(x,y,z)``). ``address`` and ``address_state`` ("out of bounds",
    "misaligned"); ``allocation``: the allocation it missed, ``relation`` (after, before, inside),
    ``distance`` and ``size`` in bytes, ``address``. Racecheck: ``accesses`` (``Read access at ...``)
    and ``hazards``. A host API error: ``api_error`` (``cudaErrorLaunchFailure``), ``api_call``. A
    leak: ``leaked`` bytes. ``lines``: the report's key lines, prefix removed.
    """

    kind: str
    check: str
    severity: str = ""
    space: str = ""
    access: str = ""
    size: int | None = None
    function: str = ""
    pc: str = ""
    file: str = ""
    line: int | None = None
    thread: str = ""
    block: str = ""
    address: str = ""
    address_state: str = ""
    allocation: dict[str, Any] | None = None
    device_frames: list[str] = field(default_factory=list)
    host_frames: list[HostFrame] = field(default_factory=list)
    accesses: list[str] = field(default_factory=list)
    hazards: int = 0
    api_error: str = ""
    api_call: str = ""
    leaked: int | None = None
    detail: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def device_side(self) -> bool:
        """An error found in a kernel (not a host API error, a leak or unused memory at exit)."""
        return not (self.api_error or self.leaked is not None or _UNUSED.match(self.kind))

    @property
    def exception(self) -> str:
        """The error as one line: the kind as printed, the race's two accesses, ``(address
        misaligned)`` when memcheck says so of an access."""
        if self.check == "racecheck":
            kinds = [a.split(" ", 1)[0] for a in self.accesses[:2]]
            where = f" on {self.space} memory" if self.space else ""
            return (f"Race reported between {' access and '.join(kinds)} access" if kinds else "Race reported") + where
        if self.leaked is not None:
            return f"Leaked {self.leaked} bytes"
        if self.detail:
            return f"{self.kind}: {self.detail}"
        if self.address_state == "misaligned" and "isaligned" not in self.kind:
            return f"{self.kind} (address misaligned)"
        return self.kind.rstrip(".")

    @property
    def group(self) -> str:
        """The kind, for counting like reports together: no addresses, no thread."""
        if self.check == "racecheck":
            return self.exception
        if self.leaked is not None:
            return "Leaked memory"
        if self.api_error:
            return f"Program hit {self.api_error} on CUDA API call to {self.api_call}"
        return _HEX.sub("0x…", self.kind.rstrip("."))

    def python_frame(self) -> str:
        """The innermost application frame among the backtrace's Python frames (recent releases print
        them: ``Host Frame: run_case in capture.py:83``), as ``sentinel_hooks.frames.blame`` picks it;
        "" if it has none."""
        py = []
        for f in self.host_frames:
            file, _, line = f.source.rpartition(":")
            if file.endswith(".py") and line.isdigit():
                py.append((file, int(line), f.function))
        return frames.blame(py)

    def host_frame(self) -> HostFrame | None:
        """The innermost application frame of the host backtrace: the first that is neither CUDA's nor
        interpreter plumbing and has a name; else the first that is not CUDA's; None if none."""
        fallback = None
        for f in self.host_frames:
            if f.is_cuda() or not (f.function or f.module):
                continue
            if f.function and not f.is_plumbing():
                return f
            fallback = fallback or f
        return fallback


@dataclass
class SanitizerReport:
    """What a compute-sanitizer output says: ``tool`` (the ``--tool`` it ran, else the check that
    reports the fault's kind), ``legacy`` (cuda-memcheck's banner or command), the reports
    (``errors``: the first MAX_ERRORS, ``total``: all of them), the ``fault`` (the first device-side
    error, else the first report), ``groups`` (every report counted per (kind, function), in order of
    first appearance), the tool's summaries (``error_summary``: ERROR SUMMARY's count of errors),
    ``python_frame`` (the innermost application frame of a Python traceback in the same output, as
    ``sentinel_hooks.frames.blame`` picks it), ``cuda_error`` (the first ``CUDA error:`` text the
    program printed) and ``lines`` (key lines, for a catalog ``text`` regex; at most MAX_LINES)."""

    tool: str = ""
    legacy: bool = False
    errors: list[SanitizerError] = field(default_factory=list)
    total: int = 0
    fault: SanitizerError | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    error_summary: int | None = None
    racecheck_summary: str = ""
    leak_summary: str = ""
    python_frame: str = ""
    cuda_error: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fault is not None

    @property
    def exception(self) -> str:
        return self.fault.exception if self.fault else ""

    @property
    def kernel(self) -> str:
        return self.fault.function if self.fault else ""

    @property
    def host_frame(self) -> str:
        """The fault's innermost application host frame (``HostFrame.text``), "" if none."""
        f = self.fault.host_frame() if self.fault else None
        return f.text() if f else ""

    @property
    def top_frame(self) -> str:
        """The frame to blame: the fault's own Python launch frame (its backtrace's), else a Python
        traceback's in the same output, else the fault's host frame."""
        launched = self.fault.python_frame() if self.fault else ""
        return launched or self.python_frame or self.host_frame

    @property
    def others(self) -> list[dict[str, Any]]:
        """The reports besides the fault, per (kind, function): ``{"kind", "function", "count"}``."""
        out = []
        for g in self.groups:
            n = g["count"] - (1 if self.fault and (g["kind"], g["function"]) == (self.fault.group, self.fault.function) else 0)
            if n > 0:
                out.append({**g, "count": n})
        return out

    @property
    def evidence(self) -> list[str]:
        """Catalog evidence keys: ``out_of_bounds`` (an access outside every allocation)."""
        return ["out_of_bounds"] if self.fault and self.fault.address_state == "out of bounds" else []


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) holds the sanitizer's banner or one of its report lines."""
    return bool(_HEAD_MARKER.search(head))


def _int(s: str | None) -> int | None:
    return int(s.replace(",", "")) if s and s.replace(",", "").isdigit() else None


def _tuple(s: str) -> str:
    return "(" + s.replace(" ", "") + ")"


def _location(s: str) -> tuple[str, str, str, int | None]:
    """(function, pc, file, line) of an ``at`` location: ``f(int *)+0x70 in file.cu:12`` (newer
    releases), ``0x70 in file.cu:12:f(int *)`` or ``0x70 in f(int *)`` (older ones, cuda-memcheck).
    String methods, not a backtracking regex, over names thousands of characters long."""
    s = s.strip()
    if s.startswith("0x"):
        pc, sep, rest = s.partition(" in ")
        if not sep:
            return "", pc, "", None
        m = _FILE_LINE_FUNC.match(rest)
        if m:
            return m[3].strip(), pc, m[1], int(m[2])
        return rest.strip(), pc, "", None
    func, file, line = s, "", None
    i = s.rfind(" in ")
    if i >= 0:
        m = _FILE_LINE.fullmatch(s[i + 4:])
        if m:
            func, file, line = s[:i], m[1], int(m[2])
    pc = ""
    j = func.rfind("+0x")
    if j > 0 and _HEX.fullmatch(func[j + 1:]):
        func, pc = func[:j], func[j + 1:]
    return func.strip(), pc, file, line


def _host_frame(s: str) -> HostFrame:
    """A ``Host Frame:`` line's text: ``f [0x..] in lib.so`` (newer releases), ``f [0x..]`` with the
    module on the next line (older ones), ``/lib/libcuda.so.1 (cuLaunchKernel + 0x34e) [0x..]``
    (cuda-memcheck)."""
    s = s.strip()
    module = ""
    i = s.rfind("] in ")
    if i >= 0 and _HOST_OFFSET.search(s[:i + 1]):
        s, module = s[:i + 1], s[i + 5:].strip()
    m = _HOST_OFFSET.search(s)
    if m:
        s = s[:m.start()].strip()
    func, source = s, ""
    old = _OLD_HOST.fullmatch(s)
    if old:
        module, func = old[1], old[2]
    elif s.startswith(("/", "./")) and " " not in s:
        module, func = s, ""
    else:
        j = s.rfind(" in ")
        if j >= 0 and _FILE_LINE.fullmatch(s[j + 4:]):
            func, source = s[:j], s[j + 4:]
    return HostFrame(func.strip(), source, os.path.basename(module))


def _header(body: str) -> SanitizerError | None:
    """A report's first line, or None for a line that starts none."""
    if m := _ACCESS.match(body):
        return SanitizerError(body, "memcheck", space=m[1], access=m[2], size=_int(m[3]))
    if m := _UNINIT.match(body):
        return SanitizerError(body, "initcheck", space=m[1], access="read", size=_int(m[2]))
    if m := _RACE.match(body):
        err = SanitizerError(body, "racecheck", severity=(m[1] or "").capitalize())
        loc = m[3]
        if h := _HAZARDS.search(loc):
            err.hazards += _int(h[1]) or 0
            loc = loc[:h.start()]
        err.accesses.append(f"{m[2]} access at {loc.strip()}")
        err.function, err.pc, err.file, err.line = _location(loc)
        return err
    if m := _HAZARD.match(body):
        return SanitizerError(body, "racecheck", severity=(m[1] or "").capitalize(), space=m[3], address=m[4],
                              block=_tuple(m[5]))
    if _BARRIER.match(body):
        return SanitizerError(body, "synccheck")
    if m := _LEAK.match(body):
        return SanitizerError(body, "memcheck", leaked=_int(m[1]), address=m[2])
    if m := _API.match(body):
        return SanitizerError(body, "memcheck", api_error=m[1], api_call=m[4])
    if _HOST_API.match(body) or _UNUSED.match(body):
        return SanitizerError(body, "initcheck")
    if _HARDWARE.match(body) or _MALLOC.match(body):
        return SanitizerError(body, "memcheck")
    return None


def _detail(err: SanitizerError, text: str) -> bool:
    """Read one indented line into ``err``; False when it is not a key line."""
    if text.startswith("at "):
        if not err.function:
            err.function, err.pc, err.file, err.line = _location(text[3:])
        return True
    if m := _BY_THREAD.match(text):
        err.thread, err.block = err.thread or _tuple(m[1]), err.block or _tuple(m[2])
        return True
    if m := _ADDRESS.match(text):
        err.address, err.address_state = m[1], m[2] or ""
        return True
    if m := _ALLOCATION.match(text):
        err.allocation = {"relation": m[2] or m[3], "distance": _int(m[1]), "address": m[4],
                          "size": _int(m[5])}
        return True
    if m := _AND_ACCESS.match(text):
        loc = m[2]
        if h := _HAZARDS.search(loc):
            err.hazards += _int(h[1]) or 0
            loc = loc[:h.start()]
        if len(err.accesses) < 8:
            err.accesses.append(f"{m[1]} access at {loc.strip()}")
        return True
    if (m := _OLD_HAZARD_ACCESS.match(text)) and err.check == "racecheck":
        if len(err.accesses) < 8:
            err.accesses.append(f"{m[1]} access at {m[3].strip()}")
        if not err.function:
            err.function, err.pc, err.file, err.line = _location(m[3])
            err.thread = _tuple(m[2])
        return True
    if m := _UNINIT_DETAIL.match(text):
        err.detail = err.detail or m[0].strip()
        return True
    if text.startswith("Device Frame:"):
        frame = text[13:].strip()
        if len(err.device_frames) < _MAX_FRAMES:
            err.device_frames.append(frame[:400])
        if not err.file:  # where the error is, when the ``at`` line gave no source line
            m = _FILE_LINE_FUNC.match(frame)  # cuda-memcheck's file:line:function (function : 0xPC)
            _func, _pc, file, line = (m[3], "", m[1], int(m[2])) if m else _location(frame)
            if file:
                err.file, err.line = file, line
        return False
    if text.startswith("Host Frame:"):
        if len(err.host_frames) < _MAX_FRAMES:
            err.host_frames.append(_host_frame(text[11:]))
        return False
    if text.startswith("in ") and err.host_frames and not err.host_frames[-1].module:
        err.host_frames[-1].module = os.path.basename(text[3:].strip())
    return False


def _package_path(path: str) -> str:
    """``/usr/lib/python3.12/dist-packages/vllm/x.py`` -> ``vllm/x.py``: one name on every install."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path


def parse(text: str) -> SanitizerReport:
    """Read every report of a compute-sanitizer (or cuda-memcheck) output. Never raises."""
    rep = SanitizerReport()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    first: SanitizerError | None = None
    current: SanitizerError | None = None
    tool_option = ""
    tracebacks: list[list[tuple[str, int, str]]] = []
    tb: list[tuple[str, int, str]] | None = None
    summaries: list[str] = []

    def close(err: SanitizerError | None) -> None:
        nonlocal first
        if err is None:
            return
        rep.total += 1
        if len(rep.errors) < MAX_ERRORS:
            rep.errors.append(err)
        first = first or err
        if rep.fault is None and err.device_side:
            rep.fault = err
        key = (err.group, err.function)
        if key in groups:
            groups[key]["count"] += 1
        elif len(groups) < 256:
            groups[key] = {"kind": key[0], "function": key[1], "count": 1}

    for raw in text.splitlines():
        if len(raw) > _MAX_LINE:  # no report's line is this long: whatever it was, the report ends
            close(current)
            current = None
            continue
        m = _MARK.search(raw)
        if m is None:  # the program's own output: the command line, a Python traceback, a CUDA error
            if _COMMAND.search(raw):
                rep.legacy = rep.legacy or "cuda-memcheck" in raw
                t = _TOOL_OPTION.search(raw)
                tool_option = tool_option or (t[1] if t else "")
            if "Traceback (most recent call last)" in raw:
                tb = []
                tracebacks.append(tb)
            elif (f := _PY_FRAME.search(raw)) and len(tracebacks) < 64:
                if tb is None:
                    tb = []
                    tracebacks.append(tb)
                if len(tb) < 256:
                    tb.append((_package_path(f[1]), int(f[2]), f[3]))
            elif c := _CUDA_ERROR.search(raw):
                rep.cuda_error = rep.cuda_error or f"CUDA error: {c[1].strip()}"
            continue
        body = raw[m.end():].rstrip()
        if not body:
            continue
        if not body[0].isspace():  # a report's first line, or one of the tool's own lines
            close(current)
            current = _header(body)
            if current is not None:
                current.lines.append(body[:400])
                continue
            if body.startswith(("CUDA-MEMCHECK", "This tool is deprecated")):
                rep.legacy = True
            if (s := _ERROR_SUMMARY.match(body)) and rep.error_summary is None:
                rep.error_summary = _int(s[1])
            elif s := _RACE_SUMMARY.match(body):
                rep.racecheck_summary = rep.racecheck_summary or s[1].strip()
            elif s := _LEAK_SUMMARY.match(body):
                rep.leak_summary = rep.leak_summary or s[1].strip()
            if "SUMMARY:" in body and len(summaries) < 4:
                summaries.append(body[:400])
            continue
        if current is not None and _detail(current, body.strip()) and len(current.lines) < 16:
            current.lines.append(body.strip()[:400])
    close(current)
    if rep.fault is None:
        rep.fault = first
    rep.groups = list(groups.values())
    rep.tool = tool_option or (rep.fault.check if rep.fault else "") or ("memcheck" if rep.legacy else "")
    for frames_ in tracebacks:  # the first traceback that has an application frame
        where = frames.blame(reversed(frames_))
        if where:
            rep.python_frame = where
            break
    rep.lines = _key_lines(rep, summaries)
    return rep


def _key_lines(rep: SanitizerReport, summaries: list[str]) -> list[str]:
    """The fault's key lines, then the other reports' first and ``at`` lines, then the summaries;
    each once (every thread of a kernel reports the same access), at most MAX_LINES."""
    out: list[str] = []
    seen: set[str] = set()

    def keep(line: str) -> None:
        if len(out) < MAX_LINES and line not in seen:
            seen.add(line)
            out.append(line)

    if rep.fault is not None:
        for line in rep.fault.lines:
            keep(line)
    for err in rep.errors:
        for line in err.lines[:2]:
            keep(line)
    for line in summaries:
        keep(line)
    return out
