"""The device-word kernels (hooks/sentinel_hooks/kernels.py), run by Triton's own interpreter on CPU
(``TRITON_INTERPRET=1``, the Triton of the vLLM environment `make vllm-env` creates):

- the bump: by 1, by a device scalar's value, atomically on the counter, the counter's new value
  stored to the word;
- the probe kernel then the publish kernel: the site's accumulator slots folded into its four probe
  words (calls, violations, offending index, num_pages), as the drain folds them (slots.py).

On a GPU, tests/gpu/test_device_words.py and tests/gpu/test_probe_evidence.py run them compiled."""

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


PUBLISH = """
import torch
from sentinel_hooks import kernels, slots
row = torch.tensor([slots.INITIAL] * slots.NPROG, dtype=torch.int64)
words = torch.zeros(4, dtype=torch.int64)
table = torch.arange(64, dtype=torch.int32).reshape(4, 16) % 50
seq_lens = torch.tensor([64, 64, 64, 16], dtype=torch.int32)  # page size 4: 16, 16, 16 and 4 pages read
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row, 0, False)
kernels.launch_publish(row, words, 100)
assert words.tolist() == [1, 0, -1, 100], words
table[0, 0] = 2 ** 30  # read: far past the cache
table[1, 3] = -7  # read: negative
table[3, 9] = 2 ** 20  # past row 3's 4 pages: trailing, never read
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row, 0, False)
kernels.launch_publish(row, words, 100)
folded = slots.reduce_slots(row.tolist())
assert words.tolist() == [2, 2, 2 ** 30, 100], words
assert words.tolist()[:2] == [folded[slots.Slot.CALLS], folded[slots.Slot.OOB]]
table[0, 0] = 0  # only the negative one now: the offending index stays the largest seen
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row, 0, False)
kernels.launch_publish(row, words, 100)
assert words.tolist() == [3, 3, 2 ** 30, 100], words
row2 = torch.tensor([slots.INITIAL] * slots.NPROG, dtype=torch.int64)
table[1, 3] = -7
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row2, 0, False)
kernels.launch_publish(row2, words, 100)
assert words.tolist() == [1, 1, -7, 100], words  # none past the end: the most negative
print("OK")
"""


def test_probe_then_publish_in_tritons_interpreter(h):
    env = h.env(TRITON_INTERPRET="1", PYTHONPATH=str(h.helpers.parent.parent / "hooks"))
    res = subprocess.run([str(VLLM_PY), "-c", PUBLISH], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr
