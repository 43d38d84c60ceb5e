"""A decode-like paged-attention step in Triton, shared by the GPU tests and the GPU benchmark.

``paged_gather`` is the kernel of the reference experiment (an off-by-one page index is read
silently). ``paged_decode`` is a flash-decoding style kernel: one program per (sequence, KV head)
walks that sequence's pages through the page table, as a serving engine's decode kernel does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def paged_gather(table_ptr, cache_ptr, out_ptr, PAGE: tl.constexpr):
    pid = tl.program_id(0)
    page = tl.load(table_ptr + pid).to(tl.int64)
    offs = tl.arange(0, PAGE)
    v = tl.load(cache_ptr + page * PAGE + offs)
    tl.store(out_ptr + pid * PAGE + offs, v)


@triton.jit
def _paged_decode(
    q_ptr, k_ptr, v_ptr, pt_ptr, seq_ptr, out_ptr,
    stride_qb, stride_qh, stride_kp, stride_ks, stride_kh, stride_ptb, stride_ob, stride_oh,
    scale,
    G: tl.constexpr, GP: tl.constexpr, PS: tl.constexpr, D: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_g = tl.arange(0, GP)
    offs_d = tl.arange(0, D)
    offs_s = tl.arange(0, PS)
    gmask = offs_g < G
    q = tl.load(q_ptr + b * stride_qb + (h * G + offs_g)[:, None] * stride_qh + offs_d[None, :],
                mask=gmask[:, None], other=0.0)
    seq = tl.load(seq_ptr + b)
    n_pages = tl.cdiv(seq, PS)
    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, D], dtype=tl.float32)
    for p in range(0, n_pages):
        page = tl.load(pt_ptr + b * stride_ptb + p).to(tl.int64)
        off = page * stride_kp + offs_s[:, None] * stride_ks + h * stride_kh + offs_d[None, :]
        k = tl.load(k_ptr + off)
        s = tl.dot(q, tl.trans(k)) * scale
        tok = p * PS + offs_s
        s = tl.where(tok[None, :] < seq, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        pexp = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pexp, 1)
        v = tl.load(v_ptr + off)
        acc = acc * alpha[:, None] + tl.dot(pexp.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + b * stride_ob + (h * G + offs_g)[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=gmask[:, None])


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, page_table: torch.Tensor,
                 seq_lens: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """q: (B, Hq, D); caches: (num_pages, page_size, Hkv, D); page_table: (B, max_pages)."""
    bsz, hq, d = q.shape
    _, ps, hkv, _ = k_cache.shape
    g = hq // hkv
    _paged_decode[(bsz, hkv)](
        q, k_cache, v_cache, page_table, seq_lens, out,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        page_table.stride(0), out.stride(0), out.stride(1),
        d ** -0.5, G=g, GP=max(16, triton.next_power_of_2(g)), PS=ps, D=d,
    )
    return out


def reference_decode(q, k_cache, v_cache, page_table, seq_lens) -> torch.Tensor:
    """The same attention in float32 torch ops (gather, mask, softmax), for correctness checks."""
    bsz, hq, d = q.shape
    _, ps, hkv, _ = k_cache.shape
    g = hq // hkv
    outs = []
    for b in range(bsz):
        n = int(seq_lens[b])
        pages = page_table[b, : (n + ps - 1) // ps].long()
        k = k_cache[pages].reshape(-1, hkv, d)[:n].float()
        v = v_cache[pages].reshape(-1, hkv, d)[:n].float()
        k = k.repeat_interleave(g, dim=1)
        v = v.repeat_interleave(g, dim=1)
        s = torch.einsum("hd,thd->ht", q[b].float(), k) * d ** -0.5
        outs.append(torch.einsum("ht,thd->hd", s.softmax(-1), v))
    return torch.stack(outs)


def make_step(batch: int = 64, context: int = 4096, page_size: int = 16, hkv: int = 8, g: int = 4, d: int = 128,
              spare_pages: int = 64, seed: int = 0, device: str = "cuda") -> dict:
    """A decode batch: every sequence at ``context`` tokens, pages scattered over the cache."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pages_per_seq = (context + page_size - 1) // page_size
    num_pages = batch * pages_per_seq + spare_pages
    perm = torch.randperm(num_pages, generator=gen)[: batch * pages_per_seq]
    page_table = perm.view(batch, pages_per_seq).to(torch.int32).to(device)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    k_cache = torch.randn(num_pages, page_size, hkv, d, dtype=torch.bfloat16, device=device)
    v_cache = torch.randn(num_pages, page_size, hkv, d, dtype=torch.bfloat16, device=device)
    q = torch.randn(batch, hkv * g, d, dtype=torch.bfloat16, device=device)
    out = torch.empty_like(q)
    return {"q": q, "k_cache": k_cache, "v_cache": v_cache, "page_table": page_table, "seq_lens": seq_lens,
            "out": out, "num_pages": num_pages, "page_size": page_size}
