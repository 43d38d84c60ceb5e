"""Serving logs (vLLM, SGLang, plain PyTorch): the CUDA error, device-side assert or TMA descriptor
failure a process logged, with the Python traceback it raised and the engine-death chain.

What it reads, on lines with or without the engines' prefixes (``(VllmWorker rank=1 pid=110)``,
``(EngineCore_DP0 pid=..)``, ``ERROR 07-28 16:54:13 [core.py:591]``, ``[WORKER]:``, ``[rank0]:``) and
a journal's (``Jun 10 16:45:05 host bash[107468]:``):

- ``CUDA error: <text>`` (FlashInfer writes ``CUDA Error:``; DeepEP ``CUDA error <file>:<line> '<text>'``)
  and ``torch.OutOfMemoryError: CUDA out of memory``;
- FlashInfer's host-side errors, ``Error in function '<f>' at <file>:<line>: <message>`` (a workspace
  buffer too small, a trtllm-gen runner that refuses a shape);
- the CUDA checks that native extensions print themselves: ``Failed: Cuda error <file>:<line> '<text>'``
  (vLLM's custom all-reduce) and ``CUDA error (<file>:<line>): <text>`` (FlashAttention's launch templates);
- a line that names a GPU fault in another wording (``TopPSamplingFromProbs failed with error code an
  illegal memory access was encountered``), when nothing above names one;
- PyTorch device-side asserts: ``<file>.cu:<line>: <function>: block: [x,y,z], thread: [x,y,z]
  Assertion `<condition>` failed.``;
- FlashInfer / CUTLASS ``Failed to initialize the TMA descriptor`` dumps with their ``Shape:`` and
  ``Stride:`` lines (TMA needs every stride past the innermost to be a multiple of 16 bytes and
  under 2^40; only the ``dim`` the dump's first line gives are real, the values past them are not);
- ``Traceback (most recent call last):`` blocks: the innermost application frame of the last one that
  names an error (``sentinel_hooks.frames.blame``), paths shortened to the package
  (``vllm/v1/sample/ops/penalties.py``) so that one fault has one signature on every install;
- the engine-death chain: ``EngineDeadError``, ``Worker failed with error``, a worker's death; SGLang's
  ``Scheduler hit an exception`` (or ``TpModelWorkerClient hit an exception``) and the launcher's
  ``SIGQUIT received`` that follows it;
- what the seed classes leave in a log: the token budget (vLLM's ``max_num_batched_tokens=N`` at
  start-up) and the faulting step's size (``total_num_scheduled_tokens=N`` in the scheduler output
  vLLM dumps when its engine dies); SGLang's ``server_args=ServerArgs(...)`` (DP attention, speculative
  decoding, the attention backend); a page-table bounds check's ``page_table.max=N
  num_pages_in_cache=M``.

The parser never raises; time is linear in the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sentinel_hooks import frames

__all__ = ["KIND", "KEYS", "MAX_LINES", "LogReport", "looks_like", "parse"]

KIND = "serving log"
MAX_LINES = 64  # failure lines kept per report, 400 characters each

_MARKER = re.compile(rb"CUDA [Ee]rror: |CUDA driver error: |Triton Error \[CUDA\]: |CUDA error [^\s':]+:\d+ '|"
                     rb"CUDA error \(|Failed: Cuda error |page_table\.max=|device-side assert|Assertion `|"
                     rb"Failed to initialize the TMA descriptor|Error in function '|"
                     rb"CUDA out of memory|illegal memory access|misaligned address|an illegal instruction|"
                     rb"unspecified launch failure|EngineDeadError|Worker failed with error|Worker proc \S+ died|"
                     rb"Worker \w+ pid \d+ died|"
                     rb"(?:Scheduler|TpModelWorkerClient) hit an exception|SIGQUIT received|Received sigquit")
# The prefixes engines put before a line, any number of them, in any order.
_PREFIX = re.compile(r"^(?:\s*(?:\x1b\[[0-9;]*m)?(?:\([A-Za-z_]\w*(?: [^()]{0,80})?\)|\[[A-Za-z_][\w ]{0,20}\]:|"
                     r"\[rank\d+\]:|(?:ERROR|WARNING|INFO|DEBUG|CRITICAL)\s+\d\d-\d\d\s+[\d:.]+\s+\[?[^\]\s]{1,80}\]|"
                     r"\[\d{4}-\d\d-\d\d[ T][\d:.,]+[^\]]*\]|\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?:|"
                     r"\S{1,6}\s+\d{1,2}\s+\d\d:\d\d:\d\d\s+\S+\s+[\w.-]+\[\d+\]:)(?:\x1b\[[0-9;]*m)?)+ ?")
# torch's ``CUDA error: <text>``, its driver-API variant, Triton's launcher's ``Triton Error [CUDA]: <text>``,
# FlashInfer's ``CUDA Error: <text>`` and DeepEP's ``CUDA error <file>:<line> '<text>'``; the text runs to a
# quote or the end of the line, 200 characters at most (a longer one is cut, not lost).
_CUDA_ERROR = re.compile(r"(?:CUDA (?:driver )?(?:error|Error)|Triton Error \[CUDA\]): ([^\n']{1,200})|"
                         r"CUDA error [^\s':]+:\d+ '([^\n']{1,200})")
# FlashInfer's FLASHINFER_ERROR / FLASHINFER_CHECK text: a host-side refusal, no CUDA error behind it.
_FI_ERROR = re.compile(r"Error in function '[^'\n]{1,120}' at [^\n]{1,600}")
# A native extension's own CUDA check: the text after the source location is cudaGetErrorString's.
_CUDA_CHECK = re.compile(r"Cuda error [^\s']{1,300}:\d+ '(?P<msg>[^'\n]{1,200})'|"
                         r"CUDA error \([^()\s]{1,300}:\d+\): (?P<msg2>[^\n]{1,200})")
# A GPU fault named in a library's own words, outside a "CUDA error:" line.
_FAULT_TEXT = re.compile(r"an illegal memory access was encountered|misaligned address|"
                         r"an illegal instruction was encountered|unspecified launch failure")
_OOM = re.compile(r"(CUDA out of memory\.[^\n]{0,200})")
_ASSERT = re.compile(r"(?<![\w./-])(?P<file>[\w./-]+\.(?:cu|cuh|h|cpp)):(?P<line>\d+): (?P<func>[^:]{1,200}): "
                     r"block: \[(?P<block>[\d,\s]+)\], thread: \[(?P<thread>[\d,\s]+)\] Assertion [`'](?P<cond>.{1,400}?)[`'] failed")
_TMA = re.compile(r"Failed to initialize the TMA descriptor[^\n]*")
_TMA_DIM = re.compile(r"\bdim: (\d{1,2})\b")  # "tmaFormat: 9 dim: 4 gmem: 0x..."
_SHAPE = re.compile(r"^\s*Shape:((?:\s+\d+)+)\s*$")
_STRIDE = re.compile(r"^\s*Stride:((?:\s+\d+)+)\s*$")
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]{1,500})", line (?P<line>\d+), in (?P<func>\S+)')
_ERROR_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit)): (?P<msg>.{0,300})$")
_BUDGET = re.compile(r"max_num_batched_tokens['\"]?\s*[=:]\s*(\d{1,9})|--max-num-batched-tokens[= ](\d{1,9})")
_SCHEDULED = re.compile(r"total_num_scheduled_tokens=(\d{1,9})")
_PAGE_MAX = re.compile(r"page_table\.max=(\d{1,12})\s+num_pages_in_cache=(\d{1,12})")
_LONG_LINE_KEYS = ("max_num_batched_tokens", "total_num_scheduled_tokens", "ServerArgs(")  # in lines of any length
_NCCL_WARN = re.compile(r"NCCL WARN .{0,300}")
# What the lines parse() reads in a large file hold (readers.scan.relevant_lines skips the others):
# each costs one pass of bytes.find, and a longer one is a faster pass. Frames are found by '", line ',
# the TMA dump's lines by "Shape:" / "Stride:"; an elision by "...".
KEYS = (b"rror", b'", line ', b"Traceback", b"xception", b"ssert", b"TMA descriptor", b"tmaFormat", b"Shape:",
        b"Stride:", b"illegal ", b"misaligned", b"out of memory", b"launch failure", b" died", b"NCCL WARN",
        b"page_table.max", b"batched_tokens", b"batched-tokens", b"scheduled_tokens", b"ServerArgs", b"...")
_DEATH = re.compile(r"(EngineDeadError[^\n]{0,200}|Worker failed with error[^\n]{0,160}|"
                    r"Worker (?:proc )?\S+(?: pid \d+)? died[^\n]{0,80}|"
                    r"WorkerProc hit an exception[^\n]{0,80}|(?:Scheduler|TpModelWorkerClient) hit an exception|"
                    r"SIGQUIT received[^\n]{0,80}|Received sigquit[^\n]{0,80})")


@dataclass
class LogReport:
    """What a serving log says of a failure. Empty strings (and lists) for what it does not show.

    ``exception`` is the failure's own text (the CUDA error, the assertion, the TMA error);
    ``assertion``: (source file, line, condition) of a device-side assert, with ``block`` and
    ``thread`` of the first failing thread; ``tma_shape`` / ``tma_strides`` / ``tma_dim``: the
    descriptor's dump; ``lib_error``: a FlashInfer host-side error, the failure when nothing else is;
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
    tma_dim: int = 0  # the descriptor's rank, from the dump's first line; 0: not given
    lib_error: str = ""  # the first FlashInfer "Error in function '...' at ...: ..." text
    frame: str = ""
    chain: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    nccl_warnings: int = 0
    token_budget: int = 0  # max_num_batched_tokens, when the log shows it
    scheduled_tokens: int = -1  # the dumped step's total_num_scheduled_tokens; -1: no dump
    page_table: tuple[int, int] | None = None  # (largest page index, pages in the cache) of a bounds check
    server_args: dict[str, str] = field(default_factory=dict)  # SGLang's, the ones the catalog reads
    process: dict[str, int] = field(default_factory=dict)  # rank, tp_rank, pid from the failure line's prefix

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


