"""The serving-log reader: the two field cases diagnosed as their README states, field by field
(../shared/field-cases, copied here with their sources); more layouts reconstructed from public
reports; fuzzed; and `sentinel triage FILE` on them."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.triage import catalog, records
from sentinel.triage.readers import detect, serving_log

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "serving-log"


def _record(name: str) -> records.FaultRecord:
    path = FIXTURES / name
    assert detect(path.read_bytes()[:65536]) is serving_log
    rep = serving_log.parse(path.read_text())
    return records.from_log(rep, str(path), catalog.load([]))


def test_field_case_vllm21731_scatter_gather_assert() -> None:
    """device-side assert, index out of bounds, in an ATen scatter/gather kernel, reached from
    vllm/v1/sample/ops/penalties.py; the known issue for out-of-range indices in gather/scatter."""
    rec = _record("vllm21731-scatter-assert.log")
    assert rec.exception_class == "device_assert" and rec.kind == "cuda" and rec.source == "log"
    assert "index out of bounds" in rec.exception
    assert rec.kernel == "ScatterGatherKernel"
    assert (rec.log["assert_file"], rec.log["assert_line"]) == ("/pytorch/aten/src/ATen/native/cuda/ScatterGatherKernel.cu", 144)
    assert (rec.log["block"], rec.log["thread"], rec.log["asserts"]) == ("(6,0,0)", "(64,0,0)", 5)
    assert rec.top_frame == "vllm/v1/sample/ops/penalties.py:39 in apply_all_penalties"
    assert rec.evidence == ["index_out_of_bounds"]
    assert rec.known_issue and rec.known_issue["id"] == "index-out-of-bounds-assert"
    assert rec.cuda_error == "CUDA error: device-side assert triggered"
    assert any("Worker failed with error" in n for n in rec.notes)


def test_field_case_fi2232_tma_descriptor() -> None:
    """Seed 002's class exactly: a size-1 KV-head dimension with a degenerate stride (the 2 in
    'Stride: 128 2 4096 337') that TMA rejects; known issue degenerate-stride-tma; a host-side error,
    not a GPU fault."""
    rec = _record("fi2232-tma-descriptor.log")
    assert rec.exception_class == "tma_descriptor" and rec.kind == "crash"
    assert rec.log["tma_strides"] == [128, 2, 4096, 337] and rec.log["tma_shape"][:3] == [64, 16, 1]
    assert {"degenerate_stride", "tma_misaligned"} <= set(rec.evidence)
    assert rec.known_issue and rec.known_issue["id"] == "degenerate-stride-tma"


def test_a_v1_worker_fault_under_torch_ops_is_blamed_on_vllm() -> None:
    rec = _record("vllm-v1-worker-illegal-address.log")
    assert rec.exception_class == "illegal_address" and rec.kind == "cuda"
    # torch/_ops.py is dispatch plumbing; the engine core's re-raise is another traceback
    assert rec.top_frame == "vllm/model_executor/layers/rotary_embedding.py:148 in forward_native"
    assert any("EngineDeadError" in n for n in rec.notes)


def test_a_journal_prefixed_log_and_one_signature_on_every_install() -> None:
    rec = _record("journal-old-vllm-illegal-address.log")
    assert rec.top_frame == "vllm/model_executor/models/chatglm.py:379 in sample"
    moved = (FIXTURES / "journal-old-vllm-illegal-address.log").read_text().replace(
        "/opt/envs/serve/lib/python3.9/site-packages/", "/usr/lib/python3/dist-packages/")
    other = records.from_log(serving_log.parse(moved), "x", catalog.load([]))
    assert other.signature == rec.signature


def test_a_cuda_error_longer_than_200_characters_is_kept() -> None:
    """cuBLAS names the whole call after its status: the line is read, its text cut at 200 characters,
    the line itself kept whole for the catalog's text match."""
    call = ("cublasGemmStridedBatchedEx(handle, opa, opb, (int)m, (int)n, (int)k, (void*)&falpha, a, CUDA_R_16BF, "
            "(int)lda, stridea, b, CUDA_R_16BF, (int)ldb, strideb, (void*)&fbeta, c, CUDA_R_16BF, (int)ldc, "
            "stridec, (int)num_batches, compute_type, CUBLAS_GEMM_DEFAULT_TENSOR_OP)")
    line = f"RuntimeError: CUDA error: CUBLAS_STATUS_NOT_SUPPORTED when calling `{call}`"
    rep = serving_log.parse(line)
    assert rep.ok and rep.cuda_error == "CUDA error: " + line.split("CUDA error: ", 1)[1][:200]
    assert rep.lines == [line]
    assert serving_log.parse("CUDA error: an illegal memory access was encountered").cuda_error == (
        "CUDA error: an illegal memory access was encountered")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(max_size=200),
    st.sampled_from([ln for f in sorted(FIXTURES.glob("*.log")) for ln in f.read_text().splitlines()]),
    st.builds(lambda a, b: f"{a}CUDA error: {b}", st.text(max_size=30), st.text(max_size=80)),
), max_size=40))
def test_fuzz_never_raises(lines: list[str]) -> None:
    rep = serving_log.parse("\n".join(lines))
    rec = records.from_log(rep, "fuzz", catalog.load([]))
    assert isinstance(rec.signature, str) and len(rec.signature) == 12


def test_triage_on_a_log(h) -> None:  # noqa: ANN001
    path = FIXTURES / "vllm21731-scatter-assert.log"
    res = h.run([h.sentinel, "triage", str(path), "--json", "--dir", h.dir], env=h.env())
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["known_issue"]["id"] == "index-out-of-bounds-assert" and d["source"] == "log"
    res = h.run([h.sentinel, "triage", str(path), "--dir", h.dir], env=h.env())
    assert "  python      vllm/v1/sample/ops/penalties.py:39 in apply_all_penalties" in res.stdout.splitlines()
