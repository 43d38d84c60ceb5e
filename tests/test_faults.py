"""From a fault to a fingerprinted, explained record: cuda-gdb transcripts of real GPU faults
(tests/fixtures/cuda-gdb, captured on an H100), signatures, the known-issue catalog, the coredump
collector end to end, retention under a storm, bad dumps, and Python-side crashes."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.triage import catalog, consequences, fingerprint, report
from sentinel.triage import records as faults
from sentinel.triage.readers import cudagdb
from sentinel_hooks import frames

FIXTURES = Path(__file__).parent / "fixtures" / "cuda-gdb"
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cuda-gdb-illegal-address-h100.txt"


def fixture(name: str) -> str:
    return (FIXTURES / f"cuda-gdb-{name}.txt").read_text()


# -- the parser on real transcripts ----------------------------------------------------------------

@pytest.mark.parametrize("name, exception, kernel, family", [
    ("illegal-address", "Warp Illegal Address", "paged_gather", "paged_gather"),
    ("illegal-address-in-graph", "Warp Illegal Address", "paged_gather", "paged_gather"),
    ("misaligned-address", "Warp Misaligned Address", "misaligned_load", "misaligned_load"),
    ("device-assert", "Assertion failed", "void at::native::vectorized_gather_kernel<16, long>"
     "(char*, char*, long*, int, long, long, long, long, bool)", "at::native::vectorized_gather_kernel"),
    ("trap", "SIGTRAP: Trace/breakpoint trap", "sentinel_trap_kernel", "sentinel_trap_kernel"),
])
def test_parse_real_transcripts(name, exception, kernel, family):
    r = cudagdb.parse(fixture(name))
    assert r.exception == exception
    assert r.kernel == kernel
    assert fingerprint.kernel_family(r.kernel) == family
    assert r.grid and r.block_dim and r.focus_block and r.focus_thread
    assert r.device == 0 and r.sm is not None and r.gpu_name == "NVIDIA H100 80GB HBM3"


def test_parse_illegal_address_details():
    r = cudagdb.parse(fixture("illegal-address"))
    assert r.pc.startswith("0x") and r.function == "paged_gather"
    assert (r.source_file, r.source_line) == ("illegal_address.py", 8)
    assert (r.grid, r.block_dim, r.focus_block, r.focus_thread) == ("(512,1,1)", "(128,1,1)", "(7,0,0)", "(0,0,0)")
    assert (r.sm, r.warp, r.lane) == (131, 0, 0)


@pytest.mark.skipif(not REFERENCE.exists(), reason="../shared/reference is not beside this checkout")
def test_parse_the_design_notes_reference_transcript():
    r = cudagdb.parse(REFERENCE.read_text())
    assert (r.exception, r.kernel, r.source_line, r.sm) == ("Warp Illegal Address", "paged_gather", 9, 131)


@pytest.mark.parametrize("text", ["", "garbage\n" * 50, "CUDA Exception:", "#0 in <<<(", "\x00\xff" * 100])
def test_parse_never_raises(text):
    r = cudagdb.parse(text)
    assert isinstance(r, cudagdb.GdbReport)


# -- signatures --------------------------------------------------------------------------------------

def test_same_fault_two_runs_one_signature_and_different_faults_differ():
    eager = cudagdb.parse(fixture("illegal-address"))
    graph = cudagdb.parse(fixture("illegal-address-in-graph"))  # another run, another PC, inside a graph
    assert eager.pc != graph.pc
    frame = "serve.py:120 in decode"
    assert fingerprint.signature(eager.exception, eager.kernel, frame) == \
        fingerprint.signature(graph.exception, graph.kernel, "serve.py:121 in decode")  # a moved line too
    mis = cudagdb.parse(fixture("misaligned-address"))
    sigs = {fingerprint.signature(r.exception, r.kernel, frame) for r in (eager, mis, cudagdb.parse(fixture("trap")),
                                                                          cudagdb.parse(fixture("device-assert")))}
    assert len(sigs) == 4
    assert fingerprint.signature(eager.exception, eager.kernel, frame) != \
        fingerprint.signature(eager.exception, eager.kernel, "other.py:1 in step")


def test_kernel_families_group_variants():
    a = "fmhaSm100fKernel_QkvE4m3OBfloat16HQk128HV128SeparateQkvP64VarSeqQ128Kv128PersistentSwapsAbForGen"
    b = "fmhaSm100fKernel_QkvBfloat16OBfloat16HQk64HV64PagedKvP32VarSeqQ64Kv128StaticKeepsAbForGen"
    assert fingerprint.kernel_family(a) == fingerprint.kernel_family(b) == "fmhaSm100fKernel"
    assert fingerprint.signature("Warp Illegal Address", a) == fingerprint.signature("Warp Illegal Address", b)
    assert fingerprint.kernel_family("cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_128x128_32x3_tn_align8") == \
        "cutlass_80_tensorop_bf16_s16816gemm_relu_bf16"
    assert fingerprint.kernel_family("triton_poi_fused_add_0") == fingerprint.kernel_family("triton_poi_fused_add_7")


# -- the catalog -------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc, kernel, evidence, expected", [
    ("illegal_address", "fmhaSm100fKernel", {"page_table_oob"}, "paged-kv-page-index-off-by-one"),
    ("illegal_address", "fmhaSm100fKernel", {"page_table_at_capacity"}, "paged-kv-page-index-off-by-one"),
    ("illegal_address", "flash_fwd_kernel", {"batch_mismatch"}, "dp-padding-batch-mismatch"),
    ("illegal_instruction", "fmhaSm90Kernel", {"degenerate_stride", "tma_misaligned"}, "degenerate-stride-tma"),
    ("illegal_address", "triton_red_fused", {"token_budget_boundary"}, "token-budget-boundary"),
    ("device_assert", "at::native::vectorized_gather_kernel", set(), "index-out-of-bounds-assert"),
    ("illegal_address", "paged_gather", set(), None),
    ("misaligned_address", "gemm", {"batch_mismatch"}, None),
])
def test_builtin_catalog_matches_the_seed_classes(exc, kernel, evidence, expected):
    cat = catalog.load()
    m = cat.match(exc, kernel, evidence)
    assert (m.id if m else None) == expected
    if m:
        assert m.root_cause and m.remediation and m.reference and m.runbook


def test_catalog_xids_cover_the_documented_codes():
    cat = catalog.load()
    assert {13, 31, 43, 48, 63, 64, 74, 79, 94, 95, 119} <= set(cat.xids)
    assert cat.xid(79).severity == "critical" and cat.xid(63).severity == "warning"
    assert cat.xid(12345).name == "XID 12345"


def test_user_catalog_extends_and_replaces(tmp_path):
    extra = tmp_path / "mine.toml"
    extra.write_text('''
[[issue]]
id = "paged-kv-page-index-off-by-one"
title = "Our allocator bug"
[issue.match]
exception = ["illegal_address"]
evidence = ["page_table_oob"]

[[issue]]
id = "our-moe-kernel"
title = "MoE routing kernel reads past the expert table"
[issue.match]
kernel = "fused_moe"
''')
    cat = catalog.load([str(extra)])
    assert cat.match("illegal_address", "fmha", {"page_table_oob"}).title == "Our allocator bug"
    assert cat.match("illegal_address", "fused_moe_kernel", set()).id == "our-moe-kernel"
    assert sum(i.id == "paged-kv-page-index-off-by-one" for i in cat.issues) == 1


@pytest.mark.parametrize("doc, message", [
    ("[[issue]\n", "not valid TOML"),
    ("[[issue]]\ntitle = 'x'\n[issue.match]\nkernel='a'\n", "needs a non-empty string id"),
    ("[[issue]]\nid = 'x'\n[issue.match]\nkernel = '('\n", "not a valid regex"),
    ("[[issue]]\nid = 'x'\nbogus = 1\n[issue.match]\nkernel='a'\n", "unknown keys"),
    ("[[issue]]\nid = 'x'\n", "no condition"),
    ("[[issue]]\nid = 'x'\n[issue.match]\nexception = 3\n", "string or a list"),
    ("[[xid]]\ncode = 'x'\n", "integer code"),
    ("[what]\n", "unknown sections"),
])
def test_bad_catalogs_are_rejected_clearly(doc, message):
    with pytest.raises(catalog.CatalogError) as info:
        catalog.parse(doc, "mine.toml")
    assert message in str(info.value) and "mine.toml" in str(info.value)


# -- the collector, end to end -------------------------------------------------------------------

def _debugger(tmp_path: Path) -> str:
    """cuda-gdb's stand-in for CI (see tests/helpers/fake_cuda_gdb.py); the GPU suite runs the real one."""
    exe = tmp_path / "cuda-gdb"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).parent / 'helpers' / 'fake_cuda_gdb.py'} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def _write_core(base: str, pid: int, fixture_name: str | None, size: int = 4096, t: int = 0) -> str:
    cores = os.path.join(base, "cores")
    os.makedirs(cores, exist_ok=True)
    path = os.path.join(cores, f"core_{socket.gethostname()}_{pid}_{t or int(time.time())}.nvcudmp")
    body = f"TRANSCRIPT cuda-gdb-{fixture_name}.txt\n".encode() if fixture_name else b"\x7fELF garbage"
    with open(path, "wb") as f:
        f.write(body + b"\0" * max(0, size - len(body)))
    return path


