"""Probe results that outlive the fault they predict: the daemon's side of the probe words.

On a GPU, each probe kernel's last program writes the site's summary (calls, page-table
violations, offending index, num_pages) into the ring file's device words
(``kernels._paged_kv_probe``, ``ringformat.PROBE_WORDS``); the drain's copy of the accumulators, which
the fault kills, is not needed for them to reach the daemon. Here a real process writes those words
with plain stores where the GPU would (the GPU path itself: tests/gpu/test_probe_evidence.py), and
dies by SIGKILL; a real daemon reads its ring: what the drain never reported joins the violation
counters, the fault evidence and the log, once; what the drain did report is not counted twice.
"""

from __future__ import annotations

import signal

from sentinel.daemon.loop import Daemon, DaemonConfig
from sentinel.triage.records import evidence_from

WRITER = r"""
import os, signal, sys
from sentinel_hooks import runtime, ringformat as rf
w = runtime.writer()
site = w.intern("vllm.attn.0")
drained_calls, drained_oob = int(sys.argv[1]), int(sys.argv[2])
if drained_calls:  # what the drain reported before the fault
    w.emit(rf.Kind.CONTEXT, rf.Context.PAGED_KV, 10, 100, drained_calls, site, 0)
if drained_oob:
    w.emit(rf.Kind.PROBE, rf.Check.PAGE_TABLE_OOB, drained_oob, 150, 100, site, 3)
words = rf.device_words(w._mm)
tag = w.intern("probe:0:vllm.attn.0")
for k, meaning in enumerate(rf.PROBE_WORDS):
    words[rf.DEVICE_WORDS + k] = rf.pack_device_word_info(meaning, tag)
# What the GPU published after its last probe: calls, violations, offending index, num_pages.
for k, value in enumerate((int(sys.argv[3]), int(sys.argv[4]), 1 << 30, 100)):
    words[k] = value
words.release()
if sys.argv[5] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run(h, drained_calls: int, drained_oob: int, gpu_calls: int, gpu_oob: int, end: str = "kill"):
    res = h.run_py(WRITER, env=h.hooked_env(), args=(str(drained_calls), str(drained_oob), str(gpu_calls),
                                                     str(gpu_oob), end))
    assert res.returncode == (-signal.SIGKILL if end == "kill" else 0), res.stderr
    d = Daemon(DaemonConfig(base_dir=h.dir, use_events=False, crash_grace_s=0.0))
    try:
        d.poll_once()
        (state,) = d.states.values()
        return state
    finally:
        d.close()


def test_a_fault_right_after_the_first_probe_still_leaves_its_violation(h):
    # Nothing drained at all: the first probed step found page 2**30 and the next kernel faulted.
    state = run(h, 0, 0, 1, 1)
    assert state.exit == "died"
    assert state.violations == {"page_table_oob": 1} and state.probe_execs == 1
    assert "page_table_oob" in evidence_from(state)
    assert state.gpu_probes == {"vllm.attn.0": {0: [1, 1, 1 << 30, 100]}}


def test_what_the_drain_reported_is_not_counted_twice(h):
    # 5 calls and 2 violations drained; the GPU ran one more probe, with one more violation, and died.
    state = run(h, 5, 2, 6, 3)
    assert state.violations == {"page_table_oob": 3} and state.probe_execs == 6
    assert state.settle_probe_words(lambda tag: "") == 0  # settled once, at the death


def test_a_clean_exit_whose_drain_reported_everything_adds_nothing(h):
    state = run(h, 6, 3, 6, 3, end="exit")
    assert state.exit == "exited" and state.violations == {"page_table_oob": 3} and state.probe_execs == 6


def test_a_journal_from_before_the_probe_words_is_not_counted_twice():
    """A process the daemon followed before it knew of the probe words: its journal row has no
    ``reported``, so what the words hold is taken as already counted."""
    from sentinel.daemon.state import ProcessState

    s = ProcessState(ring="r", identity={})
    s.load_extra({"violations": {"page_table_oob": 3}, "probe_execs": 6})
    s.gpu_probes = {"vllm.attn.0": {0: [6, 3, 1 << 30, 100]}}
    assert s.settle_probe_words(lambda tag: "") == 0
    assert s.violations == {"page_table_oob": 3} and s.probe_execs == 6
    fresh = ProcessState(ring="r2", identity={})
    fresh.load_extra(fresh.extra())  # a row written by this daemon round-trips unsettled
    assert fresh.probe_words_settled is False
