"""The tensor-invariant probes on CPU: what each check writes to the ring, the modes, sampling,
never raising, and a property test against a plain-Python reference.

The probes keep process-global state (the writer, the config, the sites). Every test gets it
fresh through the ``ring`` fixture: its own SENTINEL_DIR, a closed-and-forgotten writer, no cached
config and no sites. Records are read back from the real ring file with ``RingReader``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sentinel_hooks as sh  # noqa: E402
from sentinel.daemon.ringreader import RingReader  # noqa: E402
from sentinel_hooks import config, probes, runtime  # noqa: E402
from sentinel_hooks import ringformat as rf  # noqa: E402

CHECK_ENV = ("SENTINEL_MODE", "SENTINEL_SAMPLE_EVERY", "SENTINEL_CHECKS", "SENTINEL_CONTAIN_PAGE", "SENTINEL_DISABLE",
             "SENTINEL_RING_CAPACITY", "SENTINEL_FILE_MODE", "SENTINEL_DIR_MODE", "SENTINEL_EAGER")
PROBE, CONTEXT = int(rf.Kind.PROBE), int(rf.Kind.CONTEXT)
OOB, TRAIL = int(rf.Check.PAGE_TABLE_OOB), int(rf.Check.PAGE_TABLE_TRAILING_OOB)
BATCH, SEQ, CAP = int(rf.Check.BATCH_MISMATCH), int(rf.Check.SEQLENS_INVALID), int(rf.Check.CAPACITY_MISMATCH)
DEGEN, TMA = int(rf.Check.DEGENERATE_STRIDE), int(rf.Check.TMA_MISALIGNED)
PAGED_KV, BATCH_CTX = int(rf.Context.PAGED_KV), int(rf.Context.BATCH)


def _reset_probe_state() -> None:
    runtime.reset_for_tests()
    config.reset()
    probes._sites.clear()
    probes._refused.clear()


class Ring:
    """This process's ring, read back record by record: each call returns what is new since the last."""

    def __init__(self, base: str) -> None:
        self.dir = base
        self.reader: RingReader | None = None

    def new(self) -> list[dict]:
        """New PROBE and CONTEXT records as dicts: kind, code, a, b, c, aux and the tag's name."""
        path = sh.stats()["ring"]
        if path is None:
            return []
        assert Path(path).parent == Path(self.dir) / "rings", path
        if self.reader is None:
            self.reader = RingReader(path)
        recs = self.reader.tail(writer_alive=True).records
        out = []
        for r in recs:
            if int(r["kind"]) in (PROBE, CONTEXT):
                out.append({"kind": int(r["kind"]), "code": int(r["code"]), "a": int(r["a"]), "b": int(r["b"]),
                            "c": int(r["c"]), "aux": int(r["aux"]), "name": self.reader.name(int(r["tag"]))})
        return out

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


@pytest.fixture
def ring(sdir, monkeypatch):
    for key in CHECK_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SENTINEL_DIR", sdir)
    _reset_probe_state()
    r = Ring(sdir)
    try:
        yield r
    finally:
        r.close()
        _reset_probe_state()


def probe(code: int, a: int, b: int, c: int, aux: int = 0, name: str = "paged_kv") -> dict:
    return {"kind": PROBE, "code": code, "a": a, "b": b, "c": c, "aux": aux, "name": name}


def kv_ctx(mx: int, num_pages: int, rows: int, name: str = "paged_kv") -> dict:
    return {"kind": CONTEXT, "code": PAGED_KV, "a": mx, "b": num_pages, "c": 1, "aux": rows, "name": name}


def only(recs: list[dict], kind: int, code: int | None = None) -> list[dict]:
    return [r for r in recs if r["kind"] == kind and (code is None or r["code"] == code)]


DTYPES = pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])


# -- 1. check_paged_kv boundaries ------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_last_page_passes_one_past_fails(ring, dtype, layout):
    num_pages = 8657
    rows = [[0, 17, 4000], [num_pages - 1, 2, 3]]

    def table(values):
        t = torch.tensor(values, dtype=dtype)
        if layout == "transposed":  # the same values through a non-contiguous (transposed) view
            t = t.t().contiguous().t()
            assert not t.is_contiguous() and t.tolist() == values
        return t

    sh.check_paged_kv(table(rows), num_pages)
    assert ring.new() == [kv_ctx(num_pages - 1, num_pages, 2)]  # max index num_pages-1: headroom 0, no PROBE

    rows[1][0] = num_pages  # seed 000: one page past the buffer
    sh.check_paged_kv(table(rows), num_pages)
    assert ring.new() == [kv_ctx(num_pages, num_pages, 2), probe(OOB, 1, num_pages, num_pages)]

    rows[1][0] = -1
    sh.check_paged_kv(table(rows), num_pages)
    assert ring.new() == [kv_ctx(4000, num_pages, 2), probe(OOB, 1, -1, num_pages)]