def _poll(d: Daemon, pred, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.poll_once()
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


FAULTING = r"""
import os, sys, torch, sentinel_hooks as sh
table = torch.randint(0, 100, (8, 4), dtype=torch.int32)
for _ in range(5):
    sh.step()
    sh.check_paged_kv(table, 100, name="attn")
table[3, 1] = 100   # the off-by-one the probe sees
sh.check_paged_kv(table, 100, name="attn")
print(os.getpid(), flush=True)
sys.stdin.readline()          # the test writes the "coredump" now, as the driver would
raise RuntimeError("CUDA error: an illegal memory access was encountered")
"""


def test_coredump_becomes_a_matched_fault_record(h, tmp_path):
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, cuda_gdb=_debugger(tmp_path),
                            nvml=False))
    try:
        proc = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", FAULTING], env=h.env(),
                       stdin=__import__("subprocess").PIPE, text=True)
        pid = int(proc.stdout.readline())
        _poll(d, lambda: any(s.violations.get("page_table_oob") for s in d.states.values()))
        core = _write_core(h.dir, pid, "illegal-address", size=200_000)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 1
        rows = _poll(d, lambda: [r for r in d.journal.faults() if r["source"] == "coredump"])
        rec = rows[0]
        assert rec["exception"] == "Warp Illegal Address" and rec["exception_class"] == "illegal_address"
        assert rec["kernel"] == "paged_gather" and rec["kernel_family"] == "paged_gather"
        assert rec["known_issue"]["id"] == "paged-kv-page-index-off-by-one"
        assert "page_table_oob" in rec["evidence"]
        assert rec["cuda_error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
        assert rec["top_frame"].startswith("<string>:") and rec["identity"]["pid"] == pid
        assert rec["core_path"] == core and rec["core_bytes"] == 200_000
        assert any(r.get("check") == "page_table_oob" for r in rec["last_records"])
        assert rec["gdb"]["sm"] == 131
        # One record for the death, not two: the coredump's record stands for the crash. Once the
        # daemon has seen the process die, nothing is left pending that could add another.
        (state,) = [s for s in d.states.values() if s.identity.get("pid") == pid]
        _poll(d, lambda: not state.alive)
        assert state.ring not in d.ctx.pending_crashes  # (it exited through the interpreter: a clean exit)
        d.poll_once()
        assert [r["source"] for r in d.journal.faults()] == ["coredump"]
        # Exported, and shown by `sentinel triage --fault`.
        d._publish()
        from prometheus_client import generate_latest

        from sentinel.exporter.collectors import build_registry

        text = generate_latest(build_registry(lambda: d.snapshot)).decode()
        assert (f'sentinel_faults_total{{exception="illegal_address",kernel_family="paged_gather",'
                f'kind="cuda",known_issue="paged-kv-page-index-off-by-one",signature="{rec["signature"]}"}} 1.0') in text
        # What the alert fires from: the process, with the fault's kind and signature.
        assert (f'sentinel_fault_info{{exception="illegal_address",fault_id="{rec["id"]}",host="{socket.gethostname()}",'
                f'job_id="",kernel_family="paged_gather",kind="cuda",known_issue="paged-kv-page-index-off-by-one",'
                f'local_rank="",namespace="",pid="{pid}",pod="",rank="",signature="{rec["signature"]}"}} 1.0') in text
        assert "sentinel_triage_duration_seconds_count 1.0" in text
        d.persist()
    finally:
        d.close()
    res = h.run([h.sentinel, "triage", "--dir", h.dir, "--fault", str(rec["id"]), "--json"], env=h.env())
    out = json.loads(res.stdout)
    assert {"exception", "kernel", "signature", "known_issue"} <= set(out)
    assert out["known_issue"]["id"] == "paged-kv-page-index-off-by-one"
    human = h.run([h.sentinel, "triage", "--dir", h.dir, "--fault", str(rec["id"])], env=h.env()).stdout
    assert "Warp Illegal Address" in human and "known issue paged-kv-page-index-off-by-one" in human


def test_storm_of_50_dumps_stays_under_the_cap_and_journals_every_fault(h, tmp_path):
    cap = 1_000_000
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, cuda_gdb=_debugger(tmp_path),
                            cores_max_bytes=cap, cores_per_signature=3, nvml=False))
    try:
        names = ["illegal-address", "misaligned-address"]
        for i in range(50):
            _write_core(h.dir, 900000 + i, names[i % 2], size=120_000, t=1_000_000 + i)
        peak = 0

        def all_in() -> bool:
            nonlocal peak
            peak = max(peak, d.faults.collector.total_bytes())
            return len(d.journal.faults(limit=100)) == 50
        _poll(d, all_in, timeout=120)
        left = sorted(os.listdir(os.path.join(h.dir, "cores")))
        used = sum(os.path.getsize(os.path.join(h.dir, "cores", n)) for n in left)
        assert used <= cap, (used, left)
        assert len(left) <= 6  # at most 3 per signature
        counts = d.journal.fault_counts()
        assert sorted(counts.values()) == [25, 25] and len(counts) == 2
        # The first and the latest of each signature are kept.
        for sig in {k[0] for k in counts}:
            rows = [r for r in d.journal.faults(limit=100) if r["signature"] == sig]
            first, latest = min(rows, key=lambda r: r["id"]), max(rows, key=lambda r: r["id"])
            assert os.path.basename(first["core_path"]) in left and os.path.basename(latest["core_path"]) in left
        print(f"storm: peak {peak} bytes, cap {cap}")
    finally:
        d.close()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty-then-written"])
