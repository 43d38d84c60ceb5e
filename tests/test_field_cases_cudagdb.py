"""The cuda-gdb field cases (tests/fixtures/field-cases/README.md), diagnosed field by field: a live
session whose frame #0 is an inlined device function, pasted coredump summaries, the same fields in
cuda-gdb's frame layout, a generated GEMM's variants folded into one family, and an exception class
per hardware exception."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sentinel.triage import catalog, fingerprint, records
from sentinel.triage.readers import cudagdb, detect

CASES = Path(__file__).resolve().parent / "fixtures" / "field-cases"


def _record(rel: str) -> records.FaultRecord:
    path = CASES / rel
    assert detect(path.read_bytes()[:65536]) is cudagdb
    return records.from_core(cudagdb.parse(path.read_text()), "", None, lambda tag: "", "/nonexistent",
                             catalog.load([]), [])


def test_ft241_live_session_with_an_inlined_frame_zero() -> None:
    rec = _record("ft241-embedding-lookup/cuda-gdb.txt")
    g = rec.gdb
    assert rec.exception_class == "illegal_address"
    assert rec.kernel == "fastertransformer::embeddingLookupPosEncoding<__half>"
    assert rec.kernel_family == "fastertransformer::embeddingLookupPosEncoding"
    assert (g["grid"], g["block_dim"]) == ("(4,1,1)", "(512,1,1)")
    assert (g["focus_block"], g["focus_thread"], g["sm"], g["warp"], g["lane"]) == ("(0,0,0)", "(384,0,0)", 0, 14, 0)


@pytest.mark.parametrize("name", ["cuda-gdb-summary.txt", "cuda-gdb-framed.txt"])
def test_fi3722_generated_gemm_in_both_layouts(name: str) -> None:
    rec = _record(f"fi3722-moe-bmm/{name}")
    assert rec.exception_class == "illegal_address"
    assert rec.kernel.startswith("bmm_E2m1_E2m1E2m1_Fp32") and rec.kernel.endswith("_sm100f")
    assert (rec.gdb["grid"], rec.gdb["block_dim"]) == ("(4,8,1)", "(512,1,1)")
    assert rec.kernel_family == "bmm"


def test_fi3722_tile_and_dtype_variants_share_a_family() -> None:
    sibling = (CASES / "fi3722-moe-bmm" / "sibling-kernel-from-sgl25563.txt").read_text()
    # The name as the report wraps it: "Kernel: bmm_..." continued on indented lines.
    name = re.search(r"Kernel: (bmm_\S+(?:\s+_\S+)*)", sibling)[1]
    name = re.sub(r"\s+", "", name).rstrip(")")
    main = _record("fi3722-moe-bmm/cuda-gdb-summary.txt")
    assert name != main.kernel and fingerprint.kernel_family(name) == main.kernel_family == "bmm"
    assert fingerprint.signature("Warp Illegal Address", name) == main.signature


def test_lcpp24398_misaligned_register_is_its_own_class() -> None:
    rec = _record("lcpp24398-misaligned-register/cuda-gdb-summary.txt")
    assert rec.exception_class == "misaligned_register" != fingerprint.exception_class("Warp Misaligned Address")
    assert rec.kernel_family == "flash_attn_ext_f16"
    assert (rec.gdb["grid"], rec.gdb["block_dim"], rec.gdb["sm"]) == ("(64,1,1)", "(32,4,1)", 10)


@pytest.mark.parametrize(("text", "cls"), [
    ("Warp Misaligned Register", "misaligned_register"), ("Warp Misaligned Address", "misaligned_address"),
    ("Cluster target block not present", "cluster_block_not_present"),
    ("Cluster Out-of-range Address", "cluster_out_of_range_address"),
    ("Warp Invalid Address Space", "invalid_address_space"),
    ("Warp Illegal Instruction Parameter", "illegal_instruction_parameter"),
    ("Warp Illegal Instruction", "illegal_instruction"), ("Lane Syscall Error", "syscall_error"),
    ("Warp Out-of-range Address", "out_of_range_address"), ("Device Illegal Address", "illegal_address"),
])
def test_one_class_per_hardware_exception(text: str, cls: str) -> None:
    assert fingerprint.exception_class(text) == cls


def test_a_live_session_s_stop_line_names_the_kernel() -> None:
    """cuda-gdb's stop on an exception in a live session: "0x... in <kernel>(<params>)" and the launch
    dimensions on the next line, no "#0" frame (flash-attention issue 1311)."""
    text = ('Thread 137 "pt_autograd_0" received signal CUDA_EXCEPTION_14, Warp Illegal Address.\n'
            "[Switching focus to CUDA kernel 0, grid 2749, block (0,8156,0), thread (96,0,0), device 0, sm 0, "
            "warp 10, lane 0]\n"
            "0x00007ff9ac5f8fa0 in void flash_bwd_dot_do_o_kernel<true, Flash_bwd_kernel_traits<128, 64, 128, 8, 2, "
            "4, 2, false, false, cutlass::half_t, Flash_kernel_traits<128, 64, 128, 8, cutlass::half_t> > >"
            "(Flash_bwd_params)\n   <<<(1,12288,16),(256,1,1)>>> ()\n")
    r = cudagdb.parse(text)
    assert fingerprint.kernel_family(r.kernel) == "flash_bwd_dot_do_o_kernel"
    assert (r.grid, r.block_dim, r.focus_block) == ("(1,12288,16)", "(256,1,1)", "(0,8156,0)")
