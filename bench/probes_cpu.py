"""CPU per-call cost of each probe, in microseconds (the CPU path: computed directly).

Run by `make bench`. Correct before fast: each timed call is first checked to report what it
should (a clean table reports nothing; an off-by-one table reports page_table_oob).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, progress, update_results_md, write_json  # noqa: E402

os.environ["SENTINEL_DIR"] = tempfile.mkdtemp(prefix="sentinel-bench-probes-")
import torch  # noqa: E402

import sentinel_hooks as sh  # noqa: E402
from sentinel.ringreader import RingReader  # noqa: E402
from sentinel_hooks import ringformat as rf  # noqa: E402


def per_call_us(fn, calls: int = 200, rounds: int = 15) -> tuple[float, float, float]:
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t0) / calls / 1000)
    samples.sort()
    return statistics.median(samples), samples[0], samples[-1]


def main() -> int:
    torch.set_num_threads(1)
    sh.event(0)
    reader = RingReader(sh.stats()["ring"])
    rows = []
    for batch, width in ((8, 64), (64, 256), (256, 512)):
        num_pages = batch * width + 16
        pt = torch.randperm(num_pages)[: batch * width].view(batch, width).to(torch.int32)
        seq = torch.full((batch,), width * 16, dtype=torch.int32)
        cu = torch.arange(batch + 1, dtype=torch.int32)
        bad = pt.clone()
        bad[batch // 2, 1] = num_pages
        sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=16, cu_seqlens_q=cu, batch_size=batch, name="clean")
        sh.check_paged_kv(bad, num_pages, seq_lens=seq, page_size=16, cu_seqlens_q=cu, batch_size=batch, name="bad")
        recs = reader.tail().records
        probes = recs[recs["kind"] == rf.Kind.PROBE]
        assert len(probes) == 1 and reader.name(int(probes["tag"][0])) == "bad" and probes["b"][0] == num_pages
        progress(f"check_paged_kv {batch}x{width}")
        def call(pt=pt, num_pages=num_pages, seq=seq, cu=cu, batch=batch) -> None:
            sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=16, cu_seqlens_q=cu, batch_size=batch,
                              name="clean")

        med, lo, hi = per_call_us(call)
        rows.append((f"check_paged_kv, table {batch}x{width} int32, seq_lens + cu_seqlens_q", med, lo, hi))
        reader.tail()
    kv = torch.empty(1024, 16, 8, 128, dtype=torch.bfloat16)
    kv_bad = kv[:, :, :1, :].as_strided((1024, 16, 1, 128), (16 * 8 * 128, 8 * 128, 1, 1))
    sh.check_strides(kv_bad, name="kv_bad")
    recs = reader.tail().records
    assert {int(c) for c in recs[recs["kind"] == rf.Kind.PROBE]["code"]} == {rf.Check.DEGENERATE_STRIDE, rf.Check.TMA_MISALIGNED}
    progress("check_strides, note_batch, step")
    for label, fn in (
        ("check_strides, clean 4-D bf16 KV view", lambda: sh.check_strides(kv, name="kv")),
        ("check_strides, degenerate (2 violations recorded)", lambda: sh.check_strides(kv_bad, name="kv_bad")),
        ("note_batch with budget and graph sizes", lambda: sh.note_batch(4096, token_budget=8192,
                                                                       graph_sizes=(1, 2, 4, 8, 16, 32, 64))),
        ("step (heartbeat, for scale)", sh.step),
    ):
        med, lo, hi = per_call_us(fn, calls=2000)
        rows.append((label, med, lo, hi))
        reader.tail()
    info = machine_info()
    payload = {"machine": info, "rows": [{"probe": r[0], "median_us": r[1], "min_us": r[2], "max_us": r[3]} for r in rows]}
    path = write_json("cpu-probes", payload)
    lines = [
        "| probe call (CPU path) | median us/call | min..max |",
        "|---|---|---|",
        *[f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f}..{r[3]:.1f} |" for r in rows],
    ]
    section = (f"## {info['date_utc']}: CPU probe cost (`bench/probes_cpu.py`)\n\n"
               f"Device: CPU, {info['cpu_model']}, nproc {info['nproc']}, Python {info['python']}, torch {torch.__version__}, "
               f"1 torch thread. Median of 15 rounds. Raw: `{os.path.relpath(path)}`.\n\n" + "\n".join(lines) + "\n")
    update_results_md(f"{info['date_utc']}-cpu-probes", section)
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
