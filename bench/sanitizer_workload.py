"""One process of the compute-sanitizer comparison (bench/sanitizer.py runs it, under memcheck or not).

    python bench/sanitizer_workload.py --case clean|offbyone|far --probes none|observe|contain \
        --kernel decode|gather --iters N --result FILE

The step is the benchmark's decode step (batch 64, 4k context) or the reference experiment's
paged gather (8657 pages of 64 bf16). ``offbyone`` sets one page index to num_pages, ``far`` to
2**30. With ``--probes none`` the step runs with no checks; ``observe`` / ``contain`` put
Sentinel's check_paged_kv before every step. With ``--probes both-timed`` the clean step is timed
with and without probes in interleaved rounds in this one process (the overhead figure).

The result file is written as soon as the steps are done, so a process that dies afterwards still
reports; a process that faults first writes what it knows (the error) if Python still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paged_attention as pa  # noqa: E402
from cuda_timing import time_ms  # noqa: E402

FAR = 2**30


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=("clean", "offbyone", "far"), default="clean")
    ap.add_argument("--probes", choices=("none", "observe", "contain", "both-timed"), default="none")
    ap.add_argument("--kernel", choices=("decode", "gather"), default="decode")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--result", required=True)
    args = ap.parse_args()
    res: dict = {"case": args.case, "probes": args.probes, "kernel": args.kernel}

    def write() -> None:
        with open(args.result, "w") as f:
            json.dump(res, f)

    sh = None
    if args.probes != "none":
        import sentinel_hooks as sh

        if args.probes == "contain":
            sh.configure(mode="contain", contain_page=0)

    if args.kernel == "decode":
        st = pa.make_step(batch=64, context=4096)
        pt, num_pages, ps = st["page_table"], st["num_pages"], st["page_size"]
        seq = st["seq_lens"]

        def kernel() -> None:
            pa.paged_decode(st["q"], st["k_cache"], st["v_cache"], pt, seq, st["out"])
    else:
        # The reference experiment's shape: 8657 pages of 64 bf16, one program per table entry.
        num_pages, page = 8657, 64
        cache = torch.randn(num_pages * page, dtype=torch.bfloat16, device="cuda")
        pt = torch.randperm(num_pages, device="cuda")[:4096].to(torch.int32).view(64, 64).contiguous()
        out = torch.empty(pt.numel() * page, dtype=torch.bfloat16, device="cuda")
        seq, ps = None, None

        def kernel() -> None:
            pa.paged_gather[(pt.numel(),)](pt, cache, out, PAGE=page)

    if args.case == "offbyone":
        pt[5, 17] = num_pages
    elif args.case == "far":
        pt[5, 17] = FAR
    res["num_pages"] = num_pages

    def probe() -> None:
        sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=ps, name="sanitizer_bench")

    def step() -> None:
        if sh is not None and args.probes != "both-timed":
            probe()
        kernel()

    def probed_step() -> None:
        probe()
        kernel()

    t0 = time.monotonic()
    try:
        if args.probes == "both-timed":
            for fn in (kernel, probed_step):
                time_ms(fn, 3)
            plain, probed = [], []
            for r in range(args.rounds):
                pair = ((plain, kernel), (probed, probed_step))
                for acc, fn in (pair if r % 2 == 0 else reversed(pair)):
                    acc.append(time_ms(fn, args.iters))
            res["plain_ms"], res["probed_ms"] = statistics.median(plain), statistics.median(probed)
            res["plain_min_max"], res["probed_min_max"] = (min(plain), max(plain)), (min(probed), max(probed))
        else:
            time_ms(step, 2)  # warm-up: Triton compile and first launch
            samples = [time_ms(step, args.iters) for _ in range(args.rounds)]
            res["ms_per_step"] = statistics.median(samples)
            res["min_max"] = (min(samples), max(samples))
        torch.cuda.synchronize()
        res["faulted"] = False
    except RuntimeError as exc:  # a CUDA fault surfaces here, at the first sync after it
        res["faulted"] = True
        res["error"] = str(exc).splitlines()[0][:200]
    res["seconds"] = round(time.monotonic() - t0, 2)
    if sh is not None:
        sh.flush()  # a dead context cannot be drained: the hooks count that and move on
        res["hooks"] = {k: v for k, v in sh.stats().items() if isinstance(v, (int, float, str))}
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
