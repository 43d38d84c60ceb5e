"""The host process is never hurt by `sentinel run`: whatever its torch, its framework or its
SENTINEL_DIR, the program's own stdout and exit code are what they are without Sentinel, and all of
its own stderr lines are still there, in order. Sentinel adds at most one line, prefixed "sentinel:".

Each condition runs the same program three ways (exit 0, sys.exit(3), an uncaught exception), with
and without Sentinel, and compares:

- torch missing: an interpreter without torch (a fresh venv);
- torch too old: a stand-in `torch` 1.8 on PYTHONPATH (see OLD_TORCH);
- CPU-only torch: the real torch of this venv, with a real gloo all_reduce;
- a framework at a version the adapters do not know: stand-in `vllm` / `sglang` 0.0.1 whose hook
  points are missing;
- SENTINEL_DIR unwritable, as a non-root uid: a 0500 dir (empty, and with the hooks installed in it
  beforehand, as an init container would), and a read-only mount.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from security_support import IS_ROOT, PYTHON, SENTINEL, SERVING_GID, SERVING_UID, Users, world_dir

PROGRAM = r"""
import importlib, os, sys
mode, exercise = sys.argv[1], sys.argv[2]
print("host: starting", exercise, flush=True)
print("host: a line of its own on stderr", file=sys.stderr, flush=True)
if exercise == "torch":
    try:
        import torch
    except ImportError:
        print("host: no torch")
    else:
        import torch.distributed as dist
        print("host: torch", torch.__version__, "cuda", torch.cuda.is_available())
        dist.init_process_group("gloo", init_method="file://" + sys.argv[3], rank=0, world_size=1)
        t = torch.ones(3)
        dist.all_reduce(t)
        print("host: all_reduce", t.tolist())
        dist.destroy_process_group()
elif exercise in ("vllm", "sglang"):
    framework = importlib.import_module(exercise)
    print("host:", exercise, framework.__version__)
    for name in sys.argv[3].split(","):
        importlib.import_module(name)
        print("host: imported", name)
print("host: done", flush=True)
if mode == "exit":
    sys.exit(3)
if mode == "raise":
    raise RuntimeError("the host's own error")
"""
MODES = ("ok", "exit", "raise")

# A stand-in for an old torch: a torch 1.x release cannot be installed beside this Python, so this
# has only the names the program calls, with torch 1.x's surface: no
# torch.cuda.is_current_stream_capturing, no distributed_c10d._get_process_group_name, no
# all_gather_into_tensor.
OLD_TORCH = {
    "torch/__init__.py": (
        "__version__ = '1.8.1'\n"
        "from . import cuda, distributed\n"
        "class _Tensor(list):\n"
        "    def tolist(self):\n        return list(self)\n"
        "    def numel(self):\n        return len(self)\n"
        "def ones(n):\n    return _Tensor([1.0] * n)\n"),
    "torch/cuda/__init__.py": "def is_available():\n    return False\n",
    "torch/distributed/__init__.py": (
        "from . import distributed_c10d\n"
        "from .distributed_c10d import all_reduce, barrier, destroy_process_group, get_rank, get_world_size, "
        "init_process_group\n"
        "def is_available():\n    return True\n"),
    "torch/distributed/distributed_c10d.py": (
        "_default = None\n"
        "class ProcessGroup:\n    pass\n"
        "def init_process_group(backend, init_method=None, rank=0, world_size=1):\n"
        "    global _default\n    _default = ProcessGroup()\n"
        "def _get_default_group():\n    return _default\n"
        "def get_rank(group=None):\n    return 0\n"
        "def get_world_size(group=None):\n    return 1\n"
        "def all_reduce(tensor, op=None, group=None, async_op=False):\n    return None\n"
        "def barrier(group=None, async_op=False):\n    return None\n"
        "def destroy_process_group(group=None):\n"
        "    global _default\n    _default = None\n"),
}
# Frameworks at a version the adapters were not verified against, whose hook points are missing:
# the modules the adapters patch exist, the classes in them do not.
FRAMEWORKS = {
    "vllm": ({"vllm/__init__.py": "__version__ = '0.0.1'\n", "vllm/v1/__init__.py": "",
              "vllm/v1/worker/__init__.py": "", "vllm/v1/worker/worker_base.py": "# no WorkerWrapperBase\n",
              "vllm/v1/worker/utils.py": "# no AttentionGroup\n"},
             "vllm.v1.worker.worker_base,vllm.v1.worker.utils"),
    "sglang": ({"sglang/__init__.py": "__version__ = '0.0.1'\n", "sglang/srt/__init__.py": "",
                "sglang/srt/model_executor/__init__.py": "",
                "sglang/srt/model_executor/model_runner.py": "# no ModelRunner\n"},
               "sglang.srt.model_executor.model_runner"),
}


def _write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@dataclass
class Run:
    stdout: str
    stderr: list[str]
    code: int


def _run(argv: list[str], env: dict[str, str]) -> Run:
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    return Run(res.stdout, res.stderr.splitlines(), res.returncode)


def added_lines(own: list[str], hooked: list[str]) -> list[str]:
    """The lines ``hooked`` has beyond ``own``; fails unless every line of ``own`` is there, in order."""
    extra, i = [], 0
    for line in hooked:
        if i < len(own) and line == own[i]:
            i += 1
        else:
            extra.append(line)
    assert i == len(own), f"the program's own stderr lost {own[i:]!r}; with Sentinel it was {hooked!r}"
    return extra


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A torch-less interpreter (a fresh venv: no site-packages of this one), the program, the stand-ins."""
    root = world_dir("snthost")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    prog = root / "prog.py"
    prog.write_text(PROGRAM)
    out = {"root": root, "prog": prog, "bare_python": venv / "bin" / "python",
           "old_torch": _write_tree(root / "old_torch", OLD_TORCH)}
    for name, (files, _) in FRAMEWORKS.items():
        out[name] = _write_tree(root / name, files)
    for p in root.rglob("*"):  # readable by the non-root uid whatever this umask
        if not p.is_symlink():  # a chmod through the venv's python link would change the real interpreter
            p.chmod(0o755 if p.is_dir() else 0o644)
    yield out
    shutil.rmtree(root, ignore_errors=True)


