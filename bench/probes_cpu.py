#!/usr/bin/env python3
"""CPU host cost of each probe, against batch size and page-table width, beside plain torch ops.

Run as ``.venv/bin/python bench/probes_cpu.py`` (``make bench``). The CPU path computes the checks
directly with torch ops, so its cost grows with the table; this measures how.

1. ``check_paged_kv`` for batch in BATCHES x table width in WIDTHS, plus one larger table (int32
   tables, full rows, with seq_lens and cu_seqlens_q), timed side by side with two plain torch ops over the same table:
   ``table.max()`` and a copy of the same bytes (``dst.copy_(table)``). Correct before fast: in
   every configuration a clean table writes no violation (and its context record carries the
   table's true maximum), and an injected past-the-end index in the last entry and a negative
   index elsewhere are each reported as page_table_oob with the offending value.
2. ``check_strides`` (a clean (batch, 32, 128) bf16 query tensor) and ``note_batch`` for each
   batch size, against ``table.max()`` over that batch's narrowest (width-16) table; plus the
   fixed-size rows kept from before (KV view, degenerate view, step).

Timing: each round runs every function of every configuration of a part (order rotated every
round), so a change in the machine's load hits all configurations alike; each
sample times enough back-to-back calls to last >= SAMPLE_S; ratios are taken per round, between
samples measured moments apart, and reported as median [min..max] over ROUNDS rounds. The growth
of ``check_paged_kv`` with table size is fitted (log-log slope, and a + b x elements).

Writes bench/results/<UTC date>-cpu-probes.json and a dated section of bench/RESULTS.md.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import check, machine_info, progress, spread, update_results_md, write_json  # noqa: E402

for _var in ("SENTINEL_DISABLE", "SENTINEL_RING_CAPACITY", "SENTINEL_MODE", "SENTINEL_SAMPLE_EVERY",
             "SENTINEL_CHECKS"):
    os.environ.pop(_var, None)  # the probes must run, every call, in the default (record) mode
os.environ["SENTINEL_DIR"] = tempfile.mkdtemp(prefix="sentinel-bench-probes-")
import numpy as np  # noqa: E402
import torch  # noqa: E402

import sentinel_hooks as sh  # noqa: E402
from sentinel.daemon.ringreader import RingReader  # noqa: E402
from sentinel_hooks import ringformat as rf  # noqa: E402

BATCHES = (1, 8, 64, 256)
WIDTHS = (16, 64, 256, 1024)
# One table past the grid (1M entries, 4 MiB), so the fitted slope is not only that of tables
# whose temporaries still fit in the CPU's caches.
EXTRA = ((256, 4096),)
CONFIGS = tuple((b, w) for b in BATCHES for w in WIDTHS) + EXTRA
PAGE_SIZE = 16
ROUNDS = 41
SAMPLE_S = 0.005  # each timing sample lasts at least this long
MIN_CALLS = 3
FIT_MIN_ELEMENTS = 16384  # the log-log slope is fitted where the per-element work dominates
GRAPH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUDGET = 8192

PROBE, CONTEXT = int(rf.Kind.PROBE), int(rf.Kind.CONTEXT)
OOB = int(rf.Check.PAGE_TABLE_OOB)

pc = time.perf_counter_ns


def calibrate(fn: Callable[[], object]) -> int:
    """Calls per sample so that one sample lasts >= SAMPLE_S (and at least MIN_CALLS calls)."""
    fn()
    n = MIN_CALLS
    while True:
        t0 = pc()
        for _ in range(n):
            fn()
        if pc() - t0 >= SAMPLE_S * 1e9 or n >= 1 << 16:
            return n
        n *= 2


def side_by_side(fns: dict[tuple, Callable[[], object]], rounds: int = ROUNDS) -> dict[tuple, list[float]]:
    """Microseconds per call of each function, one sample per round.

    Keys are tuples whose last item names the function and the rest its configuration. Each round
    visits every configuration (order rotated) and runs its functions back to back (order rotated),
    so that a probe and its baselines are measured moments apart and load drift hits all alike."""
    calls = {key: calibrate(fn) for key, fn in fns.items()}
    groups: dict[tuple, list[tuple]] = {}
    for key in fns:
        groups.setdefault(key[:-1], []).append(key)
    order = list(groups)
    out: dict[tuple, list[float]] = {key: [] for key in fns}
    gc.collect()
    for r in range(rounds):
        g = r % len(order)
        for group in order[g:] + order[:g]:
            keys = groups[group]
            k = r % len(keys)
            for key in keys[k:] + keys[:k]:
                fn, n = fns[key], calls[key]
                t0 = pc()
                for _ in range(n):
                    fn()
                out[key].append((pc() - t0) / n / 1000)
    return out


def per_round_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    return spread([a / b for a, b in zip(num, den)])


class Ring:
    """This process's ring, read from where the last call left off."""

    def __init__(self) -> None:
        sh.event(0)  # creates the ring
        self.reader = RingReader(sh.stats()["ring"])
        self.skip()

    def skip(self) -> None:
        self.reader.last_seq = self.reader.top_seq()

    def new(self) -> np.ndarray:
        res = self.reader.tail(writer_alive=True)
        check(not res.overwritten and not res.torn, "the ring was lapped while checking")
        return res.records