@DTYPES
def test_empty_batch_writes_context_with_no_max(ring, dtype):
    sh.check_paged_kv(torch.empty((0, 8), dtype=dtype), 100, seq_lens=torch.empty(0, dtype=torch.int32), page_size=16,
                      cu_seqlens_q=torch.zeros(1, dtype=torch.int32), batch_size=0)
    sh.check_paged_kv(torch.empty((0, 8), dtype=dtype), 100)
    assert ring.new() == [kv_ctx(-1, 100, 0), kv_ctx(-1, 100, 0)]
    assert sh.stats()["errors"] == 0


def test_int64_indices_beyond_int32(ring):
    num_pages = 3 * 2**31
    t = torch.tensor([[num_pages - 1, 0], [5, num_pages + 7]], dtype=torch.int64)
    sh.check_paged_kv(t, num_pages)
    assert ring.new() == [kv_ctx(num_pages + 7, num_pages, 2), probe(OOB, 1, num_pages + 7, num_pages)]


# -- 2. valid prefix vs trailing -------------------------------------------------------------------

@DTYPES
def test_prefix_oob_and_trailing_oob_are_reported_apart(ring, dtype):
    num_pages, page_size = 50, 16
    # Row 0 reads ceil(20/16) = 2 pages (cols 0, 1); row 1 reads none (seq_len 0); row 2 reads all 4.
    seq_lens = torch.tensor([20, 0, 64], dtype=torch.int32)
    t = torch.tensor([[3, 50, 99, 7],      # col 1 in the prefix: oob; col 2 past it: trailing
                      [-4, 60, 1, 2],      # all past the prefix: two trailing
                      [1, 2, 3, 49]], dtype=dtype)
    sh.check_paged_kv(t, num_pages, seq_lens=seq_lens, page_size=page_size)
    assert ring.new() == [kv_ctx(50, num_pages, 3), probe(OOB, 1, 50, num_pages), probe(TRAIL, 3, -1, num_pages)]

    t[0, 1] = 5  # only trailing garbage left: a separate check, never page_table_oob
    sh.check_paged_kv(t, num_pages, seq_lens=seq_lens, page_size=page_size)
    assert ring.new() == [kv_ctx(49, num_pages, 3), probe(TRAIL, 3, -1, num_pages)]

    # Exactly at the prefix edge: seq_len 32 reads 2 pages; col 2 is the first trailing one.
    edge = torch.tensor([[0, 1, 50, 50]], dtype=dtype)
    sh.check_paged_kv(edge, num_pages, seq_lens=torch.tensor([32]), page_size=page_size, name="edge")
    assert ring.new() == [kv_ctx(1, num_pages, 1, "edge"), probe(TRAIL, 2, -1, num_pages, name="edge")]
    sh.check_paged_kv(edge, num_pages, seq_lens=torch.tensor([33]), page_size=page_size, name="edge")
    assert ring.new() == [kv_ctx(50, num_pages, 1, "edge"), probe(OOB, 1, 50, num_pages, name="edge"),
                          probe(TRAIL, 1, -1, num_pages, name="edge")]


# -- 3. batch_mismatch (seed 001) ------------------------------------------------------------------

def test_batch_size_disagreeing_with_page_table_rows(ring):
    t = torch.zeros((10, 4), dtype=torch.int32)
    sh.check_paged_kv(t, 100, batch_size=12)
    recs = ring.new()
    assert only(recs, PROBE) == [probe(BATCH, 1, 12, 10, aux=0)]
    assert only(recs, CONTEXT) == [kv_ctx(0, 100, 10)]  # the index check still ran


def test_seq_lens_rows_disagreeing_without_batch_size(ring):
    t = torch.zeros((4, 4), dtype=torch.int32)
    sh.check_paged_kv(t, 100, seq_lens=torch.full((3,), 16), page_size=16)
    assert only(ring.new(), PROBE) == [probe(BATCH, 1, 4, 3, aux=1)]  # aux: which dimension (seq_lens)


