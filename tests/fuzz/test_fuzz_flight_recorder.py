"""Hostile Flight Recorder dumps (pickles). The restricted unpickler refuses every global, however
it is asked for (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, REDUCE, BUILD, extension codes,
persistent ids; protocols 0 to 5), and nothing it is given runs code, crashes the process, or
makes a summary that logs and the journal cannot hold. Extends tests/test_flight_recorder.py."""

from __future__ import annotations

import copyreg
import functools
import json
import operator
import os
import pickle
import pickletools
import random
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_support import count, fuzz, mutate
from hypothesis import example
from hypothesis import strategies as st

from sentinel.triage.readers import flight_recorder as fr

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
REFERENCE = {  # the shape of a real dump (tests/test_flight_recorder.py has the full one)
    "version": "2.10",
    "pg_config": {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1]"}},
    "pg_status": {"0": {"last_enqueued_collective": 3, "last_started_collective": 3, "last_completed_collective": 2}},
    "entries": [{"record_id": i, "process_group": ("0", "default_pg"), "collective_seq_id": i,
                 "profiling_name": "nccl:all_reduce", "state": "completed" if i < 3 else "scheduled",
                 "input_sizes": [[1024]], "frames": [{"name": "f", "filename": "a.py", "line": i}]}
                for i in range(1, 4)],
}


@pytest.fixture(scope="module")
def marker_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sntfr"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _global(module: str, name: str, proto: int) -> bytes:
    """The opcode that pushes ``module.name``: GLOBAL before protocol 4, STACK_GLOBAL from 4 on."""
    if proto < 4:
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    return b"\x8c" + bytes([len(module.encode())]) + module.encode() + b"\x8c" + bytes([len(name.encode())]) \
        + name.encode() + b"\x93"


def _str(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s.encode())) + s.encode()  # BINUNICODE


def _head(proto: int) -> bytes:
    return b"\x80" + bytes([proto]) if proto >= 2 else b""


def written_global(data: bytes) -> str:
    """The first global a pickle asks for, as written (os.system is posix.system; before protocol 3
    pickle writes Python 2 names: subprocess.Popen is commands.Popen)."""
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            return arg.replace(" ", ".")
        if op.name == "STACK_GLOBAL":
            return ".".join(strings[-2:])
        if isinstance(arg, str):
            strings.append(arg)
    raise AssertionError("no global in the pickle")


def payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Classic payloads: {name: (pickle, the global it needs)}. Each would create ``marker``."""
    m = str(marker)
    out: dict[str, tuple[bytes, str]] = {}
    calls = {
        "os.system": (os.system, (f"touch {m}",)),
        "subprocess.Popen": (subprocess.Popen, (["touch", m],)),
        "subprocess.check_call": (subprocess.check_call, (["touch", m],)),
        "builtins.eval": (eval, (f"open({m!r}, 'w')",)),
        "builtins.exec": (exec, (f"open({m!r}, 'w')",)),
        "builtins.open": (open, (m, "w")),
        "builtins.__import__": (__import__, ("os",)),
        "shutil.rmtree": (shutil.rmtree, (m,)),
        "pickle.loads": (pickle.loads, (pickle.dumps(1),)),
        "functools.partial": (functools.partial, (os.system, f"touch {m}")),
        "operator.attrgetter": (operator.attrgetter, ("system",)),
        "copyreg._reconstructor": (copyreg._reconstructor, (object, object, None)),
    }
    for name, (fn, args) in calls.items():
        class Boom:
            def __reduce__(self, fn=fn, args=args):  # noqa: ANN001, ANN204 - the pickle protocol's hook
                return fn, args

        for proto in PROTOCOLS:
            data = pickle.dumps({"entries": [Boom()]}, protocol=proto)
            out[f"reduce {name} p{proto}"] = (data, written_global(data))
    for proto in PROTOCOLS:
        h = _head(proto)
        # getattr(__import__('os'), 'system')('touch m'): a chain of REDUCEs
        out[f"getattr chain p{proto}"] = (
            h + _global("builtins", "getattr", proto) + b"(" + _global("builtins", "__import__", proto) + b"(" + _str("os")
            + b"tR" + _str("system") + b"tR(" + _str(f"touch {m}") + b"tR.", "builtins.getattr")
        # INST: class and arguments in one opcode (protocol 0 style, accepted by every protocol)
        out[f"INST p{proto}"] = (h + b"(" + _str(f"touch {m}") + b"ios\nsystem\n.", "os.system")
        # OBJ: the class from the stack, called with the marked arguments
        out[f"OBJ p{proto}"] = (h + b"(" + _global("os", "system", proto) + _str(f"touch {m}") + b"o.", "os.system")
        # BUILD: state applied through a global's __setstate__
        out[f"BUILD p{proto}"] = (h + _global("collections", "OrderedDict", proto) + b")R" + b"}" + b"b.",
                                  "collections.OrderedDict")
        out[f"NEWOBJ p{proto}"] = (h + _global("subprocess", "Popen", proto) + _str("true") + b"\x85\x81.",
                                   "subprocess.Popen")
        out[f"NEWOBJ_EX p{proto}"] = (h + _global("subprocess", "Popen", proto) + _str("true") + b"\x85}\x92.",
                                      "subprocess.Popen")
        out[f"posix.system p{proto}"] = (h + _global("posix", "system", proto) + _str(f"touch {m}") + b"\x85R.",
                                         "posix.system")
    return out


def test_classic_payloads_are_refused_and_never_run(marker_dir: Path) -> None:
    marker = marker_dir / "pwned"
    cases = payloads(marker)
    for name, (data, wanted) in cases.items():
        with pytest.raises(fr.UnsafeDump) as info:
            fr.summarize(fr.loads(data))
        assert f"refused global {wanted}:" in str(info.value), (name, str(info.value))
        assert not marker.exists(), name
    count("flight_recorder", len(cases))


@pytest.mark.parametrize("code, opcode", [(0xF1, b"\x82\xf1"), (0x1F2, b"\x83\xf2\x01"), (0x1F3F3, b"\x84\xf3\xf3\x01\x00")])
def test_extension_codes_are_refused_even_when_cached(code: int, opcode: bytes) -> None:
    """EXT1/2/4 name a global by number through copyreg's registry. The C unpickler takes a code
    that some other unpickling already resolved from copyreg's cache, never asking find_class: the
    restricted one refused posix.getcwd by name but returned it by number."""
    copyreg.add_extension("posix", "getcwd", code)
    try:
        assert pickle.loads(b"\x80\x02" + opcode + b".") is os.getcwd  # now cached, process-wide
        for proto in PROTOCOLS:
            with pytest.raises(fr.UnsafeDump, match="extension code"):
                fr.loads(_head(proto) + opcode + b")R.")
    finally:
        copyreg.remove_extension("posix", "getcwd", code)
        copyreg._extension_cache.pop(code, None)
    count("flight_recorder", len(PROTOCOLS))


def test_persistent_ids_are_refused() -> None:
    for data in (b"Pfoo\n.", b"\x80\x02X\x03\x00\x00\x00fooQ."):
        with pytest.raises(fr.UnsafeDump, match="persistent id"):
            fr.loads(data)
    count("flight_recorder", 2)


def test_deep_tuples_are_refused_without_a_crash(h) -> None:  # noqa: ANN001 - the harness fixture
    """A 1 MB dump of tuples nested a million deep used as a dict key: hashing it recursed in C
    until the daemon segfaulted. Run in a child, so that a regression fails this test only."""
    code = ("import sys\nfrom sentinel.triage.readers import flight_recorder as fr\n"
            "data = b'\\x80\\x02}' + b'K\\x01' + b'\\x85' * 1_000_000 + b'K\\x01s.'\n"
            "try:\n    fr.loads(data)\nexcept fr.pickle.UnpicklingError as exc:\n    print('refused:', exc)\n")
    res = h.run_py(code, env=h.env(), timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "refused:" in res.stdout and "nested deeper than" in res.stdout
    count("flight_recorder")


@pytest.mark.parametrize("build", ["exponential", "deep_list", "huge_int", "long_text", "many_groups"])
def test_summaries_stay_small_and_plain(build: str) -> None:
    """What summarize keeps goes into a log line and the journal: str() of a shared-reference
    structure is exponential (2**22 leaves from 184 bytes took seconds; 2**30 never ended),
    deep ones exceed repr's recursion limit, ints past 4300 digits cannot be printed."""
    if build == "exponential":
        x: object = 1
        for _ in range(24):  # 2**24 leaves: seconds and ~100 MB before the fix, so a regression fails, not hangs
            x = [x, x]
        doc = {"entries": [{"process_group": [x], "collective_seq_id": x, "state": x}], "pg_status": {"0": {"x": x}}}
    elif build == "deep_list":
        x = []
        for _ in range(100_000):
            x = [x]
        doc = {"entries": [{"process_group": x, "profiling_name": x}], "version": x}
    elif build == "huge_int":
        doc = {"entries": [{"process_group": 10**5000, "collective_seq_id": 10**5000}], "version": -(10**5000)}
    elif build == "long_text":
        doc = {"entries": [{"process_group": "g" * 10**6, "profiling_name": "n" * 10**6}]}
    else:
        doc = {"entries": [{"process_group": str(i)} for i in range(fr.MAX_GROUPS + 1)]}
    t0 = time.process_time()  # CPU time: other load on the machine does not count
    try:
        summary = fr.summarize(doc)
    except pickle.UnpicklingError:
        assert build == "many_groups"
        return
    finally:
        count("flight_recorder")
    # A hang guard (measured: under 0.1 s), far below what the exponential case took before the fix.
    assert len(json.dumps(summary)) < 10_000 and time.process_time() - t0 < 2.0