def check_paged_kv_config(ring: Ring, pt: torch.Tensor, num_pages: int, seq: torch.Tensor, cu: torch.Tensor,
                          batch: int) -> None:
    """Clean table: no violation, right maximum. Injected bad indices: reported, with the value."""
    width = pt.shape[1]
    ring.skip()
    sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=PAGE_SIZE, cu_seqlens_q=cu, batch_size=batch,
                      name="clean")
    recs = ring.new()
    check(not (recs["kind"] == PROBE).any(), f"{batch}x{width}: a clean table reported a violation")
    ctx = recs[recs["kind"] == CONTEXT]
    check(len(ctx) == 1 and int(ctx["a"][0]) == int(pt.max()) and int(ctx["b"][0]) == num_pages,
          f"{batch}x{width}: context record {ctx}")
    rng = np.random.default_rng(batch * 100_003 + width)
    for where, value in (((batch - 1, width - 1), num_pages), ((int(rng.integers(batch)), int(rng.integers(width))), -1)):
        bad = pt.clone()
        bad[where] = value
        ring.skip()
        sh.check_paged_kv(bad, num_pages, seq_lens=seq, page_size=PAGE_SIZE, cu_seqlens_q=cu, batch_size=batch,
                          name="bad")
        recs = ring.new()
        probes = recs[recs["kind"] == PROBE]
        check(len(probes) == 1 and int(probes["code"][0]) == OOB and int(probes["a"][0]) == 1
              and int(probes["b"][0]) == value and int(probes["c"][0]) == num_pages
              and ring.reader.name(int(probes["tag"][0])) == "bad",
              f"{batch}x{width}: index {value} at {where} not reported as page_table_oob: {probes}")


def bench_paged_kv(ring: Ring) -> list[dict]:
    cases = []
    fns: dict[tuple[int, int, str], Callable[[], object]] = {}
    for batch, width in CONFIGS:
        num_pages = batch * width + 16
        gen = torch.Generator().manual_seed(batch * 7919 + width)
        pt = torch.randperm(num_pages, generator=gen)[: batch * width].view(batch, width).to(torch.int32)
        seq = torch.full((batch,), width * PAGE_SIZE, dtype=torch.int32)  # every entry is read
        cu = torch.arange(batch + 1, dtype=torch.int32)
        check_paged_kv_config(ring, pt, num_pages, seq, cu, batch)
        dst = torch.empty_like(pt)

        def probe(pt=pt, num_pages=num_pages, seq=seq, cu=cu, batch=batch) -> None:
            sh.check_paged_kv(pt, num_pages, seq_lens=seq, page_size=PAGE_SIZE, cu_seqlens_q=cu,
                              batch_size=batch, name="clean")

        fns[(batch, width, "probe")] = probe
        fns[(batch, width, "max")] = pt.max
        fns[(batch, width, "copy")] = lambda dst=dst, pt=pt: dst.copy_(pt)
        cases.append((batch, width, num_pages, pt, dst))
    progress(f"check_paged_kv: {len(cases)} tables verified; timing all of them interleaved, {ROUNDS} rounds")
    # Every configuration in every round: a change in the machine's load hits them all alike.
    t = side_by_side(fns)
    ring.skip()
    rows = []
    for batch, width, num_pages, pt, dst in cases:
        check(torch.equal(dst, pt), "the copy baseline copied the table")
        p, m, c = t[(batch, width, "probe")], t[(batch, width, "max")], t[(batch, width, "copy")]
        row = {
            "batch": batch, "width": width, "elements": batch * width, "bytes": batch * width * 4,
            "num_pages": num_pages, "probe_us": spread(p), "max_us": spread(m), "copy_us": spread(c),
            "probe_samples": p, "max_samples": m, "copy_samples": c,
            "probe_over_max": per_round_ratio(p, m), "probe_over_copy": per_round_ratio(p, c),
        }
        rows.append(row)
        progress(f"    {batch:>3} x {width:<4}: {row['probe_us']['median']:8.1f} us, "
                 f"{row['probe_over_max']['median']:5.1f}x max(), {row['probe_over_copy']['median']:6.1f}x copy")
    return rows