def test_cu_seqlens_q_disagreeing(ring):
    t = torch.zeros((4, 4), dtype=torch.int32)
    sh.check_paged_kv(t, 100, cu_seqlens_q=torch.tensor([0, 1, 2, 3]))  # 3 sequences for 4 rows
    assert only(ring.new(), PROBE) == [probe(BATCH, 1, 4, 3, aux=1)]
    sh.check_paged_kv(t, 100, seq_lens=torch.full((4,), 16), page_size=16,
                      cu_seqlens_q=torch.tensor([0, 1, 2, 3, 4, 5]), batch_size=4)
    assert only(ring.new(), PROBE) == [probe(BATCH, 1, 4, 5, aux=2)]


def test_consistent_batch_writes_no_probe(ring):
    t = torch.tensor([[1, 2], [3, 4], [5, 6]], dtype=torch.int32)
    sh.check_paged_kv(t, 7, seq_lens=torch.tensor([32, 17, 1]), page_size=16,
                      cu_seqlens_q=torch.tensor([0, 1, 2, 3], dtype=torch.int32), batch_size=3)
    assert ring.new() == [kv_ctx(5, 7, 3)]  # row 2 (seq_len 1) reads one page: the 6 is past its prefix


# -- 4. seqlens_invalid ----------------------------------------------------------------------------

@pytest.mark.parametrize("case, seq_lens, cu, count, offending", [
    ("negative", [-3, 16], None, 1, -3),
    ("over_capacity", [33, 32], None, 1, 33),  # 2 pages x 16 = 32 tokens per row at most
    ("both", [-5, 1000], None, 2, -5),  # the first one
    ("cu_non_monotone", [16, 16], [0, 3, 2], 1, 2),  # where it goes down
    ("cu_not_from_zero", [16, 16], [1, 2, 3], 1, 1),
    ("cu_both", [16, 16], [2, 1, 3], 1, 2),  # one bad entry, however many ways it is bad
    ("all", [-2, 33], [1, 0, 3], 3, -2),
])
def test_seqlens_invalid(ring, case, seq_lens, cu, count, offending):
    """The record carries the first offending length (b), for the daemon's log line."""
    t = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    sh.check_paged_kv(t, 10, seq_lens=torch.tensor(seq_lens, dtype=torch.int32), page_size=16, cu_seqlens_q=cu_t)
    assert only(ring.new(), PROBE) == [probe(SEQ, count, offending, 2 * 16)]


def test_valid_seqlens_at_the_limit_pass(ring):
    t = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    sh.check_paged_kv(t, 10, seq_lens=torch.tensor([32, 0]), page_size=16, cu_seqlens_q=torch.tensor([0, 0, 5]))
    assert only(ring.new(), PROBE) == []


# -- 5. capacity_mismatch (seed 000, structural) ---------------------------------------------------

def test_allocator_capacity_over_buffer(ring):
    t = torch.zeros((1, 1), dtype=torch.int32)
    sh.check_paged_kv(t, 8657, allocator_capacity=8658)
    assert only(ring.new(), PROBE) == [probe(CAP, 1, 8658, 8657)]
    sh.check_paged_kv(t, 8657, allocator_capacity=8657)
    sh.check_paged_kv(t, 8657, allocator_capacity=100)
    assert only(ring.new(), PROBE) == []


# -- 6. check_strides (seed 002) -------------------------------------------------------------------

def seed002_view(n: int = 3):
    """(n, 16, 1, 128) bf16 whose size-1 dim has stride 1: contiguous by torch's rules."""
    v = torch.zeros((n, 16, 128, 1), dtype=torch.bfloat16).transpose(2, 3)
    assert v.shape == (n, 16, 1, 128) and v.stride() == (2048, 128, 1, 1) and v.is_contiguous()
    return v


def strides_rec(code: int, b: int, c: int, aux: int, name: str = "kv") -> dict:
    return probe(code, 1, b, c, aux=aux, name=name)


def test_degenerate_size1_stride(ring):
    sh.check_strides(seed002_view(), name="kv")
    assert ring.new() == [strides_rec(DEGEN, 2, 1, 128), strides_rec(TMA, 2, 2, 16)]


