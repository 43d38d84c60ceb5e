"""The demo's serving workload: a tiny paged-KV decode loop in PyTorch, on CPU.

Runs in a child process under `sentinel run`, so `sentinel_hooks` arrives by injection. (The
daemon never imports this module; torch is only needed here.) Each step it calls the probes the
way an engine adapter would: check_paged_kv on the page table, check_strides on the KV view the
kernel gets, note_batch with the token budget. A scenario injects one of the seed faults:

  healthy     nothing wrong
  offbyone    seed 000: from 25 % of the run, one page index == num_pages (read silently: the
              buffer has a spare page, as in the real bug)
  dp_padding  seed 001: from 50 % of the run, batch_size is padded by 2 past the metadata rows
  stride      seed 002: the KV view has a size-1 head dim with stride 1 (not TMA-aligned)

The run's progress is its time out of --duration, or, with --crash-at, its steps out of that
step: a slow machine then still reaches every scenario before the crash.

With --gloo-port, the ranks form a torch.distributed (gloo) group and all-reduce every step;
--hang-rank stops joining at collective --hang-at (seed 002's ending: one rank stops, the others
wait in the collective) and stays stuck until it is killed.

Without torch it still steps (heartbeat only) and says so.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

__all__ = ["SCENARIOS", "main"]

SCENARIOS = ("healthy", "offbyone", "dp_padding", "stride")


def main(argv: list[str] | None = None) -> int:
    """The demo workload (``argv`` default: sys.argv[1:]); returns 0 after --duration seconds, unless
    told to end otherwise: SIGKILL (--die-after), SIGSEGV (--crash-at), a CUDA fault (--cuda-fault),
    or stuck until killed (--hang-rank, with --gloo-port)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=15.0, help="seconds of serving, counted from the first step")
    p.add_argument("--step-ms", type=float, default=5.0, help="target step time")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, default=[])
    p.add_argument("--die-after", type=float, default=0.0, help="SIGKILL itself after this many seconds (0 = never)")
    p.add_argument("--gloo-port", type=int, default=0, help="all-reduce every step over gloo (RANK/WORLD_SIZE)")
    p.add_argument("--hang-rank", type=int, default=-1)
    p.add_argument("--hang-at", type=int, default=0)
    p.add_argument("--crash-at", type=int, default=0, help="crash natively (SIGSEGV) at this step")
    p.add_argument("--cuda-fault", action="store_true", help="a real CUDA fault (needs a GPU and Triton)")
    args = p.parse_args(argv)
    if args.cuda_fault:
        from sentinel.demo.cuda_fault import main as cuda_fault

        return cuda_fault()
    if args.gloo_port:
        return _collectives(args)

    import sentinel_hooks  # put on the path by `sentinel run`

    try:
        import torch
    except ImportError:
        torch = None
        print("demo workload: torch not installed, stepping without a model", file=sys.stderr)

    scen = set(args.scenario)
    budget = 256
    if torch is not None:
        torch.set_num_threads(1)  # several ranks share a small machine
        torch.manual_seed(int(os.environ.get("RANK", "0")))
        num_pages, page_size, heads, head_dim, batch, width = 256, 16, 4, 32, 8, 8
        # One spare page past num_pages: an off-by-one index reads it silently, as on a GPU.
        k_cache = torch.randn(num_pages + 1, page_size, heads, head_dim)
        page_table = torch.randint(0, num_pages, (batch, width), dtype=torch.int32)
        seq_lens = torch.randint(page_size, width * page_size + 1, (batch,), dtype=torch.int32)
        q = torch.randn(batch, heads, head_dim)
        if "stride" in scen:
            # TP splitting left one KV head per rank, and a size-1 dim got stride 1 (seed 002).
            kv_view = k_cache.as_strided((num_pages + 1, page_size, 1, head_dim),
                                         (page_size * heads * head_dim, heads * head_dim, 1, 1))
        else:
            kv_view = k_cache[:, :, :1, :]

    start = time.monotonic()
    period = args.step_ms / 1000.0
    next_t = start
    steps = 0
    while (t := time.monotonic() - start) < args.duration:
        progress = steps / args.crash_at if args.crash_at else t / args.duration
        steps += 1
        if torch is not None:
            if "offbyone" in scen and progress >= 0.25:
                page_table[3, 0] = num_pages
            bsz = batch + (2 if "dp_padding" in scen and progress >= 0.5 else 0)
            sentinel_hooks.check_paged_kv(page_table, num_pages, seq_lens=seq_lens, page_size=page_size,
                                          batch_size=bsz, name="demo.attn")
            sentinel_hooks.check_strides(kv_view, name="demo.kv_cache")
            tokens = int(seq_lens.sum())
            sentinel_hooks.note_batch(tokens, token_budget=budget * page_size, graph_sizes=(1, 2, 4, 8),
                                      batch_size=bsz)
            k = k_cache[page_table.long()].flatten(1, 2)  # (batch, pages*page_size, heads, dim)
            scores = torch.einsum("bhd,bthd->bht", q, k).softmax(-1)
            q = q + 0.01 * torch.einsum("bht,bthd->bhd", scores, k)
        sentinel_hooks.step()
        if args.crash_at and sentinel_hooks.stats()["steps"] >= args.crash_at:
            _native_crash()
        if args.die_after and t >= args.die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # what an OOM kill or a fatal fault looks like
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return 0


def _native_crash() -> None:
    """What a segfault in a native extension looks like: faulthandler writes the Python stacks."""
    import ctypes

    ctypes.string_at(0)


def _collectives(args: argparse.Namespace) -> int:
    import datetime

    import torch
    import torch.distributed as dist

    import sentinel_hooks

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.gloo_port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    x = torch.ones(1024)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < args.duration:
        i += 1
        sentinel_hooks.step()
        if rank == args.hang_rank and i == args.hang_at:
            while True:  # a stuck host loop: it never joins collective #hang_at; the demo kills it
                time.sleep(60)
        dist.all_reduce(x)
        time.sleep(args.step_ms / 1000.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