def test_bad_dumps_are_recorded_not_fatal(h, tmp_path, kind):
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, cuda_gdb=_debugger(tmp_path),
                            nvml=False))
    try:
        if kind == "garbage":
            _write_core(h.dir, 999999, None)
        elif kind == "truncated":
            path = _write_core(h.dir, 999998, None)
            with open(path, "r+b") as f:
                f.truncate(7)
        else:
            path = _write_core(h.dir, 999997, None, size=0)
        rows = _poll(d, lambda: d.journal.faults())
        rec = rows[0]
        assert rec["exception"] == "unreadable coredump"
        assert any("could not read the dump" in n for n in rec["notes"])
        assert d.faults.collector.errors >= 1
    finally:
        d.close()


def test_missing_cuda_gdb_still_records_the_fault(h):
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, cuda_gdb="/nonexistent/cuda-gdb",
                            nvml=False))
    try:
        _write_core(h.dir, 999996, "illegal-address")
        rec = _poll(d, lambda: d.journal.faults())[0]
        assert any("cuda-gdb not found" in n for n in rec["notes"])
    finally:
        d.close()


SEGFAULT = r"""
import ctypes, sentinel_hooks as sh
def serve_one_step():
    sh.step()
    ctypes.string_at(0)   # a native crash: SIGSEGV
for _ in range(3):
    serve_one_step()
"""