def test_degenerate_without_tma(ring):
    sh.check_strides(seed002_view(), name="kv", tma=False)
    assert ring.new() == [strides_rec(DEGEN, 2, 1, 128)]


def test_contiguous_tensor_passes(ring):
    t = torch.zeros((3, 16, 1, 128), dtype=torch.bfloat16)
    assert t.data_ptr() % 16 == 0
    sh.check_strides(t, name="kv")
    sh.check_strides(t.view(48, 128), name="kv")
    sh.check_strides(torch.zeros(()), name="scalar")
    assert ring.new() == []


def test_misaligned_base_pointer(ring):
    base = torch.zeros(64, dtype=torch.bfloat16)
    assert base.data_ptr() % 16 == 0
    sh.check_strides(base[1:], name="kv")  # 2 bytes past a 16-byte boundary
    assert ring.new() == [strides_rec(TMA, -1, 2, 16)]
    sh.check_strides(base[1:], name="kv", tma=False)
    assert ring.new() == []


def test_innermost_not_contiguous(ring):
    t = torch.zeros((8, 16), dtype=torch.bfloat16)[:, ::2]  # shape (8, 8), strides (16, 2)
    sh.check_strides(t, name="kv")
    assert ring.new() == [strides_rec(TMA, 1, 4, 16)]


def test_outer_stride_not_16_byte_multiple(ring):
    t = torch.zeros((4, 13), dtype=torch.bfloat16)[:, :8]  # row stride 26 bytes
    sh.check_strides(t, name="kv")
    assert ring.new() == [strides_rec(TMA, 0, 26, 16)]


# -- 7. note_batch (seed 003) ----------------------------------------------------------------------

def batch_ctx(tokens: int, budget: int, flags: int, size: int, name: str = "batch") -> dict:
    return {"kind": CONTEXT, "code": BATCH_CTX, "a": tokens, "b": budget, "c": flags, "aux": size, "name": name}


def test_note_batch_flags(ring):
    sizes = [1, 2, 4, 8, 16]
    sh.note_batch(8192, token_budget=8192)
    sh.note_batch(8191, token_budget=8192)
    sh.note_batch(9000, token_budget=8192)
    sh.note_batch(100, token_budget=8192, graph_sizes=sizes, batch_size=3)  # no graph for 3
    sh.note_batch(100, token_budget=8192, graph_sizes=sizes, batch_size=4)
    sh.note_batch(8, graph_sizes=sizes)  # batch size defaults to the token count: a hit
    sh.note_batch(8192, token_budget=8192, graph_sizes=sizes, batch_size=16, name="decode")
    known, hit = rf.BATCH_GRAPH_KNOWN, rf.BATCH_GRAPH_HIT
    assert ring.new() == [
        batch_ctx(8192, 8192, rf.BATCH_AT_BUDGET, 8192),
        batch_ctx(8191, 8192, 0, 8191),
        batch_ctx(9000, 8192, rf.BATCH_OVER_BUDGET, 9000),
        batch_ctx(100, 8192, known, 3),
        batch_ctx(100, 8192, known | hit, 4),
        batch_ctx(8, -1, known | hit, 8),
        batch_ctx(8192, 8192, rf.BATCH_AT_BUDGET | known | hit, 16, "decode"),
    ]


# -- 8. modes --------------------------------------------------------------------------------------

def _evidence_files(sdir: str) -> list[Path]:
    folder = Path(sdir) / "evidence"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_trap_raises_before_returning_with_json_evidence(ring, sdir):
    sh.configure(mode="trap")
    t = torch.tensor([[1, 2, 3], [4, 8657, 5]], dtype=torch.int32)
    reached = False
    with pytest.raises(sh.SentinelViolation) as info:
        sh.check_paged_kv(t, 8657, seq_lens=torch.tensor([48, 48]), page_size=16, name="attn.layer0")
        reached = True
    assert not reached
    exc = info.value
    msg = str(exc)
    assert "page_table_oob" in msg and "attn.layer0" in msg and "8657" in msg, msg
    assert exc.check == "page_table_oob" and exc.name == "attn.layer0"
    assert exc.details["max_offending_index"] == 8657 and exc.details["violations"] == 1
    assert t[1, 1] == 8657  # trap does not alter the table
    # The violation is on record before the raise.
    assert ring.new() == [kv_ctx(8657, 8657, 2, "attn.layer0"), probe(OOB, 1, 8657, 8657, name="attn.layer0")]

    files = _evidence_files(sdir)
    assert [str(p) for p in files] == [exc.evidence], (files, exc.evidence)
    path = files[0]
    assert path.suffix == ".json" and stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert raw.lstrip().startswith(b"{")  # JSON text, never a pickle
    doc = json.loads(raw)
    assert doc["check"] == "page_table_oob" and doc["name"] == "attn.layer0" and doc["pid"] == os.getpid()
    assert doc["page_table"]["values"] == [[1, 2, 3], [4, 8657, 5]]
    assert doc["page_table"]["shape"] == [2, 3] and doc["page_table"]["dtype"] == "torch.int32"
    assert doc["seq_lens"]["values"] == [48, 48] and doc["page_size"] == 16 and doc["num_pages"] == 8657


