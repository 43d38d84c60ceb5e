"""The compute-sanitizer reader: each public report under fixtures/compute-sanitizer/ (sources in its
README.md) diagnosed field by field; the exception classes it gets; engine prefixes; which report is
the fault; detection against every other fixture; fuzzed; linear time; `sentinel triage FILE` on one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.triage import catalog, fingerprint, records
from sentinel.triage.readers import HEAD_BYTES, compute_sanitizer, detect

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HERE = FIXTURES / "compute-sanitizer"
REPORTS = sorted(HERE.glob("*.txt"))


def _record(name: str) -> records.FaultRecord:
    path = HERE / name
    assert detect(path.read_bytes()[:HEAD_BYTES]) is compute_sanitizer
    return records.from_sanitizer(compute_sanitizer.parse(path.read_text()), str(path), catalog.load([]))


def test_every_fixture_has_a_source_row() -> None:
    readme = (HERE / "README.md").read_text()
    assert len(REPORTS) >= 5
    for path in REPORTS:
        row = next((ln for ln in readme.splitlines() if f"`{path.name}`" in ln), "")
        # a public report's URL, or the capture script that made it on a GPU (h200-*)
        assert "https://github.com/" in row or "`capture.py --case " in row, path.name


# -- each public report, field by field ------------------------------------------------------------

def test_cucollections539_write_then_api_error() -> None:
    """A 1-byte write one byte past a 10-byte allocation; the launch failure the program hit next is
    counted, not taken for the fault."""
    rec = _record("cucollections539-memcheck-write-then-api-error.txt")
    assert (rec.source, rec.kind, rec.exception_class) == ("sanitizer", "cuda", "illegal_address")
    assert rec.exception == "Invalid __global__ write of size 1 bytes"
    assert rec.kernel.startswith("void thrust::cuda_cub::assign_value<thrust::cuda_cub::tag,")
    assert rec.kernel.endswith("::war_nvbugs_881631::device_path(thrust::cuda_cub::execution_policy<thrust::cuda_cub::tag> &, "
                               "thrust::device_ptr<bool>, const bool *)")
    assert rec.kernel_family == "thrust::cuda_cub::assign_value::war_nvbugs_881631::device_path"
    lg = rec.log
    assert (lg["tool"], lg["check"], lg["errors"]) == ("memcheck", "memcheck", 2)
    assert (lg["space"], lg["access"], lg["size"]) == ("__global__", "write", 1)
    assert lg["pc"] == "0xd0"
    assert lg["source_file"].endswith("thrust/system/cuda/detail/assign_value.h") and lg["source_line"] == 58
    assert (lg["thread"], lg["block"]) == ("(0,0,0)", "(0,0,0)")
    assert (lg["address"], lg["address_state"]) == ("0x7b3c42e0000a", "out of bounds")
    assert lg["allocation"] == {"relation": "after", "distance": 1, "address": "0x7b3c42e00000", "size": 10}
    assert len(lg["device_frames"]) == 1 and lg["device_frames"][0].endswith("assign_value.h:62")
    # the innermost application frame the thread shows (the frames above it were left out)
    assert rec.top_frame == lg["host_frame"] == \
        "Catch::Session::runInternal() at src/catch2/catch_session.cpp:332 in libCatch2.so.3.3.0"
    assert lg["others"] == [{"kind": "Program hit cudaErrorLaunchFailure on CUDA API call to cudaStreamSynchronize",
                             "function": "", "count": 1}]
    assert rec.evidence == ["out_of_bounds"] and rec.known_issue is None
    assert any("cudaErrorLaunchFailure (error 719)" in n for n in rec.notes)
    assert lg["lines"][:4] == ["Invalid __global__ write of size 1 bytes", lg["lines"][1],
                               "by thread (0,0,0) in block (0,0,0)", "Address 0x7b3c42e0000a is out of bounds"]


def test_sglang2599_triton_kernel_oob_read() -> None:
    """Older layout (at 0xPC in file:line:function) on a Triton kernel: the kernel and its Python
    source line; no application host frame (launcher and interpreter only), so the first that is not
    CUDA's; the thousands separators read."""
    rec = _record("sglang2599-triton-fused-moe-oob-read.txt")
    assert (rec.exception, rec.exception_class) == ("Invalid __global__ read of size 16 bytes", "illegal_address")
    assert rec.kernel == rec.kernel_family == "fused_moe_kernel"
    lg = rec.log
    assert lg["pc"] == "0xda0"
    assert lg["source_file"].endswith("sglang/srt/layers/moe/fused_moe_triton/fused_moe.py") and lg["source_line"] == 175
    assert (lg["thread"], lg["block"], lg["size"]) == ("(96,0,0)", "(44,0,0)", 16)
    assert lg["allocation"] == {"relation": "before", "distance": 1_241_911_296, "address": "0x7639e0000000",
                                "size": 5_033_164_800}
    assert rec.top_frame == lg["host_frame"] == "?? in __triton_launcher.so"
    assert "device_frames" not in lg and lg["errors"] == 1 and "others" not in lg


