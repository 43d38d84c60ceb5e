"""Device words on a real GPU (hooks/sentinel_hooks/mapped.py): the GPU writes counters into the ring
file's own page, eager and on every CUDA-graph replay; they are readable from the file while the GPU
is busy, after a device-side fault and after a SIGKILL, with no CUDA call on the reading side; and the
collective marks never sync the serving thread. Skipped without CUDA; run by tests/gpu/run.sh.

Each case runs in a fresh process (one ring per process), and reads the ring file from this one. The
ring page is registered with CUDA where SENTINEL_DIR is on tmpfs (here /dev/shm); elsewhere the driver
refuses to pin page-cache pages and the words go through pinned memory, copied by a thread.
"""

from __future__ import annotations

import glob
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

from sentinel_hooks import ringformat as rf  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRELUDE = """
import os, sys, time, torch
import sentinel_hooks as sh
from sentinel_hooks import mapped
mapped.BUMP = os.environ.get("BUMP", "store")
sh.event(0)  # the ring
torch.cuda.init()
torch.zeros(1, device="cuda")
words = mapped.words(torch)
print("MODE", mapped.mode(), flush=True)
word = words.assign(1, "pg:test")
bump = words.bumper(word, torch.device("cuda", 0))
"""


@pytest.fixture
def shm_dir():
    """A SENTINEL_DIR on tmpfs, where the ring page can be registered."""
    path = tempfile.mkdtemp(prefix="sentinel-words-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def spawn(body: str, tmp_path, bump: str = "store") -> subprocess.Popen:
    env = dict(os.environ, SENTINEL_DIR=str(tmp_path), BUMP=bump, SENTINEL_COREDUMP="0",
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "hooks"), os.path.join(REPO, "bench"),
                                           os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def word_in_file(tmp_path, index: int = 0) -> tuple[int, int]:
    """(counter, info) of device word ``index``, read from the ring file with pread: no CUDA."""
    (path,) = glob.glob(os.path.join(str(tmp_path), "rings", "*.ring"))
    with open(path, "rb") as f:
        head = os.pread(f.fileno(), rf.HEADER_SIZE, 0)
    value = int.from_bytes(head[rf.DEVICE_WORDS_OFFSET + 8 * index:][:8], "little")
    info = int.from_bytes(head[rf.DEVICE_WORDS_OFFSET + 8 * (rf.DEVICE_WORDS + index):][:8], "little")
    return value, info


@pytest.mark.parametrize("where", ["tmpfs", "disk"])
@pytest.mark.parametrize("bump", ["store", "rmw"])
def test_eager_and_graph_replays_land_in_the_ring_file(tmp_path, shm_dir, bump, where):
    folder = shm_dir if where == "tmpfs" else tmp_path
    p = spawn("""
        for _ in range(3):
            bump()
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            bump()
        for _ in range(10):
            g.replay()
        torch.cuda.synchronize()
        print("DONE", flush=True)
        time.sleep(30)
    """, folder, bump)
    try:
        lines = []
        for line in p.stdout:
            lines.append(line)
            if line.startswith("DONE"):
                break
        text = "".join(lines)
        if where == "tmpfs":
            assert "MODE ring" in text, text  # the ring file's page is registered, not the pinned fallback
        else:
            time.sleep(0.2)  # pinned: the copier's next pass (every 20 ms)
        value, info = word_in_file(folder)
        assert value == 13, text  # 3 eager + 10 replays; the capture itself runs nothing
        assert rf.unpack_device_word_info(info)[0] == 1
    finally:
        p.kill()


def test_readable_while_the_gpu_is_busy(shm_dir):
    tmp_path = shm_dir
    # A word bumped before a 5 s kernel is in the file while that kernel still runs.
    p = spawn("""
        bump()
        torch.cuda._sleep(int(5 * 1.98e9))
        bump()
        print("ENQUEUED", flush=True)
        torch.cuda.synchronize()
        print("DONE", flush=True)
    """, tmp_path)
    try:
        for line in p.stdout:
            if line.startswith("ENQUEUED"):
                break
        deadline = time.time() + 2.0
        while word_in_file(tmp_path)[0] != 1 and time.time() < deadline:
            time.sleep(0.01)
        assert word_in_file(tmp_path)[0] == 1  # the first bump, and not yet the second
        assert p.wait(timeout=60) == 0
        assert word_in_file(tmp_path)[0] == 2
    finally:
        p.kill()


def test_survives_a_device_fault_and_sigkill(shm_dir):
    # 7 bumps, then an illegal address kills the CUDA context, then the process is SIGKILLed: the 7
    # are in the ring file, written by the GPU, with nothing copied by the process.
    tmp_path = shm_dir
    p = spawn("""
        from paged_attention import paged_gather
        for _ in range(7):
            bump()
        table = torch.full((4,), 2**30, dtype=torch.int32, device="cuda")
        cache, out = torch.zeros(64 * 64, device="cuda"), torch.empty(4 * 64, device="cuda")
        try:
            paged_gather[(4,)](table, cache, out, PAGE=64)
            torch.cuda.synchronize()
        except Exception as exc:
            print("FAULT", type(exc).__name__, flush=True)
        os.kill(os.getpid(), 9)
    """, tmp_path)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, out
    assert "FAULT" in out, out
    assert word_in_file(tmp_path)[0] == 7, out


@pytest.mark.parametrize("marks", ["all", "first"])
def test_collective_marks_never_sync(tmp_path, marks):
    # all: a mark before each collective, the captured ones included; first: one mark per replay that
    # adds the graph's 2 (its kernel variant loaded before the capture). Both count 63. The graph's
    # own activations use its private memory pool: a count kept there would be overwritten by them.
    # Eager collectives (marked), a captured one and its replays, under sync debug mode "error":
    # no host sync anywhere in the hooks' path.
    env = dict(os.environ, SENTINEL_DIR=str(tmp_path), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29591 + (marks == "first")), SENTINEL_COLLECTIVE_MARKS=marks,
               PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "hooks"), os.environ.get("PYTHONPATH", "")]))
    prog = textwrap.dedent("""
        import torch, torch.distributed as dist
        import sentinel_hooks as sh
        from sentinel_hooks import collectives
        dist.init_process_group("nccl", rank=0, world_size=1)
        collectives.install()
        x = torch.ones(1024, device="cuda")
        dist.all_reduce(x)
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            dist.all_reduce(x)
            dist.all_reduce(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):  # activations made and freed around the collectives, as a model's
            for _ in range(2):
                y = torch.tanh(x * 0.5) + 1
                dist.all_reduce(y)
                x.copy_(y)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(20):
            dist.all_reduce(x)
            g.replay()
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        assert sh.stats()["errors"] == 0, sh.stats()  # a sync in a hook would be swallowed and counted
        dist.destroy_process_group()
    """)
    subprocess.run([sys.executable, "-m", "sentinel", "run", "--dir", str(tmp_path), "--", sys.executable, "-c", prog],
                   env=env, check=True, timeout=300)
    value, info = word_in_file(tmp_path)
    assert rf.unpack_device_word_info(info)[0] == rf.DeviceWord.COLLECTIVE_ENTERED
    assert value == 1 + 2 + 20 + 20 * 2  # eager, warm-up on the side stream, 20 eager, 20 replays of 2
