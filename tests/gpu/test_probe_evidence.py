"""Probe evidence that survives the fault it predicts (the GPU side of tests/test_probe_words.py).

A paged gather runs 25 clean probed steps; at step 26 its page table holds 2**30, the probe sees it,
and the gather faults (an illegal address) before the drain thread could copy the probe's
accumulators. Before the probe words, the ring then held 0 probe reports for that step and the fault
record had no evidence (H200, 2026-11-29). Now the probe kernel's last program has already
written the site's summary into the ring file's device words, so the coredump's fault record lists
`page_table_oob` and the catalog names the page-index issue: eager, and replayed from a CUDA graph.
And a process SIGKILLed right after a probed step with a violation leaves it in the ring. Skipped
without CUDA, or without cuda-gdb for the coredump cases.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from journal_wait import first_fault  # noqa: E402

from sentinel.daemon.loop import Daemon, DaemonConfig  # noqa: E402
from sentinel.triage.readers import cudagdb  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# 25 clean probed steps, then the step whose page table holds 2**30: probed (observe mode, no flush,
# no sync), then the gather that faults. "graph": probe and gather captured in one CUDA graph,
# replayed with the same static table.
PROGRAM = textwrap.dedent(r"""
    import os, signal, sys, time, torch
    import paged_attention as pa
    import sentinel_hooks as sh
    from cuda_timing import capture_graph
    mode = sys.argv[1]
    num_pages, page = 8657, 64
    cache = torch.randn(num_pages * page, device="cuda", dtype=torch.bfloat16)
    table = torch.randint(0, num_pages, (512,), device="cuda", dtype=torch.int32)
    out = torch.empty(512 * page, device="cuda", dtype=torch.bfloat16)

    def step():
        sh.check_paged_kv(table.view(-1, 1), num_pages, name="attn")
        pa.paged_gather[(512,)](table, cache, out, PAGE=page)

    step()  # eager first: the accumulators, the device words and the kernels are set up outside a capture
    torch.cuda.synchronize()
    run = capture_graph(step).replay if mode == "graph" else step  # capture's warm-up: one more probe call
    for _ in range(25):
        sh.step()
        run()
    torch.cuda.synchronize()
    if mode == "kill":
        table[7] = num_pages  # one past the cache: probed, never read by a faulting kernel here
        sh.check_paged_kv(table.view(-1, 1), num_pages, name="attn")
        torch.cuda.synchronize()  # the probe and its publish ran; the drain has not copied them
        os.kill(os.getpid(), signal.SIGKILL)
    table[9] = 2**30
    print("FAULT_AT", time.time(), flush=True)
    sh.step()
    run()
    torch.cuda.synchronize()
""")


@pytest.fixture
def shm_dir():
    """A SENTINEL_DIR on tmpfs, where the ring page itself is registered (device words survive a SIGKILL)."""
    path = tempfile.mkdtemp(prefix="sentinel-evidence-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(base: str, script, mode: str) -> subprocess.Popen:
    # The drain every 10 minutes: it never gets to copy the probes here, so what the daemon learns of
    # the last steps comes through the device words alone.
    env = dict(os.environ, PYTHONUNBUFFERED="1", SENTINEL_DRAIN_MS="600000",
               PYTHONPATH=os.pathsep.join([os.path.join(REPO, "bench"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "sentinel", "run", "--dir", base, "--", sys.executable, str(script),
                             mode], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(cudagdb.find_cuda_gdb() is None, reason="needs cuda-gdb")
@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_far_index_that_faults_leaves_its_evidence(tmp_path, shm_dir, mode):
    script = tmp_path / "faulty.py"  # Triton wants its kernels in a file
    script.write_text(PROGRAM)
    d = Daemon(DaemonConfig(base_dir=shm_dir, use_events=False, rescan_interval=0.2, crash_grace_s=30))
    proc = start(shm_dir, script, mode)
    try:
        rec = first_fault(d)
        out, err = proc.communicate(timeout=60)
        assert rec is not None, f"no coredump fault journaled; child stderr: {err[-2000:]}"
        assert rec["exception_class"] == "illegal_address", rec["exception"]
        assert rec["kernel_family"] == "paged_gather"
        assert "page_table_oob" in rec["evidence"], rec["evidence"]
        assert rec["known_issue"] and rec["known_issue"]["id"] == "paged-kv-page-index-off-by-one", rec["known_issue"]
        (state,) = d.states.values()
        # The last step's probe, read from the device words: the clean calls (the eager first one,
        # the side-stream warm-up before a capture, 25 steps or replays), then the bad one.
        (words,) = state.gpu_probes["attn"].values()
        assert words[1] == 1 and words[2] == 2**30 and words[3] == 8657, words
        assert words[0] == (28 if mode == "graph" else 27), words
        deadline = time.monotonic() + 30
        while state.alive and time.monotonic() < deadline:
            d.poll_once()
            time.sleep(0.2)
        assert state.violations.get("page_table_oob") == 1, state.violations
        assert not any(c[1] for c in state.reported.values()), state.reported  # none of it drained
        print(f"[{mode}] evidence {rec['evidence']}, known issue {rec['known_issue']['id']}, words {words}")
    finally:
        if proc.poll() is None:
            proc.kill()
        d.close()


def test_a_sigkill_right_after_a_violation_leaves_it_in_the_ring(tmp_path, shm_dir):
    script = tmp_path / "faulty.py"
    script.write_text(PROGRAM)
    proc = start(shm_dir, script, "kill")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    d = Daemon(DaemonConfig(base_dir=shm_dir, use_events=False, crash_grace_s=0.0))
    try:
        d.poll_once()
        (state,) = d.states.values()
        assert state.exit == "died"
        assert state.probe_execs == 27 and state.reported == {}, state.reported  # nothing drained
        assert state.violations.get("page_table_oob") == 1, (state.violations, state.gpu_probes)
        (words,) = state.gpu_probes["attn"].values()
        assert words[:4] == [27, 1, 8657, 8657], words
    finally:
        d.close()
