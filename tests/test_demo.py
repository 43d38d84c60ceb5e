"""`sentinel demo` (what `make demo` runs) ends by itself, with what it promises to show."""


def test_demo_runs_and_catches_every_scenario(h, tmp_path):
    res = h.run([h.sentinel, "demo", "--duration", "8", "--dir", str(tmp_path / "d")], env=h.env(), timeout=900)  # a hang guard: about a minute here
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for needle in ("rank 1: page_table_oob", "rank 1: batch_mismatch", "rank 2: degenerate_stride",
                   "rank 2: process died", "collective hang in group 0 at #30: rank 1", "exception   Segmentation fault  [sigsegv]",
                   "evidence    page_table_at_capacity, page_table_oob", "Where to look next"):
        assert needle in out, needle