def parse(text: str | Iterable[str]) -> LogReport:
    """Read the first failure of ``text`` (a string, or its lines without newlines, e.g. from
    ``readers.scan.relevant_lines(f, KEYS)``) and the traceback around it. Never raises."""
    rep = LogReport()
    seen: set[str] = set()
    failing_tag = ""  # the prefix of the lines up to the failure's: whose failure it is

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
    for raw in text.splitlines() if isinstance(text, str) else text:
        if any(k in raw for k in _LONG_LINE_KEYS):
            _settings(raw, rep)
        if len(raw) > 8192:
            continue
        line, tag = _strip(raw.rstrip())
        if tag != source or line.strip() in ("[...]", "..."):
            current = None  # another process's lines, or an elision: a traceback does not go on across it
            source = tag
        if "Traceback (most recent call last)" in line:
            current = []
            tracebacks.append(current)
            d = _DEATH.search(line)  # SGLang: "Scheduler hit an exception: Traceback (most recent call last):"
            if d and len(rep.chain) < 8:
                keep(line)
                rep.chain.append(d[1].strip())
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
        # a device assert names its thread: only such a line is searched (the file pattern, tried at every
        # position of a long path-like line, is quadratic)
        a = _ASSERT.search(line) if "block: [" in line and "ssert" in line else None
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
            m = _TMA_DIM.search(line)
            if m and not _SHAPE.match(line):
                rep.tma_dim = int(m[1])
                continue
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
        pm = _PAGE_MAX.search(line)
        if pm:
            rep.page_table = (int(pm[1]), int(pm[2]))
            keep(line)
            if rep.page_table[0] >= rep.page_table[1] and not rep.exception:  # a bounds check caught it first
                rep.exception = (f"page index out of range: page_table.max={rep.page_table[0]} "
                                 f"num_pages_in_cache={rep.page_table[1]}")
        if not rep.exception and tag:
            failing_tag = tag
        c, o, w, d = _CUDA_ERROR.search(line), _OOM.search(line), _NCCL_WARN.search(line), _DEATH.search(line)
        k = None if c else _CUDA_CHECK.search(line)
        fi = _FI_ERROR.search(line)
        if c or k or o or w or d or fi:
            keep(line)
        elif _FAULT_TEXT.search(line):
            keep(line)
            rep.fault_line = rep.fault_line or line.strip()[:400]
        if fi:
            rep.lib_error = rep.lib_error or fi[0].strip()[:400]
        if c or k:
            text = (c[1] or c[2]) if c else (k["msg"] or k["msg2"])
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
    if not rep.exception and rep.lib_error:  # FlashInfer refused (no CUDA error): its message is the failure
        rep.exception = rep.lib_error
    if not rep.exception and rep.fault_line:
        rep.exception = rep.fault_line
    if not rep.exception and rep.chain:  # the engine died of a Python exception: its text is the failure
        rep.exception = rep.error_line or rep.chain[0]
    rep.process = _process(failing_tag)
    rep.evidence = _evidence(rep)
    return rep