def test_native_crash_is_recorded_with_faulthandler_evidence(h):
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, crash_grace_s=0.2, nvml=False))
    try:
        res = h.run([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", SEGFAULT], env=h.env())
        assert res.returncode == -11
        rec = _poll(d, lambda: d.journal.faults())[0]
        assert rec["source"] == "process_crash" and rec["exception_class"] == "sigsegv"
        assert "Segmentation fault" in rec["exception"] and "serve_one_step" in rec["top_frame"]
        assert "Fatal Python error: Segmentation fault" in rec["faulthandler"]
        assert [r["kind"] for r in rec["last_records"]][-1] == "step"
    finally:
        d.close()


def test_uncaught_exception_text_lands_in_the_record(h):
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, crash_grace_s=0.2, nvml=False))
    try:
        code = "import sentinel_hooks as sh\nsh.step()\nraise RuntimeError('CUDA error: an illegal memory access')\n"
        res = h.run([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", code], env=h.env())
        assert res.returncode == 1 and "Traceback" in res.stderr  # the host's own hook still ran
        # A clean interpreter exit after an exception: the process "exited", no crash record.
        _poll(d, lambda: d.states and not next(iter(d.states.values())).alive)
        assert next(iter(d.states.values())).exit == "exited"
    finally:
        d.close()


def test_triage_cli_on_a_saved_transcript(h):
    res = h.run([h.sentinel, "triage", "--cuda-gdb-output", str(FIXTURES / "cuda-gdb-misaligned-address.txt"),
                 "--json"], env=h.env())
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["exception"] == "Warp Misaligned Address" and out["kernel"] == "misaligned_load"
    assert len(out["signature"]) == 12 and "known_issue" in out
    bad = h.run([h.sentinel, "triage", "--cuda-gdb-output", str(h.scratch / "nope.txt")], env=h.env())
    assert bad.returncode == 2 and "No such file" in bad.stderr


def test_doctor_reports_missing_cuda_gdb_with_a_fix(h):
    res = h.run([h.sentinel, "doctor", "--dir", h.dir, "--json"], env=h.env())
    rows = {r["check"]: r for r in json.loads(res.stdout)}
    assert rows["cuda-gdb"]["status"] == "fail" and "--cuda-gdb" in rows["cuda-gdb"]["fix"]
    assert rows["NVML"]["status"] in ("warn", "ok") and rows["python"]["status"] == "ok"
    assert res.returncode == 1


def test_doctor_says_whether_the_gpu_can_write_the_rings(h, tmp_path):
    """Device words: the driver pins a ring's page only on a memory filesystem (tests/gpu/test_device_words.py).
    The doctor reads the rings' filesystem from the mount table."""
    from sentinel.cli.doctor import filesystem_type

    if os.path.isdir("/dev/shm") and filesystem_type("/dev/shm") == "tmpfs":
        res = h.run([h.sentinel, "doctor", "--dir", "/dev/shm/sentinel-doctor-test", "--json"], env=h.env())
        rows = {r["check"]: r for r in json.loads(res.stdout)}
        assert rows["device words"]["status"] == "ok" and "rings on tmpfs" in rows["device words"]["detail"]
    # A mount point with a space (escaped \040 in the table), on a disk filesystem: a warning with the fix.
    (tmp_path / "data dir" / "x").mkdir(parents=True)
    mounts = tmp_path / "mounts"
    mounts.write_text(f"overlay / overlay rw 0 0\n/dev/vda {tmp_path}/data\\040dir ext4 rw 0 0\n")
    assert filesystem_type(str(tmp_path / "data dir" / "x" / "rings"), str(mounts)) == "ext4"
    assert filesystem_type(str(tmp_path), str(mounts)) == "overlay"
    assert filesystem_type(str(tmp_path), str(tmp_path / "missing")) == ""


# -- the frame a fault is blamed on ----------------------------------------------------------------

FAULTHANDLER_FIXTURES = Path(__file__).parent / "fixtures" / "faulthandler"


def test_a_real_vllm_worker_segfault_is_blamed_on_the_op_not_on_sentinel():
    """vLLM's worker died in its CPU attention op, under Sentinel's execute_model wrapper: the record
    names vLLM's op (below torch/_ops.py), never Sentinel's frame (which the old rule, innermost
    frame outside site-packages, picked)."""
    text = (FAULTHANDLER_FIXTURES / "vllm-0.32-worker-sigsegv-cpu-attention.log").read_text()
    assert "sentinel_hooks/adapters/vllm.py" in text.split("Current thread", 1)[1]
    fatal, frame = faults.faulthandler_summary(text)
    assert fatal == "Segmentation fault"
    assert frame == "/opt/vllm/lib/python3.11/site-packages/vllm/_custom_ops.py:3927 in cpu_attention_with_kv_cache"


def test_a_crash_in_a_native_worker_thread_is_blamed_on_the_python_thread_inside_the_op():
    """No "Current thread": the op's OpenMP worker crashed. The main thread, waiting inside the op,
    is blamed, not the idle thread listed first."""
    text = (FAULTHANDLER_FIXTURES / "torch-sigsegv-in-openmp-worker.log").read_text()
    assert "Current thread" not in text
    assert faults.faulthandler_summary(text) == ("Segmentation fault", "/srv/serve.py:5 in attention_op")


def test_a_dump_cut_short_says_so_and_names_what_it_has(tmp_path):
    """Two threads crashed at once: the dump ends after one frame. The record keeps that frame (the op
    call, the only one left) and says the rest is missing."""
    from sentinel.daemon.state import ProcessState

    text = (FAULTHANDLER_FIXTURES / "torch-sigsegv-two-threads-cut-short.log").read_text()
    assert faults.faulthandler_summary(text) == (
        "Segmentation fault", "/opt/venv/lib/python3.11/site-packages/torch/_ops.py:875 in __call__")
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "faulthandler_n1_42.log").write_text(text)
    state = ProcessState(ring="n1.42.1.ring", identity={"host": "n1", "pid": 42})
    rec = faults.from_crash(state, lambda tag: "", str(tmp_path), catalog.load([]))
    assert rec.exception_class == "sigsegv" and any("cut short" in n for n in rec.notes), rec.notes


@pytest.mark.parametrize("chain, expected", [
    # innermost first: (file, line, function)
    ([("/v/site-packages/torch/_ops.py", 1279, "__call__"), ("/app/model.py", 10, "attend"),
      ("/run/sentinel_hooks/adapters/vllm.py", 249, "execute_model")], "/app/model.py:10 in attend"),
    ([("/v/site-packages/torch/nn/modules/module.py", 1789, "_call_impl"),
      ("/v/site-packages/torch/utils/_contextlib.py", 124, "decorate_context"),
      ("/v/site-packages/sglang/srt/layers/radix_attention.py", 99, "forward")],
     "/v/site-packages/sglang/srt/layers/radix_attention.py:99 in forward"),
    # the standard library is skipped, but taken over Sentinel's frames when nothing else is left
    ([("/usr/lib/python3.12/threading.py", 331, "wait"), ("/h/sentinel_hooks/device.py", 80, "_drain")],
     "/usr/lib/python3.12/threading.py:331 in wait"),
    ([("/h/sentinel_hooks/probes.py", 80, "check_paged_kv")], ""),
    ([("<frozen importlib._bootstrap>", 241, "_call_with_frames_removed"), ("<string>", 3, "<module>")],
     "<string>:3 in <module>"),
    ([], ""),
])
def test_blame_rules(chain, expected):
    assert frames.blame(chain) == expected


def test_an_exception_raised_inside_sentinel_is_blamed_on_its_caller():
    """A trap raised in Sentinel's probe: the exception record names the serving code that called it."""
    import torch

    import sentinel_hooks as sh
    from sentinel_hooks import crash

    def decode_step(table: torch.Tensor) -> None:
        sh.check_paged_kv(table, 4, name="attn")

    sh.configure(mode="trap")
    try:
        with pytest.raises(sh.SentinelViolation) as info:
            decode_step(torch.tensor([[0, 4]], dtype=torch.int32))
    finally:
        sh.configure(mode="observe")
    frame = crash._top_frame(info.value.__traceback__)
    assert frame.endswith(f"{Path(__file__).name}:{decode_step.__code__.co_firstlineno + 1} in decode_step"), frame


NATIVE_OP_CRASH = r"""
import ctypes, sys, numpy as np, torch, sentinel_hooks as sh
torch.set_num_threads(1)  # the crash in this thread: several OpenMP threads crashing at once cut the dump short
bad = torch.from_numpy(np.ctypeslib.as_array(ctypes.cast(16, ctypes.POINTER(ctypes.c_float)), shape=(1 << 20,)))
def attention_op(x):
    return torch.ops.aten.sum.default(x)   # the native op reads unmapped memory: SIGSEGV
def mlp_op(x):
    return torch.ops.aten.sum.default(x)
sh.step()
{"attention": attention_op, "mlp": mlp_op}[sys.argv[1]](bad)
"""


def test_native_crashes_in_two_ops_are_blamed_on_each_op_with_their_own_signature(h):
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, crash_grace_s=0.2, nvml=False))
    try:
        for op in ("attention", "mlp"):
            res = h.run([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", NATIVE_OP_CRASH, op], env=h.env())
            assert res.returncode == -11, res.stderr
        recs = _poll(d, lambda: len(d.journal.faults()) == 2 and d.journal.faults())
        frames_ = sorted(r["top_frame"] for r in recs)
        assert frames_ == ["<string>:6 in attention_op", "<string>:8 in mlp_op"], frames_
        assert all("torch/_ops.py" in r["faulthandler"] for r in recs)  # what the blame skipped
        assert len({r["signature"] for r in recs}) == 2
    finally:
        d.close()


# -- deaths that follow another process's fault ------------------------------------------------------

CHILD_SEGFAULTS = r"""
import ctypes, sentinel_hooks as sh
def serve_one_step():
    sh.step()
    ctypes.string_at(0)
serve_one_step()
"""

PARENT_KILLED_AFTER_CHILD = r"""
import os, signal, subprocess, sys, sentinel_hooks as sh
sh.step()
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
child.wait()                       # the child crashed: tear down, as an engine's process manager does
os.kill(os.getpid(), signal.SIGKILL)
"""

PARENT_SEGFAULTS = r"""
import ctypes, subprocess, sys, sentinel_hooks as sh
def pdeathsig():                   # the child dies with its parent, as vLLM's and SGLang's workers do
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE, preexec_fn=pdeathsig)
child.stdout.readline()            # it has stepped
def serve_one_step():
    sh.step()
    ctypes.string_at(0)
serve_one_step()
"""

CHILD_STEPS_AND_WAITS = r"""
import time, sentinel_hooks as sh
sh.step()
print("stepped", flush=True)
time.sleep(120)
"""


def _crash_pair(h, parent: str, child: str, window: float = 30.0) -> tuple[Daemon, dict, dict]:
    """Run ``parent`` (which starts ``child``) under `sentinel run`; the two fault records, by role."""
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, crash_grace_s=0.2, nvml=False,
                            consequence_window_s=window))
    proc = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", parent, child], env=h.env())
    assert proc.wait(timeout=60) in (-9, -11), proc.stderr.read()
    recs = _poll(d, lambda: len(d.journal.faults()) == 2 and d.journal.faults())
    (parent_rec,) = [r for r in recs if r["identity"]["pid"] == proc.pid]
    (child_rec,) = [r for r in recs if r["identity"]["pid"] != proc.pid]
    assert child_rec["identity"]["ppid"] == proc.pid
    return d, parent_rec, child_rec