def test_fa1830_flash_attention_splitkv_oob_write() -> None:
    rec = _record("fa1830-splitkv-oob-write.txt")
    assert (rec.exception, rec.exception_class, rec.kind) == ("Invalid __global__ write of size 4 bytes",
                                                              "illegal_address", "cuda")
    assert rec.kernel_family == "flash::flash_fwd_splitkv_kernel"
    lg = rec.log
    assert (lg["pc"], lg["source_file"], lg["source_line"]) == ("0xd00", "", None)
    assert (lg["thread"], lg["block"]) == ("(120,0,0)", "(0,12,2)")
    assert lg["allocation"] == {"relation": "after", "distance": 67717, "address": "0x7f90d5600000", "size": 2097152}
    assert rec.top_frame == "" and "host_frame" not in lg


def test_cccl1229_shared_read_misaligned() -> None:
    """A misaligned __shared__ access is misaligned_address, not an out-of-range one."""
    rec = _record("cccl1229-shared-read-misaligned.txt")
    assert rec.exception == "Invalid __shared__ read of size 16 bytes (address misaligned)"
    assert rec.exception_class == "misaligned_address"
    assert rec.kernel_family.endswith("cub::CUB_200200_800_NS::BlockReduceWarpReductions::ApplyWarpAggregates")
    lg = rec.log
    assert (lg["space"], lg["access"], lg["size"], lg["pc"]) == ("__shared__", "read", 16, "0x6320")
    assert lg["source_file"].endswith("block_reduce_warp_reductions.cuh") and lg["source_line"] == 118
    assert (lg["address"], lg["address_state"]) == ("0x8", "misaligned")
    assert rec.evidence == [] and lg["tool"] == "memcheck"


def test_quicksilver48_cuda_memcheck_layout() -> None:
    """cuda-memcheck: no "bytes" after the size, at 0xPC in function, module (symbol + 0xoff) frames."""
    rec = _record("quicksilver48-cuda-memcheck-oob-read.txt")
    assert (rec.exception, rec.exception_class) == ("Invalid __global__ read of size 8", "illegal_address")
    assert rec.kernel == "CycleTrackingGuts(MonteCarlo*, int, ParticleVault*, ParticleVault*)"
    assert rec.kernel_family == "CycleTrackingGuts"
    lg = rec.log
    assert lg["legacy"] is True and lg["tool"] == "memcheck"
    assert (lg["pc"], lg["size"], lg["thread"], lg["block"]) == ("0x000002e8", 8, "(127,0,0)", "(194,0,0)")
    assert (lg["address"], lg["address_state"]) == ("0x7f153e0002e8", "out of bounds") and "allocation" not in lg
    assert lg["device_frames"][0].endswith("(CycleTrackingKernel(MonteCarlo*, int, ParticleVault*, ParticleVault*) : 0xa0)")
    assert rec.top_frame == "?? in qs"  # libcuda's cuLaunchKernel skipped; the program has no symbols


