"""GPU probe overhead, side by side in one run, on a decode-like paged-attention step.

Configurations (same inputs, interleaved rounds, medians with spread):
  graph / no checks        the step captured in a CUDA graph, replayed
  graph / sentinel         check_paged_kv captured with the step: counted on every replay
  graph / no publish       the same with the probe kernel's publish compiled out (device.PUBLISH
                           off): what the crash-proof write of the probe's summary into device
                           words costs alone
  eager / no checks
  eager / sentinel
  eager / trap style       seed 000's approach: page_table.max().item() / .min().item() before the
                           kernel (two host syncs; impossible inside a graph, so 0 % of replays)

Correct before fast: the probe must report an injected off-by-one and stay silent on the clean
table before anything is timed. Then the time from enqueueing a probe that finds a bad index to the
violation being readable in the ring file: through the device words (the probe kernel's publish)
and through the drain (a PROBE record), median and p99 of --latency-samples, the GPU idle before
each. SENTINEL_DIR defaults to a folder on /dev/shm, where the ring page itself is registered (the
deployment default). Run by tests/gpu/run.sh; writes JSON and a markdown table to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paged_attention as pa  # noqa: E402
from cuda_timing import time_ms  # noqa: E402

os.environ.setdefault("SENTINEL_DIR", tempfile.mkdtemp(prefix="sentinel-bench-",
                                                     dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
import sentinel_hooks as sh  # noqa: E402
from sentinel.daemon.ringreader import RingReader  # noqa: E402
from sentinel_hooks import config, device, mapped, probes  # noqa: E402
from sentinel_hooks import ringformat as rf  # noqa: E402


def site_totals(reader: RingReader, name: str) -> dict[str, int]:
    sh.flush()
    recs = reader.tail(writer_alive=True).records
    tags = [t for t in set(recs["tag"].tolist()) if reader.name(t) == name]
    recs = recs[recs["tag"] == tags[0]] if tags else recs[:0]
    ctx = recs[(recs["kind"] == rf.Kind.CONTEXT) & (recs["code"] == rf.Context.PAGED_KV)]
    bad = recs[(recs["kind"] == rf.Kind.PROBE) & (recs["code"] == rf.Check.PAGE_TABLE_OOB)]
    return {"execs": int(ctx["c"].sum()), "oob": int(bad["a"].sum()),
            "max_index": int(ctx["a"].max()) if len(ctx) else -1}


def count_syncs(fn) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    # Count the "called a synchronizing CUDA operation" warnings, not the one-time prototype notice.
    return sum(1 for w in caught if "called a synchronizing" in str(w.message))


def visibility_latency(reader: RingReader, num_pages: int, n: int) -> dict[str, dict[str, float]]:
    """Milliseconds from enqueueing a probe that finds one bad index (the GPU idle) until the daemon's
    view of the ring shows it: the site's OOB device word, and the drain's PROBE record."""
    cfg = config.probe_config()
    if cfg.mode != "observe" or cfg.sample_every != 1:
        raise SystemExit("the latency figure needs SENTINEL_MODE=observe and SENTINEL_SAMPLE_EVERY=1")
    table = torch.zeros(8, 4, dtype=torch.int32, device="cuda")
    sh.check_paged_kv(table, num_pages, name="latency")  # the site, its row and its words, set up eagerly
    torch.cuda.synchronize()
    site = probes._sites[("paged_kv", "latency")]
    view = site.words.get(torch.cuda.current_device())
    if view is None:
        raise SystemExit("no device words for the probe site (see the hooks' log line)")
    index = (view.data_ptr() - mapped._words.device_ptr) // 8 + 1  # the OOB word (ringformat.PROBE_WORDS)
    words = reader.device_words
    out: dict[str, list[float]] = {"words": [], "drain": []}
    for _ in range(n):
        sh.flush()
        reader.tail(writer_alive=True)
        table[3, 1] = num_pages  # one bad index each time
        torch.cuda.synchronize()
        before = int(words[index])
        t0 = time.perf_counter()
        deadline = t0 + 10.0
        sh.check_paged_kv(table, num_pages, name="latency")
        while int(words[index]) == before and time.perf_counter() < deadline:
            time.sleep(0)  # let the pinned mode's copier thread run
        out["words"].append(1000 * (time.perf_counter() - t0))
        while not any((r["kind"] == rf.Kind.PROBE) and reader.name(int(r["tag"])) == "latency"
                      for r in reader.tail(writer_alive=True).records) and time.perf_counter() < deadline:
            time.sleep(0.0002)
        out["drain"].append(1000 * (time.perf_counter() - t0))
        if time.perf_counter() >= deadline:
            raise SystemExit("a violation did not show in the ring within 10 s")
    return {k: {"median": statistics.median(v), "p99": sorted(v)[min(len(v) - 1, int(0.99 * len(v)))]}
            for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--latency-samples", type=int, default=200)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}; batch {args.batch}, context {args.context}", flush=True)

    st = pa.make_step(batch=args.batch, context=args.context)
    num_pages, ps = st["num_pages"], st["page_size"]
    pt, seq = st["page_table"], st["seq_lens"]
    sh.event(0)
    reader = RingReader(sh.stats()["ring"])

    # -- correct before fast ----------------------------------------------------------------------
    ref = pa.reference_decode(st["q"][:4], st["k_cache"], st["v_cache"], pt[:4], seq[:4])
    out = pa.paged_decode(st["q"], st["k_cache"], st["v_cache"], pt, seq, st["out"])
    rel = ((out[:4].float() - ref).norm() / ref.norm()).item()
    assert rel < 2e-2, f"paged_decode disagrees with the reference: {rel}"
    bad_pt = pt.clone()
    bad_pt[5, 17] = num_pages
    sh.check_paged_kv(bad_pt, num_pages, seq_lens=seq, page_size=ps, name="gate_bad")
    sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=ps, name="gate_clean")
    gb, gc = site_totals(reader, "gate_bad"), site_totals(reader, "gate_clean")
    assert gb["oob"] == 1 and gc["oob"] == 0 and gc["max_index"] < num_pages, (gb, gc)
    print(f"correctness: decode rel err {rel:.2e}; probe caught the off-by-one, clean table clean", flush=True)

    def decode():
        pa.paged_decode(st["q"], st["k_cache"], st["v_cache"], pt, seq, st["out"])

    def probed():
        sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=ps, batch_size=args.batch, name="bench")
        decode()

    def trap_style():
        if pt.max().item() >= num_pages or pt.min().item() < 0:
            raise RuntimeError("page index out of range")
        decode()

    def probe_only():
        sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=ps, batch_size=args.batch, name="bench_alone")

    def probed_no_publish():
        sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=ps, batch_size=args.batch, name="bench_nopublish")
        decode()

    graphs = {}
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for fn in (decode, probed, probe_only, probed_no_publish):
            device.PUBLISH = fn is not probed_no_publish  # each kernel variant compiled before its capture
            fn()
    torch.cuda.current_stream().wait_stream(s)
    for key, fn in (("graph_nocheck", decode), ("graph_sentinel", probed), ("graph_probe_only", probe_only),
                    ("graph_no_publish", probed_no_publish)):
        device.PUBLISH = key != "graph_no_publish"  # read at launch: what the capture records
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        graphs[key] = g
    device.PUBLISH = True
    before = site_totals(reader, "bench")  # warm-up executions, subtracted below

    configs = {
        "graph_nocheck": graphs["graph_nocheck"].replay,
        "graph_sentinel": graphs["graph_sentinel"].replay,
        "graph_probe_only": graphs["graph_probe_only"].replay,
        "graph_no_publish": graphs["graph_no_publish"].replay,
        "eager_nocheck": decode,
        "eager_sentinel": probed,
        "eager_trap_style": trap_style,
    }
    for fn in configs.values():  # warm-up
        time_ms(fn, 3)
    samples: dict[str, list[float]] = {k: [] for k in configs}
    t0 = time.monotonic()
    graph_replays = 0
    for r in range(args.rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for key in order:
            samples[key].append(time_ms(configs[key], args.iters))
            if key == "graph_sentinel":
                graph_replays += args.iters
    elapsed = time.monotonic() - t0
    syncs = {"eager_nocheck": count_syncs(decode), "eager_sentinel": count_syncs(probed),
             "eager_trap_style": count_syncs(trap_style),
             "graph_sentinel": count_syncs(graphs["graph_sentinel"].replay)}
    after = site_totals(reader, "bench")
    execs = before["execs"] + after["execs"]
    # side-stream warm-up 1, timing warm-ups 3 + 3, timed graph replays and eager calls, 2 sync counts
    expected_execs = 1 + 3 + 3 + graph_replays + args.rounds * args.iters + 2
    med = {k: statistics.median(v) for k, v in samples.items()}
    spread = {k: (min(v), max(v)) for k, v in samples.items()}

    rows = [
        ("graph / no checks", "graph_nocheck", "graph_nocheck", "-", "-"),
        ("graph / sentinel probes", "graph_sentinel", "graph_nocheck", syncs["graph_sentinel"], "100 %"),
        ("graph / sentinel probes, no publish", "graph_no_publish", "graph_nocheck", "-", "100 %"),
        ("eager / no checks", "eager_nocheck", "eager_nocheck", syncs["eager_nocheck"], "-"),
        ("eager / sentinel probes", "eager_sentinel", "eager_nocheck", syncs["eager_sentinel"], "100 %"),
        ("eager / trap style (.item())", "eager_trap_style", "eager_nocheck", syncs["eager_trap_style"],
         "0 % of graph replays"),
    ]
    ratio = med["graph_sentinel"] / med["graph_nocheck"]
    publish_us = 1000 * (med["graph_sentinel"] - med["graph_no_publish"])
    latency = visibility_latency(reader, num_pages, args.latency_samples)
    result = {
        "date": time.strftime("%Y-%m-%d"), "device": dev, "torch": torch.__version__,
        "batch": args.batch, "context": args.context, "page_size": ps, "num_pages": num_pages,
        "rounds": args.rounds, "iters": args.iters, "seconds": round(elapsed, 1),
        "median_ms": med, "min_max_ms": spread, "syncs_per_step": syncs,
        "graph_ratio": ratio, "probe_alone_us": med["graph_probe_only"] * 1000,
        "probe_executions": execs, "expected_executions": expected_execs,
        "coverage": execs / expected_execs, "violations_in_timed_runs": after["oob"],
        "publish_us": publish_us, "device_words": mapped.mode(), "visible_ms": latency,
    }
    lines = [
        f"GPU probe overhead — {result['date']}, {dev}, torch {torch.__version__}; decode step: batch "
        f"{args.batch}, context {args.context}, page {ps}, 32 q heads / 8 kv heads, head dim 128, bf16; "
        f"{args.rounds} interleaved rounds x {args.iters} steps",
        "",
        "| configuration | step ms (median) | min..max | ratio | host syncs/step | steps checked |",
        "|---|---|---|---|---|---|",
    ]
    for label, key, base, sy, cov in rows:
        lo, hi = spread[key]
        lines.append(f"| {label} | {med[key]:.4f} | {lo:.4f}..{hi:.4f} | {med[key] / med[base]:.4f} | {sy} | {cov} |")
    lines += [
        "",
        f"- a graph holding only the probe: {result['probe_alone_us']:.2f} us per replay (graph launch included; "
        f"the in-step cost is {1000 * (med['graph_sentinel'] - med['graph_nocheck']):.1f} us)",
        f"- the crash-proof write alone (the probe kernel's publish): {publish_us:.1f} us a step "
        f"(graph with it against graph without it; device words in the {mapped.mode()} mapping)",
        f"- a violation readable in the ring, from enqueueing its probe ({args.latency_samples} samples): device "
        f"words median {latency['words']['median']:.3f} ms, p99 {latency['words']['p99']:.3f} ms; the drain's "
        f"PROBE record median {latency['drain']['median']:.1f} ms, p99 {latency['drain']['p99']:.1f} ms",
        f"- probe executions counted: {execs} of {expected_execs} expected (coverage "
        f"{100.0 * execs / expected_execs:.1f} %); violations during timing: {after['oob']} (clean table)",
        f"- goal: graph ratio <= 1.01 -> {'PASS' if ratio <= 1.01 else 'FAIL'} ({ratio:.4f}); "
        f"0 syncs -> {'PASS' if syncs['eager_sentinel'] == 0 and syncs['graph_sentinel'] == 0 else 'FAIL'}",
    ]
    table = "\n".join(lines)
    with open(os.path.join(args.out, "gpu_probes.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "gpu_probes.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(table)
    return 0 if ratio <= 1.01 and execs == expected_execs else 1


if __name__ == "__main__":
    sys.exit(main())