@pytest.mark.parametrize("what", ["batch", "capacity", "strides"])
def test_trap_other_checks(ring, sdir, what):
    sh.configure(mode="trap")
    with pytest.raises(sh.SentinelViolation) as info:
        if what == "batch":
            sh.check_paged_kv(torch.zeros((10, 2), dtype=torch.int32), 5, batch_size=12, name="site_b")
        elif what == "capacity":
            sh.check_paged_kv(torch.zeros((1, 2), dtype=torch.int32), 8657, allocator_capacity=8658, name="site_c")
        else:
            sh.check_strides(seed002_view(), name="site_s")
    exc = info.value
    check, name, value = {"batch": ("batch_mismatch", "site_b", "12"),
                          "capacity": ("capacity_mismatch", "site_c", "8658"),
                          "strides": ("degenerate_stride", "site_s", "stride 1")}[what]
    assert exc.check == check and f"{check} in {name}" in str(exc) and value in str(exc), str(exc)
    doc = json.loads(Path(exc.evidence).read_text())
    assert doc["check"] == check
    if what == "batch":
        assert doc["page_table"]["values"] == [[0, 0]] * 10
    assert len(only(ring.new(), PROBE)) == 1  # trap stops at the first violation


def test_observe_never_raises(ring, sdir):
    assert probes.config().mode == "observe"
    t = torch.tensor([[1, 99]], dtype=torch.int64)
    sh.check_paged_kv(t, 10, batch_size=2, allocator_capacity=11)
    sh.check_strides(seed002_view())
    assert t.tolist() == [[1, 99]]
    codes = [r["code"] for r in only(ring.new(), PROBE)]
    assert codes == [BATCH, CAP, OOB, DEGEN, TMA]
    assert _evidence_files(sdir) == []


@DTYPES
def test_contain_rewrites_in_prefix_entries_in_place(ring, monkeypatch, dtype):
    monkeypatch.setenv("SENTINEL_MODE", "contain")
    monkeypatch.setenv("SENTINEL_CONTAIN_PAGE", "3")
    base = torch.tensor([[0, 1], [10, -2], [2, 11]], dtype=dtype)  # transposed below: rows are columns
    t = base.t()  # (2, 3) non-contiguous view: contain must write through to ``base``
    assert t.tolist() == [[0, 10, 2], [1, -2, 11]]
    seq_lens = torch.tensor([48, 32])  # row 0 reads all 3 pages, row 1 the first 2
    sh.check_paged_kv(t, 10, seq_lens=seq_lens, page_size=16)
    # In-prefix bad entries redirected to page 3; the trailing 11 is not read by the kernel and stays.
    assert t.tolist() == [[0, 3, 2], [1, 3, 11]]
    assert base.tolist() == [[0, 1], [3, 3], [2, 11]]
    assert ring.new() == [kv_ctx(10, 10, 2), probe(OOB, 2, 10, 10), probe(TRAIL, 1, -1, 10)]
    sh.check_paged_kv(t, 10, seq_lens=seq_lens, page_size=16)
    assert ring.new() == [kv_ctx(3, 10, 2), probe(TRAIL, 1, -1, 10)]


def _events(code: int) -> list[tuple[int, str]]:
    """This process's EVENT records of ``code``: (a, tag name)."""
    reader = RingReader(sh.stats()["ring"])
    try:
        recs = reader.tail(writer_alive=True).records
        ev = recs[(recs["kind"] == rf.Kind.EVENT) & (recs["code"] == code)]
        return [(int(r["a"]), reader.name(int(r["tag"]))) for r in ev]
    finally:
        reader.close()


