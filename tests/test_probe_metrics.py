"""Probe results end to end: a process under `sentinel run` trips every check, a real
`sentinel daemon` tails its ring, and /metrics carries the exact counts (and passes promtool)."""

from __future__ import annotations

import json
import subprocess

import pytest

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

pytest.importorskip("torch")

NUM_PAGES = 100
CLEAN_MAX = 95  # the last (clean) call's largest index: headroom NUM_PAGES - 1 - 95 = 4

# Every check fires, each with its own count, so a mislabelled metric cannot pass.
WORKLOAD = r"""
import json, os, sys, time, torch
import sentinel_hooks as sh

P, PS = 100, 16  # num_pages, page_size: 4 pages per row = 64 tokens at most
kv = dict(page_size=PS, name="attn")
# 1. page_table_oob x3 (in-prefix 100, 101, -1) and page_table_trailing_oob x2 (row 1 reads 2 pages)
sh.check_paged_kv(torch.tensor([[100, 101, 5, -1], [7, 8, 500, -3]], dtype=torch.int32), P,
                  seq_lens=torch.tensor([64, 32]), **kv)
# 2. batch_mismatch x1 (batch_size 5, table 2 rows)
sh.check_paged_kv(torch.tensor([[1, 2], [3, 4]]), P, batch_size=5, name="attn")
# 3. seqlens_invalid x4: -1 and 65 > 64, cu_seqlens_q starting at 1, and going down at 2 -> 1
sh.check_paged_kv(torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), P, seq_lens=torch.tensor([-1, 65]),
                  cu_seqlens_q=torch.tensor([1, 2, 1]), **kv)
# 4. capacity_mismatch x1
sh.check_paged_kv(torch.tensor([[0, 1, 2, 3]]), P, allocator_capacity=P + 1, **kv)
# 5. a clean call last: this site's current headroom
sh.check_paged_kv(torch.tensor([[90, 95, 3, 3], [1, 2, 3, 4]], dtype=torch.int64), P,
                  seq_lens=torch.tensor([64, 64]), **kv)
# degenerate_stride x2 (one with TMA checks, one without), tma_misaligned x3
seed002 = torch.zeros((2, 16, 128, 1), dtype=torch.bfloat16).transpose(2, 3)  # (2, 16, 1, 128), stride 1 on dim 2
sh.check_strides(seed002, name="kv_cache")                # degenerate + tma (dim 2 stride is 2 bytes)
sh.check_strides(seed002, name="kv_cache_notma", tma=False)  # degenerate only
sh.check_strides(torch.zeros(64, dtype=torch.bfloat16)[1:], name="q")  # tma: base pointer
sh.check_strides(torch.zeros((8, 16), dtype=torch.bfloat16)[:, ::2], name="k")  # tma: innermost stride
# batch context: one step at the token budget, one over, one under with an uncaptured batch size
sh.note_batch(8192, token_budget=8192)
sh.note_batch(9000, token_budget=8192)
sh.note_batch(100, token_budget=8192, graph_sizes=[1, 2, 4, 8], batch_size=3)
sh.step()
json.dump({"ring": sh.stats()["ring"], "errors": sh.stats()["errors"]}, open(sys.argv[1] + ".tmp", "w"))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while not os.path.exists(sys.argv[2]):  # alive until the test has scraped its gauges
    time.sleep(0.05)
"""

EXPECTED_VIOLATIONS = {
    "page_table_oob": 3,
    "page_table_trailing_oob": 2,
    "batch_mismatch": 1,
    "seqlens_invalid": 4,
    "capacity_mismatch": 1,
    "degenerate_stride": 2,
    "tma_misaligned": 3,
}
PAGED_KV_CALLS = 5


