"""Flight Recorder across ranks: the field case pt140563, from the analyser's text output and from
per-rank dumps shaped after it (its make_fr_pickles.py), diagnosed as its README states; a rank that
never joined; and `sentinel triage DIR` on a folder of dumps."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentinel.triage.readers import detect, flight_recorder, fr_analysis

CASE = Path(__file__).resolve().parent / "fixtures" / "field-cases" / "pt140563-fr-size-mismatch"


def _dumps(tmp_path: Path) -> Path:
    out = tmp_path / "fr"
    subprocess.run([sys.executable, str(CASE / "make_fr_pickles.py"), str(out)], check=True, timeout=60)
    return out


def test_the_analysers_output() -> None:
    """all_reduce #39 in default_pg mismatched: culprit ranks 22 and 110, input size [[262144]] where
    [[1025]] was expected."""
    path = CASE / "fr_trace-output.txt"
    assert detect(path.read_bytes()) is fr_analysis
    (e,) = fr_analysis.parse(path.read_text())
    assert (e.seq, e.entry, e.group, e.op, e.input_sizes, e.world_size, e.state) == (
        39, 38, "0:default_pg", "nccl:all_reduce", "[[1025]]", 128, "scheduled")
    assert [(r, k) for r, k, _ in e.culprits] == [(22, "SIZE_OR_SYNTAX_MISMATCH"), (110, "SIZE_OR_SYNTAX_MISMATCH")]
    assert "'[[1025]]' does not match found input sizes: '[[262144]]'" in e.culprits[0][2]


def test_from_the_dumps_rank_22_is_named_with_the_size_mismatch(tmp_path: Path) -> None:
    out = _dumps(tmp_path)
    docs = {int(p.name.rsplit("_", 1)[1]): flight_recorder.loads(p.read_bytes()) for p in out.iterdir()}
    assert flight_recorder.cross_rank(docs) == [{
        "pg": "default_pg", "seq": 39, "op": "nccl:all_reduce", "missing": [],
        "culprits": [{"rank": 22, "error": "SIZE_OR_SYNTAX_MISMATCH", "expected": "[[1025]]", "found": "[[262144]]"}],
    }]


def test_a_rank_that_never_joined(tmp_path: Path) -> None:
    docs = {}
    for rank, last in ((0, 5), (1, 5), (2, 4)):
        entries = [{"process_group": ("0", "default_pg"), "collective_seq_id": s, "profiling_name": "nccl:all_reduce",
                    "input_sizes": [[8]], "input_dtypes": ["Float"], "state": "completed"} for s in range(1, last + 1)]
        docs[rank] = flight_recorder.loads(pickle.dumps({"entries": entries}))
    (f,) = flight_recorder.cross_rank(docs)
    assert (f["seq"], f["missing"], f["culprits"]) == (5, [2], [])


def test_triage_a_folder_of_dumps(h, tmp_path: Path) -> None:  # noqa: ANN001
    out = _dumps(tmp_path)
    res = h.run([h.sentinel, "triage", str(out), "--dir", h.dir], env=h.env())
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "== across ranks (Flight Recorder dumps)" in text
    assert "  nccl:all_reduce #39 in default_pg:" in text
    assert "    culprit rank 22: SIZE_OR_SYNTAX_MISMATCH, [[262144]] where [[1025]] was expected" in text


_LINES = (CASE / "fr_trace-output.txt").read_text().splitlines()
_PLAIN = st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=8), st.booleans()),
                      lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.text(max_size=120), st.sampled_from(_LINES)), max_size=30))
def test_fuzz_the_analysers_output(lines: list[str]) -> None:
    assert all(e.seq >= 0 for e in fr_analysis.parse("\n".join(lines)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.integers(0, 8), st.fixed_dictionaries({"entries": st.lists(st.one_of(
    _PLAIN, st.fixed_dictionaries({"process_group": _PLAIN, "collective_seq_id": st.integers(-2, 9),
                                   "profiling_name": _PLAIN, "input_sizes": _PLAIN, "input_dtypes": _PLAIN})),
    max_size=6)}), max_size=4))
def test_fuzz_cross_rank_on_plain_dumps(docs: dict) -> None:
    for f in flight_recorder.cross_rank(docs):
        assert f["seq"] >= -2 and all(isinstance(c["rank"], int) for c in f["culprits"])