def _process(tag: str) -> dict[str, int]:
    """rank / tp_rank / pid named by an engine's prefix: ``[rank3]:``, ``(VllmWorker rank=1 pid=110)``,
    ``(VllmWorker TP1 pid=22110)``."""
    out = {}
    for key, pattern in (("rank", r"\brank[= ]?(\d{1,6})\b"), ("tp_rank", r"\bTP ?(\d{1,6})\b"), ("pid", r"\bpid=(\d{1,10})\b")):
        m = re.search(pattern, tag)
        if m:
            out[key] = int(m[1])
    return out


_SERVER_ARGS = ("enable_dp_attention", "speculative_algorithm", "attention_backend")


def _settings(raw: str, rep: LogReport) -> None:
    """The settings a line shows (see the module's docstring); the last of each wins."""
    b = _BUDGET.search(raw)
    if b:
        rep.token_budget = int(b[1] or b[2])
    t = _SCHEDULED.search(raw)
    if t:
        rep.scheduled_tokens = int(t[1])
    if "ServerArgs(" in raw:
        for key in _SERVER_ARGS:
            m = re.search(rf"\b{key}=('[^']{{0,80}}'|\w{{1,40}})", raw)
            if m:
                rep.server_args[key] = m[1].strip("'")


def _evidence(rep: LogReport) -> list[str]:
    ev = set()
    if rep.page_table and rep.page_table[0] >= rep.page_table[1] > 0:
        ev.update(("page_table_oob", "page_table_at_capacity"))
    if rep.token_budget and rep.scheduled_tokens == rep.token_budget:
        ev.add("token_budget_boundary")
    args = rep.server_args
    # SGLang's DP-padding case: DP attention pads the batch for its MLP sync, and the TRT-LLM MHA
    # backend was passed the padded batch size under speculative decoding (sglang#21649).
    if (args.get("enable_dp_attention") == "True" and args.get("speculative_algorithm", "None") != "None"
            and args.get("attention_backend", "").startswith("trtllm")):
        ev.add("dp_padding_trtllm")
    if rep.nccl_warnings:
        ev.add("nccl_warn")
    if rep.assertion and re.search(r"index out of bounds|idx_dim|index_size|out of range", rep.assertion[2], re.I):
        ev.add("index_out_of_bounds")
    if rep.tma_strides:
        ev.add("tma_descriptor")
        # A rank-N descriptor has N-1 strides; the dump prints more, and those past them are
        # uninitialised values, not the kernel's (Stride: 256 1792 3584 1041 with dim 4).
        strides = rep.tma_strides[: rep.tma_dim - 1] if rep.tma_dim > 1 else rep.tma_strides
        # TMA's global strides (bytes, past the innermost dimension) must be multiples of 16.
        if any(s % 16 for s in strides if s):
            ev.add("tma_misaligned")
        if 1 in rep.tma_shape and any(0 < s < 16 for s in strides):
            ev.add("degenerate_stride")
        # ... and under 2^40: a larger one is an overflowed index (an int32 gone negative, then
        # read as a uint64), not a layout.
        if any(s >= 1 << 40 for s in strides):
            ev.add("tma_stride_overflow")
    return sorted(ev)
