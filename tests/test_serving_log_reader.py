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


def test_native_cuda_checks_are_cuda_errors() -> None:
    """The CUDA checks extensions print themselves (vLLM's CUDACHECK exits the worker with no
    traceback; FlashAttention's launch template) carry cudaGetErrorString's text."""
    for text, err in (
        ("Failed: Cuda error /workspace/csrc/custom_all_reduce.cuh:164 'invalid argument'\n"
         "(EngineCore pid=3677484) ERROR 09-10 09:37:41 [multiproc_executor.py:314] Worker proc VllmWorker-0 died "
         "unexpectedly (exit code: None), shutting down executor.", "CUDA error: invalid argument"),
        ("CUDA error (/build/source/flash-attn/flash_fwd_launch_template.h:184): no kernel image is available for "
         "execution on the device", "CUDA error: no kernel image is available for execution on the device"),
    ):
        assert serving_log.looks_like(text.encode())
        rep = serving_log.parse(text)
        assert rep.cuda_error == err and rep.exception == err
        assert rep.lines[0] == text.splitlines()[0]
    rep = serving_log.parse("Failed: Cuda error /workspace/csrc/custom_all_reduce.cuh:164 'invalid argument'\n"
                            "Worker proc VllmWorker-1 died unexpectedly, shutting down executor.")
    assert rep.chain == ["Worker proc VllmWorker-1 died unexpectedly, shutting down executor."]


def test_a_fault_named_in_a_library_s_words_behind_a_timestamp_prefix() -> None:
    """FlashInfer's 'X failed with error code <CUDA error text>' is the failure when no CUDA error line
    names one; a collector's bare 'YYYY-MM-DD HH:MM:SS: ' prefix is stripped like the engines' own."""
    text = ("2025-06-27 17:14:23: (VllmWorker rank=0 pid=776293) ERROR 06-27 17:14:23 [multiproc_executor.py:522] "
            "WorkerProc hit an exception.\n"
            "2025-06-27 17:14:23: (VllmWorker rank=1 pid=776294) ERROR 06-27 17:14:23 [multiproc_executor.py:522] "
            "RuntimeError: TopPSamplingFromProbs failed with error code an illegal memory access was encountered\n")
    rep = serving_log.parse(text)
    line = "RuntimeError: TopPSamplingFromProbs failed with error code an illegal memory access was encountered"
    assert rep.exception == line and line in rep.lines and rep.chain == ["WorkerProc hit an exception."]
    rec = records.from_log(rep, "x", catalog.load([]))
    assert rec.exception_class == "illegal_address"
    # a CUDA error line, when there is one, stays the failure
    rep = serving_log.parse(text + "RuntimeError: CUDA error: an illegal memory access was encountered\n")
    assert rep.exception == "CUDA error: an illegal memory access was encountered"


def test_a_v0_worker_death_line() -> None:
    text = ("ERROR 01-11 13:09:40 multiproc_worker_utils.py:123] Worker VllmWorkerProcess pid 26961 died, "
            "exit code: -15\n")
    assert serving_log.looks_like(text.encode())
    assert serving_log.parse(text).chain == ["Worker VllmWorkerProcess pid 26961 died, exit code: -15"]