def fit_growth(rows: list[dict], key: str) -> dict:
    """How per-call time grows with table entries (a slope of 1 is linear).

    Slopes are fitted per round, on samples taken in the same round, so a change in the machine's
    load between rounds does not tilt them; reported as median [min..max] over the rounds. Also:
    a + b x entries by least squares on the medians, and the steepest step between neighbouring
    tables (on medians)."""
    n = np.array([r["elements"] for r in rows], dtype=np.float64)
    samples = np.array([r[f"{key}_samples"] for r in rows], dtype=np.float64)  # tables x rounds
    t = np.median(samples, axis=1)
    big = n >= FIT_MIN_ELEMENTS
    i1 = int(np.argmax(n))  # the largest table and the largest one smaller than it
    i0 = int(np.argmax(np.where(n < n[i1], n, -1)))
    slopes = [float(np.polyfit(np.log(n[big]), np.log(samples[big, k]), 1)[0]) for k in range(samples.shape[1])]
    top = [float(np.log(samples[i1, k] / samples[i0, k]) / np.log(n[i1] / n[i0])) for k in range(samples.shape[1])]
    # The same on each table's fastest sample: the least disturbed by other load on the machine.
    fastest = samples.min(axis=1)
    slope_fastest = float(np.polyfit(np.log(n[big]), np.log(fastest[big]), 1)[0])
    top_fastest = float(np.log(fastest[i1] / fastest[i0]) / np.log(n[i1] / n[i0]))
    b, a = np.polyfit(n, t, 1)
    # Neighbours: the next width at the same batch, the next batch at the same width.
    at = {(r["batch"], r["width"]): float(tt) for r, tt in zip(rows, t)}
    steps = {}
    for b0, w0 in at:
        wider = [w for bb, w in at if bb == b0 and w > w0]
        bigger = [bb for bb, w in at if w == w0 and bb > b0]
        for nb, nw in ([(b0, min(wider))] if wider else []) + ([(min(bigger), w0)] if bigger else []):
            steps[f"{b0}x{w0} -> {nb}x{nw}"] = (at[(nb, nw)] / at[(b0, w0)]) / (nb * nw / (b0 * w0))
    worst = max(steps, key=steps.get)
    return {
        "loglog_slope_large": spread(slopes),
        "fit_points": int(big.sum()),
        "largest_step": f"{rows[i0]['batch']}x{rows[i0]['width']} -> {rows[i1]['batch']}x{rows[i1]['width']}",
        "largest_step_slope": spread(top),
        "loglog_slope_large_fastest": slope_fastest,
        "largest_step_slope_fastest": top_fastest,
        "fixed_us": float(a),
        "ns_per_element": float(b) * 1000,
        "worst_step": worst,
        "worst_step_growth_over_size_growth": float(steps[worst]),
    }