def test_probe_metrics_from_a_real_daemon(h, promtool_path):
    assert set(EXPECTED_VIOLATIONS) == {c.label for c in rf.Check}  # every check is exercised
    out, go = h.scratch / "child.json", h.scratch / "go"
    proc = h.spawn([h.sentinel, "run", "--dir", h.dir, "--", h.python, "-c", WORKLOAD, str(out), str(go)], env=h.env())
    h.wait_for(lambda: out.exists() or proc.poll() is not None, timeout=120, what="the workload's probes")
    assert out.exists(), proc.stderr.read()
    child = json.loads(out.read_text())
    assert child["errors"] == 0

    # What the hooks wrote, straight from the ring: the daemon must report exactly this.
    reader = RingReader(child["ring"])
    try:
        recs = reader.tail(writer_alive=False).records
    finally:
        reader.close()
    probe = recs[recs["kind"] == rf.Kind.PROBE]
    emitted = {c.label: int(probe["a"][probe["code"] == c].sum()) for c in rf.Check}
    assert emitted == EXPECTED_VIOLATIONS
    ctx = recs[(recs["kind"] == rf.Kind.CONTEXT) & (recs["code"] == rf.Context.PAGED_KV)]
    assert int(ctx["c"].sum()) == PAGED_KV_CALLS and int(ctx["a"][-1]) == CLEAN_MAX

    daemon = h.daemon()

    def ready(state: str):
        def check():
            text = daemon.scrape()
            n = [v for lab, v in h.samples(text, "sentinel_processes", state=state)]
            return text if n == [1] and h.samples(text, "sentinel_batch_steps_total") else None
        return check

    text = h.wait_for(ready("running"), timeout=30, what="the running process's probe metrics")

    def one(name: str, **labels: str) -> float:
        found = h.samples(text, name, **labels)
        assert len(found) == 1, (name, labels, found)
        return found[0][1]

    got = {lab["check"]: v for lab, v in h.samples(text, "sentinel_invariant_violations_total")}
    assert got == EXPECTED_VIOLATIONS
    assert one("sentinel_page_table_headroom_pages") == NUM_PAGES - 1 - CLEAN_MAX
    assert one("sentinel_page_table_capacity_pages") == NUM_PAGES
    assert one("sentinel_probe_executions_total") == PAGED_KV_CALLS
    assert one("sentinel_batch_steps_total", condition="at_token_budget") == 1
    assert one("sentinel_batch_steps_total", condition="over_token_budget") == 1
    assert one("sentinel_batch_steps_total", condition="uncaptured_batch_size") == 1
    assert one("sentinel_batch_steps_total", condition="all") == 3
    assert one("sentinel_batch_tokens") == 100
    assert one("sentinel_batch_token_budget") == 8192

    promtool = promtool_path
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", (
        f"promtool rc={res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    )

    # Once it has exited, its counters stay (until --dead-ttl) and its gauges go: no alert can fire
    # on a dead process's last headroom or heartbeat.
    go.touch()
    assert proc.wait(timeout=60) == 0
    text = h.wait_for(ready("exited"), timeout=30, what="the exited process's metrics")
    assert {lab["check"]: v for lab, v in h.samples(text, "sentinel_invariant_violations_total")} == EXPECTED_VIOLATIONS
    assert one("sentinel_probe_executions_total") == PAGED_KV_CALLS
    for gauge in ("sentinel_page_table_headroom_pages", "sentinel_page_table_capacity_pages", "sentinel_batch_tokens",
                  "sentinel_batch_token_budget", "sentinel_heartbeat_age_seconds"):
        assert h.samples(text, gauge) == [], gauge


def test_bad_hook_config_values_are_counted_by_the_daemon(h):
    """A bad SENTINEL_* value is one log line in the serving process (the default is used) and a
    count on /metrics, so that a fleet-wide typo in a deployment shows up somewhere it is watched."""
    daemon = h.daemon()
    code = ("import torch, sentinel_hooks as sh\n"
            "sh.check_paged_kv(torch.zeros((2, 2), dtype=torch.int32), 10, name='attn')\n"
            "sh.check_paged_kv(torch.zeros((2, 2), dtype=torch.int32), 10, name='attn')\n"
            "sh.step()\nprint('done')\n")
    res = h.sentinel_run(code, env=h.env(SENTINEL_MODE="observ", SENTINEL_SAMPLE_EVERY="often"))
    assert res.returncode == 0 and res.stdout.strip() == "done", res.stderr
    assert "SENTINEL_MODE" in res.stderr and "SENTINEL_SAMPLE_EVERY" in res.stderr
    got = h.wait_for(lambda: h.samples(daemon.scrape(), "sentinel_hook_config_errors_total"), what="the config count")
    assert [v for _labels, v in got] == [2.0]  # two bad values, counted once, not once per probe call


def test_contain_mode_and_its_redirects_are_exported(h):
    """A process serving in contain mode answers some requests from the reserved page: /metrics says
    which processes run in that mode and how many entries they redirected. A contain page outside
    the cache, and a ring capacity that is not a power of two, are refused and counted like every
    other bad value."""
    daemon = h.daemon()
    code = ("import torch, sentinel_hooks as sh\n"
            "sh.check_paged_kv(torch.tensor([[10, 3, 12]], dtype=torch.int32), 10, name='attn')\n"
            "sh.check_paged_kv(torch.tensor([[100, 3]], dtype=torch.int32), 100, name='big')\n"
            "sh.step()\nprint('done')\n")
    bad = h.sentinel_run(code, env=h.env(SENTINEL_MODE="contain", SENTINEL_CONTAIN_PAGE="50",
                                          SENTINEL_RING_CAPACITY="1000"))
    assert bad.returncode == 0 and bad.stdout.strip() == "done", bad.stderr
    assert "SENTINEL_CONTAIN_PAGE=50" in bad.stderr and "SENTINEL_RING_CAPACITY" in bad.stderr

    def exported():
        text = daemon.scrape()
        exited = [v for _, v in h.samples(text, "sentinel_processes", state="exited")]
        return text if exited == [1.0] else None  # all its records read

    text = h.wait_for(exported, what="the contain-mode process's metrics")
    # 'attn' (10 pages) refused page 50 and observed its 2 bad entries; 'big' (100 pages) redirected its 1.
    assert [v for _, v in h.samples(text, "sentinel_hook_config_errors_total")] == [2.0]
    assert [v for _, v in h.samples(text, "sentinel_contained_entries_total")] == [1.0]
    assert [lab["mode"] for lab, _ in h.samples(text, "sentinel_process_info")] == ["contain"]
    assert sum(v for _, v in h.samples(text, "sentinel_invariant_violations_total", check="page_table_oob")) == 3.0