def test_cccl1891_initcheck_uninitialized_read() -> None:
    rec = _record("cccl1891-initcheck-uninitialized-read.txt")
    assert rec.exception == "Uninitialized __global__ memory read of size 8 bytes"
    assert rec.exception_class == "uninitialized_read"
    lg = rec.log
    assert (lg["tool"], lg["check"]) == ("initcheck", "initcheck")  # from --tool on the command line
    assert (lg["space"], lg["size"], lg["pc"], lg["source_line"]) == ("__global__", 8, "0x8a70", 260)
    assert (lg["thread"], lg["block"], lg["address"]) == ("(16,0,0)", "(80,0,0)", "0x7f615d40daf0")
    assert "address_state" not in lg and rec.evidence == []
    assert "cub::CUB_200500_600_700_800_NS::ThreadLoad" in rec.kernel_family


def test_kokkos6217_racecheck_warning_old_layout() -> None:
    rec = _record("kokkos6217-racecheck-warning.txt")
    assert rec.exception == "Race reported between Read access and Write access"
    assert rec.exception_class == "data_race"
    assert rec.kernel.startswith("Kokkos::Impl::ParallelReduce<") and rec.kernel.endswith("::operator ()() const")
    lg = rec.log
    assert (lg["tool"], lg["severity"], lg["hazards"], lg["pc"]) == ("racecheck", "Warning", 4, "0x1f20")
    assert lg["source_file"].endswith("Kokkos_Cuda_Parallel_Range.hpp") and lg["source_line"] == 249
    assert [a.split(" at ")[0] for a in lg["accesses"]] == ["Read access", "Write access"]
    assert lg["accesses"][1].startswith("Write access at 0x14b0 in /home/user/Kokkos/install/include/Cuda/Kokkos_Cuda_ReduceScan.hpp:349:")
    assert lg["racecheck_summary"] == "1 hazard displayed (0 errors, 1 warning)"
    assert "RACECHECK SUMMARY: 1 hazard displayed (0 errors, 1 warning)" in lg["lines"]


def test_hecbench264_two_races_counted() -> None:
    rec = _record("hecbench264-racecheck-errors.txt")
    assert (rec.exception_class, rec.kernel_family) == ("data_race", "SSSP_gpu")
    lg = rec.log
    assert (lg["severity"], lg["pc"], lg["source_file"], lg["source_line"], lg["hazards"]) == \
        ("Error", "0x140", "main.cu", 205, 12)
    assert lg["accesses"][1].endswith("+0x1430 in main.cu:261")
    assert lg["errors"] == 2
    assert [(o["kind"], o["count"]) for o in lg["others"]] == [("Race reported between Write access and Read access", 1)]


def test_cudanative61_synccheck_barrier() -> None:
    rec = _record("cudanative61-synccheck-barrier.txt")
    assert (rec.exception, rec.exception_class) == ("Barrier error detected. Divergent thread(s) in warp", "barrier_error")
    assert rec.kernel == "ptxcall_computeBetasAndGradKernel_3"
    lg = rec.log
    assert (lg["tool"], lg["pc"], lg["source_line"], lg["thread"]) == ("synccheck", "0x000046b8", 12, "(2,0,0)")
    assert lg["source_file"].endswith("cuda_intrinsics/synchronization.jl")
    assert rec.top_frame == "jl_apply_generic in libjulia.so.1"  # unnamed JIT frames and libcuda skipped


def test_cccl1896_leak_with_ci_indentation() -> None:
    rec = _record("cccl1896-memcheck-leak.txt")
    assert (rec.exception, rec.exception_class, rec.kind) == ("Leaked 4 bytes", "memory_leak", "cuda")
    assert rec.kernel == ""
    lg = rec.log
    assert (lg["leaked"], lg["address"], lg["tool"]) == (4, "0x7f769fe00a00", "memcheck")
    assert rec.top_frame == "C_A_T_C_H_T_E_S_T_0() in cub.cpp17.test.nvrtc"


