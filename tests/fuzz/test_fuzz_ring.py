"""Hostile ring files, through the daemon's own reading path: the header parser
(``ringreader.parse_header``), the reader (``RingReader.tail``), the state (``ProcessState.ingest``)
and what consumes it (hang detector, journal, exporter).

Every input is either read or rejected with ``RingFormatError`` and a reason label; records with
out-of-range values are refused and counted (``bad_records``); nothing else may escape, hang, or
leave a counter the journal cannot store. The inputs that broke the daemon before its fixes are
pinned as ``@example``s.
"""

from __future__ import annotations

import mmap
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator

import pytest
from fuzz_support import count, fuzz, mutate
from hypothesis import example
from hypothesis import strategies as st
from prometheus_client import generate_latest

from sentinel.daemon.journal import Journal
from sentinel.daemon.ringreader import MAX_SEQ, RingReader, parse_header
from sentinel.daemon.snapshot import Snapshot
from sentinel.daemon.state import MAX_COUNT, MAX_GROUP_SIZE, ProcessState
from sentinel.exporter.collectors import build_registry
from sentinel.triage.hangs import HangConfig, HangDetector
from sentinel_hooks import ringformat as rf
from sentinel_hooks.writer import RingWriter

REASONS = {"truncated", "bad_magic", "bad_version", "bad_geometry", "bad_header"}
CAP = 64
U64 = (1 << 64) - 1


def _offsets(fields: tuple[tuple[str, str], ...]) -> dict[str, tuple[int, str]]:
    out, pos = {}, 0
    for name, code in fields:
        out[name] = (pos, code)
        pos += struct.calcsize("<" + code)
    return out


HEADER_AT = _offsets(rf.HEADER_FIELDS)
HEADER_AT.update({w.name.lower(): (rf.WORDS_OFFSET + 8 * w, "Q") for w in rf.Word})
RECORD_AT = _offsets(rf.RECORD_FIELDS)
EDGES = (0, 1, 2, 3, 7, 8, 63, 64, 65, 255, 256, 1023, 1024, 1 << 16, (1 << 26) + 1, (1 << 31) - 1, 1 << 31,
         (1 << 32) - 1, 1 << 32, 1 << 40, (1 << 62), MAX_SEQ, 1 << 63, U64, -1, -2, -(1 << 31), -(1 << 63))


def fit(value: int, code: str) -> int:
    """``value`` wrapped into the range of struct code ``code`` (two's complement, like a raw write)."""
    bits = struct.calcsize("<" + code) * 8
    value &= (1 << bits) - 1
    if code.islower() and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def put(buf: bytearray | mmap.mmap, offset: int, code: str, value: int | bytes) -> None:
    if code.endswith("s"):
        struct.pack_into("<" + code, buf, offset, value)
    else:
        struct.pack_into("<" + code, buf, offset, fit(int(value), code))


def valid_header(capacity: int = CAP, **identity: object) -> bytearray:
    buf = bytearray(rf.HEADER_SIZE)
    buf[: rf.HEADER.size] = rf.pack_header({"pid": 4242, "host": "fuzz", "rank": 0, **identity}, capacity, 10**18)
    return buf


def check_header(buf: bytes | bytearray) -> dict | None:
    """The daemon's header parse: a header it can use, or RingFormatError with a known reason."""
    try:
        h = parse_header(bytes(buf))
    except rf.RingFormatError as exc:
        assert exc.reason in REASONS and str(exc), exc
        return None
    cap = h["capacity"]
    assert h["magic"] == rf.MAGIC and h["version"] == rf.VERSION
    assert 0 < cap <= 1 << 26 and cap & (cap - 1) == 0
    assert all(0 <= h[k] <= MAX_SEQ for k in ("created_ns", "step", "last_step_ns", "dropped", "exit_ns"))
    assert all(isinstance(h[k], str) and "\0" not in h[k] for k in rf.IDENTITY_TEXT)
    state = ProcessState(ring="fuzz", identity={})
    state.apply_header(h)  # what the daemon does next with an accepted header
    return h


# -- headers: structure-aware -------------------------------------------------------------------

