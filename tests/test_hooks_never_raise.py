"""Acceptance 7: the hooks never raise into the host program. Each case runs in a fresh
subprocess, so the process-wide writer state starts empty."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sentinel.daemon.ringreader import RingReader
from sentinel_hooks import ringformat as rf

# The "host program": its stdout and exit code must be the same with or without working hooks.
PROGRAM = r"""
import json, sys
import sentinel_hooks
total = 0
for i in range(5):
    sentinel_hooks.step()
    total += i
sentinel_hooks.event(1, a=2, b=3, c=4, name="ok")
BAD = [dict(code=1, a=2**70), dict(code=70000), dict(code=1, b=-2**64), dict(code=1, c="x"), dict(code=1, name=123)]
for kw in BAD:
    sentinel_hooks.event(**kw)
sentinel_hooks.set_identity(not_a_field=1)
sentinel_hooks.step()
print("result", total)
with open(sys.argv[1], "w") as f:
    json.dump(sentinel_hooks.stats(), f)
sys.exit(3)
"""
N_BAD = 6  # five bad events and one bad set_identity


def _run(h, env: dict[str, str]) -> tuple[object, dict]:
    stats_file = h.scratch / f"stats{len(list(h.scratch.glob('stats*')))}.json"
    res = h.run_py(PROGRAM, env=env, args=(str(stats_file),))
    return res, json.loads(stats_file.read_text())


def _unusable_dirs(scratch: Path) -> dict[str, str]:
    regular = scratch / "plainfile"
    regular.write_text("I am a file")
    return {
        "under_a_regular_file": str(regular / "sentinel"),
        "uncreatable_in_proc": "/proc/sentinel-cannot-exist/x",
    }


@pytest.mark.parametrize("case", ["under_a_regular_file", "uncreatable_in_proc", "bad_file_mode"])
def test_unusable_dir_makes_hooks_counted_noops(h, case):
    baseline, base_stats = _run(h, h.env(SENTINEL_DISABLE="1"))
    assert baseline.returncode == 3 and baseline.stdout == "result 10\n"
    assert base_stats["active"] is False and base_stats["disabled_reason"] == "disabled"

    if case == "bad_file_mode":
        env = h.hooked_env(SENTINEL_FILE_MODE="not-octal")
    else:
        env = h.env(SENTINEL_DIR=_unusable_dirs(h.scratch)[case])
    res, stats = _run(h, env)
    assert res.returncode == baseline.returncode
    assert res.stdout == baseline.stdout
    assert "Traceback" not in res.stderr
    # One line saying why the hooks are off, logged once however many calls failed, and one for
    # the caller's own mistake (an unknown identity field), counted as in an active process.
    sentinel_lines = [ln for ln in res.stderr.splitlines() if "sentinel" in ln]
    assert len(sentinel_lines) == 2, res.stderr
    assert "hooks disabled" in sentinel_lines[0] and "set_identity" in sentinel_lines[1], res.stderr
    assert stats["active"] is False
    assert stats["ring"] is None
    assert stats["noops"] == 6 + 6  # six steps and six events, each a counted no-op
    assert stats["steps"] == 6
    assert stats["disabled_reason"]
    assert stats["errors"] == 1  # the bad set_identity; no-op writes cannot fail, whatever their arguments
    assert not any(Path(h.dir).rglob("*.ring"))


def test_out_of_range_values_are_counted_not_raised(h):
    baseline, _ = _run(h, h.env(SENTINEL_DISABLE="1"))
    res, stats = _run(h, h.hooked_env())
    assert res.returncode == baseline.returncode == 3
    assert res.stdout == baseline.stdout == "result 10\n"
    assert "Traceback" not in res.stderr
    assert stats["active"] is True
    assert stats["steps"] == 6
    assert stats["errors"] == N_BAD
    assert stats["dropped"] == N_BAD
    assert stats["noops"] == 0

    # The ring agrees: the drops are in its header, the good records are intact, and the slots
    # the failed packs had claimed are sealed as VOID records, never handed out as events.
    (ring,) = h.rings()
    assert ring.name.split(".")[1] == str(stats["ring"]).split(".")[1] and os.path.samefile(stats["ring"], ring)
    reader = RingReader(str(ring))
    try:
        assert reader.header["dropped"] == N_BAD
        assert reader.header["step"] == 6 and reader.header["exit_ns"] > 0
        res_tail = reader.tail(writer_alive=reader.writer_alive())
        recs = res_tail.records
        events = recs[recs["kind"] == 2]
        assert events[["code", "a", "b", "c"]].tolist() == [(1, 2, 3, 4)]
        assert reader.name(int(events["tag"][0])) == "ok"
        assert (recs[recs["kind"] == 1]["a"] == range(1, 7)).all()
        # code=70000, b=-2**64, a=2**70, c="x" fail inside pack_into after taking a sequence number.
        assert res_tail.torn == 0
        assert (recs["kind"] == rf.Kind.VOID).sum() == 4
    finally:
        reader.close()
