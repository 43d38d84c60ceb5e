"""The probes on a real GPU: silent off-by-one caught, CUDA-graph replays counted, no host syncs,
trap before the kernel, contain in place. Skipped without CUDA; run by tests/gpu/run.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

import paged_attention as pa  # noqa: E402  (bench/ on sys.path, see conftest)

import sentinel_hooks as sh  # noqa: E402
from sentinel.daemon.ringreader import RingReader  # noqa: E402
from sentinel_hooks import ringformat as rf  # noqa: E402


class Ring:
    """Reads what this process's hooks wrote since the last call."""

    def __init__(self) -> None:
        sh.event(0)  # make sure the ring exists
        self.reader = RingReader(sh.stats()["ring"])

    def new(self):
        sh.flush()
        return self.reader.tail(writer_alive=True).records

    def site(self, recs, name: str):
        tag = next((t for t in set(recs["tag"].tolist()) if self.reader.name(t) == name), None)
        return recs[recs["tag"] == tag] if tag is not None else recs[:0]


def probes(recs, check: rf.Check):
    return recs[(recs["kind"] == rf.Kind.PROBE) & (recs["code"] == check)]


def contexts(recs):
    return recs[(recs["kind"] == rf.Kind.CONTEXT) & (recs["code"] == rf.Context.PAGED_KV)]


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    os.environ["SENTINEL_DIR"] = str(tmp_path_factory.mktemp("sentinel"))
    return Ring()


@pytest.fixture(autouse=True)
def observe_mode():
    sh.configure(mode="observe")
    yield
    sh.configure(mode="observe")


def test_offbyone_is_silent_but_the_probe_reports_it(ring):
    num_pages, page = 8657, 64
    cache = torch.randn((num_pages + 1) * page, device="cuda", dtype=torch.bfloat16)  # +1: stay in our own memory
    table = torch.randint(0, num_pages, (512,), device="cuda", dtype=torch.int32)
    table[7] = num_pages - 1
    sh.check_paged_kv(table.view(-1, 1), num_pages, name="gather_edge")
    table[7] = num_pages  # seed 000: one page past the cache
    out = torch.empty(512 * page, device="cuda", dtype=torch.bfloat16)
    pa.paged_gather[(512,)](table, cache, out, PAGE=page)
    torch.cuda.synchronize()  # nothing notices: the kernel completes without an error
    sh.check_paged_kv(table.view(-1, 1), num_pages, name="gather")
    recs = ring.new()
    edge = ring.site(recs, "gather_edge")
    assert len(contexts(edge)) == 1 and len(probes(edge, rf.Check.PAGE_TABLE_OOB)) == 0
    assert contexts(edge)["a"][0] == num_pages - 1  # max index; headroom 0
    bad = probes(ring.site(recs, "gather"), rf.Check.PAGE_TABLE_OOB)
    assert len(bad) == 1 and bad["a"][0] == 1 and bad["b"][0] == num_pages and bad["c"][0] == num_pages


def _step(batch=8, context=512):
    st = pa.make_step(batch=batch, context=context)
    # One spare page past num_pages, so a probed-but-not-contained off-by-one read stays in bounds.
    st["k_cache"] = torch.cat([st["k_cache"], st["k_cache"][:1]])
    st["v_cache"] = torch.cat([st["v_cache"], st["v_cache"][:1]])
    return st


def _run(st, name):
    sh.check_paged_kv(st["page_table"], st["num_pages"], seq_lens=st["seq_lens"], page_size=st["page_size"],
                      name=name)
    pa.paged_decode(st["q"], st["k_cache"], st["v_cache"], st["page_table"], st["seq_lens"], st["out"])


def test_graph_replays_are_all_counted(ring):
    st = _step()
    st["page_table"][2, 5] = st["num_pages"]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles the kernels) off the default stream, as PyTorch advises
        _run(st, "graph")
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        _run(st, "graph")
    replays = 50
    for _ in range(replays):
        g.replay()
    torch.cuda.synchronize()
    recs = ring.site(ring.new(), "graph")
    assert int(contexts(recs)["c"].sum()) == 1 + replays  # executions: the warm-up and every replay
    assert int(probes(recs, rf.Check.PAGE_TABLE_OOB)["a"].sum()) == 1 + replays
    # The kernel's last program published the same to the site's device words on every replay.
    from sentinel_hooks import probes as probe_sites
    from sentinel_hooks import slots

    site = probe_sites._sites[("paged_kv", "graph")]
    dev = torch.cuda.current_device()
    folded = slots.reduce_slots(site.views[dev].tolist())
    assert site.words[dev].tolist() == [folded[slots.Slot.CALLS], folded[slots.Slot.OOB], st["num_pages"],
                                        st["num_pages"]]
    assert site.tickets[dev].item() == 1 << 16  # each launch's counts reset; a violation was published (sticky)


