"""`sentinel triage FILE` on hostile input, for every reader at once: each evidence fixture in
tests/fixtures (logs, watchdog reports, kernel logs, cuda-gdb text, sanitizer reports, Flight Recorder
analyses and dumps, the catalog's fixtures) mutated, spliced with another kind's lines, or random
bytes. Whatever reader the input is detected as, triage ends with a report or a one-line error
(exit 0, 1 or 2), never a traceback; the JSON output is valid; the live log reader (the daemon's
path for a log line) takes the same text without an error. A reader added to READERS is fuzzed here
with no change: its fixtures are under tests/fixtures."""

from __future__ import annotations

import contextlib
import io
import json
import random
import tempfile
from pathlib import Path

from fuzz_support import count, fuzz, mutate
from hypothesis import strategies as st

from sentinel.cli.main import main
from sentinel.daemon.watchers.logs import plain_line
from sentinel.triage.readers import READERS, detect

ROOT = Path(__file__).resolve().parents[1] / "fixtures"
SAMPLES = sorted(p for p in ROOT.rglob("*") if p.is_file() and p.suffix not in (".md", ".py", ".json")
                 and p.stat().st_size < 1 << 20)
BLOBS = [p.read_bytes() for p in SAMPLES]


def _fr_dumps() -> list[bytes]:
    """Flight Recorder dumps are binary pickles: made by the field case's script, not kept as files."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(ROOT / "field-cases" / "pt140563-fr-size-mismatch" / "make_fr_pickles.py"),
                        out], check=True, timeout=60)
        return [p.read_bytes() for p in sorted(Path(out).iterdir())]


BLOBS += _fr_dumps()


def _triage(data: bytes, tmp: Path) -> None:
    path = tmp / "evidence"
    path.write_bytes(data)
    for extra in ([], ["--json"]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["triage", str(path), "--dir", str(tmp), *extra])
        assert rc in (0, 1, 2), (rc, err.getvalue()[-500:])
        if not out.getvalue():  # refused: one clear line says why
            assert rc and len(err.getvalue().strip().splitlines()) == 1, (rc, err.getvalue())
        elif extra:
            json.loads(out.getvalue())
    for reader in READERS:
        assert reader.looks_like(data[:65536]) in (True, False)
    for line in data.decode("utf-8", "replace").splitlines()[:200]:
        assert isinstance(plain_line(line), str)


def test_every_reader_has_fixtures() -> None:
    kinds = {detect(b[:65536]) for b in BLOBS}
    assert set(READERS) <= kinds, [r.KIND for r in READERS if r not in kinds]


def _mutated(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.choice(BLOBS)
    if rng.random() < 0.3:  # splice another kind's lines in: a log with a cuda-gdb paste, and so on
        other = rng.choice(BLOBS)
        cut, at = rng.randrange(len(other) + 1), rng.randrange(len(data) + 1)
        data = data[:at] + other[cut: cut + rng.randint(1, 4096)] + data[at:]
    with tempfile.TemporaryDirectory() as tmp:
        _triage(mutate(data, rng), Path(tmp))


def _random(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _triage(data, Path(tmp))


test_triage_mutated, test_triage_mutated_long = fuzz("triage (mutated fixtures)", st.integers(0, 2**32 - 1),
                                                     ci=150, long=5000)(_mutated)
test_triage_random, test_triage_random_long = fuzz("triage (random bytes)", st.binary(max_size=4096),
                                                   ci=60, long=2000)(_random)


def test_the_fixtures_as_they_are(tmp_path: Path) -> None:
    for data in BLOBS:
        count("triage (fixtures as they are)")
        _triage(data, tmp_path)