def _mode_word() -> str:
    reader = RingReader(sh.stats()["ring"])
    try:
        return rf.PROBE_MODES[reader.header["mode"]]
    finally:
        reader.close()


def test_contain_counts_what_it_redirects_and_publishes_the_mode(ring, monkeypatch):
    monkeypatch.setenv("SENTINEL_MODE", "contain")
    monkeypatch.setenv("SENTINEL_CONTAIN_PAGE", "0")
    t = torch.tensor([[10, 3, -1]], dtype=torch.int32)
    sh.check_paged_kv(t, 10)
    assert t.tolist() == [[0, 3, 0]]
    assert _events(rf.CONTAINED_EVENT) == [(2, "paged_kv")]
    assert _mode_word() == "contain"
    sh.configure(mode="observe")
    assert _mode_word() == "observe"


def test_a_contain_page_outside_the_cache_is_refused_and_counted(ring, monkeypatch, caplog):
    """SENTINEL_CONTAIN_PAGE=99999 once turned an off-by-one into a far out-of-bounds read and crashed
    the server. A page outside [0, num_pages) is never written: the call observes, and the setting
    is logged and counted as a config error, once per site."""
    monkeypatch.setenv("SENTINEL_MODE", "contain")
    monkeypatch.setenv("SENTINEL_CONTAIN_PAGE", "99999")
    t = torch.tensor([[10, 3]], dtype=torch.int32)
    for _ in range(3):
        sh.check_paged_kv(t, 10, name="attn")
    assert t.tolist() == [[10, 3]]  # untouched
    assert only(ring.new(), PROBE) == [probe(OOB, 1, 10, 10, name="attn")] * 3  # still reported
    assert _events(rf.CONTAINED_EVENT) == []
    assert _events(rf.CONFIG_ERROR_EVENT) == [(1, "")]
    assert sum("SENTINEL_CONTAIN_PAGE=99999" in r.getMessage() for r in caplog.records) == 1
    big = torch.tensor([[100000, 3]], dtype=torch.int32)
    sh.check_paged_kv(big, 100000, name="big")  # there the page is a page of the cache: redirected
    assert big.tolist() == [[99999, 3]]
    assert _events(rf.CONTAINED_EVENT) == [(1, "big")]


def test_a_bad_ring_capacity_is_counted(ring, monkeypatch):
    monkeypatch.setenv("SENTINEL_RING_CAPACITY", "1000")
    sh.step()
    assert _events(rf.CONFIG_ERROR_EVENT) == [(1, "")]
    reader = RingReader(sh.stats()["ring"])
    try:
        assert reader.capacity == rf.DEFAULT_CAPACITY
    finally:
        reader.close()


def test_configure_rejects_bad_values(ring):
    with pytest.raises(ValueError, match="mode"):
        sh.configure(mode="bogus")
    with pytest.raises(ValueError):
        sh.configure(sample_every=0)
    with pytest.raises(ValueError, match="unknown probes"):
        sh.configure(checks=["paged_kv", "nope"])
    cfg = probes.config()
    assert (cfg.mode, cfg.sample_every, cfg.enabled) == ("observe", 1, frozenset(("paged_kv", "strides", "batch")))


def test_bogus_mode_env_logs_once_and_observes(ring, monkeypatch, caplog):
    monkeypatch.setenv("SENTINEL_MODE", "bogus")
    caplog.set_level(logging.WARNING, logger="sentinel_hooks")
    t = torch.tensor([[0, 50]], dtype=torch.int32)
    for _ in range(3):
        sh.check_paged_kv(t, 10)  # would raise in trap mode
    assert probes.config().mode == "observe"
    lines = [r.getMessage() for r in caplog.records if r.name == "sentinel_hooks"]
    assert len(lines) == 1 and "SENTINEL_MODE" in lines[0] and "bogus" in lines[0] and "observe" in lines[0], lines
    assert only(ring.new(), PROBE) == [probe(OOB, 1, 50, 10)] * 3


# -- 9. sampling and enable flags ------------------------------------------------------------------

