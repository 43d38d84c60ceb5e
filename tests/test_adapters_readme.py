"""The README's Python examples for calling the probes from any engine run as written.

Every ```python block in README.md that uses ``sentinel_hooks`` runs under `sentinel run`. Blocks
that leave their inputs to the reader (``page_table``, ``num_pages``, ...) get them from INPUTS,
prepended; a self-contained block just redefines them. The ring must show the block's steps and
its paged-KV context, and no violation: the examples are of a healthy engine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

pytest.importorskip("torch")

README = Path(os.environ.get("SENTINEL_README", Path(__file__).resolve().parent.parent / "README.md"))
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "sentinel_hooks" in b]

# What the README's "calling them from any engine" snippet leaves to the engine.
INPUTS = """
import torch
num_pages = 64
page_table = torch.tensor([[1, 2, 0, 0], [3, 0, 0, 0]], dtype=torch.int32)
seq_lens = torch.tensor([20, 9])
batch_size = 2
cu_seqlens_q = torch.tensor([0, 1, 2])
class allocator:
    size = 64
kv_cache_view = torch.zeros(64, 16, 8, 128)
num_tokens = 2
capture_sizes = [1, 2, 4, 8]
"""


def test_readme_has_examples():
    assert BLOCKS, f"no ```python block using sentinel_hooks in {README}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_clean(h, index):
    code = INPUTS + "\n" + BLOCKS[index]
    res = h.sentinel_run(code, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "sentinel:" not in res.stderr, res.stderr
    (ring,) = h.rings()
    reader = RingReader(str(ring))
    try:
        recs = reader.tail(writer_alive=False).records
        assert reader.header["step"] == BLOCKS[index].count("sh.step()") * _loops(BLOCKS[index]) >= 1
        assert (recs["kind"] == rf.Kind.PROBE).sum() == 0, "the example trips a check"
        ctx = recs[(recs["kind"] == rf.Kind.CONTEXT) & (recs["code"] == rf.Context.PAGED_KV)]
        assert len(ctx) >= 1 and (ctx["a"] < ctx["b"]).all()  # max page read < num_pages
    finally:
        reader.close()


def _loops(block: str) -> int:
    m = re.search(r"for \w+ in range\((\d+)\)", block)
    return int(m.group(1)) if m else 1