def test_a_parent_killed_right_after_its_child_faulted_is_a_consequence(h):
    d, parent, child = _crash_pair(h, PARENT_KILLED_AFTER_CHILD, CHILD_SEGFAULTS)
    try:
        assert child["exception_class"] == "sigsegv" and child["consequence_of"] is None
        assert parent["exception_class"] == "killed" and parent["consequence_of"] == child["id"]
        assert any(f"a consequence of fault {child['id']}" in n for n in parent["notes"])
        # Paged once, for the child's signature; the parent is counted apart.
        assert list(d.faults.fault_counts) == [(child["signature"], "sigsegv", "", "", "crash")]
        assert d.faults.consequence_counts == {(child["signature"], "killed"): 1}
        assert report.render_report(faults.FaultRecord.from_dict(parent)).splitlines()[1] == (
            f"  consequence of fault {child['id']}: see `sentinel triage --fault {child['id']}`")
    finally:
        d.close()
    # A restarted daemon counts them the same from the journal.
    again = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, rescan_interval=0, nvml=False))
    try:
        assert again.faults.consequence_counts == {(child["signature"], "killed"): 1}
        assert list(again.faults.fault_counts) == [(child["signature"], "sigsegv", "", "", "crash")]
    finally:
        again.close()
    listing = h.run([h.sentinel, "triage", "--dir", h.dir, "--list"], env=h.env())
    assert f"consequence of {child['id']}" in listing.stdout


