"""The device-word bump kernel (hooks/sentinel_hooks/kernels.py), run by Triton's own interpreter on
CPU (``TRITON_INTERPRET=1``, the Triton of the vLLM environment `make vllm-env` creates): by 1, by a
device scalar's value, atomically on the counter, the counter's new value stored to the word. On a
GPU, tests/gpu/test_device_words.py runs it compiled."""

from __future__ import annotations

import subprocess

import pytest
from test_vllm_engine import READY, VLLM_PY, VLLM_VENV

pytestmark = pytest.mark.skipif(not READY, reason=f"no vLLM environment (and its Triton) at {VLLM_VENV}")

PROGRAM = """
import torch
from sentinel_hooks import kernels
counters, words = torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
inc = torch.tensor([5], dtype=torch.int64)
kernels.launch_bump(counters[1:2], words[1:2])
assert (counters.tolist(), words.tolist()) == ([0, 1, 0, 0], [0, 1, 0, 0])
kernels.launch_bump(counters[1:2], words[1:2], inc)  # a graph's first mark: its collectives at once
kernels.launch_bump(counters[1:2], words[1:2])
assert (counters.tolist(), words.tolist()) == ([0, 7, 0, 0], [0, 7, 0, 0]), (counters, words)
print("OK")
"""


def test_bump_kernel_in_tritons_interpreter(h):
    env = h.env(TRITON_INTERPRET="1", PYTHONPATH=str(h.helpers.parent.parent / "hooks"))
    res = subprocess.run([str(VLLM_PY), "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