def field_value(code: str) -> st.SearchStrategy:
    if code.endswith("s"):
        return st.binary(max_size=int(code[:-1]))
    return st.one_of(st.sampled_from(EDGES), st.integers(-(1 << 64), 1 << 64)).map(lambda v: fit(v, code))


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A valid header with a few fields overridden (magic, geometry, identity, counters), perhaps cut short."""
    cap = draw(st.sampled_from([1, 2, CAP, 1 << 16, 1 << 26]))
    buf = valid_header(cap)
    for name in draw(st.lists(st.sampled_from(sorted(HEADER_AT)), max_size=4)):
        off, code = HEADER_AT[name]
        put(buf, off, code, draw(field_value(code)))
    cut = draw(st.one_of(st.none(), st.integers(0, rf.HEADER_SIZE)))
    return bytes(buf[:cut] if cut is not None else buf)


@example(bytes(valid_header()[: rf.WORDS_OFFSET]) + struct.pack("<Q", (1 << 63) + 5) + bytes(
    rf.HEADER_SIZE - rf.WORDS_OFFSET - 8))  # step >= 2**63: once accepted, then the journal could not store it
def _header_prop(buf: bytes) -> None:
    check_header(buf)


test_header_structured, test_header_structured_long = fuzz("ring", headers(), ci=400, long=20_000)(_header_prop)


def _header_mutations(n: int, seed: int) -> None:
    """Seeded byte mutation of valid headers: field-aware edits (edge values into real fields) and
    raw byte edits. The volume part of the ring fuzzing."""
    rng = random.Random(seed)
    names = sorted(HEADER_AT)
    templates = [bytes(valid_header(c, job="j" * 64, pod="p")) for c in (1, CAP, 1 << 16)]
    accepted = 0
    for _ in range(n):
        buf = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.6:
                off, code = HEADER_AT[rng.choice(names)]
                value = rng.randbytes(int(code[:-1])) if code.endswith("s") else rng.choice(
                    (rng.choice(EDGES), rng.getrandbits(64), rng.randrange(-1000, 1000)))
                if off + struct.calcsize("<" + code) <= len(buf):  # a cut header has no field there
                    put(buf, off, code, value)
            else:
                buf = bytearray(mutate(bytes(buf), rng, max_ops=3, max_len=2 * rf.HEADER_SIZE))
        accepted += check_header(buf) is not None
    count("ring", n)
    assert 0 < accepted < n  # the loop reaches both sides of the parser


def test_header_mutations() -> None:
    _header_mutations(30_000, seed=1)


@pytest.mark.slow
def test_header_mutations_long() -> None:
    _header_mutations(850_000, seed=2)


# -- records ------------------------------------------------------------------------------------

class Ring:
    """A real ring file (made by RingWriter) that the test can overwrite byte for byte."""

    def __init__(self, base: str) -> None:
        self.writer = RingWriter.create(base, {"pid": os.getpid(), "host": "fuzz", "rank": 0}, capacity=CAP)
        self.path = self.writer.path
        self.tags = [0] + [self.writer.intern(n) for n in ("pg:0", "pg:tp", "adapter:vllm", "attn", "x" * 200)]
        self.fd = os.open(self.path, os.O_RDWR)
        self.mm = mmap.mmap(self.fd, rf.file_size(CAP))
        self.template = bytes(self.mm)

    def reset(self) -> None:
        self.mm[:] = self.template

    def write(self, seq: int, kind: int, code: int, tag: int, aux: int, a: int, b: int, c: int,
              ts: int = 0, step: int = 0) -> None:
        values = (seq, ts or time.time_ns(), step, kind, code, tag, aux, a, b, c, seq)
        rf.RECORD.pack_into(self.mm, rf.RECORDS_OFFSET + ((seq - 1) % CAP) * rf.RECORD_SIZE,
                            *(fit(v, code_) for v, (_, code_) in zip(values, rf.RECORD_FIELDS)))

    def poke(self, slot: int, field: str, value: int) -> None:
        off, code = RECORD_AT[field]
        put(self.mm, rf.RECORDS_OFFSET + slot * rf.RECORD_SIZE + off, code, value)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)
        self.writer.close()


@pytest.fixture(scope="module")
def ring_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="sntfz")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ring(ring_dir: str) -> Iterator[Ring]:
    r = Ring(ring_dir)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def journal(ring_dir: str) -> Iterator[Journal]:
    j = Journal(os.path.join(ring_dir, "journal.sqlite"))
    try:
        yield j
    finally:
        j.close()


def is_bad(kind: int, code: int, a: int, b: int, c: int) -> bool:
    """The refusal rule, written out independently of sentinel/daemon/state.py."""
    def counted(v: int) -> bool:
        return 0 <= v < MAX_COUNT

    if kind == rf.Kind.PROBE:
        return not counted(a)
    if kind == rf.Kind.CONTEXT and code == rf.Context.PAGED_KV:
        return not counted(c)
    if kind == rf.Kind.EVENT and code == rf.ADAPTER_ERROR_EVENT:
        return not counted(a)
    if kind == rf.Kind.COLLECTIVE_ENQUEUE and code == 0:
        return not (1 <= a <= MAX_GROUP_SIZE and 0 <= b < a)
    return False


def read_as_daemon(path: str, start_after: int = 0, alive_first: bool = True) -> tuple[ProcessState, RingReader] | None:
    """Attach, tail (live writer, then dead: the full scan), ingest: the daemon's sequence."""
    try:
        reader = RingReader(path, start_after=start_after)
    except rf.RingFormatError as exc:
        assert exc.reason in REASONS
        return None
    state = ProcessState(ring="fuzz", identity={}, last_seq=start_after)
    state.apply_header(reader.refresh_header())
    for alive in ((True, False) if alive_first else (False,)):
        res = reader.tail(writer_alive=alive)
        state.ingest(res.records, reader.name)
        state.overwritten += res.overwritten
        state.torn += res.torn
        state.last_seq = reader.last_seq
    return state, reader


