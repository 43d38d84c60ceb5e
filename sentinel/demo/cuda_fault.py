"""The demo's GPU scenario (a child process under `sentinel run`; needs CUDA and Triton):
a paged gather serves with an off-by-one page index, which the probe sees and nothing else
does, then reads a page far out of range and takes a real illegal-address fault."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

import sentinel_hooks as sh

__all__ = ["paged_gather", "main"]


@triton.jit
def paged_gather(table_ptr, cache_ptr, out_ptr, PAGE: tl.constexpr):
    """Triton kernel, one program per page-table entry: copies page ``table[pid]`` (PAGE elements) of
    ``cache`` to ``out[pid * PAGE:]``. ``table``: int32 (n,); ``cache``, ``out``: flat bfloat16. No
    bounds check, on purpose."""
    pid = tl.program_id(0)
    page = tl.load(table_ptr + pid).to(tl.int64)
    offs = tl.arange(0, PAGE)
    tl.store(out_ptr + pid * PAGE + offs, tl.load(cache_ptr + page * PAGE + offs))


def main() -> int:
    """The GPU scenario on the current CUDA device: 50 probed steps (index ``num_pages`` from step 20,
    read from the spare page), then a gather at page 2**30. Expected to end in an illegal-address
    CUDA error; returns 0 only if none came."""
    num_pages, page = 8657, 64
    cache = torch.randn((num_pages + 1) * page, device="cuda", dtype=torch.bfloat16)
    table = torch.randint(0, num_pages, (512,), device="cuda", dtype=torch.int32)
    out = torch.empty(512 * page, device="cuda", dtype=torch.bfloat16)
    for step in range(50):
        if step == 20:
            table[7] = num_pages  # seed 000: one page past the cache; silent
        sh.step()
        sh.check_paged_kv(table.view(-1, 1), num_pages, name="demo.gpu.attn")
        paged_gather[(512,)](table, cache, out, PAGE=page)
    sh.flush()
    table[9] = 2**30  # and now a read that faults
    paged_gather[(512,)](table, cache, out, PAGE=page)
    torch.cuda.synchronize()
    return 0