# -- properties ---------------------------------------------------------------------------------------

def check_dump(data: bytes) -> dict | None:
    """The daemon's reading of one dump: a small plain summary, or UnpicklingError (UnsafeDump included)."""
    try:
        summary = fr.summarize(fr.loads(data))
    except pickle.UnpicklingError as exc:
        assert str(exc)
        return None
    text = json.dumps(summary)  # the log line and the journal's evidence column
    assert len(text) < 256 * fr.MAX_TEXT * max(1, len(summary["groups"]) + len(summary["pg_status"]))
    return summary


NAMES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # encodable: no lone surrogates


@example(module="os", name="system", proto=0, how="GLOBAL")
@example(module="builtins", name="eval", proto=4, how="STACK_GLOBAL")
@example(module="subprocess", name="Popen", proto=0, how="INST")
def _any_global(module: str, name: str, proto: int, how: str) -> None:
    """Any module.name, asked for in each way: refused, or not even a well-formed request."""
    if how == "INST":
        data = _head(proto) + b"(" + b"i" + module.encode() + b"\n" + name.encode() + b"\n."
    else:
        data = _head(proto) + _global(module, name, 0 if how == "GLOBAL" else 4) + b")R."
    with pytest.raises(pickle.UnpicklingError) as info:
        fr.loads(data)
    well_formed = "\n" not in module + name and (how != "INST" or (module + name).isascii())  # INST reads ASCII
    if how == "STACK_GLOBAL" or well_formed:
        assert info.type is fr.UnsafeDump and "refused global" in str(info.value)


test_any_global_is_refused, test_any_global_is_refused_long = fuzz(
    "flight_recorder", NAMES, NAMES, st.sampled_from(list(PROTOCOLS)), st.sampled_from(["GLOBAL", "STACK_GLOBAL", "INST"]),
    ci=600, long=20_000,
)(_any_global)

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                    st.binary(max_size=20))
PLAIN = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner), st.dictionaries(st.text(max_size=8), inner, max_size=4),
    st.frozensets(st.integers(), max_size=3), st.sets(st.text(max_size=4), max_size=3)), max_leaves=20)


def _needs_global(x: object, proto: int) -> bool:
    """Whether pickle writes ``x`` with a global at ``proto``: bytes before 3 (codecs.encode),
    sets and frozensets before 4 (builtins.set)."""
    if isinstance(x, bytes):
        return proto < 3
    if isinstance(x, set | frozenset):
        return proto < 4 or any(_needs_global(v, proto) for v in x)
    if isinstance(x, list | tuple):
        return any(_needs_global(v, proto) for v in x)
    if isinstance(x, dict):
        return any(_needs_global(k, proto) or _needs_global(v, proto) for k, v in x.items())
    return False