def test_children_killed_with_their_crashed_parent_are_consequences(h):
    d, parent, child = _crash_pair(h, PARENT_SEGFAULTS, CHILD_STEPS_AND_WAITS)
    try:
        assert parent["exception_class"] == "sigsegv" and parent["consequence_of"] is None
        assert "serve_one_step" in parent["top_frame"]
        assert child["exception_class"] == "killed" and child["consequence_of"] == parent["id"]
    finally:
        d.close()


def test_with_the_window_off_every_death_is_its_own_fault(h):
    d, parent, child = _crash_pair(h, PARENT_KILLED_AFTER_CHILD, CHILD_SEGFAULTS, window=0)
    try:
        assert parent["consequence_of"] is None and child["consequence_of"] is None
        assert d.faults.consequence_counts == {} and len(d.faults.fault_counts) == 2
    finally:
        d.close()


@pytest.mark.parametrize("a, b, expected", [
    ({"host": "n1", "pid": 10, "ppid": 5}, {"host": "n1", "pid": 11, "ppid": 10}, True),  # parent, child
    ({"host": "n1", "pid": 11, "ppid": 10}, {"host": "n1", "pid": 12, "ppid": 10}, True),  # siblings
    ({"host": "n1", "pid": 11, "ppid": 1}, {"host": "n1", "pid": 12, "ppid": 1}, False),  # both orphans of init
    ({"host": "n1", "pid": 11, "ppid": 10}, {"host": "n2", "pid": 10, "ppid": 3}, False),  # pids of two hosts
    ({"host": "n1", "pid": 11, "ppid": 0}, {"host": "n1", "pid": 12, "ppid": 0}, False),  # rings without ppid
    ({"host": "n1", "pid": 11, "job": "j"}, {"host": "n2", "pid": 11, "job": "j"}, True),  # one job
    ({"host": "n1", "pid": 11, "job": "j"}, {"host": "n2", "pid": 12, "job": "k"}, False),
    # two pods are two serving jobs, whatever their job ids or pids say
    ({"host": "n1", "pid": 11, "ppid": 10, "pod": "a"}, {"host": "n1", "pid": 10, "ppid": 1, "pod": "b"}, False),
    ({"host": "n1", "pid": 11, "job": "localhost:29500", "pod": "a"},
     {"host": "n2", "pid": 12, "job": "localhost:29500", "pod": "b"}, False),
])
def test_related_processes(a, b, expected):
    assert consequences.related(a, b) is expected and consequences.related(b, a) is expected


def test_siblings_only_under_a_hooked_parent():
    """Two children of one shell or supervisor are not one job; two workers of one engine are."""
    a, b = {"host": "n1", "pid": 11, "ppid": 10}, {"host": "n1", "pid": 12, "ppid": 10}
    assert consequences.related(a, b, siblings=True) and not consequences.related(a, b, siblings=False)


def test_a_loopback_rendezvous_is_no_job_and_a_pod_is_one():
    from sentinel_hooks.writer import identity_from_env

    local = identity_from_env({"MASTER_ADDR": "localhost", "MASTER_PORT": "29500", "SENTINEL_HOST": "n7"})
    assert local["job"] == "n7:29500"
    pod = identity_from_env({"POD_NAME": "vllm-0", "POD_NAMESPACE": "serving"})
    assert pod["job"] == "serving/vllm-0" and pod["pod"] == "vllm-0"
    assert identity_from_env({"POD_NAME": "vllm-0", "SENTINEL_JOB": "tp8"})["job"] == "tp8"


# -- faulthandler in front of other libraries' crash handlers, and in forked children ---------------

OWN_HANDLER = r"""
import ctypes, os, signal, sentinel_hooks as sh
from sentinel_hooks import crash
# A library that handles its own SIGSEGVs (as JITs and wasm runtimes do): not one faulthandler may
# go in front of.
HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int)
handler = HANDLER(lambda sig: (os.write(2, b"own handler ran\n"), os._exit(42)))
action = ctypes.create_string_buffer(256)
ctypes.memmove(action, ctypes.byref(ctypes.c_void_p(ctypes.cast(handler, ctypes.c_void_p).value)), 8)
assert ctypes.CDLL(None).sigaction(signal.SIGSEGV, action, None) == 0
sh.step()  # step 1: the hooks check the handlers
print(crash.rearm_faulthandler(), flush=True)
ctypes.string_at(0)
"""


