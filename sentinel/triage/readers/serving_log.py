"""Serving logs (vLLM, SGLang, plain PyTorch): the CUDA error, device-side assert or TMA descriptor
failure a process logged, with the Python traceback it raised and the engine-death chain.

What it reads, on lines with or without the engines' prefixes (``(VllmWorker rank=1 pid=110)``,
``(EngineCore_DP0 pid=..)``, ``ERROR 07-28 16:54:13 [core.py:591]``, ``[WORKER]:``, ``[rank0]:``) and
a journal's (``Jun 10 16:45:05 host bash[107468]:``):

- ``CUDA error: <text>`` (and ``torch.OutOfMemoryError: CUDA out of memory``), and the CUDA checks that
  native extensions print themselves: ``Failed: Cuda error <file>:<line> '<text>'`` (vLLM's custom
  all-reduce) and ``CUDA error (<file>:<line>): <text>`` (FlashAttention's launch templates);
- a line that names a GPU fault in another wording (``TopPSamplingFromProbs failed with error code an
  illegal memory access was encountered``), when nothing above names one;
- PyTorch device-side asserts: ``<file>.cu:<line>: <function>: block: [x,y,z], thread: [x,y,z]
  Assertion `<condition>` failed.``;
- FlashInfer / CUTLASS ``Failed to initialize the TMA descriptor`` dumps with their ``Shape:`` and
  ``Stride:`` lines (TMA needs every stride past the innermost to be a multiple of 16 bytes);
- ``Traceback (most recent call last):`` blocks: the innermost application frame of the last one that
  names an error (``sentinel_hooks.frames.blame``), paths shortened to the package
  (``vllm/v1/sample/ops/penalties.py``) so that one fault has one signature on every install;
- the engine-death chain: ``EngineDeadError``, ``Worker failed with error``, a worker's death.

The parser never raises; time is linear in the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sentinel_hooks import frames

__all__ = ["KIND", "MAX_LINES", "LogReport", "looks_like", "parse"]

KIND = "serving log"
MAX_LINES = 64  # failure lines kept per report, 400 characters each

_MARKER = re.compile(rb"CUDA error: |CUDA error \(|Failed: Cuda error |device-side assert|Assertion `|Failed to initialize the TMA descriptor|"
                     rb"CUDA out of memory|illegal memory access|misaligned address|an illegal instruction|"
                     rb"unspecified launch failure|EngineDeadError|Worker failed with error|Worker proc \S+ died|"
                     rb"Worker \w+ pid \d+ died")
# The prefixes engines put before a line, any number of them, in any order.
_PREFIX = re.compile(r"^(?:\s*(?:\x1b\[[0-9;]*m)?(?:\([A-Za-z_]\w*(?: [^()]{0,80})?\)|\[[A-Za-z_][\w ]{0,20}\]:|"
                     r"\[rank\d+\]:|(?:ERROR|WARNING|INFO|DEBUG|CRITICAL)\s+\d\d-\d\d\s+[\d:.]+\s+\[?[^\]\s]{1,80}\]|"
                     r"\[\d{4}-\d\d-\d\d[ T][\d:.,]+[^\]]*\]|\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?:|"
                     r"\S{1,6}\s+\d{1,2}\s+\d\d:\d\d:\d\d\s+\S+\s+[\w.-]+\[\d+\]:)(?:\x1b\[[0-9;]*m)?)+ ?")
_CUDA_ERROR = re.compile(r"CUDA error: ([^\n']{1,200}?)(?:'|$|\n)")
# A native extension's own CUDA check: the text after the source location is cudaGetErrorString's.
_CUDA_CHECK = re.compile(r"Cuda error [^\s']{1,300}:\d+ '(?P<msg>[^'\n]{1,200})'|"
                         r"CUDA error \([^()\s]{1,300}:\d+\): (?P<msg2>[^\n]{1,200})")
# A GPU fault named in a library's own words, outside a "CUDA error:" line.
_FAULT_TEXT = re.compile(r"an illegal memory access was encountered|misaligned address|"
                         r"an illegal instruction was encountered|unspecified launch failure")
_OOM = re.compile(r"(CUDA out of memory\.[^\n]{0,200})")
_ASSERT = re.compile(r"(?P<file>[\w./-]+\.(?:cu|cuh|h|cpp)):(?P<line>\d+): (?P<func>[^:]{1,200}): "
                     r"block: \[(?P<block>[\d,\s]+)\], thread: \[(?P<thread>[\d,\s]+)\] Assertion [`'](?P<cond>.{1,400}?)[`'] failed")
_TMA = re.compile(r"Failed to initialize the TMA descriptor[^\n]*")
_SHAPE = re.compile(r"^\s*Shape:((?:\s+\d+)+)\s*$")
_STRIDE = re.compile(r"^\s*Stride:((?:\s+\d+)+)\s*$")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]{1,500})", line (?P<line>\d+), in (?P<func>\S+)')
_ERROR_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit)): (?P<msg>.{0,300})$")
_NCCL_WARN = re.compile(r"NCCL WARN .{0,300}")
_DEATH = re.compile(r"(EngineDeadError[^\n]{0,200}|Worker failed with error[^\n]{0,160}|"
                    r"Worker (?:proc )?\S+(?: pid \d+)? died[^\n]{0,80}|"
                    r"WorkerProc hit an exception[^\n]{0,80})")


@dataclass
class LogReport:
    """What a serving log says of a failure. Empty strings (and lists) for what it does not show.

    ``exception`` is the failure's own text (the CUDA error, the assertion, the TMA error);
    ``assertion``: (source file, line, condition) of a device-side assert, with ``block`` and
    ``thread`` of the first failing thread; ``tma_shape`` / ``tma_strides``: the descriptor's dump;
    ``frame``: the innermost application frame of the traceback; ``chain``: the engine's death
    messages, in order; ``evidence``: catalog evidence keys the text supports; ``lines``: the lines
    that carried the failure (error, assert, TMA, ``NCCL WARN`` and death lines, prefixes removed; at
    most MAX_LINES), which a catalog ``text`` regex searches.
    """

    exception: str = ""
    fault_line: str = ""  # the first line naming a GPU fault in a library's own words
    cuda_error: str = ""  # the first "CUDA error: ..." text, whatever the failure's own text is
    error_type: str = ""
    error_line: str = ""  # the first "SomeError: message" line that ends a traceback
    assertion: tuple[str, int, str] | None = None
    asserts: int = 0
    block: str = ""
    thread: str = ""
    tma_shape: list[int] = field(default_factory=list)
    tma_strides: list[int] = field(default_factory=list)
    frame: str = ""
    chain: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    nccl_warnings: int = 0

    @property
    def ok(self) -> bool:
        return bool(self.exception)

    @property
    def kernel(self) -> str:
        """The kernel the failure names: a device assert's source file stem (ATen names its kernels'
        files after them: ScatterGatherKernel.cu), else ""."""
        if self.assertion:
            return re.sub(r"\.(cu|cuh|h|cpp)$", "", self.assertion[0].rsplit("/", 1)[-1])
        return ""


def looks_like(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) holds one of the failure lines this reader knows."""
    return bool(_MARKER.search(head))