# -- exception classes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "cls"), [
    ("Invalid __global__ read of size 4 bytes", "illegal_address"),
    ("Invalid __global__ atomic of size 8 bytes", "illegal_address"),
    ("Invalid __shared__ write of size 4 bytes", "out_of_range_address"),
    ("Invalid __local__ read of size 4 bytes", "out_of_range_address"),
    ("Invalid __global__ read of size 8 bytes (address misaligned)", "misaligned_address"),
    ("Misaligned Shared or Local Address", "misaligned_address"),
    ("Out-of-range Shared or Local Address", "out_of_range_address"),
    ("Uninitialized __global__ memory read of size 4 bytes", "uninitialized_read"),
    ("Race reported between Write access and Read access", "data_race"),
    ("Race reported between Write access and Write access on __shared__ memory", "data_race"),
    ("Barrier error detected. Divergent thread(s) in block", "barrier_error"),
    ("Malloc/Free error encountered : Double free", "malloc_free_error"),
    ("Leaked 1024 bytes", "memory_leak"),
    ('Program hit cudaErrorIllegalAddress (error 700) due to "an illegal memory access was encountered" on CUDA API '
     "call to cudaDeviceSynchronize", "illegal_address"),
    ('Program hit cudaErrorLaunchFailure (error 719) due to "unspecified launch failure" on CUDA API call to '
     "cudaStreamSynchronize", "cuda_api_error"),
    ('Program hit cudaErrorMemoryAllocation (error 2) due to "out of memory" on CUDA API call to cudaMalloc',
     "out_of_memory"),
    # the classes cuda-gdb and the logs give are unchanged
    ("Warp Illegal Address", "illegal_address"), ("Warp Misaligned Address", "misaligned_address"),
    ("CUDA error: an illegal memory access was encountered", "illegal_address"),
])
def test_exception_classes(text: str, cls: str) -> None:
    assert fingerprint.exception_class(text) == cls


def test_a_sanitizer_run_and_the_crash_it_explains_share_a_class() -> None:
    """An invalid global access is what the GPU reports as an illegal address: the same catalog
    entries apply to both."""
    assert fingerprint.exception_class("Invalid __global__ read of size 4 bytes") == \
        fingerprint.exception_class("Warp Illegal Address")


# -- prefixes, fault choice, Python frames ---------------------------------------------------------

@pytest.mark.parametrize("prefix", ["(VllmWorker rank=1 pid=110) ", "[rank0]:", "ERROR 07-28 16:54:13 [core.py:591] ",
                                    "\x1b[36m(RayWorkerWrapper pid=4242)\x1b[0m "])
@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_engine_prefixes_change_nothing(prefix: str, path: Path) -> None:
    plain = compute_sanitizer.parse(path.read_text())
    prefixed_text = "".join(prefix + ln for ln in path.read_text().splitlines(keepends=True))
    assert detect(prefixed_text.encode()[:HEAD_BYTES]) is compute_sanitizer
    prefixed = compute_sanitizer.parse(prefixed_text)
    assert prefixed.fault == plain.fault and prefixed.others == plain.others and prefixed.tool == plain.tool


def test_a_host_api_error_before_the_kernel_error_is_not_the_fault() -> None:
    """PyTorch trips harmless API errors at start-up; the first kernel error is the fault."""
    text = (HERE / "fa1830-splitkv-oob-write.txt").read_text()
    noise = ('========= Program hit cudaErrorInvalidValue (error 1) due to "invalid argument" on CUDA API call to '
             "cudaPointerGetAttributes.\n=========     Saved host backtrace up to driver entry point at error\n")
    rep = compute_sanitizer.parse(noise + text + "========= ERROR SUMMARY: 2 errors\n")
    assert rep.fault is not None and rep.fault.kind == "Invalid __global__ write of size 4 bytes"
    assert rep.total == 2 and rep.error_summary == 2
    assert rep.others == [{"kind": "Program hit cudaErrorInvalidValue on CUDA API call to cudaPointerGetAttributes",
                           "function": "", "count": 1}]
    only_api = compute_sanitizer.parse(noise)
    assert only_api.fault is not None and only_api.fault.api_error == "cudaErrorInvalidValue"