def check_state(state: ProcessState, reader: RingReader, start_after: int = 0) -> None:
    assert start_after <= reader.last_seq <= MAX_SEQ
    # Every sequence number is handed out, skipped or settled as torn at most once.
    assert state.records + state.overwritten + state.torn <= reader.last_seq - start_after
    counters = [state.records, state.overwritten, state.torn, state.bad_records, state.probe_execs,
                *state.violations.values(), *state.adapter_errors.values(), *state.batch.values()]
    assert all(0 <= v <= MAX_SEQ for v in counters), counters
    # The hang detector lists every missing rank of a group: a size beyond this would stall it
    # (checked before the detector runs, so a regression fails here instead of eating memory).
    assert all(g.size == -1 or 1 <= g.size <= min(MAX_GROUP_SIZE, 1 << 20) for g in state.groups.values())


def downstream(states: list[ProcessState], journal: Journal) -> None:
    """Hang detector (forced to look: no floor, far future), journal round trip, exporter scrape."""
    t0 = time.process_time()  # a hang guard, in CPU time: other load on the machine does not count
    hangs = HangDetector(HangConfig(floor_s=0.0)).evaluate(states, now=4e9)
    assert time.process_time() - t0 < 5.0
    assert all(len(h.culprits) <= MAX_GROUP_SIZE + len(states) for h in hangs)
    for s in states:
        s.dirty = True
    journal.save(states)  # raised OverflowError for a seq or header counter >= 2**63
    saved = {s.ring: s for s in journal.load()}
    for s in states:
        back = saved[s.ring]
        assert (back.records, back.last_seq, back.overwritten, back.torn, back.bad_records) == \
            (s.records, s.last_seq, s.overwritten, s.torn, s.bad_records)
    snap = Snapshot(processes=tuple(s.snapshot() for s in states), hangs=tuple(hangs), taken_at=time.time())
    registry = build_registry(lambda: snap)
    assert generate_latest(registry).startswith(b"# HELP")  # the exposition renders
    bad = [smp.value for fam in registry.collect() for smp in fam.samples if smp.name == "sentinel_ring_bad_records_total"]
    assert sorted(bad) == sorted(float(s.bad_records) for s in states)


KINDS = st.one_of(st.sampled_from([int(k) for k in rf.Kind]), st.integers(0, 0xFFFF))
CODES = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, rf.ADAPTER_ERROR_EVENT]), st.integers(0, 0xFFFF))
I64 = st.one_of(st.sampled_from(EDGES), st.integers(-(1 << 63), (1 << 63) - 1)).map(lambda v: fit(v, "q"))
RECORDS = st.lists(st.tuples(KINDS, CODES, st.integers(0, 5), st.sampled_from([0, 1, 1 << 31]), I64, I64, I64),
                   max_size=CAP)
CORRUPTIONS = st.lists(st.tuples(st.integers(0, CAP - 1), st.sampled_from(sorted(RECORD_AT)),
                                 st.one_of(st.sampled_from(EDGES), st.integers(0, U64))), max_size=4)


@example(records=[(rf.Kind.COLLECTIVE_ENQUEUE, 0, 1, 0, 1 << 40, 0, 0), (rf.Kind.COLLECTIVE_ENQUEUE, 1, 1, 0, 1, 0, 0)],
         corruptions=[], start=0)  # a group of 2**40 ranks: the hang detector listed them all, forever
@example(records=[(rf.Kind.STEP, 0, 0, 0, 1, 0, 0)], corruptions=[(1, "seq", U64)], start=0)  # seq 2**64-1: "lapped"
@example(records=[(rf.Kind.PROBE, 1, 4, 0, -5, 0, 0)], corruptions=[], start=0)  # a counter going down
def _records_prop(ring: Ring, journal: Journal, records: list, corruptions: list, start: int) -> None:
    ring.reset()
    for i, (kind, code, tag, aux, a, b, c) in enumerate(records):
        ring.write(start + i + 1, kind, code, ring.tags[tag], aux, a, b, c, ts=time.time_ns() - 10**12)
    for slot, field, value in corruptions:
        ring.poke(slot, field, value)
    got = read_as_daemon(ring.path, start_after=start)
    assert got is not None  # the header is the template's
    state, reader = got
    try:
        check_state(state, reader, start)
        if not corruptions:  # intact commit markers: every record read once, the bad ones counted
            assert state.records == len(records) and state.torn == 0
            assert state.bad_records == sum(is_bad(k, cd, a, b, c) for k, cd, _, _, a, b, c in records)
        downstream([state], journal)
    finally:
        reader.close()


