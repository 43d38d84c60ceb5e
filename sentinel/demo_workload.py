"""The demo's serving workload: a tiny paged-KV decode loop in PyTorch, on CPU.

Runs in a child process under `sentinel run`, so the hooks arrive by injection, not by import.
(The daemon never imports this module; torch is only needed here.) Without torch it still steps,
with plain Python arithmetic standing in for the model, and says so.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--step-ms", type=float, default=5.0, help="target step time")
    p.add_argument("--die-after", type=float, default=0.0, help="SIGKILL itself after this many seconds (0 = never)")
    args = p.parse_args(argv)

    import sentinel_hooks  # put on the path by `sentinel run`

    try:
        import torch
    except ImportError:
        torch = None
        print("demo workload: torch not installed, stepping without a model", file=sys.stderr)

    if torch is not None:
        torch.set_num_threads(1)  # three ranks share a small machine
        torch.manual_seed(int(os.environ.get("RANK", "0")))
        num_pages, page_size, heads, head_dim, batch = 256, 16, 4, 32, 8
        k_cache = torch.randn(num_pages, page_size, heads, head_dim)
        page_table = torch.randint(0, num_pages, (batch, 8), dtype=torch.int32)
        q = torch.randn(batch, heads, head_dim)

    start = time.monotonic()
    period = args.step_ms / 1000.0
    next_t = start
    while time.monotonic() - start < args.duration:
        if torch is not None:
            k = k_cache[page_table.long()].flatten(1, 2)  # (batch, pages*page_size, heads, dim)
            scores = torch.einsum("bhd,bthd->bht", q, k).softmax(-1)
            q = q + 0.01 * torch.einsum("bht,bthd->bhd", scores, k)
        sentinel_hooks.step()
        if args.die_after and time.monotonic() - start >= args.die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # what an OOM kill or a fatal fault looks like
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