def test_many_threads_of_one_kernel_are_one_group() -> None:
    block = (HERE / "fa1830-splitkv-oob-write.txt").read_text()
    rep = compute_sanitizer.parse(block * 50)
    assert rep.total == 50 and len(rep.errors) == compute_sanitizer.MAX_ERRORS
    assert [o["count"] for o in rep.others] == [49]
    assert len(rep.lines) == len(set(rep.lines)) <= compute_sanitizer.MAX_LINES


def test_a_python_traceback_in_the_output_is_blamed() -> None:
    """`compute-sanitizer python serve.py`: the program's own traceback names the frame to blame."""
    tb = ('Traceback (most recent call last):\n'
          '  File "/srv/app/serve.py", line 12, in <module>\n'
          '    out = model(x)\n'
          '  File "/usr/lib/python3.12/site-packages/torch/nn/modules/module.py", line 1751, in _wrapped_call_impl\n'
          '  File "/usr/lib/python3.12/site-packages/vllm/attention/layer.py", line 240, in forward\n'
          '  File "/usr/lib/python3.12/site-packages/torch/_ops.py", line 1158, in __call__\n'
          "RuntimeError: CUDA error: unspecified launch failure\n")
    text = (HERE / "sglang2599-triton-fused-moe-oob-read.txt").read_text() + tb
    # a "CUDA error" line is serving_log's marker too: the sanitizer's reader goes first
    assert detect(text.encode()) is compute_sanitizer
    rec = records.from_sanitizer(compute_sanitizer.parse(text), "x", catalog.load([]))
    assert rec.top_frame == "vllm/attention/layer.py:240 in forward"
    assert rec.log["host_frame"] == "?? in __triton_launcher.so"
    assert rec.cuda_error == "CUDA error: unspecified launch failure"


def test_older_racecheck_hazard_layout() -> None:
    """cuda-memcheck's racecheck: the hazard line names the space and block, the accesses follow."""
    text = ("========= ERROR: Potential WAW hazard detected at __shared__ 0x0 in block (0, 0, 0) :\n"
            "=========     Write Thread (0, 0, 0) at 0x00000088 in raceGroupBasic.cu:13:Basic(void)\n"
            "=========     Write Thread (1, 0, 0) at 0x00000088 in raceGroupBasic.cu:13:Basic(void)\n")
    err = compute_sanitizer.parse(text).fault
    assert err is not None and err.exception == "Race reported between Write access and Write access on __shared__ memory"
    assert (err.function, err.file, err.line, err.thread, err.block) == ("Basic(void)", "raceGroupBasic.cu", 13,
                                                                         "(0,0,0)", "(0,0,0)")


# -- detection ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_detect_picks_this_reader(path: Path) -> None:
    assert detect(path.read_bytes()[:HEAD_BYTES]) is compute_sanitizer


OTHERS = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and HERE not in p.parents and p.suffix != ".md")


@pytest.mark.parametrize("path", OTHERS, ids=lambda p: str(p.relative_to(FIXTURES)))
def test_no_other_fixture_looks_like_a_sanitizer_report(path: Path) -> None:
    head = path.read_bytes()[:HEAD_BYTES]
    assert not compute_sanitizer.looks_like(head)
    assert detect(head) is not compute_sanitizer


@pytest.mark.parametrize("head", [b"=" * 79 + b"\nAll tests passed (478 assertions in 8 test cases)\n",
                                  b"==49== ERROR SUMMARY: 0 errors from 0 contexts (suppressed: 0 from 0)\n",
                                  b"========== Invalid __global__ read of size 4 bytes\n"])
def test_lookalikes_are_not_reports(head: bytes) -> None:
    assert not compute_sanitizer.looks_like(head)
    assert not compute_sanitizer.parse(head.decode()).ok


# -- never raises, linear ----------------------------------------------------------------------------

_LINES = [ln for p in REPORTS for ln in p.read_text().splitlines()]