def test_sample_every(ring, monkeypatch):
    monkeypatch.setenv("SENTINEL_SAMPLE_EVERY", "4")
    t = torch.tensor([[0, 20]], dtype=torch.int32)
    for _ in range(8):
        sh.check_paged_kv(t, 10)
        sh.check_strides(seed002_view(), name="kv", tma=False)
        sh.note_batch(5)
    sh.check_paged_kv(t, 10, name="other")  # sites sample independently: its first call runs
    recs = ring.new()
    assert only(recs, CONTEXT, PAGED_KV) == [kv_ctx(20, 10, 1)] * 2 + [kv_ctx(20, 10, 1, "other")]
    assert only(recs, PROBE, OOB) == [probe(OOB, 1, 20, 10)] * 2 + [probe(OOB, 1, 20, 10, name="other")]
    assert len(only(recs, PROBE, DEGEN)) == 2
    assert len(only(recs, CONTEXT, BATCH_CTX)) == 2


def test_checks_env_disables_paged_kv(ring, monkeypatch):
    monkeypatch.setenv("SENTINEL_CHECKS", "strides")
    sh.check_paged_kv(torch.tensor([[0, 20]]), 10, batch_size=7, allocator_capacity=99)
    sh.note_batch(10, token_budget=10)
    assert ring.new() == []
    sh.check_strides(seed002_view(), name="kv", tma=False)
    assert ring.new() == [strides_rec(DEGEN, 2, 1, 128)]
    assert sh.stats()["errors"] == 0


def test_configure_checks_at_runtime(ring):
    sh.configure(checks=["batch"])
    sh.check_strides(seed002_view())
    sh.check_paged_kv(torch.tensor([[0, 20]]), 10)
    sh.note_batch(4, token_budget=4)
    assert ring.new() == [batch_ctx(4, 4, rf.BATCH_AT_BUDGET, 4)]


# -- 10. never raise -------------------------------------------------------------------------------

def test_garbage_arguments_never_raise(ring, caplog):
    caplog.set_level(logging.WARNING, logger="sentinel_hooks")
    good = torch.zeros((2, 2), dtype=torch.int32)
    sh.check_paged_kv(None, 10)
    sh.check_paged_kv(good, "x")
    sh.check_paged_kv(good, 10, seq_lens="abc", page_size=16)
    sh.check_strides(None)
    sh.check_strides("not a tensor")
    sh.note_batch("many")
    assert sh.stats()["errors"] == 6
    for _ in range(2):
        sh.check_paged_kv(torch.zeros((2, 2, 2), dtype=torch.int32), 10, name="cube")  # 3-D: skipped, logged
    assert sh.stats()["errors"] == 6  # a 3-D table is a logged skip, not a failure
    lines = [r.getMessage() for r in caplog.records if r.name == "sentinel_hooks"]
    assert len(lines) == 4, lines  # one per failing hook and one for the 3-D table: logged once each
    assert sum("check_paged_kv failed" in ln for ln in lines) == 1
    assert sum("cube" in ln and "3-D" in ln for ln in lines) == 1
    assert ring.new() == []  # nothing half-written
    # The caller carries on and the probes still work.
    sh.check_paged_kv(good, 1)
    assert ring.new() == [kv_ctx(0, 1, 2)]


def test_garbage_in_a_fresh_process_program_continues(h):
    code = r"""
import json, sys, torch, sentinel_hooks as sh
sh.check_paged_kv(None, 10)
sh.check_paged_kv(torch.zeros((2, 2, 2), dtype=torch.int32), 10)
sh.check_paged_kv(torch.zeros((2, 2), dtype=torch.int32), num_pages="x")
sh.check_strides(object())
sh.note_batch(None)
print("continued", json.dumps(sh.stats()["errors"]))
"""
    res = h.run_py(code, env=h.hooked_env(SENTINEL_MODE="bogus"))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "continued 4\n"
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("sentinel:")]
    # SENTINEL_MODE once, check_paged_kv once (for two failures), the 3-D skip, check_strides, note_batch.
    assert len(lines) == 5, res.stderr
    assert sum("SENTINEL_MODE" in ln for ln in lines) == 1


# -- 11. property: the probe agrees with a plain-Python reference ---------------------------------