def _strip(line: str) -> tuple[str, str]:
    """(the line without its prefixes, the prefix's source: the process tag or the logger's file:line,
    so that two processes' interleaved tracebacks are told apart)."""
    m = _PREFIX.match(line)
    if not m:
        return line, ""
    tag = re.search(r"\(([A-Za-z_]\w*(?: [^()]{0,80})?)\)|\[([\w.]+:\d+)\]|(\[rank\d+\]:)", m[0])
    return line[m.end():], (next(g for g in tag.groups() if g) if tag else "")


def _package_path(path: str) -> str:
    """``/usr/lib/python3.12/dist-packages/vllm/x.py`` -> ``vllm/x.py``: one name on every install."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path


def parse(text: str) -> LogReport:
    """Read the first failure of ``text`` and the traceback around it. Never raises."""
    rep = LogReport()
    seen: set[str] = set()

    def keep(line: str) -> None:
        line = line.strip()[:400]
        if len(rep.lines) < MAX_LINES and line not in seen:  # every rank logs the same error
            seen.add(line)
            rep.lines.append(line)

    tracebacks: list[list[tuple[str, int, str]]] = []
    current: list[tuple[str, int, str]] | None = None
    shape: list[int] = []
    in_tma = False
    source = ""
    for raw in text.splitlines():
        if len(raw) > 8192:
            continue
        line, tag = _strip(raw.rstrip())
        if tag != source or line.strip() in ("[...]", "..."):
            current = None  # another process's lines, or an elision: a traceback does not go on across it
            source = tag
        if "Traceback (most recent call last)" in line:
            current = []
            tracebacks.append(current)
            continue
        f = _FRAME.match(line)
        if f:
            if current is None:  # a frame list with no header (a pasted excerpt, "[WORKER]:" lines)
                current = []
                tracebacks.append(current)
            current.append((_package_path(f["file"]), int(f["line"]), f["func"]))
            continue
        e = _ERROR_LINE.match(line.strip())
        if e and current is not None:
            rep.error_type = rep.error_type or e["type"].rsplit(".", 1)[-1]
            rep.error_line = rep.error_line or line.strip()[:400]
            keep(line)
            current = None
        a = _ASSERT.search(line)
        if a:
            if rep.asserts < 4:
                keep(line)
            rep.asserts += 1
            if rep.assertion is None:
                rep.assertion = (a["file"], int(a["line"]), a["cond"])
                rep.block, rep.thread = f"({a['block'].replace(' ', '')})", f"({a['thread'].replace(' ', '')})"
                rep.exception = rep.exception or f"device-side assert: {a['cond']}"
            continue
        t = _TMA.search(line)
        if t:
            keep(line)
            in_tma = True
            rep.exception = rep.exception or t[0].strip()
            continue
        if in_tma:
            s = _SHAPE.match(line)
            if s:
                shape = [int(x) for x in s[1].split()[:8] if len(x) <= 20]
                rep.tma_shape = shape
                continue
            s = _STRIDE.match(line)
            if s:
                rep.tma_strides = [int(x) for x in s[1].split()[:8] if len(x) <= 20]
                in_tma = False
                continue
        c, o, w, d = _CUDA_ERROR.search(line), _OOM.search(line), _NCCL_WARN.search(line), _DEATH.search(line)
        k = None if c else _CUDA_CHECK.search(line)
        if c or k or o or w or d:
            keep(line)
        elif _FAULT_TEXT.search(line):
            keep(line)
            rep.fault_line = rep.fault_line or line.strip()[:400]
        if c or k:
            text = c[1] if c else (k["msg"] or k["msg2"])
            rep.cuda_error = rep.cuda_error or f"CUDA error: {text.strip()}"
            rep.exception = rep.exception or rep.cuda_error
        if o and not rep.exception:
            rep.exception = o[1].strip()
        if w:
            rep.nccl_warnings += 1
        if d and len(rep.chain) < 8:
            rep.chain.append(d[1].strip())
    # The innermost application frame of the first traceback that has one (the raising thread's;
    # the engine core's re-raise of it comes later).
    for tb in tracebacks:
        where = frames.blame(reversed(tb))
        if where:
            rep.frame = where
            break
    if not rep.exception and rep.fault_line:
        rep.exception = rep.fault_line
    if not rep.exception and rep.chain:  # the engine died of a Python exception: its text is the failure
        rep.exception = rep.error_line or rep.chain[0]
    rep.evidence = _evidence(rep)
    return rep


def _evidence(rep: LogReport) -> list[str]:
    ev = set()
    if rep.nccl_warnings:
        ev.add("nccl_warn")
    if rep.assertion and re.search(r"index out of bounds|idx_dim|index_size|out of range", rep.assertion[2], re.I):
        ev.add("index_out_of_bounds")
    if rep.tma_strides:
        ev.add("tma_descriptor")
        # TMA's global strides (bytes, past the innermost dimension) must be multiples of 16.
        if any(s % 16 for s in rep.tma_strides if s):
            ev.add("tma_misaligned")
        if 1 in rep.tma_shape and any(0 < s < 16 for s in rep.tma_strides):
            ev.add("degenerate_stride")
    return sorted(ev)