def _plain_round_trip(doc: object, proto: int) -> None:
    data = pickle.dumps({"entries": [{"process_group": ("0", "pg"), "x": doc}], "doc": doc}, protocol=proto)
    if _needs_global(doc, proto):
        with pytest.raises(fr.UnsafeDump):
            fr.loads(data)
    else:
        assert fr.loads(data)["doc"] == doc
        assert check_dump(data) is not None


test_plain_data_round_trips, test_plain_data_round_trips_long = fuzz(
    "flight_recorder", PLAIN, st.sampled_from(list(PROTOCOLS)), ci=500, long=20_000)(_plain_round_trip)

# Opcode programs: a random sequence of real opcodes with plausible arguments, structure-aware at
# the pickle machine's level (stack, marks, memo), never a global.
OPS = st.one_of(
    st.sampled_from([b"(", b"]", b"}", b")", b"N", b"\x88", b"\x89", b"0", b"1", b"2", b"a", b"e", b"s", b"u",
                     b"t", b"l", b"d", b"\x85", b"\x86", b"\x87", b"\x8f", b"\x90", b"\x91", b"\x94", b"R", b"b",
                     b"o", b"\x81", b"\x92", b"\x98", b"\x97", b"."]),
    st.integers(0, 255).map(lambda i: b"K" + bytes([i])),
    st.integers(-(2**31), 2**31 - 1).map(lambda i: b"J" + struct.pack("<i", i)),
    st.integers(0, 5).map(lambda i: b"q" + bytes([i])),
    st.integers(0, 5).map(lambda i: b"h" + bytes([i])),
    st.text(max_size=12).map(lambda s: b"\x8c" + bytes([len(s.encode())]) + s.encode()),
    st.binary(max_size=12).map(lambda b: b"C" + bytes([len(b)]) + b),
    st.binary(max_size=8).map(lambda b: b"\x8a" + bytes([len(b)]) + b),
    st.floats().map(lambda f: b"G" + struct.pack(">d", f)),
    st.sampled_from([b"Vversion\n", b"Ventries\n", b"Vprocess_group\n", b"Vcollective_seq_id\n", b"Vstate\n",
                     b"Vcompleted\n", b"I12\n", b"L99L\n", b"F1.5\n", b"S'x'\n", b"\x95\x05\x00\x00\x00\x00\x00\x00\x00"]),
)


@example(ops=[b"\x80\x02}", b"K\x01"] + [b"\x85"] * 200 + [b"K\x01", b"s", b"."])  # deep tuple key (segfault at 1M)
def _opcode_program(ops: list[bytes]) -> None:
    check_dump(b"".join(ops))


test_opcode_programs, test_opcode_programs_long = fuzz(
    "flight_recorder", st.lists(OPS, max_size=60), ci=800, long=20_000)(_opcode_program)


def _mutations(n: int, seed: int) -> None:
    rng = random.Random(seed)
    templates = [pickle.dumps(REFERENCE, protocol=p) for p in PROTOCOLS]
    summarized = 0
    for _ in range(n):
        summarized += check_dump(mutate(rng.choice(templates), rng, max_ops=6)) is not None
    count("flight_recorder", n)
    assert 0 < summarized < n


def test_dump_mutations() -> None:
    _mutations(8_000, seed=21)


@pytest.mark.slow
def test_dump_mutations_long() -> None:
    _mutations(150_000, seed=22)


def test_reference_dump_still_summarized() -> None:
    # The pure-Python unpickler reads what the C one read.
    for proto in PROTOCOLS:
        s = check_dump(pickle.dumps(REFERENCE, protocol=proto))
        assert s is not None and s["groups"]["0"]["last_enqueued"] == 3 and s["groups"]["0"]["last_completed"] == 2
        assert s["pg_status"]["0"]["last_completed_collective"] == 2 and s["version"] == "2.10"
    count("flight_recorder", len(PROTOCOLS))
