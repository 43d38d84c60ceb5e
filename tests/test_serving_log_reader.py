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


def test_sglang_scheduler_death_is_the_chain_and_its_exception_the_failure() -> None:
    """SGLang's scheduler dies with "Scheduler hit an exception: Traceback ..." on one line (the
    timestamped prefix stripped); with no CUDA error, the traceback's last line is the failure."""
    log = ("[2025-11-22 22:22:32 DP4 TP4] Scheduler hit an exception: Traceback (most recent call last):\n"
           '  File ".../srt/layers/attention/flashattention_backend.py", line 674, in init_forward_metadata\n'
           "    seq_lens_cpu.max().item()\n"
           "RuntimeError: max(): Expected reduction dim to be specified for input.numel() == 0.\n"
           "[2026-02-18 21:57:35] SIGQUIT received. signum=None, frame=None. It usually means one child failed.\n")
    assert serving_log.looks_like(log.encode())
    rep = serving_log.parse(log)
    assert rep.chain[0] == "Scheduler hit an exception" and rep.chain[1].startswith("SIGQUIT received")
    assert rep.exception.startswith("RuntimeError: max(): Expected reduction dim")
    assert rep.frame == ".../srt/layers/attention/flashattention_backend.py:674 in init_forward_metadata"


def test_deepep_and_flashinfer_cuda_error_layouts() -> None:
    """DeepEP writes "CUDA error <file>:<line> '<text>'", FlashInfer "CUDA Error: <text> (700) <file>: line N
    ..." on one long line: both are CUDA errors (the text cut at 200 characters, not lost)."""
    deepep = "RuntimeError: Failed: CUDA error /build/DeepEP/csrc/deep_ep.cpp:112 'invalid resource handle'"
    assert serving_log.looks_like(deepep.encode())
    assert serving_log.parse(deepep).cuda_error == "CUDA error: invalid resource handle"
    fi = ("CUDA Error: an illegal memory access was encountered (700) /usr/lib/python3/site-packages/flashinfer/data/"
          "include/flashinfer/attention/prefill.cuh: line 2380 at function cudaLaunchKernel((void*)kernel, nblks, "
          "nthrs, args, smem_size, stream)")
    rec = records.from_log(serving_log.parse(fi), "x", catalog.load([]))
    assert rec.exception_class == "illegal_address" and len(rec.cuda_error) == len("CUDA error: ") + 200
    assert "cudaLaunchKernel" in rec.log["lines"][0]


def test_a_flashinfer_host_error_is_the_failure_when_nothing_else_is() -> None:
    log = ("(EngineCore pid=269) RuntimeError: Error in function 'aligned_alloc' at /workspace/include/flashinfer/"
           "allocator.h:49: Buffer overflow when allocating memory for batch_prefill_tmp_v with size 536346624 and "
           "alignment 16, but only 413138944 bytes available in AlignedAllocator. Increase the workspace buffer size.")
    assert serving_log.looks_like(log.encode())
    rep = serving_log.parse(log)
    assert rep.exception.startswith("Error in function 'aligned_alloc' at ") and rep.exception == rep.lib_error
    # a CUDA error in the same log is the failure, the FlashInfer text only a line of it
    rep = serving_log.parse(log + "\ntorch.AcceleratorError: CUDA error: an illegal memory access was encountered")
    assert rep.exception == "CUDA error: an illegal memory access was encountered" and len(rep.lines) == 2


def test_tma_strides_past_the_rank_are_not_the_kernel_s() -> None:
    """A rank-4 descriptor has 3 strides; the dump's 4th (1041) is uninitialised, not a misalignment. A
    stride of 2^40 or more is an overflowed index (tma_stride_overflow), whatever its alignment."""
    dump = ("Error: Failed to initialize the TMA descriptor due to an illegal memory access was encountered\n"
            "tmaFormat: 9 dim: 4 gmem: 0xc903c15000\nShape: 128 7 2 24 1\nStride: 256 1792 3584 1041\n")
    rep = serving_log.parse(dump)
    assert rep.tma_dim == 4 and rep.tma_strides == [256, 1792, 3584, 1041] and rep.evidence == ["tma_descriptor"]
    rep = serving_log.parse(dump.replace("1792 3584", "384 2305843007066210304"))
    assert rep.evidence == ["tma_descriptor", "tma_stride_overflow"]
    assert set(_record("fi2232-tma-descriptor.log").evidence) == {"degenerate_stride", "tma_descriptor", "tma_misaligned"}


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


