"""Stable fault signatures: the exception class, the kernel family and the top in-app frame.

Like an error tracker's fingerprint: the same fault from two runs (other PCs, other addresses,
other tile-size variants of the same kernel) gets one signature; a different kernel or a
different failure gets another.
"""

from __future__ import annotations

import hashlib
import re
import string

__all__ = ["exception_class", "kernel_family", "signature"]

_IDENT_CHARS = string.ascii_letters + string.digits + "_"

# One class per distinct hardware exception cuda-gdb names (CUDA_EXCEPTION_1..N), then the host-side
# errors and signals. Order matters: the more specific pattern first.
#
# compute-sanitizer's reports (readers.compute_sanitizer) map onto the same classes where the hardware
# would raise one for the same bug, so that a sanitizer run that explains a crash gets the crash's
# class, signature and known issue: an invalid __global__ access is what the GPU reports as an illegal
# address (CUDA_EXCEPTION_14, cudaErrorIllegalAddress); an invalid __shared__ or __local__ access is
# outside the shared or local window, an out-of-range address (CUDA_EXCEPTION_5); a misaligned access
# is misaligned_address whatever the space. The access's direction and size stay in the record's log.
# What only the sanitizer sees (no hardware exception, often no symptom) gets a class of its own:
# data_race (racecheck), uninitialized_read (initcheck), barrier_error (synccheck), memory_leak and
# malloc_free_error (memcheck), cuda_api_error (a failed CUDA API call, after any specific class).
_EXCEPTIONS = (
    (r"race reported|potential (?:raw|war|waw) hazard", "data_race"),
    (r"uninitiali[sz]ed", "uninitialized_read"),
    (r"barrier error", "barrier_error"),
    (r"malloc/free error", "malloc_free_error"),
    (r"\bleaked [\d,]+ bytes|memory leak", "memory_leak"),
    (r"tma descriptor", "tma_descriptor"),  # a host-side refusal to build the descriptor, before any launch
    (r"misaligned register", "misaligned_register"),  # a register pair not aligned for a 64-bit op: not memory
    (r"cluster target block not present", "cluster_block_not_present"),
    (r"cluster out.of.range", "cluster_out_of_range_address"),
    (r"invalid address space", "invalid_address_space"),
    (r"illegal instruction parameter", "illegal_instruction_parameter"),
    (r"syscall error", "syscall_error"),
    (r"misaligned", "misaligned_address"),
    (r"out.of.range|invalid __(?:shared|local)__", "out_of_range_address"),
    (r"illegal address|illegal memory access|invalid __(?:global|generic)__", "illegal_address"),
    (r"illegal instruction", "illegal_instruction"),
    (r"assertionerror", "assertion_error"),  # Python's, on the host: not a GPU fault
    (r"assert", "device_assert"),
    (r"hardware stack overflow", "stack_overflow"),
    (r"invalid (pc|program counter)", "invalid_pc"),
    (r"segmentation fault|sigsegv", "sigsegv"),
    (r"aborted|sigabrt", "sigabrt"),
    (r"bus error|sigbus", "sigbus"),
    (r"floating.point|sigfpe", "sigfpe"),
    (r"killed|sigkill", "killed"),
    (r"sigtrap|breakpoint trap", "trap"),
    (r"out of memory", "out_of_memory"),
    (r"program hit \w+|on cuda api call to", "cuda_api_error"),
)


def exception_class(text: str) -> str:
    """A short, stable class for an exception text (cuda-gdb's, a CUDA error, a signal)."""
    low = (text or "").lower()
    for pattern, name in _EXCEPTIONS:
        if re.search(pattern, low):
            return name
    word = re.sub(r"[^a-z0-9]+", "_", low).strip("_")
    return word[:40] or "unknown"


def _strip_brackets(name: str, open_: str, close: str) -> str:
    out, depth = [], 0
    for ch in name:
        if ch == open_:
            depth += 1
        elif ch == close:
            depth = max(0, depth - 1)
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def kernel_family(name: str) -> str:
    """A kernel name without template arguments, parameters, and configuration suffixes.

    ``fmhaSm100fKernel_QkvE4m3OBfloat16H128PagedKvP64...`` -> ``fmhaSm100fKernel``;
    ``at::native::vectorized_gather_kernel<16, long>`` -> ``at::native::vectorized_gather_kernel``;
    ``cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_128x128_32x3_tn_align8`` ->
    ``cutlass_80_tensorop_bf16_s16816gemm_relu_bf16``;
    ``bmm_E2m1_E2m1E2m1_Fp32_Ab16_Bb16_Cb16_t128x16x512u2_s5_..._sm100f`` -> ``bmm`` (trtllm-gen: data
    types, tile, stages and schedule are variants of one generated GEMM).
    """
    n = (name or "").strip()
    n = _strip_brackets(n, "<", ">")
    n = _strip_brackets(n, "(", ")")
    n = n.replace("void ", "").strip()
    # Generated variants: <Family>Kernel_<config>. Found with string methods: the regex
    # (Kernel)_[A-Za-z0-9_]+$ retried from every "Kernel" in a long name (quadratic, 70 s on 280 KB).
    i = n.find("Kernel_", len(n.rstrip(_IDENT_CHARS)))
    if 0 <= i < len(n) - 7:
        n = n[: i + 6]
    n = re.sub(r"_[A-Za-z]*\d+x\d+(?:x\d+)?[A-Za-z0-9]*(_.*)?$", "", n, flags=re.S)  # tiles (t128x16x512u2), all after
    # trtllm-gen's generated GEMMs name their data types next: bmm_E2m1_E2m1E2m1_Fp32_Ab16_Bb16_Cb16_t128...
    # and bmm_Bfloat16_Bfloat16Bfloat16_Fp32_t128... are one family, "bmm".
    n = re.sub(r"(?:_(?:E\dm\d|Bfloat16|Fp(?:4|8|16|32|64)|Int(?:4|8|16|32)|Uint8|[ABC]b\d{1,3})+){2,}$", "", n)
    n = re.sub(r"_(sm|SM)\d+[a-z]?$", "", n)
    n = re.sub(r"_\d+$", "", n)  # generated-kernel counters (triton_poi_fused_add_0)
    return n or "unknown"


def signature(exception: str, kernel: str, top_frame: str = "") -> str:
    """12 hex digits over (exception class, kernel family, top in-app frame without line number)."""
    frame = re.sub(r":\d+", "", top_frame or "")  # a moved line must not split a signature
    key = "|".join((exception_class(exception), kernel_family(kernel) if kernel else "-", frame))
    return hashlib.sha1(key.encode()).hexdigest()[:12]
