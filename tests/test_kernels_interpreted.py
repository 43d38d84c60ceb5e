"""The device-word kernels (hooks/sentinel_hooks/kernels.py), run by Triton's own interpreter on CPU
(``TRITON_INTERPRET=1``, the Triton of the vLLM environment `make vllm-env` creates):

- the bump: by 1, by the value of a one-element int64 tensor (on a GPU a slot of pinned host memory), atomically on the counter, the counter's new value
  stored to the word;
- the probe kernel's publish: its last program folds the site's accumulator slots into the four
  probe words (calls, violations, offending index, num_pages), as the drain folds them (slots.py);
- the probe kernel's counters equal the torch reference's (device.paged_kv_stats) over tables with
  and without seq_lens, a page size and cu_seqlens_q, more or fewer seq_lens rows than table rows,
  no columns, and a strided table.

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


def interpret(h, program: str) -> str:
    """``program``'s stdout, run by the vLLM environment's Python with Triton's interpreter; it must
    exit 0."""
    env = h.env(TRITON_INTERPRET="1", PYTHONPATH=str(h.helpers.parent.parent / "hooks"))
    res = subprocess.run([str(VLLM_PY), "-c", program], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_bump_kernel_in_tritons_interpreter(h):
    assert "OK" in interpret(h, PROGRAM)


PUBLISH = """
import torch
from sentinel_hooks import kernels, slots
row = torch.tensor([slots.INITIAL] * slots.NPROG, dtype=torch.int64)
words, ticket = torch.zeros(4, dtype=torch.int64), torch.zeros(1, dtype=torch.int64)
table = torch.arange(64, dtype=torch.int32).reshape(4, 16) % 50
seq_lens = torch.tensor([64, 64, 64, 16], dtype=torch.int32)  # page size 4: 16, 16, 16 and 4 pages read
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row, 0, False, words, ticket)
assert words.tolist() == [1, 0, -1, 100] and ticket.item() == 0, (words, ticket)  # clean: no sticky bit
table[0, 0] = 2 ** 30  # read: far past the cache
table[1, 3] = -7  # read: negative
table[3, 9] = 2 ** 20  # past row 3's 4 pages: trailing, never read
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row, 0, False, words, ticket)
folded = slots.reduce_slots(row.tolist())
assert words.tolist() == [2, 2, 2 ** 30, 100], words
assert words.tolist()[:2] == [folded[slots.Slot.CALLS], folded[slots.Slot.OOB]]
table[0, 0] = 0  # only the negative one now: the offending index stays the largest seen
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row, 0, False, words, ticket)
assert words.tolist() == [3, 3, 2 ** 30, 100], words
table[1, 3] = 0  # clean again: the calls move on, the violations and the offending index stay
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row, 0, False, words, ticket)
assert words.tolist() == [4, 3, 2 ** 30, 100], words
row2 = torch.tensor([slots.INITIAL] * slots.NPROG, dtype=torch.int64)
table[1, 3] = -7
ticket2 = torch.zeros(1, dtype=torch.int64)
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row2, 0, False, words, ticket2)
assert words.tolist() == [1, 1, -7, 100], words  # none past the end: the most negative
assert (ticket.item(), ticket2.item()) == (1 << 16, 1 << 16)  # a violation published (sticky); counts reset
kernels.launch_paged_kv(table, 100, seq_lens, 4, None, row2, 0, False)  # no words: not published
assert words.tolist() == [1, 1, -7, 100] and ticket2.item() == 1 << 16, (words, ticket2)
print("OK")
"""


def test_probe_publishes_in_tritons_interpreter(h):
    assert "OK" in interpret(h, PUBLISH)


REFERENCE = """
import torch
from sentinel_hooks import device, kernels, slots
S = slots.Slot
g = torch.Generator().manual_seed(7)
cases = 0
for rows, cols, n_seq, page_size, with_cu, strided in [
        (4, 16, 4, 4, False, False), (4, 16, 6, 4, True, False), (6, 16, 3, 4, False, True),
        (3, 0, 5, 4, False, False), (5, 7, 5, None, False, False), (5, 7, 0, 16, True, False),
        (40, 130, 40, 16, True, False), (2, 9, None, None, True, True), (1, 1, 1, 1, False, False)]:
    base = torch.randint(-3, 60, (rows, cols * (2 if strided else 1)), generator=g, dtype=torch.int32)
    table = base[:, ::2] if strided else base
    seq = None if n_seq is None else torch.randint(-2, cols * (page_size or 4) + 3, (n_seq,), generator=g,
                                                   dtype=torch.int32)
    cu = torch.tensor([0, 3, 2, 7, 9][:rows + 1], dtype=torch.int32) if with_cu else None
    row = torch.tensor([slots.INITIAL] * slots.NPROG, dtype=torch.int64)
    kernels.launch_paged_kv(table, 50, seq, page_size, cu, row, 0, False)
    got = slots.reduce_slots(row.tolist())
    ref = device.paged_kv_stats(torch, table, 50, seq, page_size, cu)
    want = {S.OOB: ref["oob"], S.TRAIL: ref["trail"], S.SEQBAD: ref["seqbad"], S.MAXIDX: ref["max"],
            S.BADMAX: ref["badmax"]}
    for field, value in want.items():
        assert got[field] == int(value), (rows, cols, n_seq, page_size, with_cu, field.name, got[field], int(value))
    assert got[S.CALLS] == 1
    cases += 1
print("OK", cases)
"""


def test_probe_kernel_matches_the_torch_reference_in_tritons_interpreter(h):
    assert "OK 9" in interpret(h, REFERENCE)