def test_faulthandler_never_goes_in_front_of_a_handler_it_does_not_know(h):
    res = h.run([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", OWN_HANDLER], env=h.env())
    assert res.returncode == 42 and res.stdout.strip() == "[]", (res.returncode, res.stdout, res.stderr)
    assert "own handler ran" in res.stderr and "Fatal Python error" not in res.stderr
    assert "runs instead of faulthandler" in res.stderr  # said once, in the host's log


FORKED = r"""
import ctypes, os, sentinel_hooks as sh
sh.step()
pid = os.fork()
if pid == 0:
    def crash_in_child():
        ctypes.string_at(0)
    crash_in_child()
_, status = os.waitpid(pid, 0)
print(pid, status, flush=True)
"""


def test_a_forked_child_writes_its_own_dump(h):
    """A forked child's crash goes to its own faulthandler file, not its parent's: otherwise the
    parent would carry the child's dump (and the blame) when it dies."""
    res = h.run([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", FORKED], env=h.env())
    assert res.returncode == 0, res.stderr
    child, status = (int(x) for x in res.stdout.split())
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 11
    dumps = {p.name: p.read_text() for p in (Path(h.dir) / "faults").iterdir()}
    mine = f"faulthandler_{socket.gethostname()}_{child}.log"
    assert "crash_in_child" in dumps[mine], dumps
    assert all(not text for name, text in dumps.items() if name != mine), dumps
