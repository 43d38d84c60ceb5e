"""The cost of the collective marks (hooks/sentinel_hooks/collectives.py, mapped.py) on a decode step
with tensor parallelism 2 under CUDA graphs: marks off, and on with each bump kernel, side by side in
one run on the same two GPUs.

    python bench/collective_marks.py --out OUTDIR [--layers 32] [--batch 8] [--rounds 30]

The step is shaped like one rank's share of an 8B model's decode at TP=2 (bf16): per layer, a QKV-
and-output projection pair and an MLP pair (4096 x 3072, 3072 x 4096, 4096 x 6144, 6144 x 4096),
each pair followed by an all-reduce of the (batch, 4096) activations through torch.distributed's
NCCL: 2 all-reduces a layer, 64 a step at 32 layers. One CUDA graph of that step is captured per
variant (SETUPS: marks off; "first", the default: one mark per group and replay; "all": a mark
before every all-reduce, with the Triton kernel, and "all-rmw" with torch's add_ on the mapped word),
then replayed in interleaved blocks (the variant order rotates each round), each block timed with CUDA
events. Reports the median time per replay and the ratio to "off". Needs 2 GPUs.

Writes OUTDIR/collective_marks.json and OUTDIR/collective_marks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "hooks")]

# (name, SENTINEL_COLLECTIVE_MARKS, mapped.BUMP)
SETUPS = {"off": ("off", "store"), "first": ("first", "store"), "all": ("all", "store"), "all-rmw": ("all", "rmw")}
VARIANTS = tuple(SETUPS)
BLOCK = 20  # replays per timed block


def worker(rank: int, args: argparse.Namespace, base: str) -> None:
    import torch
    import torch.distributed as dist

    os.environ["SENTINEL_DIR"] = base
    from sentinel_hooks import collectives, mapped

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=2)
    collectives.install()
    torch.manual_seed(rank)
    bf16 = torch.bfloat16
    shapes = ((4096, 3072), (3072, 4096), (4096, 6144), (6144, 4096))
    layers = [[torch.randn(*s, device="cuda", dtype=bf16) / 64 for s in shapes] for _ in range(args.layers)]
    x = torch.randn(args.batch, 4096, device="cuda", dtype=bf16)

    def step(y):
        for wq, wo, w1, w2 in layers:
            o = (y @ wq) @ wo
            dist.all_reduce(o)
            y = y + o
            o = torch.tanh(y @ w1) @ w2
            dist.all_reduce(o)
            y = y + o
        return y

    for _ in range(3):
        step(x)  # eager warm-up: communicator, device words, Triton's compile
    torch.cuda.synchronize()
    graphs = {}
    for variant in VARIANTS:
        collectives._marks, mapped.BUMP = SETUPS[variant]
        for g in collectives._by_name.values():
            g.views.clear()  # each variant makes its own bump
        step(x)  # eager, so the bump is made outside the capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(x)
        graphs[variant] = graph
    torch.cuda.synchronize()
    for graph in graphs.values():  # warm replays
        for _ in range(BLOCK):
            graph.replay()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for variant in order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(BLOCK):
                graphs[variant].replay()
            end.record()
            end.synchronize()
            times[variant].append(start.elapsed_time(end) * 1000 / BLOCK)  # us per replay
        dist.barrier()
    if rank == 0:
        med = {v: statistics.median(t) for v, t in times.items()}
        result = {
            "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__, "layers": args.layers, "batch": args.batch,
            "all_reduces_per_step": 2 * args.layers, "rounds": args.rounds, "block": BLOCK,
            "median_us": {v: round(m, 1) for v, m in med.items()},
            "ratio": {v: round(med[v] / med["off"], 4) for v in VARIANTS},
            "marks_per_step": {v: {"off": 0, "first": 1}.get(SETUPS[v][0], 2 * args.layers) for v in VARIANTS},
            "device_words": mapped.mode(),
        }
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "collective_marks.json"), "w") as f:
            json.dump(result, f, indent=2)
        lines = [f"Collective marks, decode step at TP=2 under CUDA graphs ({result['device']}, {result['date']}; "
                 f"{args.layers} layers, batch {args.batch}, {2 * args.layers} all-reduces a step, device words in "
                 f"the {result['device_words']} mapping)", "",
                 "| marks | marks a step | median per step (us) | ratio to off | per mark (us) |", "|---|---|---|---|---|"]
        for v in VARIANTS:
            n = result["marks_per_step"][v]
            per = round((med[v] - med["off"]) / n, 2) if n else "-"
            lines.append(f"| {v} | {n} | {result['median_us'][v]} | {result['ratio'][v]} | {per} |")
        with open(os.path.join(args.out, "collective_marks.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
    # NCCL's finalize waits for every CUDA graph that captured one of its collectives to be destroyed
    graphs.clear()
    del graph  # the loops' last one
    torch.cuda.synchronize()
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    import torch
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < 2:
        print("needs 2 GPUs", file=sys.stderr)
        return 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29577")
    base = tempfile.mkdtemp(prefix="sentinel-marks-")
    mp.spawn(worker, args=(args, base), nprocs=2, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