test_records_structured, test_records_structured_long = fuzz(
    "ring", RECORDS, CORRUPTIONS, st.sampled_from([0, 5, CAP - 1, 1 << 32, MAX_SEQ - 2 * CAP]), ci=200, long=10_000,
)(_records_prop)


def _record_mutations(ring: Ring, journal: Journal, n: int, seed: int) -> None:
    """Seeded mutation of a ring full of real records (every kind the hooks write): field-aware
    edge values and raw byte edits in the record slots, read by a fresh reader each case."""
    rng = random.Random(seed)
    ring.reset()
    for i in range(CAP - 8):  # a realistic stream; the last slots stay empty (a live writer's tail)
        kind = (rf.Kind.STEP, rf.Kind.PROBE, rf.Kind.CONTEXT, rf.Kind.COLLECTIVE_ENQUEUE, rf.Kind.COLLECTIVE_COMPLETE,
                rf.Kind.EVENT, rf.Kind.EXCEPTION, rf.Kind.MARK)[i % 8]
        code = {rf.Kind.PROBE: 1, rf.Kind.CONTEXT: rf.Context.PAGED_KV, rf.Kind.COLLECTIVE_ENQUEUE: i % 2,
                rf.Kind.COLLECTIVE_COMPLETE: 1, rf.Kind.EVENT: rf.ADAPTER_ERROR_EVENT}.get(kind, 0)
        a, b = (4, 1) if kind == rf.Kind.COLLECTIVE_ENQUEUE and code == 0 else (i, i * 1000)
        ring.write(i + 1, kind, code, ring.tags[1 + i % 4], i, a, b, i % 3, ts=time.time_ns() - 10**12)
    base = bytes(ring.mm)
    fields = sorted(RECORD_AT)
    states = []
    for case in range(n):
        ring.mm[:] = base
        for _ in range(rng.randint(1, 6)):
            slot = rng.randrange(CAP)
            if rng.random() < 0.75:
                ring.poke(slot, rng.choice(fields), rng.choice((rng.choice(EDGES), rng.getrandbits(64),
                                                                 rng.randrange(1, 2 * CAP))))
            else:
                off = rf.RECORDS_OFFSET + slot * rf.RECORD_SIZE
                ring.mm[off: off + rf.RECORD_SIZE] = mutate(ring.mm[off: off + rf.RECORD_SIZE], rng, 4).ljust(
                    rf.RECORD_SIZE, b"\0")[: rf.RECORD_SIZE]
        got = read_as_daemon(ring.path, alive_first=rng.random() < 0.5)
        assert got is not None
        state, reader = got
        try:
            check_state(state, reader)
        finally:
            reader.close()
        if case % 8 == 0:  # the costly consumers, on a batch of 16 processes
            state.ring = f"fuzz{len(states)}"
            states.append(state)
        if len(states) == 16:
            downstream(states, journal)
            states = []
    count("ring", n)


def test_record_mutations(ring: Ring, journal: Journal) -> None:
    _record_mutations(ring, journal, 3_000, seed=3)


@pytest.mark.slow
def test_record_mutations_long(ring: Ring, journal: Journal) -> None:
    _record_mutations(ring, journal, 150_000, seed=4)


# -- files: the reader's own checks (size, geometry against the file) ----------------------------------

@st.composite
def ring_files(draw: st.DrawFn) -> bytes:
    cap = draw(st.sampled_from([1, CAP, 1 << 16]))
    buf = valid_header(cap)
    for name in draw(st.lists(st.sampled_from(["capacity", "magic", "version", "record_size", "step", "exit_ns"]),
                              max_size=2)):
        off, code = HEADER_AT[name]
        put(buf, off, code, draw(field_value(code)))
    size = rf.file_size(cap)
    length = draw(st.sampled_from([0, 1, rf.HEADER_SIZE - 1, rf.HEADER_SIZE, rf.RECORDS_OFFSET, size - 1, size,
                                   size + 4096]))
    return bytes(buf[:length]) + bytes(max(0, length - rf.HEADER_SIZE))


def _file_prop(ring_dir: str, data: bytes) -> None:
    path = os.path.join(ring_dir, "file.ring")
    with open(path, "wb") as f:
        f.write(data)
    got = read_as_daemon(path)
    if got is not None:
        state, reader = got
        check_state(state, reader)
        reader.close()


test_ring_files, test_ring_files_long = fuzz("ring", ring_files(), ci=300, long=10_000)(_file_prop)