def _mutate(line: str, cut: int, junk: str) -> str:
    cut = cut % (len(line) + 1)
    return line[:cut] + junk + line[cut:]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.text(max_size=200),
    st.sampled_from(_LINES),
    st.builds(_mutate, st.sampled_from(_LINES), st.integers(0, 4000), st.text(max_size=20)),
    st.builds(lambda a, b: f"========= {a}{b}", st.sampled_from([
        "Invalid __global__ read of size ", "Race reported between Write access at ", "Leaked ", "Program hit ",
        "    at ", "    and is ", "    by thread (", "    Host Frame:", "    Device Frame:", "    and Read access at ",
        "ERROR SUMMARY: ", "Uninitialized __global__ memory read of size ", "Potential RAW hazard detected at "]),
        st.text(max_size=80)),
), max_size=40))
def test_fuzz_never_raises(lines: list[str]) -> None:
    rep = compute_sanitizer.parse("\n".join(lines))
    if rep.ok:
        rec = records.from_sanitizer(rep, "fuzz", catalog.load([]))
        assert isinstance(rec.signature, str) and len(rec.signature) == 12
        from sentinel.triage import report

        assert report.render_report(rec)


def test_time_is_linear() -> None:
    """Long template names and pathological lines cost in proportion to their length."""
    nasty = ("=========     at " + "a+0x1 in " * 1500 + "\n"
             "=========     Host Frame:" + "f (g + 0x1) [0x1] in " * 700 + "\n"
             "========= Race reported between Read access at " + "x in y:1:" * 1500 + "\n"
             "=========     and is " + "1," * 5000 + "\n")
    block = (HERE / "cucollections539-memcheck-write-then-api-error.txt").read_text()
    t0 = time.perf_counter()
    compute_sanitizer.parse(nasty * 20)
    compute_sanitizer.parse(block * 400)  # 800 reports, 10,000 lines
    assert time.perf_counter() - t0 < 10


# -- the command -------------------------------------------------------------------------------------

def test_triage_on_a_report(h) -> None:  # noqa: ANN001
    path = HERE / "sglang2599-triton-fused-moe-oob-read.txt"
    res = h.run([h.sentinel, "triage", str(path), "--json", "--dir", h.dir], env=h.env())
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert (d["source"], d["kind"], d["exception_class"], d["kernel"]) == ("sanitizer", "cuda", "illegal_address",
                                                                           "fused_moe_kernel")
    assert d["log"]["allocation"]["distance"] == 1_241_911_296
    res = h.run([h.sentinel, "triage", str(path), "--dir", h.dir], env=h.env())
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert "  exception   Invalid __global__ read of size 16 bytes  [illegal_address]" in out
    assert "  thread      block (44,0,0) thread (96,0,0)" in out
    assert "  access      read of 16 bytes at 0x763995f9f000 in __global__ memory, out of bounds" in out
    assert ("  allocation  1241911296 bytes before the nearest allocation, at 0x7639e0000000 of 5033164800 bytes"
            in out)
    assert "  host        ?? in __triton_launcher.so" in out


def test_triage_on_a_clean_run(h, tmp_path: Path) -> None:  # noqa: ANN001
    clean = tmp_path / "clean.txt"
    clean.write_text("========= COMPUTE-SANITIZER\nAll tests passed\n========= ERROR SUMMARY: 0 errors\n")
    res = h.run([h.sentinel, "triage", str(clean), "--dir", h.dir], env=h.env())
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.strip() == f"sentinel triage: {clean}: no sanitizer error in it (ERROR SUMMARY: 0 errors)"


def test_captured_on_an_h200_misaligned_read_and_shared_race() -> None:
    """Real compute-sanitizer output of capture.py's kernels on an H200 (README), field by field."""
    rec = _record("h200-misaligned-read.memcheck.txt")
    assert rec.exception_class == "misaligned_address" and rec.kernel == "misaligned_read" and rec.kind == "cuda"
    assert (rec.log["thread"], rec.log["block"]) == ("(0,0,0)", "(0,0,0)")
    assert rec.log["address"] == "0x7fe52c800001" and rec.log["size"] == 4
    assert rec.log["allocation"]["size"] == 1032 and rec.log["error_summary"] == 39
    assert rec.top_frame == "capture.py:83 in run_case"  # its own launch frame, not the traceback after it
    race = _record("h200-shared-race.racecheck.txt")
    assert race.exception_class == "data_race" and race.kernel == "shared_race" and race.log["hazards"] == 256