def _compare(runs: list[tuple[Run, Run]], allowed: int, needs: str) -> list[str]:
    """Check each (without, with) pair; return Sentinel's added lines (all runs)."""
    added = []
    for own, hooked in runs:
        assert hooked.code == own.code and hooked.stdout == own.stdout, (own, hooked)
        assert needs in own.stdout, own  # the condition is what the test says it is
        extra = added_lines(own.stderr, hooked.stderr)
        assert len(extra) <= allowed and all(line.startswith("sentinel: ") for line in extra), extra
        added += extra
    assert [r.code for r, _ in runs] == [0, 3, 1]
    assert "RuntimeError: the host's own error" in runs[2][1].stderr[-1]
    return added


# -- torch and frameworks (this uid) ---------------------------------------------------------------

CONDITIONS = {
    # name: (interpreter, PYTHONPATH stand-in, exercise, what stdout must show, extra lines allowed)
    "torch_missing": ("bare_python", None, "torch", "host: no torch", 1),
    "torch_too_old": ("bare_python", "old_torch", "torch", "host: torch 1.8.1", 1),
    "torch_cpu_only": ("venv_python", None, "torch", "cuda False", 1),
    # The adapters' own design gives a few lines here, all prefixed (tests/test_adapters_failsoft.py):
    # the version note, one per check whose hook point is missing, and for vLLM, whose stand-in steps,
    # the start-up line naming the checks on and off.
    "vllm_unknown_version": ("bare_python", "vllm", "vllm", "host: vllm 0.0.1", 3),
    "sglang_unknown_version": ("bare_python", "sglang", "sglang", "host: sglang 0.0.1", 2),
}


@pytest.mark.parametrize("condition", sorted(CONDITIONS))
def test_host_output_and_exit_unchanged(h, places: dict[str, Path], tmp_path: Path, condition: str) -> None:
    interp, standin, exercise, needs, allowed = CONDITIONS[condition]
    python = PYTHON if interp == "venv_python" else str(places[interp])
    env = h.env(PYTHONPATH=str(places[standin])) if standin else h.env()
    extra_arg = FRAMEWORKS[exercise][1] if exercise in FRAMEWORKS else ""

    def argv(mode: str, hooked: bool) -> list[str]:
        store = str(tmp_path / f"store-{mode}-{hooked}")  # the gloo file store: fresh for each run
        prog = [python, str(places["prog"]), mode, exercise, store if exercise == "torch" else extra_arg]
        return [SENTINEL, "run", "--eager", "--dir", h.dir, "--", *prog] if hooked else prog

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [(pool.submit(_run, argv(m, False), env), pool.submit(_run, argv(m, True), env)) for m in MODES]
        runs = [(a.result(), b.result()) for a, b in futures]
    added = _compare(runs, allowed, needs)
    # Sentinel was there: the ring of each run (eager), and what it said, if anything, was about itself.
    assert len(h.rings()) == 3
    if exercise in FRAMEWORKS:
        assert len(added) == 3 * allowed and all(f"{exercise} adapter" in line for line in added), added
    else:
        assert added == [], added


# -- an unwritable SENTINEL_DIR (another uid) -------------------------------------------------------

@pytest.mark.skipif(not IS_ROOT, reason="runs the program as a non-root uid on a dir it cannot write: needs root")
@pytest.mark.parametrize("case", ["mode_0500_empty", "mode_0500_hooks_installed", "read_only_mount"])
def test_unwritable_sentinel_dir(h, users: Users, places: dict[str, Path], case: str) -> None:
    base = places["root"] / case
    binds: tuple[str, ...] = ()
    if case != "mode_0500_empty":
        # The hooks copied in beforehand (as an init container does), then the folder locked.
        res = subprocess.run([SENTINEL, "run", "--dir", str(base), "--", "true"], capture_output=True, text=True,
                             timeout=60, env=h.env())
        assert res.returncode == 0, res.stderr
    base.mkdir(exist_ok=True)
    os.chown(base, SERVING_UID, SERVING_GID)
    if case == "read_only_mount":
        base.chmod(0o700)
        binds = (f"{base}:{base}:ro",)
    else:
        base.chmod(0o500)

    def argv(mode: str, hooked: bool) -> list[str]:
        prog = [users.python, str(places["prog"]), mode, "none", ""]
        cmd = users.sentinel("run", "--eager", "--dir", str(base), "--", *prog) if hooked else prog
        return users.argv(cmd, SERVING_UID, SERVING_GID, binds=binds)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [(pool.submit(_run, argv(m, False), h.env()), pool.submit(_run, argv(m, True), h.env()))
                   for m in MODES]
        runs = [(a.result(), b.result()) for a, b in futures]
    added = _compare(runs, 1, "host: done")
    assert len(added) == 3, added  # one line each time, saying why Sentinel is not there
    if case == "mode_0500_empty":
        assert all("without hooks: cannot prepare" in line for line in added), added
    else:
        assert all(line.startswith(f"sentinel: hooks disabled, could not write in {base}") for line in added), added
    assert not (base / "rings").exists() and not (base / "faults").exists()