@st.composite
def paged_cases(draw):
    rows = draw(st.integers(0, 5))
    cols = draw(st.integers(1, 6))
    num_pages = draw(st.integers(1, 20))
    values = draw(st.lists(st.lists(st.integers(-3, 24), min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    page_size = draw(st.sampled_from([None, 1, 4, 16]))
    seq_lens = None
    if page_size is not None:
        seq_lens = draw(st.lists(st.integers(-2, cols * page_size + 2), min_size=rows, max_size=rows))
    dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    transposed = draw(st.booleans())
    return values, rows, cols, num_pages, page_size, seq_lens, dtype, transposed


def reference(values, cols, num_pages, page_size, seq_lens):
    oob = trail = 0
    mx = -1
    bad_in_prefix = []
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            in_prefix = seq_lens is None or j * page_size < seq_lens[i]
            bad = v < 0 or v >= num_pages
            if in_prefix:
                mx = max(mx, v)
                if bad:
                    oob += 1
                    bad_in_prefix.append(v)
            elif bad:
                trail += 1
    seqbad = 0 if seq_lens is None else sum(1 for s in seq_lens if s < 0 or s > cols * page_size)
    return oob, trail, mx, bad_in_prefix, seqbad


@settings(max_examples=60, deadline=None,  # and no generation-speed health check: not this machine's speed
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=paged_cases())
def test_property_counts_match_reference(ring, case):
    values, rows, cols, num_pages, page_size, seq_lens, dtype, transposed = case
    t = torch.tensor(values, dtype=dtype).reshape(rows, cols)
    if transposed:
        t = t.t().contiguous().t()
    sl = None if seq_lens is None else torch.tensor(seq_lens, dtype=torch.int32).reshape(rows)
    sh.check_paged_kv(t, num_pages, seq_lens=sl, page_size=page_size, name="prop")
    recs = ring.new()
    oob, trail, mx, bad_in_prefix, seqbad = reference(values, cols, num_pages, page_size, seq_lens)

    assert only(recs, CONTEXT) == [kv_ctx(mx, num_pages, rows, "prop")]
    got = {r["code"]: r for r in only(recs, PROBE)}
    assert set(got) == {code for code, n in ((OOB, oob), (TRAIL, trail), (SEQ, seqbad)) if n}
    if oob:
        assert (got[OOB]["a"], got[OOB]["c"]) == (oob, num_pages)
        # the offending index: the largest past the end, else the most negative
        assert got[OOB]["b"] == (max(bad_in_prefix) if max(bad_in_prefix) >= num_pages else min(bad_in_prefix))
    if trail:
        assert (got[TRAIL]["a"], got[TRAIL]["b"], got[TRAIL]["c"]) == (trail, -1, num_pages)
    if seqbad:
        assert (got[SEQ]["a"], got[SEQ]["c"]) == (seqbad, cols * page_size)
    assert t.tolist() == [list(r) for r in values]  # observe mode leaves the table alone


# -- regressions: bugs this suite found -----------------------------------------------------------

def test_negative_offending_index_is_reported(ring):
    sh.check_paged_kv(torch.tensor([[0, -7]], dtype=torch.int32), 10)
    assert only(ring.new(), PROBE) == [probe(OOB, 1, -7, 10)]


def test_every_trap_keeps_its_evidence(ring, sdir):
    sh.configure(mode="trap")
    t = torch.tensor([[0, 10]], dtype=torch.int32)
    paths: list[str | None] = []
    stamps: set[str] = set()
    # Trap until two traps share an evidence timestamp (to the second), the case under test: the
    # second of the same second must not replace the first. How many that takes depends on where in
    # a second the first trap lands and on this machine's speed, not on the property; the deadline
    # only bounds a hang.
    deadline = time.monotonic() + 60
    while len(stamps) == len(paths):
        assert time.monotonic() < deadline, f"no two of {len(paths)} traps shared a timestamp in 60 s: {paths[-3:]}"
        with pytest.raises(sh.SentinelViolation) as info:
            sh.check_paged_kv(t, 10, name="attn")
        paths.append(info.value.evidence)
        assert paths[-1] is not None, "a trap kept no evidence"
        stamps.add(Path(paths[-1]).name.split("-", 1)[0])
    assert sh.stats()["errors"] == 0
    assert len(set(paths)) == len(paths) and [str(p) for p in _evidence_files(sdir)] == sorted(paths)


def test_graph_sizes_list_mutated_in_place(ring):
    sizes = [1, 2]
    sh.note_batch(4, graph_sizes=sizes)
    sizes.append(4)  # the engine captured a graph for batch size 4
    sh.note_batch(4, graph_sizes=sizes)
    known, hit = rf.BATCH_GRAPH_KNOWN, rf.BATCH_GRAPH_HIT
    assert [r["c"] for r in ring.new()] == [known, known | hit]