def test_first_call_inside_capture_in_a_fresh_process(tmp_path):
    """A process whose first probe call comes inside a capture: the host's capture must survive
    (that graph goes unprobed, counted as a drop); after prepare_cuda() a first call inside a
    capture is counted on every replay."""
    code = textwrap.dedent("""
        import json, sys, torch
        import paged_attention as pa, sentinel_hooks as sh
        from sentinel_hooks import kernels
        from sentinel.daemon.ringreader import RingReader
        from sentinel_hooks import ringformat as rf
        st = pa.make_step(batch=4, context=256)
        st["page_table"][1, 3] = st["num_pages"] + 7
        st["k_cache"] = torch.cat([st["k_cache"], st["k_cache"][:8]]); st["v_cache"] = torch.cat([st["v_cache"], st["v_cache"][:8]])
        scratch = torch.zeros((16, 8), dtype=torch.int64, device="cuda")
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # compile the kernels, not through the probe API
            kernels.launch_paged_kv(st["page_table"], st["num_pages"], st["seq_lens"], 16, None, scratch, 0, False)
            pa.paged_decode(st["q"], st["k_cache"], st["v_cache"], st["page_table"], st["seq_lens"], st["out"])
        torch.cuda.synchronize()
        def capture(name):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                sh.check_paged_kv(st["page_table"], st["num_pages"], seq_lens=st["seq_lens"], page_size=16, name=name)
                pa.paged_decode(st["q"], st["k_cache"], st["v_cache"], st["page_table"], st["seq_lens"], st["out"])
            for _ in range(10):
                g.replay()
            torch.cuda.synchronize()
        capture("unprepared")
        dropped = sh.stats()["dropped"]
        sh.prepare_cuda()
        capture("prepared")
        sh.flush()
        reader = RingReader(sh.stats()["ring"])
        recs = reader.tail().records
        out = {"dropped_unprepared": dropped, "errors": sh.stats()["errors"]}
        for name in ("unprepared", "prepared"):
            tags = [t for t in set(recs["tag"].tolist()) if reader.name(t) == name]
            r = recs[recs["tag"] == tags[0]] if tags else recs[:0]
            ctx = r[(r["kind"] == rf.Kind.CONTEXT) & (r["code"] == rf.Context.PAGED_KV)]
            bad = r[(r["kind"] == rf.Kind.PROBE) & (r["code"] == rf.Check.PAGE_TABLE_OOB)]
            out[name] = [int(ctx["c"].sum()), int(bad["a"].sum())]
        print(json.dumps(out))
    """)
    env = dict(os.environ, SENTINEL_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["unprepared"] == [0, 0] and out["dropped_unprepared"] >= 1, out
    assert out["prepared"] == [10, 10], out
    assert out["errors"] == 0, out
    assert "before capturing" in p.stderr


def test_no_host_sync_in_probed_steps(ring):
    st = _step()
    st["page_table"][0, 0] = st["num_pages"]
    kv_view = st["k_cache"][:, :, :1, :].as_strided((st["k_cache"].shape[0], 16, 1, 128), (16 * 8 * 128, 8 * 128, 1, 1))
    _run(st, "sync")  # warm-up: compile, allocate the accumulators
    sh.check_strides(kv_view, name="kv_sync")
    sh.note_batch(64, token_budget=8192, graph_sizes=[1, 2, 4, 8, 16, 32, 64])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            _run(st, "sync")
            sh.check_strides(kv_view, name="kv_sync")
            sh.note_batch(64, token_budget=8192, graph_sizes=[1, 2, 4, 8, 16, 32, 64])
            sh.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    recs = ring.site(ring.new(), "sync")
    assert int(contexts(recs)["c"].sum()) == 6
    assert int(probes(recs, rf.Check.PAGE_TABLE_OOB)["a"].sum()) == 6
    assert sh.stats()["errors"] == 0


def test_trap_raises_before_the_kernel(ring, tmp_path):
    st = _step(batch=4, context=256)
    st["page_table"][3, 2] = st["num_pages"]
    sh.configure(mode="trap")
    launched = False
    with pytest.raises(sh.SentinelViolation) as info:
        sh.check_paged_kv(st["page_table"], st["num_pages"], seq_lens=st["seq_lens"], page_size=16, name="trap")
        launched = True
    assert not launched
    err = info.value
    assert err.check == "page_table_oob" and err.name == "trap"
    assert str(st["num_pages"]) in str(err)
    doc = json.load(open(err.evidence))
    assert doc["page_table"]["values"][3][2] == st["num_pages"] and doc["page_table"]["device"].startswith("cuda")


def test_contain_redirects_bad_pages_in_graph_replays(ring):
    st = _step(batch=4, context=256)
    ref_table = st["page_table"].clone()
    ref_table[1, 4] = 0
    st["page_table"][1, 4] = st["num_pages"]
    sh.configure(mode="contain", contain_page=0)
    _run(st, "contain")
    torch.cuda.synchronize()
    assert int(st["page_table"][1, 4]) == 0
    expected = pa.reference_decode(st["q"], st["k_cache"], st["v_cache"], ref_table, st["seq_lens"])
    err = ((st["out"].float() - expected).norm() / expected.norm()).item()
    assert err < 2e-2, err
    recs = ring.site(ring.new(), "contain")
    assert int(probes(recs, rf.Check.PAGE_TABLE_OOB)["a"].sum()) == 1
    # The drain says it was redirected (sentinel_contained_entries_total), and the header the mode.
    held = recs[(recs["kind"] == rf.Kind.EVENT) & (recs["code"] == rf.CONTAINED_EVENT)]
    assert int(held["a"].sum()) == 1
    assert rf.PROBE_MODES[ring.reader.refresh_header()["mode"]] == "contain"


def test_seed_002_stride_on_a_cuda_tensor(ring):
    base = torch.empty(1024, 16, 1, 128, dtype=torch.bfloat16, device="cuda")
    bad = base.as_strided(base.shape, (16 * 128, 128, 1, 1))  # size-1 head dim with stride 1 (2 bytes)
    sh.check_strides(base, name="kv_ok")
    sh.check_strides(bad, name="kv_bad")
    recs = ring.new()
    assert len(ring.site(recs, "kv_ok")) == 0
    b = ring.site(recs, "kv_bad")
    deg = probes(b, rf.Check.DEGENERATE_STRIDE)
    tma = probes(b, rf.Check.TMA_MISALIGNED)
    assert len(deg) == 1 and deg["b"][0] == 2 and deg["c"][0] == 1 and deg["aux"][0] == 128
    assert len(tma) == 1 and tma["b"][0] == 2 and tma["c"][0] == 2


def test_words_fold_violations_from_every_program():
    """The kernel's last program folds all NPROG slots into the words, whichever programs saw the
    violations: bad entries spread over the whole table (every program's share), launch after launch,
    the words equal the drain's fold of the slots each time."""
    import random

    from sentinel_hooks import device, kernels, slots

    rng = random.Random(5)
    num_pages = 5000
    pt = torch.randint(0, num_pages, (64, 256), dtype=torch.int32, device="cuda")  # 16 programs x 1024
    acc = torch.tensor([slots.INITIAL] * slots.NPROG, dtype=torch.int64, device="cuda")
    words, ticket = torch.zeros(4, dtype=torch.int64, device="cuda"), torch.zeros(1, dtype=torch.int64, device="cuda")
    for launch in range(1, 41):
        table = pt.clone()
        for _ in range(rng.choice([0, 0, 1, 5, 40])):  # clean launches between violating ones
            table.view(-1)[rng.randrange(table.numel())] = rng.choice([num_pages, num_pages + 7, -3, 2**30])
        kernels.launch_paged_kv(table, num_pages, None, None, None, acc, 0, False, words, ticket)
        folded = slots.reduce_slots(acc.tolist())
        S = slots.Slot
        want = [launch, folded[S.OOB], device.offending_index(folded[S.BADMAX], folded[S.BADMIN], num_pages)
                if folded[S.OOB] else -1, num_pages]
        assert words.tolist() == want, (launch, words.tolist(), want)
        assert ticket.item() == (1 << 16 if folded[S.OOB] else 0)


def test_kernel_matches_the_torch_reference_on_random_inputs():
    """The fused Triton kernel and the torch reference (the CPU path) agree, case by case."""
    import random

    from sentinel_hooks import device, kernels, slots

    rng = random.Random(3)
    for trial in range(60):
        rows, cols = rng.randint(0, 70), rng.randint(1, 300)
        num_pages = rng.randint(1, 5000)
        dtype = rng.choice([torch.int32, torch.int64])
        pt = torch.randint(-3, num_pages + 3, (rows, cols), dtype=dtype, device="cuda")
        if rng.random() < 0.5:
            pt = pt.t().contiguous().t()
        ps = rng.choice([None, 1, 16, 64])
        nseq = max(0, rows + rng.randint(-2, 2))  # seq_lens may have more rows than the table, or fewer
        seq = torch.randint(-2, cols * (ps or 1) + 3, (nseq,), device="cuda") if rng.random() < 0.8 else None
        cu = torch.randint(0, 5, (rows + 1,), device="cuda").cumsum(0) if rng.random() < 0.5 else None
        acc = torch.tensor([slots.INITIAL] * slots.NPROG, dtype=torch.int64, device="cuda")
        words, ticket = torch.zeros(4, dtype=torch.int64, device="cuda"), torch.zeros(1, dtype=torch.int64, device="cuda")
        kernels.launch_paged_kv(pt, num_pages, seq, ps, cu, acc, 0, False, words, ticket)
        got = slots.reduce_slots(acc.tolist())
        s = device.paged_kv_stats(torch, pt, num_pages, seq, ps, cu)
        want = [1, int(s["oob"]), int(s["trail"]), int(s["max"]), int(s["seqbad"]),
                0 if int(s["oob"]) else slots.INT64_MAX, int(s["badmax"]), int(s["badmin"])]
        assert got == want, (trial, rows, cols, nseq, ps)
        offending = device.offending_index(int(s["badmax"]), int(s["badmin"]), num_pages)
        assert words.tolist() == [1, int(s["oob"]), offending, num_pages], (trial, words)