def bench_host_probes(ring: Ring) -> list[dict]:
    fns: dict[tuple[int, str], Callable[[], object]] = {}
    for batch in BATCHES:
        table = torch.randperm(batch * 16 + 16)[: batch * 16].view(batch, 16).to(torch.int32)
        q = torch.empty(batch, 32, 128, dtype=torch.bfloat16)
        ring.skip()
        sh.check_strides(q, name="q")
        sh.note_batch(batch, token_budget=TOKEN_BUDGET, graph_sizes=GRAPH_SIZES)
        recs = ring.new()
        check(not (recs["kind"] == PROBE).any(), f"batch {batch}: clean query tensor reported a violation")
        ctx = recs[recs["kind"] == CONTEXT]
        flags = rf.BATCH_GRAPH_KNOWN | rf.BATCH_GRAPH_HIT
        check(len(ctx) == 1 and int(ctx["code"][0]) == rf.Context.BATCH and int(ctx["a"][0]) == batch
              and int(ctx["b"][0]) == TOKEN_BUDGET and int(ctx["c"][0]) == flags and int(ctx["aux"][0]) == batch,
              f"batch {batch}: note_batch record {ctx}")
        fns[(batch, "check_strides")] = lambda q=q: sh.check_strides(q, name="q")
        fns[(batch, "note_batch")] = lambda b=batch: sh.note_batch(b, token_budget=TOKEN_BUDGET,
                                                                  graph_sizes=GRAPH_SIZES)
        fns[(batch, "max")] = table.max
    progress(f"check_strides / note_batch: verified; timing {len(BATCHES)} batch sizes interleaved")
    t = side_by_side(fns)
    ring.skip()
    rows = []
    for batch in BATCHES:
        for name in ("check_strides", "note_batch"):
            rows.append({"probe": name, "batch": batch, "us": spread(t[(batch, name)]),
                         "max_us": spread(t[(batch, "max")]), "over_max": per_round_ratio(t[(batch, name)],
                                                                                            t[(batch, "max")])})
    return rows


def bench_fixed(ring: Ring) -> list[dict]:
    """The fixed-size rows: a KV cache view, clean and degenerate, and the heartbeat for scale."""
    kv = torch.empty(1024, 16, 8, 128, dtype=torch.bfloat16)
    kv_bad = kv[:, :, :1, :].as_strided((1024, 16, 1, 128), (16 * 8 * 128, 8 * 128, 1, 1))
    ring.skip()
    sh.check_strides(kv, name="kv")
    check(not (ring.new()["kind"] == PROBE).any(), "clean KV view reported a violation")
    sh.check_strides(kv_bad, name="kv_bad")
    recs = ring.new()
    codes = {int(c) for c in recs[recs["kind"] == PROBE]["code"]}
    check(codes == {rf.Check.DEGENERATE_STRIDE, rf.Check.TMA_MISALIGNED}, f"degenerate view reported {codes}")
    t = side_by_side({
        ("check_strides, clean 4-D bf16 KV view",): lambda: sh.check_strides(kv, name="kv"),
        ("check_strides, degenerate (2 violations recorded)",): lambda: sh.check_strides(kv_bad, name="kv_bad"),
        ("step (heartbeat, for scale)",): sh.step,
    })
    ring.skip()
    return [{"probe": key[0], "us": spread(v)} for key, v in t.items()]


def _s(s: dict, digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}..{s['max']:.{digits}f}]"


GRID_HEAD = ["batch x width", "entries", "check_paged_kv us", "table.max() us", "copy us", "probe / max()",
             "probe / copy"]
HOST_HEAD = ["probe", "batch", "us/call", "table.max() us (b x 16)", "probe / max()"]
FIXED_HEAD = ["probe call (fixed size)", "us/call"]


def grid_rows(rows: list[dict]) -> list[list[str]]:
    return [[f"{r['batch']} x {r['width']}", str(r["elements"]), _s(r["probe_us"]), _s(r["max_us"]),
             _s(r["copy_us"]), _s(r["probe_over_max"]), _s(r["probe_over_copy"])] for r in rows]


def host_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["probe"], str(r["batch"]), _s(r["us"], 2), _s(r["max_us"], 2), _s(r["over_max"], 2)] for r in rows]


def fixed_rows(rows: list[dict]) -> list[list[str]]:
    return [[r["probe"], _s(r["us"], 2)] for r in rows]