def test_seed_classes_leave_their_evidence_in_logs() -> None:
    """The settings and dumps a log shows give the seed classes' evidence, and only when they hold."""
    budget = "INFO 11-14 22:31:55 [config.py:2434] Chunked prefill is enabled with max_num_batched_tokens=8192.\n"
    crash = "RuntimeError: Triton Error [CUDA]: an illegal memory access was encountered\n"
    dump = "ERROR [dump_input.py:76] Dumping scheduler output for model execution: SchedulerOutput(total_num_scheduled_tokens={})\n"
    at_budget = serving_log.parse(budget + crash + dump.format(8192))
    assert at_budget.exception == "CUDA error: an illegal memory access was encountered"
    assert at_budget.evidence == ["token_budget_boundary"]
    assert serving_log.parse(budget + crash + dump.format(8191)).evidence == []
    assert serving_log.parse("'max_num_batched_tokens': 4096, x\n" + crash + dump.format(4096)).evidence == ["token_budget_boundary"]
    # a dump line past the reader's line limit is still read for its step size
    long_dump = dump.format(8192).replace("SchedulerOutput(", "SchedulerOutput(" + "x, " * 5000)
    assert serving_log.parse(budget + crash + long_dump).evidence == ["token_budget_boundary"]

    args = "server_args=ServerArgs(attention_backend='{}', enable_dp_attention={}, speculative_algorithm={})\n"
    cuda = "torch.AcceleratorError: CUDA error: an illegal memory access was encountered\n"
    assert serving_log.parse(args.format("trtllm_mha", "True", "'EAGLE'") + cuda).evidence == ["dp_padding_trtllm"]
    for off in (("trtllm_mha", "False", "'EAGLE'"), ("trtllm_mha", "True", "None"), ("fa3", "True", "'EAGLE'")):
        assert serving_log.parse(args.format(*off) + cuda).evidence == [], off

    oob = serving_log.parse("[TP0]     page_table.max=8657  num_pages_in_cache=8657\n")
    assert oob.exception.startswith("page index out of range") and oob.evidence == ["page_table_at_capacity", "page_table_oob"]
    assert not serving_log.parse("[TP0]     page_table.max=8656  num_pages_in_cache=8657\n").ok


def test_a_large_log_read_by_its_key_lines_gives_the_same_diagnosis(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """Past triage.STREAM_BYTES a log is read through readers.scan (only lines holding serving_log.KEYS,
    a chunk at a time): every fixture gives the same failure that way, at any chunk size."""
    import io

    from sentinel.cli import triage as cli_triage
    from sentinel.cli.main import main
    from sentinel.triage.readers.scan import relevant_lines

    logs = sorted(FIXTURES.glob("*.log")) + sorted((FIXTURES.parent / "catalog").glob("*/*.log"))
    logs = [p for p in logs if detect(p.read_bytes()[:65536]) is serving_log]
    assert len(logs) >= 10
    for path in logs:
        whole = serving_log.parse(path.read_text(errors="replace"))
        for chunk in (8192, 65536, 1 << 20):  # chunks longer than any line: a longer line is cut
            part = serving_log.parse(relevant_lines(io.BytesIO(path.read_bytes()), serving_log.KEYS, chunk))
            got = (part.exception, part.kernel, part.frame, part.evidence, part.assertion, part.tma_strides)
            assert got == (whole.exception, whole.kernel, whole.frame, whole.evidence, whole.assertion,
                           whole.tma_strides), (path.name, chunk)
    monkeypatch.setattr(cli_triage, "STREAM_BYTES", 0)
    out = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(out):
        assert main(["triage", str(FIXTURES / "vllm21731-scatter-assert.log"), "--json", "--dir", str(tmp_path)]) == 0
    assert json.loads(out.getvalue())["known_issue"]["id"] == "index-out-of-bounds-assert"


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