def fit_lines(fit: dict[str, dict]) -> list[str]:
    p, c, m = fit["probe"], fit["copy"], fit["max"]
    return [
        f"Growth of check_paged_kv with table entries, log-log slope fitted per round over the {p['fit_points']} "
        f"tables of >= {FIT_MIN_ELEMENTS} entries (1.00 = linear): {_s(p['loglog_slope_large'], 2)}; copy "
        f"{_s(c['loglog_slope_large'], 2)}, max() {_s(m['loglog_slope_large'], 2)}.",
        f"Between the two largest tables ({p['largest_step']}): slope {_s(p['largest_step_slope'], 2)}; copy "
        f"{_s(c['largest_step_slope'], 2)}, max() {_s(m['largest_step_slope'], 2)}. On each table's fastest sample "
        f"(the least disturbed by other load): slope {p['loglog_slope_large_fastest']:.2f} over the large tables, "
        f"{p['largest_step_slope_fastest']:.2f} between the two largest (copy {c['loglog_slope_large_fastest']:.2f}, "
        f"{c['largest_step_slope_fastest']:.2f}).",
        f"Least squares on the medians: {p['fixed_us']:.0f} us + {p['ns_per_element']:.2f} ns per entry (copy "
        f"{c['ns_per_element']:.3f}, max() {m['ns_per_element']:.3f} ns per entry); the steepest step between "
        f"neighbouring tables is {p['worst_step']}, time growing {p['worst_step_growth_over_size_growth']:.2f}x as "
        f"fast as the table (copy's steepest {c['worst_step_growth_over_size_growth']:.2f}x).",
        f"At most linear (median slope <= 1.10): over the large tables {'yes' if fit['at_most_linear'] else 'NO'}; "
        f"between the two largest {'yes' if fit['top_step_at_most_linear'] else 'NO'}.",
    ]


def render_text(head: list[str], rows: list[list[str]]) -> str:
    table = [head] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_md(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def main() -> int:
    t0 = time.monotonic()
    torch.set_num_threads(1)  # one host thread, as a serving process's Python side gets
    info = machine_info()
    progress(f"{info['cpu_model']}, {info['nproc']} CPUs, torch {torch.__version__}, 1 torch thread")
    ring = Ring()
    grid = bench_paged_kv(ring)
    host = bench_host_probes(ring)
    fixed = bench_fixed(ring)
    fit = {k: fit_growth(grid, k) for k in ("probe", "max", "copy")}
    fit["at_most_linear"] = fit["probe"]["loglog_slope_large"]["median"] <= 1.10
    fit["top_step_at_most_linear"] = fit["probe"]["largest_step_slope"]["median"] <= 1.10
    elapsed = time.monotonic() - t0
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    payload = {"benchmark": "cpu-probes", "machine": info, "rounds": ROUNDS, "sample_s": SAMPLE_S,
               "page_size": PAGE_SIZE, "paged_kv": grid, "host_probes": host, "fixed": fixed, "growth": fit,
               "runtime_s": elapsed}
    path = write_json("cpu-probes", payload)
    g, h, f = grid_rows(grid), host_rows(host), fixed_rows(fixed)
    lines = fit_lines(fit)
    section = (
        f"## {info['date_utc']}: CPU probe cost against batch and table width (`bench/probes_cpu.py`)\n\n"
        f"Device: CPU, {info['cpu_model']}, nproc {info['nproc']}, Python {info['python']}, torch {torch.__version__}, "
        f"1 torch thread. Run at {info['time_utc']}, {elapsed:.0f} s. Raw: `bench/results/{os.path.basename(path)}`.\n\n"
        f"Host time per call on the CPU path (the checks computed directly), median [min..max] over {ROUNDS} "
        f"interleaved rounds, each sample >= {SAMPLE_S * 1000:g} ms of back-to-back calls; ratios are per round "
        f"against plain torch ops on the same int32 table, timed in the same round. Tables: the grid "
        f"{'/'.join(map(str, BATCHES))} x {'/'.join(map(str, WIDTHS))} plus "
        f"{', '.join(f'{b} x {w}' for b, w in EXTRA)} past it, full rows "
        f"(seq_lens = width x {PAGE_SIZE}), with cu_seqlens_q. Verified first in every configuration: a clean "
        f"table reports nothing, an index = num_pages in the last entry and a -1 elsewhere are each reported "
        f"as page_table_oob with their value.\n\n"
        f"{render_md(GRID_HEAD, g)}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n\n"
        f"{render_md(HOST_HEAD, h)}\n\n{render_md(FIXED_HEAD, f)}\n"
    )
    update_results_md(f"{info['date_utc']}-cpu-probes", section)
    progress(f"wrote {os.path.relpath(path)} and bench/RESULTS.md ({elapsed:.0f} s total)")
    print()
    print(render_text(GRID_HEAD, g))
    print("\n".join(lines))
    print()
    print(render_text(HOST_HEAD, h))
    print()
    print(render_text(FIXED_HEAD, f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
